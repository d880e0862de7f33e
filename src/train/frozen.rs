//! Products with a frozen quantized weight `W` (`n_out × n_in`, in the mapped file) for
//! training: forward `Y = X · Wᵀ` and backward `dX += dY · W`, both in f32 so the
//! gradient is exact for the weights as stored.
//!
//! Each task dequantizes a band of rows of `W` into its own scratch (never the whole
//! matrix: memory stays a few hundred KiB per thread) and multiplies it right away. The
//! backward pass sums per-band partial products in band order, so results do not depend
//! on the thread count or scheduling: a resumed run repeats an uninterrupted one exactly.
//!
//! For a model loaded on a GPU, [`Frozen`] runs the same products there instead: the
//! device copy of `W` is dequantized per product and multiplied in f32 (cuBLAS), which is
//! where nearly all of a training step's arithmetic is.

use super::TrainError;
use crate::kernels::gemm::{gemm_nn, gemm_nt, Mat};
use crate::kernels::QMatrix;
use crate::model::Model;
use crate::threads::{for_each_mut, DisjointMut};

/// Where the products with frozen weights run: the CPU bands below, or the GPU copy of a
/// model loaded on a device.
#[derive(Clone, Copy)]
pub struct Frozen<'m> {
    #[cfg(feature = "gpu")]
    gpu: Option<&'m crate::model::gpu::GpuWeights>,
    #[cfg(not(feature = "gpu"))]
    model: std::marker::PhantomData<&'m Model>,
}

impl<'m> Frozen<'m> {
    /// The products of `model`'s weights, on the device the model runs on.
    pub fn of(#[allow(unused_variables)] model: &'m Model) -> Self {
        Self {
            #[cfg(feature = "gpu")]
            gpu: model.gpu(),
            #[cfg(not(feature = "gpu"))]
            model: std::marker::PhantomData,
        }
    }

    /// Products on the CPU, whatever the model.
    pub fn cpu() -> Self {
        Self {
            #[cfg(feature = "gpu")]
            gpu: None,
            #[cfg(not(feature = "gpu"))]
            model: std::marker::PhantomData,
        }
    }

    /// [`forward`] on this device.
    pub fn forward(&self, w: &QMatrix, x: &[f32], n: usize, y: &mut [f32]) -> Result<(), TrainError> {
        #[cfg(feature = "gpu")]
        if let Some(g) = self.gpu {
            return Ok(g.frozen_forward(w, x, n, y)?);
        }
        forward(w, x, n, y);
        Ok(())
    }

    /// [`backward`] on this device.
    pub fn backward(&self, w: &QMatrix, dy: &[f32], n: usize, dx: &mut [f32]) -> Result<(), TrainError> {
        #[cfg(feature = "gpu")]
        if let Some(g) = self.gpu {
            return Ok(g.frozen_backward(w, dy, n, dx)?);
        }
        backward(w, dy, n, dx);
        Ok(())
    }
}

/// Rows of `W` per band: a band of 1,536-wide rows dequantized is 384 KiB.
const BAND: usize = 64;
/// Bands summed by one backward task; fixed (not per thread) for reproducible sums.
const BACKWARD_TASKS: usize = 8;

/// `y[t, o] = Σ_i W[o, i] · x[t, i]` for `t < n` (`y` is overwritten).
pub fn forward(w: &QMatrix, x: &[f32], n: usize, y: &mut [f32]) {
    let (n_out, n_in) = (w.rows, w.cols);
    assert!(x.len() >= n * n_in && y.len() >= n * n_out, "frozen forward: shapes");
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

/// `dx[t, i] += Σ_o dy[t, o] · W[o, i]` for `t < n`.
pub fn backward(w: &QMatrix, dy: &[f32], n: usize, dx: &mut [f32]) {
    let (n_out, n_in) = (w.rows, w.cols);
    assert!(dy.len() >= n * n_out && dx.len() >= n * n_in, "frozen backward: shapes");
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
    use crate::synth::quantized_matrix;

    #[test]
    fn forward_and_backward_match_a_dense_reference() {
        let mut rng = Rng::new(11);
        let (n_out, n_in, n) = (150, 64, 5);
        let w = quantized_matrix(n_out, n_in, 3);
        let mut dense = vec![0f32; n_out * n_in];
        for r in 0..n_out {
            w.dequantize_row(r, &mut dense[r * n_in..(r + 1) * n_in]);
        }
        let x: Vec<f32> = (0..n * n_in).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let dy: Vec<f32> = (0..n * n_out).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let pool = crate::threads::Pool::new(2);
        let mut y = vec![0f32; n * n_out];
        pool.install(|| forward(&w, &x, n, &mut y));
        let mut dx = vec![1f32; n * n_in];
        pool.install(|| backward(&w, &dy, n, &mut dx));
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
