//! The layer graph's ops on the CPU, for inference: pupil's kernels over weights read in
//! place from the memory map (quantized products on 8-bit activations), keys and values
//! written into the KV cache, and every buffer taken from the cache's [`Scratch`] arena,
//! so that a decode step allocates nothing.

use std::convert::Infallible;

use super::config::Config;
use super::graph::{Ops, Rope};
use super::lora::{lora_forward, Adapter, Target};
use super::weights::{NormId, Weights};
use super::BatchItem;
use crate::kernels::attention;
use crate::kernels::dot::{add_to_rows, gated, Gate};
use crate::kernels::norm::{rms_norm, rms_norm_in_place};
use crate::kernels::rope::{extend_rope_tables, rope};
use crate::kernels::{matmul_many, Batching};
use crate::threads::DisjointMut;

/// A buffer larger than this many values (4 MiB) goes back to the allocator after the
/// call that needed it (a long prompt's), instead of staying in the arena.
const KEEP_VALUES: usize = 1 << 20;

/// The forward pass's working memory, one per KV cache (one per session): activation
/// buffers are taken from it and given back as the graph consumes them, and it keeps
/// them from call to call.
#[derive(Default)]
pub struct Scratch {
    /// Buffers not in use.
    free: Vec<Vec<f32>>,
    /// cos and sin of this call's positions: for global layers, then for sliding ones.
    rope: [(Vec<f32>, Vec<f32>); 2],
    /// The `x · Aᵀ` rows of the adapter being applied.
    lora_u: Vec<f32>,
    /// The last call's final hidden states, which it returned.
    pub(super) hidden: Vec<f32>,
}

impl Scratch {
    /// A zeroed buffer of `len` values.
    fn take(&mut self, len: usize) -> Vec<f32> {
        let mut v = self.free.pop().unwrap_or_default();
        v.clear();
        v.resize(len, 0.0);
        v
    }

    fn give(&mut self, v: Vec<f32>) {
        self.free.push(v);
    }

    /// Makes `out` the call's result (returning the previous one to the arena) and
    /// frees what a large call grew.
    pub(super) fn finish(&mut self, out: Vec<f32>) -> &[f32] {
        let previous = std::mem::replace(&mut self.hidden, out);
        self.give(previous);
        self.free.retain(|b| b.capacity() <= KEEP_VALUES);
        if self.lora_u.capacity() > KEEP_VALUES {
            self.lora_u = Vec::new();
        }
        &self.hidden
    }
}

/// One forward call on the CPU: each item's tokens at the next positions of its own
/// cache, all items' rows through every weight product together.
pub(super) struct CpuPass<'a, 'c> {
    pub cfg: &'a Config,
    pub weights: &'a Weights,
    pub adapters: &'a [(Adapter, f32)],
    pub items: &'a mut [BatchItem<'c>],
    /// Rows of all items together.
    pub rows: usize,
    pub scratch: &'a mut Scratch,
    pub batching: Batching,
}

impl CpuPass<'_, '_> {
    /// Fills the RoPE tables for this call's positions, then runs the graph.
    pub fn run(mut self) -> Vec<f32> {
        for (sliding, (cos, sin)) in self.scratch.rope.iter_mut().enumerate() {
            cos.clear();
            sin.clear();
            if sliding == 0 || self.cfg.sliding_window.is_some() {
                for item in self.items.iter() {
                    // The session's context size picks Phi-3's short or long factors.
                    let inv_freq = self.weights.rope.inv_freq(sliding == 1, item.cache.n_ctx());
                    let (pos0, n) = (item.cache.len(), item.tokens.len());
                    extend_rope_tables(inv_freq, self.cfg.rope_attn_factor, pos0, n, cos, sin);
                }
            }
        }
        let Ok(hidden) = super::graph::forward(self.cfg, &mut self);
        hidden
    }
}

impl Ops for CpuPass<'_, '_> {
    type Act = Vec<f32>;
    type Error = Infallible;

    fn embed(&mut self) -> Result<Vec<f32>, Infallible> {
        let e = self.cfg.n_embd;
        let mut x = self.scratch.take(self.rows * e);
        let tokens = self.items.iter().flat_map(|item| item.tokens);
        for (row, &id) in x.chunks_exact_mut(e).zip(tokens) {
            self.weights.token_embd.dequantize_row(id as usize, row);
        }
        Ok(x)
    }

    fn scale(&mut self, mut x: Vec<f32>, by: f32) -> Result<Vec<f32>, Infallible> {
        x.iter_mut().for_each(|v| *v *= by);
        Ok(x)
    }

    fn rms_norm(&mut self, x: &Vec<f32>, w: NormId) -> Result<Vec<f32>, Infallible> {
        let mut out = self.scratch.take(x.len());
        let (w, eps, row) = (self.weights.norm(w), self.cfg.rms_norm_eps, x.len() / self.rows);
        by_rows(&mut out, row, |rows, o| rms_norm(&x[rows.start * row..rows.end * row], w, eps, o, None));
        Ok(out)
    }

    fn rms_norm_owned(&mut self, mut x: Vec<f32>, w: NormId) -> Result<Vec<f32>, Infallible> {
        let (w, eps, row) = (self.weights.norm(w), self.cfg.rms_norm_eps, x.len() / self.rows);
        by_rows(&mut x, row, |_, o| rms_norm_in_place(o, w, eps));
        Ok(x)
    }

    fn linear<const N: usize>(
        &mut self,
        x: Vec<f32>,
        layer: usize,
        targets: [Target; N],
    ) -> Result<[Vec<f32>; N], Infallible> {
        let n = self.rows;
        let block = &self.weights.blocks[layer];
        let mut outs = targets.map(|t| self.scratch.take(n * block.weight(t).rows));
        let mut next = targets.iter();
        let mut jobs =
            outs.each_mut().map(|o| (block.weight(*next.next().expect("one target per output")), &mut o[..]));
        matmul_many(&mut jobs, &x, n, self.batching);
        // Decode-exact rows take the adapters' products one row at a time, as decode does;
        // each item with its own scales.
        let n_in = x.len() / n;
        for (&t, y) in targets.iter().zip(&mut outs) {
            let n_out = y.len() / n;
            for (i, (adapter, user_scale)) in self.adapters.iter().enumerate() {
                let Some((a, b)) = adapter.pair(layer, t) else { continue };
                for (rows, item) in segments(self.items) {
                    let scale = adapter.scale() * item.lora_scales.map_or(*user_scale, |s| s[i]);
                    if rows.is_empty() || scale == 0.0 {
                        continue;
                    }
                    let per_product = if self.batching == Batching::AsDecode { 1 } else { rows.len() };
                    let xs = x[rows.start * n_in..rows.end * n_in].chunks(per_product * n_in);
                    let ys = y[rows.start * n_out..rows.end * n_out].chunks_mut(per_product * n_out);
                    for (xr, yr) in xs.zip(ys) {
                        lora_forward(a, b, scale, xr, xr.len() / n_in, yr, &mut self.scratch.lora_u);
                    }
                }
            }
            if let Some(bias) = block.bias(t) {
                add_to_rows(y, bias);
            }
        }
        self.scratch.give(x);
        Ok(outs)
    }

    fn rope(&mut self, mut x: Vec<f32>, r: Rope) -> Result<Vec<f32>, Infallible> {
        let (cos, sin) = &self.scratch.rope[r.sliding as usize];
        let (d, n_rot, row) = (self.cfg.head_dim, self.cfg.n_rot, x.len() / self.rows);
        let half = n_rot / 2;
        by_rows(&mut x, row, |rows, o| {
            let tables = rows.start * half..rows.end * half;
            rope(o, d, n_rot, &cos[tables.clone()], &sin[tables], r.style, false)
        });
        Ok(x)
    }

    fn attention(
        &mut self,
        layer: usize,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        window: Option<usize>,
    ) -> Result<Vec<f32>, Infallible> {
        let cfg = self.cfg;
        let (q_dim, kv_dim) = (cfg.n_head * cfg.head_dim, cfg.kv_dim());
        let mut out = self.scratch.take(q.len());
        let (heads, batching) = (cfg.heads(), self.batching);
        let attend = |rows: std::ops::Range<usize>, item: &mut BatchItem, out: &mut [f32]| {
            let pos0 = item.cache.len();
            let (mut kv, _) = item.cache.parts();
            let (ks, vs) = (&k[rows.start * kv_dim..rows.end * kv_dim], &v[rows.start * kv_dim..rows.end * kv_dim]);
            kv.store(layer, pos0 * kv_dim, ks, vs);
            let (k_cache, v_cache) = kv.layer(layer);
            attention::causal(
                &q[rows.start * q_dim..rows.end * q_dim],
                k_cache,
                v_cache,
                pos0,
                heads,
                window,
                out,
                batching,
            );
        };
        if let [item] = self.items {
            attend(0..self.rows, item, &mut out);
        } else {
            // Sequences share no keys: one task each, spread over the workers (decode's
            // short attentions would otherwise run one after another on one thread).
            let mut parts: Vec<_> = segments(self.items).collect();
            let outs = DisjointMut::new(&mut out);
            crate::threads::for_each_mut(&mut parts, |(rows, item)| {
                // SAFETY: each item's rows of the output belong to its task alone.
                let o = unsafe { outs.slice(rows.start * q_dim, rows.len() * q_dim) };
                attend(rows.clone(), item, o)
            });
        }
        for used in [q, k, v] {
            self.scratch.give(used);
        }
        Ok(out)
    }

    fn gate(&mut self, act: Gate, mut g: Vec<f32>, up: Vec<f32>) -> Result<Vec<f32>, Infallible> {
        let row = g.len() / self.rows;
        // Row by row, so that a row's values meet the same SIMD lanes however many rows
        // the pass has.
        by_rows(&mut g, row, |rows, o| {
            for (o, u) in o.chunks_exact_mut(row).zip(up[rows.start * row..rows.end * row].chunks_exact(row)) {
                gated(act, o, u);
            }
        });
        self.scratch.give(up);
        Ok(g)
    }

    fn add(&mut self, mut x: Vec<f32>, y: Vec<f32>) -> Result<Vec<f32>, Infallible> {
        x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
        self.scratch.give(y);
        Ok(x)
    }
}

/// Each item's rows of a pass, with the item.
fn segments<'i, 'c>(
    items: &'i mut [BatchItem<'c>],
) -> impl Iterator<Item = (std::ops::Range<usize>, &'i mut BatchItem<'c>)> {
    items.iter_mut().scan(0, |start, item| {
        let rows = *start..*start + item.tokens.len();
        *start = rows.end;
        Some((rows, item))
    })
}

/// Prompt rows per task of the per-layer elementwise steps (norms, RoPE, the gate).
const GLUE_ROWS: usize = 16;

/// Calls `f(rows, out_rows)` on consecutive groups of up to [`GLUE_ROWS`] rows of `out`
/// (`row_len` values each), on the thread pool when there are several: a prompt's norms,
/// RoPE and gate would otherwise run on one thread while the others wait (Amdahl's share
/// of two-thread prefill).
fn by_rows(out: &mut [f32], row_len: usize, f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync) {
    let n_rows = out.len() / row_len.max(1);
    let groups = n_rows.div_ceil(GLUE_ROWS);
    if groups <= 1 {
        return f(0..n_rows, out);
    }
    let outs = DisjointMut::new(out);
    crate::threads::for_each_index(groups, |g| {
        let rows = g * GLUE_ROWS..((g + 1) * GLUE_ROWS).min(n_rows);
        // SAFETY: group `g` alone owns rows `rows`.
        let o = unsafe { outs.slice(rows.start * row_len, rows.len() * row_len) };
        f(rows, o)
    });
}
