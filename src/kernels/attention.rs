//! Causal grouped-query attention, forward (over a KV cache of f32 or f16 rows, or over
//! a whole training sequence keeping its weights) and backward.
//!
//! Layout: queries are rows of `n_head · head_dim`, keys and values rows of
//! `n_head_kv · head_dim`, one row per position; query head `h` reads KV head
//! `h / (n_head / n_head_kv)` in place, with no per-head copies. With a window, a query
//! sees only the last `window` positions, itself included.

use super::dot::{attend, dot};
use super::flash;
use super::Batching;
use crate::threads::{for_each_index, DisjointMut};
use half::f16;

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

/// One layer's cached keys or values, in the cache's storage type (llama.cpp's
/// `--cache-type-k/-v`): rows of `n_head_kv · head_dim`, one per position.
#[derive(Clone, Copy, Debug)]
pub enum Cached<'a> {
    F32(&'a [f32]),
    /// Half the memory and half the bytes read per position; the values llama.cpp's
    /// default cache holds.
    F16(&'a [f16]),
}

impl Cached<'_> {
    pub fn len(&self) -> usize {
        match self {
            Cached::F32(x) => x.len(),
            Cached::F16(x) => x.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Attention of `n` new queries at positions `pos0..pos0 + n` over cached keys `k` and
/// values `v`, which hold positions `0..pos0 + n` (their own included) and may run on (a
/// KV cache with room for more).
///
/// Work goes out in tiles of query rows that share a KV head ([`flash::Tile`]). A
/// [`Batching::Tiled`] prompt puts a few tokens' heads in one tile; decode, and
/// [`Batching::AsDecode`], one token's — a row's arithmetic depends only on its query and
/// the positions it sees (and where its tile's earliest row starts, which in a one-token
/// tile is its own start), so each query gets the bits it would get alone.
#[allow(clippy::too_many_arguments)]
pub fn causal(
    q: &[f32],
    k: Cached,
    v: Cached,
    pos0: usize,
    heads: Heads,
    window: Option<usize>,
    out: &mut [f32],
    batching: Batching,
) {
    let (d, group, q_dim, kv_dim) = (heads.head_dim, heads.group(), heads.q_dim(), heads.kv_dim());
    let n = q.len() / q_dim;
    let context = pos0 + n;
    assert!(
        q.len() == n * q_dim && out.len() == q.len() && k.len() >= context * kv_dim && v.len() >= context * kv_dim,
        "attention: shapes"
    );
    let (tokens, heads_per_tile) = if n > 1 && batching == Batching::Tiled {
        ((flash::TILE_ROWS / group).max(1), group)
    } else if heads.n_head_kv >= 4 {
        (1, group)
    } else {
        // Few KV heads (Gemma has one): a head per tile, so every thread has work.
        (1, 1)
    };
    let n_tiles = n.div_ceil(tokens);
    let parts = group / heads_per_tile;
    let outs = DisjointMut::new(out);
    let run = |i: usize| {
        // Tiles of one KV head one after another, so both threads read the same head's
        // cached rows while they are in L3.
        let kv_head = i / (n_tiles * parts);
        let (first, part) = ((i / parts % n_tiles) * tokens, i % parts);
        let tokens = first..(first + tokens).min(n);
        let head_of = |row: usize| {
            (tokens.start + row / heads_per_tile, kv_head * group + part * heads_per_tile + row % heads_per_tile)
        };
        TILES.with(|tile| {
            let tile = &mut tile.borrow_mut();
            tile.clear(d);
            for row in 0..tokens.len() * heads_per_tile {
                let (t, h) = head_of(row);
                tile.push(&q[t * q_dim + h * d..][..d], heads.scale(), visible(pos0 + t, window));
            }
            for (row, o) in tile.attend(k, v, kv_dim, kv_head * d).chunks_exact(d).enumerate() {
                let (t, h) = head_of(row);
                // SAFETY: this tile alone holds token `t`'s query head `h`.
                unsafe { outs.slice(t * q_dim + h * d, d) }.copy_from_slice(o);
            }
        });
    };
    let n_items = n_tiles * parts * heads.n_head_kv;
    // Below some ten thousand multiply-adds, sharing the items out costs more than it saves.
    if n * heads.n_head * context * d < 1 << 16 {
        (0..n_items).for_each(run);
    } else {
        for_each_index(n_items, run);
    }
}

/// Attention over a whole training sequence (`pos0 = 0`, f32 keys and values) that keeps
/// each query's weights for the backward pass in `probs` (`n_head × n × n`).
pub fn causal_keeping_weights(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: Heads,
    window: Option<usize>,
    out: &mut [f32],
    probs: &mut [f32],
) {
    let (d, group, kv_dim) = (heads.head_dim, heads.group(), heads.kv_dim());
    let n = q.len() / heads.q_dim();
    assert!(
        q.len() == n * heads.q_dim() && out.len() == q.len() && k.len() == n * kv_dim && v.len() == k.len(),
        "attention: shapes"
    );
    assert_eq!(probs.len(), heads.n_head * n * n, "attention: weights shape");
    let probs = DisjointMut::new(probs);
    let outs = DisjointMut::new(out);
    // One head per item, so a single KV head (Gemma) still keeps every thread busy.
    let run = |i: usize| {
        let (t, h) = (i / heads.n_head, i % heads.n_head);
        let positions = visible(t, window);
        // SAFETY: item `i` alone writes its head's output, `i·d..(i+1)·d`.
        let o = unsafe { outs.slice(i * d, d) };
        SCORES.with(|s| {
            let scores = &mut s.borrow_mut();
            attend(&q[i * d..(i + 1) * d], k, v, positions.clone(), kv_dim, (h / group) * d, heads.scale(), scores, o);
            // `scores` holds this head's weights over `positions`.
            // SAFETY: head `h` of token `t` alone owns this row of weights.
            unsafe { probs.slice((h * n + t) * n + positions.start, positions.len()) }.copy_from_slice(scores);
        });
    };
    for_each_index(n * heads.n_head, run);
}

thread_local! {
    /// Attention weights of the training head a thread is on, reused from call to call.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The working memory of the tile a thread is on.
    static TILES: std::cell::RefCell<flash::Tile> = std::cell::RefCell::new(flash::Tile::default());
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
