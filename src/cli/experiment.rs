//! `experiment baking`: the prompt-baking evaluation of `docs/distillation.md`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{AdapterArgs, ModelArg};
use crate::svg::{line_chart, Series};
use crate::targets::make::prompt_lines;
use crate::targets::TargetFile;
use crate::train::baking::evaluate_baking;
use crate::train::checkpoint::Checkpoint;

#[derive(Subcommand, Debug)]
pub enum ExperimentCommand {
    /// Held-out KL (full distributions) and top-1 agreement of a student (optionally with
    /// --lora) against the same model given a system prompt, and its greedy replies.
    Baking(BakingArgs),
    /// One chart of the held-out KL curves stored in several training checkpoints.
    Curves(CurvesArgs),
}

#[derive(Args, Debug)]
pub struct CurvesArgs {
    /// `NAME=ADAPTER.ckpt` per line of the chart.
    #[arg(required = true)]
    pub runs: Vec<String>,
    #[arg(short = 'o', long)]
    pub output: PathBuf,
}

#[derive(Args, Debug)]
pub struct BakingArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub adapters: AdapterArgs,
    /// Held-out targets made with `targets make --prompts … --generate … --teacher-system …`.
    #[arg(long)]
    pub held: PathBuf,
    /// The prompts file and split those targets were made from.
    #[arg(long)]
    pub prompts: PathBuf,
    #[arg(long, default_value = "held_out")]
    pub split: String,
    /// The system prompt the teacher saw.
    #[arg(long)]
    pub teacher_system: String,
    /// Tokens per greedy student reply.
    #[arg(long, default_value_t = 48)]
    pub max_tokens: usize,
    /// Count greedy replies starting with this.
    #[arg(long, default_value = "Arr!")]
    pub prefix: String,
    /// Print this many replies.
    #[arg(long, default_value_t = 3)]
    pub show: usize,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: ExperimentCommand, exec: super::Exec) -> anyhow::Result<()> {
    match cmd {
        ExperimentCommand::Baking(a) => baking(a, exec),
        ExperimentCommand::Curves(a) => curves(a),
    }
}

fn curves(a: CurvesArgs) -> anyhow::Result<()> {
    const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
    let mut runs = Vec::new();
    for (i, spec) in a.runs.iter().enumerate() {
        let (name, path) = spec.split_once('=').ok_or_else(|| anyhow::anyhow!("{spec:?}: expected NAME=CHECKPOINT"))?;
        let ck = Checkpoint::load(std::path::Path::new(path))?;
        let points: Vec<(f64, f64)> =
            ck.state.curve.iter().filter_map(|p| p.eval_kl.map(|k| (p.step as f64, k))).collect();
        runs.push((name.to_string(), COLORS[i % COLORS.len()], points));
    }
    let series: Vec<Series> = runs.iter().map(|(n, c, p)| Series { name: n, color: c, points: p.clone() }).collect();
    let svg = line_chart("held-out KL during training", "step", "KL (stored view), nats", &series);
    crate::fsutil::write_atomic(&a.output, svg.as_bytes())?;
    println!("{}", a.output.display());
    Ok(())
}

fn baking(a: BakingArgs, exec: super::Exec) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.prompts).with_context(|| format!("reading {}", a.prompts.display()))?;
    let prompts = prompt_lines(&text, Some(&a.split))?;
    let held = TargetFile::open(&a.held).with_context(|| format!("opening {}", a.held.display()))?;
    let teacher = exec.load(&a.model.model)?;
    let student = a.adapters.load(&a.model.model, exec)?;
    let r = evaluate_baking(&teacher, &student, &held, &prompts, &a.teacher_system, a.max_tokens, &a.prefix)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "held-out KL {:.4} nats over {} positions, top-1 agreement {:.1} %, {}/{} greedy replies start with {:?} \
         (teacher {}/{}), distinct 2-grams {:.3} (teacher {:.3})",
        r.kl,
        r.positions,
        r.top1 * 100.0,
        r.prefixed_replies,
        r.prompts,
        a.prefix,
        r.teacher_prefixed_replies,
        r.prompts,
        r.distinct_2grams,
        r.teacher_distinct_2grams
    );
    for (prompt, reply) in r.replies.iter().take(a.show) {
        println!("> {prompt}\n{reply}\n");
    }
    Ok(())
}
