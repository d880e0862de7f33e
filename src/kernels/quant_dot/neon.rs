//! NEON integer dot products (aarch64) for the 32-value block formats: weights are
//! unpacked to signed bytes (Q4_0's −8 and Q5_0's −16 applied there; Q4_1/Q5_1 keep their
//! unsigned values and add `m · Σx` through the activation sums), multiplied with the
//! 8-bit activations, and each block's integer sum is scaled once in f32.
//!
//! Two ways to multiply: widening multiplies with pairwise accumulation (every ARMv8
//! core), or `sdot` where the CPU has the dot-product extension (detected at run time).
//! `sdot` is written as inline assembly: its intrinsic is not stable Rust yet.
//!
//! K-quants have no NEON kernel yet and use the portable ones on aarch64.

use std::arch::aarch64::*;

use super::super::q8::Q8Block;
use super::scalar::f16_at;
use super::TILE;

/// How 16 signed byte products are summed into four i32 lanes.
pub trait Dot {
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
}

/// Widening multiplies (i8 × i8 → i16) and pairwise adds into i32.
pub struct Widen;
impl Dot for Widen {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let low = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let high = vmull_high_s8(a, b);
        vpadalq_s16(vpadalq_s16(acc, low), high)
    }
}

/// The dot-product extension's `sdot`: four products into each i32 lane at once.
pub struct Sdot;
impl Dot for Sdot {
    #[inline(always)]
    unsafe fn dot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack)
        );
        acc
    }
}

/// 16 bytes of nibbles → (elements 0..16, elements 16..32) as unsigned values.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    let v = vld1q_u8(p);
    (vandq_u8(v, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(v))
}

/// Q5's fifth bits (bit `j` of `qh` for element `j`) as 0x10 bytes over the two halves.
#[inline(always)]
unsafe fn fifth_bits(qh: u32) -> (uint8x16_t, uint8x16_t) {
    const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let b = qh.to_le_bytes();
    let bits = vld1q_u8(BITS.as_ptr());
    let sixteen = vdupq_n_u8(0x10);
    let spread = |lo: u8, hi: u8| vandq_u8(vtstq_u8(vcombine_u8(vdup_n_u8(lo), vdup_n_u8(hi)), bits), sixteen);
    (spread(b[0], b[1]), spread(b[2], b[3]))
}

/// Unsigned bytes minus `offset`, as signed bytes (values fit: at most 31 − 0).
#[inline(always)]
unsafe fn signed(v: uint8x16_t, offset: u8) -> int8x16_t {
    vreinterpretq_s8_u8(vsubq_u8(v, vdupq_n_u8(offset)))
}

/// The 32-value block formats for `T` tokens: `unpack` gives a block's weights as signed
/// bytes (both halves), `min` the factor of the activation sum (0 for offset formats,
/// whose offset is already in the weights). Each block is unpacked once per call.
#[inline(always)]
unsafe fn block32<D: Dot, const T: usize>(
    w: &[u8],
    xs: [&[Q8Block]; T],
    ts: usize,
    unpack: impl Fn(&[u8]) -> (int8x16_t, int8x16_t),
    min: impl Fn(&[u8]) -> f32,
) -> [f32; T] {
    let mut acc = [vdupq_n_f32(0.0); T];
    let mut mins = [0f32; T];
    for (i, b) in w.chunks_exact(ts).enumerate() {
        let (lo, hi) = unpack(b);
        let (d, m) = (f16_at(b, 0), min(b));
        for t in 0..T {
            let xb = &xs[t][i];
            let s = D::dot(vdupq_n_s32(0), lo, vld1q_s8(xb.qs.as_ptr()));
            let s = D::dot(s, hi, vld1q_s8(xb.qs.as_ptr().add(16)));
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(s), d * xb.d);
            mins[t] += m * xb.ds;
        }
    }
    std::array::from_fn(|t| vaddvq_f32(acc[t]) + mins[t])
}

/// `TILE` consecutive tokens' activation rows, `stride` blocks apart.
#[inline(always)]
fn tile(x: &[Q8Block], stride: usize) -> [&[Q8Block]; TILE] {
    std::array::from_fn(|t| &x[t * stride..(t + 1) * stride])
}

/// Single-token and `TILE`-token kernels of one format.
macro_rules! block32_kernels {
    ($dot:ty, $features:literal, $one:ident, $tile:ident, $ts:literal, $unpack:expr, $min:expr) => {
        #[target_feature(enable = $features)]
        pub unsafe fn $one(w: &[u8], x: &[Q8Block]) -> f32 {
            block32::<$dot, 1>(w, [x], $ts, $unpack, $min)[0]
        }
        #[target_feature(enable = $features)]
        pub unsafe fn $tile(w: &[u8], x: &[Q8Block], stride: usize) -> [f32; TILE] {
            block32::<$dot, TILE>(w, tile(x, stride), $ts, $unpack, $min)
        }
    };
}

/// Every format's kernels for one [`Dot`] under the target features it needs.
macro_rules! kernels {
    ($module:ident, $dot:ty, $features:literal) => {
        pub mod $module {
            use super::*;
            block32_kernels!(
                $dot,
                $features,
                q4_0,
                q4_0_tile,
                18,
                |b| {
                    let (lo, hi) = nibbles(b.as_ptr().add(2));
                    (signed(lo, 8), signed(hi, 8))
                },
                |_| 0.0
            );
            block32_kernels!(
                $dot,
                $features,
                q4_1,
                q4_1_tile,
                20,
                |b| {
                    let (lo, hi) = nibbles(b.as_ptr().add(4));
                    (signed(lo, 0), signed(hi, 0))
                },
                |b| f16_at(b, 2)
            );
            block32_kernels!(
                $dot,
                $features,
                q5_0,
                q5_0_tile,
                22,
                |b| {
                    let (lo, hi) = nibbles(b.as_ptr().add(6));
                    let (h_lo, h_hi) = fifth_bits(u32::from_le_bytes([b[2], b[3], b[4], b[5]]));
                    (signed(vorrq_u8(lo, h_lo), 16), signed(vorrq_u8(hi, h_hi), 16))
                },
                |_| 0.0
            );
            block32_kernels!(
                $dot,
                $features,
                q5_1,
                q5_1_tile,
                24,
                |b| {
                    let (lo, hi) = nibbles(b.as_ptr().add(8));
                    let (h_lo, h_hi) = fifth_bits(u32::from_le_bytes([b[4], b[5], b[6], b[7]]));
                    (signed(vorrq_u8(lo, h_lo), 0), signed(vorrq_u8(hi, h_hi), 0))
                },
                |b| f16_at(b, 2)
            );
            block32_kernels!(
                $dot,
                $features,
                q8_0,
                q8_0_tile,
                34,
                |b| { (vld1q_s8(b.as_ptr().add(2) as *const i8), vld1q_s8(b.as_ptr().add(18) as *const i8)) },
                |_| 0.0
            );
        }
    };
}

kernels!(widen, Widen, "neon");
kernels!(sdot, Sdot, "neon,dotprod");
