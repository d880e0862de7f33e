//! OpenAI's HTTP API, as far as a local completion server speaks it: reading requests
//! (every field checked, with an error that names it), and writing responses, stream
//! chunks and errors in OpenAI's shapes.

use serde_json::{json, Map, Value};

use super::engine::Finish;
use crate::generate::{Rng, SamplerConfig, TokenLogprob};
use crate::tokenizer::{Message, Tokenizer};

/// The most alternatives a token's logprobs may list (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// The most stop strings a request may give.
const MAX_STOP: usize = 16;

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about request field `param`.
    pub fn field(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: None,
        }
    }

    pub fn new(status: u16, kind: &'static str, code: Option<&'static str>, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// A completion request, checked: everything the engine needs but the prompt's tokens.
#[derive(Debug)]
pub struct CompletionRequest {
    pub endpoint: Endpoint,
    pub prompt: Prompt,
    pub max_tokens: Option<usize>,
    pub sampling: SamplerConfig,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// `Some(n)`: each token's logprob and its `n` most likely alternatives.
    pub logprobs: Option<usize>,
    pub lora: Option<Vec<f32>>,
}

#[derive(Debug)]
pub enum Prompt {
    Chat { messages: Vec<Message>, tools: Option<Vec<Value>> },
    Text(String),
    Ids(Vec<u32>),
}

/// Typed access to a request object's fields: a field that is absent or `null` is
/// `None`; one of the wrong type is a 400 naming it.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn number(&self, key: &str) -> Result<Option<f64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| ApiError::field(key, format!("'{key}' must be a number"))),
        }
    }

    /// A number in `range`.
    fn number_in(&self, key: &str, range: std::ops::RangeInclusive<f64>) -> Result<Option<f32>, ApiError> {
        match self.number(key)? {
            Some(x) if !range.contains(&x) => Err(ApiError::field(
                key,
                format!("'{key}' is {x}; it must be between {} and {}", range.start(), range.end()),
            )),
            x => Ok(x.map(|x| x as f32)),
        }
    }

    fn integer(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| ApiError::field(key, format!("'{key}' must be an integer"))),
        }
    }

    fn count(&self, key: &str) -> Result<Option<usize>, ApiError> {
        match self.integer(key)? {
            Some(n) if n < 0 => Err(ApiError::field(key, format!("'{key}' is {n}; it must be 0 or more"))),
            n => Ok(n.map(|n| n as usize)),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_bool().map(Some).ok_or_else(|| ApiError::field(key, format!("'{key}' must be true or false")))
            }
        }
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| ApiError::field(key, format!("'{key}' must be a string"))),
        }
    }
}

/// The request body as a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::new(400, "invalid_request_error", None, format!("request body is not UTF-8: {e}")))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::new(400, "invalid_request_error", None, "request body must be a JSON object")),
        Err(e) => {
            Err(ApiError::new(400, "invalid_request_error", None, format!("request body is not valid JSON: {e}")))
        }
    }
}

/// Reads a `/v1/chat/completions` or `/v1/completions` body. `model_id` is the served
/// model's name; `n_adapters` how many adapters were given at start.
pub fn completion_request(
    endpoint: Endpoint,
    body: &Map<String, Value>,
    model_id: &str,
    n_adapters: usize,
) -> Result<CompletionRequest, ApiError> {
    let f = Fields(body);
    if let Some(model) = f.string("model")? {
        if model != model_id {
            return Err(ApiError {
                status: 404,
                message: format!("model '{model}' does not exist; this server runs '{model_id}'"),
                kind: "invalid_request_error",
                param: Some("model".into()),
                code: Some("model_not_found"),
            });
        }
    }
    let prompt = match endpoint {
        Endpoint::Chat => chat_prompt(&f)?,
        Endpoint::Completions => text_prompt(&f)?,
    };
    if let Some(n) = f.integer("n")? {
        if n != 1 {
            return Err(ApiError::field("n", format!("'n' is {n}; this server writes one choice per request (n = 1)")));
        }
    }
    // Fields that would change the answer: refused rather than ignored.
    for key in ["frequency_penalty", "presence_penalty"] {
        if f.number(key)?.is_some_and(|x| x != 0.0) {
            return Err(ApiError::field(key, format!("'{key}' is not supported; use 'repeat_penalty'")));
        }
    }
    if f.get("logit_bias").is_some_and(|v| v.as_object().is_none_or(|o| !o.is_empty())) {
        return Err(ApiError::field("logit_bias", "'logit_bias' is not supported"));
    }
    if f.boolean("echo")? == Some(true) {
        return Err(ApiError::field("echo", "'echo' is not supported"));
    }
    if f.get("suffix").is_some() {
        return Err(ApiError::field("suffix", "'suffix' (fill in the middle) is not supported"));
    }
    let max_tokens = match f.count("max_completion_tokens")? {
        Some(n) => Some(n),
        None => f.count("max_tokens")?,
    };
    if max_tokens == Some(0) {
        let key = if f.get("max_completion_tokens").is_some() { "max_completion_tokens" } else { "max_tokens" };
        return Err(ApiError::field(key, format!("'{key}' must be at least 1")));
    }
    let defaults = SamplerConfig::default();
    let top_k = match f.integer("top_k")? {
        None => defaults.top_k,
        Some(k) if k <= 0 => 0,
        Some(k) => k as usize,
    };
    let sampling = SamplerConfig {
        temperature: f.number_in("temperature", 0.0..=100.0)?.unwrap_or(defaults.temperature),
        top_k,
        top_p: f.number_in("top_p", 0.0..=1.0)?.unwrap_or(defaults.top_p),
        min_p: f.number_in("min_p", 0.0..=1.0)?.unwrap_or(defaults.min_p),
        repeat_penalty: f.number_in("repeat_penalty", 0.01..=100.0)?.unwrap_or(defaults.repeat_penalty),
        repeat_last_n: defaults.repeat_last_n,
        seed: match f.get("seed") {
            None => Rng::entropy_seed(),
            Some(v) => {
                v.as_u64().ok_or_else(|| ApiError::field("seed", "'seed' must be an integer from 0 to 2^64 - 1"))?
            }
        },
    };
    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) if list.len() <= MAX_STOP => list
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::field("stop", "'stop' must be a string or a list of strings"))?,
        Some(Value::Array(_)) => {
            return Err(ApiError::field("stop", format!("'stop' lists more than {MAX_STOP} strings")))
        }
        Some(_) => return Err(ApiError::field("stop", "'stop' must be a string or a list of strings")),
    };
    let stream = f.boolean("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => Fields(o).boolean("include_usage")?.unwrap_or(false),
        Some(_) => return Err(ApiError::field("stream_options", "'stream_options' must be an object")),
    };
    let logprobs = match endpoint {
        Endpoint::Chat => {
            let top = f.count("top_logprobs")?;
            match (f.boolean("logprobs")?.unwrap_or(false), top) {
                (true, top) => Some(top.unwrap_or(0)),
                (false, Some(_)) => {
                    return Err(ApiError::field("top_logprobs", "'top_logprobs' needs 'logprobs': true"));
                }
                (false, None) => None,
            }
        }
        // The legacy API's `logprobs` is the number of alternatives.
        Endpoint::Completions => f.count("logprobs")?,
    };
    if let Some(n) = logprobs {
        if n > MAX_TOP_LOGPROBS {
            let key = if endpoint == Endpoint::Chat { "top_logprobs" } else { "logprobs" };
            return Err(ApiError::field(key, format!("'{key}' is {n}; at most {MAX_TOP_LOGPROBS} alternatives")));
        }
    }
    let lora = match f.get("lora") {
        None => None,
        Some(Value::Array(list)) => Some(lora_scales(list, n_adapters)?),
        Some(_) => return Err(ApiError::field("lora", "'lora' must be a list of {\"id\", \"scale\"} objects")),
    };
    Ok(CompletionRequest { endpoint, prompt, max_tokens, sampling, stop, stream, include_usage, logprobs, lora })
}

/// Per-request adapter scales: the listed adapters at their scales, the others off
/// (llama-server's rule).
fn lora_scales(list: &[Value], n_adapters: usize) -> Result<Vec<f32>, ApiError> {
    let mut scales = vec![0f32; n_adapters];
    let bad = || ApiError::field("lora", "each 'lora' entry must be {\"id\": integer, \"scale\": number}");
    for entry in list {
        let Value::Object(o) = entry else { return Err(bad()) };
        let id = o.get("id").and_then(Value::as_u64).ok_or_else(bad)? as usize;
        let scale = o.get("scale").and_then(Value::as_f64).ok_or_else(bad)?;
        if id >= n_adapters {
            let have = match n_adapters {
                0 => "no adapters (start it with --lora)".to_string(),
                n => format!("{n} (ids 0 to {})", n - 1),
            };
            return Err(ApiError::field(
                "lora",
                format!("adapter id {id} does not exist; the server was started with {have}"),
            ));
        }
        if !scale.is_finite() {
            return Err(bad());
        }
        scales[id] = scale as f32;
    }
    Ok(scales)
}

fn chat_prompt(f: &Fields) -> Result<Prompt, ApiError> {
    let Some(messages) = f.get("messages") else {
        return Err(ApiError::field("messages", "'messages' is required"));
    };
    let Value::Array(list) = messages else {
        return Err(ApiError::field("messages", "'messages' must be a list of messages"));
    };
    if list.is_empty() {
        return Err(ApiError::field("messages", "'messages' is empty"));
    }
    let messages = list.iter().enumerate().map(|(i, m)| message(i, m)).collect::<Result<Vec<_>, _>>()?;
    let tools = match f.get("tools") {
        None => None,
        Some(Value::Array(t)) => Some(t.clone()),
        Some(_) => return Err(ApiError::field("tools", "'tools' must be a list")),
    };
    Ok(Prompt::Chat { messages, tools })
}

/// One chat message: a role and text content (a string, or a list of text parts).
fn message(i: usize, m: &Value) -> Result<Message, ApiError> {
    let param = format!("messages[{i}]");
    let Value::Object(o) = m else { return Err(ApiError::field(&param, format!("'{param}' must be an object"))) };
    let f = Fields(o);
    let role = f.string("role")?.ok_or_else(|| ApiError::field(&param, format!("'{param}' has no 'role'")))?;
    if !["system", "developer", "user", "assistant", "tool"].contains(&role) {
        return Err(ApiError::field(&param, format!("'{param}' has role '{role}' (system, user, assistant or tool)")));
    }
    let content = match o.get("content") {
        None | Some(Value::Null) if role == "assistant" => String::new(),
        None | Some(Value::Null) => return Err(ApiError::field(&param, format!("'{param}' has no 'content'"))),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (Some(kind), _) if kind != "text" => {
                        return Err(ApiError::field(
                            &param,
                            format!("'{param}' has a '{kind}' part; this model reads text only"),
                        ));
                    }
                    _ => {
                        return Err(ApiError::field(
                            &param,
                            format!("'{param}' has a content part that is not {{\"type\": \"text\", \"text\": ...}}"),
                        ))
                    }
                }
            }
            text
        }
        Some(_) => {
            return Err(ApiError::field(&param, format!("'{param}' content must be a string or a list of parts")))
        }
    };
    let mut msg = Message::new(if role == "developer" { "system" } else { role }, content);
    msg.tool_calls = match o.get("tool_calls") {
        None | Some(Value::Null) => None,
        Some(Value::Array(calls)) => Some(calls.clone()),
        Some(_) => return Err(ApiError::field(&param, format!("'{param}' tool_calls must be a list"))),
    };
    msg.tool_call_id = f.string("tool_call_id")?.map(str::to_string);
    msg.name = f.string("name")?.map(str::to_string);
    Ok(msg)
}

fn text_prompt(f: &Fields) -> Result<Prompt, ApiError> {
    let bad = || ApiError::field("prompt", "'prompt' must be a string, a list of token ids, or a list of one string");
    match f.get("prompt") {
        None => Err(ApiError::field("prompt", "'prompt' is required")),
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(Value::Array(list)) => match list.as_slice() {
            [Value::String(s)] => Ok(Prompt::Text(s.clone())),
            [Value::String(_), _, ..] => {
                Err(ApiError::field("prompt", "several prompts in one request are not supported; send one per request"))
            }
            ids => ids
                .iter()
                .map(|v| v.as_u64().and_then(|i| u32::try_from(i).ok()))
                .collect::<Option<Vec<u32>>>()
                .map(Prompt::Ids)
                .ok_or_else(bad),
        },
        Some(_) => Err(bad()),
    }
}

/// `/tokenize`: `{"content": text, "add_special": bool}` → ids (llama-server's shape).
pub fn tokenize_request(body: &Map<String, Value>) -> Result<(String, bool), ApiError> {
    let f = Fields(body);
    let content = f.string("content")?.ok_or_else(|| ApiError::field("content", "'content' is required"))?;
    Ok((content.to_string(), f.boolean("add_special")?.unwrap_or(false)))
}

/// `/detokenize`: `{"tokens": [ids]}`, each within the vocabulary.
pub fn detokenize_request(body: &Map<String, Value>, n_vocab: usize) -> Result<Vec<u32>, ApiError> {
    let bad = || ApiError::field("tokens", "'tokens' must be a list of token ids");
    let list = Fields(body).get("tokens").ok_or_else(|| ApiError::field("tokens", "'tokens' is required"))?;
    let ids = list.as_array().ok_or_else(bad)?;
    ids.iter()
        .map(|v| match v.as_u64() {
            Some(id) if (id as usize) < n_vocab => Ok(id as u32),
            Some(id) => {
                Err(ApiError::field("tokens", format!("token id {id} is outside the vocabulary ({n_vocab} tokens)")))
            }
            None => Err(bad()),
        })
        .collect()
}

/// Text of a token for logprobs (lossy where a token is part of a character; `bytes`
/// carries it exactly). Control tokens, which print as nothing, show by their text
/// (`<|im_end|>`), as other engines show them.
fn token_json(tok: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let printed = tok.token_bytes(id).unwrap_or_default();
    let bytes = if printed.is_empty() { tok.token_text(id).unwrap_or_default().as_bytes() } else { printed };
    (String::from_utf8_lossy(bytes).into_owned(), bytes.to_vec())
}

/// Chat logprobs: `{"content": [{token, logprob, bytes, top_logprobs: [...]}]}` entries.
fn chat_logprobs(tok: &Tokenizer, tokens: &[TokenLogprob]) -> Vec<Value> {
    let entry = |id: u32, logprob: f32| {
        let (token, bytes) = token_json(tok, id);
        json!({"token": token, "logprob": logprob, "bytes": bytes})
    };
    tokens
        .iter()
        .map(|t| {
            let mut e = entry(t.id, t.logprob);
            e["top_logprobs"] = t.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
            e
        })
        .collect()
}

/// The legacy completions logprobs: parallel lists, `text_offset` from `offset` on.
fn completion_logprobs(tok: &Tokenizer, tokens: &[TokenLogprob], mut offset: usize) -> Value {
    let mut out = json!({"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []});
    for t in tokens {
        let (token, _) = token_json(tok, t.id);
        let top: Map<String, Value> = t.top.iter().map(|&(id, lp)| (token_json(tok, id).0, json!(lp))).collect();
        out["text_offset"].as_array_mut().expect("list").push(json!(offset));
        offset += token.len();
        out["tokens"].as_array_mut().expect("list").push(json!(token));
        out["token_logprobs"].as_array_mut().expect("list").push(json!(t.logprob));
        out["top_logprobs"].as_array_mut().expect("list").push(Value::Object(top));
    }
    out
}

pub fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// Identity of one response: its id, creation time and model.
pub struct Head {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub endpoint: Endpoint,
}

impl Head {
    pub fn new(endpoint: Endpoint, model: &str) -> Self {
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let prefix = if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" };
        let id = format!("{prefix}-{:016x}", Rng::entropy_seed());
        Self { id, created, model: model.to_string(), endpoint }
    }

    fn object(&self, stream: bool) -> &'static str {
        match (self.endpoint, stream) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    /// `tokens`' logprobs in this endpoint's shape (`offset`: where their text starts in
    /// the completion, for the legacy `text_offset`).
    pub fn logprobs(&self, tok: &Tokenizer, tokens: &[TokenLogprob], offset: usize) -> Value {
        match self.endpoint {
            Endpoint::Chat => Value::Array(chat_logprobs(tok, tokens)),
            Endpoint::Completions => completion_logprobs(tok, tokens, offset),
        }
    }

    /// The whole response of a request that did not stream.
    pub fn response(&self, text: &str, logprobs: Option<Value>, finish: Finish, usage: Value) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs.map(|l| json!({"content": l})),
                "finish_reason": finish.as_str(),
            }),
            Endpoint::Completions => {
                json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish.as_str()})
            }
        };
        json!({"id": self.id, "object": self.object(false), "created": self.created, "model": self.model,
               "choices": [choice], "usage": usage})
    }

    /// One stream chunk: `text` (for chat, `role` too in the first), its logprobs, and
    /// the finish reason in the last.
    pub fn chunk(&self, text: Option<&str>, first: bool, logprobs: Option<Value>, finish: Option<Finish>) -> Value {
        let finish = finish.map(Finish::as_str);
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": 0, "delta": delta, "logprobs": logprobs.map(|l| json!({"content": l})), "finish_reason": finish})
            }
            Endpoint::Completions => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": finish})
            }
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [choice]})
    }

    /// The stream's last chunk when `include_usage` asked for it: no choices, the usage.
    pub fn usage_chunk(&self, usage: Value) -> Value {
        json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
               "choices": [], "usage": usage})
    }
}
