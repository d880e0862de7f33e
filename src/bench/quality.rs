//! Perplexity by llama-perplexity's method, so numbers compare with llama.cpp's: the text
//! is tokenized once (with BOS where the model asks for it), cut into non-overlapping
//! chunks of `n_ctx` tokens, each chunk starts with BOS where the model uses one, and only
//! the second half of each chunk is scored (every scored token has at least `n_ctx/2`
//! tokens of context).
//!
//! Bits per byte — the total negative log-likelihood in bits over the UTF-8 bytes of the
//! scored tokens — is reported beside it: unlike per-token perplexity it compares models
//! with different tokenizers.

use serde::Serialize;

use crate::generate::{GenerationError, Runtime};

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

/// Logit rows computed at once: bounds the transient buffer (rows × n_vocab f32).
const LOGIT_ROWS: usize = 32;

/// Scores `text` in chunks of `n_ctx` tokens (at most `max_chunks` of them), calling
/// `on_chunk(done, total, running_ppl)` after each.
pub fn perplexity(
    rt: &Runtime,
    text: &str,
    n_ctx: usize,
    max_chunks: Option<usize>,
    mut on_chunk: impl FnMut(usize, usize, f64),
) -> Result<PerplexityResult, GenerationError> {
    let tok = &rt.tokenizer;
    let model = &rt.model;
    let n_ctx = n_ctx.min(model.cfg.n_ctx_train);
    if n_ctx < 4 {
        return Err(GenerationError::ChunkTooSmall(n_ctx));
    }
    let tokens = tok.encode_prompt(text, false)?;
    let available = tokens.len() / n_ctx;
    if available == 0 {
        return Err(GenerationError::TextTooShort { tokens: tokens.len(), n_ctx });
    }
    let chunks = max_chunks.map_or(available, |m| m.min(available));
    let bos = tok.bos().filter(|_| tok.add_bos());
    let first = n_ctx / 2;
    let n_vocab = model.cfg.n_vocab;

    let (mut nll_sum, mut nll2_sum, mut count, mut bytes) = (0f64, 0f64, 0usize, 0usize);
    let mut cache = model.new_cache(n_ctx)?;
    for c in 0..chunks {
        let mut batch = tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
        if let Some(bos) = bos {
            batch[0] = bos;
        }
        cache.clear();
        let hidden = rt.pool.install(|| model.forward(&batch, &mut cache))?;
        let e = model.cfg.n_embd;
        // Position j predicts token j + 1; score j in [first, n_ctx - 1).
        for start in (first..n_ctx - 1).step_by(LOGIT_ROWS) {
            let end = (start + LOGIT_ROWS).min(n_ctx - 1);
            let logits = rt.pool.install(|| model.logits(&hidden[start * e..end * e]));
            for (row, j) in logits.chunks_exact(n_vocab).zip(start..end) {
                let target = tokens[c * n_ctx + j + 1];
                let nll = log_sum_exp(row) - row[target as usize] as f64;
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

/// `log Σ exp(x)`, computed stably in f64.
pub fn log_sum_exp(x: &[f32]) -> f64 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}
