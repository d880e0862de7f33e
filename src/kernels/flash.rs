//! A prompt's attention in tiles, in flash attention's order: the query rows of a few
//! consecutive tokens that share one KV head go over the cached positions a block at a
//! time, with a running softmax (each row's maximum and sum so far; what was summed is
//! rescaled when the maximum grows).
//!
//! Why: head by head, every query head streamed its whole KV head from memory. At depth
//! (a 4096-position cache is 1 MiB per KV head and layer at Llama 3.2 1B) that is L3
//! traffic for every head of every prompt token, and attention ran at a third of the FMA
//! rate (pp512 at depth 4096 was 0.60× llama.cpp). Here a block of keys and values is
//! packed once per tile (the next block prefetched meanwhile) and used by all its rows
//! from the core's own caches, a block's scores never go further, and the dot products and
//! weighted sums are register-tiled (three rows × four keys, three rows × 32 columns).

use std::ops::Range;

#[cfg(target_arch = "x86_64")]
use half::f16;
use half::slice::HalfFloatSliceExt;

use super::attention::Cached;
use super::dot::{axpy_scalar, dot_scalar};
#[cfg(target_arch = "x86_64")]
use super::features::active;

/// Query rows a tile aims at: enough to reuse each packed key and value row many times,
/// few enough that the rows' outputs stay in L1 and a prompt still splits into many more
/// tiles than threads. (24 to 48 rows measured alike within this machine's noise.)
pub const TILE_ROWS: usize = 36;

/// Floats of one packed key block, and of one value block (32 KiB each: the pair and a
/// block of scores sit in L2, and the rows share each of them).
const BLOCK_FLOATS: usize = 8192;

/// One thread's working memory for a tile of query rows, kept from tile to tile.
#[derive(Default)]
pub struct Tile {
    head_dim: usize,
    /// The rows' queries, already multiplied by the attention scale.
    q: Vec<f32>,
    visible: Vec<Range<usize>>,
    /// The rows' outputs (while attending: their unnormalised sums).
    out: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
    /// A block's scores, then its unnormalised weights, row after row.
    scores: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

impl Tile {
    /// Starts a tile of rows with heads of `head_dim`.
    pub fn clear(&mut self, head_dim: usize) {
        self.head_dim = head_dim;
        self.q.clear();
        self.visible.clear();
    }

    /// Adds a query row (`head_dim` values, multiplied by `scale`) that sees the cached
    /// positions `visible` (not empty).
    pub fn push(&mut self, q: &[f32], scale: f32, visible: Range<usize>) {
        assert!(q.len() == self.head_dim && !visible.is_empty(), "attention tile: row shape");
        self.q.extend(q.iter().map(|x| x * scale));
        self.visible.push(visible);
    }

    /// Each row's attention over the positions it sees, whose keys and values are the
    /// `head_dim` values at `j · stride + offset` of `keys` / `values`: the rows' outputs,
    /// row after row.
    ///
    /// For each block of positions: pack its keys and values as f32 (the next block is
    /// prefetched meanwhile), score every row against them, fold the block into the rows'
    /// running softmax, add its weighted values. A row's arithmetic depends only on its
    /// query, the positions it sees and where the tile's first block starts (its earliest
    /// visible position), never on the tile's other rows.
    pub fn attend(&mut self, keys: Cached, values: Cached, stride: usize, offset: usize) -> &[f32] {
        let (d, rows) = (self.head_dim, self.visible.len());
        let start = self.visible.iter().map(|v| v.start).min().unwrap_or(0);
        let end = self.visible.iter().map(|v| v.end).max().unwrap_or(0);
        let last = end.saturating_sub(1) * stride + offset + d;
        assert!(keys.len() >= last && values.len() >= last, "attention tile: cache");
        #[cfg(target_arch = "x86_64")]
        let simd = active().avx2 && d.is_multiple_of(32);
        #[cfg(not(target_arch = "x86_64"))]
        let simd = false;
        // A multiple of eight, so the padded block of scores ends on a whole vector.
        let block = (BLOCK_FLOATS / d).max(8) / 8 * 8;
        self.keys.resize(block * d, 0.0);
        self.values.resize(block * d, 0.0);
        self.scores.resize(rows * block, 0.0);
        self.out.clear();
        self.out.resize(rows * d, 0.0);
        self.max.clear();
        self.max.resize(rows, f32::NEG_INFINITY);
        self.sum.clear();
        self.sum.resize(rows, 0.0);
        for first in (start..end).step_by(block) {
            let n = block.min(end - first);
            let at = |j: usize| (first + j) * stride + offset;
            pack(keys, (0..n).map(at), d, &mut self.keys, simd);
            pack(values, (0..n).map(at), d, &mut self.values, simd);
            let next = (block..(2 * block).min(end - first)).map(at);
            prefetch(keys, next.clone(), d);
            prefetch(values, next, d);
            // Keys past the block's end score zero and are masked below.
            let padded = n.next_multiple_of(4);
            self.keys[n * d..padded * d].fill(0.0);
            self.score(block, padded, simd);
            for r in 0..rows {
                let seen = &self.visible[r];
                let from = seen.start.saturating_sub(first).min(n);
                let to = seen.end.saturating_sub(first).min(n);
                let row = &mut self.scores[r * block..r * block + n];
                if from >= to {
                    row.fill(0.0);
                    continue;
                }
                let max = self.max[r].max(max_of(&row[from..to], simd));
                let block_sum = exp_shifted(&mut row[from..to], max, simd);
                row[..from].fill(0.0);
                row[to..].fill(0.0);
                // The earlier blocks' sums were taken against the old maximum (e^-inf = 0
                // before the first block this row sees).
                let rescale = (self.max[r] - max).exp();
                if rescale != 1.0 {
                    self.out[r * d..(r + 1) * d].iter_mut().for_each(|o| *o *= rescale);
                }
                self.sum[r] = self.sum[r] * rescale + block_sum;
                self.max[r] = max;
            }
            self.weigh(block, n, simd);
        }
        for (out, &sum) in self.out.chunks_exact_mut(d).zip(&self.sum) {
            let inv = 1.0 / sum;
            out.iter_mut().for_each(|o| *o *= inv);
        }
        &self.out
    }

    /// `scores[r · block + j] = q_r · k_j` for every row and the first `n` (a multiple of
    /// four) packed keys.
    fn score(&mut self, block: usize, n: usize, simd: bool) {
        let d = self.head_dim;
        #[cfg(target_arch = "x86_64")]
        if simd {
            let (q, k, s) = (self.q.as_ptr(), self.keys.as_ptr(), self.scores.as_mut_ptr());
            // SAFETY: AVX2 and FMA detected (`simd`); `d` is a multiple of 32; every row
            // has `d` queries, `n · d` keys are packed, and each row's scores hold `block ≥
            // n` values.
            return for_row_groups(self.visible.len(), |r, count| unsafe {
                match count {
                    3 => scores_avx2::<3>(q.add(r * d), k, d, n, s.add(r * block), block),
                    2 => scores_avx2::<2>(q.add(r * d), k, d, n, s.add(r * block), block),
                    _ => scores_avx2::<1>(q.add(r * d), k, d, n, s.add(r * block), block),
                }
            });
        }
        let _ = simd;
        for (q, scores) in self.q.chunks_exact(d).zip(self.scores.chunks_exact_mut(block)) {
            for (s, k) in scores.iter_mut().zip(self.keys[..n * d].chunks_exact(d)) {
                *s = dot_scalar(q, k);
            }
        }
    }

    /// `out_r += Σ_j p[r · block + j] · v_j` over the first `n` packed values.
    fn weigh(&mut self, block: usize, n: usize, simd: bool) {
        let d = self.head_dim;
        #[cfg(target_arch = "x86_64")]
        if simd {
            let (p, v, o) = (self.scores.as_ptr(), self.values.as_ptr(), self.out.as_mut_ptr());
            // SAFETY: AVX2 and FMA detected; `d` is a multiple of 32; each row's weights
            // hold `block ≥ n` values, `n · d` values are packed and each row's output
            // holds `d`.
            return for_row_groups(self.visible.len(), |r, count| unsafe {
                match count {
                    3 => weighted_avx2::<3>(p.add(r * block), block, v, d, n, o.add(r * d)),
                    2 => weighted_avx2::<2>(p.add(r * block), block, v, d, n, o.add(r * d)),
                    _ => weighted_avx2::<1>(p.add(r * block), block, v, d, n, o.add(r * d)),
                }
            });
        }
        let _ = simd;
        for (p, out) in self.scores.chunks_exact(block).zip(self.out.chunks_exact_mut(d)) {
            for (&p, v) in p[..n].iter().zip(self.values.chunks_exact(d)) {
                axpy_scalar(p, v, out);
            }
        }
    }
}

/// Copies the cached rows starting at `starts` (`d` values each) into `dst`, one after
/// another, as f32.
fn pack(src: Cached, starts: impl Iterator<Item = usize>, d: usize, dst: &mut [f32], simd: bool) {
    let rows = dst.chunks_exact_mut(d).zip(starts);
    #[cfg(target_arch = "x86_64")]
    if simd {
        // A library call per row (a copy, or a conversion that checks the CPU each time)
        // cost more than the attention of a decode step at depth; inline, it is a load and
        // a store (a conversion) per eight values.
        for (dst, at) in rows {
            // SAFETY: AVX2 and F16C detected (`simd`); `d` is a multiple of 32 and every
            // row read is `d` values inside the slice (indexing checks it).
            unsafe {
                match src {
                    Cached::F32(x) => copy_avx2(&x[at..at + d], dst),
                    Cached::F16(x) => widen_avx2(&x[at..at + d], dst),
                }
            }
        }
        return;
    }
    let _ = simd;
    match src {
        Cached::F32(x) => rows.for_each(|(dst, at)| dst.copy_from_slice(&x[at..at + d])),
        Cached::F16(x) => rows.for_each(|(dst, at)| x[at..at + d].convert_to_f32_slice(dst)),
    }
}

/// `dst = src`, eight values at a time (`src.len()` a multiple of eight).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn copy_avx2(src: &[f32], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert!(src.len() == dst.len() && src.len().is_multiple_of(8));
    for i in (0..src.len()).step_by(8) {
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_loadu_ps(src.as_ptr().add(i)));
    }
}

/// `dst = src` as f32, eight values at a time (`src.len()` a multiple of eight).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn widen_avx2(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert!(src.len() == dst.len() && src.len().is_multiple_of(8));
    for i in (0..src.len()).step_by(8) {
        let half = _mm_loadu_si128(src.as_ptr().add(i).cast());
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(half));
    }
}

/// Asks for the cached rows starting at `starts` to be brought into L1: rows `stride`
/// apart (one KV head of many) defeat the hardware prefetcher.
fn prefetch(src: Cached, starts: impl Iterator<Item = usize>, d: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let (base, size) = match src {
            Cached::F32(x) => (x.as_ptr().cast::<i8>(), 4),
            Cached::F16(x) => (x.as_ptr().cast::<i8>(), 2),
        };
        for at in starts {
            for byte in (0..d * size).step_by(64) {
                // SAFETY: a prefetch is a hint that never faults; the address is computed
                // with wrapping arithmetic, so it needs no bounds (the caller's rows are in
                // bounds anyway).
                unsafe { _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(at * size + byte)) };
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (src, starts, d);
}

/// The largest of `x` (not empty).
fn max_of(x: &[f32], simd: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: AVX2 detected (`simd`).
        return unsafe { max_avx2(x) };
    }
    let _ = simd;
    x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `x[i] = e^(x[i] − max)` in place; returns their sum.
fn exp_shifted(x: &mut [f32], max: f32, simd: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: AVX2 and FMA detected (`simd`).
        return unsafe { exp_shifted_avx2(x, max) };
    }
    let _ = simd;
    x.iter_mut().fold(0.0, |sum, v| {
        *v = (*v - max).exp();
        sum + *v
    })
}

/// Calls `f(first_row, count)` on consecutive groups of three rows, then the one or two
/// left.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn for_row_groups(rows: usize, mut f: impl FnMut(usize, usize)) {
    let mut r = 0;
    while r < rows {
        let count = (rows - r).min(3);
        f(r, count);
        r += count;
    }
}

/// `scores[r · stride + j] = q_r · k_j` for `R` query rows and `n` (a multiple of four)
/// packed keys of `d` (a multiple of eight) values: the `4R` dot products of four keys
/// run side by side, each query load serving four keys and each key load `R` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn scores_avx2<const R: usize>(
    q: *const f32,
    k: *const f32,
    d: usize,
    n: usize,
    scores: *mut f32,
    stride: usize,
) {
    use std::arch::x86_64::*;
    for j in (0..n).step_by(4) {
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        for e in (0..d).step_by(8) {
            // The rows' queries stay in registers while the four keys pass one at a time
            // (4R accumulators, R queries and one key: sixteen registers at R = 3).
            let mut query = [_mm256_setzero_ps(); R];
            for (r, query) in query.iter_mut().enumerate() {
                *query = _mm256_loadu_ps(q.add(r * d + e));
            }
            for i in 0..4 {
                let key = _mm256_loadu_ps(k.add((j + i) * d + e));
                for (acc, &query) in acc.iter_mut().zip(&query) {
                    acc[i] = _mm256_fmadd_ps(query, key, acc[i]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // [k0 k1 k2 k3 | k0 k1 k2 k3] partial sums, then the two halves added.
            let h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
            _mm_storeu_ps(
                scores.add(r * stride + j),
                _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)),
            );
        }
    }
}

/// `out_r += Σ_j p[r · stride + j] · v_j` for `R` rows over `n` packed value rows of `d`
/// (a multiple of 32) values: 32 output columns of every row stay in registers while the
/// values stream past, each value load serving `R` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn weighted_avx2<const R: usize>(
    p: *const f32,
    stride: usize,
    v: *const f32,
    d: usize,
    n: usize,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    for c in (0..d).step_by(32) {
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        for (r, acc) in acc.iter_mut().enumerate() {
            for (u, a) in acc.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(out.add(r * d + c + 8 * u));
            }
        }
        for j in 0..n {
            let mut weight = [_mm256_setzero_ps(); R];
            for (r, w) in weight.iter_mut().enumerate() {
                *w = _mm256_broadcast_ss(&*p.add(r * stride + j));
            }
            for u in 0..4 {
                let value = _mm256_loadu_ps(v.add(j * d + c + 8 * u));
                for (acc, &w) in acc.iter_mut().zip(&weight) {
                    acc[u] = _mm256_fmadd_ps(w, value, acc[u]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (u, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.add(r * d + c + 8 * u), *a);
            }
        }
    }
}

/// The largest of `x` (not empty).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn max_avx2(x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let whole = x.len() / 8 * 8;
    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
    for i in (0..whole).step_by(8) {
        m = _mm256_max_ps(m, _mm256_loadu_ps(x.as_ptr().add(i)));
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), m);
    lanes.iter().chain(&x[whole..]).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `x[i] = e^(x[i] − max)` in place; returns their sum.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn exp_shifted_avx2(x: &mut [f32], max: f32) -> f32 {
    use std::arch::x86_64::*;
    let whole = x.len() / 8 * 8;
    let (vmax, mut vsum) = (_mm256_set1_ps(max), _mm256_setzero_ps());
    for i in (0..whole).step_by(8) {
        let at = x.as_mut_ptr().add(i);
        let e = super::dot::exp8(_mm256_sub_ps(_mm256_loadu_ps(at), vmax));
        _mm256_storeu_ps(at, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), vsum);
    let mut sum: f32 = lanes.iter().sum();
    for v in &mut x[whole..] {
        *v = (*v - max).exp();
        sum += *v;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::super::features::{limited_to, Features};
    use super::*;
    use half::f16;

    /// Attention of one query row by the definition: scaled dot products, softmax and
    /// weighted sum in f64.
    fn reference(
        q: &[f32],
        scale: f32,
        keys: &[f32],
        values: &[f32],
        seen: Range<usize>,
        stride: usize,
        offset: usize,
    ) -> Vec<f32> {
        let d = q.len();
        let at = |j: usize| j * stride + offset..j * stride + offset + d;
        let s: Vec<f64> = seen
            .clone()
            .map(|j| q.iter().zip(&keys[at(j)]).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale as f64)
            .collect();
        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
        let total: f64 = w.iter().sum();
        (0..d)
            .map(|c| (seen.clone().zip(&w).map(|(j, w)| w * values[at(j)][c] as f64).sum::<f64>() / total) as f32)
            .collect()
    }

    /// Every head size the families use, row counts around the three-row groups, blocks
    /// cut short, rows seeing different ranges (causal and windowed), f32 and f16 caches
    /// (the reference reads the same rounded values), on every kernel set.
    #[test]
    fn tiles_match_the_definition() {
        let sets = [Features::detected(), Features::PORTABLE];
        for (d, rows, window) in
            [(64, 24, None), (64, 7, Some(50)), (128, 5, None), (256, 4, Some(9)), (32, 2, None), (40, 3, None)]
        {
            let (n_kv, ctx) = (3, 150 + d / 4);
            let stride = n_kv * d;
            let kv: Vec<f32> = (0..stride * ctx).map(|i| ((i * 37 % 101) as f32 - 50.0) / 23.0).collect();
            let kv16: Vec<f16> = kv.iter().map(|&x| f16::from_f32(x)).collect();
            let rounded: Vec<f32> = kv16.iter().map(|x| x.to_f32()).collect();
            let q: Vec<f32> = (0..rows * d).map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0).collect();
            let scale = 1.0 / (d as f32).sqrt();
            let seen = |r: usize| {
                let end = ctx - rows + r + 1;
                window.map_or(0, |w| end.saturating_sub(w))..end
            };
            let caches = [
                (Cached::F32(&kv), Cached::F32(&kv[3..]), &kv),
                (Cached::F16(&kv16), Cached::F16(&kv16[3..]), &rounded),
            ];
            for (set, (keys, values, held)) in sets.into_iter().flat_map(|s| caches.map(|c| (s, c))) {
                let mut tile = Tile::default();
                tile.clear(d);
                for (r, q) in q.chunks(d).enumerate() {
                    tile.push(q, scale, seen(r));
                }
                let got = limited_to(set, || tile.attend(keys, values, stride, d).to_vec());
                for (r, (got, q)) in got.chunks(d).zip(q.chunks(d)).enumerate() {
                    let want = reference(q, scale, held, &held[3..], seen(r), stride, d);
                    for (a, b) in got.iter().zip(&want) {
                        assert!((a - b).abs() < 2e-5, "{set:?} {keys:?} d={d} row {r}: {a} vs {b}", keys = keys.len());
                    }
                }
            }
        }
    }

    /// A row alone and the same row among others give the same bits when the tiles start
    /// at the same position: what keeps decode and drafted-token verification identical.
    #[test]
    fn a_row_does_not_depend_on_its_neighbours() {
        let (d, ctx, rows) = (64, 300, 7);
        let kv: Vec<f32> = (0..d * ctx).map(|i| ((i * 41 % 103) as f32 - 51.0) / 17.0).collect();
        let q: Vec<f32> = (0..rows * d).map(|i| ((i * 11 % 31) as f32 - 15.0) / 7.0).collect();
        let mut tile = Tile::default();
        tile.clear(d);
        for (r, q) in q.chunks(d).enumerate() {
            tile.push(q, 0.125, 0..ctx - r * 20);
        }
        let together = tile.attend(Cached::F32(&kv), Cached::F32(&kv), d, 0).to_vec();
        for (r, q) in q.chunks(d).enumerate() {
            tile.clear(d);
            tile.push(q, 0.125, 0..ctx - r * 20);
            assert_eq!(tile.attend(Cached::F32(&kv), Cached::F32(&kv), d, 0), &together[r * d..(r + 1) * d], "row {r}");
        }
    }
}
