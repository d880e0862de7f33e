//! The distillation loss at one position, and its gradient with respect to the student's
//! logits.
//!
//! Forward KL(teacher ‖ student) at temperature T (scaled by T², Hinton et al.) on the
//! stored sparse view of the teacher:
//! - top-k with the rest bucket: `Σ_S p_i log(p_i / q_i) + p_r log(p_r / q_r)`, where
//!   `q_r` is the student's mass outside the stored ids (summed directly, not as 1 − Σ);
//!   its gradient is `q_j − p_j` on stored ids and `q_j (1 − p_r / q_r)` elsewhere;
//! - sampled: `Σ_i (c_i / S)(log p_i − log q_i)`, an unbiased estimate of the KL (the
//!   teacher's log-probabilities of the drawn ids are stored); gradient `q_j − c_j / S`.
//!
//! Optionally mixed with hard-label cross-entropy on the next token (`hard_weight`).

use crate::generate::sampler::{argmax, log_sum_exp};
use crate::targets::Dist;

/// Loss settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossConfig {
    /// Softening temperature of the student (the targets were stored at theirs). Default 1.
    pub temperature: f32,
    /// Weight of hard-label cross-entropy; the KL gets `1 − hard_weight`. Default 0.
    pub hard_weight: f32,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self { temperature: 1.0, hard_weight: 0.0 }
    }
}

/// One position's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct PositionLoss {
    /// The objective: `(1 − w) · T² · KL + w · CE`.
    pub loss: f64,
    /// KL(teacher ‖ student) from the stored view (a lower bound of the full KL for
    /// top-k targets; an unbiased estimate for sampled ones).
    pub kl: f64,
    /// Whether the student's most likely token is the teacher's.
    pub top1_agrees: bool,
}

/// The teacher's most likely stored id.
pub fn teacher_top1(dist: &Dist) -> u32 {
    let (ids, lps) = (dist.ids(), dist.logprobs());
    let best = (0..ids.len()).max_by(|&a, &b| lps[a].total_cmp(&lps[b])).unwrap_or(0);
    ids.get(best).copied().unwrap_or(0)
}

/// Computes the loss at one position and writes `weight · ∂loss/∂logits` into `dlogits`.
/// `next` is the sequence's next token (for the hard-label term).
pub fn position_loss(
    logits: &[f32],
    dist: &Dist,
    next: Option<u32>,
    cfg: &LossConfig,
    weight: f32,
    dlogits: &mut [f32],
) -> PositionLoss {
    let t = cfg.temperature as f64;
    let hw = if next.is_some() { cfg.hard_weight as f64 } else { 0.0 };
    let lse = log_sum_exp(logits, t);
    let log_q = |j: usize| logits[j] as f64 / t - lse;
    // Student probabilities at temperature T, filled in as the base of the gradient.
    for (d, &z) in dlogits.iter_mut().zip(logits) {
        *d = (z as f64 / t - lse).exp() as f32;
    }
    let mut kl = 0f64;
    match dist {
        Dist::TopK { ids, logprobs, rest_logprob } => {
            let p: Vec<f64> = logprobs.iter().map(|&l| (l as f64).exp()).collect();
            let p_r = (*rest_logprob as f64).exp();
            let total = p.iter().sum::<f64>() + p_r;
            // q_r summed over the complement: 1 − Σ q_S would lose it to rounding.
            let q_r = (0..logits.len())
                .filter(|&j| !ids.contains(&(j as u32)))
                .map(|j| dlogits[j] as f64)
                .sum::<f64>()
                .max(1e-30);
            for (&i, &pi) in ids.iter().zip(&p) {
                let pi = pi / total;
                if pi > 0.0 {
                    kl += pi * (pi.ln() - log_q(i as usize));
                }
            }
            let p_r = p_r / total;
            if p_r > 0.0 {
                kl += p_r * (p_r.ln() - q_r.ln());
            }
            let ratio = (p_r / q_r) as f32;
            dlogits.iter_mut().for_each(|d| *d *= 1.0 - ratio);
            for (&i, &pi) in ids.iter().zip(&p) {
                let q = log_q(i as usize).exp();
                dlogits[i as usize] = (q - pi / total) as f32;
            }
        }
        Dist::Sampled { ids, counts, logprobs } => {
            let n: u32 = counts.iter().sum();
            for ((&i, &c), &l) in ids.iter().zip(counts).zip(logprobs) {
                let w = c as f64 / n as f64;
                kl += w * (l as f64 - log_q(i as usize));
                dlogits[i as usize] -= w as f32;
            }
        }
    }
    // d(T² · KL(z / T))/dz = T · (q − p).
    let soft = ((1.0 - hw) * t) as f32 * weight;
    dlogits.iter_mut().for_each(|d| *d *= soft);
    let mut loss = (1.0 - hw) * t * t * kl;
    if let (Some(next), true) = (next, hw > 0.0) {
        let lse1 = log_sum_exp(logits, 1.0);
        loss += hw * (lse1 - logits[next as usize] as f64);
        let hard = (hw as f32) * weight;
        for (d, &z) in dlogits.iter_mut().zip(logits) {
            *d += hard * (z as f64 - lse1).exp() as f32;
        }
        dlogits[next as usize] -= hard;
    }
    let student_top1 = argmax(logits);
    PositionLoss { loss, kl, top1_agrees: student_top1 == teacher_top1(dist) }
}

/// Exact KL(p ‖ q) between two full logit rows (both at temperature 1).
pub fn full_kl(teacher_logits: &[f32], student_logits: &[f32]) -> f64 {
    let (lp, lq) = (log_sum_exp(teacher_logits, 1.0), log_sum_exp(student_logits, 1.0));
    teacher_logits
        .iter()
        .zip(student_logits)
        .map(|(&a, &b)| {
            let log_p = a as f64 - lp;
            log_p.exp() * (log_p - (b as f64 - lq))
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn numeric_grad(logits: &[f32], f: impl Fn(&[f32]) -> f64) -> Vec<f64> {
        let h = 1e-2f32;
        (0..logits.len())
            .map(|j| {
                let mut up = logits.to_vec();
                up[j] += h;
                let mut down = logits.to_vec();
                down[j] -= h;
                (f(&up) - f(&down)) / (2.0 * h as f64)
            })
            .collect()
    }

    fn check(dist: &Dist, cfg: LossConfig) {
        let mut rng = Rng::new(8);
        let logits: Vec<f32> = (0..12).map(|_| (rng.next_f64() * 4.0 - 2.0) as f32).collect();
        let mut d = vec![0f32; logits.len()];
        position_loss(&logits, dist, Some(3), &cfg, 1.0, &mut d);
        let num = numeric_grad(&logits, |z| {
            let mut scratch = vec![0f32; z.len()];
            position_loss(z, dist, Some(3), &cfg, 1.0, &mut scratch).loss
        });
        for (j, (&a, &n)) in d.iter().zip(&num).enumerate() {
            assert!((a as f64 - n).abs() < 2e-3 + 1e-2 * n.abs(), "{cfg:?} logit {j}: {a} vs {n}");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let top = Dist::TopK { ids: vec![2, 5, 7], logprobs: vec![-0.5, -1.5, -3.0], rest_logprob: -1.2 };
        let sampled = Dist::Sampled { ids: vec![1, 4], counts: vec![3, 1], logprobs: vec![-0.4, -1.9] };
        for cfg in [
            LossConfig::default(),
            LossConfig { temperature: 2.0, hard_weight: 0.0 },
            LossConfig { temperature: 1.0, hard_weight: 0.3 },
        ] {
            check(&top, cfg);
            check(&sampled, cfg);
        }
    }

    #[test]
    fn kl_is_zero_when_the_student_is_the_teacher() {
        let logits = [1.0f32, 0.0, -1.0, 2.0];
        let lse = log_sum_exp(&logits, 1.0);
        let lp = |j: usize| (logits[j] as f64 - lse) as f32;
        let rest = ((lp(1) as f64).exp() + (lp(2) as f64).exp()).ln() as f32;
        let dist = Dist::TopK { ids: vec![3, 0], logprobs: vec![lp(3), lp(0)], rest_logprob: rest };
        let mut d = [0f32; 4];
        let l = position_loss(&logits, &dist, None, &LossConfig::default(), 1.0, &mut d);
        assert!(l.kl.abs() < 1e-6 && l.top1_agrees, "{l:?}");
        assert!(d.iter().all(|g| g.abs() < 1e-6), "{d:?}");
        assert!(full_kl(&logits, &logits).abs() < 1e-12);
    }
}
