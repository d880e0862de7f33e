//! Choosing the next token from logits, with llama.cpp's knobs, defaults and order:
//! repetition penalty → top-k → top-p → min-p → temperature → draw.

use super::Rng;

/// Sampling settings; the defaults are llama.cpp's.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; 0 means greedy (argmax). Default 0.8.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: all). Default 40.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability sums to `top_p` (1.0: off).
    /// Default 0.95.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one (0.0: off). Default 0.05.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens by this
    /// (1.0: off). Default 1.0.
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at. Default 64.
    pub repeat_last_n: usize,
    /// Seed of the random draw; the same seed gives the same output. Default: from the
    /// clock.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: Rng::entropy_seed(),
        }
    }
}

impl SamplerConfig {
    /// Argmax decoding, as the reference fixtures use.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }
}

pub struct Sampler {
    cfg: SamplerConfig,
    rng: Rng,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Self {
        Self { rng: Rng::new(cfg.seed), cfg, candidates: Vec::new() }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// [`Sampler::sample`], and with `top: Some(n)` the chosen token's [`TokenLogprob`]
    /// (`n` alternatives) under `logits` as given: the raw distribution, before the
    /// penalty changes them (a copy is kept only when the penalty is on).
    pub fn sample_noting(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        top: Option<usize>,
    ) -> (u32, Option<TokenLogprob>) {
        let Some(n) = top else { return (self.sample(logits, history), None) };
        let penalized = self.cfg.repeat_penalty != 1.0 && self.cfg.repeat_last_n > 0;
        let raw = penalized.then(|| logits.to_vec());
        let id = self.sample(logits, history);
        (id, Some(TokenLogprob::new(raw.as_deref().unwrap_or(logits), id, n)))
    }

    /// Picks the next token from `logits` (modified in place by the penalty), given the
    /// tokens seen so far.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let cfg = &self.cfg;
        if cfg.repeat_penalty != 1.0 && cfg.repeat_last_n > 0 {
            let recent = &history[history.len().saturating_sub(cfg.repeat_last_n)..];
            let mut seen: Vec<u32> = recent.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / cfg.repeat_penalty } else { *l * cfg.repeat_penalty };
                }
            }
        }
        if cfg.temperature <= 0.0 {
            return argmax(logits);
        }

        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if cfg.top_k > 0 && cfg.top_k < c.len() {
            c.select_nth_unstable_by(cfg.top_k - 1, by_logit_desc);
            c.truncate(cfg.top_k);
        }
        c.sort_unstable_by(by_logit_desc);

        // Probabilities of the raw logits decide top-p and min-p (temperature comes last).
        let max = c[0].1;
        let weights: Vec<f32> = c.iter().map(|&(_, l)| (l - max).exp()).collect();
        let total: f32 = weights.iter().sum();
        let mut keep = c.len();
        if cfg.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, w) in weights.iter().enumerate() {
                cum += w / total;
                if cum >= cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if cfg.min_p > 0.0 {
            // weights[0] is 1.0 (the maximum), so this compares p_i / p_max.
            keep = keep.min(weights.iter().take_while(|&&w| w >= cfg.min_p).count().max(1));
        }
        c.truncate(keep);

        let inv_t = 1.0 / cfg.temperature;
        let probs: Vec<f64> = c.iter().map(|&(_, l)| (((l - max) * inv_t) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.next_f64() * total;
        for (&(id, _), p) in c.iter().zip(&probs) {
            r -= p;
            if r < 0.0 {
                return id;
            }
        }
        c[c.len() - 1].0
    }
}

/// One token's log-probability under the model's raw distribution (the log-softmax of
/// the logits, before any sampling setting), with the most likely alternatives: what
/// OpenAI's `logprobs` report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// (id, log-probability), most likely first, ties by id.
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprob {
    /// Token `id`'s log-probability under `logits` and the `n` most likely tokens'.
    pub fn new(logits: &[f32], id: u32, n: usize) -> Self {
        let lse = log_sum_exp(logits, 1.0);
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
        if n > 0 && n < order.len() {
            order.select_nth_unstable_by(n - 1, by_logit);
        }
        order.truncate(n);
        order.sort_unstable_by(by_logit);
        let lp = |i: u32| (logits[i as usize] as f64 - lse) as f32;
        Self { id, logprob: lp(id), top: order.into_iter().map(|i| (i, lp(i))).collect() }
    }
}

/// `log Σ exp(x / temperature)`, computed stably in f64.
pub fn log_sum_exp(x: &[f32], temperature: f64) -> f64 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 / temperature;
    max + x.iter().map(|&v| (v as f64 / temperature - max).exp()).sum::<f64>().ln()
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplerConfig {
        SamplerConfig { temperature, top_k, top_p, min_p, repeat_penalty: 1.0, repeat_last_n: 64, seed: 7 }
    }

    #[test]
    fn temperature_zero_is_argmax() {
        let mut s = Sampler::new(cfg(0.0, 40, 0.95, 0.05));
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0], &[]), 1);
    }

    #[test]
    fn top_k_one_is_argmax_at_any_temperature() {
        let mut s = Sampler::new(cfg(5.0, 1, 1.0, 0.0));
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0], &[]), 1);
        }
    }

    #[test]
    fn min_p_and_top_p_cut_the_tail() {
        // p ∝ [e^4, e^0, e^0, e^0]: min_p 0.1 keeps only token 0.
        let mut s = Sampler::new(cfg(1.0, 0, 1.0, 0.1));
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [4.0, 0.0, 0.0, 0.0], &[]), 0);
        }
        // top_p 0.5 with p0 ≈ 0.95 keeps only token 0.
        let mut s = Sampler::new(cfg(1.0, 0, 0.5, 0.0));
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [4.0, 0.0, 0.0, 0.0], &[]), 0);
        }
    }

    #[test]
    fn draws_follow_the_distribution_and_repeat_with_the_seed() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = [0.25, 0.75]
        let run = |seed| {
            let mut s = Sampler::new(SamplerConfig { seed, ..cfg(1.0, 0, 1.0, 0.0) });
            (0..4000).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        let a = run(3);
        assert_eq!(a, run(3));
        let ones = a.iter().filter(|&&t| t == 1).count() as f64 / a.len() as f64;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
    }

    #[test]
    fn token_logprobs_are_a_log_softmax_most_likely_first() {
        let d = TokenLogprob::new(&[0.0, 2.0, 1.0, -1.0], 3, 2);
        assert_eq!(d.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
        let total: f64 = [0.0f64, 2.0, 1.0, -1.0].iter().map(|l| l.exp()).sum();
        assert!((d.top[0].1 as f64 - (2.0 - total.ln())).abs() < 1e-6);
        assert!((d.logprob as f64 - (-1.0 - total.ln())).abs() < 1e-6);
    }

    #[test]
    fn noted_logprobs_are_of_the_logits_before_the_penalty() {
        let raw = [3.0f32, 2.0, -1.0];
        let mut s = Sampler::new(SamplerConfig { repeat_penalty: 2.0, ..cfg(0.0, 0, 1.0, 0.0) });
        let (id, lp) = s.sample_noting(&mut raw.clone(), &[0], Some(2));
        assert_eq!((id, lp), (1, Some(TokenLogprob::new(&raw, 1, 2))));
        let mut plain = Sampler::new(cfg(0.0, 0, 1.0, 0.0));
        assert_eq!(plain.sample_noting(&mut raw.clone(), &[0], Some(2)), (0, Some(TokenLogprob::new(&raw, 0, 2))));
        assert_eq!(plain.sample_noting(&mut raw.clone(), &[0], None), (0, None));
    }

    #[test]
    fn repeat_penalty_demotes_recent_tokens() {
        let mut s = Sampler::new(SamplerConfig { repeat_penalty: 2.0, ..cfg(0.0, 0, 1.0, 0.0) });
        let mut logits = [3.0, 2.0, -1.0];
        assert_eq!(s.sample(&mut logits, &[0]), 1);
        assert_eq!(logits, [1.5, 2.0, -1.0]);
    }
}
