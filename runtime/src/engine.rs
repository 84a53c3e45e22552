//! The library API apps embed: load a model once ([`Engine`], `Send + Sync`, shared through
//! `Arc`), open any number of [`Session`]s (each owns its KV cache), generate with options and
//! stream tokens through an iterator ([`Session::stream`]) or a callback
//! ([`Session::generate`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::Serialize;

use crate::gguf::GgufFile;
use crate::lora::{AdapterHandle, LoraError, LoraPlan};
use crate::model::{KvCache, Logits, Model, ModelError};
use crate::sampler::{Sampler, SamplingOptions};
use crate::tokenizer::{StreamDecoder, Tokenizer, TokenizerError};

/// Everything that can go wrong in the library API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error("prompt of {n_prompt} tokens does not fit the context of {n_ctx} tokens (raise --ctx)")]
    PromptTooLong { n_prompt: usize, n_ctx: usize },
    #[error("empty prompt: nothing to evaluate (the model adds no BOS)")]
    EmptyPrompt,
    #[error("chat template: {0}")]
    Template(String),
    #[error("perplexity: {0}")]
    Perplexity(String),
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error("no adapter named `{0}` is loaded")]
    UnknownAdapter(String),
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// A model file that cannot be loaded, with the path (the source says what and where
    /// inside it).
    #[error("{}: {source}", path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
}

/// The longest calibration sequence [`Engine::calibrate`] runs at once, in tokens
/// (llama-imatrix's default context).
pub const CALIBRATION_CHUNK: usize = 512;

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// A `tokenizer.json` that replaces the GGUF's own tokenizer.
    pub tokenizer_json: Option<PathBuf>,
    /// Compute as the float reference does ([`Model::float_reference`]): dequantized weights
    /// times unquantized f32 activations, f32 attention with an f32 key/value cache and f32
    /// GELU, as transformers + PEFT on the dequantized model (logits within 3e-5 of theirs).
    /// Several times slower; off by default (quantized dot products, as llama.cpp's, see
    /// [`LoadOptions::decode_activations`]).
    pub float_reference: bool,
    /// How generated tokens quantize their activations ([`Model::decode_activations`]):
    /// `None` for this CPU's default ([`quant::Activations::decode_default`]: the quantized
    /// remainder added where AVX-512 VNNI makes it cheap, one 8-bit pass elsewhere);
    /// `Some(VecDotType)` decodes as llama.cpp does, `Some(Residual)` adds the remainder.
    pub decode_activations: Option<quant::Activations>,
}

/// A loaded model, its tokenizer and its set of loaded adapters. Share it through `Arc` and
/// open sessions; adapters can be loaded and unloaded at any time.
pub struct Engine {
    /// The weights in use: the file's, or a copy with adapters baked into some tensors.
    model: RwLock<Arc<Model>>,
    /// The file's own weights (what `unbake` restores).
    base: Arc<Model>,
    pub tokenizer: Tokenizer,
    /// Milliseconds spent loading (mmap, parse, tokenizer).
    pub load_ms: f64,
    adapters: RwLock<BTreeMap<String, AdapterHandle>>,
    next_version: AtomicU64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("model", &self.base).finish()
    }
}

impl Engine {
    /// Memory-map the GGUF model at `path` and build its tokenizer.
    ///
    /// Errors: [`Error::Gguf`] (a file that cannot be read), [`Error::Load`] naming the file
    /// around [`Error::Gguf`] (malformed), [`Error::Model`] (unsupported architecture, missing
    /// tensor or key) or [`Error::Tokenizer`] (its tokenizer metadata); [`Error::Tokenizer`]
    /// for a `tokenizer_json` that cannot be loaded.
    pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Arc<Engine>, Error> {
        let t0 = Instant::now();
        let path = path.as_ref();
        // Errors from inside the file name the file (an unreadable file already does).
        let in_file = |e: Error| match e {
            Error::Gguf(crate::gguf::GgufError::Io { .. } | crate::gguf::GgufError::IsDirectory { .. }) => e,
            e => Error::Load {
                path: path.to_path_buf(),
                source: Box::new(e),
            },
        };
        let file = Arc::new(GgufFile::open(path).map_err(|e| in_file(e.into()))?);
        let mut model = Model::from_file(file.clone()).map_err(|e| in_file(e.into()))?;
        model.float_reference = opts.float_reference;
        if let Some(acts) = opts.decode_activations {
            model.decode_activations = acts;
        }
        let tokenizer = match &opts.tokenizer_json {
            Some(p) => Tokenizer::from_file(p)?,
            None => Tokenizer::from_gguf(file.metadata()).map_err(|e| in_file(e.into()))?,
        };
        let base = Arc::new(model);
        Ok(Arc::new(Engine {
            model: RwLock::new(base.clone()),
            base,
            tokenizer,
            load_ms: t0.elapsed().as_secs_f64() * 1e3,
            adapters: RwLock::new(BTreeMap::new()),
            next_version: AtomicU64::new(1),
        }))
    }

    /// The weights in use (the file's own, or with adapters baked in).
    pub fn model(&self) -> Arc<Model> {
        self.model.read().expect("model lock").clone()
    }

    /// The file's own weights.
    pub fn base_model(&self) -> &Arc<Model> {
        &self.base
    }

    /// Replace the weights in use (bake / unbake); sessions pick them up at their next
    /// generation and drop their caches.
    pub fn set_model(&self, m: Arc<Model>) {
        *self.model.write().expect("model lock") = m;
    }

    /// A new session with a KV cache of `n_ctx` positions (capped at the training context).
    pub fn session(self: &Arc<Self>, n_ctx: usize) -> Session {
        let model = self.model();
        Session {
            engine: self.clone(),
            kv: model.new_kv_cache(n_ctx),
            cached: Vec::new(),
            key: CacheKey::default(),
            model,
        }
    }

    /// Load an adapter (PEFT folder, `.safetensors`, or GGUF LoRA) into the adapter set under
    /// its name (`opts.name`, else the file or folder name). Loading a name again replaces it
    /// with a new version; nothing else is reloaded.
    ///
    /// Errors: [`Error::Lora`] naming the file and the tensor or field at fault.
    pub fn load_adapter(
        &self,
        path: impl AsRef<Path>,
        opts: &crate::lora::AdapterOptions,
    ) -> Result<AdapterHandle, Error> {
        let adapter = crate::lora::load_adapter(path.as_ref(), &self.base, opts)?;
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let h = AdapterHandle::new(adapter.name.clone(), version, adapter);
        self.adapters
            .write()
            .expect("adapter lock")
            .insert(h.name.clone(), h.clone());
        Ok(h)
    }

    /// Fold `active` adapters into the weights (from the file's weights: a new bake replaces
    /// the previous one). Sessions use the baked weights from their next generation on.
    ///
    /// Errors: [`Error::Lora`] (see [`crate::lora::bake::bake`]).
    pub fn bake(
        &self,
        active: &[(AdapterHandle, f32)],
        ty: crate::lora::bake::BakeType,
    ) -> Result<crate::lora::bake::BakeReport, Error> {
        let (m, report) = crate::lora::bake::bake(&self.base, active, ty)?;
        self.set_model(Arc::new(m));
        Ok(report)
    }

    /// Run the file's model with `active` on the fly over `text` (all of it, special tokens
    /// written in it recognized, in chunks of up to [`CALIBRATION_CHUNK`] tokens each led by
    /// the BOS when the model adds one) and collect what [`Engine::bake_calibrated`] needs: the
    /// inputs of the layers the adapters change.
    ///
    /// Errors: [`Error::InvalidOption`] when `text` has no tokens, [`Error::Lora`] for an
    /// invalid active set or one a same-type bake refuses ([`crate::lora::bake::check_bakeable`],
    /// [`crate::lora::bake::check_bake_types`]), [`Error::Model`] from the forward pass (a
    /// hidden state that is not finite: an adapter scale too large).
    pub fn calibrate(
        &self,
        active: &[(AdapterHandle, f32)],
        text: &str,
    ) -> Result<crate::lora::calibrate::Calibration, Error> {
        crate::lora::bake::check_bakeable(active)?;
        let plan = LoraPlan::new(&self.base, active)?;
        crate::lora::bake::check_bake_types(&self.base, &plan, crate::lora::bake::BakeType::Same)?;
        let bos: Vec<u32> = self
            .tokenizer
            .bos()
            .filter(|_| self.tokenizer.adds_bos())
            .into_iter()
            .collect();
        let body = self.tokenizer.encode(text, false)?;
        if body.is_empty() {
            return Err(Error::InvalidOption("the calibration text has no tokens".into()));
        }
        let len = CALIBRATION_CHUNK.min(self.base.config.n_ctx_train.saturating_sub(bos.len()).max(1));
        let chunks: Vec<Vec<u32>> = body
            .chunks(len)
            .map(|c| bos.iter().chain(c).copied().collect())
            .collect();
        Ok(crate::lora::calibrate::Calibration::collect(
            &self.base, &plan, &chunks,
        )?)
    }

    /// [`Engine::bake`] requantizing on the tensors' own grids over `calibration`'s inputs
    /// (see [`crate::lora::bake::bake_calibrated`]).
    ///
    /// Errors: as for [`Engine::bake`], and [`Error::Lora`] for a type other than `Same` or a
    /// calibration collected on other weights.
    pub fn bake_calibrated(
        &self,
        active: &[(AdapterHandle, f32)],
        ty: crate::lora::bake::BakeType,
        calibration: &crate::lora::calibrate::Calibration,
    ) -> Result<crate::lora::bake::BakeReport, Error> {
        let (m, report) = crate::lora::bake::bake_calibrated(&self.base, active, ty, calibration)?;
        self.set_model(Arc::new(m));
        Ok(report)
    }

    /// Go back to the file's own weights, exactly.
    pub fn unbake(&self) {
        self.set_model(self.base.clone());
    }

    /// Whether baked weights are in use.
    pub fn is_baked(&self) -> bool {
        !Arc::ptr_eq(&self.model(), &self.base)
    }

    /// Drop adapter `name` from the set (its memory goes when no generation uses it).
    pub fn unload_adapter(&self, name: &str) -> bool {
        self.adapters.write().expect("adapter lock").remove(name).is_some()
    }

    /// The loaded adapters, by name.
    pub fn adapters(&self) -> Vec<AdapterHandle> {
        self.adapters.read().expect("adapter lock").values().cloned().collect()
    }

    /// The loaded adapter `name`. Errors: [`Error::UnknownAdapter`].
    pub fn adapter(&self, name: &str) -> Result<AdapterHandle, Error> {
        self.adapters
            .read()
            .expect("adapter lock")
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownAdapter(name.to_string()))
    }

    /// Token ids of `text`, with BOS where the model adds it and special tokens parsed.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, Error> {
        Ok(self.tokenizer.encode(text, true)?)
    }

    /// The prompt for one user message in the model's chat format: `tokenizer.chat_template`
    /// rendered with minijinja (`messages`, `add_generation_prompt`, `bos_token`,
    /// `eos_token`), or the built-in Gemma / ChatML format when the file has no template.
    pub fn chat_prompt(&self, user: &str) -> Result<String, Error> {
        crate::chat::render(
            self.base.file().metadata(),
            &self.tokenizer,
            self.base.config.arch,
            user,
        )
    }
}

/// Options of one generation.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub n_predict: usize,
    pub sampling: SamplingOptions,
    /// Stop when the text contains any of these (the stop string is not returned).
    pub stop: Vec<String>,
    /// Stop at end-of-generation tokens (eos, `<end_of_turn>`, `<|im_end|>` …).
    pub stop_at_eog: bool,
    /// Prompt tokens evaluated per batch.
    pub n_batch: usize,
    /// Adapters applied on the fly, each with its scale (PEFT `set_scale`; negative allowed).
    pub adapters: Vec<(AdapterHandle, f32)>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            n_predict: 128,
            sampling: SamplingOptions::default(),
            stop: Vec::new(),
            stop_at_eog: true,
            n_batch: 512,
            adapters: Vec::new(),
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `n_predict` tokens were generated.
    Length,
    /// An end-of-generation token was sampled.
    Eog,
    /// A stop string appeared.
    StopString,
    /// The context is full.
    Context,
}

/// Timings of one generation.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Timings {
    pub prompt_tokens: usize,
    pub prompt_ms: f64,
    /// Tokens evaluated one at a time after the prompt (llama.cpp's "eval" runs: a
    /// generation of n tokens evaluates n − 1, the last one is only sampled).
    pub decode_tokens: usize,
    /// Time spent generating: the evaluations and the sampling of every token.
    pub decode_ms: f64,
}

impl Timings {
    /// Prompt tokens per second.
    pub fn prompt_tps(&self) -> f64 {
        per_second(self.prompt_tokens, self.prompt_ms)
    }
    /// Generated tokens per second.
    pub fn decode_tps(&self) -> f64 {
        per_second(self.decode_tokens, self.decode_ms)
    }
}

fn per_second(n: usize, ms: f64) -> f64 {
    if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 }
}

/// One generated token as it streams.
#[derive(Clone, Debug)]
pub struct TokenEvent {
    /// The token, or `None` for the text held back (for stop strings) and handed out at the end.
    pub id: Option<u32>,
    /// The text this token completes (may be empty while a UTF-8 character is incomplete, or
    /// while text that may begin a stop string is held back).
    pub text: String,
}

/// The result of a generation.
#[derive(Clone, Debug, Serialize)]
pub struct Generation {
    pub prompt_tokens: Vec<u32>,
    /// Generated ids (an end-of-generation token that stopped it is not included).
    pub tokens: Vec<u32>,
    pub text: String,
    pub stop_reason: StopReason,
    pub timings: Timings,
}

/// What a KV cache's contents were computed with: the weights (by identity) and the active
/// adapters' versions and scales. A cache is reused only under an equal key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct CacheKey {
    model: usize,
    adapters: Vec<(u64, u32)>,
}

/// A conversation state: a KV cache over one model. Reuses the cached prefix shared with the
/// next prompt when the weights and the active adapters (versions and scales) are the same.
pub struct Session {
    engine: Arc<Engine>,
    kv: KvCache,
    /// The tokens whose keys and values are in `kv`.
    cached: Vec<u32>,
    key: CacheKey,
    /// The weights this session's cache was computed with.
    model: Arc<Model>,
}

impl Session {
    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Context size in tokens.
    pub fn n_ctx(&self) -> usize {
        self.kv.n_ctx()
    }

    /// Forget the cache.
    pub fn reset(&mut self) {
        self.kv.truncate(0);
        self.cached.clear();
    }

    /// Use the engine's current weights and the adapters `active` from now on; the cache is
    /// dropped when either differs from what it was computed with. Returns the plan.
    pub fn prepare(&mut self, active: &[(AdapterHandle, f32)]) -> Result<LoraPlan, Error> {
        self.model = self.engine.model();
        let plan = LoraPlan::new(&self.model, active)?;
        let key = CacheKey {
            model: Arc::as_ptr(&self.model) as usize,
            adapters: plan.key().to_vec(),
        };
        if key != self.key {
            self.reset();
            self.key = key;
        }
        Ok(plan)
    }

    /// Evaluate `tokens` as the whole context (reusing the cached common prefix) and return
    /// the logits of the last position (`[n_vocab]`).
    ///
    /// Errors: [`Error::EmptyPrompt`], [`Error::PromptTooLong`], model errors.
    pub fn eval_prompt(&mut self, tokens: &[u32], n_batch: usize, plan: &LoraPlan) -> Result<Vec<f32>, Error> {
        if tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if tokens.len() > self.kv.n_ctx() {
            return Err(Error::PromptTooLong {
                n_prompt: tokens.len(),
                n_ctx: self.kv.n_ctx(),
            });
        }
        // Keep the common prefix, but always evaluate at least the last token for its logits.
        let common = self
            .cached
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(tokens.len() - 1);
        self.kv.truncate(common);
        self.cached.truncate(common);
        let mut logits = Vec::new();
        let rest = &tokens[common..];
        for (i, chunk) in rest.chunks(n_batch.max(1)).enumerate() {
            let last = (i + 1) * n_batch.max(1) >= rest.len();
            logits = self.model.forward_with(
                &mut self.kv,
                chunk,
                if last { Logits::Last } else { Logits::None },
                plan,
            )?;
            self.cached.extend_from_slice(chunk);
        }
        Ok(logits)
    }

    /// Evaluate one more token after the cached ones; logits of it (`[n_vocab]`).
    pub fn eval_next(&mut self, token: u32, plan: &LoraPlan) -> Result<Vec<f32>, Error> {
        let logits = self.model.decode_with(&mut self.kv, token, plan)?;
        self.cached.push(token);
        Ok(logits)
    }

    /// Last-position logits of `prompt` (`[n_vocab]`) with `adapters` applied.
    pub fn logits(&mut self, prompt: &str, adapters: &[(AdapterHandle, f32)]) -> Result<Vec<f32>, Error> {
        let tokens = self.engine.tokenize(prompt)?;
        self.logits_of_tokens(&tokens, adapters)
    }

    /// Last-position logits of `tokens` (`[n_vocab]`) with `adapters` applied.
    pub fn logits_of_tokens(&mut self, tokens: &[u32], adapters: &[(AdapterHandle, f32)]) -> Result<Vec<f32>, Error> {
        let plan = self.prepare(adapters)?;
        self.eval_prompt(tokens, 512, &plan)
    }

    /// Generate from `prompt`, calling `on_token` for each token; `on_token` returning false
    /// stops early.
    pub fn generate(
        &mut self,
        prompt: &str,
        opts: &GenerateOptions,
        mut on_token: impl FnMut(&TokenEvent) -> bool,
    ) -> Result<Generation, Error> {
        let tokens = self.engine.tokenize(prompt)?;
        self.generate_tokens(&tokens, opts, &mut on_token)
    }

    /// [`Session::generate`] from token ids.
    pub fn generate_tokens(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(&TokenEvent) -> bool,
    ) -> Result<Generation, Error> {
        let mut stream = self.stream_tokens(prompt, opts)?;
        for ev in stream.by_ref() {
            if !on_token(&ev?) {
                break;
            }
        }
        Ok(stream.finish())
    }

    /// Generate from `prompt` as an iterator of tokens; [`TokenStream::finish`] gives the
    /// result.
    pub fn stream(&mut self, prompt: &str, opts: &GenerateOptions) -> Result<TokenStream<'_>, Error> {
        let tokens = self.engine.tokenize(prompt)?;
        self.stream_tokens(&tokens, opts)
    }

    /// [`Session::stream`] from token ids.
    pub fn stream_tokens(&mut self, prompt: &[u32], opts: &GenerateOptions) -> Result<TokenStream<'_>, Error> {
        opts.sampling.validate().map_err(Error::InvalidOption)?;
        if opts.stop.iter().any(|s| s.is_empty()) {
            return Err(Error::InvalidOption("an empty stop string would stop at once".into()));
        }
        let t0 = Instant::now();
        let plan = self.prepare(&opts.adapters)?;
        let logits = self.eval_prompt(prompt, opts.n_batch, &plan)?;
        let timings = Timings {
            prompt_tokens: prompt.len(),
            prompt_ms: t0.elapsed().as_secs_f64() * 1e3,
            ..Default::default()
        };
        Ok(TokenStream {
            sampler: Sampler::new(opts.sampling.clone()),
            decoder: StreamDecoder::new(&self.engine.tokenizer),
            opts: opts.clone(),
            tokens: prompt.to_vec(),
            n_prompt: prompt.len(),
            text: String::new(),
            emitted: 0,
            logits,
            timings,
            stop: None,
            plan,
            session: self,
        })
    }
}

/// An in-progress generation; iterate it for [`TokenEvent`]s.
pub struct TokenStream<'s> {
    session: &'s mut Session,
    sampler: Sampler,
    decoder: StreamDecoder,
    opts: GenerateOptions,
    /// Prompt then generated ids (the repetition penalty's history).
    tokens: Vec<u32>,
    n_prompt: usize,
    /// All text decoded so far, and how much of it was handed out.
    text: String,
    emitted: usize,
    logits: Vec<f32>,
    timings: Timings,
    stop: Option<StopReason>,
    plan: LoraPlan,
}

impl TokenStream<'_> {
    /// End the generation (early or not) and return its result.
    pub fn finish(mut self) -> Generation {
        let stop_reason = self.stop.unwrap_or(StopReason::Length);
        if stop_reason != StopReason::StopString {
            let tail = self.decoder.finish();
            self.text.push_str(&tail);
        }
        let generated = self.tokens.split_off(self.n_prompt);
        Generation {
            prompt_tokens: self.tokens,
            tokens: generated,
            text: self.text,
            stop_reason,
            timings: self.timings,
        }
    }

    fn n_generated(&self) -> usize {
        self.tokens.len() - self.n_prompt
    }

    /// Text up to which nothing can still turn out to be a stop string.
    fn safe_len(&self) -> usize {
        let hold = self
            .opts
            .stop
            .iter()
            .map(|s| s.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        let mut end = self.text.len().saturating_sub(hold).max(self.emitted);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        end
    }

    fn step(&mut self) -> Result<Option<TokenEvent>, Error> {
        if self.stop.is_some() {
            return Ok(None);
        }
        if self.n_generated() >= self.opts.n_predict {
            self.stop = Some(StopReason::Length);
            return Ok(None);
        }
        let t0 = Instant::now();
        let engine = self.session.engine.clone();
        let id = self.sampler.sample(&self.logits, &self.tokens);
        if self.opts.stop_at_eog && engine.tokenizer.is_eog(id) {
            self.stop = Some(StopReason::Eog);
            return Ok(None);
        }
        self.tokens.push(id);
        self.text.push_str(&self.decoder.push(id));
        let mut out_end = self.safe_len();
        if let Some(pos) = self
            .opts
            .stop
            .iter()
            .filter_map(|s| {
                self.text[self.emitted.min(self.text.len())..]
                    .find(s.as_str())
                    .map(|p| p + self.emitted)
            })
            .min()
        {
            self.text.truncate(pos);
            out_end = pos.max(self.emitted);
            self.stop = Some(StopReason::StopString);
        }
        let text = self.text[self.emitted..out_end].to_string();
        self.emitted = out_end;
        // Evaluate the new token unless this was the last one.
        if self.stop.is_none() && self.n_generated() < self.opts.n_predict {
            if self.session.kv.len() >= self.session.kv.n_ctx() {
                self.stop = Some(StopReason::Context);
            } else {
                self.logits = self.session.eval_next(id, &self.plan)?;
                self.timings.decode_tokens += 1;
            }
        }
        self.timings.decode_ms += t0.elapsed().as_secs_f64() * 1e3;
        Ok(Some(TokenEvent { id: Some(id), text }))
    }
}

impl Iterator for TokenStream<'_> {
    type Item = Result<TokenEvent, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(Some(ev)) => Some(Ok(ev)),
            Ok(None) => {
                // Hand out what was held back for stop strings.
                if self.emitted < self.text.len() && self.stop != Some(StopReason::StopString) {
                    let text = self.text[self.emitted..].to_string();
                    self.emitted = self.text.len();
                    return Some(Ok(TokenEvent { id: None, text }));
                }
                None
            }
            Err(e) => {
                self.stop = Some(StopReason::Length);
                Some(Err(e))
            }
        }
    }
}
