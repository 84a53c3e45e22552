//! Greedy decoding with llama.cpp's numerics (`LoadOptions::decode_activations` one 8-bit
//! pass, as `--q8-decode`) against llama.cpp's own tokens (`../shared/fixtures/llamacpp`): the first 16
//! generated tokens equal, or up to the first step whose top-two gap was under 0.05.

use lora_run_tests::{GEMMA, QWEN, clear_steps, llamacpp_reference, model};
use runtime::{Engine, GenerateOptions, LoadOptions, SamplingOptions};

fn check(key: &str, name: &str) {
    let reference = llamacpp_reference();
    let opts = LoadOptions {
        decode_activations: Some(quant::Activations::VecDotType),
        ..Default::default()
    };
    let e = Engine::load(model(name), &opts).unwrap();
    for g in reference[key]["greedy"].as_array().unwrap() {
        let prompt = g["prompt"].as_str().unwrap();
        let want: Vec<u32> = g["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let margins: Vec<f64> = g["margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let n = clear_steps(&margins, 0.05, 16);
        let opts = GenerateOptions {
            n_predict: 16,
            sampling: SamplingOptions::greedy(),
            stop_at_eog: false,
            ..Default::default()
        };
        let mut s = e.session(512);
        let out = s.generate(prompt, &opts, |_| true).unwrap();
        let same = out.tokens.iter().zip(&want).take_while(|(a, b)| a == b).count();
        eprintln!("{key} {prompt:?}: {same} of 16 equal, {n} required; got {:?}", out.text);
        assert!(
            same >= n,
            "{key} {prompt:?}: diverged at step {same}, before the near-tie at {n}: {:?} vs {:?}",
            &out.tokens[..n.min(out.tokens.len())],
            &want[..n]
        );
    }
}

#[test]
fn gemma_greedy_matches_llamacpp() {
    check("gemma", GEMMA);
}

#[test]
fn qwen_greedy_matches_llamacpp() {
    check("qwen", QWEN);
}
