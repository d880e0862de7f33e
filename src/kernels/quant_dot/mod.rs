//! Dot products of one quantized weight row with one row of 8-bit activations
//! ([`Q8Block`]s), per weight type: the decode hot path. The SIMD form is chosen once per
//! process from the CPU's features; the scalar form is the reference and the fallback.

/// The K-quants' single-token and [`TILE`]-token forms over shared-scale activations, as
/// `target_feature` wrappers of the calling SIMD module's own `k_quant_shared::<M,
/// FIVE_BITS, T>`, `q6_k_shared_scale::<M, T>` and `tile`, with `$mul` its way of
/// multiplying: the x86 and NEON modules instantiate the same six forms.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! shared_scale_kernels {
    ($mul:ty, $features:literal) => {
        #[target_feature(enable = $features)]
        pub unsafe fn q4_k_shared(w: &[u8], x: &[Q8Block]) -> f32 {
            k_quant_shared::<$mul, false, 1>(w, [x])[0]
        }
        #[target_feature(enable = $features)]
        pub unsafe fn q5_k_shared(w: &[u8], x: &[Q8Block]) -> f32 {
            k_quant_shared::<$mul, true, 1>(w, [x])[0]
        }
        #[target_feature(enable = $features)]
        pub unsafe fn q6_k_shared(w: &[u8], x: &[Q8Block]) -> f32 {
            q6_k_shared_scale::<$mul, 1>(w, [x])[0]
        }
        #[target_feature(enable = $features)]
        pub unsafe fn q4_k_shared_tile(w: &[u8], x: &[Q8Block], stride: usize) -> [f32; TILE] {
            k_quant_shared::<$mul, false, TILE>(w, tile(x, stride))
        }
        #[target_feature(enable = $features)]
        pub unsafe fn q5_k_shared_tile(w: &[u8], x: &[Q8Block], stride: usize) -> [f32; TILE] {
            k_quant_shared::<$mul, true, TILE>(w, tile(x, stride))
        }
        #[target_feature(enable = $features)]
        pub unsafe fn q6_k_shared_tile(w: &[u8], x: &[Q8Block], stride: usize) -> [f32; TILE] {
            q6_k_shared_scale::<$mul, TILE>(w, tile(x, stride))
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;

use super::features::{self, Features};
use super::q8::Q8Block;
use crate::gguf::GgmlDType;

/// A row kernel: `Σ w·x` for weight bytes `w` and the matching activation blocks.
pub type RowDot = fn(&[u8], &[Q8Block]) -> f32;

/// Tokens per multi-token kernel call (prefill): each unpacked weight block is reused
/// this many times.
pub const TILE: usize = 8;

/// A row kernel for [`TILE`] tokens at once: token `t`'s blocks start at `x[t·stride]`.
pub type RowDotTile = fn(&[u8], &[Q8Block], usize) -> [f32; TILE];

/// Tokens per call of a [`RowsKernel`] at most (prefill): each weight chunk it unpacks
/// serves this many tokens. 64 measured 1.5× the speed of 8 on Q4_0 at 2048 × 2048
/// (the unpacking was a third of the time).
pub const ROWS_TILE: usize = 64;

/// The most rows a [`RowsKernel`] takes per call (AVX-512: two groups of eight); callers
/// size their buffers and split their rows by it.
pub const MOST_ROWS: usize = 16;

/// Several consecutive weight rows (`w.len() / row_bytes` of them) against
/// `tokens` (1..=[`ROWS_TILE`]) tokens whose activations are interleaved block by block
/// (block `i` of token `t` at `x[i·tokens + t]`): writes row `r` · token `t` to
/// `out[t·rows + r]`.
pub type RowsDot = fn(w: &[u8], row_bytes: usize, x: &[Q8Block], tokens: usize, out: &mut [f32]);

/// `xq` (`n_tokens` rows of `blocks`) regrouped into tiles of [`ROWS_TILE`] tokens (the
/// last one shorter), each block-major: block `i` of the tile's token `t` at
/// `tile[i·tokens + t]`. A several-row kernel then reads the tile's blocks of one piece
/// as one sequential run instead of 64 streams 2–12 KiB apart (one per token), which the
/// prefetcher cannot follow.
pub fn interleave(xq: &[Q8Block], blocks: usize, n_tokens: usize, tiles: &mut Vec<Q8Block>) {
    tiles.clear();
    tiles.resize(xq.len(), Q8Block::ZERO);
    for (t0, tile) in (0..n_tokens).step_by(ROWS_TILE).zip(tiles.chunks_mut(ROWS_TILE * blocks)) {
        let tokens = ROWS_TILE.min(n_tokens - t0);
        for (t, row) in xq[t0 * blocks..(t0 + tokens) * blocks].chunks_exact(blocks).enumerate() {
            for (i, b) in row.iter().enumerate() {
                tile[i * tokens + t] = *b;
            }
        }
    }
}

/// A kernel that multiplies several rows per pass (one per 32-bit lane: eight with AVX2
/// and NEON, sixteen with AVX-512): each activation load and each block's float work serves every
/// row. A token gets the same bits alone and among others, and a row the same bits
/// whichever rows share its pass.
#[derive(Clone, Copy)]
pub struct RowsKernel {
    /// Rows per call: `w` holds this many, or one interleaved group of eight (the end of
    /// a range that is not a multiple).
    pub rows: usize,
    pub dot: RowsDot,
}

/// The forms of one weight type's kernel: one row at a time for one token and for
/// [`TILE`] tokens (always), and eight rows at a time where the CPU has a kernel over
/// rows re-laid for it.
#[derive(Clone, Copy)]
pub struct Kernel {
    pub one: RowDot,
    pub tile: RowDotTile,
    /// Forms over activations quantized with one scale per super-block
    /// ([`quantize_row_shared`](super::q8::quantize_row_shared)), where that is faster
    /// (K-quants: their sub-block scales then apply in integers).
    pub shared_scale: Option<SharedScale>,
    /// Eight rows at a time over rows interleaved at load
    /// ([`interleave_rows`](super::interleave_rows)), for every token count (decode
    /// included): where the CPU has such a kernel, the model lays these weights out that
    /// way. A token gets the same bits alone and among others. A K-quant's reads
    /// shared-scale activations, as its other forms do.
    pub interleaved: Option<RowsKernel>,
}

/// A K-quant kernel's forms over shared-scale activations: one token (decode) and
/// [`TILE`] tokens, the tile giving each token the bits of the single form.
#[derive(Clone, Copy)]
pub struct SharedScale {
    pub one: RowDot,
    pub tile: RowDotTile,
}

/// The weight types with an 8-bit-activation kernel.
pub const TYPES: [GgmlDType; 10] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// Whether `dtype` has an 8-bit-activation kernel.
pub fn has_kernel(dtype: GgmlDType) -> bool {
    TYPES.contains(&dtype)
}

/// Panics unless `w` holds exactly the weights that `blocks` activation blocks multiply.
/// The SIMD kernels load by these lengths without bounds checks: their safe wrappers
/// below check here, once per row, so no caller can make them read past a buffer. The
/// check is a compare and a branch (the failure path is out of line): +2 % instructions
/// in a 135M model's decode, less at wider rows.
#[inline(always)]
fn check_row(dtype: GgmlDType, w: &[u8], blocks: usize) {
    let per_weight_block = dtype.block_size() / 32;
    if !(blocks.is_multiple_of(per_weight_block) && w.len() == blocks / per_weight_block * dtype.type_size()) {
        lengths_disagree(dtype, w.len(), blocks);
    }
}

/// [`check_row`] for `tokens` activation rows `stride` blocks apart.
#[inline(always)]
fn check_tile(dtype: GgmlDType, w: &[u8], x: &[Q8Block], stride: usize, tokens: usize) {
    check_row(dtype, w, stride);
    if x.len() < tokens * stride {
        lengths_disagree(dtype, x.len(), tokens * stride);
    }
}

#[cold]
#[inline(never)]
fn lengths_disagree(dtype: GgmlDType, have: usize, need: usize) -> ! {
    panic!("quantized dot ({dtype}): the weight bytes and activation blocks disagree ({have} for {need})")
}

/// Panics unless `w` holds exactly `most` rows of `row_bytes` or one interleaved group
/// of them, `x` exactly `tokens` tokens' activations for such a row, and `out` room for
/// every product.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
fn check_rows(dtype: GgmlDType, w: &[u8], row_bytes: usize, most: usize, x: &[Q8Block], tokens: usize, out: &[f32]) {
    let rows = w.len().checked_div(row_bytes).unwrap_or(0);
    if !(rows == most || rows == super::interleave_rows::ROWS) || w.len() != rows * row_bytes {
        lengths_disagree(dtype, w.len(), most * row_bytes);
    }
    if !(1..=ROWS_TILE).contains(&tokens) || out.len() < tokens * rows {
        lengths_disagree(dtype, out.len(), tokens * rows);
    }
    if !x.len().is_multiple_of(tokens) {
        lengths_disagree(dtype, x.len(), tokens);
    }
    check_row(dtype, &w[..row_bytes], x.len() / tokens);
}

/// A [`Kernel`] whose forms call `unsafe` functions of one SIMD module after checking the
/// lengths those functions rely on.
///
/// SAFETY (the expansion's `unsafe` blocks): only expanded where the module's target
/// features were found in the [`Features`] set the caller passes, which is never wider
/// than what the CPU has ([`features::active`]); the lengths are checked first.
macro_rules! checked_kernel {
    ($dtype:ident, $one:path, $tile:path $(; interleaved $n:expr, $rows:path)?) => {
        Kernel {
            one: |w, x| {
                check_row(GgmlDType::$dtype, w, x.len());
                unsafe { $one(w, x) }
            },
            tile: |w, x, s| {
                check_tile(GgmlDType::$dtype, w, x, s, TILE);
                unsafe { $tile(w, x, s) }
            },
            shared_scale: None,
            interleaved: None $(.or(Some(checked_rows!($dtype, $n, $rows))))?,
        }
    };
    // The K-quants: every SIMD form reads shared-scale activations. Per-block activations
    // reach only the portable forms.
    ($dtype:ident; shared $one:path, $tile:path $(; interleaved $n:expr, $rows:path)?) => {{
        let shared = checked_kernel!($dtype, $one, $tile $(; interleaved $n, $rows)?);
        Kernel {
            shared_scale: Some(SharedScale { one: shared.one, tile: shared.tile }),
            interleaved: shared.interleaved,
            ..scalar_kernel(GgmlDType::$dtype).expect("every K-quant has a portable kernel")
        }
    }};
}

/// A [`RowsKernel`] over `$n` rows whose form calls an `unsafe` function after checking
/// the lengths it relies on (SAFETY as for [`checked_kernel`]).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! checked_rows {
    ($dtype:ident, $n:expr, $dot:path) => {
        RowsKernel {
            rows: $n,
            dot: |w, rb, x, tokens, out| {
                check_rows(GgmlDType::$dtype, w, rb, $n, x, tokens, out);
                unsafe { $dot(w, rb, x, tokens, out) }
            },
        }
    };
}

/// The portable kernel for `dtype` (None for types without one).
pub fn scalar_kernel(dtype: GgmlDType) -> Option<Kernel> {
    use GgmlDType::*;
    macro_rules! scalar {
        ($t:ident) => {
            Kernel {
                one: |w, x| {
                    check_row($t, w, x.len());
                    scalar::vec_dot($t, w, x)
                },
                tile: |w, x, s| {
                    check_tile($t, w, x, s, TILE);
                    std::array::from_fn(|t| scalar::vec_dot($t, w, &x[t * s..(t + 1) * s]))
                },
                shared_scale: None,
                interleaved: None,
            }
        };
    }
    Some(match dtype {
        Q4_0 => scalar!(Q4_0),
        Q4_1 => scalar!(Q4_1),
        Q5_0 => scalar!(Q5_0),
        Q5_1 => scalar!(Q5_1),
        Q8_0 => scalar!(Q8_0),
        Q2K => scalar!(Q2K),
        Q3K => scalar!(Q3K),
        Q4K => scalar!(Q4K),
        Q5K => scalar!(Q5K),
        Q6K => scalar!(Q6K),
        _ => return None,
    })
}

/// The checked [`Kernel`] for `$dtype` from a SIMD module (`$m`, one of `avx2`'s or
/// `neon`'s instruction-set variants): both export every form under the same names
/// (`q4_0`, `q4_0_tile`, `q4_0_interleaved`, …, the K-quants' `_shared` forms, `ROWS`).
/// `None` for a type without a kernel.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! simd_kernel {
    ($($m:ident)::+, $dtype:expr) => {{
        use $($m)::+ as k;
        Some(match $dtype {
            GgmlDType::Q4_0 => checked_kernel!(Q4_0, k::q4_0, k::q4_0_tile; interleaved k::ROWS, k::q4_0_interleaved),
            GgmlDType::Q4_1 => checked_kernel!(Q4_1, k::q4_1, k::q4_1_tile; interleaved k::ROWS, k::q4_1_interleaved),
            GgmlDType::Q5_0 => checked_kernel!(Q5_0, k::q5_0, k::q5_0_tile; interleaved k::ROWS, k::q5_0_interleaved),
            GgmlDType::Q5_1 => checked_kernel!(Q5_1, k::q5_1, k::q5_1_tile; interleaved k::ROWS, k::q5_1_interleaved),
            GgmlDType::Q8_0 => checked_kernel!(Q8_0, k::q8_0, k::q8_0_tile; interleaved k::ROWS, k::q8_0_interleaved),
            GgmlDType::Q4K => {
                checked_kernel!(Q4K; shared k::q4_k_shared, k::q4_k_shared_tile; interleaved k::ROWS, k::q4_k_interleaved)
            }
            GgmlDType::Q5K => {
                checked_kernel!(Q5K; shared k::q5_k_shared, k::q5_k_shared_tile; interleaved k::ROWS, k::q5_k_interleaved)
            }
            GgmlDType::Q6K => {
                checked_kernel!(Q6K; shared k::q6_k_shared, k::q6_k_shared_tile; interleaved k::ROWS, k::q6_k_interleaved)
            }
            _ => return None,
        })
    }};
}

/// The AVX2 kernel for `dtype`, its multiplies on VNNI where `f` has it.
#[cfg(target_arch = "x86_64")]
fn x86_kernel(dtype: GgmlDType, f: Features) -> Option<Kernel> {
    if !f.avx2 {
        return None;
    }
    // The 2–3-bit K-quants: shared-scale forms only (no re-laid rows yet), x86 only.
    macro_rules! low_bit {
        ($($m:ident)::+) => {{
            use $($m)::+ as k;
            match dtype {
                GgmlDType::Q2K => return Some(checked_kernel!(Q2K; shared k::q2_k_shared, k::q2_k_shared_tile)),
                GgmlDType::Q3K => return Some(checked_kernel!(Q3K; shared k::q3_k_shared, k::q3_k_shared_tile)),
                _ => {}
            }
        }};
    }
    if f.vnni {
        low_bit!(avx2::vnni);
        simd_kernel!(avx2::vnni, dtype)
    } else {
        low_bit!(avx2::plain);
        simd_kernel!(avx2::plain, dtype)
    }
}

/// The NEON kernel for `dtype`: `sdot` where `f` has it (with `smmla` for token pairs
/// where it has that too), else widening multiplies (NEON itself is part of aarch64).
#[cfg(target_arch = "aarch64")]
fn arm_kernel(dtype: GgmlDType, f: Features) -> Option<Kernel> {
    if f.i8mm {
        simd_kernel!(neon::mmla, dtype)
    } else if f.dotprod {
        simd_kernel!(neon::sdot, dtype)
    } else {
        simd_kernel!(neon::widen, dtype)
    }
}

/// The fastest kernel for `dtype` that feature set `f` allows.
pub fn kernel_for(dtype: GgmlDType, f: Features) -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = x86_kernel(dtype, f) {
        return Some(k);
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(k) = arm_kernel(dtype, f) {
        return Some(k);
    }
    let _ = f;
    scalar_kernel(dtype)
}

/// The fastest kernel for `dtype` on this thread's CPU features.
pub fn kernel(dtype: GgmlDType) -> Option<Kernel> {
    kernel_for(dtype, features::active())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::dequantize;
    use crate::kernels::q8::{dequantize_row, quantize_row, quantize_row_shared};
    use crate::rng::Rng;
    use crate::synth::random_blocks;

    fn activations(n: usize, rng: &mut Rng) -> (Vec<f32>, Vec<Q8Block>) {
        let x: Vec<f32> = (0..n).map(|_| (rng.next_f64() as f32 - 0.5) * 4.0).collect();
        let mut q = vec![Q8Block::ZERO; n / 32];
        quantize_row(&x, &mut q);
        (x, q)
    }

    /// Every SIMD form this CPU can run, by the feature set that selects it (one that
    /// selects nothing new falls back to a form already listed, which is harmless).
    fn simd_variants() -> Vec<(&'static str, Features)> {
        let detected = Features::detected();
        let only = |f: Features| f.and(detected);
        if cfg!(target_arch = "aarch64") {
            let dotprod = Features { dotprod: true, ..Features::PORTABLE };
            vec![
                ("neon", Features::PORTABLE),
                ("neon+dotprod", only(dotprod)),
                ("neon+i8mm", only(Features { i8mm: true, ..dotprod })),
            ]
        } else {
            vec![
                ("avx2", only(Features { avx2: true, ..Features::PORTABLE })),
                ("avx2+vnni", only(Features { avx2: true, vnni: true, ..Features::PORTABLE })),
            ]
        }
    }

    /// Whether this CPU runs SIMD kernels (NEON always does on aarch64), so that a test
    /// of them that found none to check has failed.
    fn has_simd_kernels() -> bool {
        cfg!(target_arch = "aarch64") || (cfg!(target_arch = "x86_64") && Features::detected().avx2)
    }

    fn refused<R>(f: impl FnOnce() -> R) -> bool {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err()
    }

    /// Every form of every kernel, given a weight row and activations whose lengths
    /// disagree, panics instead of reading past a buffer or truncating the sum.
    #[test]
    fn kernels_refuse_lengths_that_disagree() {
        let mut rng = Rng::new(29);
        let mut sets: Vec<Features> = simd_variants().iter().map(|v| v.1).collect();
        sets.extend([Features::PORTABLE, Features::detected()]);
        for dtype in TYPES {
            // As many rows as the widest several-row kernel takes.
            let w = random_blocks(dtype, MOST_ROWS * 512, &mut rng);
            let rb = w.len() / MOST_ROWS;
            let (_, x) = activations((ROWS_TILE + 1) * 512, &mut rng);
            let long_row = &w[..2 * rb];
            let (short_x, long_x) = (&x[..8], &x[..32]);
            for &f in &sets {
                let k = kernel_for(dtype, f).unwrap();
                assert!(refused(|| (k.one)(long_row, short_x)), "{dtype} {f:?}: one, short x");
                assert!(refused(|| (k.one)(&w[..rb], long_x)), "{dtype} {f:?}: one, long x");
                assert!(refused(|| (k.tile)(&w[..rb], &x[..16 * TILE - 1], 16)), "{dtype} {f:?}: tile");
                if let Some(shared) = k.shared_scale {
                    assert!(refused(|| (shared.one)(long_row, short_x)), "{dtype} {f:?}: shared");
                    assert!(refused(|| (shared.tile)(&w[..rb], &x[..16 * TILE - 1], 16)), "{dtype} {f:?}: shared tile");
                }
                if let Some(rows) = k.interleaved {
                    let (n, mut out) = (rows.rows, vec![0f32; MOST_ROWS * (ROWS_TILE + 1)]);
                    let mut dot = |w: &[u8], x: &[Q8Block], tokens: usize, out_len: usize| {
                        refused(|| (rows.dot)(w, rb, x, tokens, &mut out[..out_len]))
                    };
                    assert!(dot(&w[..(n - 1) * rb], &x[..16], 1, n), "{dtype} {f:?}: rows, short w");
                    assert!(dot(&w[..n * rb - 1], &x[..16], 1, n), "{dtype} {f:?}: rows, ragged w");
                    assert!(dot(&w[..12 * rb], &x[..16], 1, 12), "{dtype} {f:?}: rows, not a group");
                    let w = &w[..n * rb];
                    assert!(dot(w, &x[..8], 1, n), "{dtype} {f:?}: rows, short x");
                    assert!(dot(w, &x[..16 * 3 - 1], 3, 3 * n), "{dtype} {f:?}: rows, ragged tile");
                    assert!(dot(w, &x[..16 * 3 - 3], 3, 3 * n), "{dtype} {f:?}: rows, short tile");
                    assert!(dot(w, &x[..16 * 3], 3, 3 * n - 1), "{dtype} {f:?}: rows, short out");
                    assert!(
                        dot(w, &x[..16 * (ROWS_TILE + 1)], ROWS_TILE + 1, n * (ROWS_TILE + 1)),
                        "{dtype} {f:?}: tokens"
                    );
                    assert!(dot(w, &x[..16], 0, n), "{dtype} {f:?}: no tokens");
                }
            }
        }
    }

    #[test]
    fn scalar_kernels_equal_dequantized_products() {
        let mut rng = Rng::new(21);
        for dtype in TYPES {
            let n = 512;
            let w = random_blocks(dtype, n, &mut rng);
            let (_, xq) = activations(n, &mut rng);
            let (mut wf, mut xf) = (vec![0f32; n], vec![0f32; n]);
            dequantize(dtype, &w, &mut wf);
            dequantize_row(&xq, &mut xf);
            let want: f64 = wf.iter().zip(&xf).map(|(a, b)| *a as f64 * *b as f64).sum();
            let got = (scalar_kernel(dtype).unwrap().one)(&w, &xq) as f64;
            let scale: f64 = wf.iter().zip(&xf).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
            assert!((got - want).abs() <= 1e-5 * scale.max(1e-3), "{dtype}: {got} vs {want}");
        }
    }

    /// Row `row` times activations `xt` by the scalar kernel, and the tolerance its
    /// rounding gets: it scales with the terms, not with their (possibly cancelling) sum.
    fn scalar_reference(dtype: GgmlDType, row: &[u8], xt: &[Q8Block]) -> (f32, f32) {
        let n = xt.len() * 32;
        let (mut wf, mut xf) = (vec![0f32; n], vec![0f32; n]);
        dequantize(dtype, row, &mut wf);
        dequantize_row(xt, &mut xf);
        let magnitude: f32 = wf.iter().zip(&xf).map(|(a, b)| (a * b).abs()).sum();
        ((scalar_kernel(dtype).unwrap().one)(row, xt), 1e-5 * magnitude.max(1e-3))
    }

    /// Tokens per call in the tests of the several-row kernels: not a whole number of
    /// any unrolling.
    const RAGGED_TILE: usize = 11;

    /// A several-row kernel on rows `w` and the tokens `xq` (`blocks` apart): every row
    /// and token against the scalar kernel on `rows` (the same rows in the file's layout),
    /// each token bit for bit against itself alone, and the first group of eight rows
    /// passed on its own bit for bit against the same rows among all.
    fn check_rows_kernel(
        dtype: GgmlDType,
        label: &str,
        kernel: RowsKernel,
        w: &[u8],
        rows: &[u8],
        xq: &[Q8Block],
        blocks: usize,
    ) {
        let (n_rows, tokens) = (kernel.rows, xq.len() / blocks);
        let rb = w.len() / n_rows;
        let mut interleaved = Vec::new();
        interleave(xq, blocks, tokens, &mut interleaved);
        let mut tiled = vec![0f32; tokens * n_rows];
        (kernel.dot)(w, rb, &interleaved, tokens, &mut tiled);
        let group = crate::kernels::interleave_rows::ROWS;
        let mut first_group = vec![0f32; tokens * group];
        (kernel.dot)(&w[..group * rb], rb, &interleaved, tokens, &mut first_group);
        for t in 0..tokens {
            for r in 0..group {
                let (alone, among) = (first_group[t * group + r], tiled[t * n_rows + r]);
                assert_eq!(alone.to_bits(), among.to_bits(), "{dtype} {label} token {t} row {r}: group alone");
            }
            let xt = &xq[t * blocks..(t + 1) * blocks];
            let mut alone = vec![0f32; n_rows];
            (kernel.dot)(w, rb, xt, 1, &mut alone);
            for r in 0..n_rows {
                let (want, tol) = scalar_reference(dtype, &rows[r * rb..(r + 1) * rb], xt);
                let got = alone[r];
                assert!((got - want).abs() <= tol, "{dtype} {label} token {t} row {r}: {got} vs {want}");
                let tile = tiled[t * n_rows + r];
                assert_eq!(tile.to_bits(), got.to_bits(), "{dtype} {label} token {t} row {r}: tile vs alone");
            }
        }
    }

    /// The kernels over interleaved rows ([`Kernel::interleaved`]) against the scalar
    /// kernel on the rows before interleaving, each token bit for bit alone and in a tile.
    /// Widths of an odd number of blocks included.
    #[test]
    fn interleaved_kernels_equal_scalar_kernels() {
        let mut rng = Rng::new(31);
        let mut checked = 0;
        for (dtype, (name, f)) in TYPES.into_iter().flat_map(|d| simd_variants().into_iter().map(move |v| (d, v))) {
            let Some(k) = kernel_for(dtype, f) else { continue };
            let Some(kernel) = k.interleaved else { continue };
            // K-quants: over shared-scale activations, as their other SIMD forms.
            let quantize = if k.shared_scale.is_some() { quantize_row_shared } else { quantize_row };
            let widths = if dtype.block_size() == 256 { [256, 512, 256 * 7] } else { [256, 576, 256 * 7 + 96] };
            for n in widths {
                let rows = random_blocks(dtype, kernel.rows * n, &mut rng);
                let w = crate::kernels::interleave_rows::interleave(dtype, &rows, rows.len() / kernel.rows);
                let blocks = n / 32;
                let (xf, _) = activations(RAGGED_TILE * n, &mut rng);
                let mut xq = vec![Q8Block::ZERO; RAGGED_TILE * blocks];
                for (q, xt) in xq.chunks_exact_mut(blocks).zip(xf.chunks_exact(n)) {
                    quantize(xt, q);
                }
                check_rows_kernel(dtype, &format!("{name} interleaved n={n}"), kernel, &w, &rows, &xq, blocks);
                checked += 1;
            }
        }
        assert!(!has_simd_kernels() || checked > 0, "no kernel ran");
    }

    /// The forms over shared-scale activations: the single-token form against the scalar
    /// kernel on the same activations, the tile form bit for bit against it.
    #[test]
    fn shared_scale_kernels_equal_scalar_kernels() {
        let mut rng = Rng::new(23);
        let mut checked = 0;
        for dtype in [GgmlDType::Q2K, GgmlDType::Q3K, GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K] {
            let variants: Vec<_> = simd_variants().into_iter().map(|(name, f)| (name, kernel_for(dtype, f))).collect();
            for n in [256, 512, 256 * 7] {
                let rows = random_blocks(dtype, 8 * n, &mut rng);
                let rb = rows.len() / 8;
                let w = &rows[..rb];
                let blocks = n / 32;
                let tokens = TILE.max(RAGGED_TILE);
                let x: Vec<f32> = (0..tokens * n).map(|_| (rng.next_f64() as f32 - 0.5) * 4.0).collect();
                let mut xq = vec![Q8Block::ZERO; tokens * blocks];
                for (q, xt) in xq.chunks_exact_mut(blocks).zip(x.chunks_exact(n)) {
                    crate::kernels::q8::quantize_row_shared(xt, q);
                }
                for t in 0..TILE {
                    let xt = &xq[t * blocks..(t + 1) * blocks];
                    let (want, tol) = scalar_reference(dtype, w, xt);
                    for (name, k) in &variants {
                        let Some(shared) = k.and_then(|k| k.shared_scale) else { continue };
                        let got = (shared.one)(w, xt);
                        assert!((got - want).abs() <= tol, "{dtype} n={n} {name} token {t}: {got} vs {want}");
                        let tiled = (shared.tile)(w, &xq, blocks);
                        assert_eq!(tiled[t].to_bits(), got.to_bits(), "{dtype} n={n} {name} token {t}: tile vs one");
                        checked += 1;
                    }
                }
            }
        }
        assert!(!has_simd_kernels() || checked > 0, "no shared-scale kernel ran");
    }

    /// Every SIMD variant this CPU can run, against the scalar kernel, on odd and even
    /// block counts (the kernels unroll by two).
    #[test]
    #[cfg_attr(
        miri,
        ignore = "Miri has no SIMD features: it would compare the portable kernels with themselves, for an hour"
    )]
    fn simd_kernels_equal_scalar_kernels() {
        let mut rng = Rng::new(5);
        let mut variants = simd_variants();
        variants.push(("portable", Features::PORTABLE));
        for dtype in TYPES {
            for n in [256, 512, 2048, 256 * 7] {
                let w = random_blocks(dtype, n, &mut rng);
                let (_, xq) = activations(n, &mut rng);
                let (want, tol) = scalar_reference(dtype, &w, &xq);
                // The tile form sees the same row as token 2 of 4 (others: shifted copies).
                let blocks = n / 32;
                let mut tile_x = Vec::with_capacity(TILE * blocks);
                for t in 0..TILE {
                    tile_x.extend(xq.iter().cycle().skip((t + 2) % TILE).take(blocks));
                }
                let tile_want: Vec<f32> = (0..TILE)
                    .map(|t| (scalar_kernel(dtype).unwrap().one)(&w, &tile_x[t * blocks..(t + 1) * blocks]))
                    .collect();
                for &(name, f) in &variants {
                    let Some(k) = kernel_for(dtype, f) else { continue };
                    let got = (k.one)(&w, &xq);
                    assert!((got - want).abs() <= tol, "{dtype} n={n} {name}: {got} vs {want}");
                    let tiled = (k.tile)(&w, &tile_x, blocks);
                    for t in 0..TILE {
                        // Bit for bit: decode-exact batches (speculative decoding) rely on it.
                        let alone = (k.one)(&w, &tile_x[t * blocks..(t + 1) * blocks]);
                        assert_eq!(tiled[t].to_bits(), alone.to_bits(), "{dtype} n={n} {name} tile token {t} vs one");
                        assert!(
                            (tiled[t] - tile_want[t]).abs() <= 4.0 * tol,
                            "{dtype} n={n} {name} tile token {t}: {} vs {}",
                            tiled[t],
                            tile_want[t]
                        );
                    }
                }
            }
        }
    }
}
