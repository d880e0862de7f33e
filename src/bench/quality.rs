//! Perplexity by llama-perplexity's method, so numbers compare with llama.cpp's: the text
//! is tokenized once (with BOS where the model asks for it), cut into non-overlapping
//! chunks of `n_ctx` tokens, each chunk starts with BOS where the model uses one, and only
//! the second half of each chunk is scored (every scored token has at least `n_ctx/2`
//! tokens of context).
//!
//! KL divergence against a reference model of the same vocabulary (e.g. a requantized file
//! against the original) runs both models side by side on the same chunks.
//!
//! Bits per byte — the total negative log-likelihood in bits over the UTF-8 bytes of the
//! scored tokens — is reported beside it: unlike per-token perplexity it compares models
//! with different tokenizers.

use serde::Serialize;

use crate::generate::sampler::{argmax, log_sum_exp};
use crate::generate::{GenerationError, Runtime};
use crate::model::LOGIT_ROWS;
use crate::train::loss::full_kl;

#[derive(Debug, Clone, Serialize)]
pub struct PerplexityResult {
    pub ppl: f64,
    /// Standard error of the perplexity estimate (llama.cpp's "±").
    pub ppl_err: f64,
    pub bits_per_byte: f64,
    pub chunks: usize,
    pub n_ctx: usize,
    pub scored_tokens: usize,
    pub scored_bytes: usize,
    /// Total negative log-likelihood of the scored tokens, in nats.
    pub nll_sum: f64,
}

/// The text cut as llama-perplexity cuts it.
struct Chunks {
    tokens: Vec<u32>,
    n_ctx: usize,
    chunks: usize,
    bos: Option<u32>,
}

impl Chunks {
    fn new(rt: &Runtime, text: &str, n_ctx: usize, max_chunks: Option<usize>) -> Result<Self, GenerationError> {
        if n_ctx < 4 {
            return Err(GenerationError::ChunkTooSmall(n_ctx));
        }
        let tok = &rt.tokenizer;
        let tokens = tok.encode_prompt(text, false)?;
        let available = tokens.len() / n_ctx;
        if available == 0 {
            return Err(GenerationError::TextTooShort { tokens: tokens.len(), n_ctx });
        }
        let chunks = max_chunks.map_or(available, |m| m.min(available));
        Ok(Self { tokens, n_ctx, chunks, bos: tok.bos().filter(|_| tok.add_bos()) })
    }

    /// Chunk `c`, starting with BOS where the model uses one.
    fn batch(&self, c: usize) -> Vec<u32> {
        let mut batch = self.tokens[c * self.n_ctx..(c + 1) * self.n_ctx].to_vec();
        if let Some(bos) = self.bos {
            batch[0] = bos;
        }
        batch
    }
}

/// Scores `text` in chunks of `n_ctx` tokens (at most `max_chunks` of them), calling
/// `on_chunk(done, total, running_ppl)` after each.
pub fn perplexity(
    rt: &Runtime,
    text: &str,
    n_ctx: usize,
    max_chunks: Option<usize>,
    mut on_chunk: impl FnMut(usize, usize, f64),
) -> Result<PerplexityResult, GenerationError> {
    refuse_synthetic(rt)?;
    let tok = &rt.tokenizer;
    let model = &rt.model;
    let ch = Chunks::new(rt, text, n_ctx.min(model.cfg.n_ctx_train), max_chunks)?;
    let (n_ctx, chunks, first) = (ch.n_ctx, ch.chunks, ch.n_ctx / 2);
    let tokens = &ch.tokens;
    let n_vocab = model.cfg.n_vocab;

    let (mut nll_sum, mut nll2_sum, mut count, mut bytes) = (0f64, 0f64, 0usize, 0usize);
    let mut cache = model.new_cache(n_ctx)?;
    for c in 0..chunks {
        let batch = ch.batch(c);
        cache.clear();
        let hidden = rt.pool.install(|| model.forward(&batch, &mut cache))?;
        let e = model.cfg.n_embd;
        // Position j predicts token j + 1; score j in [first, n_ctx - 1).
        for start in (first..n_ctx - 1).step_by(LOGIT_ROWS) {
            let end = (start + LOGIT_ROWS).min(n_ctx - 1);
            let logits = rt.pool.install(|| model.logits(&hidden[start * e..end * e]))?;
            for (row, j) in logits.chunks_exact(n_vocab).zip(start..end) {
                let target = tokens[c * n_ctx + j + 1];
                let nll = log_sum_exp(row, 1.0) - row[target as usize] as f64;
                nll_sum += nll;
                nll2_sum += nll * nll;
                count += 1;
                bytes += tok.token_bytes(target)?.len();
            }
        }
        on_chunk(c + 1, chunks, (nll_sum / count as f64).exp());
    }
    let mean = nll_sum / count as f64;
    let var = (nll2_sum / count as f64 - mean * mean).max(0.0);
    let ppl = mean.exp();
    let ppl_err = if count > 1 { (var / (count - 1) as f64).sqrt() * ppl } else { 0.0 };
    Ok(PerplexityResult {
        ppl,
        ppl_err,
        bits_per_byte: nll_sum / std::f64::consts::LN_2 / bytes.max(1) as f64,
        chunks,
        n_ctx,
        scored_tokens: count,
        scored_bytes: bytes,
        nll_sum,
    })
}

/// How far a model's next-token distributions are from a reference model's on the same
/// text, like llama-perplexity's `--kl-divergence`, but with both models run side by side
/// instead of through a saved logits file.
#[derive(Debug, Clone, Serialize)]
pub struct KldResult {
    /// Mean KL(reference ‖ model) per scored token, in nats.
    pub mean_kld: f64,
    /// Standard error of the mean.
    pub kld_err: f64,
    /// Largest single-position KL.
    pub max_kld: f64,
    /// Fraction of positions where both models' most likely token agree ("same top p").
    pub same_top: f64,
    pub scored_tokens: usize,
    pub chunks: usize,
    pub n_ctx: usize,
}

/// Refuses files whose outputs mean nothing.
pub fn refuse_synthetic(rt: &Runtime) -> Result<(), GenerationError> {
    if rt.file.get_bool("general.synthetic").ok().flatten() == Some(true) {
        return Err(GenerationError::Synthetic(rt.file.path().display().to_string()));
    }
    Ok(())
}

/// Scores `text` by llama-perplexity's chunking (see [`perplexity`]) with `model` and
/// `reference` (same vocabulary required) and compares their distributions at every
/// scored position.
pub fn kl_divergence(
    model: &Runtime,
    reference: &Runtime,
    text: &str,
    n_ctx: usize,
    max_chunks: Option<usize>,
    mut on_chunk: impl FnMut(usize, usize, f64),
) -> Result<KldResult, GenerationError> {
    refuse_synthetic(model)?;
    refuse_synthetic(reference)?;
    if model.tokenizer.fingerprint() != reference.tokenizer.fingerprint() {
        return Err(GenerationError::VocabularyMismatch);
    }
    let n_ctx = n_ctx.min(model.model.cfg.n_ctx_train).min(reference.model.cfg.n_ctx_train);
    let ch = Chunks::new(model, text, n_ctx, max_chunks)?;
    let (chunks, first) = (ch.chunks, n_ctx / 2);
    let n_vocab = model.model.cfg.n_vocab;
    let (mut sum, mut sum2, mut max, mut same, mut n) = (0f64, 0f64, 0f64, 0usize, 0usize);
    let hidden = |rt: &Runtime, batch: &[u32]| -> Result<Vec<f32>, GenerationError> {
        let mut cache = rt.model.new_cache(n_ctx)?;
        Ok(rt.pool.install(|| rt.model.forward(batch, &mut cache).map(<[f32]>::to_vec))?)
    };
    for c in 0..chunks {
        let batch = ch.batch(c);
        let (hm, hr) = (hidden(model, &batch)?, hidden(reference, &batch)?);
        let (em, er) = (model.model.cfg.n_embd, reference.model.cfg.n_embd);
        for start in (first..n_ctx - 1).step_by(LOGIT_ROWS) {
            let end = (start + LOGIT_ROWS).min(n_ctx - 1);
            let lm = model.pool.install(|| model.model.logits(&hm[start * em..end * em]))?;
            let lr = reference.pool.install(|| reference.model.logits(&hr[start * er..end * er]))?;
            for (rm, rr) in lm.chunks_exact(n_vocab).zip(lr.chunks_exact(n_vocab)) {
                let kl = full_kl(rr, rm).max(0.0);
                sum += kl;
                sum2 += kl * kl;
                max = max.max(kl);
                same += (argmax(rm) == argmax(rr)) as usize;
                n += 1;
            }
        }
        on_chunk(c + 1, chunks, sum / n as f64);
    }
    let mean = sum / n as f64;
    let var = (sum2 / n as f64 - mean * mean).max(0.0);
    Ok(KldResult {
        mean_kld: mean,
        kld_err: if n > 1 { (var / (n - 1) as f64).sqrt() } else { 0.0 },
        max_kld: max,
        same_top: same as f64 / n as f64,
        scored_tokens: n,
        chunks,
        n_ctx,
    })
}
