//! Quantizers for the GGML block formats pupil writes (merged adapters, synthetic
//! models): the inverse of `dequant` for the simple types.

use crate::gguf::GgmlDType;

/// GGML's Q8_0 encoding of `values` (a multiple of 32 long): per block of 32, an f16
/// scale `max|x| / 127` and 32 signed bytes.
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    assert_eq!(values.len() % 32, 0, "Q8_0 needs whole blocks of 32");
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for block in values.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8 as u8));
    }
    out
}

/// GGML's Q4_0 encoding: per block of 32, an f16 scale `d = m / −8` (m the value of
/// largest magnitude) and 16 bytes of 4-bit `round(x / d) + 8`, low nibbles holding the
/// first 16 values.
pub fn quantize_q4_0(values: &[f32]) -> Vec<u8> {
    assert_eq!(values.len() % 32, 0, "Q4_0 needs whole blocks of 32");
    let mut out = Vec::with_capacity(values.len() / 32 * 18);
    for block in values.chunks_exact(32) {
        let m = block.iter().copied().fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
        let d = m / -8.0;
        let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        let q = |v: f32| ((v * inv + 8.5) as i32).clamp(0, 15) as u8;
        out.extend((0..16).map(|j| q(block[j]) | (q(block[j + 16]) << 4)));
    }
    out
}

/// GGML's Q4_K encoding of `values` (a multiple of 256 long). Per super-block of 256: f16
/// `d` and `dmin`, eight 6-bit scales and mins packed in 12 bytes, and 128 bytes of 4-bit
/// values; `x ≈ d·sc·q − dmin·m` with each 32-value sub-block spanning its own min..max.
/// (llama.cpp searches the scales iteratively for lower error; this is the plain min/max
/// fit, which is what speed runs on random weights need.)
pub fn quantize_q4_k(values: &[f32]) -> Vec<u8> {
    quantize_k_min(values, false)
}

/// GGML's Q5_K encoding: [`quantize_q4_k`]'s fit with 32 levels, the fifth bit of each
/// value in 32 `qh` bytes between the scales and the nibbles (bit `2·pair` for the low
/// nibbles of a pair of sub-blocks, `2·pair + 1` for the high ones).
pub fn quantize_q5_k(values: &[f32]) -> Vec<u8> {
    quantize_k_min(values, true)
}

/// Q4_K, or with `five_bits` Q5_K.
fn quantize_k_min(values: &[f32], five_bits: bool) -> Vec<u8> {
    let (name, levels, size) = if five_bits { ("Q5_K", 31.0, 176) } else { ("Q4_K", 15.0, 144) };
    assert_eq!(values.len() % 256, 0, "{name} needs whole super-blocks of 256");
    let mut out = Vec::with_capacity(values.len() / 256 * size);
    for block in values.chunks_exact(256) {
        let mut step = [0f32; 8];
        let mut low = [0f32; 8];
        for (j, sub) in block.chunks_exact(32).enumerate() {
            let min = sub.iter().copied().fold(0f32, f32::min);
            let max = sub.iter().copied().fold(0f32, f32::max);
            step[j] = (max - min) / levels;
            low[j] = -min;
        }
        let d = step.iter().copied().fold(0f32, f32::max) / 63.0;
        let dmin = low.iter().copied().fold(0f32, f32::max) / 63.0;
        let (d, dmin) = (half::f16::from_f32(d).to_f32(), half::f16::from_f32(dmin).to_f32());
        let six = |v: f32, unit: f32| if unit > 0.0 { (v / unit).round().clamp(0.0, 63.0) as u8 } else { 0 };
        let sc: Vec<u8> = step.iter().map(|&s| six(s, d)).collect();
        let m: Vec<u8> = low.iter().map(|&l| six(l, dmin)).collect();
        let mut scales = [0u8; 12];
        for j in 0..4 {
            scales[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            scales[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            scales[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
        }
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&half::f16::from_f32(dmin).to_le_bytes());
        out.extend_from_slice(&scales);
        let q = |j: usize, v: f32| {
            let unit = d * sc[j] as f32;
            if unit > 0.0 {
                ((v + dmin * m[j] as f32) / unit).round().clamp(0.0, levels) as u8
            } else {
                0
            }
        };
        let quants: Vec<u8> = (0..256).map(|e| q(e / 32, block[e])).collect();
        if five_bits {
            let mut qh = [0u8; 32];
            for (e, &v) in quants.iter().enumerate() {
                qh[e % 32] |= (v >> 4) << (e / 32);
            }
            out.extend_from_slice(&qh);
        }
        for pair in 0..4 {
            let (a, b) = (&quants[64 * pair..64 * pair + 32], &quants[64 * pair + 32..64 * pair + 64]);
            out.extend(a.iter().zip(b).map(|(a, b)| (a & 0xF) | ((b & 0xF) << 4)));
        }
    }
    out
}

/// GGML's Q6_K encoding (a multiple of 256 long). Per super-block: 128 bytes of low
/// nibbles, 64 bytes of high 2-bit pairs, sixteen i8 scales (one per 16 values) and an
/// f16 `d`; `x ≈ d·sc·(q − 32)` with q in 0..63.
pub fn quantize_q6_k(values: &[f32]) -> Vec<u8> {
    assert_eq!(values.len() % 256, 0, "Q6_K needs whole super-blocks of 256");
    let mut out = Vec::with_capacity(values.len() / 256 * 210);
    for block in values.chunks_exact(256) {
        let step: Vec<f32> =
            block.chunks_exact(16).map(|s| s.iter().fold(0f32, |m, v| m.max(v.abs())) / 31.0).collect();
        let d = half::f16::from_f32(step.iter().copied().fold(0f32, f32::max) / 127.0).to_f32();
        let sc: Vec<i8> =
            step.iter().map(|&s| if d > 0.0 { (s / d).round().clamp(0.0, 127.0) as i8 } else { 0 }).collect();
        let q: Vec<u8> = block
            .iter()
            .enumerate()
            .map(|(p, &v)| {
                let unit = d * sc[p / 16] as f32;
                let q = if unit > 0.0 { (v / unit).round().clamp(-32.0, 31.0) } else { 0.0 };
                (q as i32 + 32) as u8
            })
            .collect();
        let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
        for half in 0..2 {
            let (y, l_off, h_off) = (&q[half * 128..], half * 64, half * 32);
            for l in 0..32 {
                ql[l_off + l] = (y[l] & 0xF) | ((y[l + 64] & 0xF) << 4);
                ql[l_off + l + 32] = (y[l + 32] & 0xF) | ((y[l + 96] & 0xF) << 4);
                qh[h_off + l] =
                    (y[l] >> 4) | ((y[l + 32] >> 4) << 2) | ((y[l + 64] >> 4) << 4) | ((y[l + 96] >> 4) << 6);
            }
        }
        out.extend_from_slice(&ql);
        out.extend_from_slice(&qh);
        out.extend(sc.iter().map(|&s| s as u8));
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
    }
    out
}

/// Where element `e` of a Q2_K / Q3_K super-block keeps its two low bits: byte
/// `32·(e / 128) + e % 32` of `qs`, shifted by `2·((e % 128) / 32)`.
fn put_two_bits(qs: &mut [u8; 64], e: usize, q: u8) {
    qs[32 * (e / 128) + e % 32] |= (q & 3) << (2 * ((e % 128) / 32));
}

/// GGML's Q2_K encoding (a multiple of 256 long), the plain min/max fit of
/// [`quantize_q4_k`] per 16 values: `x ≈ d·sc·q − dmin·m` with 4-bit `sc`, `m` and
/// 2-bit `q`. Per super-block: sixteen scale/minimum bytes, 64 bytes of quants, `d`, `dmin`.
pub fn quantize_q2_k(values: &[f32]) -> Vec<u8> {
    assert_eq!(values.len() % 256, 0, "Q2_K needs whole super-blocks of 256");
    let mut out = Vec::with_capacity(values.len() / 256 * 84);
    for block in values.chunks_exact(256) {
        let fit: Vec<(f32, f32)> = block
            .chunks_exact(16)
            .map(|s| {
                let (min, max) = (s.iter().copied().fold(0f32, f32::min), s.iter().copied().fold(0f32, f32::max));
                ((max - min) / 3.0, -min)
            })
            .collect();
        let d = half::f16::from_f32(fit.iter().map(|f| f.0).fold(0f32, f32::max) / 15.0).to_f32();
        let dmin = half::f16::from_f32(fit.iter().map(|f| f.1).fold(0f32, f32::max) / 15.0).to_f32();
        let four = |v: f32, unit: f32| if unit > 0.0 { (v / unit).round().clamp(0.0, 15.0) as u8 } else { 0 };
        let (sc, m): (Vec<u8>, Vec<u8>) = fit.iter().map(|&(step, low)| (four(step, d), four(low, dmin))).unzip();
        let mut qs = [0u8; 64];
        for (e, &v) in block.iter().enumerate() {
            let (unit, j) = (d * sc[e / 16] as f32, e / 16);
            let q = if unit > 0.0 { ((v + dmin * m[j] as f32) / unit).round().clamp(0.0, 3.0) as u8 } else { 0 };
            put_two_bits(&mut qs, e, q);
        }
        out.extend(sc.iter().zip(&m).map(|(s, m)| s | (m << 4)));
        out.extend_from_slice(&qs);
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&half::f16::from_f32(dmin).to_le_bytes());
    }
    out
}

/// GGML's Q3_K encoding (a multiple of 256 long): per 16 values a signed 6-bit scale
/// chosen so that the value of largest magnitude lands on −4 (the side with one more
/// level), `x ≈ d·sc·q` with `q` in −4..3. Per super-block: the high bits of `q + 4` (32
/// bytes), their low two bits (64), the packed scales (12) and `d`.
pub fn quantize_q3_k(values: &[f32]) -> Vec<u8> {
    assert_eq!(values.len() % 256, 0, "Q3_K needs whole super-blocks of 256");
    let mut out = Vec::with_capacity(values.len() / 256 * 110);
    for block in values.chunks_exact(256) {
        let step: Vec<f32> = block
            .chunks_exact(16)
            .map(|s| -s.iter().copied().fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m }) / 4.0)
            .collect();
        let d = half::f16::from_f32(step.iter().fold(0f32, |m, s| m.max(s.abs())) / 31.0).to_f32();
        let sc: Vec<i32> =
            step.iter().map(|&s| if d > 0.0 { (s / d).round().clamp(-32.0, 31.0) as i32 } else { 0 }).collect();
        let (mut hmask, mut qs, mut scales) = ([0u8; 32], [0u8; 64], [0u8; 12]);
        for (e, &v) in block.iter().enumerate() {
            let unit = d * sc[e / 16] as f32;
            let q = if unit != 0.0 { (v / unit).round().clamp(-4.0, 3.0) as i32 } else { 0 } + 4;
            put_two_bits(&mut qs, e, q as u8);
            hmask[e % 32] |= ((q >> 2) as u8 & 1) << (e / 32);
        }
        for (i, &s) in sc.iter().enumerate() {
            let stored = (s + 32) as u8;
            scales[i % 8] |= (stored & 0x0F) << (4 * (i / 8));
            scales[8 + i % 4] |= (stored >> 4) << (2 * (i / 4));
        }
        out.extend_from_slice(&hmask);
        out.extend_from_slice(&qs);
        out.extend_from_slice(&scales);
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
    }
    out
}

/// Encodes `values` as `dtype`, for the types pupil can write (F32, F16, Q8_0, Q4_0,
/// Q2_K, Q3_K, Q4_K, Q5_K, Q6_K).
pub fn quantize(dtype: GgmlDType, values: &[f32]) -> Option<Vec<u8>> {
    Some(match dtype {
        GgmlDType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlDType::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        GgmlDType::Q8_0 if values.len().is_multiple_of(32) => quantize_q8_0(values),
        GgmlDType::Q4_0 if values.len().is_multiple_of(32) => quantize_q4_0(values),
        GgmlDType::Q2K if values.len().is_multiple_of(256) => quantize_q2_k(values),
        GgmlDType::Q3K if values.len().is_multiple_of(256) => quantize_q3_k(values),
        GgmlDType::Q4K if values.len().is_multiple_of(256) => quantize_q4_k(values),
        GgmlDType::Q5K if values.len().is_multiple_of(256) => quantize_q5_k(values),
        GgmlDType::Q6K if values.len().is_multiple_of(256) => quantize_q6_k(values),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::dequantize;
    use crate::rng::Rng;

    #[test]
    fn quantizers_round_trip_within_one_step() {
        let mut rng = Rng::new(2);
        let values: Vec<f32> = (0..256).map(|_| rng.next_f64() as f32 - 0.5).collect();
        for (dtype, bytes, steps) in
            [(GgmlDType::Q8_0, quantize_q8_0(&values), 127.0), (GgmlDType::Q4_0, quantize_q4_0(&values), 8.0)]
        {
            let mut back = vec![0f32; values.len()];
            dequantize(dtype, &bytes, &mut back);
            for (block, got) in values.chunks(32).zip(back.chunks(32)) {
                let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (x, y) in block.iter().zip(got) {
                    // Q4_0 spans −8..7 steps: the extreme of the short side may clip one step.
                    assert!((x - y).abs() <= amax / steps + 1e-3, "{dtype}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn k_quantizers_round_trip_within_one_step_of_each_sub_block() {
        let mut rng = Rng::new(4);
        // Varied magnitudes per sub-block, and an all-zero super-block.
        let mut values: Vec<f32> =
            (0..1024).map(|i| (rng.next_f64() as f32 - 0.3) * (1 + i % 7) as f32 * 0.1).collect();
        values[768..].iter_mut().for_each(|v| *v = 0.0);
        for (dtype, bytes, sub, levels) in [
            (GgmlDType::Q2K, quantize_q2_k(&values), 16, 3.0),
            // Q3_K: −4..3 steps of |max| / 4, so a span of up to 2·|max| in 7 levels, the
            // short side clipping by one step at most.
            (GgmlDType::Q3K, quantize_q3_k(&values), 16, 7.0 / 2.0),
            (GgmlDType::Q4K, quantize_q4_k(&values), 32, 15.0),
            (GgmlDType::Q5K, quantize_q5_k(&values), 32, 31.0),
            (GgmlDType::Q6K, quantize_q6_k(&values), 16, 63.0),
        ] {
            assert_eq!(bytes.len(), values.len() / 256 * dtype.type_size());
            let mut back = vec![0f32; values.len()];
            dequantize(dtype, &bytes, &mut back);
            for (block, got) in values.chunks(sub).zip(back.chunks(sub)) {
                let lo = block.iter().copied().fold(0f32, f32::min);
                let hi = block.iter().copied().fold(0f32, f32::max);
                // Scales are 6/8-bit multiples of the super-block's unit: allow the unit's
                // rounding on top of one quantization step.
                let tol = (hi - lo) / levels * 1.6 + 2e-3;
                for (x, y) in block.iter().zip(got) {
                    assert!((x - y).abs() <= tol, "{dtype}: {x} vs {y} (tolerance {tol})");
                }
            }
        }
    }

    #[test]
    fn float_types_round_trip() {
        let v = [1.5f32, -0.25, 3.0];
        for dtype in [GgmlDType::F32, GgmlDType::F16] {
            let mut back = [0f32; 3];
            dequantize(dtype, &quantize(dtype, &v).unwrap(), &mut back);
            assert_eq!(back, v);
        }
        assert!(quantize(GgmlDType::Q4K, &v).is_none());
    }
}
