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

/// What every command that runs a model takes.
#[derive(Args, Debug, Clone)]
struct ModelArgs {
    /// The GGUF model.
    #[arg(short, long, value_name = "GGUF")]
    model: Option<PathBuf>,
    /// A tokenizer.json that replaces the model's own tokenizer.
    #[arg(long, value_name = "JSON")]
    tokenizer: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Context size in tokens (at most the model's training context).
    #[arg(short = 'c', long = "ctx", default_value_t = 4096)]
    ctx: usize,
}

#[derive(Args, Debug)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt.
    #[arg(short, long)]
    prompt: Option<String>,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    n_predict: usize,
    /// Temperature; 0 is greedy.
    #[arg(long = "temp", default_value_t = 0.8)]
    temperature: f32,
    /// Top-k (0: off).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Top-p (1: off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Min-p (0: off).
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Repetition penalty over the last 64 tokens (1: off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// RNG seed (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when the text contains this (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,
    /// Wrap the prompt in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Print one JSON object (prompt_tokens, tokens, text, timings) instead of streaming.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show what is inside a GGUF file (model or LoRA adapter): version, architecture,
    /// hyperparameters, tokenizer, and every tensor with its type, shape, offset and size.
    Inspect {
        /// The GGUF file.
        file: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the token ids of a text.
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        /// The text.
        #[arg(long)]
        text: String,
        /// Print {"tokens": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Perplexity of a text file by llama.cpp's method (second half of each chunk scored).
    Perplexity {
        #[command(flatten)]
        model: ModelArgs,
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
    /// Measure prompt processing and decode speed as llama-bench does (pp: one batch of
    /// n-prompt tokens from an empty cache; tg: n-gen tokens one at a time), best of reps.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt tokens.
        #[arg(short = 'p', long, default_value_t = 128)]
        n_prompt: usize,
        /// Generated tokens.
        #[arg(short = 'n', long, default_value_t = 64)]
        n_gen: usize,
        /// Repetitions.
        #[arg(short = 'r', long, default_value_t = 3)]
        reps: usize,
        /// Print {"pp_tokens_per_s", "tg_tokens_per_s", ...}.
        #[arg(long)]
        json: bool,
    },
    /// The largest logits at the last position of a prompt.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        /// The prompt.
        #[arg(short, long)]
        prompt: String,
        /// How many.
        #[arg(long, default_value_t = 20)]
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
        Some(Command::Tokenize { model, text, json }) => tokenize(&model, &text, json),
        Some(Command::Perplexity { model, file, chunks, json }) => perplexity(&model, &file, chunks, json),
        Some(Command::Logits { model, prompt, top, json }) => logits(&model, &prompt, top, json),
        Some(Command::Bench { model, n_prompt, n_gen, reps, json }) => bench(&model, n_prompt, n_gen, reps, json),
        None => generate(&cli.generate),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Set the thread count and load the model.
fn load(m: &ModelArgs) -> Result<std::sync::Arc<Engine>> {
    if let Some(n) = m.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global()?;
    }
    let Some(path) = &m.model else {
        return Err("no model: pass --model FILE.gguf".into());
    };
    Ok(Engine::load(path, &LoadOptions { tokenizer_json: m.tokenizer.clone() })?)
}

fn generate(a: &GenerateArgs) -> Result<()> {
    let Some(prompt) = &a.prompt else {
        return Err("no prompt: pass --prompt TEXT (or a subcommand; see --help)".into());
    };
    let engine = load(&a.model)?;
    let prompt = if a.chat { engine.chat_prompt(prompt)? } else { prompt.clone() };
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
    });
    let opts = GenerateOptions {
        n_predict: a.n_predict,
        sampling: SamplingOptions {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repeat_penalty: a.repeat_penalty,
            repeat_last_n: 64,
            seed,
        },
        stop: a.stop.clone(),
        ..Default::default()
    };
    let mut session = engine.session(a.model.ctx);
    let mut out = std::io::stdout().lock();
    let json = a.json;
    let g = session.generate(&prompt, &opts, |ev| {
        if !json {
            // A closed stdout ends the generation quietly.
            return out.write_all(ev.text.as_bytes()).and_then(|_| out.flush()).is_ok();
        }
        true
    })?;
    let t = g.timings;
    if json {
        let obj = json!({
            "prompt_tokens": g.prompt_tokens,
            "tokens": g.tokens,
            "text": g.text,
            "stop_reason": g.stop_reason,
            "timings": {
                "load_ms": engine.load_ms,
                "prompt_tokens": t.prompt_tokens,
                "prompt_ms": t.prompt_ms,
                "prompt_tokens_per_s": t.prompt_tps(),
                "decode_tokens": t.decode_tokens,
                "decode_ms": t.decode_ms,
                "decode_tokens_per_s": t.decode_tps(),
            },
        });
        writeln!(out, "{obj}")?;
    } else {
        writeln!(out).ok();
    }
    eprintln!(
        "load {:.0} ms | prompt {} tokens, {:.1} tok/s | decode {} tokens, {:.1} tok/s",
        engine.load_ms,
        t.prompt_tokens,
        t.prompt_tps(),
        t.decode_tokens,
        t.decode_tps()
    );
    Ok(())
}

fn tokenize(m: &ModelArgs, text: &str, json: bool) -> Result<()> {
    let engine = load(m)?;
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

fn perplexity(m: &ModelArgs, file: &std::path::Path, chunks: Option<usize>, json: bool) -> Result<()> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let engine = load(m)?;
    let n_ctx = m.ctx.min(engine.model.config.n_ctx_train);
    let r = runtime::perplexity::perplexity(&engine, &text, n_ctx, chunks, |i, ppl| {
        if !json {
            eprint!("[{}]{ppl:.4},", i + 1);
        }
    })?;
    if json {
        write_stdout(&format!("{}\n", serde_json::to_string(&r)?))
    } else {
        eprintln!();
        write_stdout(&format!("Final estimate: PPL = {:.4} ({} chunks of {} tokens, {} tokens scored)\n", r.ppl, r.chunks, r.n_ctx, r.tokens))
    }
}

fn logits(m: &ModelArgs, prompt: &str, top: usize, json: bool) -> Result<()> {
    let engine = load(m)?;
    let mut session = engine.session(m.ctx);
    let logits = session.logits(prompt)?;
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    idx.truncate(top);
    if json {
        let top: Vec<_> = idx.iter().map(|&i| json!([i, logits[i]])).collect();
        write_stdout(&format!("{}\n", json!({ "top": top })))
    } else {
        let mut s = String::new();
        for i in idx {
            s.push_str(&format!("{i:>8} {:>10.4} {:?}\n", logits[i], engine.tokenizer.token_text(i as u32).unwrap_or("")));
        }
        write_stdout(&s)
    }
}

fn bench(m: &ModelArgs, n_prompt: usize, n_gen: usize, reps: usize, json: bool) -> Result<()> {
    let engine = load(m)?;
    let r = runtime::bench::bench(&engine, n_prompt, n_gen, reps.max(1))?;
    let threads = rayon::current_num_threads();
    if json {
        write_stdout(&format!("{}\n", json!({
            "model": m.model, "threads": threads, "n_prompt": n_prompt, "n_gen": n_gen,
            "pp_tokens_per_s": r.pp_tps, "tg_tokens_per_s": r.tg_tps,
        })))
    } else {
        write_stdout(&format!(
            "threads {threads} | pp{n_prompt} {:.1} tok/s | tg{n_gen} {:.1} tok/s\n",
            r.pp_tps, r.tg_tps
        ))
    }
}

fn inspect(file: &std::path::Path, json: bool) -> Result<()> {
    let ins = Inspection::of_path(file)?;
    let text = if json { serde_json::to_string_pretty(&ins)? + "\n" } else { format_inspection(&ins) };
    write_stdout(&text)
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
    println!("  {:<w$}  {:<7}  {:<22}  {:>12}  {:>12}", "name", "type", "shape", "offset", "bytes");
    for t in &ins.tensors {
        let shape = format!("{:?}", t.shape);
        println!("  {:<w$}  {:<7}  {:<22}  {:>12}  {:>12}", t.name, t.ty, shape, t.offset, t.size);
    }
    s
}
