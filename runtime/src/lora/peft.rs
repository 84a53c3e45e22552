//! PEFT LoRA adapters: `adapter_config.json` (`peft/tuners/lora/config.py`, PEFT 0.21) and
//! `adapter_model.safetensors` (key layout of `peft/utils/save_and_load.py`).
//!
//! Keys look like `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`
//! (`[r, in]`), `….lora_B.weight` (`[out, r]`), `….lora_magnitude_vector` (`[out]`, DoRA),
//! `base_model.model.model.embed_tokens.lora_embedding_A` (`[r, n_vocab]`) / `…_B`
//! (`[n_embd, r]`), and `….embed_tokens.base_layer.weight` (a whole embedding saved with
//! `save_embedding_layers`). The `base_model.model.` prefix and the adapter name PEFT strips
//! when saving (`lora_A.default.weight`) may be present or not.
//!
//! Semantics (`LoraModel._create_and_replace`, `LoraLayer.update_layer`): a module's rank and
//! alpha are `rank_pattern` / `alpha_pattern`'s first key matching its name
//! (`get_pattern_key`: `re.match(rf"(.*\.)?({key})$", name)`), else `r` / `lora_alpha`;
//! scale = alpha / r, or alpha / √r with `use_rslora`. Which modules carry a LoRA follows
//! `check_target_module_exists` (`target_modules`, `exclude_modules`, `layers_to_transform`,
//! `layers_pattern`); every tensor of the file must belong to one of them.
//!
//! Refused (each a [`LoraError::Unsupported`] naming the field), because they change the
//! computation in ways lora-run does not implement: `peft_type` other than `LORA`,
//! `modules_to_save`, `bias` other than `"none"`, `lora_bias`, `layer_replication`,
//! `target_parameters`, `use_qalora`, `use_bdlora`, `alora_invocation_tokens`,
//! `arrow_config`, `trainable_token_indices`, `megatron_config`, `monteclora_config`,
//! `velora_config`, `kasa_config`, an `init_lora_weights` that rewrites the base weights
//! (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA, …), any unknown field that is set, and DoRA on the
//! embedding. `fan_in_fan_out = true` is accepted with a note: PEFT forces it to `False` on
//! `nn.Linear` layers, which all of ours are.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use fancy_regex::Regex;
use safetensors::{Dtype, SafeTensors};

use super::load::{Layout, PairShape, check_finite, check_shapes, folder_of, head_is_tied, io_error, sort_targets};
use super::mapping::{ALL_LINEAR, BLOCK_PROJECTIONS, ModuleTarget, map_module, peft_modules, permute_rows};
use super::{AdapterFormat, AdapterOptions, EmbeddingLora, LoraAdapter, LoraError, LoraTarget};
use crate::model::Model;

// ---------------------------------------------------------------------------------------------
// Ordered JSON: rank_pattern / alpha_pattern are matched first key first, in file order.
// ---------------------------------------------------------------------------------------------

/// A JSON value whose objects keep their key order (Python dicts do; `get_pattern_key`
/// returns the first matching key).
#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl<'de> serde::Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_none<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
                serde::Deserialize::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
                Ok(Json::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
                Ok(Json::Number(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
                Ok(Json::Number(v.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Json, E> {
                serde_json::Number::from_f64(v)
                    .map(Json::Number)
                    .ok_or_else(|| E::custom("non-finite number"))
            }
            fn visit_str<E>(self, v: &str) -> Result<Json, E> {
                Ok(Json::String(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Json, E> {
                Ok(Json::String(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Json::Array(out))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut out: Vec<(String, Json)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Json>()? {
                    // A repeated key keeps its first position and its last value (Python's json).
                    match out.iter_mut().find(|(key, _)| *key == k) {
                        Some(slot) => slot.1 = v,
                        None => out.push((k, v)),
                    }
                }
                Ok(Json::Object(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl Json {
    /// Null, false, "", [] or {}: a setting left at its "off" value.
    fn is_unset(&self) -> bool {
        match self {
            Json::Null | Json::Bool(false) => true,
            Json::String(s) => s.is_empty(),
            Json::Array(a) => a.is_empty(),
            Json::Object(o) => o.is_empty(),
            Json::Number(_) | Json::Bool(true) => false,
        }
    }

    /// Compact JSON text for messages.
    fn show(&self) -> String {
        let s = match self {
            Json::Null => "null".to_string(),
            Json::Bool(b) => b.to_string(),
            Json::Number(n) => n.to_string(),
            Json::String(s) => serde_json::to_string(s).unwrap_or_default(),
            Json::Array(a) => format!("[{}]", a.iter().map(Json::show).collect::<Vec<_>>().join(", ")),
            Json::Object(o) => format!(
                "{{{}}}",
                o.iter()
                    .map(|(k, v)| format!("{}: {}", serde_json::to_string(k).unwrap_or_default(), v.show()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        if s.chars().count() > 120 {
            format!("{}…", s.chars().take(120).collect::<String>())
        } else {
            s
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    /// An integer, also written as a float with no fraction (`8.0`).
    fn as_i64(&self) -> Option<i64> {
        match self {
            Json::Number(n) => n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            }),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The config
// ---------------------------------------------------------------------------------------------

/// A module selector of PEFT: a list (a module matches an entry when its name equals it or
/// ends with `.` + it) or one regular expression (a module matches when the whole name does,
/// `re.fullmatch`).
#[derive(Clone, Debug)]
pub enum ModuleSet {
    Names(Vec<String>),
    Regex { pattern: String, regex: Regex },
}

impl ModuleSet {
    fn matches(&self, module: &str) -> Result<bool, String> {
        match self {
            ModuleSet::Names(names) => Ok(names.iter().any(|n| module == n || ends_with_dotted(module, n))),
            ModuleSet::Regex { pattern, regex } => regex
                .is_match(module)
                .map_err(|e| format!("regex `{pattern}` on `{module}`: {e}")),
        }
    }

    fn describe(&self) -> String {
        match self {
            ModuleSet::Names(n) => format!("{n:?}"),
            ModuleSet::Regex { pattern, .. } => format!("regex {pattern:?}"),
        }
    }
}

fn ends_with_dotted(module: &str, suffix: &str) -> bool {
    module.len() > suffix.len()
        && module.ends_with(suffix)
        && module.as_bytes()[module.len() - suffix.len() - 1] == b'.'
}

/// One `rank_pattern` / `alpha_pattern` entry: the key as written, its compiled form
/// `(.*\.)?({key})$` (matched from the start, as `re.match` does) and the value.
#[derive(Clone, Debug)]
pub struct Pattern<T> {
    pub key: String,
    regex: Regex,
    pub value: T,
}

/// `get_pattern_key`: the first pattern whose key matches `module` at a dot boundary.
fn first_pattern<'p, T>(patterns: &'p [Pattern<T>], module: &str) -> Result<Option<&'p Pattern<T>>, String> {
    for p in patterns {
        if p.regex
            .is_match(module)
            .map_err(|e| format!("pattern key `{}` on `{module}`: {e}", p.key))?
        {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// `layers_to_transform`: one index or a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerIndexes {
    One(i64),
    List(Vec<i64>),
}

/// What a PEFT `LoraConfig` says about which tensors exist and how they scale, validated:
/// every setting that would change the math beyond this is refused when parsed.
#[derive(Clone, Debug, Default)]
pub struct PeftConfig {
    /// The file it was read from (a JSON config, or the safetensors file for its metadata).
    pub source: Option<PathBuf>,
    /// `r`; `None` when not given (the rank then comes from the tensors).
    pub r: Option<usize>,
    /// `lora_alpha`; `None` when not given.
    pub lora_alpha: Option<f32>,
    pub use_rslora: bool,
    /// `use_dora`; `None` when not given (DoRA then follows the presence of magnitudes).
    pub use_dora: Option<bool>,
    /// `None`: not given, every module the tensors name is accepted.
    pub target_modules: Option<ModuleSet>,
    pub exclude_modules: Option<ModuleSet>,
    pub layers_to_transform: Option<LayerIndexes>,
    /// `layers_pattern` (regexes naming the module list holding the layers).
    pub layers_pattern: Vec<String>,
    pub rank_pattern: Vec<Pattern<usize>>,
    pub alpha_pattern: Vec<Pattern<f32>>,
    pub ensure_weight_tying: bool,
    pub base_model_name_or_path: Option<String>,
    /// Settings accepted with a caveat.
    pub warnings: Vec<String>,
}

/// Fields that only describe or only matter while training: ignored.
const INFORMATIONAL: &[&str] = &[
    "auto_mapping",
    "revision",
    "task_type",
    "inference_mode",
    "peft_version",
    "lora_dropout",
    "megatron_core",
    "qalora_group_size",
    "runtime_config",
    // Initialization settings; what matters is `init_lora_weights`, checked below.
    "loftq_config",
    "eva_config",
    "corda_config",
    "lora_ga_config",
];

/// `init_lora_weights` values after which the base weights are the original ones: the
/// adapter is a plain delta. (PiSSA, OLoRA, CorDA, LoftQ and LoRA-GA rewrite the base weights,
/// so their adapters only fit the rewritten model unless converted when saved.)
fn init_keeps_base(v: &Json) -> bool {
    match v {
        Json::Bool(_) => true,
        Json::String(s) => matches!(s.as_str(), "gaussian" | "eva"),
        _ => false,
    }
}

impl PeftConfig {
    /// Parse `adapter_config.json` text read from `path`.
    ///
    /// Errors: [`LoraError::Config`] for invalid JSON or a value of the wrong type,
    /// [`LoraError::Unsupported`] for a setting lora-run refuses (see the module docs).
    pub fn from_json(path: &Path, text: &str) -> Result<PeftConfig, LoraError> {
        let config_err = |field: &str, message: String| LoraError::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        let unsupported = |field: &str, message: String| LoraError::Unsupported {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        let json: Json =
            serde_json::from_str(text).map_err(|e| config_err("adapter config", format!("not valid JSON: {e}")))?;
        let Json::Object(fields) = json else {
            return Err(config_err(
                "adapter config",
                format!("expected a JSON object, found {}", json.show()),
            ));
        };
        let mut c = PeftConfig {
            source: Some(path.to_path_buf()),
            ..Default::default()
        };
        let mut target_is_regex = false;
        for (key, v) in &fields {
            let k = key.as_str();
            let bool_of = |v: &Json| match v {
                Json::Bool(b) => Ok(*b),
                Json::Null => Ok(false),
                _ => Err(config_err(k, format!("expected true or false, found {}", v.show()))),
            };
            match k {
                "peft_type" => match v {
                    Json::String(s) if s == "LORA" => {}
                    Json::Null => {}
                    _ => return Err(unsupported(k, format!("{} (only LORA adapters are loaded)", v.show()))),
                },
                "r" => {
                    c.r = Some(
                        positive_int(v)
                            .ok_or_else(|| config_err(k, format!("expected a positive integer, found {}", v.show())))?,
                    )
                }
                "lora_alpha" => {
                    if *v != Json::Null {
                        c.lora_alpha =
                            Some(finite_f32(v).ok_or_else(|| {
                                config_err(k, format!("expected a finite number, found {}", v.show()))
                            })?);
                    }
                }
                "use_rslora" => c.use_rslora = bool_of(v)?,
                "use_dora" => {
                    if *v != Json::Null {
                        c.use_dora = Some(bool_of(v)?);
                    }
                }
                "target_modules" => {
                    c.target_modules = module_set(path, k, v)?;
                    target_is_regex = matches!(c.target_modules, Some(ModuleSet::Regex { .. }));
                }
                "exclude_modules" => c.exclude_modules = module_set(path, k, v)?,
                "layers_to_transform" => {
                    c.layers_to_transform = match v {
                        Json::Null => None,
                        Json::Array(a) => Some(LayerIndexes::List(
                            a.iter()
                                .map(|x| {
                                    x.as_i64()
                                        .ok_or_else(|| config_err(k, format!("expected integers, found {}", x.show())))
                                })
                                .collect::<Result<_, _>>()?,
                        )),
                        _ => Some(LayerIndexes::One(v.as_i64().ok_or_else(|| {
                            config_err(k, format!("expected an integer or a list, found {}", v.show()))
                        })?)),
                    }
                }
                "layers_pattern" => {
                    c.layers_pattern = match v {
                        Json::Null => Vec::new(),
                        Json::String(s) => vec![s.clone()],
                        Json::Array(a) => a
                            .iter()
                            .map(|x| match x {
                                Json::String(s) => Ok(s.clone()),
                                _ => Err(config_err(k, format!("expected strings, found {}", x.show()))),
                            })
                            .collect::<Result<_, _>>()?,
                        _ => {
                            return Err(config_err(
                                k,
                                format!("expected a string or a list, found {}", v.show()),
                            ));
                        }
                    };
                    for p in &c.layers_pattern {
                        compile(path, k, &format!(r"^.*\.{p}\.(\d+)\."))?;
                    }
                }
                "rank_pattern" => {
                    c.rank_pattern = patterns(path, k, v, positive_int)?;
                }
                "alpha_pattern" => {
                    c.alpha_pattern = patterns(path, k, v, finite_f32)?;
                }
                "fan_in_fan_out" => {
                    if bool_of(v)? {
                        c.warnings.push(
                            "fan_in_fan_out = true ignored: PEFT sets it to False for nn.Linear layers (with a warning), \
                             and every LoRA module here is one"
                                .into(),
                        );
                    }
                }
                "bias" => match v {
                    Json::String(s) if s == "none" => {}
                    Json::Null => {}
                    _ => {
                        return Err(unsupported(
                            k,
                            format!(
                                "{} (trained biases are saved outside the LoRA tensors; only \"none\" is supported)",
                                v.show()
                            ),
                        ));
                    }
                },
                "lora_bias" => {
                    if bool_of(v)? {
                        return Err(unsupported(k, "true (a bias on lora_B) is not implemented".into()));
                    }
                }
                "modules_to_save" => {
                    if !v.is_unset() {
                        return Err(unsupported(
                            k,
                            format!("{}: fully trained copies of modules are not implemented", v.show()),
                        ));
                    }
                }
                "layer_replication" => {
                    if !v.is_unset() {
                        return Err(unsupported(
                            k,
                            format!("{}: replicated layers are not implemented", v.show()),
                        ));
                    }
                }
                "target_parameters" => {
                    if !v.is_unset() {
                        return Err(unsupported(
                            k,
                            format!("{}: LoRA on raw parameters is not implemented", v.show()),
                        ));
                    }
                }
                "use_qalora" => {
                    if bool_of(v)? {
                        return Err(unsupported(
                            k,
                            "true (QALoRA pools the input by groups) is not implemented".into(),
                        ));
                    }
                }
                "init_lora_weights" => {
                    if !init_keeps_base(v) {
                        return Err(unsupported(
                            k,
                            format!(
                                "{}: this initialization rewrites the base weights, so the adapter fits only the rewritten \
                                 model (save it converted to a plain LoRA, PEFT's path_initial_model_for_weight_conversion)",
                                v.show()
                            ),
                        ));
                    }
                }
                "ensure_weight_tying" => c.ensure_weight_tying = bool_of(v)?,
                "base_model_name_or_path" => {
                    if let Json::String(s) = v {
                        c.base_model_name_or_path = Some(s.clone());
                    }
                }
                _ if INFORMATIONAL.contains(&k) => {}
                // use_bdlora, alora_invocation_tokens, arrow_config, trainable_token_indices,
                // megatron_config, monteclora_config, velora_config, kasa_config and any field
                // of a later PEFT: fine while off, refused when set.
                _ => {
                    if !v.is_unset() {
                        return Err(unsupported(
                            k,
                            format!("{}: lora-run does not implement this setting", v.show()),
                        ));
                    }
                }
            }
        }
        // LoraConfig.__post_init__'s own consistency rules.
        if target_is_regex && c.layers_to_transform.is_some() {
            return Err(config_err(
                "layers_to_transform",
                "cannot be used when target_modules is a regex string".into(),
            ));
        }
        if target_is_regex && !c.layers_pattern.is_empty() {
            return Err(config_err(
                "layers_pattern",
                "cannot be used when target_modules is a regex string".into(),
            ));
        }
        if !c.layers_pattern.is_empty() && c.layers_to_transform.is_none() {
            return Err(config_err(
                "layers_pattern",
                "is set but layers_to_transform is not".into(),
            ));
        }
        Ok(c)
    }

    /// A config from safetensors `__metadata__` (string values): `lora_alpha`, `r`,
    /// `use_rslora`, `use_dora`; other keys (`format`, …) are ignored. `None` when it has
    /// neither `lora_alpha` nor `r`.
    ///
    /// Errors: [`LoraError::Config`] for a value that does not parse.
    pub fn from_metadata(path: &Path, md: &HashMap<String, String>) -> Result<Option<PeftConfig>, LoraError> {
        if !md.contains_key("lora_alpha") && !md.contains_key("r") {
            return Ok(None);
        }
        let err = |field: &str, v: &str, what: &str| LoraError::Config {
            path: path.to_path_buf(),
            field: format!("__metadata__.{field}"),
            message: format!("{v:?} is not {what}"),
        };
        let flag = |field: &str| -> Result<Option<bool>, LoraError> {
            match md.get(field).map(|s| s.trim()) {
                None => Ok(None),
                Some("true" | "True" | "1") => Ok(Some(true)),
                Some("false" | "False" | "0") => Ok(Some(false)),
                Some(v) => Err(err(field, v, "a boolean")),
            }
        };
        let mut c = PeftConfig {
            source: Some(path.to_path_buf()),
            ..Default::default()
        };
        if let Some(v) = md.get("lora_alpha") {
            let a: f32 = v
                .trim()
                .parse()
                .ok()
                .filter(|a: &f32| a.is_finite())
                .ok_or_else(|| err("lora_alpha", v, "a finite number"))?;
            c.lora_alpha = Some(a);
        }
        if let Some(v) = md.get("r") {
            let text = v.trim();
            let r = text
                .parse::<usize>()
                .ok()
                .or_else(|| {
                    text.parse::<f64>()
                        .ok()
                        .filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f < 1e12)
                        .map(|f| f as usize)
                })
                .filter(|&r| r > 0)
                .ok_or_else(|| err("r", v, "a positive integer"))?;
            c.r = Some(r);
        }
        c.use_rslora = flag("use_rslora")?.unwrap_or(false);
        c.use_dora = flag("use_dora")?;
        Ok(Some(c))
    }

    /// PEFT's `check_target_module_exists` for `module` (its name in the base model, e.g.
    /// `model.layers.0.self_attn.q_proj`): `Ok(None)` when the config targets it, else
    /// `Ok(Some(why not))`. Without `target_modules` every module is targeted.
    pub fn check_targeted(&self, module: &str) -> Result<Option<String>, String> {
        if let Some(ex) = &self.exclude_modules
            && ex.matches(module)?
        {
            return Ok(Some(format!("exclude_modules {} matches it", ex.describe())));
        }
        let Some(t) = &self.target_modules else { return Ok(None) };
        match t {
            ModuleSet::Regex { .. } => {
                if !t.matches(module)? {
                    return Ok(Some(format!("target_modules {} does not match it", t.describe())));
                }
            }
            ModuleSet::Names(names) => {
                if names.iter().any(|n| n == module) {
                    // Named in full: layers_to_transform does not apply.
                    return Ok(None);
                }
                if !t.matches(module)? {
                    return Ok(Some(format!("target_modules {} does not name it", t.describe())));
                }
                if let Some(indexes) = &self.layers_to_transform {
                    let in_use = match indexes {
                        LayerIndexes::List(l) => !l.is_empty(),
                        LayerIndexes::One(_) => true,
                    };
                    if in_use {
                        let index = self.layer_index(module)?;
                        let ok = match (index, indexes) {
                            (None, _) => false,
                            (Some(i), LayerIndexes::One(j)) => i == *j,
                            (Some(i), LayerIndexes::List(l)) => l.contains(&i),
                        };
                        if !ok {
                            return Ok(Some(format!(
                                "layers_to_transform {} does not include its layer{}",
                                match indexes {
                                    LayerIndexes::One(i) => i.to_string(),
                                    LayerIndexes::List(l) => format!("{l:?}"),
                                },
                                index.map(|i| format!(" {i}")).unwrap_or_default()
                            )));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// The layer index of `module` by `layers_pattern` (first pattern matching), or PEFT's
    /// default `.*\.[^.]*\.(\d+)\.`.
    fn layer_index(&self, module: &str) -> Result<Option<i64>, String> {
        let pats: Vec<String> = if self.layers_pattern.is_empty() {
            vec![r"^.*\.[^.]*\.(\d+)\.".to_string()]
        } else {
            self.layers_pattern
                .iter()
                .map(|p| format!(r"^.*\.{p}\.(\d+)\."))
                .collect()
        };
        for p in pats {
            let re = Regex::new(&p).map_err(|e| format!("layers_pattern `{p}`: {e}"))?;
            if let Some(c) = re
                .captures(module)
                .map_err(|e| format!("layers_pattern `{p}` on `{module}`: {e}"))?
            {
                return Ok(c.get(1).and_then(|m| m.as_str().parse().ok()));
            }
        }
        Ok(None)
    }

    /// The rank the config gives `module` and the field that says so (`rank_pattern.<key>` or
    /// `r`); `None` when the config has no `r`.
    pub fn rank_for(&self, module: &str) -> Result<Option<(usize, String)>, String> {
        if let Some(p) = first_pattern(&self.rank_pattern, module)? {
            return Ok(Some((p.value, format!("rank_pattern.{}", p.key))));
        }
        Ok(self.r.map(|r| (r, "r".to_string())))
    }

    /// The alpha of `module`: the first matching `alpha_pattern` key, else `default`.
    pub fn alpha_for(&self, module: &str, default: f32) -> Result<f32, String> {
        Ok(first_pattern(&self.alpha_pattern, module)?.map_or(default, |p| p.value))
    }
}

fn positive_int(v: &Json) -> Option<usize> {
    v.as_i64().filter(|&i| i > 0).and_then(|i| usize::try_from(i).ok())
}

fn finite_f32(v: &Json) -> Option<f32> {
    v.as_f64().map(|f| f as f32).filter(|f| f.is_finite())
}

fn compile(path: &Path, field: &str, pattern: &str) -> Result<Regex, LoraError> {
    Regex::new(pattern).map_err(|e| LoraError::Config {
        path: path.to_path_buf(),
        field: field.to_string(),
        message: format!("invalid regular expression `{pattern}`: {e}"),
    })
}

/// `target_modules` / `exclude_modules`: null, a regex string (or `all-linear`), or a list.
fn module_set(path: &Path, field: &str, v: &Json) -> Result<Option<ModuleSet>, LoraError> {
    match v {
        Json::Null => Ok(None),
        // PEFT lower-cases the shorthand; for target_modules it expands to every nn.Linear but
        // the output layer (tuners_utils._maybe_include_all_linear_layers).
        Json::String(s) if field == "target_modules" && s.eq_ignore_ascii_case("all-linear") => Ok(Some(
            ModuleSet::Names(ALL_LINEAR.iter().map(|s| s.to_string()).collect()),
        )),
        Json::String(s) => Ok(Some(ModuleSet::Regex {
            pattern: s.clone(),
            regex: compile(path, field, &format!("^(?:{s})$"))?,
        })),
        Json::Array(a) => Ok(Some(ModuleSet::Names(
            a.iter()
                .map(|x| match x {
                    Json::String(s) => Ok(s.clone()),
                    _ => Err(LoraError::Config {
                        path: path.to_path_buf(),
                        field: field.to_string(),
                        message: format!("expected module names, found {}", x.show()),
                    }),
                })
                .collect::<Result<_, _>>()?,
        ))),
        _ => Err(LoraError::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            message: format!("expected null, a string or a list of strings, found {}", v.show()),
        }),
    }
}

/// `rank_pattern` / `alpha_pattern`: an object from key (a module name suffix or a regex) to
/// a value, kept in file order.
fn patterns<T>(
    path: &Path,
    field: &str,
    v: &Json,
    value: impl Fn(&Json) -> Option<T>,
) -> Result<Vec<Pattern<T>>, LoraError> {
    let entries = match v {
        Json::Null => return Ok(Vec::new()),
        Json::Object(o) => o,
        _ => {
            return Err(LoraError::Config {
                path: path.to_path_buf(),
                field: field.to_string(),
                message: format!("expected an object, found {}", v.show()),
            });
        }
    };
    entries
        .iter()
        .map(|(key, x)| {
            let value = value(x).ok_or_else(|| LoraError::Config {
                path: path.to_path_buf(),
                field: format!("{field}.{key}"),
                message: format!("invalid value {}", x.show()),
            })?;
            // get_pattern_key: re.match(rf"(.*\.)?({key})$", name).
            let regex = compile(path, &format!("{field}.{key}"), &format!(r"^(.*\.)?({key})$"))?;
            Ok(Pattern {
                key: key.clone(),
                regex,
                value,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tensor names
// ---------------------------------------------------------------------------------------------

/// What one tensor of the file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    A,
    B,
    Magnitude,
    EmbA,
    EmbB,
    /// A whole embedding (`embed_tokens.base_layer.weight` / `embed_tokens.weight`).
    Replacement,
    /// A whole output head (`lm_head.base_layer.weight`).
    HeadReplacement,
}

/// A parsed tensor key: the module (name in the base model), the slot, the adapter name if
/// the key kept one.
#[derive(Debug, PartialEq, Eq)]
struct Key {
    module: String,
    slot: Slot,
    adapter: Option<String>,
}

/// Why a key is not a LoRA tensor.
enum KeyError {
    /// Not a tensor name of PEFT's LoRA at all.
    Unknown(String),
    /// A LoRA-related tensor of a feature lora-run refuses (field, message).
    Unsupported(&'static str, String),
}

fn parse_key(key: &str) -> Result<Key, KeyError> {
    let name = key.strip_prefix("base_model.model.").unwrap_or(key);
    let parts: Vec<&str> = name.split('.').collect();
    let pos = parts.iter().position(|p| {
        matches!(
            *p,
            "lora_A" | "lora_B" | "lora_magnitude_vector" | "lora_embedding_A" | "lora_embedding_B" | "base_layer"
        )
    });
    let Some(pos) = pos.filter(|&p| p > 0) else {
        // No LoRA component: only a whole embedding is understood.
        if let Some(module) = name.strip_suffix(".weight").filter(|m| m.ends_with("embed_tokens")) {
            return Ok(Key {
                module: module.to_string(),
                slot: Slot::Replacement,
                adapter: None,
            });
        }
        if name
            .strip_suffix(".weight")
            .is_some_and(|m| m == "lm_head" || m.ends_with(".lm_head"))
        {
            return Err(KeyError::Unsupported(
                "save_embedding_layers",
                "a whole output head saved with the adapter (new tokens?) is not supported".into(),
            ));
        }
        return Err(KeyError::Unknown(
            "not a lora_A / lora_B / lora_magnitude_vector / lora_embedding_A / lora_embedding_B tensor".into(),
        ));
    };
    let module = parts[..pos].join(".");
    let rest = &parts[pos + 1..];
    let named = |n: &str| Some(n.to_string());
    let (slot, adapter) = match (parts[pos], rest) {
        ("lora_A", ["weight"]) => (Slot::A, None),
        ("lora_A", [n, "weight"]) => (Slot::A, named(n)),
        ("lora_B", ["weight"]) => (Slot::B, None),
        ("lora_B", [n, "weight"]) => (Slot::B, named(n)),
        ("lora_A" | "lora_B", [.., "bias"]) => {
            return Err(KeyError::Unsupported(
                "lora_bias",
                "a bias on the LoRA layers is not implemented".into(),
            ));
        }
        ("lora_magnitude_vector", [] | ["weight"]) => (Slot::Magnitude, None),
        ("lora_magnitude_vector", [n] | [n, "weight"]) => (Slot::Magnitude, named(n)),
        ("lora_embedding_A", []) => (Slot::EmbA, None),
        ("lora_embedding_A", [n]) => (Slot::EmbA, named(n)),
        ("lora_embedding_B", []) => (Slot::EmbB, None),
        ("lora_embedding_B", [n]) => (Slot::EmbB, named(n)),
        ("base_layer", ["weight"]) if module.ends_with("embed_tokens") => (Slot::Replacement, None),
        ("base_layer", ["weight"]) if module == "lm_head" || module.ends_with(".lm_head") => {
            (Slot::HeadReplacement, None)
        }
        ("base_layer", _) => {
            return Err(KeyError::Unsupported(
                "save_embedding_layers",
                format!(
                    "a whole base weight of `{module}` saved with the adapter is not supported (only the input embedding's)"
                ),
            ));
        }
        _ => return Err(KeyError::Unknown(format!("unexpected suffix after `{}`", parts[pos]))),
    };
    Ok(Key { module, slot, adapter })
}

/// `LoraConfig.lora_alpha`'s default in PEFT (peft/tuners/lora/config.py).
pub(crate) const PEFT_DEFAULT_LORA_ALPHA: f32 = 8.0;

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Load a PEFT folder: `adapter_model.safetensors`, configured by `adapter_config.json` when
/// present (else as a bare file: metadata, then `opts.lora_alpha`).
///
/// Errors: [`LoraError::NotFound`] without `adapter_model.safetensors`
/// ([`LoraError::Unsupported`] when only a pickled `adapter_model.bin` is there), then those
/// of [`load_safetensors`].
pub fn load_dir(dir: &Path, model: &Model, opts: &AdapterOptions) -> Result<LoraAdapter, LoraError> {
    let weights = dir.join("adapter_model.safetensors");
    if !weights.is_file() {
        let bin = dir.join("adapter_model.bin");
        if bin.is_file() {
            return Err(LoraError::Unsupported {
                path: bin,
                field: "adapter_model.bin".into(),
                message: "pickled PyTorch weights are not read; save with safe_serialization=True (PEFT's default) \
                          to get adapter_model.safetensors"
                    .into(),
            });
        }
        return Err(LoraError::NotFound {
            path: weights,
            message: "a PEFT folder holds adapter_model.safetensors".into(),
        });
    }
    let config = dir.join("adapter_config.json");
    load_safetensors(
        &weights,
        config.is_file().then_some(config.as_path()),
        std::slice::from_ref(&config),
        model,
        opts,
    )
}

/// Load a bare `.safetensors` file of PEFT tensors: configured by `<stem>.json`, else
/// `adapter_config.json` in its folder, else its metadata, else `opts.lora_alpha`.
///
/// Errors: those of [`load_safetensors`].
pub fn load_file(path: &Path, model: &Model, opts: &AdapterOptions) -> Result<LoraAdapter, LoraError> {
    let candidates = [path.with_extension("json"), folder_of(path).join("adapter_config.json")];
    let config = candidates.iter().find(|p| p.is_file()).cloned();
    load_safetensors(path, config.as_deref(), &candidates, model, opts)
}

/// Read a config file and parse it.
fn read_config(path: &Path) -> Result<PeftConfig, LoraError> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => LoraError::Config {
            path: path.to_path_buf(),
            field: "adapter config".into(),
            message: "not UTF-8".into(),
        },
        _ => io_error(path, &e),
    })?;
    PeftConfig::from_json(path, &text)
}

/// One module's tensors, by slot, with their file names.
#[derive(Default)]
struct Group<'a> {
    slots: BTreeMap<Slot, (String, safetensors::tensor::TensorView<'a>)>,
}

/// A warning for each key of `patterns` (the config's `field`) that matches none of `modules`.
fn unmatched_keys<T>(
    field: &str,
    patterns: &[Pattern<T>],
    modules: &[&String],
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    for p in patterns {
        let mut hit = false;
        for m in modules {
            if first_pattern(std::slice::from_ref(p), m)?.is_some() {
                hit = true;
                break;
            }
        }
        if !hit {
            warnings.push(format!("{field} key `{}` matches none of the adapter's modules", p.key));
        }
    }
    Ok(())
}

/// PEFT's scale of a module: `alpha / r`, or `alpha / √r` with rsLoRA (`LoraLayer.update_layer`).
pub(crate) fn peft_scale(alpha: f64, r: f64, use_rslora: bool) -> f64 {
    if use_rslora { alpha / r.sqrt() } else { alpha / r }
}

/// The `safetensors` crate's error `e` on `bytes`, with what can be said of the file: which
/// tensor's size disagrees with its shape, a data offset out of place, or the file's length
/// against what its header announces.
pub(crate) fn describe_st_error(e: &safetensors::SafeTensorError, bytes: &[u8]) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::TensorInvalidInfo => size_mismatch(bytes).unwrap_or_else(|| e.to_string()),
        E::InvalidOffset(_) => format!(
            "{e} (its data does not start where the previous tensor's ends: that one's offsets may be the wrong ones)"
        ),
        E::HeaderTooSmall | E::HeaderTooLarge | E::InvalidHeaderLength | E::MetadataIncompleteBuffer => {
            header_length_note(e, bytes)
        }
        _ => e.to_string(),
    }
}

/// A safetensors error about the file's length, with what the file holds: its size, and the
/// header length its first 8 bytes announce (a truncated file, or not a safetensors file).
fn header_length_note(e: &safetensors::SafeTensorError, bytes: &[u8]) -> String {
    if matches!(e, safetensors::SafeTensorError::MetadataIncompleteBuffer) {
        // The size the header implies: 8 + its length + where the last tensor's data ends.
        let need = st_header(bytes).and_then(|(n, header)| {
            let end = header
                .iter()
                .filter(|(k, _)| *k != "__metadata__")
                .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
                .max()
                .unwrap_or(0);
            8u64.checked_add(n as u64)?.checked_add(end)
        });
        let have = bytes.len() as u64;
        return match need {
            Some(need) if need > have => {
                format!("{e}: the file has {have} bytes, its header's tensors need {need} (truncated)")
            }
            Some(need) => format!(
                "{e}: the file has {have} bytes, {} past the end of its last tensor ({need})",
                have - need
            ),
            None => format!("{e}: the file has {have} bytes"),
        };
    }
    match bytes.get(..8) {
        Some(b) => format!(
            "{e}: the file has {} bytes and its first 8 announce a header of {} bytes (truncated, or not a safetensors file)",
            bytes.len(),
            u64::from_le_bytes(b.try_into().expect("8 bytes"))
        ),
        None => format!(
            "{e}: the file has only {} bytes (truncated, or not a safetensors file)",
            bytes.len()
        ),
    }
}

/// A safetensors file's header length (its first 8 bytes, little-endian) and its JSON header,
/// read leniently for error messages; `None` when either cannot be read.
fn st_header(bytes: &[u8]) -> Option<(usize, serde_json::Map<String, serde_json::Value>)> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    Some((n, header))
}

/// For a safetensors header the `safetensors` crate rejects as `TensorInvalidInfo`: which
/// tensor's data size disagrees with its dtype and shape, and how. `None` when the header
/// cannot be read here or no tensor is found wrong.
fn size_mismatch(bytes: &[u8]) -> Option<String> {
    let (_, header) = st_header(bytes)?;
    for (name, info) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let dtype = info.get("dtype")?.as_str()?;
        let width: u64 = match dtype {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
            _ => continue,
        };
        let u64s = |key: &str| -> Option<Vec<u64>> {
            Some(
                info.get(key)?
                    .as_array()?
                    .iter()
                    .filter_map(serde_json::Value::as_u64)
                    .collect(),
            )
        };
        let (shape, offsets) = (u64s("shape")?, u64s("data_offsets")?);
        let (&[start, end], Some(elements)) = (&offsets[..], shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)))
        else {
            continue;
        };
        let want = elements.checked_mul(width)?;
        if end.checked_sub(start) != Some(want) {
            return Some(format!(
                "tensor `{name}`: {dtype} {shape:?} is {want} bytes, but its data_offsets [{start}, {end}] hold {}",
                end.saturating_sub(start)
            ));
        }
    }
    None
}

/// Load PEFT tensors from the safetensors file `path`, configured by the JSON `config` if
/// given (`looked_for` lists where a config was searched, for the missing-alpha message), and
/// validate them against `model`.
///
/// Errors (each naming the file and the tensor or field): [`LoraError::Safetensors`] for
/// malformed bytes; the config's [`LoraError::Config`] / [`LoraError::Unsupported`];
/// [`LoraError::MissingAlpha`]; [`LoraError::UnknownTensor`] for a key that is no LoRA tensor
/// of a module of this architecture; [`LoraError::NotTargeted`]; [`LoraError::Duplicate`];
/// [`LoraError::Unpaired`]; [`LoraError::WrongBaseModel`], [`LoraError::NoSuchWeight`],
/// [`LoraError::ShapeMismatch`] against the model; [`LoraError::RankMismatch`] against the
/// config; [`LoraError::UnsupportedDtype`]; [`LoraError::NonFinite`]; [`LoraError::Empty`].
///
/// `lora_alpha` comes from the config file, else the safetensors metadata, else
/// `opts.lora_alpha`; a config file that omits it gets PEFT's default (`LoraConfig.lora_alpha`
/// = 8), as `PeftModel.from_pretrained` would.
pub fn load_safetensors(
    path: &Path,
    config: Option<&Path>,
    looked_for: &[PathBuf],
    model: &Model,
    opts: &AdapterOptions,
) -> Result<LoraAdapter, LoraError> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, &e))?;
    let st_err = |e: safetensors::SafeTensorError| LoraError::Safetensors {
        path: path.to_path_buf(),
        message: describe_st_error(&e, &bytes),
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(st_err)?;
    let st = SafeTensors::deserialize(&bytes).map_err(st_err)?;
    let metadata = header.metadata().clone().unwrap_or_default();

    // The config: a JSON file, else the metadata, else nothing (the tensors then decide).
    let mut cfg = match config {
        Some(p) => read_config(p)?,
        None => PeftConfig::from_metadata(path, &metadata)?.unwrap_or_default(),
    };
    let cfg_path = cfg.source.clone().unwrap_or_else(|| path.to_path_buf());
    let mut warnings = std::mem::take(&mut cfg.warnings);
    if config.is_none() {
        if cfg.source.is_some() {
            warnings.push("no adapter config file: lora_alpha / r read from the safetensors metadata".into());
        } else {
            warnings
                .push("no adapter config: every LoRA tensor of the file is used, ranks read from the shapes".into());
        }
    }
    // lora_alpha: config, else metadata (a JSON config may omit it), else the option.
    if cfg.lora_alpha.is_none()
        && config.is_some()
        && let Some(md) = PeftConfig::from_metadata(path, &metadata)?
    {
        cfg.lora_alpha = md.lora_alpha;
    }
    let alpha = match (cfg.lora_alpha, opts.lora_alpha) {
        (Some(a), Some(o)) if a != o => {
            warnings.push(format!(
                "the lora_alpha option ({o}) is not used: the adapter gives lora_alpha {a}"
            ));
            a
        }
        (Some(a), _) => a,
        (None, Some(o)) => o,
        // A PEFT config without `lora_alpha`: PEFT's LoraConfig default.
        (None, None) if config.is_some() => {
            warnings.push(format!(
                "{} gives no lora_alpha: PEFT's default {PEFT_DEFAULT_LORA_ALPHA} is used (or pass --lora-alpha)",
                cfg_path.display()
            ));
            PEFT_DEFAULT_LORA_ALPHA
        }
        (None, None) => {
            let looked: Vec<String> = looked_for.iter().map(|p| p.display().to_string()).collect();
            return Err(LoraError::MissingAlpha {
                path: path.to_path_buf(),
                looked_for: looked.join(", "),
            });
        }
    };
    if !alpha.is_finite() {
        return Err(LoraError::Config {
            path: cfg_path,
            field: "lora_alpha".into(),
            message: format!("{alpha} is not finite"),
        });
    }
    let cfg_err = |message: String| LoraError::Config {
        path: cfg_path.clone(),
        field: "target_modules".into(),
        message,
    };

    // Classify every tensor; group by module.
    let arch = model.config.arch;
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    let mut groups: BTreeMap<String, Group<'_>> = BTreeMap::new();
    let mut replacement: Option<(String, safetensors::tensor::TensorView<'_>)> = None;
    let mut head_replacement: Option<(String, safetensors::tensor::TensorView<'_>)> = None;
    let mut adapter_names: Vec<String> = Vec::new();
    let mut canonical_names = true;
    for &name in &names {
        let key = match parse_key(name) {
            Ok(k) => k,
            Err(KeyError::Unknown(message)) => {
                return Err(LoraError::UnknownTensor {
                    path: path.to_path_buf(),
                    tensor: name.to_string(),
                    message,
                });
            }
            Err(KeyError::Unsupported(field, message)) => {
                return Err(LoraError::Unsupported {
                    path: path.to_path_buf(),
                    field: field.to_string(),
                    message: format!("tensor `{name}`: {message}"),
                });
            }
        };
        if let Some(a) = &key.adapter {
            if !adapter_names.contains(a) {
                adapter_names.push(a.clone());
            }
            if adapter_names.len() > 1 {
                return Err(LoraError::Unsupported {
                    path: path.to_path_buf(),
                    field: "adapter name".into(),
                    message: format!(
                        "tensor `{name}`: the file holds several adapters ({}); save them separately",
                        adapter_names.join(", ")
                    ),
                });
            }
        }
        let view = st.tensor(name).map_err(st_err)?;
        let target = map_module(&model.config, &key.module);
        if matches!(key.slot, Slot::Replacement | Slot::HeadReplacement) {
            let (fits, what, slot) = if key.slot == Slot::Replacement {
                (
                    target == Some(ModuleTarget::Embedding),
                    "input embedding",
                    &mut replacement,
                )
            } else {
                (
                    matches!(&target, Some(ModuleTarget::Linear { tensor, .. }) if tensor == "output.weight"),
                    "output head",
                    &mut head_replacement,
                )
            };
            if !fits {
                return Err(LoraError::UnknownTensor {
                    path: path.to_path_buf(),
                    tensor: name.to_string(),
                    message: format!("`{}` is not the {what} of a {} model", key.module, arch.name()),
                });
            }
            if let Some((other, _)) = slot {
                return Err(LoraError::Duplicate {
                    path: path.to_path_buf(),
                    tensor: name.to_string(),
                    other: other.clone(),
                });
            }
            *slot = Some((name.to_string(), view));
            continue;
        }
        let fits_kind = matches!(
            (&target, key.slot),
            (Some(ModuleTarget::Embedding), Slot::EmbA | Slot::EmbB | Slot::Magnitude)
                | (Some(ModuleTarget::Linear { .. }), Slot::A | Slot::B | Slot::Magnitude)
        );
        if !fits_kind {
            let message = match target {
                None => format!(
                    "`{}` is no LoRA-capable module of a {} model (model.layers.{{i}}.self_attn.{{q,k,v,o}}_proj, \
                     model.layers.{{i}}.mlp.{{gate,up,down}}_proj, model.embed_tokens, lm_head)",
                    key.module,
                    arch.name()
                ),
                Some(ModuleTarget::Embedding) => {
                    format!(
                        "`{}` is an embedding: its LoRA tensors are lora_embedding_A / lora_embedding_B",
                        key.module
                    )
                }
                Some(ModuleTarget::Linear { .. }) => format!(
                    "`{}` is a linear layer: its LoRA tensors are lora_A / lora_B",
                    key.module
                ),
            };
            return Err(LoraError::UnknownTensor {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                message,
            });
        }
        if let Some(why) = cfg.check_targeted(&key.module).map_err(&cfg_err)? {
            return Err(LoraError::NotTargeted {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                module: key.module.clone(),
                message: why,
            });
        }
        if key.module.starts_with("language_model.") || key.module.starts_with("model.language_model.") {
            canonical_names = false;
        }
        let group = groups.entry(key.module.clone()).or_default();
        if let Some((other, _)) = group.slots.get(&key.slot) {
            return Err(LoraError::Duplicate {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                other: other.clone(),
            });
        }
        group.slots.insert(key.slot, (name.to_string(), view));
    }
    if groups.is_empty() && replacement.is_none() && head_replacement.is_none() {
        return Err(LoraError::Empty {
            path: path.to_path_buf(),
        });
    }

    // DoRA: as the config says, else as the tensors say.
    let any_magnitude = groups.values().any(|g| g.slots.contains_key(&Slot::Magnitude));
    let use_dora = cfg.use_dora.unwrap_or(any_magnitude);
    if !use_dora && any_magnitude {
        let (m, _) = groups
            .values()
            .find_map(|g| g.slots.get(&Slot::Magnitude))
            .expect("a magnitude exists");
        return Err(LoraError::Config {
            path: cfg_path.clone(),
            field: "use_dora".into(),
            message: format!("false, but {} holds the DoRA magnitude `{m}`", path.display()),
        });
    }

    // Pairs: every A has its B (and its magnitude under DoRA).
    let mut shapes: Vec<PairShape> = Vec::with_capacity(groups.len());
    let mut plan: Vec<(&str, ModuleTarget)> = Vec::with_capacity(groups.len());
    for (module, g) in &groups {
        let target = map_module(&model.config, module).expect("checked above");
        let (sa, sb) = if target == ModuleTarget::Embedding {
            (Slot::EmbA, Slot::EmbB)
        } else {
            (Slot::A, Slot::B)
        };
        // The missing partner's name, written the way the present tensor's key is.
        let partner = |present: &str, slot: Slot| -> String {
            let (from, to) = match slot {
                Slot::A => ("lora_A", "lora_B"),
                Slot::B => ("lora_B", "lora_A"),
                Slot::EmbA => ("lora_embedding_A", "lora_embedding_B"),
                _ => ("lora_embedding_B", "lora_embedding_A"),
            };
            match present.rfind(from) {
                Some(i) => format!("{}{to}{}", &present[..i], &present[i + from.len()..]),
                None => format!("{module}.{to}"),
            }
        };
        let a = g.slots.get(&sa);
        let b = g.slots.get(&sb);
        let m = g.slots.get(&Slot::Magnitude);
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (Some((an, _)), None) => {
                return Err(LoraError::Unpaired {
                    path: path.to_path_buf(),
                    tensor: an.clone(),
                    missing: partner(an, sa),
                });
            }
            (None, Some((bn, _))) => {
                return Err(LoraError::Unpaired {
                    path: path.to_path_buf(),
                    tensor: bn.clone(),
                    missing: partner(bn, sb),
                });
            }
            (None, None) => {
                let (mn, _) = m.expect("a group has a tensor");
                return Err(LoraError::Unpaired {
                    path: path.to_path_buf(),
                    tensor: mn.clone(),
                    missing: format!("{module}.lora_A.weight"),
                });
            }
        };
        if target == ModuleTarget::Embedding {
            if let Some((mn, _)) = m {
                return Err(LoraError::Unsupported {
                    path: path.to_path_buf(),
                    field: "use_dora".into(),
                    message: format!("tensor `{mn}`: DoRA on the embedding is not implemented"),
                });
            }
        } else if use_dora && m.is_none() {
            return Err(LoraError::Unpaired {
                path: path.to_path_buf(),
                tensor: a.0.clone(),
                missing: format!("{module}.lora_magnitude_vector"),
            });
        }
        let weight = match &target {
            ModuleTarget::Linear { tensor, .. } => tensor.clone(),
            ModuleTarget::Embedding => "token_embd.weight".to_string(),
        };
        shapes.push(PairShape {
            a_name: a.0.clone(),
            b_name: b.0.clone(),
            weight,
            a: a.1.shape().to_vec(),
            b: b.1.shape().to_vec(),
            magnitude: m.map(|(n, v)| (n.clone(), v.shape().to_vec())),
            layout: Layout::RowMajor,
        });
        plan.push((module.as_str(), target));
    }
    let hint = cfg
        .base_model_name_or_path
        .as_ref()
        .map(|b| format!("; the adapter's base_model_name_or_path is {b:?}"))
        .unwrap_or_default();
    check_shapes(path, model, &shapes, &hint)?;

    // The rank the config gives each module must be the tensors'.
    for (s, (module, _)) in shapes.iter().zip(&plan) {
        if let Some((expected, field)) = cfg.rank_for(module).map_err(&cfg_err)?
            && expected != s.r()
        {
            return Err(LoraError::RankMismatch {
                path: path.to_path_buf(),
                tensor: s.a_name.clone(),
                field,
                expected,
                got: s.r(),
            });
        }
    }

    // ensure_weight_tying ties an embedding / lm_head LoRA to both ends of a tied model.
    let tied = head_is_tied(model);
    if cfg.ensure_weight_tying
        && tied
        && let Some((module, _)) = plan
            .iter()
            .find(|(_, t)| matches!(t, ModuleTarget::Embedding | ModuleTarget::Linear { layer: None, .. }))
    {
        return Err(LoraError::Unsupported {
            path: cfg_path.clone(),
            field: "ensure_weight_tying".into(),
            message: format!(
                "true with a LoRA on `{module}` of a tied-embedding model: sharing it between embedding and head is not implemented"
            ),
        });
    }

    // Read the data: f32 (from f32, f16, bf16 or f64), finite.
    let read = |name: &str, view: &safetensors::tensor::TensorView<'_>| -> Result<Vec<f32>, LoraError> {
        let data = to_f32(path, name, view)?;
        check_finite(path, name, &data)?;
        Ok(data)
    };
    let mut targets = Vec::new();
    let mut embedding = None;
    for (s, (module, target)) in shapes.iter().zip(&plan) {
        let g = &groups[*module];
        let (sa, sb) = if *target == ModuleTarget::Embedding {
            (Slot::EmbA, Slot::EmbB)
        } else {
            (Slot::A, Slot::B)
        };
        let a = read(&s.a_name, &g.slots[&sa].1)?;
        let mut b = read(&s.b_name, &g.slots[&sb].1)?;
        let mut magnitude = match g.slots.get(&Slot::Magnitude) {
            Some((n, v)) => Some(read(n, v)?),
            None => None,
        };
        let r = s.r();
        let n_in = s.a[1];
        let n_out = s.b[0];
        let module_alpha = cfg.alpha_for(module, alpha).map_err(&cfg_err)?;
        let scale = peft_scale(module_alpha as f64, r as f64, cfg.use_rslora) as f32;
        match target {
            ModuleTarget::Embedding => {
                embedding = Some(EmbeddingLora {
                    r,
                    n_vocab: n_in,
                    n_embd: n_out,
                    a,
                    b,
                    scale,
                });
            }
            ModuleTarget::Linear {
                tensor, permute_heads, ..
            } => {
                if let Some(n_head) = *permute_heads {
                    // llama.cpp permuted this weight's rows; permute B's (and m's) alike.
                    let bad = |t: &str| LoraError::ShapeMismatch {
                        path: path.to_path_buf(),
                        tensor: t.to_string(),
                        expected: vec![n_out, r],
                        got: vec![n_out, r],
                        message: format!("{n_out} rows cannot be split into {n_head} heads of rope pairs"),
                    };
                    b = permute_rows(&b, n_out, r, n_head).ok_or_else(|| bad(&s.b_name))?;
                    if let Some(m) = magnitude.take() {
                        magnitude = Some(permute_rows(&m, n_out, 1, n_head).ok_or_else(|| bad(&s.b_name))?);
                    }
                }
                targets.push(LoraTarget {
                    tensor: tensor.clone(),
                    r,
                    n_in,
                    n_out,
                    a,
                    b,
                    scale,
                    dora_magnitude: magnitude,
                });
            }
        }
    }

    // Whole replacement embedding / head (PEFT `save_embedding_layers`): PEFT's loader copies
    // them over the base weights.
    let (n_vocab, n_embd) = (model.config.n_vocab, model.config.n_embd);
    let mut whole = |slot: Option<(String, safetensors::tensor::TensorView<'_>)>,
                     what: &str|
     -> Result<Option<Vec<f32>>, LoraError> {
        let Some((name, view)) = slot else { return Ok(None) };
        if tied {
            return Err(LoraError::Unsupported {
                path: path.to_path_buf(),
                field: "save_embedding_layers".into(),
                message: format!(
                    "tensor `{name}`: the model's output head is tied to its embedding, so PEFT's replacement \
                     {what} replaces both the embedding and the head, which is not implemented"
                ),
            });
        }
        if view.shape() != [n_vocab, n_embd] {
            return Err(LoraError::ShapeMismatch {
                path: path.to_path_buf(),
                tensor: name,
                expected: vec![n_vocab, n_embd],
                got: view.shape().to_vec(),
                message: format!("a replacement {what} is [n_vocab, n_embd] (added tokens are not supported)"),
            });
        }
        warnings.push(format!(
            "`{name}`: the adapter replaces the model's {what} while active"
        ));
        Ok(Some(read(&name, &view)?))
    };
    let embedding_replacement = whole(replacement, "input embedding")?;
    let head_replacement = whole(head_replacement, "output head")?;

    // Targeted modules without tensors keep PEFT's initialization (B = 0): no effect.
    if cfg.target_modules.is_some() && canonical_names {
        let mut missing = Vec::new();
        for m in peft_modules(model.config.n_layer) {
            if !groups.contains_key(&m) && cfg.check_targeted(&m).map_err(&cfg_err)?.is_none() {
                missing.push(m);
            }
        }
        if let Some(first) = missing.first() {
            warnings.push(format!(
                "{} module(s) the config targets have no tensors (first: `{first}`); they stay at their initialization (no effect)",
                missing.len()
            ));
        }
    }

    // Config entries that name nothing: PEFT lets them pass (it errors only when nothing at all
    // matches); they are said here, as nothing the user gave is silently ignored.
    if canonical_names {
        let modules = peft_modules(model.config.n_layer);
        if let Some(ModuleSet::Names(names)) = &cfg.target_modules {
            for n in names {
                if !modules.iter().any(|m| m == n || ends_with_dotted(m, n)) {
                    warnings.push(format!(
                        "target_modules entry `{n}` names no module of this model (it has embed_tokens, {}, lm_head)",
                        BLOCK_PROJECTIONS
                            .map(|(hf, _)| hf.rsplit('.').next().unwrap_or(hf))
                            .join(", ")
                    ));
                }
            }
        }
        let adapter_modules: Vec<&String> = groups.keys().collect();
        unmatched_keys("rank_pattern", &cfg.rank_pattern, &adapter_modules, &mut warnings).map_err(&cfg_err)?;
        unmatched_keys("alpha_pattern", &cfg.alpha_pattern, &adapter_modules, &mut warnings).map_err(&cfg_err)?;
    }

    sort_targets(model, &mut targets);
    Ok(LoraAdapter {
        name: String::new(),
        path: path.to_path_buf(),
        format: AdapterFormat::Peft,
        alpha,
        use_rslora: cfg.use_rslora,
        targets,
        embedding,
        embedding_replacement,
        head_replacement,
        warnings,
    })
}

/// A safetensors tensor as f32 (little-endian F32, F16, BF16 or F64).
fn to_f32(path: &Path, name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>, LoraError> {
    let data = view.data();
    let n = view.shape().iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let size = match view.dtype() {
        Dtype::F32 => 4,
        Dtype::F16 | Dtype::BF16 => 2,
        Dtype::F64 => 8,
        other => {
            return Err(LoraError::UnsupportedDtype {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                dtype: format!("{other:?}"),
                supported: "F32, F16, BF16, F64",
            });
        }
    };
    // The safetensors crate checked this; a mismatch here is still an error, never a panic.
    if n.and_then(|n| n.checked_mul(size)) != Some(data.len()) {
        return Err(LoraError::Safetensors {
            path: path.to_path_buf(),
            message: format!("tensor `{name}`: data size does not match its shape"),
        });
    }
    Ok(match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")) as f32)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<PeftConfig, LoraError> {
        PeftConfig::from_json(Path::new("adapter_config.json"), json)
    }

    #[test]
    fn keys() {
        let k = |s: &str| parse_key(s).ok();
        let key = |m: &str, slot, a: Option<&str>| {
            Some(Key {
                module: m.into(),
                slot,
                adapter: a.map(String::from),
            })
        };
        let q = "model.layers.0.self_attn.q_proj";
        assert_eq!(k(&format!("base_model.model.{q}.lora_A.weight")), key(q, Slot::A, None));
        assert_eq!(
            k(&format!("{q}.lora_B.default.weight")),
            key(q, Slot::B, Some("default"))
        );
        assert_eq!(k(&format!("{q}.lora_magnitude_vector")), key(q, Slot::Magnitude, None));
        assert_eq!(
            k(&format!("{q}.lora_magnitude_vector.default.weight")),
            key(q, Slot::Magnitude, Some("default"))
        );
        assert_eq!(
            k("base_model.model.model.embed_tokens.lora_embedding_A"),
            key("model.embed_tokens", Slot::EmbA, None)
        );
        assert_eq!(
            k("model.embed_tokens.lora_embedding_B.x"),
            key("model.embed_tokens", Slot::EmbB, Some("x"))
        );
        assert_eq!(
            k("base_model.model.model.embed_tokens.base_layer.weight"),
            key("model.embed_tokens", Slot::Replacement, None)
        );
        assert_eq!(
            k("base_model.model.model.embed_tokens.weight"),
            key("model.embed_tokens", Slot::Replacement, None)
        );
        assert!(matches!(
            parse_key("base_model.model.lm_head.weight"),
            Err(KeyError::Unsupported(..))
        ));
        assert!(matches!(
            parse_key(&format!("{q}.lora_B.bias")),
            Err(KeyError::Unsupported("lora_bias", _))
        ));
        assert!(matches!(
            parse_key(&format!("{q}.base_layer.weight")),
            Err(KeyError::Unsupported(..))
        ));
        assert!(matches!(parse_key("model.norm.weight"), Err(KeyError::Unknown(_))));
        assert!(matches!(parse_key(&format!("{q}.lora_A")), Err(KeyError::Unknown(_))));
        assert!(matches!(parse_key("lora_A.weight"), Err(KeyError::Unknown(_))));
    }

    #[test]
    fn targeting_follows_peft() {
        let c =
            cfg(r#"{"target_modules": ["q_proj", "mlp.up_proj"], "exclude_modules": ["layers.1.self_attn.q_proj"]}"#)
                .unwrap();
        assert!(c.check_targeted("model.layers.0.self_attn.q_proj").unwrap().is_none());
        assert!(c.check_targeted("model.layers.0.mlp.up_proj").unwrap().is_none());
        assert!(c.check_targeted("model.layers.0.self_attn.xq_proj").unwrap().is_some());
        assert!(c.check_targeted("model.layers.1.self_attn.q_proj").unwrap().is_some());
        let c = cfg(r#"{"target_modules": ".*\\.(q|v)_proj"}"#).unwrap();
        assert!(c.check_targeted("model.layers.0.self_attn.v_proj").unwrap().is_none());
        assert!(c.check_targeted("model.layers.0.self_attn.k_proj").unwrap().is_some());
        let c = cfg(r#"{"target_modules": "ALL-LINEAR"}"#).unwrap();
        assert!(c.check_targeted("model.layers.3.mlp.down_proj").unwrap().is_none());
        assert!(c.check_targeted("lm_head").unwrap().is_some());
        let c = cfg(
            r#"{"target_modules": ["q_proj", "lm_head"], "layers_to_transform": [0, 2], "layers_pattern": "layers"}"#,
        )
        .unwrap();
        assert!(c.check_targeted("model.layers.2.self_attn.q_proj").unwrap().is_none());
        assert!(c.check_targeted("model.layers.1.self_attn.q_proj").unwrap().is_some());
        assert!(
            c.check_targeted("lm_head").unwrap().is_none(),
            "named in full: no layer filter"
        );
        let c = cfg(r#"{"target_modules": ["q_proj"], "layers_to_transform": 3}"#).unwrap();
        assert!(c.check_targeted("model.layers.3.self_attn.q_proj").unwrap().is_none());
        assert!(c.check_targeted("model.layers.13.self_attn.q_proj").unwrap().is_some());
    }

    #[test]
    fn patterns_first_match_in_file_order() {
        let c =
            cfg(r#"{"r": 8, "lora_alpha": 16, "rank_pattern": {"layers.1.self_attn.q_proj": 4, "q_proj": 2, "model.layers.1.mlp.*": 6},
                        "alpha_pattern": {"v_proj": 3}}"#)
            .unwrap();
        let rank = |m: &str| c.rank_for(m).unwrap().unwrap();
        assert_eq!(
            rank("model.layers.1.self_attn.q_proj"),
            (4, "rank_pattern.layers.1.self_attn.q_proj".into())
        );
        assert_eq!(
            rank("model.layers.11.self_attn.q_proj"),
            (2, "rank_pattern.q_proj".into())
        );
        assert_eq!(
            rank("model.layers.1.mlp.up_proj"),
            (6, "rank_pattern.model.layers.1.mlp.*".into())
        );
        assert_eq!(rank("model.layers.1.self_attn.k_proj"), (8, "r".into()));
        // Dot boundary: `q_proj` does not match `xq_proj`.
        assert_eq!(rank("model.layers.0.self_attn.xq_proj"), (8, "r".into()));
        assert_eq!(c.alpha_for("model.layers.0.self_attn.v_proj", 16.0).unwrap(), 3.0);
        assert_eq!(c.alpha_for("model.layers.0.self_attn.q_proj", 16.0).unwrap(), 16.0);
    }

    #[test]
    fn refusals_name_the_field() {
        let refused = [
            (r#"{"peft_type": "LOHA"}"#, "peft_type"),
            (r#"{"bias": "lora_only"}"#, "bias"),
            (r#"{"lora_bias": true}"#, "lora_bias"),
            (r#"{"modules_to_save": ["lm_head"]}"#, "modules_to_save"),
            (r#"{"layer_replication": [[0, 4]]}"#, "layer_replication"),
            (
                r#"{"target_parameters": ["experts.gate_up_proj"]}"#,
                "target_parameters",
            ),
            (r#"{"use_qalora": true}"#, "use_qalora"),
            (r#"{"init_lora_weights": "pissa"}"#, "init_lora_weights"),
            (r#"{"alora_invocation_tokens": [1, 2]}"#, "alora_invocation_tokens"),
            (r#"{"trainable_token_indices": [5]}"#, "trainable_token_indices"),
            (r#"{"some_future_knob": 3}"#, "some_future_knob"),
        ];
        for (json, field) in refused {
            match cfg(json) {
                Err(LoraError::Unsupported { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
        for (json, field) in [
            (r#"{"r": 0}"#, "r"),
            (r#"{"lora_alpha": "x"}"#, "lora_alpha"),
            (r#"{"target_modules": 3}"#, "target_modules"),
            (r#"{"target_modules": "(unclosed"}"#, "target_modules"),
            (r#"{"rank_pattern": {"q_proj": -1}}"#, "rank_pattern.q_proj"),
            (
                r#"{"target_modules": ".*q_proj", "layers_to_transform": [1]}"#,
                "layers_to_transform",
            ),
            (r#"[1]"#, "adapter config"),
        ] {
            match cfg(json) {
                Err(LoraError::Config { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
        // Accepted: the "off" values, and fan_in_fan_out with a note.
        let c =
            cfg(r#"{"modules_to_save": null, "bias": "none", "use_bdlora": null, "fan_in_fan_out": true, "init_lora_weights": "gaussian",
                        "loftq_config": {}, "megatron_core": "megatron.core", "layer_replication": null}"#)
            .unwrap();
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn metadata_config() {
        let md: HashMap<String, String> = [
            ("lora_alpha", "32"),
            ("r", "16"),
            ("use_rslora", "true"),
            ("format", "pt"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = PeftConfig::from_metadata(Path::new("x.safetensors"), &md)
            .unwrap()
            .unwrap();
        assert_eq!((c.lora_alpha, c.r, c.use_rslora), (Some(32.0), Some(16), true));
        let md: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into_iter().collect();
        assert!(
            PeftConfig::from_metadata(Path::new("x.safetensors"), &md)
                .unwrap()
                .is_none()
        );
        let md: HashMap<String, String> = [("lora_alpha".to_string(), "nan".to_string())].into_iter().collect();
        assert!(matches!(
            PeftConfig::from_metadata(Path::new("x.safetensors"), &md),
            Err(LoraError::Config { .. })
        ));
    }
}
