//! Quantized mat-mul throughput on SmolLM2's shapes (ffn_gate; ffn_down for K-quants), pupil beside candle's quantized
//! CPU mat-mul (`QMatMul`, its k_quants kernels) on the very same blocks: one token
//! (decode) and a 64-token batch (prefill), for the quant types the real models use.
//! Then one whole decode step of the default student (pulled if missing).
//!
//! `cargo bench --bench kernels` (criterion; `-- matmul_Q4_1` to filter).

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pupil::gguf::GgmlDType;
use pupil::kernels::{matmul, QMatrix};

/// candle's name for a GGML block type.
fn candle_dtype(dtype: GgmlDType) -> candle_core::quantized::GgmlDType {
    use candle_core::quantized::GgmlDType as C;
    match dtype {
        GgmlDType::Q4_0 => C::Q4_0,
        GgmlDType::Q4_1 => C::Q4_1,
        GgmlDType::Q5_0 => C::Q5_0,
        GgmlDType::Q8_0 => C::Q8_0,
        GgmlDType::Q4K => C::Q4K,
        GgmlDType::Q6K => C::Q6K,
        other => panic!("no candle mapping for {other}"),
    }
}

/// Random weights quantized by candle, and the same bytes as a pupil matrix living in a
/// memory-mapped temporary file, as the runtime sees them.
fn weights(dtype: GgmlDType, rows: usize, cols: usize) -> (QMatMul, QMatrix) {
    let mut rng = pupil::rng::Rng::new(5);
    let dense: Vec<f32> = (0..rows * cols).map(|_| rng.next_f64() as f32 - 0.5).collect();
    let tensor = Tensor::from_vec(dense, (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&tensor, candle_dtype(dtype)).unwrap();
    let bytes = q.data().unwrap().into_owned();
    let path = std::env::temp_dir().join(format!("pupil-bench-{}-{dtype}.bin", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    // SAFETY: a private temporary file nobody else writes.
    let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.unwrap());
    let _ = std::fs::remove_file(&path);
    (QMatMul::from_qtensor(q).unwrap(), QMatrix::new(dtype, rows, cols, map, 0..bytes.len()))
}

fn bench_matmul(c: &mut Criterion) {
    let pool = pupil::threads::Pool::new(2);
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
        // SmolLM2's ffn_gate; K-quants need 256-wide rows, so its ffn_down for them.
        let (rows, cols) = if dtype.block_size() == 256 { (576, 1536) } else { (1536, 576) };
        let (theirs, ours) = weights(dtype, rows, cols);
        for n_tokens in [1usize, 64] {
            let x: Vec<f32> = (0..n_tokens * cols).map(|i| (i % 17) as f32 * 0.01).collect();
            let xt = Tensor::from_vec(x.clone(), (n_tokens, cols), &Device::Cpu).unwrap();
            let mut out = vec![0f32; n_tokens * rows];
            let mut g = c.benchmark_group(format!("matmul_{dtype}_{rows}x{cols}"));
            g.throughput(Throughput::Elements((2 * rows * cols * n_tokens) as u64));
            g.bench_function(format!("pupil/{n_tokens}_tokens"), |b| {
                b.iter(|| pool.install(|| matmul(&ours, &x, n_tokens, &mut out)))
            });
            g.bench_function(format!("candle/{n_tokens}_tokens"), |b| b.iter(|| theirs.forward(&xt).unwrap()));
            g.finish();
        }
    }
}

/// One token through the whole default student at position 64, two threads.
fn bench_decode_step(c: &mut Criterion) {
    let rt = pupil::generate::runtime::Runtime::load("smollm2-135m-instruct", 2, true).expect("default student");
    let prompt: Vec<u32> = (0..64).map(|i| 100 + i).collect();
    let mut cache = rt.model.new_cache(128).unwrap();
    rt.pool.install(|| rt.model.forward(&prompt, &mut cache)).unwrap();
    c.bench_function("decode_step_smollm2_q4_1_at_64", |b| {
        b.iter(|| {
            cache.truncate(64);
            let hidden = rt.pool.install(|| rt.model.forward(&[42], &mut cache)).unwrap();
            rt.pool.install(|| rt.model.logits(hidden)).unwrap()
        })
    });
}

criterion_group!(benches, bench_matmul, bench_decode_step);
criterion_main!(benches);
