//! `merge`: bake LoRA adapters into a standalone GGUF.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{AdapterArgs, ModelArg};
use crate::gguf::GgmlDType;

#[derive(Args, Debug)]
pub struct MergeArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub adapters: AdapterArgs,
    /// Output GGUF.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Type of the merged weights: q8_0, q4_0, f16 or f32 (default: each weight's own
    /// type where pupil can write it, else q8_0).
    #[arg(long)]
    pub quant: Option<String>,
}

pub fn merge(a: MergeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!a.adapters.lora.is_empty(), "give at least one --lora adapter to merge");
    let quant = match a.quant.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some("q8_0") => Some(GgmlDType::Q8_0),
        Some("q4_0") => Some(GgmlDType::Q4_0),
        Some("f16") => Some(GgmlDType::F16),
        Some("f32") => Some(GgmlDType::F32),
        Some(other) => anyhow::bail!("--quant {other}: pupil writes q8_0, q4_0, f16 or f32"),
    };
    // Merging reads the mapped weights on the host, whatever --device says.
    let host = super::Exec {
        threads: 1,
        device: crate::model::DeviceRequest::Exact(crate::model::Device::Cpu),
        cache: Default::default(),
        layout: crate::generate::WeightLayout::Mapped,
    };
    let rt = a.adapters.load(&a.model.model, host)?;
    let adapters = rt.model.adapters();
    let writer = crate::model::lora::merge(&rt.file, &rt.model.cfg, adapters, quant)?;
    writer.write(&a.output).with_context(|| format!("writing {}", a.output.display()))?;
    println!("{}", a.output.display());
    Ok(())
}
