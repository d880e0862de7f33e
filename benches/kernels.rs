//! Quantized mat-mul throughput on SmolLM2's shapes: one token (decode) and a 64-token
//! batch (prefill), for the quant types the real models use. Weights are random blocks
//! in a memory-mapped temporary file, as the runtime sees them.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pupil::gguf::GgmlDType;
use pupil::kernels::{matmul, QMatrix};

fn weight(dtype: GgmlDType, rows: usize, cols: usize) -> QMatrix {
    let n_bytes = dtype.bytes_for((rows * cols) as u64).unwrap() as usize;
    let mut rng = pupil::rng::Rng::new(5);
    let mut bytes: Vec<u8> = (0..n_bytes).map(|_| rng.next_u64() as u8).collect();
    // Keep the f16 scales finite: a zero high byte makes a small normal or subnormal.
    let ts = dtype.type_size();
    let scale_at = if dtype == GgmlDType::Q6K { 208 } else { 0 };
    for block in bytes.chunks_exact_mut(ts) {
        block[scale_at + 1] = 0x20;
    }
    let path = std::env::temp_dir().join(format!("pupil-bench-{}-{dtype}.bin", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    // SAFETY: a private temporary file nobody else writes.
    let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.unwrap());
    let _ = std::fs::remove_file(&path);
    QMatrix::new(dtype, rows, cols, map, 0..n_bytes)
}

fn bench_matmul(c: &mut Criterion) {
    let pool = pupil::threads::Pool::new(2);
    let (rows, cols) = (1536, 576); // SmolLM2 ffn_gate
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
        let w = weight(dtype, rows, cols);
        for n_tokens in [1usize, 64] {
            let x: Vec<f32> = (0..n_tokens * cols).map(|i| (i % 17) as f32 * 0.01).collect();
            let mut out = vec![0f32; n_tokens * rows];
            let mut g = c.benchmark_group(format!("matmul_{dtype}_{rows}x{cols}"));
            g.throughput(Throughput::Elements((2 * rows * cols * n_tokens) as u64));
            g.bench_function(format!("{n_tokens}_tokens"), |b| {
                b.iter(|| pool.install(|| matmul(&w, &x, n_tokens, &mut out)))
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench_matmul);
criterion_main!(benches);
