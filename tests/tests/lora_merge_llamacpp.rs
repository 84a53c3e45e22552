//! A GGUF written by `lora-run merge` (the gemma jargon adapter baked in as F16), loaded by
//! llama.cpp, gives the same greedy tokens as lora-run applying the adapter on the fly.
//!
//! llama.cpp's side is golden: `tests/golden/merge_llamacpp/make_golden.sh` ran the same merge
//! and llama.cpp's `llama-completion` on the result (16 greedy tokens per fixture prompt). This
//! test rebuilds the merged file, checks it is byte for byte the file llama.cpp read (sha256),
//! then compares:
//! - lora-run on the merged file with llama.cpp on it: the same 16 tokens;
//! - lora-run on the fly (quantized base + adapter, decoding as generation does) with
//!   llama.cpp on the merged file: the same tokens up to the first step where the on-the-fly
//!   top-two margin is under [`NEAR_TIE`] (activations are rounded differently on the two
//!   sides: Q8 and its remainder against the quantized base, f16 against the merged F16
//!   weights).
//!
//! lora-run reads the merged file with one quantization of the activations per product
//! (`decode_activations = VecDotType`), as llama.cpp does.

use lora_run_tests::{GEMMA, fixtures_dir, model, workspace_root};
use runtime::lora::bake::{BakeType, bake};
use runtime::lora::{AdapterHandle, AdapterOptions, LoraPlan, load_adapter};
use runtime::model::{Logits, Model};
use runtime::tokenizer::Tokenizer;
use sha2::Digest;

/// Top-two margins under this end the on-the-fly comparison: the two sides' activation
/// rounding (the prompt's Q8 on the quantized base against f16 on the merged weights) moves
/// these logits by up to about 0.5.
const NEAR_TIE: f32 = 0.5;

fn golden() -> serde_json::Value {
    let p = workspace_root().join("tests/golden/merge_llamacpp/golden.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Greedy tokens and, per step, the top-two margin.
fn greedy(m: &Model, plan: &LoraPlan, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<f32>) {
    let mut kv = m.new_kv_cache(prompt.len() + n + 1);
    let mut logits = m.forward_with(&mut kv, prompt, Logits::Last, plan).unwrap();
    let (mut ids, mut margins) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let top = runtime::sampler::top_k(&logits, 2);
        ids.push(top[0]);
        margins.push(logits[top[0] as usize] - logits[top[1] as usize]);
        logits = m.decode_with(&mut kv, top[0], plan).unwrap();
    }
    (ids, margins)
}

#[test]
fn merged_gguf_in_llamacpp_matches_on_the_fly() {
    let g = golden();
    let base = Model::load(model(GEMMA)).unwrap();
    let adapter_dir = fixtures_dir().join("adapters/gemma3-270m-jargon");
    let a = load_adapter(&adapter_dir, &base, &AdapterOptions::default()).unwrap();
    let h = AdapterHandle::new(a.name.clone(), 1, a);
    // What `lora-run merge ... --type f16` does.
    let (baked, _) = bake(&base, &[(h.clone(), 1.0)], BakeType::F16).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let merged_path = dir.path().join("merged.gguf");
    runtime::lora::merge::write_merged(&baked, &format!("+ LoRA {}:1", h.name), &merged_path).unwrap();
    drop(baked);
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(&merged_path).unwrap(), &mut hasher).unwrap();
    let sha = format!("{:x}", hasher.finalize());
    assert_eq!(
        sha,
        g["merged_sha256"].as_str().unwrap(),
        "the merged file is not the one llama.cpp's golden values were made on: rerun tests/golden/merge_llamacpp/make_golden.sh"
    );
    let mut merged = Model::load(&merged_path).unwrap();
    merged.decode_activations = quant::Activations::VecDotType;
    let tok = Tokenizer::from_gguf(merged.file().metadata()).unwrap();
    let plan = LoraPlan::new(&base, &[(h, 1.0)]).unwrap();
    let mut followed = Vec::new();
    for p in g["prompts"].as_array().unwrap() {
        let prompt = p["prompt"].as_str().unwrap();
        let theirs = p["llamacpp_text"].as_str().unwrap();
        let ids = tok.encode(prompt, true).unwrap();
        // Same file, two runtimes: all 16 tokens.
        let (on_merged, _) = greedy(&merged, &LoraPlan::default(), &ids, 16);
        let text = tok.decode(&on_merged);
        assert!(
            theirs.starts_with(&text),
            "{prompt:?}: lora-run on the merged file {text:?}, llama.cpp {theirs:?}"
        );
        // On the fly against llama.cpp on the merged file, up to a near-tie.
        let (fly, margins) = greedy(&base, &plan, &ids, 16);
        let clear = margins.iter().take_while(|&&m| m >= NEAR_TIE).count();
        let same = (0..=16)
            .take_while(|&j| theirs.starts_with(&tok.decode(&fly[..j])))
            .count()
            - 1;
        eprintln!(
            "{prompt:?}: on the fly = llama.cpp on the merged GGUF for {same} of 16 tokens ({clear} before a near-tie; margins {margins:.2?})"
        );
        assert!(
            same >= clear,
            "{prompt:?}: on the fly {:?} departs at token {same}, before the first near-tie ({clear}); llama.cpp {theirs:?}",
            tok.decode(&fly)
        );
        followed.push(same);
    }
    assert!(followed.iter().filter(|&&k| k == 16).count() >= 3, "{followed:?}");
}
