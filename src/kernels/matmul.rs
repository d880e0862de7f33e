//! Quantized weight matrices as zero-copy views of the model file, and the mat-mul that
//! multiplies them with f32 activations.
//!
//! `y[t, r] = Σ_k W[r, k] · x[t, k]` for a weight `W` with `rows × cols` elements stored row
//! by row in GGML blocks. Rows are split across the thread pool.
//!
//! Quantized weights use integer kernels: the activations are quantized to 8 bits once
//! per call ([`Q8Block`]) and every row is dotted in its packed form. Float weights (F32,
//! F16, BF16) are dequantized a band of rows at a time and multiplied in f32
//! ([`matmul_f32`]), the product training uses for every weight.

use std::borrow::Cow;
use std::cell::Cell;
use std::ops::Range;
use std::sync::Arc;

use super::dequant::dequantize;
use super::gemm::{gemm_nn, gemm_nt, Mat};
use super::interleave_rows;
use super::q8::{quantize_row, quantize_row_shared, Q8Block};
use super::quant_dot::{self, interleave, Kernel, RowDot, RowDotTile, RowsKernel, MOST_ROWS, ROWS_TILE, TILE};
use super::Batching;
use crate::gguf::GgmlDType;
use crate::threads::{current_num_threads, for_each_index, for_each_mut, DisjointMut};

/// Rows dequantized together: enough to reuse each activation row from L1, few enough
/// that the scratch stays in L2 (8 × 8192 f32 = 256 KiB at most).
const ROW_BLOCK: usize = 8;
/// Tokens multiplied against a block of rows before moving on (see `matmul_q8`).
const TOKEN_BLOCK: usize = 16;

/// The bytes a [`QMatrix`] views: a model file's memory map (`Arc<Mmap>`), or for
/// synthetic test weights plain memory.
pub type WeightBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A 2-D weight matrix living in the memory-mapped file, or re-laid in memory for the
/// CPU's kernels ([`QMatrix::interleaved_for_cpu`]).
#[derive(Clone)]
pub struct QMatrix {
    pub dtype: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    data: WeightBytes,
    range: Range<usize>,
    /// Rows interleaved eight at a time ([`interleave_rows`]) rather than the file's
    /// row-major blocks.
    interleaved: bool,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMatrix({} {}x{})", self.dtype, self.rows, self.cols)
    }
}

impl QMatrix {
    /// A view of `range` in `data`. The caller (the weight loader) has checked that the
    /// range holds exactly `rows × cols` elements of `dtype` and that `cols` is a whole
    /// number of blocks.
    pub fn new(dtype: GgmlDType, rows: usize, cols: usize, data: WeightBytes, range: Range<usize>) -> Self {
        debug_assert_eq!(dtype.bytes_for((rows * cols) as u64), Some(range.len() as u64));
        Self { dtype, rows, cols, data, range, interleaved: false }
    }

    /// The stored bytes: the file's layout unless [`Self::is_interleaved`].
    pub fn bytes(&self) -> &[u8] {
        &(*self.data).as_ref()[self.range.clone()]
    }

    pub fn is_interleaved(&self) -> bool {
        self.interleaved
    }

    /// The weights in the file's row-major layout: the stored bytes, or for re-laid rows
    /// a copy put back in that order (a GPU upload of a matrix the CPU re-laid).
    pub fn file_layout(&self) -> Cow<'_, [u8]> {
        if !self.interleaved {
            return Cow::Borrowed(self.bytes());
        }
        let (rb, rows) = (self.row_bytes(), interleave_rows::ROWS);
        let mut out = vec![0u8; self.bytes().len()];
        for (group, to) in self.bytes().chunks_exact(rows * rb).zip(out.chunks_exact_mut(rows * rb)) {
            for (r, row) in to.chunks_exact_mut(rb).enumerate() {
                interleave_rows::row(self.dtype, group, r, row);
            }
        }
        Cow::Owned(out)
    }

    /// A copy of this matrix with its rows interleaved for the CPU's eight-row kernel
    /// ([`Kernel::interleaved`]), if this CPU has one for the type and the rows come in
    /// whole groups. Decode then multiplies eight rows per pass instead of one.
    pub fn interleaved_for_cpu(&self) -> Option<QMatrix> {
        if self.interleaved || !interleave_rows::applies(self.dtype, self.rows) {
            return None;
        }
        quant_dot::kernel(self.dtype)?.interleaved?;
        let bytes = interleave_rows::interleave(self.dtype, self.bytes(), self.row_bytes());
        let range = 0..bytes.len();
        Some(QMatrix { data: Arc::new(bytes), range, interleaved: true, ..*self })
    }

    /// Rows `rows` of this matrix in the file's layout, sharing its bytes: one projection
    /// of a fused tensor (Phi-3's `attn_qkv`), which then runs like any other matrix.
    pub fn row_range(&self, rows: Range<usize>) -> QMatrix {
        assert!(!self.interleaved && rows.start <= rows.end && rows.end <= self.rows, "row_range: rows");
        let rb = self.row_bytes();
        let start = self.range.start + rows.start * rb;
        QMatrix { rows: rows.len(), range: start..start + rows.len() * rb, data: self.data.clone(), ..*self }
    }

    pub fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_size() * self.dtype.type_size()
    }

    /// Dequantizes row `r` into `out` (`cols` values): how embeddings are looked up
    /// without ever expanding the table.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        if self.interleaved {
            // Block by block through a stack buffer: an embedding lookup allocates nothing.
            let (ts, rows) = (self.dtype.type_size(), interleave_rows::ROWS);
            let g = r / rows * rows;
            let columns = self.bytes()[g * rb..(g + rows) * rb].chunks_exact(rows * ts);
            let mut block = [0u8; interleave_rows::MAX_BLOCK];
            for (column, out) in columns.zip(out.chunks_exact_mut(self.dtype.block_size())) {
                interleave_rows::row(self.dtype, column, r - g, &mut block[..ts]);
                dequantize(self.dtype, &block[..ts], out);
            }
        } else {
            dequantize(self.dtype, &self.bytes()[r * rb..(r + 1) * rb], out);
        }
    }
}

/// `out[t·rows + r] = W[r] · x[t]` for `n_tokens` activation rows `x` of `w.cols` values.
/// Runs on the current thread pool (see `threads`).
pub fn matmul(w: &QMatrix, x: &[f32], n_tokens: usize, out: &mut [f32]) {
    matmul_many(&mut [(w, out)], x, n_tokens, Batching::Tiled);
}

/// Products one [`matmul_many`] pass shares out together; more are done in groups.
const MAX_JOBS: usize = 4;

/// Several products with the same input (Q/K/V, gate/up): the activations are quantized
/// once and all rows of all matrices are shared out in one parallel pass, which halves
/// the fork-join rounds per token.
pub fn matmul_many(jobs: &mut [(&QMatrix, &mut [f32])], x: &[f32], n_tokens: usize, batching: Batching) {
    if n_tokens == 0 || jobs.is_empty() {
        return;
    }
    if jobs.len() > MAX_JOBS {
        for group in jobs.chunks_mut(MAX_JOBS) {
            matmul_many(group, x, n_tokens, batching);
        }
        return;
    }
    let cols = jobs[0].0.cols;
    for (w, out) in jobs.iter() {
        assert_eq!(w.cols, cols, "matmul_many: matrices must share the input width");
        assert_eq!(x.len(), n_tokens * cols, "matmul: activation shape");
        assert_eq!(out.len(), n_tokens * w.rows, "matmul: output shape");
    }
    if jobs.iter().all(|(w, _)| quant_dot::has_kernel(w.dtype)) {
        matmul_q8(jobs, x, n_tokens);
    } else if batching == Batching::AsDecode {
        for (w, out) in jobs.iter_mut() {
            for (xt, yt) in x.chunks_exact(cols).zip(out.chunks_exact_mut(w.rows)) {
                matmul_f32(w, xt, 1, yt);
            }
        }
    } else {
        for (w, out) in jobs.iter_mut() {
            matmul_f32(w, x, n_tokens, out);
        }
    }
}

/// Rows per parallel task: enough tasks to balance the threads, few enough that
/// scheduling stays negligible; a multiple of the most rows a [`RowsKernel`] takes per
/// call ([`MOST_ROWS`]), so that only a matrix's last task may end on a single group of
/// eight.
fn rows_per_task(rows: usize) -> usize {
    (rows / (current_num_threads() * 4)).clamp(ROW_BLOCK, 512).next_multiple_of(MOST_ROWS)
}

/// A call's quantized activations: per-block or shared scales (whichever its kernels
/// read), token by token, and for the several-row kernels the same blocks interleaved
/// tile by tile ([`interleave`]).
#[derive(Default)]
struct Activations {
    per_block: Vec<Q8Block>,
    shared: Vec<Q8Block>,
    per_block_tiles: Vec<Q8Block>,
    shared_tiles: Vec<Q8Block>,
}

impl Activations {
    fn all(&mut self) -> [&mut Vec<Q8Block>; 4] {
        [&mut self.per_block, &mut self.shared, &mut self.per_block_tiles, &mut self.shared_tiles]
    }
}

thread_local! {
    /// The calling thread's activation scratch, kept from call to call so that decode's
    /// products (four per layer) allocate nothing.
    static ACTIVATIONS: Cell<Option<Activations>> = const { Cell::new(None) };
}

/// Activation scratch larger than this is freed after the call (a long prompt's blocks);
/// decode's stays.
const KEEP_SCRATCH_BLOCKS: usize = 4096;

/// At most [`MAX_JOBS`] products whose weights all have integer kernels.
/// Every form gives a token the bits it gets alone, so [`Batching`] changes nothing here.
fn matmul_q8(jobs: &mut [(&QMatrix, &mut [f32])], x: &[f32], n_tokens: usize) {
    let n_jobs = jobs.len();
    let cols = jobs[0].0.cols;
    let blocks = cols / 32;
    // Tasks write disjoint elements: each owns a distinct range of one product's rows and
    // writes only `out[t·rows + r]` for its rows `r`.
    let mut weights: [Option<(&QMatrix, Forms)>; MAX_JOBS] = [None; MAX_JOBS];
    let mut outs: [Option<DisjointMut>; MAX_JOBS] = Default::default();
    for (j, (w, out)) in jobs.iter_mut().enumerate() {
        let kernel = quant_dot::kernel(w.dtype).expect("matmul_many checked the kernel");
        weights[j] = Some((&**w, Forms::of(kernel, w.interleaved)));
        outs[j] = Some(DisjointMut::new(out));
    }
    let chunks: [usize; MAX_JOBS] = std::array::from_fn(|j| weights[j].map_or(1, |(w, _)| rows_per_task(w.rows)));
    let counts: [usize; MAX_JOBS] = std::array::from_fn(|j| weights[j].map_or(0, |(w, _)| w.rows.div_ceil(chunks[j])));
    // Task `i` → (product, its weight and kernel forms, its output, rows).
    let task = |mut i: usize| {
        for j in 0..n_jobs {
            if i < counts[j] {
                let (w, forms) = weights[j].expect("job present");
                let r0 = i * chunks[j];
                return (w, forms, outs[j].as_ref().expect("job present"), r0, (r0 + chunks[j]).min(w.rows));
            }
            i -= counts[j];
        }
        unreachable!("task index past the last product")
    };
    let n_tasks: usize = counts.iter().sum();

    let mut act = ACTIVATIONS.take().unwrap_or_default();
    let forms = || weights.iter().flatten().map(|(_, f)| f);
    let wants = |shared: bool| forms().any(|f| f.shared == shared);
    let wants_tiles = |shared: bool| forms().any(|f| f.shared == shared && f.rows.is_some());
    for (wanted, xq, quantize) in [
        (wants(true), &mut act.shared, quantize_row_shared as fn(&[f32], &mut [Q8Block])),
        (wants(false), &mut act.per_block, quantize_row),
    ] {
        if wanted {
            xq.clear();
            xq.resize(n_tokens * blocks, Q8Block::ZERO);
            if n_tokens == 1 {
                quantize(x, xq);
            } else {
                let mut rows: Vec<(&mut [Q8Block], &[f32])> = xq.chunks_mut(blocks).zip(x.chunks(cols)).collect();
                for_each_mut(&mut rows, |(q, xt)| quantize(xt, q));
            }
        }
    }
    if wants_tiles(true) {
        interleave(&act.shared, blocks, n_tokens, &mut act.shared_tiles);
    }
    if wants_tiles(false) {
        interleave(&act.per_block, blocks, n_tokens, &mut act.per_block_tiles);
    }
    for_each_index(n_tasks, |i| {
        let (w, Forms { one, tile, rows, shared }, out, r0, r1) = task(i);
        let (xq, tiles) =
            if shared { (&act.shared, &act.shared_tiles) } else { (&act.per_block, &act.per_block_tiles) };
        let batch = Batch { w, xq, blocks, n_tokens, out };
        match rows {
            // Interleaved rows: whole groups, and every task's range a multiple of eight.
            Some(rows) => batch.by_row_groups(rows, tiles, r0, r1),
            // Rows in place, one at a time: one sequential stream, which decode's kernels
            // prefetch (four interleaved row streams measured 25–30 % slower); the tile
            // form gives each token the bits of the single-token form.
            None => batch.by_rows(one, tile, r0, r1),
        }
    });
    for xq in act.all() {
        if xq.capacity() > KEEP_SCRATCH_BLOCKS {
            *xq = Vec::new();
        }
    }
    ACTIVATIONS.set(Some(act));
}

/// The kernel forms one product runs, and which activations they read.
#[derive(Clone, Copy)]
struct Forms {
    one: RowDot,
    tile: RowDotTile,
    /// Eight rows at a time, for weights interleaved at load: every pass (their rows come
    /// in whole groups, so `one` and `tile` never run) and every token count, since the
    /// kernel gives a token the same bits alone and among others.
    rows: Option<RowsKernel>,
    /// Shared-scale activations (K-quant forms whose sub-block scales apply in integers)
    /// rather than per-block ones.
    shared: bool,
}

impl Forms {
    fn of(k: Kernel, interleaved: bool) -> Self {
        let rows =
            interleaved.then(|| k.interleaved.expect("only matrices whose kernel reads the layout are interleaved"));
        match k.shared_scale {
            Some(s) => Forms { one: s.one, tile: s.tile, rows, shared: true },
            None => Forms { one: k.one, tile: k.tile, rows, shared: false },
        }
    }
}

/// One product seen by one task: all tokens against some of the rows.
struct Batch<'a> {
    w: &'a QMatrix,
    xq: &'a [Q8Block],
    blocks: usize,
    n_tokens: usize,
    out: &'a DisjointMut<'a>,
}

impl Batch<'_> {
    /// Rows `r0..r1` (whole groups of eight) `kernel.rows` at a time, [`ROWS_TILE`]
    /// tokens at a time (`tiles`: the activations as [`interleave`] lays them out): the
    /// tile's activations stay in cache while every row of the range passes by.
    fn by_row_groups(&self, kernel: RowsKernel, tiles: &[Q8Block], r0: usize, r1: usize) {
        let (w, rb, blocks) = (self.w, self.w.row_bytes(), self.blocks);
        let bytes = w.bytes();
        let mut dots = [0f32; MOST_ROWS * ROWS_TILE];
        for (t0, x) in (0..self.n_tokens).step_by(ROWS_TILE).zip(tiles.chunks(ROWS_TILE * blocks)) {
            let tokens = x.len() / blocks;
            for r in (r0..r1).step_by(kernel.rows) {
                let n = kernel.rows.min(r1 - r);
                let dots = &mut dots[..tokens * n];
                (kernel.dot)(&bytes[r * rb..(r + n) * rb], rb, x, tokens, dots);
                for (t, row_dots) in dots.chunks_exact(n).enumerate() {
                    // SAFETY: rows `r0..r1` belong to this task alone.
                    unsafe { self.out.slice((t0 + t) * w.rows + r, n) }.copy_from_slice(row_dots);
                }
            }
        }
    }

    /// Rows `r0..r1` one at a time, [`TILE`] tokens at a time (`tile`), the rest one by
    /// one (`one`).
    fn by_rows(&self, one: RowDot, tile: RowDotTile, r0: usize, r1: usize) {
        let (w, rb, blocks, xq) = (self.w, self.w.row_bytes(), self.blocks, self.xq);
        let bytes = w.bytes();
        // Cache blocking: a few rows and a few tokens at a time, so both stay in L1
        // while every pair is multiplied (≈ 6 KiB of weights + 13 KiB of activations).
        for rb0 in (r0..r1).step_by(ROW_BLOCK * 2) {
            let rb1 = (rb0 + ROW_BLOCK * 2).min(r1);
            for tb0 in (0..self.n_tokens).step_by(TOKEN_BLOCK) {
                let tb1 = (tb0 + TOKEN_BLOCK).min(self.n_tokens);
                for r in rb0..rb1 {
                    let row = &bytes[r * rb..(r + 1) * rb];
                    let mut t = tb0;
                    while t + TILE <= tb1 {
                        let dots = tile(row, &xq[t * blocks..(t + TILE) * blocks], blocks);
                        for (i, v) in dots.into_iter().enumerate() {
                            // SAFETY: row `r` belongs to this task alone.
                            unsafe { self.out.write((t + i) * w.rows + r, v) };
                        }
                        t += TILE;
                    }
                    for t in t..tb1 {
                        let v = one(row, &xq[t * blocks..(t + 1) * blocks]);
                        // SAFETY: as above.
                        unsafe { self.out.write(t * w.rows + r, v) };
                    }
                }
            }
        }
    }
}

/// Rows of `W` per band: a band of 1,536-wide rows dequantized is 384 KiB.
const BAND: usize = 64;
/// Bands summed by one backward task; fixed (not per thread) for reproducible sums.
const BACKWARD_TASKS: usize = 8;

/// `y[t, o] = Σ_i W[o, i] · x[t, i]` for `t < n` (`y` is overwritten), in f32: each task
/// dequantizes a band of rows of `W` into its own scratch (never the whole matrix:
/// memory stays a few hundred KiB per thread) and multiplies it right away. Float weights
/// at inference, and every weight in training, whose gradients must be exact for the
/// weights as stored.
pub fn matmul_f32(w: &QMatrix, x: &[f32], n: usize, y: &mut [f32]) {
    let (n_out, n_in) = (w.rows, w.cols);
    assert!(x.len() >= n * n_in && y.len() >= n * n_out, "matmul_f32: shapes");
    let out = DisjointMut::new(y);
    let mut bands: Vec<usize> = (0..n_out).step_by(BAND).collect();
    for_each_mut(&mut bands, |&mut r0| {
        let rows = BAND.min(n_out - r0);
        let mut wb = vec![0f32; rows * n_in];
        for r in 0..rows {
            w.dequantize_row(r0 + r, &mut wb[r * n_in..(r + 1) * n_in]);
        }
        // The band's columns of every output row are computed apart and copied in row by
        // row: each task's writes are then slices no other task's overlap.
        let mut yb = vec![0f32; n * rows];
        gemm_nt(n, rows, n_in, Mat { data: x, ld: n_in }, Mat { data: &wb, ld: n_in }, &mut yb, rows, false);
        for (t, row) in yb.chunks_exact(rows).enumerate() {
            // SAFETY: this task alone owns columns r0..r0+rows of the output rows.
            unsafe { out.slice(t * n_out + r0, rows) }.copy_from_slice(row);
        }
    });
}

/// `dx[t, i] += Σ_o dy[t, o] · W[o, i]` for `t < n`, in f32 on dequantized bands like
/// [`matmul_f32`]. Partial sums are kept per task and added in task order, so the result
/// does not depend on the thread count or scheduling (a resumed training run repeats an
/// uninterrupted one exactly).
pub fn matmul_f32_backward(w: &QMatrix, dy: &[f32], n: usize, dx: &mut [f32]) {
    let (n_out, n_in) = (w.rows, w.cols);
    assert!(dy.len() >= n * n_out && dx.len() >= n * n_in, "matmul_f32_backward: shapes");
    let per_task = n_out.div_ceil(BACKWARD_TASKS).next_multiple_of(BAND.min(n_out).max(1));
    let mut tasks: Vec<(usize, Vec<f32>)> = (0..n_out).step_by(per_task).map(|r0| (r0, Vec::new())).collect();
    for_each_mut(&mut tasks, |(r0, partial)| {
        let end = (*r0 + per_task).min(n_out);
        partial.resize(n * n_in, 0.0);
        let mut wb = vec![0f32; BAND * n_in];
        for b0 in (*r0..end).step_by(BAND) {
            let rows = BAND.min(end - b0);
            for r in 0..rows {
                w.dequantize_row(b0 + r, &mut wb[r * n_in..(r + 1) * n_in]);
            }
            let a = Mat { data: &dy[b0..], ld: n_out };
            gemm_nn(n, n_in, rows, a, Mat { data: &wb, ld: n_in }, partial, n_in, true);
        }
    });
    for (_, partial) in &tasks {
        dx[..n * n_in].iter_mut().zip(partial).for_each(|(d, p)| *d += p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::synth::{random_blocks, weight_from};

    #[test]
    fn batched_and_single_token_matmul_equal_the_naive_product() {
        // Rows not a multiple of ROW_BLOCK; small under Miri, which interprets every step.
        let (rows, cols) = if cfg!(miri) { (9, 64) } else { (37, 576) };
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::F16] {
            let w = weight_from(dtype, rows, cols, &random_blocks(dtype, rows * cols, &mut Rng::new(3)));
            let mut dense = vec![0f32; rows * cols];
            dequantize(dtype, w.bytes(), &mut dense);
            let mut rng = Rng::new(9);
            // 70 tokens: a full prefill tile of the several-row kernels and a ragged one.
            for n_tokens in [1, 2, 5, 9, ROWS_TILE + 6] {
                let x: Vec<f32> = (0..n_tokens * cols).map(|_| rng.next_f64() as f32 - 0.5).collect();
                let mut out = vec![0f32; n_tokens * rows];
                matmul(&w, &x, n_tokens, &mut out);
                // Quantized weights multiply 8-bit activations: compare with those.
                let mut xs = x.clone();
                if quant_dot::has_kernel(dtype) {
                    let mut q = vec![Q8Block::ZERO; xs.len() / 32];
                    quantize_row(&x, &mut q);
                    crate::kernels::q8::dequantize_row(&q, &mut xs);
                }
                for t in 0..n_tokens {
                    for r in 0..rows {
                        let want: f32 = (0..cols).map(|k| dense[r * cols + k] * xs[t * cols + k]).sum();
                        let got = out[t * rows + r];
                        assert!(
                            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                            "{dtype} t={t} r={r}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Matrices re-laid for the CPU ([`QMatrix::interleaved_for_cpu`]): their rows
    /// dequantize as the file's do, their products equal the file layout's to rounding,
    /// and every pass, however many tokens and however batched, gives a token the bits it
    /// gets alone (what decode-exact verification of drafts needs).
    #[test]
    fn interleaved_weights_multiply_like_the_files_layout() {
        for dtype in quant_dot::TYPES {
            let k_quant = dtype.block_size() == 256;
            let (rows, cols) = match (cfg!(miri), k_quant) {
                (true, false) => (16, 64),
                (true, true) => (16, 256),
                (false, false) => (48, 576),
                (false, true) => (48, 512),
            };
            let w = weight_from(dtype, rows, cols, &random_blocks(dtype, rows * cols, &mut Rng::new(4)));
            let Some(iw) = w.interleaved_for_cpu() else {
                assert!(quant_dot::kernel(dtype).is_none_or(|k| k.interleaved.is_none()), "{dtype}: kernel, no layout");
                continue;
            };
            assert!(iw.is_interleaved() && iw.bytes() != w.bytes());
            assert!(iw.file_layout() == w.bytes(), "{dtype}: the file's layout back");
            let (mut want_row, mut got_row) = (vec![0f32; cols], vec![0f32; cols]);
            for r in 0..rows {
                w.dequantize_row(r, &mut want_row);
                iw.dequantize_row(r, &mut got_row);
                assert_eq!(want_row, got_row, "{dtype} row {r}");
            }
            let mut rng = Rng::new(10);
            let n_tokens = ROWS_TILE + 6;
            let x: Vec<f32> = (0..n_tokens * cols).map(|_| rng.next_f64() as f32 - 0.5).collect();
            let product = |m: &QMatrix, batching: Batching| {
                let mut out = vec![0f32; n_tokens * rows];
                matmul_many(&mut [(m, &mut out[..])], &x, n_tokens, batching);
                out
            };
            let want = product(&w, Batching::Tiled);
            let tiled = product(&iw, Batching::Tiled);
            let as_decode = product(&iw, Batching::AsDecode);
            for (i, (&a, &b)) in want.iter().zip(&tiled).enumerate() {
                assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{dtype} product {i}: {b} vs {a}");
            }
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            for t in 0..n_tokens {
                let mut alone = vec![0f32; rows];
                matmul(&iw, &x[t * cols..(t + 1) * cols], 1, &mut alone);
                let (tiled, as_decode) = (&tiled[t * rows..(t + 1) * rows], &as_decode[t * rows..(t + 1) * rows]);
                assert_eq!(bits(&alone), bits(tiled), "{dtype} token {t}: alone vs tiled");
                assert_eq!(bits(&alone), bits(as_decode), "{dtype} token {t}: alone vs as decode");
            }
        }
    }

    #[test]
    fn f32_products_forward_and_backward_match_a_dense_reference() {
        let mut rng = Rng::new(11);
        let (n_out, n_in, n) = (150, 64, 5);
        let w = crate::synth::quantized_matrix(n_out, n_in, 3);
        let mut dense = vec![0f32; n_out * n_in];
        for r in 0..n_out {
            w.dequantize_row(r, &mut dense[r * n_in..(r + 1) * n_in]);
        }
        let x: Vec<f32> = (0..n * n_in).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let dy: Vec<f32> = (0..n * n_out).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let pool = crate::threads::Pool::new(2);
        let mut y = vec![0f32; n * n_out];
        pool.install(|| matmul_f32(&w, &x, n, &mut y));
        let mut dx = vec![1f32; n * n_in];
        pool.install(|| matmul_f32_backward(&w, &dy, n, &mut dx));
        for t in 0..n {
            for o in 0..n_out {
                let e: f32 = (0..n_in).map(|i| dense[o * n_in + i] * x[t * n_in + i]).sum();
                assert!((y[t * n_out + o] - e).abs() < 1e-4 * (1.0 + e.abs()));
            }
            for i in 0..n_in {
                let e: f32 = 1.0 + (0..n_out).map(|o| dense[o * n_in + i] * dy[t * n_out + o]).sum::<f32>();
                assert!((dx[t * n_in + i] - e).abs() < 1e-4 * (1.0 + e.abs()));
            }
        }
    }
}
