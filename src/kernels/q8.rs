//! Activations quantized to 8 bits in blocks of 32, the other operand of every quantized
//! dot product (as in llama.cpp, which is what makes its CPU path fast: weights stay
//! 4–8-bit, products are integer, one float multiply per 32 values).
//!
//! Each block keeps its own f32 scale, and the integer sum of each half, which the
//! kernels need for weight formats with an offset (Q4_0's −8, Q4_1's minimum, Q6_K's −32).

/// 32 activations: `x[i] ≈ d · qs[i]`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct Q8Block {
    pub d: f32,
    /// `d · Σ qs`: the block's sum, ready for weight formats with a minimum or offset.
    pub ds: f32,
    /// `Σ qs[0..16]` and `Σ qs[16..32]`.
    pub sum16: [i16; 2],
    pub qs: [i8; 32],
}

impl Q8Block {
    pub const ZERO: Self = Self { d: 0.0, ds: 0.0, sum16: [0; 2], qs: [0; 32] };

    /// `Σ qs` as an integer.
    #[inline]
    pub fn sum(&self) -> i32 {
        self.sum16[0] as i32 + self.sum16[1] as i32
    }
}

/// Quantizes `x` (a multiple of 32 long) into `out` (`x.len() / 32` blocks): per block
/// `d = max|x| / 127`, `q = round(x / d)`.
pub fn quantize_row(x: &[f32], out: &mut [Q8Block]) {
    assert_eq!(x.len(), out.len() * 32, "quantize_row: length mismatch");
    for (xb, b) in x.chunks_exact(32).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sums = [0i16; 2];
        for (i, (q, &v)) in b.qs.iter_mut().zip(xb).enumerate() {
            *q = (v * id).round().clamp(-127.0, 127.0) as i8;
            sums[i / 16] += *q as i16;
        }
        b.d = d;
        b.sum16 = sums;
        b.ds = d * (sums[0] as i32 + sums[1] as i32) as f32;
    }
}

/// Dequantizes blocks back to f32 (for tests and references).
pub fn dequantize_row(blocks: &[Q8Block], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(32)) {
        for (v, &q) in o.iter_mut().zip(&b.qs) {
            *v = b.d * q as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_error_is_within_half_a_step() {
        let x: Vec<f32> = (0..96).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let mut q = vec![Q8Block::ZERO; 3];
        quantize_row(&x, &mut q);
        let mut back = vec![0f32; 96];
        dequantize_row(&q, &mut back);
        for (i, (a, b)) in x.iter().zip(&back).enumerate() {
            let step = q[i / 32].d;
            assert!((a - b).abs() <= 0.5 * step + 1e-6, "{i}: {a} vs {b}");
        }
        for b in &q {
            assert_eq!(b.sum(), b.qs.iter().map(|&v| v as i32).sum::<i32>());
        }
        let mut zero = [Q8Block::ZERO];
        quantize_row(&[0.0; 32], &mut zero);
        assert_eq!(zero[0].d, 0.0);
    }
}
