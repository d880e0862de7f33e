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

/// Encodes `values` as `dtype`, for the types pupil can write (F32, F16, Q8_0, Q4_0).
pub fn quantize(dtype: GgmlDType, values: &[f32]) -> Option<Vec<u8>> {
    Some(match dtype {
        GgmlDType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlDType::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        GgmlDType::Q8_0 if values.len().is_multiple_of(32) => quantize_q8_0(values),
        GgmlDType::Q4_0 if values.len().is_multiple_of(32) => quantize_q4_0(values),
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
