//! Perplexity by llama.cpp's method on /usr/share/common-licenses/GPL-3 (ctx 512, 8 chunks),
//! within 1% of llama.cpp's own figure on both real models (measured here: gemma 14.9048 against
//! 15.0033, 0.66%; qwen 5.9009 against 5.9109, 0.17%). Differences in the last bits move these
//! figures by tenths of a percent (llama.cpp itself gives 15.0033 for gemma with flash attention
//! and 14.9738 without; gemma's was 0.40% before its GELU table matched ggml's entry for entry),
//! so the bound stays at 1% for other CPUs.

use lora_run_tests::{GEMMA, QWEN, engine, llamacpp_reference};

fn check(key: &str, name: &str, tolerance: f64) {
    let r = llamacpp_reference();
    let want = &r[key]["perplexity"];
    let file = want["file"].as_str().unwrap();
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
    let e = engine(name);
    let got = runtime::perplexity::perplexity(&e, &text, 512, Some(8), &[], |_, _| {}).unwrap();
    let want = want["ppl"].as_f64().unwrap();
    let rel = (got.ppl - want).abs() / want;
    eprintln!("{key}: ppl {:.4} vs llama.cpp {want:.4} ({:.2}%)", got.ppl, rel * 100.0);
    assert_eq!(got.chunks, 8);
    assert_eq!(got.tokens, 8 * 255);
    assert!(rel < tolerance, "{key}: ppl {} vs llama.cpp {want}", got.ppl);
}

#[test]
fn gemma_perplexity_matches_llamacpp() {
    check("gemma", GEMMA, 0.01);
}

#[test]
fn qwen_perplexity_matches_llamacpp() {
    check("qwen", QWEN, 0.01);
}
