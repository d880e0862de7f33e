//! Runs one of pupil's several-row kernels once on eight interleaved weight rows, for
//! the instruction trace `benches/arm-mca.sh` feeds to llvm-mca (the counterpart of
//! `ggml_harness.c`). Weights and activations are random; the kernel is the one the
//! running CPU's features select, as in the runtime.
//!
//!     kernel-trace TYPE COLS TOKENS        # TYPE: q4_0 q4_1 q5_0 q5_1 q8_0 q4_k q5_k q6_k

use pupil::kernels::q8::{quantize_row, quantize_row_shared, Q8Block};
use pupil::kernels::{interleave_rows, quant_dot};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, name, cols, tokens] = &args[..] else {
        eprintln!("usage: kernel-trace TYPE COLS TOKENS");
        std::process::exit(2);
    };
    let dtype = quant_dot::TYPES.into_iter().find(|t| t.to_string().eq_ignore_ascii_case(name)).unwrap_or_else(|| {
        eprintln!("kernel-trace: no kernel for {name}");
        std::process::exit(2)
    });
    let (cols, tokens): (usize, usize) = (cols.parse().expect("COLS"), tokens.parse().expect("TOKENS"));
    let kernel = quant_dot::kernel(dtype).expect("a kernel");
    let rows_kernel = kernel.interleaved.expect("a several-row kernel on this CPU");
    let rows = rows_kernel.rows;
    let mut rng = pupil::rng::Rng::new(1);
    let w = pupil::synth::random_blocks(dtype, rows * cols, &mut rng);
    let rb = w.len() / rows;
    let w = interleave_rows::interleave(dtype, &w, rb);
    let x: Vec<f32> = (0..tokens * cols).map(|_| rng.next_f64() as f32 - 0.5).collect();
    let blocks = cols / 32;
    let mut xq = vec![Q8Block::ZERO; tokens * blocks];
    let quantize = if kernel.shared_scale.is_some() { quantize_row_shared } else { quantize_row };
    for (q, xt) in xq.chunks_exact_mut(blocks).zip(x.chunks_exact(cols)) {
        quantize(xt, q);
    }
    let mut tiles = Vec::new();
    quant_dot::interleave(&xq, blocks, tokens, &mut tiles);
    let mut out = vec![0f32; tokens * rows];
    (rows_kernel.dot)(&w, rb, &tiles, tokens, &mut out);
    std::hint::black_box(&out);
}
