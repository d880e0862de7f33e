//! f32 matrix products for training, where activations stay f32 so gradients are exact
//! with respect to the (frozen, dequantized) weights.
//!
//! Two shapes with row-major operands and explicit leading dimensions: `C (+)= A · B`
//! ([`gemm_nn`]: the AVX2 micro-kernel keeps a 4 × 16 tile of C in eight registers while
//! streaming a column of A and a row of B) and `C (+)= A · Bᵀ` ([`gemm_nt`]: dot products
//! of rows, a 4 × 2 tile of 8-lane partial sums), so neither operand is ever transposed.

/// Rows and columns of C held in registers by the micro-kernel.
#[cfg(target_arch = "x86_64")]
const MR: usize = 4;
#[cfg(target_arch = "x86_64")]
const NR: usize = 16;

/// Operand views: `data[i * ld + j]` is element (i, j).
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub ld: usize,
}

/// `C[m×n] = (accumulate ? C : 0) + A[m×k] · B[k×n]`, on the calling thread.
#[allow(clippy::too_many_arguments)]
pub fn gemm_nn(m: usize, n: usize, k: usize, a: Mat, b: Mat, c: &mut [f32], ldc: usize, accumulate: bool) {
    gemm(false, m, n, k, a, b, c, ldc, accumulate);
}

/// `C[m×n] = (accumulate ? C : 0) + A[m×k] · B[n×k]ᵀ`, on the calling thread.
#[allow(clippy::too_many_arguments)]
pub fn gemm_nt(m: usize, n: usize, k: usize, a: Mat, b: Mat, c: &mut [f32], ldc: usize, accumulate: bool) {
    gemm(true, m, n, k, a, b, c, ldc, accumulate);
}

#[allow(clippy::too_many_arguments)]
fn gemm(bt: bool, m: usize, n: usize, k: usize, a: Mat, b: Mat, c: &mut [f32], ldc: usize, accumulate: bool) {
    let (b_rows, b_cols) = if bt { (n, k) } else { (k, n) };
    assert!(m == 0 || a.data.len() >= (m - 1) * a.ld + k, "gemm: A too short");
    assert!(b_rows == 0 || b.data.len() >= (b_rows - 1) * b.ld + b_cols, "gemm: B too short");
    assert!(m == 0 || c.len() >= (m - 1) * ldc + n, "gemm: C too short");
    if !accumulate {
        for i in 0..m {
            c[i * ldc..i * ldc + n].fill(0.0);
        }
    }
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if super::features::active().avx2 {
        // SAFETY: the features were detected; bounds were asserted above.
        unsafe { gemm_avx2(bt, m, n, k, a, b, c, ldc) };
        return;
    }
    gemm_scalar(bt, 0..m, 0..n, k, a, b, c, ldc);
}

/// The reference: `C[i, j] += Σ_p A[i, p] · B[p, j]` (or `B[j, p]` with `bt`) over the
/// given rows and columns.
#[allow(clippy::too_many_arguments)]
fn gemm_scalar(
    bt: bool,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    ldc: usize,
) {
    for i in rows {
        let ar = &a.data[i * a.ld..i * a.ld + k];
        for j in cols.clone() {
            c[i * ldc + j] += if bt {
                crate::kernels::dot::dot(ar, &b.data[j * b.ld..j * b.ld + k])
            } else {
                ar.iter().enumerate().map(|(p, &av)| av * b.data[p * b.ld + j]).sum::<f32>()
            };
        }
    }
}

/// Row bands of MR through the register-tiled kernels, then single rows.
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_avx2(bt: bool, m: usize, n: usize, k: usize, a: Mat, b: Mat, c: &mut [f32], ldc: usize) {
    let m_main = m / MR * MR;
    for i0 in (0..m_main).step_by(MR) {
        if bt {
            nt_rows::<MR>(i0, n, k, a, b, c, ldc);
        } else {
            nn_rows::<MR>(i0, n, k, a, b, c, ldc);
        }
    }
    for i0 in m_main..m {
        if bt {
            nt_rows::<1>(i0, n, k, a, b, c, ldc);
        } else {
            nn_rows::<1>(i0, n, k, a, b, c, ldc);
        }
    }
}

/// Rows `i0..i0 + R` of C: register tiles of R × 16, then the column remainder.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn nn_rows<const R: usize>(i0: usize, n: usize, k: usize, a: Mat, b: Mat, c: &mut [f32], ldc: usize) {
    use std::arch::x86_64::*;
    let n_main = n / NR * NR;
    let (ap, bp, cp) = (a.data.as_ptr(), b.data.as_ptr(), c.as_mut_ptr());
    for j0 in (0..n_main).step_by(NR) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for p in 0..k {
            let brow = bp.add(p * b.ld + j0);
            let (b0, b1) = (_mm256_loadu_ps(brow), _mm256_loadu_ps(brow.add(8)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add((i0 + r) * a.ld + p));
                acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let crow = cp.add((i0 + r) * ldc + j0);
            _mm256_storeu_ps(crow, _mm256_add_ps(_mm256_loadu_ps(crow), acc[0]));
            _mm256_storeu_ps(crow.add(8), _mm256_add_ps(_mm256_loadu_ps(crow.add(8)), acc[1]));
        }
    }
    gemm_scalar(false, i0..i0 + R, n_main..n, k, a, b, c, ldc);
}

/// Rows `i0..i0 + R` of C = A · Bᵀ: tiles of R × 2 dot products, 8 lanes at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn nt_rows<const R: usize>(i0: usize, n: usize, k: usize, a: Mat, b: Mat, c: &mut [f32], ldc: usize) {
    use std::arch::x86_64::*;
    let hsum = |v: __m256| {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    };
    let (n_main, k_main) = (n / 2 * 2, k / 8 * 8);
    let (ap, bp) = (a.data.as_ptr(), b.data.as_ptr());
    for j0 in (0..n_main).step_by(2) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for p in (0..k_main).step_by(8) {
            let b0 = _mm256_loadu_ps(bp.add(j0 * b.ld + p));
            let b1 = _mm256_loadu_ps(bp.add((j0 + 1) * b.ld + p));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_loadu_ps(ap.add((i0 + r) * a.ld + p));
                acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (s, &v) in acc.iter().enumerate() {
                let (i, j) = (i0 + r, j0 + s);
                let mut v = hsum(v);
                for p in k_main..k {
                    v += a.data[i * a.ld + p] * b.data[j * b.ld + p];
                }
                c[i * ldc + j] += v;
            }
        }
    }
    gemm_scalar(true, i0..i0 + R, n_main..n, k, a, b, c, ldc);
}

/// [`gemm_nn`] / [`gemm_nt`] with C's rows shared out over the current thread pool, in
/// bands of a multiple of 4 rows; each band is computed exactly as the single-threaded
/// call would, so the result does not depend on the thread count.
#[allow(clippy::too_many_arguments)]
pub fn par_gemm(
    transposed_b: bool,
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let f = if transposed_b { gemm_nt } else { gemm_nn };
    let band = (m / (4 * crate::threads::current_num_threads())).next_multiple_of(4).max(8);
    if m <= band || m * n * k < 1 << 16 {
        return f(m, n, k, a, b, c, ldc, accumulate);
    }
    let len = c.len();
    let shared = crate::threads::DisjointMut::new(c);
    crate::threads::for_each_index(m.div_ceil(band), |i| {
        let i0 = i * band;
        let rows = band.min(m - i0);
        let a = Mat { data: &a.data[i0 * a.ld..], ld: a.ld };
        // SAFETY: this task alone owns rows i0..i0+rows of C, which end where the next
        // band's begin.
        let c = unsafe { shared.slice(i0 * ldc, (len - i0 * ldc).min(rows * ldc)) };
        f(rows, n, k, a, b, c, ldc, accumulate);
    });
}

/// `out[j, i] = x[i, j]` for a `rows × cols` matrix.
pub fn transpose(x: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    assert!(x.len() >= rows * cols && out.len() >= rows * cols, "transpose: shapes");
    const B: usize = 16;
    for i0 in (0..rows).step_by(B) {
        for j0 in (0..cols).step_by(B) {
            for i in i0..(i0 + B).min(rows) {
                for j in j0..(j0 + B).min(cols) {
                    out[j * rows + i] = x[i * cols + j];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| rng.next_f64() as f32 - 0.5).collect()
    }

    #[test]
    fn simd_gemm_matches_the_scalar_reference_with_strides_and_edges() {
        let mut rng = Rng::new(5);
        for (m, n, k) in [(1, 1, 1), (4, 16, 8), (7, 37, 19), (9, 48, 64), (13, 5, 3)] {
            let (lda, ldb, ldc) = (k + 3, n + 2, n + 5);
            let a = random(m * lda, &mut rng);
            let b = random(k * ldb, &mut rng);
            let init = random(m * ldc, &mut rng);
            for accumulate in [false, true] {
                let mut c = init.clone();
                gemm_nn(m, n, k, Mat { data: &a, ld: lda }, Mat { data: &b, ld: ldb }, &mut c, ldc, accumulate);
                let mut expect = init.clone();
                if !accumulate {
                    for i in 0..m {
                        expect[i * ldc..i * ldc + n].fill(0.0);
                    }
                }
                gemm_scalar(
                    false,
                    0..m,
                    0..n,
                    k,
                    Mat { data: &a, ld: lda },
                    Mat { data: &b, ld: ldb },
                    &mut expect,
                    ldc,
                );
                for (x, y) in c.iter().zip(&expect) {
                    assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{m}x{n}x{k}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn gemm_nt_matches_gemm_nn_on_the_transpose() {
        let mut rng = Rng::new(6);
        for (m, n, k) in [(1, 1, 1), (4, 2, 8), (7, 5, 19), (9, 66, 64), (13, 3, 3)] {
            let (lda, ldb, ldc) = (k + 1, k + 3, n + 2);
            let a = random(m * lda, &mut rng);
            let b = random(n * ldb, &mut rng);
            let mut bt = vec![0f32; k * n];
            for j in 0..n {
                for p in 0..k {
                    bt[p * n + j] = b[j * ldb + p];
                }
            }
            let init = random(m * ldc, &mut rng);
            let mut c = init.clone();
            gemm_nt(m, n, k, Mat { data: &a, ld: lda }, Mat { data: &b, ld: ldb }, &mut c, ldc, true);
            let mut expect = init.clone();
            gemm_scalar(false, 0..m, 0..n, k, Mat { data: &a, ld: lda }, Mat { data: &bt, ld: n }, &mut expect, ldc);
            for (x, y) in c.iter().zip(&expect) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{m}x{n}x{k}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn transpose_round_trips() {
        let x: Vec<f32> = (0..35).map(|i| i as f32).collect();
        let mut t = vec![0f32; 35];
        transpose(&x, 5, 7, &mut t);
        assert_eq!((t[0], t[5], t[1]), (0.0, 1.0, 7.0));
        let mut back = vec![0f32; 35];
        transpose(&t, 7, 5, &mut back);
        assert_eq!(back, x);
    }
}
