//! f32 vector kernels: dot products (float weights, attention scores), `y += a·x`
//! (attention's value sum), softmax (attention weights) and the gated activations of the
//! feed-forward.
//!
//! The AVX2+FMA forms are picked at run time; release builds do not assume the CPU has
//! them. On aarch64 the softmax and the gates have NEON forms (NEON is part of every
//! aarch64 CPU; the plain loops of the others vectorize on their own there). Each has a
//! portable form it is tested against.

#[cfg(target_arch = "x86_64")]
use super::features::active;

/// Portable dot product with four independent accumulators (so the compiler can keep
/// several lanes busy and the rounding matches the SIMD form's summation order closely).
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 4];
    let chunks = a.len() / 4 * 4;
    for (ca, cb) in a[..chunks].chunks_exact(4).zip(b[..chunks].chunks_exact(4)) {
        for i in 0..4 {
            acc[i] = ca[i].mul_add(cb[i], acc[i]);
        }
    }
    let mut sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for i in chunks..a.len() {
        sum = a[i].mul_add(b[i], sum);
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc_k) in acc.iter_mut().enumerate() {
            let va = _mm256_loadu_ps(pa.add(i + 8 * k));
            let vb = _mm256_loadu_ps(pb.add(i + 8 * k));
            *acc_k = _mm256_fmadd_ps(va, vb, *acc_k);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
        i += 8;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    let mut sum = _mm_cvtss_f32(s);
    while i < n {
        sum = (*pa.add(i)).mul_add(*pb.add(i), sum);
        i += 1;
    }
    sum
}

/// The fastest dot product this CPU supports.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths");
    #[cfg(target_arch = "x86_64")]
    if active().avx2 {
        // SAFETY: AVX2 and FMA detected; lengths are equal.
        return unsafe { dot_avx2(a, b) };
    }
    dot_scalar(a, b)
}

/// `bias` added to every row of `rows` (rows of `bias.len()` values).
pub fn add_to_rows(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
    }
}

/// `y += a · x`, portable form.
pub fn axpy_scalar(a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi = a.mul_add(xi, *yi);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn axpy_avx2(a: f32, x: &[f32], y: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len();
    let va = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        let p = y.as_mut_ptr().add(i);
        _mm256_storeu_ps(p, _mm256_fmadd_ps(va, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(p)));
        i += 8;
    }
    while i < n {
        y[i] = a.mul_add(x[i], y[i]);
        i += 1;
    }
}

/// `y += a · x` by the fastest form this CPU supports.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy: lengths");
    #[cfg(target_arch = "x86_64")]
    if active().avx2 {
        // SAFETY: AVX2 and FMA detected; lengths are equal.
        return unsafe { axpy_avx2(a, x, y) };
    }
    axpy_scalar(a, x, y)
}

/// One attention head over a run of positions: `scores[j] = scale · q·k_j`, then softmax,
/// then `out = Σ_j scores[j] · v_j`, where position `j`'s key and value are `head_dim`
/// values at `j · stride + offset` of `keys` / `values`, leaving the weights in `scores`:
/// training's attention, whose backward pass reads them (inference uses the tiles of
/// [`super::flash`]). Its share of a training step is a few percent, so it is written
/// once over the three vector kernels rather than fused per instruction set.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    positions: std::ops::Range<usize>,
    stride: usize,
    offset: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let d = q.len();
    assert_eq!(out.len(), d, "attend: shapes");
    scores.clear();
    scores.extend(positions.clone().map(|j| dot(q, &keys[j * stride + offset..][..d]) * scale));
    softmax(scores);
    out.fill(0.0);
    for (j, &p) in positions.zip(scores.iter()) {
        axpy(p, &values[j * stride + offset..][..d], out);
    }
}

/// Softmax in place, by the fastest form this CPU has (the one attention uses).
pub fn softmax(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if active().avx2 {
        // SAFETY: AVX2 and FMA detected.
        return unsafe { softmax_avx2(x) };
    }
    #[cfg(target_arch = "aarch64")]
    neon::softmax(x);
    #[cfg(not(target_arch = "aarch64"))]
    softmax_scalar(x)
}

/// Portable softmax in place (max-subtracted, so any finite input is safe).
pub fn softmax_scalar(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// `e^x` for eight lanes: Cephes' single-precision range reduction and polynomial
/// (relative error ≈ 2e-7), inputs clamped to the range where the result is a normal f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn exp8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3)), _mm256_set1_ps(88.3));
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    let pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let vmax = _mm256_set1_ps(max);
    let n = x.len();
    let mut vsum = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let p = x.as_mut_ptr().add(i);
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), vmax));
        _mm256_storeu_ps(p, e);
        vsum = _mm256_add_ps(vsum, e);
        i += 8;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), vsum);
    let mut sum: f32 = lanes.iter().sum();
    while i < n {
        x[i] = (x[i] - max).exp();
        sum += x[i];
        i += 1;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// The gate of a gated feed-forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// `x · σ(x)` (Llama's SwiGLU).
    Silu,
    /// GELU with the tanh approximation (Gemma).
    GeluTanh,
}

/// √(2/π), of GELU's tanh approximation.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// Both gates are `x · σ(z)`: SiLU with `z = x`, GELU-tanh with `z = 2y`,
/// `y = √(2/π)(x + 0.044715x³)`, since `½(1 + tanh y) = σ(2y)`. Returns `z` and `dz/dx`.
/// Written with σ, not tanh: `1 + tanh y` cancels to rounding noise for large negative `x`.
#[inline]
fn sigmoid_argument(act: Gate, x: f32) -> (f32, f32) {
    match act {
        Gate::Silu => (x, 1.0),
        Gate::GeluTanh => {
            (2.0 * SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x), 2.0 * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x))
        }
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-sigmoid_argument(Gate::Silu, x).0).exp())
}

/// GELU with the tanh approximation, `½x(1 + tanh y)` (see [`sigmoid_argument`]).
pub fn gelu_tanh(x: f32) -> f32 {
    x / (1.0 + (-sigmoid_argument(Gate::GeluTanh, x).0).exp())
}

/// `gate[i] = act(gate[i]) · up[i]`: the feed-forward's elementwise step, which with
/// libm's `exp`/`tanh` per element was a sixth of Gemma's prompt time.
pub fn gated(act: Gate, gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gated: shapes");
    #[cfg(target_arch = "x86_64")]
    if active().avx2 {
        // SAFETY: AVX2 and FMA detected; lengths checked.
        return unsafe { gated_avx2(act, gate, up) };
    }
    #[cfg(target_arch = "aarch64")]
    neon::gated(act, gate, up);
    #[cfg(not(target_arch = "aarch64"))]
    gated_scalar(act, gate, up)
}

/// Portable [`gated`] (and the SIMD forms' tails).
fn gated_scalar(act: Gate, gate: &mut [f32], up: &[f32]) {
    let f = match act {
        Gate::Silu => silu,
        Gate::GeluTanh => gelu_tanh,
    };
    gate.iter_mut().zip(up).for_each(|(g, u)| *g = f(*g) * u);
}

/// Backward of [`gated`] for `y = act(gate) · up`: `dgate += dy · up · act'(gate)` and
/// `dup += dy · act(gate)`, with `act(x) = x · σ(z)` and so
/// `act'(x) = σ(z) + x · σ(z)(1 − σ(z)) · dz/dx`.
pub fn gated_backward(act: Gate, gate: &[f32], up: &[f32], dy: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    let n = gate.len();
    assert!(up.len() == n && dy.len() == n && dgate.len() == n && dup.len() == n, "gated_backward: shapes");
    for i in 0..n {
        let (g, u) = (gate[i], up[i]);
        let (z, dz) = sigmoid_argument(act, g);
        let s = 1.0 / (1.0 + (-z).exp());
        dgate[i] += dy[i] * u * (s + g * s * (1.0 - s) * dz);
        dup[i] += dy[i] * g * s;
    }
}

/// Both gates as `x / (1 + e^(−z))` with [`sigmoid_argument`]'s `z`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gated_avx2(act: Gate, gate: &mut [f32], up: &[f32]) {
    use std::arch::x86_64::*;
    let n = gate.len() / 8 * 8;
    for i in (0..n).step_by(8) {
        let g = gate.as_mut_ptr().add(i);
        let x = _mm256_loadu_ps(g);
        let z = match act {
            Gate::Silu => _mm256_sub_ps(_mm256_setzero_ps(), x),
            Gate::GeluTanh => {
                let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
                let inner = _mm256_fmadd_ps(_mm256_set1_ps(0.044_715), x3, x);
                _mm256_mul_ps(_mm256_set1_ps(-2.0 * SQRT_2_OVER_PI), inner)
            }
        };
        let act_x = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), exp8(z)));
        _mm256_storeu_ps(g, _mm256_mul_ps(act_x, _mm256_loadu_ps(up.as_ptr().add(i))));
    }
    gated_scalar(act, &mut gate[n..], &up[n..]);
}

/// The NEON forms of the exponential-bound kernels: with libm's `exp` per element the
/// gates were a sixth of Gemma's prompt time on x86, and aarch64 would pay the same.
#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::{gated_scalar, Gate, SQRT_2_OVER_PI};

    /// `e^x` for four lanes: the range reduction and polynomial of the x86 `exp8`
    /// (relative error ≈ 2e-7), inputs clamped to where the result is a normal f32.
    #[inline(always)]
    unsafe fn exp4(x: float32x4_t) -> float32x4_t {
        let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3)), vdupq_n_f32(88.3));
        let n = vrndnq_f32(vmulq_n_f32(x, std::f32::consts::LOG2_E));
        let r = vfmsq_f32(x, n, vdupq_n_f32(0.693_359_4));
        let r = vfmsq_f32(r, n, vdupq_n_f32(-2.121_944_4e-4));
        let mut y = vdupq_n_f32(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            y = vfmaq_f32(vdupq_n_f32(c), y, r);
        }
        y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), y, vmulq_f32(r, r));
        let pow2n = vshlq_n_s32::<23>(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)));
        vmulq_f32(y, vreinterpretq_f32_s32(pow2n))
    }

    /// [`super::softmax_scalar`], four exponentials at a time.
    pub(super) fn softmax(x: &mut [f32]) {
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let n = x.len() / 4 * 4;
        // SAFETY: NEON is baseline on aarch64; each load and store covers four values of
        // the first `n`.
        let mut sum = unsafe {
            let mut vsum = vdupq_n_f32(0.0);
            for i in (0..n).step_by(4) {
                let p = x.as_mut_ptr().add(i);
                let e = exp4(vsubq_f32(vld1q_f32(p), vdupq_n_f32(max)));
                vst1q_f32(p, e);
                vsum = vaddq_f32(vsum, e);
            }
            vaddvq_f32(vsum)
        };
        for v in &mut x[n..] {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        x.iter_mut().for_each(|v| *v *= inv);
    }

    /// [`super::gated`], four values at a time: both gates as `x / (1 + e^(−z))`.
    pub(super) fn gated(act: Gate, gate: &mut [f32], up: &[f32]) {
        let n = gate.len() / 4 * 4;
        assert!(up.len() >= n);
        // SAFETY: NEON is baseline on aarch64; each load and store covers four values of
        // the first `n` of both slices.
        unsafe {
            for i in (0..n).step_by(4) {
                let g = gate.as_mut_ptr().add(i);
                let x = vld1q_f32(g);
                let z = match act {
                    Gate::Silu => vnegq_f32(x),
                    Gate::GeluTanh => {
                        let inner = vfmaq_f32(x, vdupq_n_f32(0.044_715), vmulq_f32(vmulq_f32(x, x), x));
                        vmulq_n_f32(inner, -2.0 * SQRT_2_OVER_PI)
                    }
                };
                let act_x = vdivq_f32(x, vaddq_f32(vdupq_n_f32(1.0), exp4(z)));
                vst1q_f32(g, vmulq_f32(act_x, vld1q_f32(up.as_ptr().add(i))));
            }
        }
        gated_scalar(act, &mut gate[n..], &up[n..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dispatched forms (SIMD where this CPU has them) against the portable ones.
    #[test]
    fn simd_axpy_and_softmax_match_scalar() {
        for n in [1, 7, 8, 64, 129] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 29 % 53) as f32 - 26.0) / 3.0).collect();
            let (mut a, mut b) = (vec![0.5f32; n], vec![0.5f32; n]);
            axpy(0.37, &x, &mut a);
            axpy_scalar(0.37, &x, &mut b);
            assert_eq!(a, b, "axpy n={n}");
            let (mut s, mut t) = (x.clone(), x.clone());
            softmax(&mut s);
            softmax_scalar(&mut t);
            for (p, q) in s.iter().zip(&t) {
                assert!((p - q).abs() <= 1e-6 + 1e-5 * q, "softmax n={n}: {p} vs {q}");
            }
            assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        // The head over dispatched kernels equals the portable steps.
        let (d, stride, offset) = (8, 24, 8);
        let kv: Vec<f32> = (0..stride * 10).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
        let q: Vec<f32> = (0..d).map(|i| i as f32 / 4.0 - 1.0).collect();
        let (mut scores, mut out) = (Vec::new(), vec![0f32; d]);
        attend(&q, &kv, &kv, 2..9, stride, offset, 0.3, &mut scores, &mut out);
        let mut want_scores: Vec<f32> = (2..9).map(|j| dot_scalar(&q, &kv[j * stride + offset..][..d]) * 0.3).collect();
        softmax_scalar(&mut want_scores);
        let mut want = vec![0f32; d];
        for (j, &p) in (2..9).zip(&want_scores) {
            axpy_scalar(p, &kv[j * stride + offset..][..d], &mut want);
        }
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "attend: {a} vs {b}");
        }
        // Extreme spreads underflow to zero instead of producing NaN.
        let mut wide = vec![0.0, -200.0, 50.0, -1e30, 3.0, 2.0, 1.0, 0.5, 0.25];
        softmax(&mut wide);
        assert!(wide.iter().all(|v| v.is_finite() && *v >= 0.0), "{wide:?}");
    }

    #[test]
    fn gated_activations_match_their_definitions() {
        let x: Vec<f32> = (0..203).map(|i| (i as f32 - 101.0) / 9.0).chain([-100.0, 100.0, 0.0]).collect();
        let up: Vec<f32> = (0..x.len()).map(|i| 1.0 + (i % 5) as f32 * 0.25).collect();
        for (act, f) in [(Gate::Silu, silu as fn(f32) -> f32), (Gate::GeluTanh, gelu_tanh)] {
            let mut got = x.clone();
            gated(act, &mut got, &up);
            for ((&g, &xi), &u) in got.iter().zip(&x).zip(&up) {
                let want = f(xi) * u;
                assert!((g - want).abs() <= 1e-6 + 2e-6 * want.abs(), "{act:?}({xi}) · {u}: {g} vs {want}");
            }
        }
    }

    #[test]
    fn simd_dot_matches_scalar() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for n in [0, 1, 7, 8, 31, 32, 33, 576, 1536, 2049] {
            let a: Vec<f32> = (0..n).map(|_| next()).collect();
            let b: Vec<f32> = (0..n).map(|_| next()).collect();
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            for got in [dot(&a, &b), dot_scalar(&a, &b)] {
                assert!((got as f64 - exact).abs() <= 1e-5 * (n as f64).sqrt().max(1.0), "n={n}: {got} vs {exact}");
            }
        }
    }
}
