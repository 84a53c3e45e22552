//! `lora-run inspect` on the real models, and on broken copies of them.

use std::process::Command;

use lora_run_tests::{GEMMA, QWEN, model};
use serde_json::Value;

fn lora_run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lora-run"))
        .args(args)
        .output()
        .expect("run lora-run")
}

fn inspect_json(name: &str) -> Value {
    let path = model(name);
    let out = lora_run(&["inspect", path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("inspect --json prints one JSON object")
}

fn hp<'a>(j: &'a Value, key: &str) -> &'a Value {
    &j["hyperparameters"][key]
}

#[test]
fn gemma_json() {
    let j = inspect_json(GEMMA);
    assert_eq!(j["architecture"], "gemma3");
    assert_eq!(j["version"], 3);
    assert_eq!(j["tensor_count"], 236);
    assert_eq!(j["tensors"].as_array().unwrap().len(), 236);
    for (k, v) in [
        ("block_count", 18),
        ("embedding_length", 640),
        ("feed_forward_length", 2048),
        ("attention.head_count", 4),
        ("attention.head_count_kv", 1),
        ("attention.key_length", 256),
        ("attention.value_length", 256),
        ("attention.sliding_window", 512),
        ("context_length", 32768),
    ] {
        assert_eq!(hp(&j, k), v, "gemma3.{k}");
    }
    assert_eq!(hp(&j, "rope.freq_base").as_f64(), Some(1e6));
    assert_eq!(hp(&j, "attention.layer_norm_rms_epsilon").as_f64(), Some(1e-6));
    let md = &j["metadata"];
    assert_eq!(md["gemma3.block_count"], 18);
    assert_eq!(md["tokenizer.ggml.model"], "llama");
    assert_eq!(md["tokenizer.ggml.bos_token_id"], 2);
    assert_eq!(md["tokenizer.ggml.eos_token_id"], 1);
    assert_eq!(md["tokenizer.ggml.add_bos_token"], true);
    // The vocabulary is summarized, not listed.
    assert_eq!(md["tokenizer.ggml.tokens"]["type"], "array");
    assert_eq!(md["tokenizer.ggml.tokens"]["element_type"], "string");
    assert_eq!(md["tokenizer.ggml.tokens"]["length"], 262_144);
    assert_eq!(j["tokenizer"]["tokens"], 262_144);
    let emb = j["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "token_embd.weight")
        .unwrap();
    assert_eq!(emb["type"], "Q8_0");
    assert_eq!(emb["shape"], serde_json::json!([640, 262144]));
    assert!(emb["offset"].is_u64());
    let types: Vec<&str> = j["tensor_types"]
        .as_object()
        .unwrap()
        .keys()
        .map(|s| s.as_str())
        .collect();
    assert_eq!(types, ["F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"]);
}

#[test]
fn qwen_json() {
    let j = inspect_json(QWEN);
    assert_eq!(j["architecture"], "qwen2");
    assert_eq!(j["tensor_count"], 291);
    for (k, v) in [
        ("block_count", 24),
        ("embedding_length", 896),
        ("feed_forward_length", 4864),
        ("attention.head_count", 14),
        ("attention.head_count_kv", 2),
        ("context_length", 32768),
    ] {
        assert_eq!(hp(&j, k), v, "qwen2.{k}");
    }
    assert_eq!(hp(&j, "rope.freq_base").as_f64(), Some(1e6));
    assert_eq!(hp(&j, "attention.layer_norm_rms_epsilon").as_f64(), Some(1e-6));
    let t = &j["tokenizer"];
    assert_eq!(t["model"], "gpt2");
    assert_eq!(t["pre"], "qwen2");
    assert_eq!(t["tokens"], 151_936);
    assert_eq!(t["merges"], 151_387);
    assert_eq!(t["bos_token_id"], 151_643);
    assert_eq!(t["eos_token_id"], 151_645);
    assert_eq!(t["chat_template"], true);
    let tensors = j["tensors"].as_array().unwrap();
    for t in tensors {
        assert!(t["name"].is_string() && t["type"].is_string() && t["shape"].is_array() && t["offset"].is_u64());
    }
    assert!(
        tensors
            .iter()
            .any(|t| t["name"] == "blk.0.attn_q.bias" && t["type"] == "F32")
    );
    assert!(
        tensors
            .iter()
            .any(|t| t["name"] == "output.weight" && t["type"] == "Q8_0")
    );
}

#[test]
fn text_output_names_everything() {
    let path = model(GEMMA);
    let out = lora_run(&["inspect", path.to_str().unwrap()]);
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.contains("GGUF v3"));
    assert!(s.contains("236 tensors"));
    assert!(s.contains("architecture: gemma3"));
    assert!(s.contains("block_count = 18"));
    assert!(s.contains("tokenizer: llama"));
    assert!(s.contains("blk.17.ffn_down.weight"));
}

/// Run inspect on `bytes` written to a temp file: it must fail with one `error:` line that
/// contains `expect`, and no panic.
fn assert_clean_failure(tag: &str, bytes: &[u8], expect: &str) {
    let p = std::env::temp_dir().join(format!("lora-run-inspect-{tag}-{}.gguf", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    let out = lora_run(&["inspect", p.to_str().unwrap()]);
    std::fs::remove_file(&p).ok();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{tag}: inspect succeeded");
    assert!(!err.contains("panicked"), "{tag}: {err}");
    assert_eq!(err.lines().count(), 1, "{tag}: one line expected, got: {err}");
    assert!(err.starts_with("error: "), "{tag}: {err}");
    assert!(err.contains(expect), "{tag}: expected `{expect}` in: {err}");
}

#[test]
fn truncated_and_corrupted_models_fail_cleanly() {
    let path = model(GEMMA);
    let f = runtime::gguf::GgufFile::open(&path).unwrap();
    let bytes = f.bytes();
    let d = f.header().data_offset as usize;
    // Cut inside the metadata (the vocabulary), inside the tensor infos, and inside the data.
    assert_clean_failure(
        "cut-metadata",
        &bytes[..100_000],
        "array length 262144 at offset 971 cannot fit",
    );
    assert_clean_failure("cut-infos", &bytes[..d - 500], "truncated file");
    assert_clean_failure("cut-data", &bytes[..d + 1_000_000], "lies outside the file");
    let mut bad = bytes[..d + 4096].to_vec();
    bad[0] = b'X';
    assert_clean_failure("magic", &bad, "not a GGUF file");
    // Make the first tensor's type id 99.
    let first = &f.tensors()[0];
    let type_pos = first.info_offset as usize + 8 + first.name.len() + 4 + 8 * first.shape.len();
    let mut bad = bytes[..d + 4096].to_vec();
    bad[type_pos..type_pos + 4].copy_from_slice(&99u32.to_le_bytes());
    assert_clean_failure("type", &bad, "unknown ggml type 99");
    assert_clean_failure("missing", &[], "truncated file");
}

#[test]
fn missing_file_fails_cleanly() {
    let out = lora_run(&["inspect", "/no/such/model.gguf"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: cannot read /no/such/model.gguf"), "{err}");
}
