//! Causal grouped-query attention, forward (over a KV cache, or over a whole training
//! sequence keeping its weights) and backward.
//!
//! Layout: queries are rows of `n_head · head_dim`, keys and values rows of
//! `n_head_kv · head_dim`, one row per position; query head `h` reads KV head
//! `h / (n_head / n_head_kv)` in place, with no per-head copies. With a window, a query
//! sees only the last `window` positions, itself included.

use super::dot::{attend_group, dot};
use super::Batching;
use crate::threads::{for_each_index, DisjointMut};

/// The head layout of an attention layer.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
}

impl Heads {
    fn group(self) -> usize {
        self.n_head / self.n_head_kv
    }

    fn q_dim(self) -> usize {
        self.n_head * self.head_dim
    }

    fn kv_dim(self) -> usize {
        self.n_head_kv * self.head_dim
    }

    fn scale(self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// The positions query `t` (at absolute position `pos`) sees.
fn visible(pos: usize, window: Option<usize>) -> std::ops::Range<usize> {
    let end = pos + 1;
    window.map_or(0, |w| end.saturating_sub(w))..end
}

/// Attention of `n` new queries at positions `pos0..pos0 + n` over keys `k` and values
/// `v`, which hold positions `0..pos0 + n` (their own included) and may run on (a KV cache
/// with room for more). With `probs` (`n_head × n × (pos0 + n)`), each query's weights
/// over the positions it sees are kept there for the backward pass. With
/// [`Batching::AsDecode`] each query gets the arithmetic it would get alone.
#[allow(clippy::too_many_arguments)]
pub fn causal(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos0: usize,
    heads: Heads,
    window: Option<usize>,
    out: &mut [f32],
    probs: Option<&mut [f32]>,
    batching: Batching,
) {
    let (d, group, kv_dim) = (heads.head_dim, heads.group(), heads.kv_dim());
    let n = q.len() / heads.q_dim();
    let context = pos0 + n;
    assert!(
        q.len() == n * heads.q_dim()
            && out.len() == q.len()
            && k.len() >= context * kv_dim
            && v.len() >= context * kv_dim,
        "attention: shapes"
    );
    // A prompt's work items are a token's whole query group (its heads share every key
    // and value row, read once for all of them); one new token, or weights to keep, split
    // by head, so a single KV head (Gemma) still keeps every thread busy.
    let heads_per_item = if n > 1 && probs.is_none() && batching == Batching::Tiled { group } else { 1 };
    let item_len = heads_per_item * d;
    let n_items = out.len() / item_len;
    if let Some(p) = &probs {
        assert_eq!(p.len(), heads.n_head * n * context, "attention: weights shape");
    }
    let probs = probs.map(DisjointMut::new);
    let outs = DisjointMut::new(out);
    let run = |i: usize| {
        let first_head = i * heads_per_item;
        let (t, h) = (first_head / heads.n_head, first_head % heads.n_head);
        let kv_off = (h / group) * d;
        let qh = &q[first_head * d..first_head * d + item_len];
        let positions = visible(pos0 + t, window);
        // SAFETY: item `i` alone writes its heads' outputs, `i·item_len..(i+1)·item_len`.
        let o = unsafe { outs.slice(i * item_len, item_len) };
        SCORES.with(|s| {
            let scores = &mut s.borrow_mut();
            attend_group(qh, d, k, v, positions.clone(), kv_dim, kv_off, heads.scale(), scores, o);
            if let Some(p) = &probs {
                // One head per item here: `scores` holds its weights over `positions`.
                let row = (h * n + t) * context;
                // SAFETY: head `h` of token `t` alone owns this row of weights.
                unsafe { p.slice(row + positions.start, positions.len()) }.copy_from_slice(scores);
            }
        });
    };
    // Below some ten thousand multiply-adds, sharing the items out costs more than it saves.
    if n * heads.n_head * context * d < 1 << 16 {
        (0..n_items).for_each(run);
    } else {
        for_each_index(n_items, run);
    }
}

thread_local! {
    /// Attention weights of the item a thread is on, reused from call to call.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Backward of [`causal`] over a whole sequence (`pos0 = 0`) from its kept weights:
/// adds to `dq`, `dk` and `dv` (the heads of a KV group share `dk` and `dv`, so one task
/// owns a whole group).
#[allow(clippy::too_many_arguments)]
pub fn causal_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    dout: &[f32],
    heads: Heads,
    window: Option<usize>,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (d, group, qd, kvd) = (heads.head_dim, heads.group(), heads.q_dim(), heads.kv_dim());
    let t_len = q.len() / qd;
    assert!(
        dout.len() == q.len()
            && dq.len() == q.len()
            && k.len() == t_len * kvd
            && v.len() == k.len()
            && dk.len() == k.len()
            && dv.len() == k.len()
            && probs.len() == heads.n_head * t_len * t_len,
        "attention backward: shapes"
    );
    let scale = heads.scale();
    let (dqp, dkp, dvp) = (DisjointMut::new(dq), DisjointMut::new(dk), DisjointMut::new(dv));
    for_each_index(heads.n_head_kv, |g| {
        let mut dp = vec![0f32; t_len];
        for h in g * group..(g + 1) * group {
            for t in 0..t_len {
                let seen = visible(t, window);
                let p = &probs[(h * t_len + t) * t_len..][seen.clone()];
                let dot_h = &dout[t * qd + h * d..t * qd + (h + 1) * d];
                for (j, dpj) in seen.clone().zip(&mut dp) {
                    *dpj = dot(dot_h, &v[j * kvd + g * d..j * kvd + (g + 1) * d]);
                }
                let dp = &dp[..seen.len()];
                for (j, &pj) in seen.clone().zip(p) {
                    // SAFETY: group g alone writes dv/dk columns g·d..(g+1)·d.
                    let dvj = unsafe { dvp.slice(j * kvd + g * d, d) };
                    dvj.iter_mut().zip(dot_h).for_each(|(a, &b)| *a += pj * b);
                }
                let pdp: f32 = p.iter().zip(dp).map(|(a, b)| a * b).sum();
                // SAFETY: head h (in group g) alone writes dq[t][h·d..(h+1)·d].
                let dqt = unsafe { dqp.slice(t * qd + h * d, d) };
                let qh = &q[t * qd + h * d..t * qd + (h + 1) * d];
                for ((j, &pj), &dpj) in seen.zip(p).zip(dp) {
                    let ds = pj * (dpj - pdp) * scale;
                    let kj = &k[j * kvd + g * d..j * kvd + (g + 1) * d];
                    dqt.iter_mut().zip(kj).for_each(|(a, &b)| *a += ds * b);
                    // SAFETY: as for dv.
                    let dkj = unsafe { dkp.slice(j * kvd + g * d, d) };
                    dkj.iter_mut().zip(qh).for_each(|(a, &b)| *a += ds * b);
                }
            }
        }
    });
}
