//! One conversation or completion stream over a KV cache.
//!
//! The session remembers which tokens its cache holds. A new prompt that starts with
//! them (the next chat turn re-rendered from the template, say) only runs the new
//! suffix; anything after the first difference is recomputed.
//!
//! With a drafter ([`Session::speculate`]: prompt lookup or a draft model, see
//! [`draft`](super::draft)) decoding is speculative: drafted tokens run through the model
//! together with the token just chosen, in one pass that reads the weights once, and each
//! is kept only if the sampler, given that pass's logits, chooses it. The pass computes every token
//! with decode's own arithmetic ([`Batching::AsDecode`]) and the sampler draws once per
//! kept token, as plain decoding does, so the text is exactly what plain decoding
//! produces with the same settings and seed; it only arrives sooner.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::draft::Drafter;
use super::{Runtime, Sampler, TokenLogprob};
use crate::kernels::Batching;
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
    #[error("the draft model's vocabulary differs from the model's: its tokens cannot be verified")]
    DraftVocabulary,
    #[error("speculative decoding runs on the CPU only: the {0} backend's batched kernels round differently from its single-token ones, so drafts could change the text")]
    SpeculationOnDevice(crate::model::Device),
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
    /// Tokens drafted for speculative decoding, and how many of them were kept.
    pub drafted_tokens: usize,
    pub accepted_tokens: usize,
}

impl Timings {
    pub fn prompt_tps(&self) -> f64 {
        per_second(self.prompt_tokens, self.prompt_ms)
    }
    pub fn generation_tps(&self) -> f64 {
        per_second(self.generated_tokens, self.generation_ms)
    }
    /// The share of drafted tokens kept (0 when none were drafted).
    pub fn acceptance(&self) -> f64 {
        self.accepted_tokens as f64 / self.drafted_tokens.max(1) as f64
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
    /// Each generated token's log-probability and alternatives, when the session records
    /// them ([`Session::record_logprobs`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<TokenLogprob>,
}

pub struct Session<'r> {
    rt: &'r Runtime,
    cache: KvCache,
    /// Tokens whose keys and values are in `cache`, in order.
    cached: Vec<u32>,
    /// Where drafts come from, and the most tokens drafted per step (none: plain decoding).
    speculation: Option<(Drafter<'r>, usize)>,
    /// Record each generated token's log-probability and this many alternatives.
    logprobs: Option<usize>,
}

impl<'r> Session<'r> {
    /// A session with a context of `n_ctx` positions (clamped to the model's trained
    /// context).
    pub fn new(rt: &'r Runtime, n_ctx: usize) -> Result<Self, GenerationError> {
        Ok(Self { rt, cache: rt.model.new_cache(n_ctx)?, cached: Vec::new(), speculation: None, logprobs: None })
    }

    /// Decodes speculatively from now on, up to `draft_max` tokens drafted per step by
    /// `drafter` (`None`, or a `draft_max` of 0: plain decoding).
    pub fn speculate(&mut self, drafter: Option<Drafter<'r>>, draft_max: usize) -> Result<(), GenerationError> {
        let device = self.rt.model.device();
        if drafter.is_some() && draft_max > 0 && !device.is_cpu() {
            return Err(GenerationError::SpeculationOnDevice(device));
        }
        self.speculation = drafter.filter(|_| draft_max > 0).map(|d| (d, draft_max));
        Ok(())
    }

    pub fn n_ctx(&self) -> usize {
        self.cache.n_ctx()
    }

    /// From now on, [`Generation::logprobs`] holds each generated token's log-probability
    /// under the model and its `top` most likely alternatives (`None`: not recorded).
    pub fn record_logprobs(&mut self, top: Option<usize>) {
        self.logprobs = top;
    }

    /// The model this session runs.
    pub fn runtime(&self) -> &'r Runtime {
        self.rt
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

    /// Runs `tokens` after what the cache holds, each with decode's arithmetic; returns
    /// the logits after every one of them (`tokens.len() × n_vocab`).
    fn feed_as_decode(&mut self, tokens: &[u32]) -> Result<Vec<f32>, GenerationError> {
        let model = &self.rt.model;
        let cache = &mut self.cache;
        let logits = self.rt.pool.install(|| {
            let hidden = model.forward_with(tokens, cache, Batching::AsDecode)?;
            model.logits_with(hidden, Batching::AsDecode)
        })?;
        self.cached.extend_from_slice(tokens);
        Ok(logits)
    }

    /// Forgets the cached positions from `len` on.
    fn truncate(&mut self, len: usize) {
        self.cache.truncate(len);
        self.cached.truncate(len);
    }

    /// Continues `prompt` for at most `max_tokens` tokens, calling `on_text` with each
    /// piece of text as soon as it forms complete UTF-8.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        sampler: &mut Sampler,
        on_text: impl FnMut(&str),
    ) -> Result<Generation, GenerationError> {
        let t0 = Instant::now();
        let mut logits = self.prefill(prompt)?;
        let mut timings = Timings { prompt_tokens: prompt.len(), prompt_ms: ms(t0.elapsed()), ..Timings::default() };

        let t1 = Instant::now();
        let n_vocab = self.rt.model.cfg.n_vocab;
        let record = self.logprobs;
        let mut out = Output {
            history: prompt.to_vec(),
            ids: Vec::new(),
            logprobs: Vec::new(),
            text: Utf8Stream::default(),
            out: String::new(),
            on_text,
        };
        let mut draft = Vec::new();
        // Draft length adapts to how well drafts do: longer after a fully kept draft,
        // shorter after a miss (a missed token costs its share of the verifying pass).
        let draft_max = self.speculation.as_ref().map_or(0, |s| s.1);
        let mut draft_len = draft_max.min(4);
        // A token the sampler chose while checking a draft, not yet emitted.
        let mut chosen: Option<(u32, Option<TokenLogprob>)> = None;
        let stop = 'decode: loop {
            if out.ids.len() >= max_tokens {
                break StopReason::MaxTokens;
            }
            let (id, logprob) = match chosen.take() {
                Some(picked) => picked,
                None => sampler.sample_noting(&mut logits, &out.history, record),
            };
            if let Some(stop) = out.emit(self.rt, id, logprob, max_tokens)? {
                break stop;
            }
            if self.cached.len() >= self.cache.n_ctx() {
                break StopReason::ContextFull;
            }
            // Room for the draft: within the token budget, and in the context after `id`.
            let room = (max_tokens - out.ids.len()).min(self.cache.n_ctx() - self.cached.len() - 1);
            draft.clear();
            if let Some((drafter, _)) = &mut self.speculation {
                drafter.draft(&out.history, draft_len.min(room), &mut draft)?;
            }
            if draft.is_empty() {
                logits = self.feed(&[id])?;
                continue;
            }
            let base = self.cached.len();
            let mut batch = Vec::with_capacity(draft.len() + 1);
            batch.push(id);
            batch.extend_from_slice(&draft);
            let mut all = self.feed_as_decode(&batch)?;
            timings.drafted_tokens += draft.len();
            // Keep drafted tokens while the sampler, at each, picks the token drafted.
            let mut kept = 0;
            for (&guess, row) in draft.iter().zip(all.chunks_exact_mut(n_vocab)) {
                let (id, logprob) = sampler.sample_noting(row, &out.history, record);
                if id != guess {
                    chosen = Some((id, logprob));
                    break;
                }
                timings.accepted_tokens += 1;
                if let Some(stop) = out.emit(self.rt, id, logprob, max_tokens)? {
                    self.truncate(base + 1 + kept);
                    break 'decode stop;
                }
                kept += 1;
            }
            self.truncate(base + 1 + kept);
            if kept == draft.len() {
                logits = all.split_off(kept * n_vocab);
                draft_len = (draft_len + 2).min(draft_max);
            } else {
                draft_len = draft_len.saturating_sub(1).max(1);
            }
        };
        let tail = out.text.finish();
        out.piece(tail);
        timings.generated_tokens = out.ids.len();
        timings.generation_ms = ms(t1.elapsed());
        Ok(Generation { ids: out.ids, text: out.out, stop, timings, logprobs: out.logprobs })
    }
}

/// What generation has produced so far, and where its text goes.
struct Output<F> {
    /// The prompt and the tokens generated: what the sampler's penalty and the drafter see.
    history: Vec<u32>,
    ids: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    text: Utf8Stream,
    out: String,
    on_text: F,
}

impl<F: FnMut(&str)> Output<F> {
    /// Takes the chosen token `id`; says why generation stops if it does.
    fn emit(
        &mut self,
        rt: &Runtime,
        id: u32,
        logprob: Option<TokenLogprob>,
        max_tokens: usize,
    ) -> Result<Option<StopReason>, GenerationError> {
        if rt.tokenizer.is_end_of_generation(id) {
            return Ok(Some(StopReason::EndOfGeneration));
        }
        self.ids.push(id);
        self.logprobs.extend(logprob);
        self.history.push(id);
        let piece = self.text.push(rt.tokenizer.token_bytes(id)?);
        self.piece(piece);
        Ok((self.ids.len() >= max_tokens).then_some(StopReason::MaxTokens))
    }

    fn piece(&mut self, piece: String) {
        if !piece.is_empty() {
            (self.on_text)(&piece);
            self.out.push_str(&piece);
        }
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
