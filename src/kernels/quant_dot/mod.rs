//! Dot products of one quantized weight row with one row of 8-bit activations
//! ([`Q8Block`]s), per weight type: the decode hot path. The SIMD form is chosen once per
//! process from the CPU's features; the scalar form is the reference and the fallback.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;

use super::q8::Q8Block;
use crate::gguf::GgmlDType;

/// A row kernel: `Σ w·x` for weight bytes `w` and the matching activation blocks.
pub type RowDot = fn(&[u8], &[Q8Block]) -> f32;

/// Tokens per multi-token kernel call (prefill): each unpacked weight block is reused
/// this many times.
pub const TILE: usize = 8;

/// A row kernel for [`TILE`] tokens at once: token `t`'s blocks start at `x[t·stride]`.
pub type RowDotTile = fn(&[u8], &[Q8Block], usize) -> [f32; TILE];

/// Weight rows per call of a [`QuadKernel`].
pub const QUAD_ROWS: usize = 4;

/// Tokens per call of a [`QuadKernel`]'s tile form (prefill).
pub const QUAD_TILE: usize = 8;

/// Four consecutive weight rows (`row_bytes` apart from the start of `w`) against one
/// token's activation blocks.
pub type QuadDot = fn(&[u8], usize, &[Q8Block]) -> [f32; QUAD_ROWS];

/// Four rows against [`QUAD_TILE`] tokens, token `t`'s blocks at `x[t·stride]`:
/// `result[t][r]`.
pub type QuadDotTile = fn(&[u8], usize, &[Q8Block], usize) -> [[f32; QUAD_ROWS]; QUAD_TILE];

/// A kernel that multiplies several rows per pass (AVX-512 VNNI): each activation load
/// and each block's float work serves four rows (prefill). Gives the same bits for a
/// token alone and in a tile.
#[derive(Clone, Copy)]
pub struct QuadKernel {
    pub one: QuadDot,
    pub tile: QuadDotTile,
}

/// The forms of one weight type's kernel: one row at a time (always; decode), and four
/// rows at a time where the CPU has a kernel for it (then prefill takes rows four by four
/// and only a remainder uses `one`/`tile`).
#[derive(Clone, Copy)]
pub struct Kernel {
    pub one: RowDot,
    pub tile: RowDotTile,
    pub quad: Option<QuadKernel>,
    /// A single-token form over activations quantized with one scale per super-block
    /// ([`quantize_row_shared`](super::q8::quantize_row_shared)), where that is faster
    /// (K-quants: their sub-block scales then apply in integers); decode uses it.
    pub shared_scale_one: Option<RowDot>,
}

/// Weight types with an 8-bit-activation kernel.
pub fn has_kernel(dtype: GgmlDType) -> bool {
    use GgmlDType::*;
    matches!(dtype, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4K | Q5K | Q6K)
}

/// The portable kernel for `dtype` (None for types without one).
pub fn scalar_kernel(dtype: GgmlDType) -> Option<Kernel> {
    use GgmlDType::*;
    macro_rules! scalar {
        ($t:ident) => {
            Kernel {
                one: |w, x| scalar::vec_dot($t, w, x),
                tile: |w, x, s| std::array::from_fn(|t| scalar::vec_dot($t, w, &x[t * s..(t + 1) * s])),
                quad: None,
                shared_scale_one: None,
            }
        };
    }
    Some(match dtype {
        Q4_0 => scalar!(Q4_0),
        Q4_1 => scalar!(Q4_1),
        Q5_0 => scalar!(Q5_0),
        Q5_1 => scalar!(Q5_1),
        Q8_0 => scalar!(Q8_0),
        Q4K => scalar!(Q4K),
        Q5K => scalar!(Q5K),
        Q6K => scalar!(Q6K),
        _ => return None,
    })
}

/// Whether the AVX2 kernels can run here.
pub fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has 256-bit VNNI (`vpdpbusd` on ymm registers).
pub fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2_available()
            && std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The x86 kernel for `dtype`: VNNI where the CPU has it, else AVX2; `None` without
/// AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
pub fn x86_kernel(dtype: GgmlDType, allow_vnni: bool) -> Option<Kernel> {
    use GgmlDType::*;
    if !avx2_available() {
        return None;
    }
    macro_rules! pick {
        ($m:ident) => {
            // SAFETY (each closure): the module's target features were detected above;
            // callers pass the activation blocks matching `w` (`matmul` checks shapes).
            match dtype {
                Q4_0 => Kernel {
                    one: |w, x| unsafe { avx2::$m::q4_0(w, x) },
                    tile: |w, x, s| unsafe { avx2::$m::q4_0_tile(w, x, s) },
                    quad: None,
                    shared_scale_one: None,
                },
                Q4_1 => Kernel {
                    one: |w, x| unsafe { avx2::$m::q4_1(w, x) },
                    tile: |w, x, s| unsafe { avx2::$m::q4_1_tile(w, x, s) },
                    quad: None,
                    shared_scale_one: None,
                },
                Q5_0 => Kernel {
                    one: |w, x| unsafe { avx2::$m::q5_0(w, x) },
                    tile: |w, x, s| unsafe { avx2::$m::q5_0_tile(w, x, s) },
                    quad: None,
                    shared_scale_one: None,
                },
                Q5_1 => Kernel {
                    one: |w, x| unsafe { avx2::$m::q5_1(w, x) },
                    tile: |w, x, s| unsafe { avx2::$m::q5_1_tile(w, x, s) },
                    quad: None,
                    shared_scale_one: None,
                },
                Q8_0 => Kernel {
                    one: |w, x| unsafe { avx2::$m::q8_0(w, x) },
                    tile: |w, x, s| unsafe { avx2::$m::q8_0_tile(w, x, s) },
                    quad: None,
                    shared_scale_one: None,
                },
                Q4K => Kernel {
                    one: |w, x| unsafe { avx2::$m::q4_k(w, x) },
                    tile: |w, x, s| unsafe { avx2::$m::q4_k_tile(w, x, s) },
                    quad: None,
                    shared_scale_one: Some(|w, x| unsafe { avx2::$m::q4_k_shared(w, x) }),
                },
                Q5K => Kernel {
                    one: |w, x| unsafe { avx2::$m::q5_k(w, x) },
                    tile: |w, x, s| unsafe { avx2::$m::q5_k_tile(w, x, s) },
                    quad: None,
                    shared_scale_one: Some(|w, x| unsafe { avx2::$m::q5_k_shared(w, x) }),
                },
                Q6K => Kernel {
                    one: |w, x| unsafe { avx2::$m::q6_k(w, x) },
                    tile: |w, x, s| unsafe { avx2::$m::q6_k_tile(w, x, s) },
                    quad: None,
                    shared_scale_one: Some(|w, x| unsafe { avx2::$m::q6_k_shared(w, x) }),
                },
                _ => return None,
            }
        };
    }
    Some(if allow_vnni && vnni_available() { pick!(vnni) } else { pick!(plain) })
}

/// Whether the CPU has the AVX-512 subsets the four-row kernels use.
pub fn avx512_vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        vnni_available()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The four-row AVX-512 kernel for `dtype`, if there is one and the CPU can run it.
#[cfg(target_arch = "x86_64")]
pub fn x86_quad_kernel(dtype: GgmlDType) -> Option<QuadKernel> {
    use GgmlDType::*;
    if !avx512_vnni_available() {
        return None;
    }
    macro_rules! quad {
        ($one:ident, $tile:ident) => {
            // SAFETY (each closure): the features were detected above; the kernels check
            // the slice lengths they rely on.
            QuadKernel {
                one: |w, rb, x| unsafe { avx512::$one(w, rb, x) },
                tile: |w, rb, x, s| unsafe { avx512::$tile(w, rb, x, s) },
            }
        };
    }
    Some(match dtype {
        Q4_0 => quad!(q4_0, q4_0_tile),
        Q4_1 => quad!(q4_1, q4_1_tile),
        Q5_0 => quad!(q5_0, q5_0_tile),
        Q5_1 => quad!(q5_1, q5_1_tile),
        Q8_0 => quad!(q8_0, q8_0_tile),
        Q4K => quad!(q4_k, q4_k_tile),
        Q5K => quad!(q5_k, q5_k_tile),
        Q6K => quad!(q6_k, q6_k_tile),
        _ => return None,
    })
}

/// Whether the CPU has the Armv8.2 dot-product extension (`sdot`).
pub fn dotprod_available() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

/// The NEON kernel for `dtype` (32-value block formats): `sdot` where the CPU has it
/// and `allow_dotprod`, else widening multiplies.
#[cfg(target_arch = "aarch64")]
pub fn arm_kernel(dtype: GgmlDType, allow_dotprod: bool) -> Option<Kernel> {
    use GgmlDType::*;
    macro_rules! pick {
        ($m:ident) => {
            // SAFETY (each closure): NEON is part of aarch64, `sdot` was detected (see
            // below); callers pass the activation blocks matching `w`.
            match dtype {
                Q4_0 => (|w, x| unsafe { neon::$m::q4_0(w, x) }, |w, x, s| unsafe { neon::$m::q4_0_tile(w, x, s) }),
                Q4_1 => (|w, x| unsafe { neon::$m::q4_1(w, x) }, |w, x, s| unsafe { neon::$m::q4_1_tile(w, x, s) }),
                Q5_0 => (|w, x| unsafe { neon::$m::q5_0(w, x) }, |w, x, s| unsafe { neon::$m::q5_0_tile(w, x, s) }),
                Q5_1 => (|w, x| unsafe { neon::$m::q5_1(w, x) }, |w, x, s| unsafe { neon::$m::q5_1_tile(w, x, s) }),
                Q8_0 => (|w, x| unsafe { neon::$m::q8_0(w, x) }, |w, x, s| unsafe { neon::$m::q8_0_tile(w, x, s) }),
                _ => return None,
            }
        };
    }
    let (one, tile): (RowDot, RowDotTile) =
        if allow_dotprod && dotprod_available() { pick!(sdot) } else { pick!(widen) };
    Some(Kernel { one, tile, quad: None, shared_scale_one: None })
}

/// The fastest kernel for `dtype` on this CPU.
pub fn kernel(dtype: GgmlDType) -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = x86_kernel(dtype, true) {
        return Some(Kernel { quad: x86_quad_kernel(dtype), ..k });
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(k) = arm_kernel(dtype, true) {
        return Some(k);
    }
    scalar_kernel(dtype)
}

/// Name of the quantized-dot path in use, for `--verbose` and benchmark rows.
pub fn simd_name() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        return if dotprod_available() { "neon+dotprod" } else { "neon" };
    }
    if avx512_vnni_available() {
        "avx512vnni"
    } else if vnni_available() {
        "avx2+vnni"
    } else if avx2_available() {
        "avx2"
    } else {
        "scalar"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::dequantize;
    use crate::kernels::q8::{dequantize_row, quantize_row};
    use crate::rng::Rng;

    const TYPES: [GgmlDType; 8] = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];

    /// Random blocks with finite f16 scales (random bits would make NaNs).
    pub(crate) fn random_row(dtype: GgmlDType, n: usize, rng: &mut Rng) -> Vec<u8> {
        let mut w: Vec<u8> = (0..dtype.bytes_for(n as u64).unwrap()).map(|_| rng.next_u64() as u8).collect();
        let scale_fields: &[usize] = match dtype {
            GgmlDType::Q6K => &[208],
            GgmlDType::Q4_1 | GgmlDType::Q5_1 | GgmlDType::Q4K | GgmlDType::Q5K => &[0, 2],
            _ => &[0],
        };
        for b in w.chunks_exact_mut(dtype.type_size()) {
            for &f in scale_fields {
                let v = (rng.next_f64() as f32 - 0.5) / 64.0;
                b[f..f + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
        }
        w
    }

    fn activations(n: usize, rng: &mut Rng) -> (Vec<f32>, Vec<Q8Block>) {
        let x: Vec<f32> = (0..n).map(|_| (rng.next_f64() as f32 - 0.5) * 4.0).collect();
        let mut q = vec![Q8Block::ZERO; n / 32];
        quantize_row(&x, &mut q);
        (x, q)
    }

    #[test]
    fn scalar_kernels_equal_dequantized_products() {
        let mut rng = Rng::new(21);
        for dtype in TYPES {
            let n = 512;
            let w = random_row(dtype, n, &mut rng);
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

    /// The four-row kernels (where this CPU has them) against the scalar kernel row by
    /// row, and their tile form bit for bit against their single-token form.
    #[test]
    fn quad_kernels_equal_scalar_kernels() {
        #[cfg(target_arch = "x86_64")]
        if !avx512_vnni_available() {
            eprintln!("no AVX-512 VNNI here: four-row kernels not exercised");
            return;
        }
        let mut rng = Rng::new(17);
        for dtype in TYPES {
            #[cfg(target_arch = "x86_64")]
            let Some(quad) = x86_quad_kernel(dtype) else {
                continue;
            };
            #[cfg(not(target_arch = "x86_64"))]
            let Some(quad): Option<QuadKernel> = None
            else {
                continue;
            };
            for n in [256, 512, 256 * 7] {
                let w = random_row(dtype, QUAD_ROWS * n, &mut rng);
                let rb = w.len() / QUAD_ROWS;
                let blocks = n / 32;
                let (xf, _) = activations(QUAD_TILE * n, &mut rng);
                let mut xq = vec![Q8Block::ZERO; QUAD_TILE * blocks];
                quantize_row(&xf, &mut xq);
                let tiled = (quad.tile)(&w, rb, &xq, blocks);
                for t in 0..QUAD_TILE {
                    let xt = &xq[t * blocks..(t + 1) * blocks];
                    let one = (quad.one)(&w, rb, xt);
                    for r in 0..QUAD_ROWS {
                        let row = &w[r * rb..(r + 1) * rb];
                        let want = (scalar_kernel(dtype).unwrap().one)(row, xt);
                        let (mut wf, mut xd) = (vec![0f32; n], vec![0f32; n]);
                        dequantize(dtype, row, &mut wf);
                        dequantize_row(xt, &mut xd);
                        let magnitude: f32 = wf.iter().zip(&xd).map(|(a, b)| (a * b).abs()).sum();
                        let got = one[r];
                        assert!(
                            (got - want).abs() <= 1e-5 * magnitude.max(1e-3),
                            "{dtype} n={n} token {t} row {r}: {got} vs {want}"
                        );
                        assert_eq!(
                            tiled[t][r].to_bits(),
                            got.to_bits(),
                            "{dtype} n={n} token {t} row {r}: tile vs one"
                        );
                    }
                }
            }
        }
    }

    /// The single-token forms over shared-scale activations, against the scalar kernel
    /// on the same activations.
    #[test]
    fn shared_scale_kernels_equal_scalar_kernels() {
        let mut rng = Rng::new(23);
        for dtype in [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K] {
            #[cfg(target_arch = "x86_64")]
            let variants = [("avx2", x86_kernel(dtype, false)), ("vnni", x86_kernel(dtype, vnni_available()))];
            #[cfg(not(target_arch = "x86_64"))]
            let variants: [(&str, Option<Kernel>); 0] = [];
            for n in [256, 512, 256 * 7] {
                let w = random_row(dtype, n, &mut rng);
                let x: Vec<f32> = (0..n).map(|_| (rng.next_f64() as f32 - 0.5) * 4.0).collect();
                let mut xq = vec![Q8Block::ZERO; n / 32];
                crate::kernels::q8::quantize_row_shared(&x, &mut xq);
                let want = (scalar_kernel(dtype).unwrap().one)(&w, &xq);
                let (mut wf, mut xf) = (vec![0f32; n], vec![0f32; n]);
                dequantize(dtype, &w, &mut wf);
                dequantize_row(&xq, &mut xf);
                let magnitude: f32 = wf.iter().zip(&xf).map(|(a, b)| (a * b).abs()).sum();
                for (name, k) in &variants {
                    let Some(shared) = k.and_then(|k| k.shared_scale_one) else { continue };
                    let got = shared(&w, &xq);
                    assert!((got - want).abs() <= 1e-5 * magnitude.max(1e-3), "{dtype} n={n} {name}: {got} vs {want}");
                }
            }
        }
    }

    /// Every SIMD variant this CPU can run, against the scalar kernel, on odd and even
    /// block counts (the kernels unroll by two).
    #[test]
    fn simd_kernels_equal_scalar_kernels() {
        let mut rng = Rng::new(5);
        type Variant = fn(GgmlDType) -> Option<Kernel>;
        #[allow(unused_mut)]
        let mut variants: Vec<(&str, Variant)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            variants.push(("avx2", |t| x86_kernel(t, false)));
            variants.push(("vnni", |t| if vnni_available() { x86_kernel(t, true) } else { None }));
        }
        #[cfg(target_arch = "aarch64")]
        {
            variants.push(("neon", |t| arm_kernel(t, false)));
            variants.push(("neon+dotprod", |t| if dotprod_available() { arm_kernel(t, true) } else { None }));
        }
        variants.push(("scalar", scalar_kernel));
        for dtype in TYPES {
            for n in [256, 512, 2048, 256 * 7] {
                let w = random_row(dtype, n, &mut rng);
                let (_, xq) = activations(n, &mut rng);
                let want = (scalar_kernel(dtype).unwrap().one)(&w, &xq);
                // Rounding scales with the terms, not with their (possibly cancelling) sum.
                let (mut wf, mut xf) = (vec![0f32; n], vec![0f32; n]);
                dequantize(dtype, &w, &mut wf);
                dequantize_row(&xq, &mut xf);
                let magnitude: f32 = wf.iter().zip(&xf).map(|(a, b)| (a * b).abs()).sum();
                // The tile form sees the same row as token 2 of 4 (others: shifted copies).
                let blocks = n / 32;
                let mut tile_x = Vec::with_capacity(TILE * blocks);
                for t in 0..TILE {
                    tile_x.extend(xq.iter().cycle().skip((t + 2) % TILE).take(blocks));
                }
                let tile_want: Vec<f32> = (0..TILE)
                    .map(|t| (scalar_kernel(dtype).unwrap().one)(&w, &tile_x[t * blocks..(t + 1) * blocks]))
                    .collect();
                for (name, variant) in &variants {
                    let Some(k) = variant(dtype) else { continue };
                    let got = (k.one)(&w, &xq);
                    assert!((got - want).abs() <= 1e-5 * magnitude.max(1e-3), "{dtype} n={n} {name}: {got} vs {want}");
                    let tiled = (k.tile)(&w, &tile_x, blocks);
                    for t in 0..TILE {
                        let tol = 1e-5 * magnitude.max(1e-3) * 4.0;
                        assert!(
                            (tiled[t] - tile_want[t]).abs() <= tol,
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
