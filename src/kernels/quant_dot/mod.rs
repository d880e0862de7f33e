//! Dot products of one quantized weight row with one row of 8-bit activations
//! ([`Q8Block`]s), per weight type: the decode hot path. The SIMD form is chosen once per
//! process from the CPU's features; the scalar form is the reference and the fallback.

#[cfg(target_arch = "x86_64")]
mod avx2;
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

/// Both forms of one weight type's kernel.
#[derive(Clone, Copy)]
pub struct Kernel {
    pub one: RowDot,
    pub tile: RowDotTile,
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
                },
                Q4_1 => Kernel {
                    one: |w, x| unsafe { avx2::$m::q4_1(w, x) },
                    tile: |w, x, s| unsafe { avx2::$m::q4_1_tile(w, x, s) },
                },
                Q5_0 => Kernel {
                    one: |w, x| unsafe { avx2::$m::q5_0(w, x) },
                    tile: |w, x, s| unsafe { avx2::$m::q5_0_tile(w, x, s) },
                },
                Q5_1 => Kernel {
                    one: |w, x| unsafe { avx2::$m::q5_1(w, x) },
                    tile: |w, x, s| unsafe { avx2::$m::q5_1_tile(w, x, s) },
                },
                Q8_0 => Kernel {
                    one: |w, x| unsafe { avx2::$m::q8_0(w, x) },
                    tile: |w, x, s| unsafe { avx2::$m::q8_0_tile(w, x, s) },
                },
                Q4K => Kernel {
                    one: |w, x| unsafe { avx2::$m::q4_k(w, x) },
                    tile: |w, x, s| unsafe { avx2::$m::q4_k_tile(w, x, s) },
                },
                Q5K => Kernel {
                    one: |w, x| unsafe { avx2::$m::q5_k(w, x) },
                    tile: |w, x, s| unsafe { avx2::$m::q5_k_tile(w, x, s) },
                },
                Q6K => Kernel {
                    one: |w, x| unsafe { avx2::$m::q6_k(w, x) },
                    tile: |w, x, s| unsafe { avx2::$m::q6_k_tile(w, x, s) },
                },
                _ => return None,
            }
        };
    }
    Some(if allow_vnni && vnni_available() { pick!(vnni) } else { pick!(plain) })
}

/// The fastest kernel for `dtype` on this CPU.
pub fn kernel(dtype: GgmlDType) -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = x86_kernel(dtype, true) {
        return Some(k);
    }
    scalar_kernel(dtype)
}

/// Name of the quantized-dot path in use, for `--verbose` and benchmark rows.
pub fn simd_name() -> &'static str {
    if vnni_available() {
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
