//! `perplexity`.

use std::io::Write;

use anyhow::Context;
use clap::Args;

use super::{AdapterArgs, ModelArg};
use crate::bench::perplexity as score;
use crate::bench::quality::kl_divergence;

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Adapters on the scored model (llama-perplexity's --lora / --lora-scaled); with
    /// --kl-reference, the KL divergence is the adapted model's.
    #[command(flatten)]
    pub adapters: AdapterArgs,
    /// Text file to score.
    #[arg(short = 'f', long)]
    pub file: std::path::PathBuf,
    /// Tokens per chunk (llama-perplexity's -c).
    #[arg(short = 'c', long, default_value_t = 512)]
    pub ctx_size: usize,
    /// Score at most this many chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Also compare with this reference model (same vocabulary): mean KL divergence
    /// and how often both pick the same top token, like llama-perplexity's
    /// --kl-divergence, with both models run side by side.
    #[arg(long, value_name = "MODEL")]
    pub kl_reference: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn perplexity(a: PerplexityArgs, exec: super::Exec) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let rt = a.adapters.load(&a.model.model, exec)?;
    let r = score(&rt, &text, a.ctx_size, a.chunks, |done, total, ppl| {
        eprint!("\rpupil: chunk {done}/{total}, running PPL {ppl:.4}");
        let _ = std::io::stderr().flush();
    })?;
    eprintln!();
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    println!("{} chunks of {} tokens, {} tokens scored ({} bytes)", r.chunks, r.n_ctx, r.scored_tokens, r.scored_bytes);
    println!("PPL = {:.4} ± {:.4}, bits/byte = {:.4}", r.ppl, r.ppl_err, r.bits_per_byte);
    if let Some(reference) = &a.kl_reference {
        let reference = exec.load(reference)?;
        let k = kl_divergence(&rt, &reference, &text, a.ctx_size, a.chunks, |done, total, kld| {
            eprint!("\rpupil: KL chunk {done}/{total}, running mean KLD {kld:.6}");
            let _ = std::io::stderr().flush();
        })?;
        eprintln!();
        if a.json {
            println!("{}", serde_json::to_string(&k)?);
        }
        println!(
            "Mean KLD = {:.6} ± {:.6}, max {:.4}, same top p = {:.3} % ({} tokens)",
            k.mean_kld,
            k.kld_err,
            k.max_kld,
            k.same_top * 100.0,
            k.scored_tokens
        );
    }
    Ok(())
}
