//! Making targets with a teacher GGUF on pupil's own runtime.
//!
//! Two sources:
//! - a text corpus, cut into windows of `ctx` tokens (BOS first where the model uses it),
//!   with a target at every position;
//! - chat prompts (JSONL, one `{"messages": [...]}` per line): the teacher either writes
//!   a reply (`generate`, sampled and seeded per line) or scores the line's final
//!   assistant message; targets cover the reply tokens, prompt positions are masked.
//!   With `teacher_system`, the teacher sees a system prompt the stored student input
//!   lacks (context distillation: the student learns to act as if it had read it).
//!
//! Every sequence is a pure function of (source, options, its index), so a resumed run
//! skips the sequences already written and produces the same file as an uninterrupted one.

use serde::Deserialize;

use super::format::*;
use crate::generate::sampler::log_sum_exp;
use crate::generate::{GenerationError, Rng, Runtime, Sampler, SamplerConfig, Session};
use crate::model::LOGIT_ROWS;
use crate::tokenizer::Message;

#[derive(Debug, Clone)]
pub struct MakeOptions {
    pub encoding: Encoding,
    /// Softmax temperature of the stored distributions. Default 1.0.
    pub temperature: f32,
    /// Window size (text) or context limit (prompts), in tokens. Default 512.
    pub ctx: usize,
    /// Seeds the sampled encoding and reply generation. Default 0.
    pub seed: u64,
    /// A system prompt only the teacher sees.
    pub teacher_system: Option<String>,
    /// Let the teacher write replies of at most this many tokens.
    pub generate: Option<usize>,
    /// How the teacher samples those replies (its seed is replaced per sequence).
    /// Default: llama.cpp's chain (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05).
    pub sampler: SamplerConfig,
}

/// One prompts-file line.
#[derive(Debug, Clone, Deserialize)]
pub struct PromptLine {
    pub messages: Vec<Message>,
    /// Free-form split name (`train`, `held_out`, …): lets one file serve several runs.
    #[serde(default)]
    pub split: Option<String>,
}

/// The token sequences the teacher runs over, in a fixed order.
pub enum Source {
    /// Windows of a tokenized corpus.
    Windows(Vec<Vec<u32>>),
    Prompts(Vec<PromptLine>),
}

impl Source {
    /// Tokenizes `text` into windows of at most `ctx` tokens (the last may be shorter; at
    /// least 2 tokens each).
    pub fn text(rt: &Runtime, text: &str, ctx: usize) -> Result<Self, TargetsError> {
        let tok = &rt.tokenizer;
        let ids = tok.encode(text, false).map_err(|e| TargetsError::Invalid(e.to_string()))?;
        let bos = tok.bos().filter(|_| tok.add_bos());
        let body = ctx.saturating_sub(bos.is_some() as usize);
        if body < 1 || ctx < 2 {
            return Err(TargetsError::Invalid(format!("--ctx {ctx} is too small")));
        }
        let windows: Vec<Vec<u32>> = ids
            .chunks(body)
            .map(|c| bos.into_iter().chain(c.iter().copied()).collect::<Vec<u32>>())
            .filter(|w| w.len() >= 2)
            .collect();
        if windows.is_empty() {
            return Err(TargetsError::Invalid("text has fewer than 2 tokens".into()));
        }
        Ok(Source::Windows(windows))
    }

    /// A prompts JSONL file as a source (see [`prompt_lines`]).
    pub fn prompts(jsonl: &str, split: Option<&str>) -> Result<Self, TargetsError> {
        prompt_lines(jsonl, split).map(Source::Prompts)
    }

    pub fn len(&self) -> usize {
        match self {
            Source::Windows(w) => w.len(),
            Source::Prompts(p) => p.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parses a prompts JSONL file, keeping lines of `split` when given.
pub fn prompt_lines(jsonl: &str, split: Option<&str>) -> Result<Vec<PromptLine>, TargetsError> {
    let mut lines = Vec::new();
    for (i, line) in jsonl.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let p: PromptLine =
            serde_json::from_str(line).map_err(|e| TargetsError::Invalid(format!("prompts line {}: {e}", i + 1)))?;
        if p.messages.is_empty() {
            return Err(TargetsError::Invalid(format!("prompts line {}: no messages", i + 1)));
        }
        if split.is_none() || p.split.as_deref() == split {
            lines.push(p);
        }
    }
    if lines.is_empty() {
        return Err(TargetsError::Invalid("no prompts to use (empty file, or no line of that split)".into()));
    }
    Ok(lines)
}

/// Reusable buffers for turning logits into stored distributions.
#[derive(Default)]
pub struct DistBuilder {
    logprobs: Vec<f64>,
    order: Vec<u32>,
    cumulative: Vec<f64>,
}

impl DistBuilder {
    /// log-softmax of `logits / temperature`, in f64.
    fn log_softmax(&mut self, logits: &[f32], temperature: f32) {
        let t = temperature as f64;
        let lse = log_sum_exp(logits, t);
        self.logprobs.clear();
        self.logprobs.extend(logits.iter().map(|&l| l as f64 / t - lse));
    }

    /// The stored form of the teacher distribution `softmax(logits / temperature)`.
    pub fn build(&mut self, logits: &[f32], encoding: Encoding, temperature: f32, rng: &mut Rng) -> Dist {
        self.log_softmax(logits, temperature);
        match encoding {
            Encoding::TopK { k } => self.top_k(k as usize),
            Encoding::Sampled { samples } => self.sampled(samples, rng),
        }
    }

    fn top_k(&mut self, k: usize) -> Dist {
        let lp = &self.logprobs;
        let k = k.min(lp.len());
        self.order.clear();
        self.order.extend(0..lp.len() as u32);
        let desc = |a: &u32, b: &u32| lp[*b as usize].total_cmp(&lp[*a as usize]).then(a.cmp(b));
        if k < self.order.len() {
            self.order.select_nth_unstable_by(k, desc);
        }
        let (top, rest) = self.order.split_at_mut(k);
        top.sort_unstable_by(desc);
        // Sum the complement directly: 1 − Σ top loses the tail to cancellation.
        let rest_mass: f64 = rest.iter().map(|&i| lp[i as usize].exp()).sum();
        let kept: Vec<u32> = top.iter().copied().filter(|&i| lp[i as usize].is_finite()).collect();
        Dist::TopK {
            logprobs: kept.iter().map(|&i| round_logprob(lp[i as usize] as f32)).collect(),
            ids: kept,
            rest_logprob: if rest_mass > 0.0 { round_logprob(rest_mass.ln() as f32) } else { f32::NEG_INFINITY },
        }
    }

    fn sampled(&mut self, samples: u32, rng: &mut Rng) -> Dist {
        let lp = &self.logprobs;
        self.cumulative.clear();
        let mut acc = 0f64;
        for &l in lp {
            acc += l.exp();
            self.cumulative.push(acc);
        }
        let mut drawn: Vec<(u32, u32)> = Vec::new();
        for _ in 0..samples {
            let u = rng.next_f64() * acc;
            let i = self.cumulative.partition_point(|&c| c <= u).min(lp.len() - 1) as u32;
            match drawn.iter_mut().find(|(id, _)| *id == i) {
                Some((_, c)) => *c += 1,
                None => drawn.push((i, 1)),
            }
        }
        drawn.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Dist::Sampled {
            ids: drawn.iter().map(|d| d.0).collect(),
            counts: drawn.iter().map(|d| d.1).collect(),
            logprobs: drawn.iter().map(|d| round_logprob(lp[d.0 as usize] as f32)).collect(),
        }
    }
}

/// The RNG of sequence `index`: independent of how many sequences ran before it, so a
/// resumed run draws the same.
pub fn sequence_rng(seed: u64, index: u64) -> Rng {
    Rng::new(seed ^ index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn gen_err(e: impl std::fmt::Display) -> TargetsError {
    TargetsError::Invalid(e.to_string())
}

/// Makes the record of sequence `index` of `source`.
pub fn make_record(
    rt: &Runtime,
    source: &Source,
    index: usize,
    opts: &MakeOptions,
    builder: &mut DistBuilder,
) -> Result<SequenceRecord, TargetsError> {
    let mut rng = sequence_rng(opts.seed, index as u64);
    match source {
        Source::Windows(windows) => {
            let tokens = &windows[index];
            let logits = logits_at(rt, tokens, 0..tokens.len())?;
            let targets = logits
                .chunks_exact(rt.model.cfg.n_vocab)
                .map(|row| builder.build(row, opts.encoding, opts.temperature, &mut rng))
                .collect();
            Ok(SequenceRecord { tokens: tokens.clone(), flags: vec![FLAG_TARGET | FLAG_TRAIN; tokens.len()], targets })
        }
        Source::Prompts(lines) => prompt_record(rt, &lines[index], opts, builder, &mut rng).map_err(|e| match e {
            TargetsError::Invalid(what) => TargetsError::Invalid(format!("prompt {}: {what}", index + 1)),
            other => other,
        }),
    }
}

/// Logits of a model over `tokens` at `positions` (rows × n_vocab), from one batched
/// forward pass.
pub fn logits_at(rt: &Runtime, tokens: &[u32], positions: std::ops::Range<usize>) -> Result<Vec<f32>, TargetsError> {
    let model = &rt.model;
    let mut cache = model.new_cache(tokens.len()).map_err(gen_err)?;
    if cache.n_ctx() < tokens.len() {
        return Err(TargetsError::Invalid(format!(
            "{} tokens exceed the teacher's context of {}",
            tokens.len(),
            cache.n_ctx()
        )));
    }
    let hidden = rt.pool.install(|| model.forward(tokens, &mut cache)).map_err(gen_err)?;
    let e = model.cfg.n_embd;
    let mut out = Vec::with_capacity(positions.len() * model.cfg.n_vocab);
    for start in positions.clone().step_by(LOGIT_ROWS) {
        let end = (start + LOGIT_ROWS).min(positions.end);
        out.extend(rt.pool.install(|| model.logits(&hidden[start * e..end * e])).map_err(gen_err)?);
    }
    Ok(out)
}

fn prompt_record(
    rt: &Runtime,
    line: &PromptLine,
    opts: &MakeOptions,
    builder: &mut DistBuilder,
    rng: &mut Rng,
) -> Result<SequenceRecord, TargetsError> {
    let tok = &rt.tokenizer;
    let render = |messages: &[Message], gen_prompt: bool| -> Result<String, TargetsError> {
        rt.template.render(messages, gen_prompt).map_err(gen_err)
    };
    let encode = |text: &str| tok.encode_prompt(text, true).map_err(gen_err);
    let ends_with_assistant = line.messages.last().is_some_and(|m| m.role == "assistant");
    let (context, reply): (&[Message], Option<&Message>) = match (opts.generate, ends_with_assistant) {
        (Some(_), true) => {
            return Err(TargetsError::Invalid("ends with an assistant message; --generate writes the reply".into()))
        }
        (Some(_), false) => (&line.messages, None),
        (None, true) => (&line.messages[..line.messages.len() - 1], line.messages.last()),
        (None, false) => {
            return Err(TargetsError::Invalid(
                "has no assistant reply to score; pass --generate N to let the teacher write one".into(),
            ))
        }
    };
    let student_text = render(context, true)?;
    let student_prompt = encode(&student_text)?;
    let teacher_context = with_teacher_system(context, opts.teacher_system.as_deref());
    let teacher_prompt = encode(&render(&teacher_context, true)?)?;
    let n_ctx = opts.ctx.min(rt.model.cfg.n_ctx_train);
    if teacher_prompt.len().max(student_prompt.len()) >= n_ctx {
        return Err(TargetsError::Invalid(format!(
            "prompt of {} tokens leaves no room in --ctx {n_ctx}",
            teacher_prompt.len().max(student_prompt.len())
        )));
    }

    let (reply_ids, targets) = match (reply, opts.generate) {
        (Some(reply), _) => {
            // The reply's tokens are what the template writes after the generation prompt.
            let mut full = context.to_vec();
            full.push(reply.clone());
            let rendered = render(&full, false)?;
            let Some(reply_text) = rendered.strip_prefix(&student_text) else {
                return Err(TargetsError::Invalid(
                    "the chat template does not render the reply after its prompt".into(),
                ));
            };
            let room = n_ctx - teacher_prompt.len().max(student_prompt.len());
            let mut ids = tok.encode(reply_text, true).map_err(gen_err)?;
            ids.truncate(room);
            if ids.is_empty() {
                return Err(TargetsError::Invalid("assistant reply is empty".into()));
            }
            let seq: Vec<u32> = teacher_prompt.iter().chain(&ids).copied().collect();
            let p = teacher_prompt.len();
            let logits = logits_at(rt, &seq, p - 1..p - 1 + ids.len())?;
            let targets = logits
                .chunks_exact(rt.model.cfg.n_vocab)
                .map(|row| builder.build(row, opts.encoding, opts.temperature, rng))
                .collect();
            (ids, targets)
        }
        (None, Some(max_new)) => generate_reply(rt, &teacher_prompt, max_new, n_ctx, opts, builder, rng)?,
        (None, None) => unreachable!("checked above"),
    };
    let p = student_prompt.len();
    let mut flags = vec![0u8; p + reply_ids.len()];
    flags[p - 1..p - 1 + reply_ids.len()].fill(FLAG_TARGET | FLAG_TRAIN);
    let tokens = student_prompt.into_iter().chain(reply_ids).collect();
    Ok(SequenceRecord { tokens, flags, targets })
}

/// The messages the teacher sees: `system` first (merged into an existing system message).
pub fn with_teacher_system(messages: &[Message], system: Option<&str>) -> Vec<Message> {
    let mut out = messages.to_vec();
    if let Some(system) = system {
        match out.first_mut() {
            Some(m) if m.role == "system" => m.content = format!("{system}\n\n{}", m.content),
            _ => out.insert(0, Message::new("system", system)),
        }
    }
    out
}

/// The teacher writes a reply (`opts.sampler`, seeded from the sequence's RNG); the
/// distribution each token was drawn from is its target.
fn generate_reply(
    rt: &Runtime,
    prompt: &[u32],
    max_new: usize,
    n_ctx: usize,
    opts: &MakeOptions,
    builder: &mut DistBuilder,
    rng: &mut Rng,
) -> Result<(Vec<u32>, Vec<Dist>), TargetsError> {
    let mut session = Session::new(rt, n_ctx).map_err(gen_err)?;
    let mut sampler = Sampler::new(SamplerConfig { seed: rng.next_u64(), ..opts.sampler.clone() });
    let mut seq = prompt.to_vec();
    let (mut ids, mut targets) = (Vec::new(), Vec::new());
    while ids.len() < max_new && seq.len() < n_ctx {
        let mut logits = session.prefill(&seq).map_err(|e: GenerationError| gen_err(e))?;
        targets.push(builder.build(&logits, opts.encoding, opts.temperature, rng));
        let id = sampler.sample(&mut logits, &seq);
        ids.push(id);
        seq.push(id);
        if rt.tokenizer.is_end_of_generation(id) {
            break;
        }
    }
    Ok((ids, targets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_head_and_the_exact_tail() {
        let logits = [2.0f32, 0.5, 1.0, -1.0, 3.0];
        let mut b = DistBuilder::default();
        let Dist::TopK { ids, logprobs, rest_logprob } =
            b.build(&logits, Encoding::TopK { k: 2 }, 1.0, &mut Rng::new(0))
        else {
            panic!("top-k")
        };
        assert_eq!(ids, vec![4, 0]);
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let p = |l: f32| (l as f64).exp() / z;
        assert!((logprobs[0] as f64 - p(3.0).ln()).abs() < 2e-3);
        let rest = p(0.5) + p(1.0) + p(-1.0);
        assert!((rest_logprob as f64 - rest.ln()).abs() < 2e-3);
        // Temperature 2 flattens: the top probability drops.
        let Dist::TopK { logprobs: hot, .. } = b.build(&logits, Encoding::TopK { k: 2 }, 2.0, &mut Rng::new(0)) else {
            panic!("top-k")
        };
        assert!(hot[0] < logprobs[0]);
    }

    #[test]
    fn sampled_counts_sum_to_the_sample_count() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 7) as f32).collect();
        let mut b = DistBuilder::default();
        let Dist::Sampled { ids, counts, .. } =
            b.build(&logits, Encoding::Sampled { samples: 12 }, 1.0, &mut Rng::new(3))
        else {
            panic!("sampled")
        };
        assert_eq!(counts.iter().sum::<u32>(), 12);
        let mut unique = ids.clone();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn teacher_system_is_prepended_or_merged() {
        let user = vec![Message::new("user", "hi")];
        let t = with_teacher_system(&user, Some("Be terse."));
        assert_eq!(t[0], Message::new("system", "Be terse."));
        let sys = vec![Message::new("system", "You help."), Message::new("user", "hi")];
        assert_eq!(with_teacher_system(&sys, Some("Be terse."))[0].content, "Be terse.\n\nYou help.");
        assert_eq!(with_teacher_system(&user, None), user);
    }
}
