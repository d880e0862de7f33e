//! AdamW with a linear warm-up and cosine decay, and gradient clipping by global norm.

use serde::{Deserialize, Serialize};

/// Optimizer settings; defaults as Hugging Face's Trainer uses for LoRA.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    /// Peak learning rate. Default 2e-4.
    pub lr: f32,
    /// Decoupled weight decay. Default 0.
    pub weight_decay: f32,
    /// Default 0.9.
    pub beta1: f32,
    /// Default 0.999.
    pub beta2: f32,
    /// Default 1e-8.
    pub eps: f32,
    /// Steps of linear warm-up from 0. Default 0.
    pub warmup_steps: usize,
    /// Clip the gradient's global L2 norm to this (0: off). Default 1.
    pub clip_norm: f32,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self { lr: 2e-4, weight_decay: 0.0, beta1: 0.9, beta2: 0.999, eps: 1e-8, warmup_steps: 0, clip_norm: 1.0 }
    }
}

/// The learning rate at `step` (0-based) of `total`: linear warm-up, then cosine to 0.
pub fn learning_rate(cfg: &OptimConfig, step: usize, total: usize) -> f32 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f32 / cfg.warmup_steps as f32;
    }
    let decay_steps = total.saturating_sub(cfg.warmup_steps).max(1);
    let progress = ((step - cfg.warmup_steps) as f64 / decay_steps as f64).min(1.0);
    (cfg.lr as f64 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
}

/// AdamW moments; `t` counts updates taken.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub t: u64,
}

impl AdamW {
    pub fn new(n: usize) -> Self {
        Self { m: vec![0.0; n], v: vec![0.0; n], t: 0 }
    }

    /// Clips `grads` in place to `cfg.clip_norm` and applies one update with rate `lr`.
    /// Returns the gradient norm before clipping.
    pub fn step(&mut self, cfg: &OptimConfig, lr: f32, params: &mut [f32], grads: &mut [f32]) -> f32 {
        let norm = grads.iter().map(|&g| g as f64 * g as f64).sum::<f64>().sqrt() as f32;
        if cfg.clip_norm > 0.0 && norm > cfg.clip_norm {
            let s = cfg.clip_norm / norm;
            grads.iter_mut().for_each(|g| *g *= s);
        }
        self.t += 1;
        let bc1 = 1.0 - (cfg.beta1 as f64).powi(self.t as i32);
        let bc2 = 1.0 - (cfg.beta2 as f64).powi(self.t as i32);
        let step = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        for (((p, &g), m), v) in params.iter_mut().zip(grads.iter()).zip(&mut self.m).zip(&mut self.v) {
            *m = cfg.beta1 * *m + (1.0 - cfg.beta1) * g;
            *v = cfg.beta2 * *v + (1.0 - cfg.beta2) * g * g;
            *p -= lr * cfg.weight_decay * *p;
            *p -= step * *m / (v.sqrt() / bc2_sqrt + cfg.eps);
        }
        norm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let cfg = OptimConfig { lr: 1.0, warmup_steps: 4, ..OptimConfig::default() };
        assert_eq!(learning_rate(&cfg, 0, 20), 0.25);
        assert_eq!(learning_rate(&cfg, 3, 20), 1.0);
        assert_eq!(learning_rate(&cfg, 4, 20), 1.0);
        assert!((learning_rate(&cfg, 12, 20) - 0.5).abs() < 1e-6);
        assert!(learning_rate(&cfg, 20, 20).abs() < 1e-6);
    }

    #[test]
    fn adamw_minimises_a_quadratic_and_clips() {
        let cfg = OptimConfig { lr: 0.1, clip_norm: 0.5, ..OptimConfig::default() };
        let mut p = vec![3.0f32, -2.0];
        let mut opt = AdamW::new(2);
        for _ in 0..300 {
            let mut g: Vec<f32> = p.iter().map(|x| 2.0 * x).collect();
            opt.step(&cfg, 0.1, &mut p, &mut g);
            assert!(g.iter().map(|x| x * x).sum::<f32>().sqrt() <= 0.5 + 1e-6);
        }
        assert!(p.iter().all(|x| x.abs() < 0.05), "{p:?}");
    }
}
