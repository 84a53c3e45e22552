//! The base models' last-position logits against the transformers references (float32
//! forward over the dequantized GGUF weights): top-1 equal, top-5 sharing at least 4 ids.

use lora_run_tests::{GEMMA, QWEN, fixtures_dir, model, reference, reference_top, top_k};
use runtime::model::{Logits, Model};

fn check(model_path: std::path::PathBuf, reference_file: &str) {
    let m = Model::load(&model_path).unwrap();
    let r = reference(reference_file);
    for p in r["prompts"].as_array().unwrap() {
        let ids: Vec<u32> = p["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let mut kv = m.new_kv_cache(512);
        let logits = m.forward(&mut kv, &ids, Logits::Last).unwrap();
        let want = reference_top(&p["top20"]);
        let got = top_k(&logits, 5);
        let want5: Vec<u32> = want.iter().take(5).map(|w| w.0).collect();
        let shared = got.iter().filter(|g| want5.contains(g)).count();
        let max_diff = want
            .iter()
            .map(|(id, l)| (logits[*id as usize] - l).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{reference_file} {:?}: top5 {got:?} vs {want5:?}, max |Δlogit| over ref top20 {max_diff:.4}",
            p["prompt"]
        );
        assert_eq!(got[0], want5[0], "{reference_file} {}: top-1", p["prompt"]);
        assert!(shared >= 4, "{reference_file} {}: top-5 shares {shared}", p["prompt"]);
    }
}

#[test]
fn gemma_base_matches_transformers() {
    check(model(GEMMA), "gemma3-270m__base__1.0.json");
}

#[test]
fn qwen_base_matches_transformers() {
    check(model(QWEN), "qwen2-0.5b__base__1.0.json");
}

#[test]
fn tinyllama_base_matches_transformers() {
    check(
        fixtures_dir().join("tinyllama/tinyllama-a-q8_0.gguf"),
        "tinyllama-a__base__1.0.json",
    );
}
