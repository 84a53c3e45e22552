//! `lora-run`: the command-line front end. Argument parsing and printing only; all the work
//! happens in the `runtime` library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use runtime::inspect::Inspection;

/// Local text generation from quantized GGUF models with LoRA adapters.
#[derive(Parser, Debug)]
#[command(name = "lora-run", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show what is inside a GGUF file (model or LoRA adapter): version, architecture,
    /// hyperparameters, tokenizer, and every tensor with its type, shape, offset and size.
    Inspect {
        /// The GGUF file.
        file: std::path::PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect { file, json } => inspect(&file, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn inspect(file: &std::path::Path, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    let ins = Inspection::of_path(file)?;
    let text = if json { serde_json::to_string_pretty(&ins)? + "\n" } else { format_inspection(&ins) };
    write_stdout(&text)
}

/// Write to stdout; a closed pipe (`lora-run inspect M | head`) is not an error.
fn write_stdout(text: &str) -> Result<(), Box<dyn std::error::Error>> {
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
