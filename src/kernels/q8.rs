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

/// Values that share one scale in [`quantize_row_shared`]: a K-quant super-block.
pub const SHARED_GROUP: usize = 256;

/// Quantizes `x` (a multiple of 32 long) into `out` (`x.len() / 32` blocks): per block
/// `d = max|x| / 127`, `q = round(x / d)` with ties to even (what the SIMD conversion
/// does, so both forms give the same blocks).
pub fn quantize_row(x: &[f32], out: &mut [Q8Block]) {
    quantize_groups(x, out, 32);
}

/// [`quantize_row`] with one scale per [`SHARED_GROUP`] values (`x` a multiple of it long):
/// the eight blocks of a K-quant super-block share `d`, so a kernel can add their scaled
/// integer sums before one conversion to float (llama.cpp's Q8_K shares its scale the same
/// way). Coarser than per-block scales, so only the K-quant kernels use it.
pub fn quantize_row_shared(x: &[f32], out: &mut [Q8Block]) {
    quantize_groups(x, out, SHARED_GROUP);
}

fn quantize_groups(x: &[f32], out: &mut [Q8Block], group: usize) {
    assert_eq!(x.len(), out.len() * 32, "quantize_row: length mismatch");
    assert!(x.len().is_multiple_of(group), "quantize_row: {} values are not groups of {group}", x.len());
    #[cfg(target_arch = "x86_64")]
    if super::features::active().avx2 {
        for (xg, bg) in x.chunks_exact(group).zip(out.chunks_exact_mut(group / 32)) {
            // SAFETY: AVX2/FMA/F16C were detected; every block holds 32 values.
            unsafe {
                let d = avx2::abs_max(xg) / 127.0;
                for (xb, b) in xg.chunks_exact(32).zip(bg.iter_mut()) {
                    avx2::quantize_block(xb, b, d);
                }
            }
        }
        return;
    }
    // NEON is part of every aarch64 CPU: its forms need no detection.
    #[cfg(target_arch = "aarch64")]
    let (abs_max, quantize_block) = (neon::abs_max, neon::quantize_block);
    #[cfg(not(target_arch = "aarch64"))]
    let abs_max = portable_abs_max;
    for (xg, bg) in x.chunks_exact(group).zip(out.chunks_exact_mut(group / 32)) {
        let d = abs_max(xg) / 127.0;
        for (xb, b) in xg.chunks_exact(32).zip(bg.iter_mut()) {
            quantize_block(xb, b, d);
        }
    }
}

/// The portable `max |x|`.
#[cfg_attr(all(target_arch = "aarch64", not(test)), allow(dead_code))] // the NEON form's reference
fn portable_abs_max(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// The portable form of one block with scale `d`.
#[cfg_attr(all(target_arch = "aarch64", not(test)), allow(dead_code))] // the NEON form's reference
fn quantize_block(xb: &[f32], b: &mut Q8Block, d: f32) {
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut sums = [0i16; 2];
    for (i, (q, &v)) in b.qs.iter_mut().zip(xb).enumerate() {
        *q = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
        sums[i / 16] += *q as i16;
    }
    b.d = d;
    b.sum16 = sums;
    b.ds = d * (sums[0] as i32 + sums[1] as i32) as f32;
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Q8Block;

    /// `max |x|` over a multiple of 32 values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn abs_max(x: &[f32]) -> f32 {
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let mut m = _mm256_setzero_ps();
        for v in x.chunks_exact(8) {
            m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(v.as_ptr()), abs));
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)))
    }

    /// [`super::quantize_block`] in registers: prefill quantizes every token's input to
    /// every mat-mul, which the scalar loop made a sixth of the prompt time.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_block(xb: &[f32], b: &mut Q8Block, d: f32) {
        assert_eq!(xb.len(), 32);
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xb.as_ptr().add(8 * i)));
        let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        // Round to nearest even (the default rounding mode); |x·id| ≤ 127 by construction,
        // and the saturating packs clamp like the portable form.
        let q: [__m256i; 4] = v.map(|x| _mm256_cvtps_epi32(_mm256_mul_ps(x, id)));
        let sum_half = |a: __m256i, c: __m256i| {
            let s = _mm256_add_epi32(a, c);
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
            _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 1))) as i16
        };
        let sums = [sum_half(q[0], q[1]), sum_half(q[2], q[3])];
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        // The packs interleave 128-bit lanes; put the eight 4-byte groups back in order.
        let packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(b.qs.as_mut_ptr() as *mut __m256i, packed);
        b.d = d;
        b.sum16 = sums;
        b.ds = d * (sums[0] as i32 + sums[1] as i32) as f32;
    }
}

/// The NEON forms (NEON is part of every aarch64 CPU, so no detection is needed).
#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::Q8Block;

    /// `max |x|` over a multiple of 32 values; `fmaxnm` ignores a NaN as `f32::max` does.
    pub fn abs_max(x: &[f32]) -> f32 {
        assert!(x.len().is_multiple_of(4));
        // SAFETY: NEON is baseline on aarch64; each load reads four values of a chunk of
        // four.
        unsafe {
            let mut m = vdupq_n_f32(0.0);
            for v in x.chunks_exact(4) {
                m = vmaxnmq_f32(m, vabsq_f32(vld1q_f32(v.as_ptr())));
            }
            vmaxnmvq_f32(m)
        }
    }

    /// [`super::quantize_block`] in registers: the same blocks bit for bit (`fcvtns`
    /// rounds ties to even like `round_ties_even`; |x·id| ≤ 127 by construction, and the
    /// saturating narrows clamp like the portable form).
    pub fn quantize_block(xb: &[f32], b: &mut Q8Block, d: f32) {
        assert_eq!(xb.len(), 32);
        // SAFETY: NEON is baseline on aarch64; the eight loads read the 32 values just
        // checked, the two stores write the block's 32 quants.
        unsafe {
            let id = vdupq_n_f32(if d > 0.0 { 1.0 / d } else { 0.0 });
            let mut q = [vdupq_n_s32(0); 8];
            for (i, q) in q.iter_mut().enumerate() {
                *q = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(xb.as_ptr().add(4 * i)), id));
            }
            let mut sums = [0i16; 2];
            for half in 0..2 {
                let [a, b4, c, e] = [q[4 * half], q[4 * half + 1], q[4 * half + 2], q[4 * half + 3]];
                sums[half] = vaddvq_s32(vaddq_s32(vaddq_s32(a, b4), vaddq_s32(c, e))) as i16;
                let words = (vcombine_s16(vqmovn_s32(a), vqmovn_s32(b4)), vcombine_s16(vqmovn_s32(c), vqmovn_s32(e)));
                let bytes = vcombine_s8(vqmovn_s16(words.0), vqmovn_s16(words.1));
                vst1q_s8(b.qs.as_mut_ptr().add(16 * half), bytes);
            }
            b.d = d;
            b.sum16 = sums;
            b.ds = d * (sums[0] as i32 + sums[1] as i32) as f32;
        }
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

    /// The dispatched (SIMD where available) form gives exactly the portable blocks,
    /// ties, saturation edges and zeros included.
    #[test]
    fn simd_quantization_equals_the_portable_form() {
        let mut rng = crate::rng::Rng::new(8);
        let mut x: Vec<f32> = (0..32 * 64).map(|_| (rng.next_f64() as f32 - 0.5) * 10.0).collect();
        // Exact ties (k + 0.5 steps), a zero block, a block of one repeated value.
        for (i, v) in x[..32].iter_mut().enumerate() {
            *v = i as f32 - 15.5;
        }
        x[32..64].fill(0.0);
        x[64..96].fill(-3.25);
        let mut got = vec![Q8Block::ZERO; 64];
        quantize_row(&x, &mut got);
        for (xb, g) in x.chunks_exact(32).zip(&got) {
            let mut want = Q8Block::ZERO;
            quantize_block(xb, &mut want, portable_abs_max(xb) / 127.0);
            assert_eq!(*g, want);
        }
    }

    /// Shared scales: one `d` per 256 values, the largest value at ±127, every value
    /// within half a step.
    #[test]
    fn shared_quantization_uses_one_scale_per_super_block() {
        let x: Vec<f32> = (0..512).map(|i| ((i * 37 % 101) as f32 - 50.0) / (1.0 + (i / 64) as f32)).collect();
        let mut q = vec![Q8Block::ZERO; 16];
        quantize_row_shared(&x, &mut q);
        let mut back = vec![0f32; 512];
        dequantize_row(&q, &mut back);
        for (g, (xg, qg)) in x.chunks(256).zip(q.chunks(8)).enumerate() {
            let amax = xg.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(qg.iter().all(|b| b.d == amax / 127.0), "group {g}");
            assert!(qg.iter().any(|b| b.qs.iter().any(|&v| v.abs() == 127)), "group {g}");
        }
        for (i, (a, b)) in x.iter().zip(&back).enumerate() {
            assert!((a - b).abs() <= 0.5 * q[i / 32].d + 1e-6, "{i}: {a} vs {b}");
        }
    }
}
