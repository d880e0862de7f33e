//! Importing logprob dumps from serving engines, so a big teacher served elsewhere (vLLM
//! on a cluster, llama-server, an OpenAI-compatible API) can produce targets.
//!
//! Each JSONL line holds the request's prompt (`messages`, rendered with the student's
//! chat template, or a `prompt` string or token ids) and the engine's answer, either at
//! the top level or under `response`:
//! - `openai`: `choices[0].logprobs.content[]` = `{token, logprob, bytes, top_logprobs}`
//!   (chat API), or the legacy `choices[0].logprobs.{tokens, top_logprobs}`;
//! - `vllm`: `prompt_logprobs` (per prompt position, a map id → `{logprob, rank,
//!   decoded_token}`; the first is null) with `prompt_token_ids`;
//! - `llama-server`: `completion_probabilities[]` = `{id, token, bytes, logprob,
//!   top_logprobs}` (or `top_probs` with `prob`, from `post_sampling_probs`).
//!
//! Token strings are mapped to ids through the student's vocabulary by their bytes; a
//! token that maps to no id or to several, an id outside the vocabulary, or an id whose
//! text disagrees with the student's, refuses the whole line (never guessed).

use std::collections::HashMap;

use serde_json::Value;

use super::format::*;
use crate::tokenizer::{Message, Tokenizer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    #[value(name = "openai")]
    OpenAi,
    Vllm,
    LlamaServer,
}

impl Engine {
    pub fn name(&self) -> &'static str {
        match self {
            Engine::OpenAi => "openai",
            Engine::Vllm => "vllm",
            Engine::LlamaServer => "llama-server",
        }
    }
}

/// One imported line before it becomes a record: the prompt, then the scored tokens each
/// with the teacher's (id, log-probability) list for it.
pub struct Imported {
    pub prompt: Vec<u32>,
    pub scored: Vec<u32>,
    pub dists: Vec<Vec<(u32, f32)>>,
}

impl Imported {
    /// The most (id, log-probability) pairs any position has: the file's k.
    pub fn max_entries(&self) -> usize {
        self.dists.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// The record: prompt positions masked, one top-k target per scored token.
    pub fn into_record(self, k: usize) -> SequenceRecord {
        let p = self.prompt.len();
        let mut flags = vec![0u8; p + self.scored.len()];
        flags[p - 1..p - 1 + self.scored.len()].fill(FLAG_TARGET | FLAG_TRAIN);
        let targets = self
            .dists
            .into_iter()
            .map(|mut d| {
                d.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                d.truncate(k);
                let mass: f64 = d.iter().map(|&(_, l)| (l as f64).exp()).sum();
                let rest = 1.0 - mass;
                Dist::TopK {
                    ids: d.iter().map(|x| x.0).collect(),
                    logprobs: d.iter().map(|x| round_logprob(x.1)).collect(),
                    // Engines round; a rest below 1e-6 is rounding noise, not mass.
                    rest_logprob: if rest > 1e-6 { round_logprob(rest.ln() as f32) } else { f32::NEG_INFINITY },
                }
            })
            .collect();
        SequenceRecord { tokens: self.prompt.into_iter().chain(self.scored).collect(), flags, targets }
    }
}

/// Maps engine token strings/bytes to the student's ids.
pub struct TokenMap<'t> {
    tok: &'t Tokenizer,
    /// Printed bytes → id; `None` where several ids print the same bytes.
    by_bytes: HashMap<Vec<u8>, Option<u32>>,
}

impl<'t> TokenMap<'t> {
    pub fn new(tok: &'t Tokenizer) -> Self {
        let mut by_bytes: HashMap<Vec<u8>, Option<u32>> = HashMap::new();
        for id in 0..tok.n_vocab() as u32 {
            let printed = tok.token_bytes(id).unwrap_or_default();
            // Control tokens print as nothing; engines show them by their text.
            let key = if printed.is_empty() { tok.token_text(id).unwrap_or_default().as_bytes() } else { printed };
            if key.is_empty() {
                continue;
            }
            by_bytes.entry(key.to_vec()).and_modify(|e| *e = None).or_insert(Some(id));
        }
        Self { tok, by_bytes }
    }

    /// The id of an entry given by `bytes` (preferred) or its `token` string.
    fn id_of(&self, entry: &Value) -> Result<u32, String> {
        let bytes = match entry.get("bytes").and_then(Value::as_array) {
            Some(b) => b.iter().map(|v| v.as_u64().filter(|&x| x < 256).map(|x| x as u8)).collect::<Option<Vec<u8>>>(),
            None => None,
        };
        let token = entry.get("token").and_then(Value::as_str);
        let key = match (bytes, token) {
            (Some(b), _) => b,
            (None, Some(t)) => t.as_bytes().to_vec(),
            (None, None) => return Err("entry has neither `bytes` nor `token`".into()),
        };
        match self.by_bytes.get(&key) {
            Some(Some(id)) => Ok(*id),
            Some(None) => Err(format!("token {:?} matches several ids", String::from_utf8_lossy(&key))),
            None => Err(format!("token {:?} is not in the student's vocabulary", String::from_utf8_lossy(&key))),
        }
    }

    /// Checks an engine-given id against the vocabulary and, where the engine also gave
    /// its text, against the student's text for that id.
    fn check_id(&self, id: u64, text: Option<&str>) -> Result<u32, String> {
        let n = self.tok.n_vocab() as u64;
        if id >= n {
            return Err(format!("id {id} ≥ the student's vocabulary size {n}"));
        }
        let id = id as u32;
        if let Some(text) = text.filter(|t| !t.contains('\u{FFFD}')) {
            let printed = self.tok.token_bytes(id).unwrap_or_default();
            let ours =
                if printed.is_empty() { self.tok.token_text(id).unwrap_or_default().as_bytes() } else { printed };
            if ours != text.as_bytes() {
                return Err(format!(
                    "id {id} is {text:?} in the dump but {:?} in the student's vocabulary",
                    String::from_utf8_lossy(ours)
                ));
            }
        }
        Ok(id)
    }
}

/// The first of `v`, `v.response`, `v.choices[0]`, `v.response.choices[0]` that has `key`.
fn find<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    let response = v.get("response");
    let choice = |x: Option<&'v Value>| x.and_then(|x| x.get("choices")).and_then(|c| c.get(0));
    [Some(v), response, choice(Some(v)), choice(response)].into_iter().flatten().find_map(|o| o.get(key))
}

fn logprob_of(entry: &Value) -> Result<f32, String> {
    if let Some(lp) = entry.get("logprob").and_then(Value::as_f64) {
        return Ok(lp as f32);
    }
    match entry.get("prob").and_then(Value::as_f64) {
        Some(p) if (0.0..=1.0).contains(&p) => Ok((p.ln()) as f32),
        Some(p) => Err(format!("probability {p} is outside [0, 1]")),
        None => Err("entry has no `logprob` (or `prob`)".into()),
    }
}

/// The student's prompt tokens for a line: `messages` (chat template), `prompt_token_ids`
/// / `prompt_tokens`, or a `prompt` string.
fn prompt_ids(v: &Value, tok: &Tokenizer, template: &crate::tokenizer::ChatTemplate) -> Result<Vec<u32>, String> {
    if let Some(m) = find(v, "messages") {
        let messages: Vec<Message> = serde_json::from_value(m.clone()).map_err(|e| format!("messages: {e}"))?;
        let text = template.render(&messages, true).map_err(|e| e.to_string())?;
        return tok.encode_prompt(&text, true).map_err(|e| e.to_string());
    }
    if let Some(ids) = find(v, "prompt_token_ids").or_else(|| find(v, "prompt_tokens")) {
        let ids = ids.as_array().ok_or("prompt token ids are not an array")?;
        return ids
            .iter()
            .map(|x| match x.as_u64() {
                Some(id) if id < tok.n_vocab() as u64 => Ok(id as u32),
                _ => Err(format!("prompt token id {x} is not an id of the student's vocabulary")),
            })
            .collect();
    }
    if let Some(p) = find(v, "prompt").and_then(Value::as_str) {
        return tok.encode_prompt(p, true).map_err(|e| e.to_string());
    }
    Err("line has no prompt (`messages`, `prompt_token_ids` or `prompt`)".into())
}

/// Parses one dump line.
pub fn import_line(
    engine: Engine,
    line: &str,
    map: &TokenMap,
    template: &crate::tokenizer::ChatTemplate,
) -> Result<Imported, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let tok = map.tok;
    let imported = match engine {
        Engine::OpenAi => {
            let prompt = prompt_ids(&v, tok, template)?;
            let logprobs = find(&v, "logprobs").ok_or("no `logprobs` in the response")?;
            let (mut scored, mut dists) = (Vec::new(), Vec::new());
            if let Some(content) = logprobs.get("content").and_then(Value::as_array) {
                for c in content {
                    let id = map.id_of(c)?;
                    let mut d = vec![(id, logprob_of(c)?)];
                    for t in c.get("top_logprobs").and_then(Value::as_array).into_iter().flatten() {
                        push_unique(&mut d, map.id_of(t)?, logprob_of(t)?);
                    }
                    scored.push(id);
                    dists.push(d);
                }
            } else {
                let tokens = logprobs.get("tokens").and_then(Value::as_array).ok_or("`logprobs` has no `content`")?;
                let chosen = logprobs.get("token_logprobs").and_then(Value::as_array);
                let tops = logprobs.get("top_logprobs").and_then(Value::as_array);
                for (i, t) in tokens.iter().enumerate() {
                    let id = map.id_of(&serde_json::json!({ "token": t }))?;
                    let mut d = Vec::new();
                    if let Some(lp) = chosen.and_then(|c| c.get(i)).and_then(Value::as_f64) {
                        d.push((id, lp as f32));
                    }
                    if let Some(top) = tops.and_then(|t| t.get(i)).and_then(Value::as_object) {
                        for (s, lp) in top {
                            let lp = lp.as_f64().ok_or("top_logprobs value is not a number")? as f32;
                            push_unique(&mut d, map.id_of(&serde_json::json!({ "token": s }))?, lp);
                        }
                    }
                    scored.push(id);
                    dists.push(d);
                }
            }
            Imported { prompt, scored, dists }
        }
        Engine::Vllm => {
            let all = prompt_ids(&v, tok, template)?;
            let plp = find(&v, "prompt_logprobs").and_then(Value::as_array).ok_or("no `prompt_logprobs` array")?;
            if plp.len() != all.len() {
                return Err(format!("{} prompt_logprobs for {} prompt tokens", plp.len(), all.len()));
            }
            let mut dists = Vec::new();
            for (i, pos) in plp.iter().enumerate().skip(1) {
                let pos = pos.as_object().ok_or(format!("prompt_logprobs[{i}] is not a map"))?;
                let mut d = Vec::new();
                for (key, e) in pos {
                    let id: u64 = key.parse().map_err(|_| format!("prompt_logprobs key {key:?} is not an id"))?;
                    let id = map.check_id(id, e.get("decoded_token").and_then(Value::as_str))?;
                    push_unique(&mut d, id, logprob_of(e)?);
                }
                if d.is_empty() {
                    return Err(format!("prompt_logprobs[{i}] is empty"));
                }
                dists.push(d);
            }
            if all.len() < 2 {
                return Err("prompt has fewer than 2 tokens".into());
            }
            Imported { prompt: all[..1].to_vec(), scored: all[1..].to_vec(), dists }
        }
        Engine::LlamaServer => {
            let prompt = prompt_ids(&v, tok, template)?;
            let probs = find(&v, "completion_probabilities")
                .and_then(Value::as_array)
                .ok_or("no `completion_probabilities` array")?;
            let (mut scored, mut dists) = (Vec::new(), Vec::new());
            for c in probs {
                let id = server_id(map, c)?;
                let mut d = Vec::new();
                if c.get("logprob").is_some() || c.get("prob").is_some() {
                    d.push((id, logprob_of(c)?));
                }
                let tops = c.get("top_logprobs").or_else(|| c.get("top_probs")).and_then(Value::as_array);
                for t in tops.into_iter().flatten() {
                    push_unique(&mut d, server_id(map, t)?, logprob_of(t)?);
                }
                scored.push(id);
                dists.push(d);
            }
            Imported { prompt, scored, dists }
        }
    };
    if imported.prompt.is_empty() {
        return Err("prompt is empty".into());
    }
    if imported.scored.is_empty() {
        return Err("no scored tokens".into());
    }
    if let Some(j) = imported.dists.iter().position(Vec::is_empty) {
        return Err(format!("scored token {j} has no log-probabilities"));
    }
    if let Some(&(_, lp)) = imported.dists.iter().flatten().find(|(_, lp)| lp.is_nan() || *lp > 1e-3) {
        return Err(format!("log-probability {lp} is not ≤ 0"));
    }
    Ok(imported)
}

/// llama-server gives ids; check them against the token text it also gives.
fn server_id(map: &TokenMap, entry: &Value) -> Result<u32, String> {
    let id = entry.get("id").and_then(Value::as_u64).ok_or("entry has no integer `id`")?;
    map.check_id(id, entry.get("token").and_then(Value::as_str))
}

fn push_unique(d: &mut Vec<(u32, f32)>, id: u32, lp: f32) {
    if !d.iter().any(|&(x, _)| x == id) {
        d.push((id, lp));
    }
}
