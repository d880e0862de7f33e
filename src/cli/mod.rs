//! The `pupil` command line: argument parsing and printing only; all work is done by the
//! library.

mod bench;
mod distill;
mod experiment;
mod measure;
mod merge;
mod report;
mod run;
#[cfg(feature = "serve")]
mod serve;
mod synth;
mod targets;

use clap::{Args, Parser, Subcommand};

use crate::generate::draft::{DraftModel, Drafter};
use crate::generate::{Rng, Runtime, SamplerConfig, Session, WeightLayout};
use crate::model::{CacheType, CacheTypes, Device, DeviceRequest};

/// Where and how wide a command runs the model: the global `--threads`, `--device` and
/// `--cache-type-k/-v`.
#[derive(Debug, Clone, Copy)]
pub struct Exec {
    pub threads: usize,
    pub device: DeviceRequest,
    pub cache: CacheTypes,
    pub layout: WeightLayout,
}

impl Exec {
    /// The device asked for, checked against this build (`auto` probes for a GPU).
    pub fn device(&self) -> anyhow::Result<Device> {
        Ok(self.device.resolve()?)
    }

    /// Loads `model` (a path or catalog name, pulled if missing) on the chosen device.
    pub fn load(&self, model: &str) -> anyhow::Result<Runtime> {
        let mut rt = Runtime::load_on(model, self.threads, self.device()?, self.layout, true)?;
        rt.model.cache_types = self.cache;
        Ok(rt)
    }
}

#[derive(Parser, Debug)]
#[command(name = "pupil", version, about = "Run, chat with and measure small quantized GGUF language models.")]
pub struct Cli {
    /// Worker threads (0: one per core).
    #[arg(short = 't', long, global = true, default_value_t = 0)]
    pub threads: usize,
    /// Where the model runs: auto (a GPU if this build and machine have one, else the
    /// CPU), cpu, cuda[:N] or metal[:N]. GPUs need a build with `--features cuda|metal`.
    #[arg(long, global = true, default_value = "auto", env = "PUPIL_DEVICE")]
    pub device: DeviceRequest,
    /// How the KV cache stores keys on the CPU: f16 (llama.cpp's default; half the memory
    /// and half the bytes attention reads) or f32.
    #[arg(long = "cache-type-k", global = true, default_value = "f16", value_name = "TYPE")]
    pub cache_type_k: CacheType,
    /// How the KV cache stores values on the CPU: f16 or f32.
    #[arg(long = "cache-type-v", global = true, default_value = "f16", value_name = "TYPE")]
    pub cache_type_v: CacheType,
    /// Read every weight in place from the memory map instead of re-laying quantized
    /// matrices for the CPU's eight-row kernels at load (llama.cpp's flag): zero copies,
    /// slower decode and prefill.
    #[arg(long = "no-repack", global = true)]
    pub no_repack: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Download a catalog model, verify its sha256 and install it.
    Pull(run::PullArgs),
    /// Show the model catalog and which models are present.
    List,
    /// Describe a GGUF file: architecture, hyperparameters, tokenizer, tensors.
    Inspect(run::InspectArgs),
    /// Print the token ids of a text.
    Tokenize(run::TokenizeArgs),
    /// Continue a prompt, streaming the generated text to stdout.
    Complete(run::CompleteArgs),
    /// Chat interactively (or from piped stdin) using the model's chat template.
    Chat(run::ChatArgs),
    /// Perplexity and bits per byte of a text file, by llama-perplexity's method.
    Perplexity(measure::PerplexityArgs),
    /// Speed like llama-bench (pp/tg t/s), plus load time, memory and device identification.
    Bench(bench::BenchArgs),
    /// Distil teacher targets into a LoRA adapter on the frozen quantized student.
    Distill(distill::DistillArgs),
    /// Merge `bench -o jsonl` results from many devices into one markdown report + SVG.
    Report(report::ReportArgs),
    /// Write a GGUF with a published model's exact shapes and random weights (speed and
    /// memory runs; marked synthetic).
    Synth(synth::SynthArgs),
    /// Bake LoRA adapters into a standalone GGUF (merged weights requantized).
    Merge(merge::MergeArgs),
    /// Serve the model over OpenAI's HTTP API (chat, completions, streaming, logprobs),
    /// decoding concurrent requests together.
    #[cfg(feature = "serve")]
    Serve(serve::ServeArgs),
    /// Built-in experiments (prompt baking evaluation).
    #[command(subcommand)]
    Experiment(experiment::ExperimentCommand),
    /// Teacher targets: make them with a teacher model, import engine dumps, inspect, verify.
    #[command(subcommand)]
    Targets(targets::TargetsCommand),
}

/// `--model`: a GGUF path or a catalog name (pulled on first use).
#[derive(Args, Debug, Clone)]
pub struct ModelArg {
    /// GGUF file or catalog name (see `pupil list`).
    #[arg(short = 'm', long = "model", default_value = "smollm2-135m-instruct")]
    pub model: String,
}

/// LoRA adapters applied at inference (the base file is not touched).
#[derive(Args, Debug, Clone, Default)]
pub struct AdapterArgs {
    /// GGUF LoRA adapter (llama.cpp layout); repeat to stack several.
    #[arg(long = "lora", value_name = "ADAPTER")]
    pub lora: Vec<std::path::PathBuf>,
    /// Scale of each --lora in order (default 1.0 for any not given).
    #[arg(long = "lora-scale", value_name = "S")]
    pub lora_scale: Vec<f32>,
}

impl AdapterArgs {
    /// Loads the model with the adapters applied.
    pub fn load(&self, model: &str, exec: Exec) -> anyhow::Result<Runtime> {
        anyhow::ensure!(self.lora_scale.len() <= self.lora.len(), "more --lora-scale values than --lora adapters");
        let mut rt = exec.load(model)?;
        for (i, path) in self.lora.iter().enumerate() {
            let adapter = crate::model::Adapter::load(path, &rt.model.cfg)?;
            rt.model.add_adapter(adapter, self.lora_scale.get(i).copied().unwrap_or(1.0))?;
        }
        Ok(rt)
    }
}

/// Sampling options, with llama.cpp's defaults.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Temperature; 0 is greedy (argmax).
    #[arg(long, visible_alias = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1.0: off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens below min-p × the top probability (0: off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalty for tokens among the last --repeat-last-n (1.0: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed (default: from the clock); the same seed gives the same output.
    #[arg(short = 's', long)]
    pub seed: Option<u64>,
    /// Stop after this many generated tokens.
    #[arg(short = 'n', long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Context size in tokens (clamped to the model's trained context).
    #[arg(short = 'c', long, default_value_t = 4096)]
    pub ctx_size: usize,
    /// Speculative decoding by prompt lookup: draft tokens from text that already
    /// occurred. The output is the same as without; tasks that repeat their context
    /// (rewriting, editing code) decode faster.
    #[arg(long, conflicts_with = "draft")]
    pub lookup: bool,
    /// Speculative decoding with a draft model (GGUF path or catalog name) of the same
    /// vocabulary, which decodes ahead greedily. The output is the same as without.
    #[arg(long, value_name = "MODEL")]
    pub draft: Option<String>,
    /// The most tokens drafted per step (with --lookup or --draft).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub draft_max: usize,
}

impl SamplingArgs {
    /// The `--draft` model, loaded on the CPU (where speculative decoding runs).
    pub fn load_draft(&self, exec: &Exec) -> anyhow::Result<Option<Runtime>> {
        let Some(model) = &self.draft else { return Ok(None) };
        let on_cpu = Exec { device: DeviceRequest::Exact(Device::Cpu), ..*exec };
        Ok(Some(on_cpu.load(model)?))
    }

    /// Makes `session` decode speculatively as `--lookup` or `--draft` ask.
    pub fn speculate<'r>(&self, session: &mut Session<'r>, draft: Option<&'r Runtime>) -> anyhow::Result<()> {
        let drafter = match draft {
            Some(rt) => Some(Drafter::Model(Box::new(DraftModel::new(rt, session.runtime(), self.ctx_size)?))),
            None => self.lookup.then_some(Drafter::Lookup),
        };
        Ok(session.speculate(drafter, self.draft_max)?)
    }

    pub fn sampler_config(&self) -> anyhow::Result<SamplerConfig> {
        anyhow::ensure!(self.temperature >= 0.0 && self.temperature.is_finite(), "--temperature must be ≥ 0");
        anyhow::ensure!((0.0..=1.0).contains(&self.top_p), "--top-p must be in [0, 1]");
        anyhow::ensure!((0.0..=1.0).contains(&self.min_p), "--min-p must be in [0, 1]");
        anyhow::ensure!(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite(), "--repeat-penalty must be > 0");
        Ok(SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed.unwrap_or_else(Rng::entropy_seed),
        })
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let threads = cli.threads;
    let cache = CacheTypes { k: cli.cache_type_k, v: cli.cache_type_v };
    let layout = if cli.no_repack { WeightLayout::Mapped } else { WeightLayout::Repacked };
    let exec = Exec { threads, device: cli.device, cache, layout };
    match cli.command {
        Command::Pull(a) => run::pull(a),
        Command::List => run::list(),
        Command::Inspect(a) => run::inspect(a),
        Command::Tokenize(a) => run::tokenize(a, threads),
        Command::Complete(a) => run::complete(a, exec),
        Command::Chat(a) => run::chat(a, exec),
        Command::Perplexity(a) => measure::perplexity(a, exec),
        Command::Bench(a) => bench::bench(a, cli.device, cache, layout),
        Command::Targets(c) => targets::run(c, exec),
        Command::Distill(a) => distill::distill(a, exec),
        Command::Experiment(c) => experiment::run(c, exec),
        Command::Synth(a) => synth::synth(a),
        Command::Report(a) => report::report(a),
        Command::Merge(a) => merge::merge(a),
        #[cfg(feature = "serve")]
        Command::Serve(a) => serve::serve(a, exec),
    }
}
