//! Scalar dequantizers for the GGML block formats, written from the format descriptions.
//! They are the reference every faster kernel is compared with.

use half::{bf16, f16};

use crate::gguf::GgmlDType;

/// Whether pupil can compute with tensors of this type.
pub fn is_supported(dtype: GgmlDType) -> bool {
    use GgmlDType::*;
    matches!(dtype, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2K | Q3K | Q4K | Q5K | Q6K)
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `bytes` (a whole number of `dtype` blocks) into `out`, whose length must be
/// the number of elements those blocks hold.
///
/// # Panics
/// On a length mismatch or an unsupported type: callers validate both when the weights
/// are loaded, so reaching this is a bug, not bad input.
pub fn dequantize(dtype: GgmlDType, bytes: &[u8], out: &mut [f32]) {
    let bs = dtype.block_size();
    let ts = dtype.type_size();
    assert_eq!(bytes.len() / ts * bs, out.len(), "dequantize: {dtype} length mismatch");
    assert_eq!(bytes.len() % ts, 0, "dequantize: partial {dtype} block");
    let blocks = bytes.chunks_exact(ts).zip(out.chunks_exact_mut(bs));
    match dtype {
        GgmlDType::F32 => {
            for (b, y) in blocks {
                y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlDType::F16 => {
            for (b, y) in blocks {
                y[0] = f16_at(b, 0);
            }
        }
        GgmlDType::BF16 => {
            for (b, y) in blocks {
                y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlDType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        GgmlDType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        GgmlDType::Q5_0 => blocks.for_each(|(b, y)| q5_0(b, y)),
        GgmlDType::Q5_1 => blocks.for_each(|(b, y)| q5_1(b, y)),
        GgmlDType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        GgmlDType::Q2K => blocks.for_each(|(b, y)| q2_k(b, y)),
        GgmlDType::Q3K => blocks.for_each(|(b, y)| q3_k(b, y)),
        GgmlDType::Q4K => blocks.for_each(|(b, y)| q4_k(b, y)),
        GgmlDType::Q5K => blocks.for_each(|(b, y)| q5_k(b, y)),
        GgmlDType::Q6K => blocks.for_each(|(b, y)| q6_k(b, y)),
        other => panic!("dequantize: no kernel for {other}"),
    }
}

/// Q4_0: f16 scale `d`, 32 nibbles; value = d·(q − 8). Low nibbles are elements 0..16.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1: scale `d`, minimum `m`; value = d·q + m.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = (q & 0x0F) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// Q5_0: scale `d`, 32 high bits in `qh`, 32 nibbles; value = d·(q − 16).
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, &q) in b[6..22].iter().enumerate() {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = (((q & 0x0F) as u32 | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((q >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

/// Q5_1: like Q5_0 with a minimum instead of the −16 offset.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, &q) in b[8..24].iter().enumerate() {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = ((q & 0x0F) as u32 | h0) as f32 * d + m;
        y[j + 16] = ((q >> 4) as u32 | h1) as f32 * d + m;
    }
}

/// Q8_0: scale `d`, 32 signed bytes.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..34].iter().enumerate() {
        y[j] = q as i8 as f32 * d;
    }
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) packed in the 12 `scales` bytes of
/// a Q4_K / Q5_K super-block.
#[inline]
fn k_scale_min(j: usize, s: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((s[j] & 63) as f32, (s[j + 4] & 63) as f32)
    } else {
        let sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        let m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        (sc as f32, m as f32)
    }
}

/// Q2_K: 256 two-bit values in 16 sub-blocks of 16, each with a 4-bit scale (low nibble of
/// `scales[i]`) and 4-bit minimum (high nibble) relative to the super-block's `d` and
/// `dmin`; value = d·sc·q − dmin·m. Element `e` sits in byte `32·(e / 128) + e % 32` of
/// `qs`, at bit `2·((e % 128) / 32)`.
fn q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (e, y) in y.iter_mut().enumerate() {
        let q = (qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        let s = scales[e / 16];
        *y = d * (s & 0x0F) as f32 * q as f32 - dmin * (s >> 4) as f32;
    }
}

/// The 6-bit scale of sub-block `i` (0..16) of a Q3_K super-block's 12 `scales` bytes,
/// offset by 32: four low bits from a nibble of bytes 0–7, two high bits from bytes 8–11.
#[inline]
pub(crate) fn q3_k_scale(i: usize, s: &[u8]) -> i32 {
    let low = (s[i % 8] >> (4 * (i / 8))) & 0x0F;
    let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
    (low | (high << 4)) as i32 - 32
}

/// Q3_K: 256 three-bit values in 16 sub-blocks of 16 with signed 6-bit scales and one f16
/// `d`; value = d·scale·(q − 4·(1 − h)), `q` two bits placed as in Q2_K and `h` bit
/// `(e / 32)` of `hmask[e % 32]`.
fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, scales) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    for (e, y) in y.iter_mut().enumerate() {
        let q = ((qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3) as i32;
        let high = (hmask[e % 32] >> (e / 32)) & 1;
        *y = d * q3_k_scale(e / 16, scales) as f32 * (q - if high == 0 { 4 } else { 0 }) as f32;
    }
}

/// Q4_K: 256 values in 8 sub-blocks of 32, each with a 6-bit scale and minimum relative to
/// the super-block's `d` and `dmin`; value = d·sc·q − dmin·m.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for chunk in 0..4 {
        let q = &qs[chunk * 32..chunk * 32 + 32];
        let (sc1, m1) = k_scale_min(2 * chunk, scales);
        let (sc2, m2) = k_scale_min(2 * chunk + 1, scales);
        let out = &mut y[chunk * 64..chunk * 64 + 64];
        for l in 0..32 {
            out[l] = d * sc1 * (q[l] & 0x0F) as f32 - dmin * m1;
            out[l + 32] = d * sc2 * (q[l] >> 4) as f32 - dmin * m2;
        }
    }
}

/// Q5_K: Q4_K plus one high bit per value in `qh` (bit `2·chunk` for the low nibbles, bit
/// `2·chunk + 1` for the high ones).
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for chunk in 0..4 {
        let q = &qs[chunk * 32..chunk * 32 + 32];
        let (sc1, m1) = k_scale_min(2 * chunk, scales);
        let (sc2, m2) = k_scale_min(2 * chunk + 1, scales);
        let (u1, u2) = (1u8 << (2 * chunk), 1u8 << (2 * chunk + 1));
        let out = &mut y[chunk * 64..chunk * 64 + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d * sc1 * ((q[l] & 0x0F) + h1) as f32 - dmin * m1;
            out[l + 32] = d * sc2 * ((q[l] >> 4) + h2) as f32 - dmin * m2;
        }
    }
}

/// Q6_K: 256 values of 6 bits (4 low in `ql`, 2 high in `qh`), 16 signed 8-bit scales, one
/// f16 `d`; value = d·scale·(q − 32).
fn q6_k(b: &[u8], y: &mut [f32]) {
    let ql_all = &b[0..128];
    let qh_all = &b[128..192];
    let sc_all = &b[192..208];
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &ql_all[half * 64..half * 64 + 64];
        let qh = &qh_all[half * 32..half * 32 + 32];
        let sc = &sc_all[half * 8..half * 8 + 8];
        let out = &mut y[half * 128..half * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}
