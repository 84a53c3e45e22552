//! `lora-run`: the command-line front end. Argument parsing and printing only; all the work
//! happens in the `runtime` library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use runtime::inspect::Inspection;
use runtime::{Engine, GenerateOptions, LoadOptions, SamplingOptions};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Local text generation from quantized GGUF models with LoRA adapters.
///
/// Without a subcommand, generates a continuation of --prompt with --model.
#[derive(Parser, Debug)]
#[command(name = "lora-run", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    generate: GenerateArgs,
}

/// What every command that loads a model takes.
#[derive(Args, Debug, Clone)]
struct ModelArgs {
    /// The GGUF model.
    #[arg(short, long, value_name = "GGUF")]
    model: Option<PathBuf>,
}

/// For the commands that compute with the model.
#[derive(Args, Debug, Clone)]
struct ThreadArgs {
    /// Worker threads (default: all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
}

/// For the commands that tokenize text.
#[derive(Args, Debug, Clone)]
struct TokenizerArgs {
    /// A tokenizer.json that replaces the model's own tokenizer.
    #[arg(long, value_name = "JSON")]
    tokenizer: Option<PathBuf>,
}

/// The context size, for the commands that keep one.
#[derive(Args, Debug, Clone)]
struct CtxArgs {
    /// Context size in tokens (at most the model's training context; 0: that context)
    /// [default: 4096; 512 for perplexity, as llama.cpp's]
    #[arg(short = 'c', long = "ctx")]
    ctx_arg: Option<usize>,
}

/// The adapters to load.
#[derive(Args, Debug, Clone)]
struct AdapterArgs {
    /// A LoRA adapter (PEFT folder, .safetensors, or GGUF LoRA), with an optional scale
    /// (`jargon.safetensors:0.5`); repeatable, the adapters stack.
    #[arg(short = 'a', long = "adapter", value_name = "PATH[:SCALE]")]
    adapters: Vec<String>,
    /// lora_alpha for an adapter whose config does not give one (no adapter_config.json or
    /// safetensors metadata with it); an adapter's own lora_alpha wins (with a warning).
    // Read as an adapter scale is: finite, and not so small that an f32 makes it 0.
    #[arg(long, value_parser = parse_scale, allow_negative_numbers = true)]
    lora_alpha: Option<f32>,
}

/// Baking the adapters into the weights in memory.
#[derive(Args, Debug, Clone)]
struct BakeArgs {
    /// Fold the adapters into the weights in memory (full base speed) instead of applying
    /// them on the fly; the file is untouched.
    #[arg(long)]
    bake: bool,
    /// Type of the baked tensors (with --bake, or -i's /bake): same (requantize to their own
    /// type; the default), f16 or q8_0.
    #[arg(long, value_parser = parse_bake_type)]
    bake_type: Option<runtime::lora::bake::BakeType>,
    /// A text file to calibrate a bake into the tensors' own types: the model runs over it with
    /// the adapters on the fly, and each tensor is requantized on its own grid so that its
    /// outputs on those inputs move least (GPTQ). Slower; the baked model stays closer to the
    /// on-the-fly one.
    #[arg(long, value_name = "TEXT")]
    bake_calibration: Option<PathBuf>,
    /// The text of `bake_calibration`, read once before the model loads.
    #[arg(skip)]
    calibration_text: std::sync::OnceLock<String>,
}

impl BakeArgs {
    /// The bake type asked for (`same` by default).
    fn bake_type(&self) -> runtime::lora::bake::BakeType {
        self.bake_type.unwrap_or(runtime::lora::bake::BakeType::Same)
    }
}

fn parse_bake_type(s: &str) -> std::result::Result<runtime::lora::bake::BakeType, String> {
    runtime::lora::bake::BakeType::parse(s).ok_or_else(|| format!("unknown bake type `{s}` (same, f16, q8_0)"))
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("numerics").args(["exact", "q8_decode", "residual_decode"]).multiple(false)))]
struct GenerateArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// The prompt.
    #[arg(short, long, allow_hyphen_values = true)]
    prompt: Option<String>,
    /// Tokens to generate (-1 or -2: until the context is full).
    #[arg(
        short = 'n',
        long = "n-predict",
        default_value_t = 128,
        allow_negative_numbers = true,
        value_parser = parse_n_predict
    )]
    n_predict: i64,
    /// Temperature; 0 (or below) is greedy.
    #[arg(long = "temp", default_value_t = 0.8, allow_negative_numbers = true)]
    temperature: f32,
    /// Top-k (0 or below: off).
    #[arg(long, default_value_t = 40, allow_negative_numbers = true)]
    top_k: i64,
    /// Top-p (1: off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Min-p (0: off).
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Repetition penalty over the last 64 tokens (1: off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// RNG seed (default, or -1: random).
    #[arg(long, allow_negative_numbers = true)]
    seed: Option<i64>,
    /// Stop when the text contains this (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,
    /// Wrap the prompt in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Print one JSON object (prompt, prompt_tokens, tokens, text, stop_reason, timings)
    /// instead of streaming; with --prompts, one a line.
    #[arg(long)]
    json: bool,
    /// Interactive: read prompts from stdin; `/adapters`, `/use NAME|PATH[:SCALE] ...`,
    /// `/none`, `/bake`, `/unbake`, `/quit` (`//text` sends `/text`).
    #[arg(short = 'i', long, conflicts_with_all = ["prompt", "json"])]
    interactive: bool,
    /// Run many prompts on one loaded model, one JSON object a line: `prompt`, optional
    /// `adapters` ([{"path" or "name", "scale"}]) and `n`. Adapters switch between prompts
    /// without reloading anything; `--adapter` only loads (and names) adapters here.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["prompt", "interactive", "bake", "bake_type", "bake_calibration"])]
    prompts: Option<PathBuf>,
}

/// A model with its context and adapters (generate, perplexity, logits).
#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    threads: ThreadArgs,
    #[command(flatten)]
    tokenizer: TokenizerArgs,
    #[command(flatten)]
    ctx: CtxArgs,
    #[command(flatten)]
    lora: AdapterArgs,
    #[command(flatten)]
    bake: BakeArgs,
    /// Compute in f32 as transformers + PEFT do on the dequantized model: dequantized weights
    /// times unquantized activations, attention (with an f32 key/value cache) and GELU in f32.
    /// Several times slower; by default the activations are quantized to 8 bits for the dot
    /// products, as in llama.cpp (generation on CPUs with AVX-512 VNNI adds a second 8-bit
    /// pass over the remainder).
    #[arg(long)]
    exact: bool,
}

/// How generated tokens quantize their activations for the dot products.
#[derive(Args, Debug, Default)]
struct DecodeArgs {
    /// Decode with the activations quantized once to 8 bits, as llama.cpp does: faster, less
    /// exact. The default on CPUs without AVX-512 VNNI.
    #[arg(long, conflicts_with = "residual_decode")]
    q8_decode: bool,
    /// Decode with a second 8-bit pass over what the first one rounded off, added to each
    /// layer product, so that generation follows the float model closely. The default on
    /// CPUs with AVX-512 VNNI (fused kernels, about 11–22% slower decode); elsewhere it costs
    /// two full dot products. The prompt is quantized once either way.
    #[arg(long)]
    residual_decode: bool,
}

impl DecodeArgs {
    /// The choice for [`LoadOptions::decode_activations`]: `None` is the CPU's default.
    fn activations(&self) -> Option<quant::Activations> {
        match (self.q8_decode, self.residual_decode) {
            (true, _) => Some(quant::Activations::VecDotType),
            (_, true) => Some(quant::Activations::Residual),
            _ => None,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show what is inside a GGUF file (model or LoRA adapter: version, architecture,
    /// hyperparameters, tokenizer, and every tensor with its type, shape, offset and size) or a
    /// PEFT adapter (folder or .safetensors: modules, ranks, scale, config, tensors).
    Inspect {
        /// The GGUF file, PEFT folder or .safetensors.
        file: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the token ids of a text.
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        tokenizer: TokenizerArgs,
        /// The text.
        #[arg(long, allow_hyphen_values = true)]
        text: String,
        /// Print {"tokens": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Perplexity of a text file by llama.cpp's method (second half of each chunk scored).
    Perplexity {
        #[command(flatten)]
        run: RunArgs,
        /// The text file.
        #[arg(short, long)]
        file: PathBuf,
        /// Most chunks to evaluate (default: all).
        #[arg(long)]
        chunks: Option<usize>,
        /// Print {"ppl", "tokens", ...}.
        #[arg(long)]
        json: bool,
    },
    /// Write a GGUF model with adapters baked in (llama.cpp and lora-run load it).
    Merge {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        threads: ThreadArgs,
        #[command(flatten)]
        lora: AdapterArgs,
        /// Output GGUF.
        #[arg(short, long)]
        output: PathBuf,
        /// Type of the merged tensors: same, f16 or q8_0.
        #[arg(long = "type", default_value = "same", value_parser = parse_bake_type)]
        ty: runtime::lora::bake::BakeType,
        /// A text file to calibrate the merge into the tensors' own types (`--type same`), as
        /// --bake-calibration does.
        #[arg(long, value_name = "TEXT")]
        calibration: Option<PathBuf>,
    },
    /// Measure prompt processing and decode speed as llama-bench does (pp: one batch of
    /// n-prompt tokens; tg: n-gen tokens one at a time; each after n-depth tokens of
    /// context, 0 by default), best of reps.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        threads: ThreadArgs,
        #[command(flatten)]
        lora: AdapterArgs,
        #[command(flatten)]
        bake: BakeArgs,
        /// Prompt tokens.
        #[arg(short = 'p', long, default_value_t = 128)]
        n_prompt: usize,
        /// Generated tokens.
        #[arg(short = 'n', long, default_value_t = 64)]
        n_gen: usize,
        /// Tokens already in the context before each test, as llama-bench's -d (filled before
        /// the clock starts).
        #[arg(short = 'd', long, default_value_t = 0)]
        n_depth: usize,
        /// Repetitions.
        #[arg(short = 'r', long, default_value_t = 3)]
        reps: usize,
        /// Print {"pp_tokens_per_s", "tg_tokens_per_s", "decode": "q8" or "q8+remainder", ...}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        decode: DecodeArgs,
    },
    /// The largest logits at the last position of a prompt.
    Logits {
        #[command(flatten)]
        run: RunArgs,
        /// The prompt.
        #[arg(short, long, allow_hyphen_values = true)]
        prompt: String,
        /// How many (at least 1).
        #[arg(long, default_value_t = 20, value_parser = parse_top)]
        top: usize,
        /// Print {"top": [[id, logit], ...]}.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Inspect { file, json }) => inspect(&file, json),
        Some(Command::Tokenize {
            model,
            tokenizer,
            text,
            json,
        }) => tokenize(&model, &tokenizer, &text, json),
        Some(Command::Perplexity {
            run,
            file,
            chunks,
            json,
        }) => perplexity(&run, &file, chunks, json),
        Some(Command::Logits { run, prompt, top, json }) => logits(&run, &prompt, top, json),
        Some(Command::Bench {
            model,
            threads,
            lora,
            bake,
            n_prompt,
            n_gen,
            n_depth,
            reps,
            json,
            decode,
        }) => bench(
            (&model, &threads),
            &decode,
            &lora,
            &bake,
            [n_prompt, n_gen, n_depth],
            reps,
            json,
        ),
        Some(Command::Merge {
            model,
            threads,
            lora,
            output,
            ty,
            calibration,
        }) => merge(&model, &threads, &lora, &output, ty, calibration.as_deref()),
        None => generate(&cli.generate),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): a quiet end, as for the streamed tokens.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Set the thread count and load the model with its tokenizer, for computing as `--exact`
/// and `decode` say.
fn load_run(r: &RunArgs, decode: &DecodeArgs) -> Result<std::sync::Arc<Engine>> {
    load(
        &r.model,
        r.threads.threads,
        r.tokenizer.tokenizer.as_ref(),
        r.exact,
        decode,
    )
}

/// Set the thread count (if given) and load the model (with the tokenizer.json `tok`, if
/// given, the float reference path if `exact`, decoding as `decode` says).
fn load(
    m: &ModelArgs,
    threads: Option<usize>,
    tok: Option<&PathBuf>,
    exact: bool,
    decode: &DecodeArgs,
) -> Result<std::sync::Arc<Engine>> {
    if let Some(n) = threads {
        if n == 0 {
            return Err("--threads must be at least 1".into());
        }
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    }
    let Some(path) = &m.model else {
        return Err("no model: pass --model FILE.gguf".into());
    };
    let engine = Engine::load(
        path,
        &LoadOptions {
            tokenizer_json: tok.cloned(),
            float_reference: exact,
            decode_activations: decode.activations(),
        },
    )?;
    Ok(engine)
}

/// The context size: `--ctx`, else `default`, at most the model's training context (with a
/// note when `--ctx` asked for more).
fn context(engine: &Engine, c: &CtxArgs, default: usize) -> usize {
    let n_ctx_train = engine.model().config.n_ctx_train;
    // 0 is the model's own (training) context, as in llama.cpp.
    let want = match c.ctx_arg.unwrap_or(default) {
        0 => n_ctx_train,
        n => n,
    };
    if c.ctx_arg.is_some_and(|n| n > n_ctx_train) {
        eprintln!("note: --ctx {want} is capped at the model's training context {n_ctx_train}");
    }
    want.min(n_ctx_train)
}

/// Split `PATH[:SCALE]`: the scale is what follows the last `:`, unless the whole text is an
/// existing path. Errors on a scale that is not a finite number.
fn parse_adapter_spec(spec: &str) -> Result<(PathBuf, f32)> {
    if let Some((p, s)) = spec.rsplit_once(':')
        && !std::path::Path::new(spec).exists()
    {
        return parse_scale(s)
            .map(|scale| (PathBuf::from(p), scale))
            .map_err(|e| format!("adapter scale in `{spec}` (PATH[:SCALE]): {e}").into());
    }
    Ok((PathBuf::from(spec), 1.0))
}

/// An adapter scale: a number that an f32 holds (not one that overflows to infinity or
/// underflows to zero).
fn parse_scale(s: &str) -> std::result::Result<f32, String> {
    let wide: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number"))?;
    scale_of(wide, s)
}

/// [`parse_scale`] of a number already read (`shown` as the user wrote it).
fn scale_of(wide: f64, shown: &str) -> std::result::Result<f32, String> {
    let v = wide as f32;
    if !v.is_finite() {
        return Err(format!(
            "`{shown}` is not a finite number an f32 holds (|scale| < 3.4e38)"
        ));
    }
    if v == 0.0 && wide != 0.0 {
        return Err(format!("`{shown}` is too small for an f32 (it would be 0)"));
    }
    Ok(v)
}

/// Print an adapter's summary line (with `note` in parentheses, if any) and its warnings.
fn print_loaded(h: &runtime::lora::AdapterHandle, note: &str) {
    if note.is_empty() {
        eprintln!("{}", h.adapter.summary());
    } else {
        eprintln!("{} ({note})", h.adapter.summary());
    }
    for w in &h.adapter.warnings {
        eprintln!("warning: adapter {}: {w}", h.name);
    }
}

/// How `--adapter` is used by a command.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AdapterUse {
    /// Applied (or baked) with their scales.
    Apply,
    /// Applied, and more may be loaded later (`-i`'s `/use PATH`, which `--lora-alpha` serves).
    ApplyThenMore,
    /// Only loaded and named (`--prompts`: each line picks its adapters and scales).
    LoadOnly,
}

/// Whether `h` was loaded from `path`: the same file, or the PEFT folder whose
/// `adapter_model.safetensors` it is.
fn same_source(h: &runtime::lora::AdapterHandle, path: &std::path::Path) -> bool {
    let (Ok(p), Ok(hp)) = (std::fs::canonicalize(path), std::fs::canonicalize(&h.adapter.path)) else {
        return false;
    };
    p == hp || (p.is_dir() && p.join("adapter_model.safetensors") == hp)
}

/// The adapter at `path`: the one already loaded from that file or folder (however the path
/// is spelled), else a new load under the path's default name (`NAME#2`, `NAME#3` ... when
/// another adapter has the name). The second value says whether it was loaded now.
fn find_or_load(
    engine: &Engine,
    path: &std::path::Path,
    lora_alpha: Option<f32>,
) -> Result<(runtime::lora::AdapterHandle, bool)> {
    if let Some(h) = engine.adapters().into_iter().find(|h| same_source(h, path)) {
        return Ok((h, false));
    }
    let stem = runtime::lora::default_adapter_name(path);
    let mut name = stem.clone();
    let mut k = 2;
    while engine.adapter(&name).is_ok() {
        name = format!("{stem}#{k}");
        k += 1;
    }
    let opts = runtime::lora::AdapterOptions {
        name: Some(name),
        lora_alpha,
    };
    Ok((engine.load_adapter(path, &opts)?, true))
}

/// [`find_or_load`] for a path a user names after start-up (`/use`, a `--prompts` line): a new
/// load prints its summary line.
fn adapter_at(
    engine: &Engine,
    path: &std::path::Path,
    lora_alpha: Option<f32>,
) -> Result<runtime::lora::AdapterHandle> {
    let (h, new) = find_or_load(engine, path, lora_alpha)?;
    if new {
        print_loaded(&h, "");
    }
    Ok(h)
}

/// Adapters with their scales.
type AdapterSet = Vec<(runtime::lora::AdapterHandle, f32)>;

/// Load the `--adapter`s into the engine's adapter set and print each one's summary line;
/// with `bake.bake`, fold them into the weights. Returns the active set (empty after a bake).
fn load_adapters(engine: &Engine, a: &AdapterArgs, bake: Option<&BakeArgs>, usage: AdapterUse) -> Result<AdapterSet> {
    load_adapters_baked(engine, a, bake, usage).map(|(active, _)| active)
}

/// [`load_adapters`], also returning what was baked.
fn load_adapters_baked(
    engine: &Engine,
    a: &AdapterArgs,
    bake: Option<&BakeArgs>,
    usage: AdapterUse,
) -> Result<(AdapterSet, AdapterSet)> {
    let baking = bake.is_some_and(|b| b.bake);
    if a.adapters.is_empty() && baking {
        return Err("--bake needs an --adapter".into());
    }
    if a.adapters.is_empty() && a.lora_alpha.is_some() && usage == AdapterUse::Apply {
        return Err("--lora-alpha needs an --adapter".into());
    }
    // A file `lora-run merge` wrote records its adapters in general.name.
    let merged_name = engine.base_model().file().metadata().get_str("general.name").ok();
    let mut out: AdapterSet = Vec::new();
    for spec in &a.adapters {
        let (path, scale) = parse_adapter_spec(spec)?;
        // parse_adapter_spec leaves the text whole unless it split a scale off.
        if usage == AdapterUse::LoadOnly && path.as_os_str() != spec.as_str() {
            return Err(format!(
                "--adapter {spec}: with --prompts, --adapter only loads adapters and the lines give the scales"
            )
            .into());
        }
        let t0 = std::time::Instant::now();
        let (h, new) = find_or_load(engine, &path, a.lora_alpha)?;
        if !new {
            return Err(format!(
                "--adapter {spec}: {} is given twice (as `{}`); give it once, with the sum of the scales",
                path.display(),
                h.name
            )
            .into());
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let note = match usage {
            AdapterUse::Apply | AdapterUse::ApplyThenMore => format!("loaded in {ms:.1} ms; applied at scale {scale}"),
            AdapterUse::LoadOnly => format!("loaded in {ms:.1} ms as `{}` for the prompts to name", h.name),
        };
        print_loaded(&h, &note);
        if let Some(n) =
            merged_name.filter(|n| n.contains(&format!("LoRA {}:", h.name)) || n.contains(&format!(" + {}:", h.name)))
        {
            eprintln!(
                "warning: the model is a merge that already contains an adapter named {} (general.name `{n}`); it now applies on top",
                h.name
            );
        }
        out.push((h, scale));
    }
    if let Some(b) = bake.filter(|_| baking && !out.is_empty()) {
        let (r, ms) = bake_as_asked(engine, &out, b)?;
        eprintln!(
            "baked {} tensors ({} bytes) in {ms:.0} ms; {}",
            r.tensors.len(),
            r.bytes,
            kept_note(&r)
        );
        return Ok((Vec::new(), out));
    }
    Ok((out, Vec::new()))
}

/// Bake `active` as `b` asks: its type, calibrated over its text file when it names one.
/// Returns the report and the bake's own time in ms (after the calibration run, which prints
/// its own).
fn bake_as_asked(
    engine: &Engine,
    active: &[(runtime::lora::AdapterHandle, f32)],
    b: &BakeArgs,
) -> Result<(runtime::lora::bake::BakeReport, f64)> {
    let cal = match &b.bake_calibration {
        Some(path) => {
            let text = match b.calibration_text.get() {
                Some(t) => t.clone(),
                None => read_calibration_text(path)?,
            };
            Some(calibration(engine, active, path, &text)?)
        }
        None => None,
    };
    let t0 = std::time::Instant::now();
    let r = match &cal {
        Some(c) => engine.bake_calibrated(active, b.bake_type(), c)?,
        None => engine.bake(active, b.bake_type())?,
    };
    Ok((r, t0.elapsed().as_secs_f64() * 1e3))
}

/// The inputs of the layers `active` changes, over `text` (read from `path`; printing what
/// it took).
fn calibration(
    engine: &Engine,
    active: &[(runtime::lora::AdapterHandle, f32)],
    path: &std::path::Path,
    text: &str,
) -> Result<runtime::lora::calibrate::Calibration> {
    let t0 = std::time::Instant::now();
    let cal = engine.calibrate(active, text)?;
    eprintln!(
        "calibrated over {} tokens of {} in {:.0} ms ({:.0} MB of input statistics)",
        cal.tokens(),
        path.display(),
        t0.elapsed().as_secs_f64() * 1e3,
        cal.bytes() as f64 / 1e6
    );
    Ok(cal)
}

/// The calibration text at `p`, read before the model loads: refused when it cannot be read
/// or holds only white space.
fn read_calibration_text(p: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("calibration text {}: {e}", p.display()))?;
    if text.trim().is_empty() {
        return Err(format!("calibration text {}: it is empty", p.display()).into());
    }
    Ok(text)
}

/// `--bake-type` without `--bake` is a mistake, except in `-i` (for a later `/bake`).
fn check_bake_type(b: &BakeArgs, interactive: bool) -> Result<()> {
    if b.bake_type.is_some() && !b.bake && !interactive {
        return Err("--bake-type needs --bake (or, with -i, /bake)".into());
    }
    if b.bake_calibration.is_some() && !b.bake && !interactive {
        return Err("--bake-calibration needs --bake (or, with -i, /bake)".into());
    }
    if let Some(p) = &b.bake_calibration {
        let text = read_calibration_text(p)?;
        b.calibration_text.get_or_init(|| text);
    }
    if b.bake_calibration.is_some() && b.bake_type() != runtime::lora::bake::BakeType::Same {
        return Err(format!(
            "--bake-calibration is for a bake into the tensors' own types (--bake-type same); {:?} keeps the adapters' change without it",
            b.bake_type()
        )
        .into());
    }
    Ok(())
}

fn merge(
    m: &ModelArgs,
    threads: &ThreadArgs,
    lora: &AdapterArgs,
    output: &std::path::Path,
    ty: runtime::lora::bake::BakeType,
    calibration_text: Option<&std::path::Path>,
) -> Result<()> {
    if lora.adapters.is_empty() {
        return Err("merge needs at least one --adapter".into());
    }
    let text = calibration_text.map(read_calibration_text).transpose()?;
    if calibration_text.is_some() && ty != runtime::lora::bake::BakeType::Same {
        return Err(format!(
            "--calibration is for a merge into the tensors' own types (--type same); {ty:?} keeps the adapters' change without it"
        )
        .into());
    }
    if let (Some(input), Ok(out)) = (&m.model, std::fs::canonicalize(output))
        && std::fs::canonicalize(input).is_ok_and(|i| i == out)
    {
        return Err(format!(
            "the output {} is the input model; write the merged model to another file",
            output.display()
        )
        .into());
    }
    let engine = load(m, threads.threads, None, false, &DecodeArgs::default())?;
    let active = load_adapters(engine.as_ref(), lora, None, AdapterUse::Apply)?;
    let cal = calibration_text
        .zip(text.as_deref())
        .map(|(p, t)| calibration(engine.as_ref(), &active, p, t))
        .transpose()?;
    let t0 = std::time::Instant::now();
    let (baked, report) = match &cal {
        Some(c) => runtime::lora::bake::bake_calibrated(engine.base_model(), &active, ty, c)?,
        None => runtime::lora::bake::bake(engine.base_model(), &active, ty)?,
    };
    let note: Vec<String> = active.iter().map(|(h, s)| format!("{}:{s}", h.name)).collect();
    let n = runtime::lora::merge::write_merged(&baked, &format!("+ LoRA {}", note.join(" + ")), output)?;
    eprintln!(
        "merged {} tensors in {:.0} ms; {}; wrote {} ({n} bytes)",
        report.tensors.len(),
        t0.elapsed().as_secs_f64() * 1e3,
        kept_note_for(&report, "--calibration", "--type q8_0 or f16"),
        output.display()
    );
    Ok(())
}

/// "kept N% of the adapters' change", after printing the bake's warning (if it has one) with
/// the options that avoid the loss.
fn kept_note(r: &runtime::lora::bake::BakeReport) -> String {
    kept_note_for(r, "--bake-calibration", "--bake-type q8_0 or f16, or no --bake")
}

/// [`kept_note`] with the command's own options: its calibration option (suggested unless
/// the bake was calibrated) and its other advice (`--bake-type ...`, or merge's `--type ...`).
fn kept_note_for(r: &runtime::lora::bake::BakeReport, calibration_option: &str, advice: &str) -> String {
    if let Some(w) = r.warning() {
        if r.calibrated > 0 {
            eprintln!("warning: {w} ({advice})");
        } else {
            eprintln!("warning: {w} ({calibration_option} TEXT, {advice})");
        }
    }
    // Adapters that cancel out leave almost no change to keep: the ratio says nothing then.
    let kept = if (0.0..=1.5).contains(&r.kept) {
        format!("kept {:.1}% of the adapters' change", 100.0 * r.kept)
    } else {
        "the adapters' net change is about zero".into()
    };
    if r.calibrated == 0 && r.not_calibrated.is_empty() {
        return kept;
    }
    let mut note = format!(
        "{kept}; {} of {} tensors requantized on their own grids over the calibration text",
        r.calibrated,
        r.tensors.len()
    );
    if r.plain_rows > 0 {
        note += &format!(
            " ({} rows kept as plain requantization, closer on the calibration text)",
            r.plain_rows
        );
    }
    // Grouped by reason, in the order first met.
    let mut by_reason: Vec<(&str, Vec<&str>)> = Vec::new();
    for (t, why) in &r.not_calibrated {
        match by_reason.iter_mut().find(|(w, _)| w == why) {
            Some((_, ts)) => ts.push(t),
            None => by_reason.push((why, vec![t])),
        }
    }
    for (why, ts) in by_reason {
        note += &format!("; requantized without calibration ({why}): {}", ts.join(", "));
    }
    note
}

/// `name:scale + name:scale`, or `none`.
fn adapter_list(set: &[(runtime::lora::AdapterHandle, f32)]) -> String {
    if set.is_empty() {
        return "none".into();
    }
    let names: Vec<String> = set.iter().map(|(h, s)| format!("{}:{s}", h.name)).collect();
    names.join(" + ")
}

const INTERACTIVE_HELP: &str = "/adapters, /use NAME|PATH[:SCALE] ..., /none, /bake, /unbake, /quit";

/// `-i`: prompts from stdin, commands to switch adapters.
fn interactive(a: &GenerateArgs) -> Result<()> {
    use std::io::BufRead;
    let engine = load_run(&a.run, &a.decode)?;
    // `baked`: what is baked into the weights now (the active set again after /unbake).
    let (mut active, mut baked) =
        load_adapters_baked(&engine, &a.run.lora, Some(&a.run.bake), AdapterUse::ApplyThenMore)?;
    let n_ctx = context(&engine, &a.run.ctx, 4096);
    let mut session = engine.session(n_ctx);
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    eprintln!("lora-run interactive: type a prompt, or {INTERACTIVE_HELP}");
    for line in stdin.lock().split(b'\n') {
        // Bytes that are not UTF-8 become U+FFFD rather than ending the session.
        let line = String::from_utf8_lossy(&line?).into_owned();
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or_default();
        let args: Vec<&str> = words.collect();
        const COMMANDS: [&str; 7] = ["/quit", "/exit", "/adapters", "/use", "/none", "/bake", "/unbake"];
        if cmd.starts_with('/') && !cmd.starts_with("//") && !COMMANDS.contains(&cmd) {
            eprintln!("error: unknown command {cmd} ({INTERACTIVE_HELP}; start a prompt with // to send a /)");
            continue;
        }
        if cmd.starts_with('/') && !cmd.starts_with("//") && cmd != "/use" && !args.is_empty() {
            eprintln!("error: {cmd} takes no arguments (got `{}`)", args.join(" "));
            continue;
        }
        match cmd {
            "/quit" | "/exit" => break,
            "/adapters" => {
                let all = engine.adapters();
                if all.is_empty() {
                    writeln!(out, "no adapters loaded (/use PATH[:SCALE] loads one)")?;
                }
                for h in all {
                    let on = active
                        .iter()
                        .find(|(x, _)| x.version == h.version)
                        .map(|(_, s)| format!(" [active, scale {s}]"))
                        .or_else(|| {
                            baked
                                .iter()
                                .find(|(x, _)| x.version == h.version)
                                .map(|(_, s)| format!(" [baked in, scale {s}]"))
                        })
                        .unwrap_or_default();
                    writeln!(out, "{}{on}", h.adapter.summary())?;
                }
            }
            "/use" => {
                // All or nothing: on any error the active set stays as it was.
                let next: Result<Vec<_>> = args
                    .iter()
                    .map(|spec| {
                        let (name, scale) = parse_adapter_spec(spec)?;
                        // A loaded adapter's name, else a path (found among the loaded ones
                        // if it was loaded before).
                        let h = match engine.adapter(&name.to_string_lossy()) {
                            Ok(h) => h,
                            Err(_) => adapter_at(&engine, &name, a.run.lora.lora_alpha)?,
                        };
                        if baked.iter().any(|(b, _)| b.version == h.version) {
                            return Err(format!(
                                "{} is baked into the weights already (it would apply twice); /unbake first",
                                h.name
                            )
                            .into());
                        }
                        Ok((h, scale))
                    })
                    .collect();
                // The same adapter twice is refused here as a generation would refuse it.
                let next = next.and_then(|n| {
                    runtime::lora::LoraPlan::new(&engine.model(), &n)?;
                    Ok(n)
                });
                match next {
                    Ok(next) => {
                        active = next;
                        writeln!(out, "active: {}{}", adapter_list(&active), baked_note(&baked))?;
                    }
                    Err(e) => eprintln!("error: {e} (active adapters unchanged)"),
                }
            }
            "/none" => {
                active.clear();
                writeln!(out, "active: none{}", baked_note(&baked))?;
            }
            "/bake" if engine.is_baked() => eprintln!("error: weights are already baked; /unbake first"),
            "/bake" if active.is_empty() => eprintln!("error: no active adapters to bake; /use some first"),
            "/bake" => match bake_as_asked(&engine, &active, &a.run.bake) {
                Ok((r, _)) => {
                    writeln!(
                        out,
                        "baked {} tensors ({}); {} now live in the weights (/unbake restores the base and makes them active again)",
                        r.tensors.len(),
                        kept_note(&r),
                        adapter_list(&active)
                    )?;
                    baked = std::mem::take(&mut active);
                }
                Err(e) => eprintln!("error: {e}"),
            },
            "/unbake" if !engine.is_baked() => eprintln!("error: nothing is baked"),
            "/unbake" => {
                engine.unbake();
                // The baked set goes back on the fly, then what was active on top of it, one
                // by one; one that cannot run with those before it (DoRA meeting another
                // adapter on a layer) is set aside, and the user is told.
                let on_top = std::mem::replace(&mut active, std::mem::take(&mut baked));
                for (h, s) in on_top {
                    active.push((h, s));
                    if let Err(e) = runtime::lora::LoraPlan::new(&engine.model(), &active) {
                        let (h, s) = active.pop().expect("just pushed");
                        eprintln!("note: {}:{s} set aside: {e}", h.name);
                    }
                }
                writeln!(out, "weights restored; active on the fly: {}", adapter_list(&active))?;
            }
            _ => {
                // `//text` sends `/text`.
                let line = line.strip_prefix('/').filter(|l| l.starts_with('/')).unwrap_or(line);
                let prompt = user_prompt(&engine, a, line)?;
                let opts = generate_options(a, n_predict(a.n_predict), active.clone());
                let g = session.generate(&prompt, &opts, |ev| {
                    out.write_all(ev.text.as_bytes()).and_then(|_| out.flush()).is_ok()
                });
                match g {
                    Ok(g) => {
                        writeln!(out)?;
                        report_end(&g, engine.load_ms, n_ctx);
                    }
                    Err(e) => eprintln!("error: {e}"),
                }
            }
        }
    }
    Ok(())
}

/// " (baked into the weights: ...)" while adapters are baked, else nothing.
fn baked_note(baked: &[(runtime::lora::AdapterHandle, f32)]) -> String {
    if baked.is_empty() {
        String::new()
    } else {
        format!(
            " (baked into the weights: {}; /unbake restores the base)",
            adapter_list(baked)
        )
    }
}

/// The stats line on stderr, after a note when the context (`n_ctx` tokens) ended the
/// generation.
fn report_end(g: &runtime::Generation, load_ms: f64, n_ctx: usize) {
    if g.stop_reason == runtime::StopReason::Context {
        eprintln!("note: stopped at the end of the context ({n_ctx} tokens); a larger --ctx allows more");
    }
    eprintln!("{}", stats_line(load_ms, &g.timings));
}

/// Tokens to generate for `-n` (or a `--prompts` line's `n`): -1 and -2 (llama.cpp's
/// "infinite" and "until the context is full") both mean until the context is full.
fn n_predict(n: i64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// `--top`: at least one logit.
fn parse_top(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("0 shows nothing: give at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{s}`: {e}")),
    }
}

/// `-n`: a count, or -1 / -2.
fn parse_n_predict(s: &str) -> std::result::Result<i64, String> {
    check_n_predict(s.trim().parse::<i64>().map_err(|e| format!("`{s}`: {e}"))?)
}

/// A token count, or -1 / -2 for until the context is full.
fn check_n_predict(n: i64) -> std::result::Result<i64, String> {
    if n < -2 {
        return Err(format!(
            "{n}: give a number of tokens, or -1 (or -2) for until the context is full"
        ));
    }
    Ok(n)
}

/// The text to generate from: `text` itself, or wrapped in the model's chat template (--chat).
fn user_prompt(engine: &Engine, a: &GenerateArgs, text: &str) -> Result<String> {
    Ok(if a.chat {
        engine.chat_prompt(text)?
    } else {
        text.to_string()
    })
}

/// The generation options of the command line, for `n_predict` tokens with `adapters` active.
fn generate_options(
    a: &GenerateArgs,
    n_predict: usize,
    adapters: Vec<(runtime::lora::AdapterHandle, f32)>,
) -> GenerateOptions {
    GenerateOptions {
        n_predict,
        sampling: sampling(a),
        stop: a.stop.clone(),
        adapters,
        ..Default::default()
    }
}

fn sampling(a: &GenerateArgs) -> SamplingOptions {
    let seed = a.seed.filter(|&s| s >= 0).map(|s| s as u64).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    SamplingOptions {
        temperature: a.temperature,
        top_k: usize::try_from(a.top_k).unwrap_or(0),
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        repeat_last_n: 64,
        seed,
    }
}

fn generation_json(g: &runtime::Generation, prompt: &str, load_ms: f64) -> serde_json::Value {
    let t = g.timings;
    json!({
        "prompt": prompt,
        "prompt_tokens": g.prompt_tokens,
        "tokens": g.tokens,
        "text": g.text,
        "stop_reason": g.stop_reason,
        "timings": {
            "load_ms": load_ms,
            "prompt_tokens": t.prompt_tokens,
            "prompt_ms": t.prompt_ms,
            "prompt_tokens_per_s": t.prompt_tps(),
            "decode_tokens": t.decode_tokens,
            "decode_ms": t.decode_ms,
            "decode_tokens_per_s": t.decode_tps(),
        },
    })
}

fn stats_line(load_ms: f64, t: &runtime::Timings) -> String {
    format!(
        "load {:.0} ms | prompt {} tokens, {:.1} tok/s | decode {} tokens, {:.1} tok/s",
        load_ms,
        t.prompt_tokens,
        t.prompt_tps(),
        t.decode_tokens,
        t.decode_tps()
    )
}

/// One line of a `--prompts` file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptLine {
    prompt: String,
    #[serde(default)]
    adapters: Vec<AdapterRef>,
    /// Tokens to generate, as `-n`.
    n: Option<i64>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AdapterRef {
    path: Option<PathBuf>,
    name: Option<String>,
    /// As written (f64), checked like a command-line scale.
    #[serde(default = "one")]
    scale: f64,
}

fn one() -> f64 {
    1.0
}

fn run_prompts(a: &GenerateArgs, file: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    // Parse every line before running any.
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let where_ = format!("{}:{}", file.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{where_}: {e}"))?;
        if !v.is_object() {
            return Err(format!("{where_}: expected a JSON object such as {{\"prompt\": \"...\"}}, found {v}").into());
        }
        let p: PromptLine = serde_json::from_value(v).map_err(|e| format!("{where_}: {e}"))?;
        if let Some(n) = p.n {
            check_n_predict(n).map_err(|e| format!("{where_}: n: {e}"))?;
        }
        lines.push((where_, p));
    }
    if lines.is_empty() {
        return Err(format!("{}: no prompts in the file", file.display()).into());
    }
    let engine = load_run(&a.run, &a.decode)?;
    load_adapters(&engine, &a.run.lora, None, AdapterUse::LoadOnly)?;
    let n_ctx = context(&engine, &a.run.ctx, 4096);
    // Resolve every line's adapters and check every prompt fits before running any.
    let mut jobs = Vec::new();
    for (where_, p) in lines {
        let mut active = Vec::new();
        for r in &p.adapters {
            let scale =
                scale_of(r.scale, &format!("{:e}", r.scale)).map_err(|e| format!("{where_}: adapter scale: {e}"))?;
            active.push((resolve_adapter(&engine, r, a.run.lora.lora_alpha, &where_)?, scale));
        }
        runtime::lora::LoraPlan::new(&engine.model(), &active).map_err(|e| format!("{where_}: {e}"))?;
        let prompt = user_prompt(&engine, a, &p.prompt)?;
        let n_tok = engine.tokenize(&prompt)?.len();
        if n_tok > n_ctx {
            return Err(format!(
                "{where_}: the prompt is {n_tok} tokens, the context {n_ctx} (--ctx): it does not fit"
            )
            .into());
        }
        jobs.push((where_, p, prompt, active));
    }
    let mut session = engine.session(n_ctx);
    let mut out = std::io::stdout().lock();
    for (where_, p, prompt, active) in jobs {
        let opts = generate_options(a, n_predict(p.n.unwrap_or(a.n_predict)), active.clone());
        let names: Vec<String> = active.iter().map(|(h, s)| format!("{}:{s}", h.name)).collect();
        if !a.json {
            let label = if active.is_empty() {
                "base".into()
            } else {
                adapter_list(&active)
            };
            writeln!(out, "--- [{label}] {}", p.prompt)?;
        }
        let json = a.json;
        let g = session
            .generate(&prompt, &opts, |ev| {
                json || out.write_all(ev.text.as_bytes()).and_then(|_| out.flush()).is_ok()
            })
            .map_err(|e| format!("{where_}: {e}"))?;
        if json {
            let mut obj = generation_json(&g, &p.prompt, engine.load_ms);
            obj["adapters"] = json!(names);
            writeln!(out, "{obj}")?;
        } else {
            writeln!(out)?;
            report_end(&g, engine.load_ms, n_ctx);
        }
    }
    Ok(())
}

/// The adapter a `--prompts` line refers to: by name among the loaded ones, or by path (each
/// file or folder loaded once, see [`find_or_load`]). Errors name the file and line.
fn resolve_adapter(
    engine: &Engine,
    r: &AdapterRef,
    lora_alpha: Option<f32>,
    where_: &str,
) -> Result<runtime::lora::AdapterHandle> {
    match (&r.path, &r.name) {
        (Some(path), None) => Ok(adapter_at(engine, path, lora_alpha).map_err(|e| format!("{where_}: {e}"))?),
        (None, Some(name)) => Ok(engine.adapter(name).map_err(|e| format!("{where_}: {e}"))?),
        _ => Err(format!("{where_}: each adapter needs exactly one of \"path\" or \"name\"").into()),
    }
}

fn generate(a: &GenerateArgs) -> Result<()> {
    check_bake_type(&a.run.bake, a.interactive)?;
    if let Some(file) = &a.prompts {
        return run_prompts(a, file);
    }
    if a.interactive {
        return interactive(a);
    }
    let Some(prompt) = &a.prompt else {
        return Err("no prompt: pass --prompt TEXT or --prompts FILE.jsonl (or a subcommand; see --help)".into());
    };
    let engine = load_run(&a.run, &a.decode)?;
    let active = load_adapters(&engine, &a.run.lora, Some(&a.run.bake), AdapterUse::Apply)?;
    let text = user_prompt(&engine, a, prompt)?;
    let opts = generate_options(a, n_predict(a.n_predict), active);
    let n_ctx = context(&engine, &a.run.ctx, 4096);
    let mut session = engine.session(n_ctx);
    let mut out = std::io::stdout().lock();
    let json = a.json;
    let g = session.generate(&text, &opts, |ev| {
        if !json {
            // A closed stdout ends the generation quietly.
            return out.write_all(ev.text.as_bytes()).and_then(|_| out.flush()).is_ok();
        }
        true
    })?;
    if json {
        writeln!(out, "{}", generation_json(&g, prompt, engine.load_ms))?;
    } else {
        writeln!(out).ok();
    }
    report_end(&g, engine.load_ms, n_ctx);
    Ok(())
}

fn tokenize(m: &ModelArgs, tok: &TokenizerArgs, text: &str, json: bool) -> Result<()> {
    let engine = load(m, None, tok.tokenizer.as_ref(), false, &DecodeArgs::default())?;
    let ids = engine.tokenize(text)?;
    if json {
        write_stdout(&format!("{}\n", json!({ "tokens": ids })))
    } else {
        let mut s = String::new();
        for id in &ids {
            let piece = engine.tokenizer.token_text(*id).unwrap_or("");
            s.push_str(&format!("{id:>8} {piece:?}\n"));
        }
        write_stdout(&s)
    }
}

fn perplexity(r: &RunArgs, file: &std::path::Path, chunks: Option<usize>, json: bool) -> Result<()> {
    check_bake_type(&r.bake, false)?;
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let engine = load_run(r, &DecodeArgs::default())?;
    let active = load_adapters(&engine, &r.lora, Some(&r.bake), AdapterUse::Apply)?;
    // llama.cpp's perplexity default context.
    let n_ctx = context(&engine, &r.ctx, 512);
    let r = runtime::perplexity::perplexity(&engine, &text, n_ctx, chunks, &active, |i, ppl| {
        if !json {
            eprint!("[{}]{ppl:.4},", i + 1);
        }
    })?;
    if json {
        write_stdout(&format!("{}\n", serde_json::to_string(&r)?))
    } else {
        eprintln!();
        write_stdout(&format!(
            "Final estimate: PPL = {:.4} ({} chunks of {} tokens, {} tokens scored)\n",
            r.ppl, r.chunks, r.n_ctx, r.tokens
        ))
    }
}

fn logits(r: &RunArgs, prompt: &str, top: usize, json: bool) -> Result<()> {
    check_bake_type(&r.bake, false)?;
    let engine = load_run(r, &DecodeArgs::default())?;
    let active = load_adapters(&engine, &r.lora, Some(&r.bake), AdapterUse::Apply)?;
    let mut session = engine.session(context(&engine, &r.ctx, 4096));
    let logits = session.logits(prompt, &active)?;
    let idx = runtime::sampler::top_k(&logits, top);
    if json {
        let top: Vec<_> = idx.iter().map(|&i| json!([i, logits[i as usize]])).collect();
        write_stdout(&format!("{}\n", json!({ "top": top })))
    } else {
        let mut s = String::new();
        for i in idx {
            s.push_str(&format!(
                "{i:>8} {:>10.4} {:?}\n",
                logits[i as usize],
                engine.tokenizer.token_text(i).unwrap_or("")
            ));
        }
        write_stdout(&s)
    }
}

/// `lora-run bench`; `sizes` is `[n_prompt, n_gen, n_depth]`.
fn bench(
    (m, threads): (&ModelArgs, &ThreadArgs),
    decode: &DecodeArgs,
    lora: &AdapterArgs,
    bake: &BakeArgs,
    [n_prompt, n_gen, n_depth]: [usize; 3],
    reps: usize,
    json: bool,
) -> Result<()> {
    check_bake_type(bake, false)?;
    if reps == 0 || n_prompt.checked_add(n_gen).is_none_or(|n| n == 0) {
        return Err("bench needs -r ≥ 1 and a non-zero -p or -n".into());
    }
    let engine = load(m, threads.threads, None, false, decode)?;
    let n_ctx_train = engine.model().config.n_ctx_train;
    // Each test runs on its own cache after the depth: the larger one must fit.
    if n_prompt.max(n_gen).checked_add(n_depth).is_none_or(|n| n > n_ctx_train) {
        return Err(format!(
            "-d {n_depth} + -p {n_prompt} or -n {n_gen} tokens do not fit the model's context of {n_ctx_train} tokens"
        )
        .into());
    }
    let active = load_adapters(&engine, lora, Some(bake), AdapterUse::Apply)?;
    let r = runtime::bench::bench(&engine, n_prompt, n_gen, n_depth, reps.max(1), &active)?;
    let threads = rayon::current_num_threads();
    // Which numerics the tg test decoded with (the default depends on the CPU).
    let decode = match engine.model().decode_activations {
        quant::Activations::VecDotType => "q8",
        quant::Activations::Residual => "q8+remainder",
    };
    if json {
        write_stdout(&format!(
            "{}\n",
            json!({
                "model": m.model, "threads": threads, "n_prompt": n_prompt, "n_gen": n_gen, "n_depth": n_depth,
                "pp_tokens_per_s": r.pp_tps, "tg_tokens_per_s": r.tg_tps, "decode": decode,
            })
        ))
    } else {
        let at = if n_depth > 0 {
            format!(" @ d{n_depth}")
        } else {
            String::new()
        };
        let mut line = format!("threads {threads}");
        if n_prompt > 0 {
            line += &format!(" | pp{n_prompt}{at} {:.1} tok/s", r.pp_tps);
        }
        if n_gen > 0 {
            line += &format!(" | tg{n_gen}{at} {:.1} tok/s (decode {decode})", r.tg_tps);
        }
        write_stdout(&format!("{line}\n"))
    }
}

fn inspect(file: &std::path::Path, json: bool) -> Result<()> {
    let is_gguf = std::fs::File::open(file).ok().and_then(|mut f| {
        use std::io::Read;
        let mut magic = [0u8; 4];
        f.read_exact(&mut magic).ok().map(|_| &magic == b"GGUF")
    });
    // As --adapter takes it: the adapter_config.json of a PEFT folder stands for the folder.
    if let Some(dir) = runtime::lora::peft_folder_of(file).filter(|_| file.is_file() && is_gguf != Some(true)) {
        return inspect(dir, json);
    }
    if file.is_dir() || (is_gguf == Some(false) && file.extension().is_some_and(|e| e == "safetensors")) {
        let v = runtime::inspect::inspect_peft(file)?;
        let text = if json {
            serde_json::to_string_pretty(&v)? + "\n"
        } else {
            format_peft(&v)
        };
        return write_stdout(&text);
    }
    let ins = Inspection::of_path(file).map_err(|e| {
        // An unreadable file's error names it already; errors inside the file get its name.
        let msg = e.to_string();
        let shown = file.display().to_string();
        if msg.contains(&shown) {
            msg
        } else {
            format!("{shown}: {msg}")
        }
    })?;
    let text = if json {
        serde_json::to_string_pretty(&ins)? + "\n"
    } else {
        format_inspection(&ins)
    };
    write_stdout(&text)
}

/// Human-readable form of a PEFT adapter inspection.
fn format_peft(v: &serde_json::Value) -> String {
    let sm = &v["summary"];
    let ranks: Vec<String> = sm["ranks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r.to_string())
        .collect();
    let scale = match sm["scale"].as_f64() {
        Some(x) if sm["use_rslora"] == true => format!("scale {x} (lora_alpha / √r, use_rslora)"),
        Some(x) => format!("scale {x} (lora_alpha / r)"),
        None => "scale unknown (no lora_alpha and r in a config)".into(),
    };
    let mut s = format!(
        "{}\n  PEFT adapter, {} tensors, {} parameters: {} modules, rank {}, {scale}{}\n  \
         (not checked against a model: loading it with -m MODEL --adapter does that)\n",
        v["path"].as_str().unwrap_or(""),
        v["tensor_count"],
        v["parameter_count"],
        sm["modules"],
        ranks.join("/"),
        if sm["use_dora"] == true { ", DoRA" } else { "" }
    );
    match v["config"]["values"].as_object() {
        Some(c) => {
            s.push_str(&format!("config ({}):\n", v["config"]["file"].as_str().unwrap_or("")));
            for (k, val) in c {
                if !val.is_null()
                    && val != &serde_json::json!(false)
                    && val != &serde_json::json!({})
                    && val != &serde_json::json!([])
                {
                    s.push_str(&format!("  {k} = {val}\n"));
                }
            }
        }
        None => s.push_str("no adapter_config.json (pass --lora-alpha when loading)\n"),
    }
    s.push_str("tensors:\n");
    for t in v["tensors"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "  {}  {}  {}\n",
            t["name"].as_str().unwrap_or(""),
            t["type"].as_str().unwrap_or(""),
            t["shape"]
        ));
    }
    s
}

/// Write to stdout; a closed pipe (`lora-run inspect M | head`) is not an error.
fn write_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Human-readable form of an inspection.
fn format_inspection(ins: &Inspection) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    macro_rules! println {
        ($($t:tt)*) => { let _ = writeln!(s, $($t)*); };
    }
    macro_rules! print {
        ($($t:tt)*) => { let _ = write!(s, $($t)*); };
    }
    println!("{}", ins.path);
    println!(
        "  GGUF v{}, {} ({} bytes), {} metadata keys, {} tensors, {} parameters",
        ins.version, ins.file_type, ins.file_size, ins.metadata_count, ins.tensor_count, ins.parameter_count
    );
    println!("  alignment {}, data at offset {}", ins.alignment, ins.data_offset);
    if let Some(a) = &ins.architecture {
        println!("  architecture: {a}");
    }
    if let Some(n) = &ins.name {
        println!("  name: {n}");
    }
    if !ins.hyperparameters.is_empty() {
        println!("hyperparameters:");
        for (k, v) in &ins.hyperparameters {
            println!("  {k} = {v}");
        }
    }
    if let Some(t) = &ins.tokenizer {
        print!("tokenizer: {}", t.model);
        if let Some(p) = &t.pre {
            print!(" (pre-tokenizer {p})");
        }
        print!(", {} tokens", t.tokens);
        if t.merges > 0 {
            print!(", {} merges", t.merges);
        }
        if let Some(b) = t.bos_token_id {
            print!(", bos {b}");
        }
        if let Some(e) = t.eos_token_id {
            print!(", eos {e}");
        }
        if t.chat_template {
            print!(", chat template");
        }
        println!();
    }
    let types: Vec<String> = ins.tensor_types.iter().map(|(t, n)| format!("{t} ×{n}")).collect();
    println!("tensor types: {}", types.join(", "));
    println!("tensors:");
    let w = ins.tensors.iter().map(|t| t.name.len()).max().unwrap_or(4);
    println!(
        "  {:<w$}  {:<7}  {:<22}  {:>12}  {:>12}",
        "name", "type", "shape", "offset", "bytes"
    );
    for t in &ins.tensors {
        let shape = format!("{:?}", t.shape);
        println!(
            "  {:<w$}  {:<7}  {:<22}  {:>12}  {:>12}",
            t.name, t.ty, shape, t.offset, t.size
        );
    }
    s
}
