//! Text ↔ token ids, built entirely from the GGUF's `tokenizer.*` metadata, and the
//! model's chat template.

pub mod from_gguf;
pub mod template;

pub use from_gguf::{Tokenizer, TokenizerError};
pub use template::{ChatTemplate, Message, TemplateError};
