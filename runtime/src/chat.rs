//! Chat prompts: the model's `tokenizer.chat_template` (Jinja) rendered with minijinja, or a
//! built-in format where the GGUF carries no template (as llama.cpp falls back to one).

use crate::engine::Error;
use crate::gguf::Metadata;
use crate::model::Arch;
use crate::tokenizer::Tokenizer;

/// Render one user turn and the generation prompt.
///
/// Errors: [`Error::Template`] when the template does not parse or render.
pub fn render(md: &Metadata, tok: &Tokenizer, arch: Arch, user: &str) -> Result<String, Error> {
    let Ok(template) = md.get_str("tokenizer.chat_template") else {
        return Ok(match arch {
            // Gemma's turn format (llama.cpp's built-in "gemma" template).
            Arch::Gemma3 => format!("<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n"),
            // ChatML, llama.cpp's default.
            _ => format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"),
        });
    };
    let mut env = minijinja::Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template)
        .map_err(|e| Error::Template(e.to_string()))?;
    let tmpl = env.get_template("chat").map_err(|e| Error::Template(e.to_string()))?;
    let text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or_default().to_string();
    tmpl.render(minijinja::context! {
        messages => vec![minijinja::context! { role => "user", content => user }],
        add_generation_prompt => true,
        bos_token => text(tok.bos()),
        eos_token => text(tok.eos()),
    })
    .map_err(|e| Error::Template(e.to_string()))
}
