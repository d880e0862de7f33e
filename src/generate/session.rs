//! One conversation or completion stream over a KV cache.
//!
//! The session remembers which tokens its cache holds. A new prompt that starts with
//! them (the next chat turn re-rendered from the template, say) only runs the new
//! suffix; anything after the first difference is recomputed.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Runtime, Sampler};
use crate::model::{KvCache, ModelError};
use crate::tokenizer::TokenizerError;

#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("prompt is empty: nothing to continue from")]
    EmptyPrompt,
    #[error("chunk size {0} is too small: perplexity needs at least 4 tokens per chunk")]
    ChunkTooSmall(usize),
    #[error("text has {tokens} tokens: too short for one chunk of {n_ctx}")]
    TextTooShort { tokens: usize, n_ctx: usize },
    #[error("{0} is a synthetic model (random weights): quality measurements mean nothing for it")]
    Synthetic(String),
    #[error("the two models have different vocabularies: their distributions cannot be compared token by token")]
    VocabularyMismatch,
    #[error("prompt has {prompt} tokens but the context holds {n_ctx} (raise --ctx-size or shorten it)")]
    PromptTooLong { prompt: usize, n_ctx: usize },
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-generation token (EOS or end of turn).
    EndOfGeneration,
    /// `--max-tokens` reached.
    MaxTokens,
    /// The context window is full.
    ContextFull,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub prompt_tokens: usize,
    pub prompt_ms: f64,
    pub generated_tokens: usize,
    pub generation_ms: f64,
}

impl Timings {
    pub fn prompt_tps(&self) -> f64 {
        per_second(self.prompt_tokens, self.prompt_ms)
    }
    pub fn generation_tps(&self) -> f64 {
        per_second(self.generated_tokens, self.generation_ms)
    }
}

fn per_second(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The result of one [`Session::generate`] call.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// Generated ids (an end-of-generation token is not included).
    pub ids: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    pub timings: Timings,
}

pub struct Session<'r> {
    rt: &'r Runtime,
    cache: KvCache,
    /// Tokens whose keys and values are in `cache`, in order.
    cached: Vec<u32>,
}

impl<'r> Session<'r> {
    /// A session with a context of `n_ctx` positions (clamped to the model's trained
    /// context).
    pub fn new(rt: &'r Runtime, n_ctx: usize) -> Result<Self, GenerationError> {
        Ok(Self { rt, cache: rt.model.new_cache(n_ctx)?, cached: Vec::new() })
    }

    pub fn n_ctx(&self) -> usize {
        self.cache.n_ctx()
    }

    /// Bytes the KV cache would take with every position filled.
    pub fn kv_capacity_bytes(&self) -> usize {
        self.cache.capacity_bytes()
    }

    /// Bytes of KV cache holding positions so far.
    pub fn kv_used_bytes(&self) -> usize {
        self.cache.capacity_bytes() / self.cache.n_ctx().max(1) * self.cache.len()
    }

    /// Forgets the conversation.
    pub fn reset(&mut self) {
        self.cache.clear();
        self.cached.clear();
    }

    /// Feeds `prompt` (reusing the cached common prefix) and returns the logits after its
    /// last token.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>, GenerationError> {
        if prompt.is_empty() {
            return Err(GenerationError::EmptyPrompt);
        }
        if prompt.len() > self.cache.n_ctx() {
            return Err(GenerationError::PromptTooLong { prompt: prompt.len(), n_ctx: self.cache.n_ctx() });
        }
        let common = self.cached.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        // At least the last prompt token must run to produce logits.
        let keep = common.min(prompt.len() - 1);
        self.cache.truncate(keep);
        self.cached.truncate(keep);
        self.feed(&prompt[keep..])
    }

    /// Runs `tokens` after what the cache holds; returns the logits after the last one.
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, GenerationError> {
        let model = &self.rt.model;
        let cache = &mut self.cache;
        let hidden = self.rt.pool.install(|| model.forward(tokens, cache))?;
        self.cached.extend_from_slice(tokens);
        let last = &hidden[hidden.len() - model.cfg.n_embd..];
        Ok(self.rt.pool.install(|| model.logits(last))?)
    }

    /// Continues `prompt` for at most `max_tokens` tokens, calling `on_text` with each
    /// piece of text as soon as it forms complete UTF-8.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        sampler: &mut Sampler,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation, GenerationError> {
        let tok = &self.rt.tokenizer;
        let t0 = Instant::now();
        let mut logits = self.prefill(prompt)?;
        let mut timings = Timings { prompt_tokens: prompt.len(), prompt_ms: ms(t0.elapsed()), ..Timings::default() };

        let t1 = Instant::now();
        let mut ids = Vec::new();
        let mut text = Utf8Stream::default();
        let mut out = String::new();
        let mut history: Vec<u32> = prompt.to_vec();
        let stop = loop {
            if ids.len() >= max_tokens {
                break StopReason::MaxTokens;
            }
            let id = sampler.sample(&mut logits, &history);
            if tok.is_end_of_generation(id) {
                break StopReason::EndOfGeneration;
            }
            ids.push(id);
            history.push(id);
            let piece = text.push(tok.token_bytes(id)?);
            if !piece.is_empty() {
                on_text(&piece);
                out.push_str(&piece);
            }
            if ids.len() >= max_tokens {
                break StopReason::MaxTokens;
            }
            if self.cached.len() >= self.cache.n_ctx() {
                break StopReason::ContextFull;
            }
            logits = self.feed(&[id])?;
        };
        let tail = text.finish();
        if !tail.is_empty() {
            on_text(&tail);
            out.push_str(&tail);
        }
        timings.generated_tokens = ids.len();
        timings.generation_ms = ms(t1.elapsed());
        Ok(Generation { ids, text: out, stop, timings })
    }
}

/// Turns a stream of byte pieces into text, holding back an incomplete UTF-8 sequence
/// until its remaining bytes arrive (a token can end mid-character).
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).expect("validated prefix"));
                    match e.error_len() {
                        // Incomplete sequence at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::Utf8Stream;

    #[test]
    fn split_characters_are_held_back_until_complete() {
        let mut s = Utf8Stream::default();
        let bytes = "é🦙".as_bytes();
        assert_eq!(s.push(&bytes[..1]), "");
        assert_eq!(s.push(&bytes[1..3]), "é");
        assert_eq!(s.push(&bytes[3..5]), "");
        assert_eq!(s.push(&bytes[5..]), "🦙");
        assert_eq!(s.push(&[0xFF, b'a']), "\u{FFFD}a");
        assert_eq!(s.push(&[0xF0]), "");
        assert_eq!(s.finish(), "\u{FFFD}");
    }
}
