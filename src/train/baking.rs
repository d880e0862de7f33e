//! The prompt-baking evaluation: how close a student (without the system prompt, with or
//! without an adapter) comes to the teacher (the same base model *with* the system
//! prompt) on held-out prompts, measured from full distributions rather than the stored
//! sparse view, plus what its greedy replies look like.

use serde::Serialize;

use super::loss::full_kl;
use super::TrainError;
use crate::generate::sampler::argmax;
use crate::generate::{Runtime, Sampler, SamplerConfig, Session};
use crate::targets::make::{logits_at, with_teacher_system, PromptLine};
use crate::targets::{TargetFile, FLAG_TARGET};

#[derive(Debug, Clone, Serialize)]
pub struct BakingEval {
    /// Mean KL(teacher ‖ student) over the teacher's reply positions, in nats.
    pub kl: f64,
    /// Fraction of those positions where both models' most likely token agree.
    pub top1: f64,
    pub positions: usize,
    /// Greedy student replies that start with `prefix`.
    pub prefixed_replies: usize,
    pub prompts: usize,
    /// (prompt, greedy student reply) for every held-out prompt.
    pub replies: Vec<(String, String)>,
}

fn invalid(e: impl std::fmt::Display) -> TrainError {
    TrainError::Invalid(e.to_string())
}

/// Evaluates `student` against `teacher` + `system` on the replies stored in `held` (made
/// by `targets make --prompts … --generate` from `prompts`, in order).
pub fn evaluate_baking(
    teacher: &Runtime,
    student: &Runtime,
    held: &TargetFile,
    prompts: &[PromptLine],
    system: &str,
    max_tokens: usize,
    prefix: &str,
) -> Result<BakingEval, TrainError> {
    if held.len() != prompts.len() {
        return Err(TrainError::Invalid(format!(
            "{} held-out sequences but {} prompts: use the same prompts file and --split as `targets make`",
            held.len(),
            prompts.len()
        )));
    }
    let n_vocab = student.model.cfg.n_vocab;
    let (mut kl, mut agree, mut positions, mut prefixed) = (0f64, 0usize, 0usize, 0usize);
    let mut replies = Vec::new();
    for (i, line) in prompts.iter().enumerate() {
        let rec = held.sequence(i).map_err(invalid)?;
        let first = rec.flags.iter().position(|&f| f & FLAG_TARGET != 0).ok_or_else(|| invalid("no targets"))?;
        let p = first + 1;
        let m = rec.targets.len();
        let render = |rt: &Runtime, msgs: &[crate::tokenizer::Message]| -> Result<Vec<u32>, TrainError> {
            let text = rt.template.render(msgs, true).map_err(invalid)?;
            rt.tokenizer.encode_prompt(&text, true).map_err(invalid)
        };
        let student_prompt = render(student, &line.messages)?;
        if student_prompt[..] != rec.tokens[..p] {
            return Err(TrainError::Invalid(format!("held-out sequence {i} does not start with prompt {i}")));
        }
        let reply = &rec.tokens[p..];
        let teacher_prompt = render(teacher, &with_teacher_system(&line.messages, Some(system)))?;
        let tp = teacher_prompt.len();
        let seq: Vec<u32> = teacher_prompt.iter().chain(reply).copied().collect();
        let t_logits = logits_at(teacher, &seq, tp - 1..tp - 1 + m).map_err(invalid)?;
        let s_logits = logits_at(student, &rec.tokens, p - 1..p - 1 + m).map_err(invalid)?;
        for (t, s) in t_logits.chunks_exact(n_vocab).zip(s_logits.chunks_exact(n_vocab)) {
            kl += full_kl(t, s);
            agree += (argmax(t) == argmax(s)) as usize;
            positions += 1;
        }
        let mut session = Session::new(student, student_prompt.len() + max_tokens).map_err(invalid)?;
        let mut sampler = Sampler::new(SamplerConfig::greedy());
        let g = session.generate(&student_prompt, max_tokens, &mut sampler, |_| {}).map_err(invalid)?;
        prefixed += g.text.trim_start().starts_with(prefix) as usize;
        let user = line.messages.last().map(|m| m.content.clone()).unwrap_or_default();
        replies.push((user, g.text.trim().to_string()));
    }
    Ok(BakingEval {
        kl: kl / positions.max(1) as f64,
        top1: agree as f64 / positions.max(1) as f64,
        positions,
        prefixed_replies: prefixed,
        prompts: prompts.len(),
        replies,
    })
}
