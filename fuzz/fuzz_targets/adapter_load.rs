//! Fuzz adapter loading against a real model (the fixtures' tiny llama, Q8_0): any PEFT
//! safetensors bytes, any `adapter_config.json` text, any GGUF LoRA bytes must load or give a
//! typed error, never panic or read out of bounds. An adapter that loads must also survive
//! `inspect`, a plan, a short forward pass and a bake.
//!
//! The first input byte picks what is fuzzed (the rest is the file's bytes):
//! 0: the safetensors file of a PEFT folder (with the fixed config below);
//! 1: its `adapter_config.json` (with a fixed one-pair safetensors file);
//! 2: a GGUF LoRA file.
//! The fixtures are read from `LORA_RUN_FIXTURES`, else `../shared/fixtures` beside the
//! repository (as the tests read them). Seeds: `fuzz/seeds/adapter_load`, written by
//! `fuzz/seeds/make_adapter_load_seeds.py`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use runtime::lora::bake::{BakeType, bake};
use runtime::lora::{AdapterHandle, AdapterOptions, LoraPlan, load_adapter};
use runtime::model::{Logits, Model};

/// The config used when the safetensors bytes are fuzzed: q_proj and v_proj, r 1.
const CONFIG: &str = r#"{"peft_type": "LORA", "r": 1, "lora_alpha": 2, "target_modules": ["q_proj", "v_proj"],
"bias": "none", "use_rslora": false, "use_dora": false, "fan_in_fan_out": false}"#;

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let fixtures = std::env::var_os("LORA_RUN_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures")));
        Model::load(fixtures.join("tinyllama/tinyllama-a-q8_0.gguf")).expect("the tiny llama fixture")
    })
}

/// A safetensors file with one f32 LoRA pair on layer 0's q_proj (r 1) for the config fuzzing.
fn one_pair() -> Vec<u8> {
    let n = 256usize;
    let header = format!(
        r#"{{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":{{"dtype":"F32","shape":[1,{n}],"data_offsets":[0,{a}]}},"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight":{{"dtype":"F32","shape":[{n},1],"data_offsets":[{a},{b}]}}}}"#,
        a = 4 * n,
        b = 8 * n
    );
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for i in 0..2 * n {
        out.extend_from_slice(&((i % 7) as f32 * 0.01 - 0.03).to_le_bytes());
    }
    out
}

fn scratch() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("lora-run-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let m = model();
    let dir = scratch();
    let path = match mode % 3 {
        0 => {
            std::fs::write(dir.join("adapter_config.json"), CONFIG).unwrap();
            std::fs::write(dir.join("adapter_model.safetensors"), rest).unwrap();
            let _ = runtime::inspect::inspect_peft(dir);
            dir.clone()
        }
        1 => {
            std::fs::write(dir.join("adapter_config.json"), rest).unwrap();
            std::fs::write(dir.join("adapter_model.safetensors"), one_pair()).unwrap();
            let _ = runtime::inspect::inspect_peft(dir);
            dir.clone()
        }
        _ => {
            let p = dir.join("adapter.gguf");
            std::fs::write(&p, rest).unwrap();
            let _ = runtime::inspect::Inspection::of_path(&p);
            p
        }
    };
    let Ok(a) = load_adapter(&path, m, &AdapterOptions::default()) else {
        return;
    };
    let _ = a.summary();
    let h = AdapterHandle::new(a.name.clone(), 1, a);
    // The head only at one scale: it is most of a forward pass on this model.
    for (scale, logits) in [(1.0f32, Logits::Last), (-0.5, Logits::None)] {
        let active = [(h.clone(), scale)];
        let Ok(plan) = LoraPlan::new(m, &active) else {
            continue;
        };
        let mut kv = m.new_kv_cache(8);
        let _ = m.forward_with(&mut kv, &[1, 450, 4996], logits, &plan);
    }
    let _ = bake(m, &[(h, 1.0)], BakeType::Same);
});
