//! Speed measurements in llama-bench's manner: prompt processing (`ppN`: one batch of N
//! tokens) and text generation (`tgN`: N single-token steps), optionally after `d`
//! positions already in the cache (`@ dD`), on fixed random token ids after a warm-up, so
//! tokenization and sampling are excluded. Logits are computed for the last position of
//! every decode call, as llama.cpp does. A `tg` test may decode several sequences
//! together (`tgN xS`: each step one pass over one new token of each of S sequences, each
//! with its own cache, as `pupil serve` runs concurrent requests; llama-batched-bench's
//! measure); its rate counts the tokens of all of them.

use std::time::Instant;

use serde::Serialize;

use crate::generate::{GenerationError, Runtime};
use crate::kernels::Batching;
use crate::model::{BatchItem, KvCache};
use crate::rng::Rng;

/// One test: `n_prompt` tokens in one batch, or `n_gen` single-token steps of each of
/// `sequences` sequences, after `depth` cached positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SpeedTest {
    pub n_prompt: usize,
    pub n_gen: usize,
    pub depth: usize,
    pub sequences: usize,
}

impl SpeedTest {
    /// llama-bench's name: `pp512`, `tg128`, `tg128 @ d512`; `tg128 x4` for four sequences.
    pub fn name(&self) -> String {
        let base = match (self.n_prompt, self.sequences) {
            (0, 1) => format!("tg{}", self.n_gen),
            (0, s) => format!("tg{} x{s}", self.n_gen),
            (p, _) => format!("pp{p}"),
        };
        if self.depth > 0 {
            format!("{base} @ d{}", self.depth)
        } else {
            base
        }
    }

    fn tokens(&self) -> usize {
        self.n_prompt + self.n_gen * self.sequences
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
    let needed = test.depth + test.n_prompt + test.n_gen;
    let mut caches =
        (0..test.sequences.max(1)).map(|_| model.new_cache(needed.max(1))).collect::<Result<Vec<_>, _>>()?;
    if caches[0].n_ctx() < needed {
        return Err(GenerationError::PromptTooLong { prompt: needed, n_ctx: caches[0].n_ctx() });
    }
    let depth_ids = random_ids(test.depth);
    let prompt = random_ids(test.n_prompt);
    // Step i's token of sequence s: `steps[i * sequences + s]`.
    let steps = random_ids(test.n_gen * caches.len());
    let e = model.cfg.n_embd;

    let once = |caches: &mut [KvCache]| -> Result<u64, GenerationError> {
        for cache in caches.iter_mut() {
            cache.clear();
            if !depth_ids.is_empty() {
                rt.pool.install(|| model.forward(&depth_ids, cache))?;
            }
        }
        let start = Instant::now();
        rt.pool.install(|| -> Result<(), GenerationError> {
            if let [cache] = caches {
                if !prompt.is_empty() {
                    let h = model.forward(&prompt, cache)?;
                    std::hint::black_box(model.logits(&h[h.len() - e..])?);
                }
                for &id in &steps {
                    let h = model.forward(&[id], cache)?;
                    std::hint::black_box(model.logits(h)?);
                }
                return Ok(());
            }
            for step in steps.chunks_exact(caches.len()) {
                let mut items: Vec<BatchItem> = caches
                    .iter_mut()
                    .zip(step.chunks_exact(1))
                    .map(|(cache, id)| BatchItem { tokens: id, cache, lora_scales: None })
                    .collect();
                let h = model.forward_batch(&mut items, Batching::AsDecode)?;
                std::hint::black_box(model.logits_with(h, Batching::AsDecode)?);
            }
            Ok(())
        })?;
        Ok(start.elapsed().as_nanos() as u64)
    };
    once(&mut caches)?; // warm-up: page the weights in, size the buffers
    let samples_ns = (0..repetitions.max(1)).map(|_| once(&mut caches)).collect::<Result<_, _>>()?;
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
