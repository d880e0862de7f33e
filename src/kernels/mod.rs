//! Numeric kernels over raw GGML blocks: dequantization, dot products and the quantized
//! mat-mul the model runs on. No knowledge of models or files lives here.
//!
//! Each kernel has a portable scalar form; SIMD forms are chosen at run time and tested
//! against the scalar one.

pub mod attention;
pub mod dequant;
pub mod dot;
pub mod features;
pub mod gemm;
pub mod matmul;
pub mod norm;
pub mod q8;
pub mod quant_dot;
pub mod quantize;
pub mod rope;

pub use dequant::{dequantize, is_supported};
pub use matmul::{matmul, matmul_many, QMatrix};
