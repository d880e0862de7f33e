//! Quantized weight matrices as zero-copy views of the model file, and the mat-mul that
//! multiplies them with f32 activations.
//!
//! `y[t, r] = Σ_k W[r, k] · x[t, k]` for a weight `W` with `rows × cols` elements stored row
//! by row in GGML blocks. Rows are split across the thread pool; each worker dequantizes a
//! small block of rows into a scratch buffer once and reuses it for every token of the
//! batch, so prefill reads each weight once instead of once per token.

use std::ops::Range;
use std::sync::Arc;

use memmap2::Mmap;
use rayon::prelude::*;

use super::dequant::dequantize;
use super::dot::dot;
use crate::gguf::GgmlDType;

/// Rows dequantized together: enough to reuse each activation row from L1, few enough
/// that the scratch stays in L2 (8 × 8192 f32 = 256 KiB at most).
const ROW_BLOCK: usize = 8;

/// A 2-D weight matrix living in the memory-mapped file.
#[derive(Clone)]
pub struct QMatrix {
    pub dtype: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMatrix({} {}x{})", self.dtype, self.rows, self.cols)
    }
}

impl QMatrix {
    /// A view of `range` in `map`. The caller (the weight loader) has checked that the
    /// range holds exactly `rows × cols` elements of `dtype` and that `cols` is a whole
    /// number of blocks.
    pub fn new(dtype: GgmlDType, rows: usize, cols: usize, map: Arc<Mmap>, range: Range<usize>) -> Self {
        debug_assert_eq!(dtype.bytes_for((rows * cols) as u64), Some(range.len() as u64));
        Self { dtype, rows, cols, map, range }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }

    pub fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_size() * self.dtype.type_size()
    }

    /// Dequantizes row `r` into `out` (`cols` values): how embeddings are looked up
    /// without ever expanding the table.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        dequantize(self.dtype, &self.bytes()[r * rb..(r + 1) * rb], out);
    }
}

/// `out[t·rows + r] = W[r] · x[t]` for `n_tokens` activation rows `x` of `w.cols` values.
/// Runs on the current rayon pool.
pub fn matmul(w: &QMatrix, x: &[f32], n_tokens: usize, out: &mut [f32]) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(x.len(), n_tokens * cols, "matmul: activation shape");
    assert_eq!(out.len(), n_tokens * rows, "matmul: output shape");
    if n_tokens == 0 {
        return;
    }
    let rb = w.row_bytes();
    let bytes = w.bytes();

    if n_tokens == 1 {
        out.par_chunks_mut(ROW_BLOCK).enumerate().for_each_init(
            || vec![0f32; cols],
            |row_buf, (blk, out_blk)| {
                for (i, o) in out_blk.iter_mut().enumerate() {
                    let r = blk * ROW_BLOCK + i;
                    dequantize(w.dtype, &bytes[r * rb..(r + 1) * rb], row_buf);
                    *o = dot(row_buf, x);
                }
            },
        );
        return;
    }

    // Batch: compute the transposed product (row-major by weight row) so each worker owns
    // a contiguous slice, then transpose into token-major order.
    let mut out_t = vec![0f32; rows * n_tokens];
    out_t.par_chunks_mut(ROW_BLOCK * n_tokens).enumerate().for_each_init(
        || vec![0f32; ROW_BLOCK * cols],
        |scratch, (blk, out_blk)| {
            let r0 = blk * ROW_BLOCK;
            let n_rows = out_blk.len() / n_tokens;
            dequantize(w.dtype, &bytes[r0 * rb..(r0 + n_rows) * rb], &mut scratch[..n_rows * cols]);
            for t in 0..n_tokens {
                let xt = &x[t * cols..(t + 1) * cols];
                for i in 0..n_rows {
                    out_blk[i * n_tokens + t] = dot(&scratch[i * cols..(i + 1) * cols], xt);
                }
            }
        },
    );
    for (r, row) in out_t.chunks_exact(n_tokens).enumerate() {
        for (t, &v) in row.iter().enumerate() {
            out[t * rows + r] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// A weight of random blocks (with finite f16 scales) in an anonymous map.
    fn random_weight(dtype: GgmlDType, rows: usize, cols: usize) -> QMatrix {
        let n = dtype.bytes_for((rows * cols) as u64).unwrap() as usize;
        let mut map = memmap2::MmapMut::map_anon(n).unwrap();
        let mut rng = Rng::new(3);
        map.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
        for block in map.chunks_exact_mut(dtype.type_size()) {
            block[1] = 0x20;
            if dtype == GgmlDType::Q4_1 {
                block[3] = 0x20;
            }
        }
        QMatrix::new(dtype, rows, cols, Arc::new(map.make_read_only().unwrap()), 0..n)
    }

    #[test]
    fn batched_and_single_token_matmul_equal_the_naive_product() {
        let (rows, cols) = (37, 64); // rows not a multiple of ROW_BLOCK
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let w = random_weight(dtype, rows, cols);
            let mut dense = vec![0f32; rows * cols];
            dequantize(dtype, w.bytes(), &mut dense);
            let mut rng = Rng::new(9);
            for n_tokens in [1, 2, 5] {
                let x: Vec<f32> = (0..n_tokens * cols).map(|_| rng.next_f64() as f32 - 0.5).collect();
                let mut out = vec![0f32; n_tokens * rows];
                matmul(&w, &x, n_tokens, &mut out);
                for t in 0..n_tokens {
                    for r in 0..rows {
                        let want: f32 = (0..cols).map(|k| dense[r * cols + k] * x[t * cols + k]).sum();
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
}
