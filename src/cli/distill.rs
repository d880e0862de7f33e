//! `distill`: train a LoRA adapter from teacher targets.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::{Exec, ModelArg};
use crate::bench::memory::{memory_status, mib};
use crate::generate::WeightLayout;
use crate::gguf::GgmlDType;
use crate::model::Target;
use crate::svg::{line_chart, Series};
use crate::targets::TargetFile;
use crate::train::checkpoint::CurvePoint;
use crate::train::distill::{checkpoint_path, distill as run_distill, DistillConfig, DistillJob};
use crate::train::loss::LossConfig;
use crate::train::optim::OptimConfig;

/// `distill --outtype`: the adapter file's tensor type.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Outtype {
    F32,
    F16,
}

impl Outtype {
    fn dtype(self) -> GgmlDType {
        match self {
            Outtype::F32 => GgmlDType::F32,
            Outtype::F16 => GgmlDType::F16,
        }
    }
}

#[derive(Args, Debug)]
pub struct DistillArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Teacher-target file (`pupil targets make` / `import`).
    #[arg(long)]
    pub targets: PathBuf,
    /// Output adapter (GGUF LoRA, llama.cpp layout); the checkpoint goes to ADAPTER.ckpt,
    /// the learning curve to ADAPTER.svg.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// How the adapter file stores its tensors: f32 (exactly as trained) or f16 (half
    /// the size; llama.cpp's converter writes f16). The checkpoint always keeps f32.
    #[arg(long, value_enum, default_value_t = Outtype::F32)]
    pub outtype: Outtype,
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    #[arg(long, default_value_t = 32.0)]
    pub alpha: f32,
    /// Linear layers to adapt: all, or a list of q,k,v,o,gate,up,down.
    #[arg(long, default_value = "all")]
    pub layers: String,
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f32,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Linear warm-up steps before the cosine decay.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Clip the gradient norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f32,
    /// Optimizer steps (default: --epochs passes over the data).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Tokens per micro-batch (0: one sequence each).
    #[arg(long, default_value_t = 0)]
    pub batch_tokens: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Longest training window in tokens.
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Student softening temperature (loss scaled by T²).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Weight of hard-label cross-entropy on the stored next tokens (1: hard labels only).
    #[arg(long, default_value_t = 0.0)]
    pub hard_weight: f32,
    /// Held-out targets: KL and top-1 agreement at --eval-every steps.
    #[arg(long)]
    pub eval_targets: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    pub eval_every: usize,
    /// Save a checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 20)]
    pub checkpoint_every: usize,
    /// Continue from ADAPTER.ckpt (same options and inputs required).
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many steps of this invocation, keeping the checkpoint (a
    /// deliberate interruption, e.g. to split training across sessions).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Keep only each layer's input and recompute its activations in the backward pass
    /// (memory of one layer's activations instead of all; about a third more compute).
    #[arg(long)]
    pub recompute: bool,
}

pub fn distill(a: DistillArgs, exec: super::Exec) -> anyhow::Result<()> {
    anyhow::ensure!(a.temperature > 0.0, "--temperature must be > 0");
    anyhow::ensure!((0.0..=1.0).contains(&a.hard_weight), "--hard-weight must be in [0, 1]");
    anyhow::ensure!(a.lr > 0.0 && a.lr.is_finite(), "--lr must be > 0");
    let layers = Target::parse_list(&a.layers).map_err(anyhow::Error::msg)?;
    let cfg = DistillConfig {
        rank: a.rank,
        alpha: a.alpha,
        layers,
        optim: OptimConfig {
            lr: a.lr,
            weight_decay: a.weight_decay,
            warmup_steps: a.warmup,
            clip_norm: a.clip,
            ..OptimConfig::default()
        },
        loss: LossConfig { temperature: a.temperature, hard_weight: a.hard_weight },
        epochs: a.epochs,
        steps: a.steps,
        batch_tokens: a.batch_tokens,
        grad_accum: a.grad_accum,
        seq: a.seq,
        seed: a.seed,
    };
    let targets = TargetFile::open(&a.targets).with_context(|| format!("opening {}", a.targets.display()))?;
    let eval = match &a.eval_targets {
        Some(p) => Some(TargetFile::open(p).with_context(|| format!("opening {}", p.display()))?),
        None => None,
    };
    // Training multiplies in f32 from dequantized rows: weights re-laid for the integer
    // kernels would only cost load time.
    let rt = Exec { layout: WeightLayout::Mapped, ..exec }.load(&a.model.model)?;
    let checkpoint = checkpoint_path(&a.output);
    if !a.resume && checkpoint.exists() {
        anyhow::bail!(
            "{} exists: pass --resume to continue that run, or remove it to start over",
            checkpoint.display()
        );
    }
    let job = DistillJob {
        rt: &rt,
        targets: &targets,
        eval: eval.as_ref(),
        cfg,
        eval_every: a.eval_every,
        checkpoint_every: a.checkpoint_every,
        checkpoint: checkpoint.clone(),
        stop_after: a.stop_after,
        recompute: a.recompute,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("distill [{bar:30}] {pos}/{len} steps {msg} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    // The peak of anonymous memory falls inside a step; sample it from the side.
    let sampler = AnonPeak::start();
    let outcome = rt.pool.install(|| {
        run_distill(&job, a.resume, |r| {
            bar.set_length(r.total as u64);
            bar.set_position(r.step as u64);
            let eval = r.eval.map(|e| format!(", held-out KL {:.4} top-1 {:.1} %", e.kl, e.top1 * 100.0));
            bar.set_message(format!(
                "loss {:.4}, lr {:.2e}, {:.0} tokens/s{}",
                r.loss,
                r.lr,
                r.tokens_per_second,
                eval.clone().unwrap_or_default()
            ));
            if let Some(e) = eval {
                bar.suspend(|| eprintln!("step {}: loss {:.4}{e}", r.step, r.loss));
            }
        })
    })?;
    bar.finish_and_clear();
    let peak_anon = sampler.stop();
    let s = &outcome.state;
    let mem = memory_status();
    eprintln!(
        "pupil: {} steps, {} tokens in {:.1} s of training ({:.1} tokens/s); peak RSS {:.0} MiB, anonymous {:.0} MiB",
        s.step,
        s.tokens,
        s.train_seconds,
        s.tokens as f64 / s.train_seconds.max(1e-9),
        mem.map_or(0.0, |m| mib(m.rss_peak)),
        mib(peak_anon),
    );
    if !outcome.finished {
        eprintln!("pupil: stopped early; continue with the same command plus --resume ({})", checkpoint.display());
        return Ok(());
    }
    let name = a.output.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    outcome
        .lora
        .adapter
        .to_gguf(&rt.model.cfg.architecture, &name, a.outtype.dtype())
        .write(&a.output)
        .with_context(|| format!("writing {}", a.output.display()))?;
    let chart = curve_chart(&s.curve);
    let svg = a.output.with_extension("svg");
    crate::fsutil::write_atomic(&svg, chart.as_bytes()).with_context(|| format!("writing {}", svg.display()))?;
    if let Some(first) = s.curve.first().and_then(|p| p.eval_kl) {
        let last = s.curve.iter().rev().find_map(|p| p.eval_kl.zip(p.eval_top1));
        if let Some((kl, top1)) = last {
            println!("held-out KL {first:.4} → {kl:.4}, top-1 agreement {:.1} %", top1 * 100.0);
        }
    }
    println!("{} (learning curve: {})", a.output.display(), svg.display());
    Ok(())
}

/// Samples this process's anonymous resident memory every 10 ms on a helper thread and
/// keeps the largest value (the kernel tracks the peak of total RSS only).
struct AnonPeak {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl AnonPeak {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = memory_status().map_or(peak, |m| m.rss_anon.max(peak));
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            peak
        });
        Self { stop, handle }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

/// The learning curve: training loss per step and held-out KL where evaluated.
pub fn curve_chart(curve: &[CurvePoint]) -> String {
    let loss: Vec<(f64, f64)> = curve.iter().filter_map(|p| p.loss.map(|l| (p.step as f64, l))).collect();
    let eval: Vec<(f64, f64)> = curve.iter().filter_map(|p| p.eval_kl.map(|k| (p.step as f64, k))).collect();
    let mut series = vec![Series { name: "training loss", color: "#1f77b4", points: loss }];
    if !eval.is_empty() {
        series.push(Series { name: "held-out KL", color: "#d62728", points: eval });
    }
    line_chart("pupil distill", "step", "nats per position", &series)
}
