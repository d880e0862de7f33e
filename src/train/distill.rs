//! The distillation loop: teacher-target sequences → windows → a fixed, seeded schedule
//! of optimizer steps → LoRA updates, with held-out evaluation and checkpoints.
//!
//! The schedule (which windows each step sees) is a pure function of the targets and the
//! options, and every product sums in a fixed order, so a run resumed from a checkpoint
//! repeats the uninterrupted run bit for bit.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::checkpoint::{Checkpoint, CheckpointState, CurvePoint};
use super::loss::{position_loss, LossConfig};
use super::optim::{learning_rate, AdamW, OptimConfig};
use super::{LoraParams, Student, TrainError};
use crate::generate::Runtime;
use crate::model::Target;
use crate::rng::Rng;
use crate::targets::{TargetFile, FLAG_TARGET, FLAG_TRAIN};

/// Options of a run; together with the inputs they make its identity for `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillConfig {
    /// LoRA rank. Default 16.
    pub rank: usize,
    /// LoRA alpha (the update is scaled by alpha / rank). Default 32.
    pub alpha: f32,
    /// Which linear layers get adapters. Default all seven.
    pub layers: Vec<Target>,
    pub optim: OptimConfig,
    pub loss: LossConfig,
    /// Passes over the data (ignored when `steps` is set). Default 1.
    pub epochs: usize,
    /// Optimizer steps (overrides `epochs`, cycling the data as needed).
    pub steps: Option<usize>,
    /// Tokens per micro-batch: windows are added until this many (0: one window each).
    /// Default 0.
    pub batch_tokens: usize,
    /// Micro-batches per optimizer step. Default 1.
    pub grad_accum: usize,
    /// Longest window in tokens; longer sequences are cut. Default 256.
    pub seq: usize,
    /// Seeds the adapter initialisation and the data order. Default 0.
    pub seed: u64,
}

impl Default for DistillConfig {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            layers: Target::ALL.to_vec(),
            optim: OptimConfig::default(),
            loss: LossConfig::default(),
            epochs: 1,
            steps: None,
            batch_tokens: 0,
            grad_accum: 1,
            seq: 256,
            seed: 0,
        }
    }
}

/// A window of one sequence that has trained positions.
#[derive(Debug, Clone, Copy)]
struct Window {
    sequence: usize,
    start: usize,
    len: usize,
    trained: usize,
}

/// Windows of at most `seq` tokens over every sequence, keeping those with a position
/// that is both stored and trained.
fn windows(file: &TargetFile, seq: usize) -> Result<Vec<Window>, TrainError> {
    let mut out = Vec::new();
    for i in 0..file.len() {
        let rec = file.sequence(i).map_err(|e| TrainError::Invalid(e.to_string()))?;
        for start in (0..rec.tokens.len()).step_by(seq) {
            let len = seq.min(rec.tokens.len() - start);
            let trained =
                rec.flags[start..start + len].iter().filter(|&&f| f & (FLAG_TARGET | FLAG_TRAIN) == 3).count();
            if trained > 0 {
                out.push(Window { sequence: i, start, len, trained });
            }
        }
    }
    Ok(out)
}

/// The steps of the run: each a list of micro-batches, each a list of windows.
fn schedule(windows: &[Window], cfg: &DistillConfig) -> Vec<Vec<Vec<Window>>> {
    let order = |epoch: usize| {
        let mut idx: Vec<usize> = (0..windows.len()).collect();
        let mut rng = Rng::new(cfg.seed ^ (epoch as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
        for i in (1..idx.len()).rev() {
            idx.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        idx
    };
    let mut steps = Vec::new();
    let mut micro = Vec::new();
    let mut step = Vec::new();
    let mut tokens = 0;
    let mut epoch = 0;
    loop {
        let done = match cfg.steps {
            Some(n) => steps.len() >= n,
            None => epoch >= cfg.epochs,
        };
        if done || windows.is_empty() {
            break;
        }
        for i in order(epoch) {
            micro.push(windows[i]);
            tokens += windows[i].len;
            if tokens >= cfg.batch_tokens {
                step.push(std::mem::take(&mut micro));
                tokens = 0;
                if step.len() == cfg.grad_accum.max(1) {
                    steps.push(std::mem::take(&mut step));
                    if cfg.steps.is_some_and(|n| steps.len() >= n) {
                        break;
                    }
                }
            }
        }
        epoch += 1;
    }
    if cfg.steps.is_none() {
        if !micro.is_empty() {
            step.push(micro);
        }
        if !step.is_empty() {
            steps.push(step);
        }
    }
    steps
}

/// Held-out figures over every trained position of an evaluation file.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EvalResult {
    pub kl: f64,
    pub top1: f64,
    pub positions: usize,
}

/// Runs `windows` through the student and returns their per-position losses summed.
fn run_window(
    student: &Student,
    lora: &mut LoraParams,
    file: &TargetFile,
    w: &Window,
    cfg: &LossConfig,
    weight: Option<f32>,
    mut on_position: impl FnMut(&super::loss::PositionLoss),
) -> Result<(), TrainError> {
    let rec = file.sequence(w.sequence).map_err(|e| TrainError::Invalid(e.to_string()))?;
    // Map positions to their stored target: the k-th TARGET-flagged position holds the
    // k-th entry.
    let mut target_index = vec![usize::MAX; rec.tokens.len()];
    let mut k = 0;
    for (j, &f) in rec.flags.iter().enumerate() {
        if f & FLAG_TARGET != 0 {
            target_index[j] = k;
            k += 1;
        }
    }
    let range = w.start..w.start + w.len;
    let positions: Vec<usize> =
        range.clone().filter(|&j| rec.flags[j] & (FLAG_TARGET | FLAG_TRAIN) == 3).map(|j| j - w.start).collect();
    let tokens = &rec.tokens[range];
    let train = weight.is_some();
    let losses = student.run(lora, tokens, &positions, train, |i, logits, dlogits| {
        let j = w.start + positions[i];
        let dist = &rec.targets[target_index[j]];
        let next = rec.tokens.get(j + 1).copied();
        position_loss(logits, dist, next, cfg, weight.unwrap_or(0.0), dlogits)
    })?;
    losses.iter().for_each(&mut on_position);
    Ok(())
}

/// Mean KL and top-1 agreement of the student (with `lora`) on `file`'s trained positions.
pub fn evaluate(
    student: &Student,
    lora: &mut LoraParams,
    file: &TargetFile,
    cfg: &DistillConfig,
) -> Result<EvalResult, TrainError> {
    let (mut kl, mut agree, mut n) = (0f64, 0usize, 0usize);
    for w in windows(file, cfg.seq)? {
        run_window(student, lora, file, &w, &cfg.loss, None, |l| {
            kl += l.kl;
            agree += l.top1_agrees as usize;
            n += 1;
        })?;
    }
    Ok(EvalResult { kl: kl / n.max(1) as f64, top1: agree as f64 / n.max(1) as f64, positions: n })
}

/// Progress reported after each step.
pub struct StepReport<'a> {
    pub step: usize,
    pub total: usize,
    pub loss: f64,
    pub lr: f32,
    pub tokens_per_second: f64,
    pub eval: Option<EvalResult>,
    pub curve: &'a [CurvePoint],
}

/// Inputs and outputs of a run.
pub struct DistillJob<'a> {
    pub rt: &'a Runtime,
    pub targets: &'a TargetFile,
    pub eval: Option<&'a TargetFile>,
    pub cfg: DistillConfig,
    /// Evaluate every this many steps (and at the end). 0: only at the start and end.
    pub eval_every: usize,
    /// Save a checkpoint every this many steps (and at the end). 0: only at the end.
    pub checkpoint_every: usize,
    pub checkpoint: PathBuf,
    /// Stop after this many steps of this invocation (for tests that simulate a kill).
    pub stop_after: Option<usize>,
    /// Recompute activations in the backward pass (less memory, same result).
    pub recompute: bool,
}

/// What a finished (or stopped) run produced.
pub struct DistillOutcome {
    pub lora: LoraParams,
    pub state: CheckpointState,
    pub finished: bool,
}

/// The identity of a job, stored in checkpoints (passed through JSON text once, so it
/// compares equal to what a checkpoint reads back: f32 options print shortest-form).
fn job_identity(job: &DistillJob) -> serde_json::Value {
    let h = job.targets.header();
    let v = serde_json::json!({
        "config": job.cfg,
        "targets": { "teacher": h.teacher, "source": h.source, "encoding": h.encoding, "totals": job.targets.totals() },
        "student": { "architecture": job.rt.model.cfg.architecture, "fingerprint": crate::fsutil::hex(job.rt.tokenizer.fingerprint()),
                     "file_bytes": job.rt.file.file_size() },
    });
    serde_json::from_str(&v.to_string()).unwrap_or(v)
}

/// Trains (or, with `resume`, continues) and returns the adapters.
pub fn distill(
    job: &DistillJob,
    resume: bool,
    mut on_step: impl FnMut(&StepReport),
) -> Result<DistillOutcome, TrainError> {
    let rt = job.rt;
    job.targets.header().check_student(rt.tokenizer.fingerprint()).map_err(|e| TrainError::Invalid(e.to_string()))?;
    if let Some(eval) = job.eval {
        eval.header().check_student(rt.tokenizer.fingerprint()).map_err(|e| TrainError::Invalid(e.to_string()))?;
    }
    let cfg = &job.cfg;
    if cfg.rank == 0 || cfg.layers.is_empty() || cfg.seq < 2 {
        return Err(TrainError::Invalid("rank, layers and --seq must be positive".into()));
    }
    let mut student = Student::new(&rt.model)?;
    student.recompute = job.recompute;
    let all = windows(job.targets, cfg.seq)?;
    if all.is_empty() {
        return Err(TrainError::Invalid("the targets have no trained positions".into()));
    }
    let steps = schedule(&all, cfg);
    let identity = job_identity(job);

    let mut lora = LoraParams::for_model(student.cfg(), cfg.rank, cfg.alpha, &cfg.layers, cfg.seed);
    let mut optim = AdamW::new(lora.adapter.values.len());
    let mut state =
        CheckpointState { job: identity.clone(), step: 0, curve: Vec::new(), train_seconds: 0.0, tokens: 0 };
    if resume {
        let ck = Checkpoint::load(&job.checkpoint)?;
        if ck.state.job != identity {
            return Err(TrainError::Invalid(format!(
                "checkpoint {} was made by a different run (options, targets or model differ); \
                 remove it or drop --resume",
                job.checkpoint.display()
            )));
        }
        if ck.params.len() != lora.adapter.values.len() {
            return Err(TrainError::Invalid("checkpoint parameters do not fit these adapters".into()));
        }
        lora.adapter.values = ck.params;
        optim = ck.optim;
        state = ck.state;
    }

    let save = |lora: &LoraParams, optim: &AdamW, state: &CheckpointState| {
        Checkpoint { state: state.clone(), params: lora.adapter.values.clone(), optim: optim.clone() }
            .save(&job.checkpoint)
    };
    let eval_now = |lora: &mut LoraParams| -> Result<Option<EvalResult>, TrainError> {
        job.eval.map(|f| evaluate(&student, lora, f, cfg)).transpose()
    };
    if state.step == 0 && state.curve.is_empty() {
        let e = eval_now(&mut lora)?;
        state.curve.push(CurvePoint { step: 0, loss: None, eval_kl: e.map(|e| e.kl), eval_top1: e.map(|e| e.top1) });
    }
    let total = steps.len();
    let mut ran = 0;
    while state.step < total {
        if job.stop_after.is_some_and(|n| ran >= n) {
            return Ok(DistillOutcome { lora, state, finished: false });
        }
        let t0 = Instant::now();
        let step = &steps[state.step];
        let n_positions: usize = step.iter().flatten().map(|w| w.trained).sum();
        let weight = 1.0 / n_positions as f32;
        lora.grads.iter_mut().for_each(|g| *g = 0.0);
        let (mut loss, mut tokens) = (0f64, 0usize);
        for w in step.iter().flatten() {
            run_window(&student, &mut lora, job.targets, w, &cfg.loss, Some(weight), |l| loss += l.loss)?;
            tokens += w.len;
        }
        let lr = learning_rate(&cfg.optim, state.step, total);
        optim.step(&cfg.optim, lr, &mut lora.adapter.values, &mut lora.grads);
        state.step += 1;
        ran += 1;
        state.train_seconds += t0.elapsed().as_secs_f64();
        state.tokens += tokens as u64;
        let last = state.step == total;
        let eval = if last || (job.eval_every > 0 && state.step.is_multiple_of(job.eval_every)) {
            eval_now(&mut lora)?
        } else {
            None
        };
        state.curve.push(CurvePoint {
            step: state.step,
            loss: Some(loss / n_positions as f64),
            eval_kl: eval.map(|e| e.kl),
            eval_top1: eval.map(|e| e.top1),
        });
        if last || (job.checkpoint_every > 0 && state.step.is_multiple_of(job.checkpoint_every)) {
            save(&lora, &optim, &state)?;
        }
        on_step(&StepReport {
            step: state.step,
            total,
            loss: loss / n_positions as f64,
            lr,
            tokens_per_second: state.tokens as f64 / state.train_seconds.max(1e-9),
            eval,
            curve: &state.curve,
        });
    }
    Ok(DistillOutcome { lora, state, finished: true })
}

/// `ADAPTER.ckpt` beside the adapter.
pub fn checkpoint_path(adapter: &Path) -> PathBuf {
    let mut name = adapter.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".ckpt");
    adapter.with_file_name(name)
}
