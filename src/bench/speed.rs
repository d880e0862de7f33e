//! Speed measurements in llama-bench's manner: prompt processing (`ppN`: one batch of N
//! tokens) and text generation (`tgN`: N single-token steps), optionally after `d`
//! positions already in the cache (`@ dD`), on fixed random token ids after a warm-up, so
//! tokenization and sampling are excluded. Logits are computed for the last position of
//! every decode call, as llama.cpp does.

use std::time::Instant;

use serde::Serialize;

use crate::generate::{GenerationError, Runtime};
use crate::rng::Rng;

/// One test: `n_prompt` tokens in one batch, or `n_gen` single-token steps, after `depth`
/// cached positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SpeedTest {
    pub n_prompt: usize,
    pub n_gen: usize,
    pub depth: usize,
}

impl SpeedTest {
    /// llama-bench's name: `pp512`, `tg128`, `tg128 @ d512`.
    pub fn name(&self) -> String {
        let base = if self.n_prompt > 0 { format!("pp{}", self.n_prompt) } else { format!("tg{}", self.n_gen) };
        if self.depth > 0 {
            format!("{base} @ d{}", self.depth)
        } else {
            base
        }
    }

    fn tokens(&self) -> usize {
        self.n_prompt + self.n_gen
    }
}

/// Timings of the repetitions of one test.
#[derive(Debug, Clone, Serialize)]
pub struct SpeedResult {
    pub test: SpeedTest,
    pub samples_ns: Vec<u64>,
}

impl SpeedResult {
    /// Tokens per second of each repetition.
    pub fn rates(&self) -> Vec<f64> {
        self.samples_ns.iter().map(|&ns| self.test.tokens() as f64 * 1e9 / ns.max(1) as f64).collect()
    }

    pub fn mean_tps(&self) -> f64 {
        let r = self.rates();
        r.iter().sum::<f64>() / r.len().max(1) as f64
    }

    pub fn stddev_tps(&self) -> f64 {
        let r = self.rates();
        if r.len() < 2 {
            return 0.0;
        }
        let m = self.mean_tps();
        (r.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (r.len() - 1) as f64).sqrt()
    }

    pub fn median_tps(&self) -> f64 {
        let mut r = self.rates();
        r.sort_by(f64::total_cmp);
        match r.len() {
            0 => 0.0,
            n if n % 2 == 1 => r[n / 2],
            n => (r[n / 2 - 1] + r[n / 2]) / 2.0,
        }
    }
}

/// Runs `test` `repetitions` times (after one warm-up run) on random token ids.
pub fn run(rt: &Runtime, test: SpeedTest, repetitions: usize, seed: u64) -> Result<SpeedResult, GenerationError> {
    let model = &rt.model;
    let n_vocab = model.cfg.n_vocab as u64;
    let mut rng = Rng::new(seed);
    let mut random_ids = |n: usize| -> Vec<u32> { (0..n).map(|_| (rng.next_u64() % n_vocab) as u32).collect() };
    let needed = test.depth + test.tokens();
    let mut cache = model.new_cache(needed.max(1))?;
    if cache.n_ctx() < needed {
        return Err(GenerationError::PromptTooLong { prompt: needed, n_ctx: cache.n_ctx() });
    }
    let depth_ids = random_ids(test.depth);
    let prompt = random_ids(test.n_prompt);
    let steps = random_ids(test.n_gen);
    let e = model.cfg.n_embd;

    let once = |cache: &mut crate::model::KvCache| -> Result<u64, GenerationError> {
        cache.clear();
        if !depth_ids.is_empty() {
            rt.pool.install(|| model.forward(&depth_ids, cache))?;
        }
        let start = Instant::now();
        rt.pool.install(|| -> Result<(), GenerationError> {
            if !prompt.is_empty() {
                let h = model.forward(&prompt, cache)?;
                std::hint::black_box(model.logits(&h[h.len() - e..])?);
            }
            for &id in &steps {
                let h = model.forward(&[id], cache)?;
                std::hint::black_box(model.logits(h)?);
            }
            Ok(())
        })?;
        Ok(start.elapsed().as_nanos() as u64)
    };
    once(&mut cache)?; // warm-up: page the weights in, size the buffers
    let samples_ns = (0..repetitions.max(1)).map(|_| once(&mut cache)).collect::<Result<_, _>>()?;
    Ok(SpeedResult { test, samples_ns })
}

/// Time from opening the file to the first generated token (one-token prompt, greedy).
pub fn load_to_first_token(
    path: &std::path::Path,
    threads: usize,
    device: crate::model::Device,
    layout: crate::generate::WeightLayout,
) -> Result<(f64, Runtime), crate::generate::LoadError> {
    let start = Instant::now();
    let rt = Runtime::load_path_on(path, threads, device, layout)?;
    let first = rt.tokenizer.bos().unwrap_or(0);
    let mut cache = rt.model.new_cache(8).map_err(crate::generate::LoadError::Model)?;
    let h = rt.pool.install(|| rt.model.forward(&[first], &mut cache)).map_err(crate::generate::LoadError::Model)?;
    let logits = rt.pool.install(|| rt.model.logits(h)).map_err(crate::generate::LoadError::Model)?;
    std::hint::black_box(crate::generate::sampler::argmax(&logits));
    Ok((start.elapsed().as_secs_f64() * 1000.0, rt))
}
