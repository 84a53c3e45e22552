//! What is inside a GGUF file (model or LoRA adapter), as one serializable summary: what
//! `lora-run inspect` prints, and what apps can show.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::{Value, json};

use crate::gguf::{GgufArray, GgufError, GgufFile, GgufValue};

/// Arrays longer than this are summarized (element type and length) instead of listed.
pub const MAX_LISTED_ARRAY: usize = 32;

/// Summary of a GGUF file.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    /// The file inspected.
    pub path: String,
    /// File size in bytes.
    pub file_size: u64,
    /// GGUF version.
    pub version: u32,
    /// `general.type` (`"model"`, `"adapter"`), `"model"` when absent.
    pub file_type: String,
    /// `general.architecture`.
    pub architecture: Option<String>,
    /// `general.name`.
    pub name: Option<String>,
    /// `general.alignment` or the default 32.
    pub alignment: u64,
    /// Absolute byte offset of the data section.
    pub data_offset: u64,
    /// Number of metadata keys.
    pub metadata_count: usize,
    /// Number of tensors.
    pub tensor_count: usize,
    /// Total elements over all tensors.
    pub parameter_count: u64,
    /// Tensors per ggml type name.
    pub tensor_types: BTreeMap<String, usize>,
    /// The `{architecture}.*` keys with the prefix removed (`block_count`, `embedding_length`,
    /// `attention.head_count`, `rope.freq_base`, ...), plus `adapter.*` keys of an adapter.
    pub hyperparameters: BTreeMap<String, Value>,
    /// Tokenizer summary, when the file has one.
    pub tokenizer: Option<TokenizerSummary>,
    /// Every metadata key mapped to its value; arrays longer than [`MAX_LISTED_ARRAY`] become
    /// `{"type": "array", "element_type": T, "length": N}`.
    pub metadata: serde_json::Map<String, Value>,
    /// Every tensor in file order.
    pub tensors: Vec<TensorSummary>,
}

/// The tokenizer keys of a GGUF file (`tokenizer.ggml.*`).
#[derive(Clone, Debug, Serialize)]
pub struct TokenizerSummary {
    /// `tokenizer.ggml.model` (`llama`, `gpt2`, ...).
    pub model: String,
    /// `tokenizer.ggml.pre`, when present.
    pub pre: Option<String>,
    /// Vocabulary size.
    pub tokens: usize,
    /// Number of BPE merges (0 when absent).
    pub merges: usize,
    pub bos_token_id: Option<u64>,
    pub eos_token_id: Option<u64>,
    /// Whether `tokenizer.chat_template` is present.
    pub chat_template: bool,
}

/// One tensor.
#[derive(Clone, Debug, Serialize)]
pub struct TensorSummary {
    /// llama.cpp tensor name.
    pub name: String,
    /// ggml type name.
    #[serde(rename = "type")]
    pub ty: String,
    /// Shape in ggml order (ne0 first).
    pub shape: Vec<u64>,
    /// Data offset as stored in the file, relative to the data section.
    pub offset: u64,
    /// Absolute byte offset of the data in the file.
    pub file_offset: u64,
    /// Data size in bytes.
    pub size: u64,
}

/// Convert a metadata value to JSON, summarizing long arrays. NaN and infinities, which JSON
/// cannot hold, become the strings `"NaN"`, `"inf"`, `"-inf"`.
pub fn value_to_json(v: &GgufValue) -> Value {
    match v {
        GgufValue::U8(x) => json!(x),
        GgufValue::I8(x) => json!(x),
        GgufValue::U16(x) => json!(x),
        GgufValue::I16(x) => json!(x),
        GgufValue::U32(x) => json!(x),
        GgufValue::I32(x) => json!(x),
        GgufValue::U64(x) => json!(x),
        GgufValue::I64(x) => json!(x),
        // Shortest f32 representation (1e-6, not 9.999999974752427e-7).
        GgufValue::F32(x) => float_json(x.to_string().parse::<f64>().unwrap_or(*x as f64)),
        GgufValue::F64(x) => float_json(*x),
        GgufValue::Bool(b) => json!(b),
        GgufValue::String(s) => json!(s),
        GgufValue::Array(a) => array_to_json(a),
    }
}

fn float_json(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else if x.is_nan() {
        json!("NaN")
    } else if x > 0.0 {
        json!("inf")
    } else {
        json!("-inf")
    }
}

fn array_to_json(a: &GgufArray) -> Value {
    if a.len() > MAX_LISTED_ARRAY {
        return json!({"type": "array", "element_type": a.elem_type().name(), "length": a.len()});
    }
    Value::Array(
        (0..a.len())
            .filter_map(|i| a.get(i))
            .map(|v| value_to_json(&v))
            .collect(),
    )
}

impl Inspection {
    /// Open and summarize the GGUF file at `path`.
    ///
    /// Errors: any [`GgufError`] from opening or parsing the file.
    pub fn of_path(path: impl AsRef<Path>) -> Result<Inspection, GgufError> {
        let path = path.as_ref();
        let file = GgufFile::open(path)?;
        Ok(Self::of_file(&file, &path.display().to_string()))
    }

    /// Summarize an open file.
    pub fn of_file(file: &GgufFile, path: &str) -> Inspection {
        let md = file.metadata();
        let architecture = md.get_str("general.architecture").ok().map(str::to_string);
        let mut hyperparameters = BTreeMap::new();
        let prefixes: Vec<String> = architecture
            .iter()
            .map(|a| format!("{a}."))
            .chain(std::iter::once("adapter.".to_string()))
            .collect();
        for (k, v) in md.iter() {
            for p in &prefixes {
                if let Some(rest) = k.strip_prefix(p.as_str()) {
                    hyperparameters.insert(
                        if p == "adapter." {
                            k.to_string()
                        } else {
                            rest.to_string()
                        },
                        value_to_json(v),
                    );
                }
            }
        }
        let tokenizer = md.get_str("tokenizer.ggml.model").ok().map(|model| TokenizerSummary {
            model: model.to_string(),
            pre: md.get_str("tokenizer.ggml.pre").ok().map(str::to_string),
            tokens: md.get_array("tokenizer.ggml.tokens").map(|a| a.len()).unwrap_or(0),
            merges: md.get_array("tokenizer.ggml.merges").map(|a| a.len()).unwrap_or(0),
            bos_token_id: md.get_u64("tokenizer.ggml.bos_token_id").ok(),
            eos_token_id: md.get_u64("tokenizer.ggml.eos_token_id").ok(),
            chat_template: md.get("tokenizer.chat_template").is_some(),
        });
        let header = file.header();
        let mut tensor_types = BTreeMap::new();
        let tensors: Vec<TensorSummary> = file
            .tensors()
            .iter()
            .map(|t| {
                *tensor_types.entry(t.ty.name().to_string()).or_insert(0) += 1;
                TensorSummary {
                    name: t.name.clone(),
                    ty: t.ty.name().to_string(),
                    shape: t.shape.clone(),
                    offset: t.offset,
                    file_offset: header.data_offset + t.offset,
                    size: t.size,
                }
            })
            .collect();
        Inspection {
            path: path.to_string(),
            file_size: file.bytes().len() as u64,
            version: file.version(),
            file_type: md.get_str("general.type").unwrap_or("model").to_string(),
            architecture,
            name: md.get_str("general.name").ok().map(str::to_string),
            alignment: header.alignment,
            data_offset: header.data_offset,
            metadata_count: md.len(),
            tensor_count: tensors.len(),
            parameter_count: file.tensors().iter().map(|t| t.n_elements()).sum(),
            tensor_types,
            hyperparameters,
            tokenizer,
            metadata: md.iter().map(|(k, v)| (k.to_string(), value_to_json(v))).collect(),
            tensors,
        }
    }
}

/// Summary of a PEFT adapter (a folder with `adapter_model.safetensors`, or a `.safetensors`
/// file): its `adapter_config.json` (or `NAME.json` beside the file) as written, and every
/// tensor with its dtype and shape. Nothing is validated against a model here.
///
/// Errors: [`crate::lora::LoraError::Io`] naming the file that cannot be read or parsed.
pub fn inspect_peft(path: &Path) -> Result<Value, crate::lora::LoraError> {
    use crate::lora::LoraError;
    let io = |p: &Path, m: String| LoraError::Io {
        path: p.to_path_buf(),
        message: m,
    };
    let (weights, configs) = if path.is_dir() {
        (
            path.join("adapter_model.safetensors"),
            vec![path.join("adapter_config.json")],
        )
    } else {
        let dir = path.parent().unwrap_or(Path::new("."));
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        (
            path.to_path_buf(),
            vec![dir.join(format!("{stem}.json")), dir.join("adapter_config.json")],
        )
    };
    let bytes = std::fs::read(&weights).map_err(|e| io(&weights, e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        io(
            &weights,
            format!(
                "not a valid safetensors file: {}",
                crate::lora::peft::describe_st_error(&e, &bytes)
            ),
        )
    })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| io(&weights, e.to_string()))?;
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    // Layers in numeric order (…layers.2… before …layers.10…).
    names.sort_by_key(|n| natural_key(n));
    let mut params = 0u64;
    let tensors: Vec<Value> = names
        .iter()
        .filter_map(|n| st.tensor(n).ok().map(|t| (n, t)))
        .map(|(n, t)| {
            params += t.shape().iter().product::<usize>() as u64;
            json!({"name": n, "type": format!("{:?}", t.dtype()), "shape": t.shape()})
        })
        .collect();
    let config = match configs.iter().find(|c| c.is_file()) {
        Some(c) => {
            let text = std::fs::read_to_string(c).map_err(|e| io(c, e.to_string()))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| io(c, format!("invalid JSON: {e}")))?;
            json!({"file": c.display().to_string(), "values": v})
        }
        None => Value::Null,
    };
    // Modules, ranks and the PEFT scale the config gives (before any rank_pattern /
    // alpha_pattern override).
    let mut modules = std::collections::BTreeSet::new();
    let mut ranks = std::collections::BTreeSet::new();
    for n in &names {
        if let Some((module, _)) = n.split_once(".lora_A").or_else(|| n.split_once(".lora_embedding_A")) {
            modules.insert(module.to_string());
            if let Some(&r) = st.tensor(n).ok().and_then(|t| t.shape().first().copied()).as_ref() {
                ranks.insert(r);
            }
        }
    }
    let cv = &config["values"];
    // A config without lora_alpha gets PEFT's default.
    let default_alpha = crate::lora::peft::PEFT_DEFAULT_LORA_ALPHA as f64;
    let alpha = cv["lora_alpha"].as_f64().or(cv.is_object().then_some(default_alpha));
    // A config without r: the rank of the tensors, as loading takes it (when they agree).
    let r = cv["r"].as_f64().or_else(|| {
        let only = (cv.is_object() && ranks.len() == 1)
            .then(|| ranks.first().copied())
            .flatten();
        only.map(|r| r as f64)
    });
    let rslora = cv["use_rslora"].as_bool().unwrap_or(false);
    let scale = match (alpha, r) {
        (Some(a), Some(r)) if r > 0.0 => Some(crate::lora::peft::peft_scale(a, r, rslora)),
        _ => None,
    };
    let summary = json!({
        "modules": modules.len(),
        "ranks": ranks,
        "scale": scale,
        "use_rslora": rslora,
        "use_dora": cv["use_dora"].as_bool().unwrap_or(false) || names.iter().any(|n| n.contains("lora_magnitude_vector")),
    });
    Ok(json!({
        "path": path.display().to_string(),
        "format": "peft",
        "summary": summary,
        "config": config,
        "metadata": meta.metadata(),
        "tensor_count": tensors.len(),
        "parameter_count": params,
        "tensors": tensors,
    }))
}

/// A sort key that orders the digit runs of a name by value (`layers.2` before `layers.10`).
fn natural_key(name: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut digits = String::new();
    for ch in name.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
        } else {
            if !digits.is_empty() {
                out.push((std::mem::take(&mut text), digits.parse().unwrap_or(u64::MAX)));
                digits.clear();
            }
            text.push(ch);
        }
    }
    out.push((text, digits.parse().unwrap_or(0)));
    out
}
