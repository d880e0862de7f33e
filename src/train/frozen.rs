//! Where training's products with a frozen quantized weight `W` (`n_out × n_in`, in the
//! mapped file) run: forward `Y = X · Wᵀ` and backward `dX += dY · W`, both in f32 so the
//! gradient is exact for the weights as stored. On the CPU they are
//! [`matmul_f32`] / [`matmul_f32_backward`] (dequantized bands). For a model loaded on a
//! GPU, [`Frozen`] runs the same products there: the device copy of `W` is dequantized
//! per product and multiplied in f32 (cuBLAS), which is where nearly all of a training
//! step's arithmetic is.

use super::TrainError;
use crate::kernels::matmul::{matmul_f32, matmul_f32_backward};
use crate::kernels::QMatrix;
use crate::model::Model;

/// Where the products with frozen weights run: the CPU, or the GPU copy of a model loaded
/// on a device.
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

    /// [`matmul_f32`] on this device.
    pub fn forward(&self, w: &QMatrix, x: &[f32], n: usize, y: &mut [f32]) -> Result<(), TrainError> {
        #[cfg(feature = "gpu")]
        if let Some(g) = self.gpu {
            return Ok(g.frozen_forward(w, x, n, y)?);
        }
        matmul_f32(w, x, n, y);
        Ok(())
    }

    /// [`matmul_f32_backward`] on this device.
    pub fn backward(&self, w: &QMatrix, dy: &[f32], n: usize, dx: &mut [f32]) -> Result<(), TrainError> {
        #[cfg(feature = "gpu")]
        if let Some(g) = self.gpu {
            return Ok(g.frozen_backward(w, dy, n, dx)?);
        }
        matmul_f32_backward(w, dy, n, dx);
        Ok(())
    }
}
