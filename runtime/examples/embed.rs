//! An app embedding lora-run: load a model once, share it, run two sessions, stream tokens
//! through a callback and through an iterator.
//!
//! ```sh
//! cargo run --release -p runtime --example embed -- ~/.cache/lora-run/models/gemma-3-270m-q4_k_m.gguf
//! ```

use std::io::Write;

use runtime::{Engine, GenerateOptions, LoadOptions, SamplingOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: embed MODEL.gguf")?;
    let engine = Engine::load(&path, &LoadOptions::default())?; // Arc<Engine>: Send + Sync
    let opts = GenerateOptions {
        n_predict: 24,
        sampling: SamplingOptions::greedy(),
        ..Default::default()
    };

    // Callback streaming.
    let mut a = engine.session(1024);
    print!("[callback] The capital of France is");
    let g = a.generate("The capital of France is", &opts, |ev| {
        print!("{}", ev.text);
        std::io::stdout().flush().is_ok()
    })?;
    println!("\n  ({} tokens, {:.1} tok/s)", g.tokens.len(), g.timings.decode_tps());

    // Iterator streaming, on another thread, sharing the same loaded model.
    let shared = engine.clone();
    let handle = std::thread::spawn(move || -> Result<String, runtime::Error> {
        let mut b = shared.session(1024);
        let mut text = String::new();
        let opts = GenerateOptions {
            n_predict: 24,
            sampling: SamplingOptions {
                seed: 3,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut stream = b.stream("Once upon a time", &opts)?;
        for ev in &mut stream {
            text.push_str(&ev?.text);
        }
        let _result = stream.finish();
        Ok(text)
    });
    println!("[iterator] Once upon a time{}", handle.join().expect("thread")?);
    Ok(())
}
