//! pupil's dequantizers, written from the GGML format descriptions, agree bit for bit
//! with candle's independent implementation on random blocks of every type the real
//! models use, and the 2–3-bit K-quants of low-bit students.

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType as CandleType};
use candle_core::Device;
use half::f16;
use pupil::gguf::GgmlDType;
use pupil::kernels::dequantize;

/// Random block bytes whose f16 scale fields hold sane values (random bits would give
/// NaN or infinity scales, which compare unequal to themselves).
fn random_blocks(dtype: GgmlDType, n_blocks: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let ts = dtype.type_size();
    let mut bytes: Vec<u8> = (0..n_blocks * ts).map(|_| next() as u8).collect();
    let scale_offsets: &[usize] = match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0 => &[0],
        GgmlDType::Q4_1 | GgmlDType::Q5_1 | GgmlDType::Q4K | GgmlDType::Q5K => &[0, 2],
        GgmlDType::Q6K => &[208],
        GgmlDType::Q3K => &[108],
        GgmlDType::Q2K => &[80, 82],
        GgmlDType::F16 => &[0],
        _ => &[],
    };
    for block in bytes.chunks_exact_mut(ts) {
        for &off in scale_offsets {
            let v = ((next() % 2000) as f32 - 1000.0) / 4096.0;
            block[off..off + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
    }
    if dtype == GgmlDType::F32 {
        for chunk in bytes.chunks_exact_mut(4) {
            let v = ((next() % 20000) as f32 - 10000.0) / 1000.0;
            chunk.copy_from_slice(&v.to_le_bytes());
        }
    }
    bytes
}

fn check(dtype: GgmlDType, candle: CandleType) {
    let n_blocks = 64;
    let n = n_blocks * dtype.block_size();
    for seed in 1..=4u64 {
        let bytes = random_blocks(dtype, n_blocks, seed * 7919);
        let mut ours = vec![0f32; n];
        dequantize(dtype, &bytes, &mut ours);
        let theirs = qtensor_from_ggml(candle, &bytes, vec![n], &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .and_then(|t| t.to_vec1::<f32>())
            .expect("candle dequantizes");
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                a == b || (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{dtype} seed {seed} element {i}: ours {a}, candle {b}"
            );
        }
    }
}

#[test]
fn q4_0() {
    check(GgmlDType::Q4_0, CandleType::Q4_0);
}
#[test]
fn q4_1() {
    check(GgmlDType::Q4_1, CandleType::Q4_1);
}
#[test]
fn q5_0() {
    check(GgmlDType::Q5_0, CandleType::Q5_0);
}
#[test]
fn q5_1() {
    check(GgmlDType::Q5_1, CandleType::Q5_1);
}
#[test]
fn q8_0() {
    check(GgmlDType::Q8_0, CandleType::Q8_0);
}
#[test]
fn q2_k() {
    check(GgmlDType::Q2K, CandleType::Q2K);
}

#[test]
fn q3_k() {
    check(GgmlDType::Q3K, CandleType::Q3K);
}

#[test]
fn q4_k() {
    check(GgmlDType::Q4K, CandleType::Q4K);
}
#[test]
fn q5_k() {
    check(GgmlDType::Q5K, CandleType::Q5K);
}
#[test]
fn q6_k() {
    check(GgmlDType::Q6K, CandleType::Q6K);
}
#[test]
fn f16() {
    check(GgmlDType::F16, CandleType::F16);
}
#[test]
fn f32() {
    check(GgmlDType::F32, CandleType::F32);
}
