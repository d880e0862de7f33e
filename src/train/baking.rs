//! The prompt-baking evaluation: how close a student (without the system prompt, with or
//! without an adapter) comes to the teacher (the same base model *with* the system
//! prompt) on held-out prompts, measured from full distributions rather than the stored
//! sparse view, plus what its greedy replies look like.

use serde::Serialize;

use super::loss::full_kl;
use super::TrainError;
use crate::generate::sampler::argmax;
use crate::generate::{Generation, Runtime, Sampler, SamplerConfig, Session};
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
    /// Distinct token 2-grams over all 2-grams of the student's greedy replies (pooled):
    /// low KL with looping text shows here.
    pub distinct_2grams: f64,
    /// The same two measures of the teacher's own greedy replies (with the system prompt):
    /// what the student is aiming at.
    pub teacher_prefixed_replies: usize,
    pub teacher_distinct_2grams: f64,
    pub prompts: usize,
    /// (prompt, greedy student reply) for every held-out prompt.
    pub replies: Vec<(String, String)>,
}

/// Tallies of greedy replies: how many start with the persona's prefix, and their token
/// 2-grams (distinct within each reply, and all).
#[derive(Default)]
struct Replies {
    prefixed: usize,
    distinct: usize,
    total: usize,
}

impl Replies {
    fn add(&mut self, text: &str, ids: &[u32], prefix: &str) {
        self.prefixed += text.trim_start().starts_with(prefix) as usize;
        let pairs: Vec<(u32, u32)> = ids.windows(2).map(|w| (w[0], w[1])).collect();
        let mut unique = pairs.clone();
        unique.sort_unstable();
        unique.dedup();
        self.distinct += unique.len();
        self.total += pairs.len();
    }

    fn distinct_share(&self) -> f64 {
        self.distinct as f64 / self.total.max(1) as f64
    }
}

/// `rt`'s greedy reply of at most `max_tokens` to `prompt`.
fn greedy(rt: &Runtime, prompt: &[u32], max_tokens: usize) -> Result<Generation, TrainError> {
    let mut session = Session::new(rt, prompt.len() + max_tokens).map_err(invalid)?;
    session.generate(prompt, max_tokens, &mut Sampler::new(SamplerConfig::greedy()), |_| {}).map_err(invalid)
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
    let (mut kl, mut agree, mut positions) = (0f64, 0usize, 0usize);
    let (mut student_replies, mut teacher_replies) = (Replies::default(), Replies::default());
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
        let g = greedy(student, &student_prompt, max_tokens)?;
        student_replies.add(&g.text, &g.ids, prefix);
        let t = greedy(teacher, &teacher_prompt, max_tokens)?;
        teacher_replies.add(&t.text, &t.ids, prefix);
        let user = line.messages.last().map(|m| m.content.clone()).unwrap_or_default();
        replies.push((user, g.text.trim().to_string()));
    }
    Ok(BakingEval {
        kl: kl / positions.max(1) as f64,
        top1: agree as f64 / positions.max(1) as f64,
        positions,
        prefixed_replies: student_replies.prefixed,
        distinct_2grams: student_replies.distinct_share(),
        teacher_prefixed_replies: teacher_replies.prefixed,
        teacher_distinct_2grams: teacher_replies.distinct_share(),
        prompts: prompts.len(),
        replies,
    })
}

#[cfg(test)]
mod tests {
    use super::Replies;

    #[test]
    fn replies_count_the_prefix_and_distinct_pairs_pooled() {
        let mut r = Replies::default();
        r.add(" Arr! matey", &[1, 2, 1, 2, 1, 2], "Arr!"); // (1,2) (2,1) ×, 2 of 5 distinct
        r.add("Ahoy", &[7, 8, 9], "Arr!"); // 2 of 2
        r.add("Arr", &[5], "Arr!"); // no pairs
        assert_eq!((r.prefixed, r.distinct, r.total), (1, 4, 7));
        assert!((r.distinct_share() - 4.0 / 7.0).abs() < 1e-12);
        assert_eq!(Replies::default().distinct_share(), 0.0);
    }
}
