//! Portable integer dot products: one weight row (GGML blocks) · one row of 8-bit
//! activations. The reference the SIMD kernels are tested against, and the path on CPUs
//! without them.

use half::f16;

use super::super::dequant::q3_k_scale;
use super::super::q8::Q8Block;
use crate::gguf::GgmlDType;

#[inline]
pub(super) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `Σ w·x` for one row. `w` holds `x.len() · 32` weights of type `dtype`.
pub fn vec_dot(dtype: GgmlDType, w: &[u8], x: &[Q8Block]) -> f32 {
    let ts = dtype.type_size();
    match dtype {
        GgmlDType::Q4_0 => w.chunks_exact(ts).zip(x).map(|(b, x)| q4_0(b, x)).sum(),
        GgmlDType::Q4_1 => w.chunks_exact(ts).zip(x).map(|(b, x)| q4_1(b, x)).sum(),
        GgmlDType::Q5_0 => w.chunks_exact(ts).zip(x).map(|(b, x)| q5_0(b, x)).sum(),
        GgmlDType::Q5_1 => w.chunks_exact(ts).zip(x).map(|(b, x)| q5_1(b, x)).sum(),
        GgmlDType::Q8_0 => w.chunks_exact(ts).zip(x).map(|(b, x)| q8_0(b, x)).sum(),
        GgmlDType::Q2K => w.chunks_exact(ts).zip(x.chunks_exact(8)).map(|(b, x)| q2_k(b, x)).sum(),
        GgmlDType::Q3K => w.chunks_exact(ts).zip(x.chunks_exact(8)).map(|(b, x)| q3_k(b, x)).sum(),
        GgmlDType::Q4K => w.chunks_exact(ts).zip(x.chunks_exact(8)).map(|(b, x)| q4_k(b, x)).sum(),
        GgmlDType::Q5K => w.chunks_exact(ts).zip(x.chunks_exact(8)).map(|(b, x)| q5_k(b, x)).sum(),
        GgmlDType::Q6K => w.chunks_exact(ts).zip(x.chunks_exact(8)).map(|(b, x)| q6_k(b, x)).sum(),
        other => panic!("quantized vec_dot: no kernel for {other}"),
    }
}

/// `Σ q[i]·x[i]` over 32 unsigned weights in output order.
#[inline]
fn dot32(q: &[u8; 32], x: &Q8Block) -> i32 {
    q.iter().zip(&x.qs).map(|(&a, &b)| a as i32 * b as i32).sum()
}

/// Unpacks 16 bytes of nibbles: low nibbles are elements 0..16, high ones 16..32.
#[inline]
fn nibbles(qs: &[u8]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = qs[j] & 0x0F;
        q[j + 16] = qs[j] >> 4;
    }
    q
}

/// Adds Q5's fifth bits (`qh` bit `j` belongs to element `j`).
#[inline]
fn add_high_bits(q: &mut [u8; 32], qh: u32) {
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((qh >> j) & 1) << 4) as u8;
    }
}

fn q4_0(b: &[u8], x: &Q8Block) -> f32 {
    let q = nibbles(&b[2..18]);
    f16_at(b, 0) * x.d * (dot32(&q, x) - 8 * x.sum()) as f32
}

fn q4_1(b: &[u8], x: &Q8Block) -> f32 {
    let q = nibbles(&b[4..20]);
    f16_at(b, 0) * x.d * dot32(&q, x) as f32 + f16_at(b, 2) * x.d * x.sum() as f32
}

fn q5_0(b: &[u8], x: &Q8Block) -> f32 {
    let mut q = nibbles(&b[6..22]);
    add_high_bits(&mut q, u32::from_le_bytes([b[2], b[3], b[4], b[5]]));
    f16_at(b, 0) * x.d * (dot32(&q, x) - 16 * x.sum()) as f32
}

fn q5_1(b: &[u8], x: &Q8Block) -> f32 {
    let mut q = nibbles(&b[8..24]);
    add_high_bits(&mut q, u32::from_le_bytes([b[4], b[5], b[6], b[7]]));
    f16_at(b, 0) * x.d * dot32(&q, x) as f32 + f16_at(b, 2) * x.d * x.sum() as f32
}

fn q8_0(b: &[u8], x: &Q8Block) -> f32 {
    let s: i32 = b[2..34].iter().zip(&x.qs).map(|(&w, &v)| w as i8 as i32 * v as i32).sum();
    f16_at(b, 0) * x.d * s as f32
}

/// Scale and minimum of sub-block `j` of a Q4_K / Q5_K super-block (6 bits each).
#[inline]
pub(crate) fn k_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// The eight 6-bit scales and eight 6-bit minimums packed in a Q4_K/Q5_K super-block's
/// 12 bytes, as bytes `j` of two words: sub-blocks 0–3 keep six bits of bytes 0–3 (scales)
/// and 4–7 (minimums); sub-blocks 4–7 take a nibble of bytes 8–11 and the top two bits of
/// bytes 0–3 (scales) or 4–7 (minimums).
#[inline(always)]
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))] // the SIMD kernels' helper
pub(super) fn k_scales_mins(s: &[u8; 12]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let (a, b, c) = (word(0), word(4), word(8));
    let (six, nibble, two) = (0x3f3f_3f3f, 0x0f0f_0f0f, 0x0303_0303);
    let scales_hi = (c & nibble) | (((a >> 6) & two) << 4);
    let mins_hi = ((c >> 4) & nibble) | (((b >> 6) & two) << 4);
    ((a & six) as u64 | (scales_hi as u64) << 32, (b & six) as u64 | (mins_hi as u64) << 32)
}

/// Q4_K / Q5_K super-block: sub-block `j` covers elements `32j..32j+32` and activation
/// block `x[j]`. `quants(j)` gives its unsigned weights.
#[inline]
fn k_quant_dot(b: &[u8], x: &[Q8Block], quants: impl Fn(usize) -> [u8; 32]) -> f32 {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let mut sum = 0f32;
    for (j, xj) in x.iter().enumerate() {
        let (sc, m) = k_scale_min(j, scales);
        let q = quants(j);
        sum += xj.d * (d * sc as f32 * dot32(&q, xj) as f32 - dmin * m as f32 * xj.sum() as f32);
    }
    sum
}

fn q4_k(b: &[u8], x: &[Q8Block]) -> f32 {
    let qs = &b[16..144];
    k_quant_dot(b, x, |j| {
        let chunk = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
        let mut q = [0u8; 32];
        for l in 0..32 {
            q[l] = if j % 2 == 0 { chunk[l] & 0x0F } else { chunk[l] >> 4 };
        }
        q
    })
}

fn q5_k(b: &[u8], x: &[Q8Block]) -> f32 {
    let qh = &b[16..48];
    let qs = &b[48..176];
    k_quant_dot(b, x, |j| {
        let chunk = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
        let mut q = [0u8; 32];
        for l in 0..32 {
            let low = if j % 2 == 0 { chunk[l] & 0x0F } else { chunk[l] >> 4 };
            q[l] = low | (((qh[l] >> j) & 1) << 4);
        }
        q
    })
}

/// The two-bit weights of activation block `j` (elements `32j..32j+32`) of a Q2_K / Q3_K
/// super-block's 64 `qs` bytes.
#[inline]
fn two_bits(qs: &[u8], j: usize) -> [u8; 32] {
    let (bytes, shift) = (&qs[32 * (j / 4)..32 * (j / 4) + 32], 2 * (j % 4));
    std::array::from_fn(|l| (bytes[l] >> shift) & 3)
}

/// `(Σ q·x over elements 0..16, over 16..32)` of one activation block.
#[inline]
fn dot16s(q: &[u8; 32], x: &Q8Block) -> [i32; 2] {
    let half = |r: std::ops::Range<usize>| r.map(|l| q[l] as i32 * x.qs[l] as i32).sum();
    [half(0..16), half(16..32)]
}

/// Q2_K: each 16 weights' scale and minimum are nibbles of `scales[i]`; the minimums
/// multiply the activations' 16-element sums.
fn q2_k(b: &[u8], x: &[Q8Block]) -> f32 {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let mut sum = 0f32;
    for (j, xj) in x.iter().enumerate() {
        let p = dot16s(&two_bits(qs, j), xj);
        let (s0, s1) = (scales[2 * j], scales[2 * j + 1]);
        let scaled = (s0 & 0x0F) as i32 * p[0] + (s1 & 0x0F) as i32 * p[1];
        let mins = (s0 >> 4) as i32 * xj.sum16[0] as i32 + (s1 >> 4) as i32 * xj.sum16[1] as i32;
        sum += xj.d * (d * scaled as f32 - dmin * mins as f32);
    }
    sum
}

/// Q3_K: two-bit weights plus a high bit (clear: subtract 4), signed 6-bit scales per 16.
fn q3_k(b: &[u8], x: &[Q8Block]) -> f32 {
    let (hmask, qs, scales) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    let mut sum = 0f32;
    for (j, xj) in x.iter().enumerate() {
        let mut q = two_bits(qs, j);
        // Stored with the high bit set meaning "no offset": q + 4·h is the weight + 4.
        q.iter_mut().zip(hmask).for_each(|(q, h)| *q |= ((h >> j) & 1) << 2);
        let p = dot16s(&q, xj);
        let (s0, s1) = (q3_k_scale(2 * j, scales), q3_k_scale(2 * j + 1, scales));
        let isum = s0 * (p[0] - 4 * xj.sum16[0] as i32) + s1 * (p[1] - 4 * xj.sum16[1] as i32);
        sum += d * xj.d * isum as f32;
    }
    sum
}

/// Q6_K: element `p` of half `h` (`p` in 0..128) has scale `scales[8h + p/16]`; weights
/// are stored offset by 32.
fn q6_k(b: &[u8], x: &[Q8Block]) -> f32 {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    let mut sum = 0f32;
    for (j, xj) in x.iter().enumerate() {
        let (h, k) = (j / 4, j % 4); // half, quarter within the half
        let (ql, qh) = (&ql[h * 64..h * 64 + 64], &qh[h * 32..h * 32 + 32]);
        let mut q = [0u8; 32];
        for l in 0..32 {
            let low = match k {
                0 => ql[l] & 0x0F,
                1 => ql[l + 32] & 0x0F,
                2 => ql[l] >> 4,
                _ => ql[l + 32] >> 4,
            };
            q[l] = low | (((qh[l] >> (2 * k)) & 3) << 4);
        }
        let (s0, s1) = (sc[h * 8 + 2 * k] as i8 as i32, sc[h * 8 + 2 * k + 1] as i8 as i32);
        let p0: i32 = (0..16).map(|l| q[l] as i32 * xj.qs[l] as i32).sum();
        let p1: i32 = (16..32).map(|l| q[l] as i32 * xj.qs[l] as i32).sum();
        let isum = s0 * (p0 - 32 * xj.sum16[0] as i32) + s1 * (p1 - 32 * xj.sum16[1] as i32);
        sum += d * xj.d * isum as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_k_scales_unpack_like_the_reference() {
        let mut rng = crate::rng::Rng::new(12);
        for _ in 0..1000 {
            let s: [u8; 12] = std::array::from_fn(|_| rng.next_u64() as u8);
            let (scales, mins) = k_scales_mins(&s);
            for j in 0..8 {
                let got = ((scales >> (8 * j)) as u8, (mins >> (8 * j)) as u8);
                assert_eq!(got, k_scale_min(j, &s), "sub-block {j} of {s:?}");
            }
        }
    }
}
