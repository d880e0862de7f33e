//! On-device distillation: LoRA adapters trained on a frozen, memory-mapped quantized
//! student from cached teacher targets.
//!
//! [`frozen`] multiplies by the frozen weights (forward and backward), [`student`] is the
//! trainable forward/backward pass, [`loss`] turns teacher targets into a loss and its
//! gradient, [`optim`] updates the adapters, [`checkpoint`] saves and resumes training,
//! and [`distill`] runs the loop.

pub mod baking;
pub mod checkpoint;
pub mod distill;
pub mod frozen;
pub mod loss;
pub mod optim;
pub mod student;

use crate::threads::DisjointMut;
pub use student::{LoraParams, Student};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Device(#[from] crate::model::DeviceError),
}

/// `gemm_nn` / `gemm_nt` with C's rows shared out over the current pool (bands of a
/// multiple of 4 rows; each band is computed exactly as the single-threaded call would,
/// so the result does not depend on the thread count).
#[allow(clippy::too_many_arguments)]
pub(crate) fn par_gemm(
    transposed_b: bool,
    m: usize,
    n: usize,
    k: usize,
    a: crate::kernels::gemm::Mat,
    b: crate::kernels::gemm::Mat,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    use crate::kernels::gemm::{gemm_nn, gemm_nt, Mat};
    let band = (m / (4 * crate::threads::current_num_threads())).next_multiple_of(4).max(8);
    if m <= band || m * n * k < 1 << 16 {
        let f = if transposed_b { gemm_nt } else { gemm_nn };
        return f(m, n, k, a, b, c, ldc, accumulate);
    }
    let len = c.len();
    let shared = DisjointMut::new(c);
    let mut starts: Vec<usize> = (0..m).step_by(band).collect();
    crate::threads::for_each_mut(&mut starts, |&mut i0| {
        let rows = band.min(m - i0);
        let a = Mat { data: &a.data[i0 * a.ld..], ld: a.ld };
        // SAFETY: this task alone writes rows i0..i0+rows of C.
        let c = unsafe { shared.slice(i0 * ldc, (len - i0 * ldc).min(rows * ldc)) };
        let f = if transposed_b { gemm_nt } else { gemm_nn };
        f(rows, n, k, a, b, c, ldc, accumulate);
    });
}
