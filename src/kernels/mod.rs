//! Numeric kernels over raw GGML blocks: dequantization, dot products and the quantized
//! mat-mul the model runs on. No knowledge of models or files lives here.
//!
//! Each kernel has a portable scalar form; SIMD forms are chosen at run time and tested
//! against the scalar one.

pub mod attention;
pub mod dequant;
pub mod dot;
pub mod features;
pub mod flash;
pub mod gemm;
pub mod interleave_rows;
pub mod matmul;
pub mod norm;
pub mod q8;
pub mod quant_dot;
pub mod quantize;
pub mod rope;

pub use dequant::{dequantize, is_supported};
pub use matmul::{matmul, matmul_many, QMatrix};

/// How a pass over several tokens computes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batching {
    /// The fastest way: tiles of tokens share each unpacked weight block, tiles of a
    /// prompt's query rows share each cached key and value row (prefill, perplexity,
    /// training).
    Tiled,
    /// Every token with exactly the arithmetic it gets alone (decode's kernels and
    /// activation quantization, attention head by head), all tokens of a weight row while
    /// that row is in L1, so the weights still stream from memory once. Verifying drafted
    /// tokens this way gives the bits plain decoding would: speculative decoding stays
    /// exact.
    AsDecode,
}
