//! The main job and the model subcommands of `lora-run`, on the real models, against
//! llama.cpp's and transformers' reference values.

use std::process::Command;

use lora_run_tests::{GEMMA, QWEN, llamacpp_reference, model, reference, reference_top};
use serde_json::Value;

fn lora_run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lora-run"))
        .args(args)
        .output()
        .expect("run lora-run")
}

fn json_of(args: &[&str]) -> Value {
    let out = lora_run(args);
    assert!(
        out.status.success(),
        "lora-run {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

/// With `--q8-decode` (8-bit activations in decode too, llama.cpp's numerics) the greedy
/// tokens are llama.cpp's.
#[test]
fn greedy_generation_matches_llamacpp() {
    let r = llamacpp_reference();
    let g = &r["gemma"]["greedy"][0];
    assert_eq!(g["prompt"], "The capital of France is");
    let m = model(GEMMA);
    let j = json_of(&[
        "-m",
        m.to_str().unwrap(),
        "-p",
        "The capital of France is",
        "-n",
        "16",
        "--temp",
        "0",
        "--json",
        "--q8-decode",
    ]);
    assert_eq!(ids(&j["tokens"]), ids(&g["tokens"])[..16]);
    assert_eq!(ids(&j["prompt_tokens"]), [2, 818, 5279, 529, 7001, 563]);
    assert!(
        j["text"]
            .as_str()
            .unwrap()
            .starts_with(" the capital of the country of France.")
    );
    assert!(j["timings"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(j["stop_reason"], "length");
}

#[test]
fn tokenize_matches_llamacpp() {
    let r = llamacpp_reference();
    for (key, name) in [("gemma", GEMMA), ("qwen", QWEN)] {
        let m = model(name);
        for case in r[key]["tokenize"].as_array().unwrap().iter().take(12) {
            let text = case["text"].as_str().unwrap();
            let j = json_of(&["tokenize", "-m", m.to_str().unwrap(), "--text", text, "--json"]);
            assert_eq!(j["tokens"], case["ids"], "{key} {text:?}");
        }
    }
}

#[test]
fn same_seed_same_text() {
    let m = model(QWEN);
    let args = [
        "-m",
        m.to_str().unwrap(),
        "-p",
        "Once upon a time",
        "-n",
        "24",
        "--temp",
        "1.0",
        "--seed",
        "7",
        "--json",
    ];
    let a = json_of(&args);
    let b = json_of(&args);
    assert_eq!(a["tokens"], b["tokens"]);
    assert_eq!(a["tokens"].as_array().unwrap().len(), 24);
}

#[test]
fn logits_match_transformers() {
    let r = reference("qwen2-0.5b__base__1.0.json");
    let p = &r["prompts"][0];
    let m = model(QWEN);
    let j = json_of(&[
        "logits",
        "-m",
        m.to_str().unwrap(),
        "-p",
        p["prompt"].as_str().unwrap(),
        "--top",
        "20",
        "--json",
    ]);
    let got: Vec<u64> = j["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_u64().unwrap())
        .collect();
    let want = reference_top(&p["top20"]);
    assert_eq!(got.len(), 20);
    assert_eq!(got[0], want[0].0 as u64);
    let shared = got[..5]
        .iter()
        .filter(|g| want[..5].iter().any(|w| w.0 as u64 == **g))
        .count();
    assert!(shared >= 4);
}

#[test]
fn stop_string_and_end_of_generation() {
    let m = model(GEMMA);
    let j = json_of(&[
        "-m",
        m.to_str().unwrap(),
        "-p",
        "The capital of France is",
        "-n",
        "32",
        "--temp",
        "0",
        "--stop",
        ".",
        "--json",
    ]);
    assert_eq!(j["text"], " the capital of the country of France");
    assert_eq!(j["stop_reason"], "stop_string");
    let q = model(QWEN);
    let j = json_of(&[
        "-m",
        q.to_str().unwrap(),
        "-p",
        "What is 2+2? Reply with just the number.",
        "--chat",
        "-n",
        "32",
        "--temp",
        "0",
        "--json",
    ]);
    assert_eq!(j["stop_reason"], "eog", "{j}");
    assert!(j["text"].as_str().unwrap().contains('4'), "{j}");
    assert!(j["tokens"].as_array().unwrap().len() < 32);
}

#[test]
fn prompt_longer_than_context_is_an_error() {
    let m = model(QWEN);
    let long = "word ".repeat(100);
    let out = lora_run(&["-m", m.to_str().unwrap(), "-p", &long, "--ctx", "32", "-n", "4"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: prompt of 101 tokens does not fit the context of 32 tokens"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

#[test]
fn missing_model_and_unsupported_architecture() {
    let out = lora_run(&["-m", "/no/such.gguf", "-p", "hi"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: cannot read /no/such.gguf"));
    // A folder: named once.
    let dir = std::env::temp_dir();
    let out = lora_run(&["-m", dir.to_str().unwrap(), "-p", "hi"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("error: {} is a directory, not a GGUF file\n", dir.display())
    );
    // A LoRA adapter GGUF is not a model.
    let adapter = lora_run_tests::fixtures_dir().join("adapters/gemma3-270m-jargon.gguf");
    let out = lora_run(&["-m", adapter.to_str().unwrap(), "-p", "hi"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("gemma3-270m-jargon.gguf: this GGUF is a LoRA adapter"),
        "{err}"
    );
    // A model whose architecture is unknown: rewrite general.architecture of the tiny llama.
    let f =
        runtime::gguf::GgufFile::open(lora_run_tests::fixtures_dir().join("tinyllama/tinyllama-a-q8_0.gguf")).unwrap();
    let mut w = runtime::gguf::GgufWriter::new();
    w.metadata = f.metadata().clone();
    w.metadata
        .set("general.architecture", runtime::gguf::GgufValue::String("mamba".into()));
    for t in f.tensors() {
        w.add_tensor(t.name.clone(), t.shape.clone(), t.ty, f.view(t).data);
    }
    let p = std::env::temp_dir().join(format!("lora-run-mamba-{}.gguf", std::process::id()));
    w.write_file(&p).unwrap();
    let out = lora_run(&["-m", p.to_str().unwrap(), "-p", "hi"]);
    std::fs::remove_file(&p).ok();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.starts_with("error: ")
            && err.contains(".gguf: unsupported architecture `mamba` (supported: llama, qwen2, qwen3, gemma3)"),
        "{err}"
    );
}

/// `bench` measures after `-d` tokens of context, says so, and refuses a depth the context
/// cannot hold.
#[test]
fn bench_at_depth() {
    let m = model(GEMMA);
    let m = m.to_str().unwrap();
    let j = json_of(&[
        "bench", "-m", m, "-t", "2", "-p", "8", "-n", "2", "-d", "70", "-r", "1", "--json",
    ]);
    assert_eq!(
        (j["n_prompt"].as_u64(), j["n_gen"].as_u64(), j["n_depth"].as_u64()),
        (Some(8), Some(2), Some(70))
    );
    assert!(j["pp_tokens_per_s"].as_f64().unwrap() > 0.0 && j["tg_tokens_per_s"].as_f64().unwrap() > 0.0);
    let out = lora_run(&["bench", "-m", m, "-p", "0", "-n", "2", "-d", "5", "-r", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("tg2 @ d5") && !text.contains("pp"),
        "{text}"
    );
    // Which decode ran: the CPU's default, or as asked.
    let default = match quant::Activations::decode_default() {
        quant::Activations::Residual => "q8+remainder",
        quant::Activations::VecDotType => "q8",
    };
    assert_eq!(j["decode"], default);
    for (flag, says) in [("--q8-decode", "q8"), ("--residual-decode", "q8+remainder")] {
        let j = json_of(&["bench", "-m", m, "-p", "0", "-n", "1", "-r", "1", "--json", flag]);
        assert_eq!(j["decode"], says, "{flag}");
    }
    let out = lora_run(&["bench", "-m", m, "-p", "8", "-n", "2", "-d", "32761"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("do not fit the model's context of 32768"),
        "{err}"
    );
}
