//! `synth`: GGUF files with published shapes and random weights, for speed and memory runs.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::synth::{SynthModel, SynthQuant, SHAPES};

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// llama-3.2-1b, llama-3.2-3b, smollm2-135m, qwen2.5-0.5b or qwen3-0.6b.
    #[arg(long)]
    pub shape: String,
    /// Storage of the weight matrices.
    #[arg(long, value_enum, default_value = "q8_0")]
    pub quant: SynthQuant,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(short = 'o', long)]
    pub output: PathBuf,
}

pub fn synth(a: SynthArgs) -> anyhow::Result<()> {
    let mut shape = SynthModel::shape(&a.shape, a.quant)
        .ok_or_else(|| anyhow::anyhow!("unknown shape {:?} (known: {})", a.shape, SHAPES.join(", ")))?;
    shape.seed = a.seed;
    eprintln!(
        "pupil: writing {} ({} layers, width {}, vocab {})",
        shape.name, shape.n_layer, shape.n_embd, shape.n_vocab
    );
    shape.writer().write(&a.output).with_context(|| format!("writing {}", a.output.display()))?;
    let size = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    println!("{} ({:.1} MiB, general.synthetic = true)", a.output.display(), size as f64 / (1 << 20) as f64);
    Ok(())
}
