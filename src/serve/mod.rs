//! `pupil serve`: OpenAI's HTTP API on a local port.
//!
//! Two threads: the engine ([`engine`]) owns the KV caches and runs every forward pass on
//! the model's worker team; the HTTP side (axum on a one-thread tokio runtime) only reads
//! requests ([`api`]), renders and tokenizes prompts, queues jobs and streams what the
//! engine sends back. The queue is bounded: when it is full a request is answered 503 with
//! `Retry-After` at once instead of waiting without end.

pub mod api;
pub mod engine;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::generate::Runtime;
use crate::tokenizer::{ChatTemplate, Tokenizer};
use api::{ApiError, CompletionRequest, Endpoint, Head, Prompt};
use engine::{Engine, Event, Job};

/// The largest request body read (a prompt of about a million tokens).
const MAX_BODY: usize = 4 << 20;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    /// Requests decoded together, each with its own KV cache.
    pub parallel: usize,
    /// Each slot's context in tokens.
    pub ctx_size: usize,
    /// Requests waiting for a slot, at most; more are answered 503.
    pub queue: usize,
    /// The bearer token every request but `/health` must carry.
    pub api_key: Option<String>,
    /// The model's name in requests and `/v1/models`.
    pub model_id: String,
}

/// What every handler reads.
struct Shared {
    tokenizer: Arc<Tokenizer>,
    template: Arc<ChatTemplate>,
    /// Adapters loaded at start (the ids requests may name).
    n_adapters: usize,
    opts: ServeOptions,
    /// Each slot's context, as the engine made it (clamped to the model's).
    n_ctx: usize,
    /// Slots holding a request (the engine keeps it current).
    busy: Arc<AtomicUsize>,
    queue: SyncSender<Job>,
}

/// Serves until interrupted (Ctrl-C). `on_ready` gets the bound address (useful with port 0).
pub fn serve(rt: Runtime, opts: ServeOptions, on_ready: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
    let (tokenizer, template) = (Arc::clone(&rt.tokenizer), Arc::clone(&rt.template));
    let n_adapters = rt.model.adapters().len();
    let (queue, jobs) = sync_channel::<Job>(opts.queue.max(1));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (parallel, ctx_size) = (opts.parallel, opts.ctx_size);
    // The model and its worker team live on the engine thread alone.
    let engine = std::thread::Builder::new().name("pupil-engine".into()).spawn(move || {
        match Engine::new(&rt, parallel, ctx_size) {
            Ok(mut engine) => {
                let _ = ready_tx.send(Ok((engine.n_ctx(), engine.busy())));
                engine.run(jobs);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        }
    })?;
    let (n_ctx, busy) = ready_rx.recv().map_err(|_| anyhow::anyhow!("the engine thread stopped while starting"))??;
    let shared = Arc::new(Shared { tokenizer, template, n_adapters, opts: opts.clone(), n_ctx, busy, queue });
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn(cors))
        .with_state(Arc::clone(&shared));
    let tokio_rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    tokio_rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", opts.host, opts.port))?;
        on_ready(listener.local_addr()?);
        // Ctrl-C stops at once: waiting for open streams to end could take as long as
        // their clients like.
        tokio::select! {
            served = axum::serve(listener, app) => served?,
            _ = tokio::signal::ctrl_c() => eprintln!("pupil: interrupted, stopping"),
        }
        anyhow::Ok(())
    })?;
    // Dropping the runtime ends the connections' tasks, and with them the requests'
    // receivers and the last queue senders: the engine frees every slot within a step and
    // its loop ends.
    drop(tokio_rt);
    drop(shared);
    let _ = engine.join();
    Ok(())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(self.body())).into_response();
        if self.status == 503 {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Lets a chat page from any origin call the server, as llama-server does: preflight
/// requests are answered here, and every answer says any origin may read it (the API key,
/// when there is one, still guards the endpoints).
async fn cors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = if request.method() == axum::http::Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type"));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
        r
    } else {
        next.run(request).await
    };
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// Checks the API key (when the server has one).
fn authorize(s: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &s.opts.api_key else { return Ok(()) };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given.map(str::trim) == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError::new(
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            "missing or wrong API key (send 'Authorization: Bearer KEY')",
        ))
    }
}

/// The request's JSON object, after the key, content type and size checks.
async fn read_json(s: &Shared, headers: &HeaderMap, body: Body) -> Result<serde_json::Map<String, Value>, ApiError> {
    authorize(s, headers)?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.trim_start().to_ascii_lowercase().starts_with("application/json") {
        return Err(ApiError::new(
            415,
            "invalid_request_error",
            None,
            format!("Content-Type must be application/json (got '{content_type}')"),
        ));
    }
    let too_large =
        || ApiError::new(413, "invalid_request_error", None, format!("request body is larger than {MAX_BODY} bytes"));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    let bytes: Bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| too_large())?;
    api::parse_object(&bytes)
}

/// Liveness and load, llama-server's fields: no key needed (load balancers poll it).
async fn health(State(s): State<Arc<Shared>>) -> Response {
    let busy = s.busy.load(Ordering::Relaxed);
    let idle = s.opts.parallel.saturating_sub(busy);
    axum::Json(json!({"status": "ok", "slots_idle": idle, "slots_processing": busy})).into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    ApiError::new(404, "invalid_request_error", Some("not_found"), format!("no endpoint {uri}")).into_response()
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    ApiError::new(405, "invalid_request_error", Some("method_not_allowed"), format!("{uri} does not take {method}"))
        .into_response()
}

async fn models(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&s, &headers) {
        return e.into_response();
    }
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let model = json!({"id": s.opts.model_id, "object": "model", "created": created, "owned_by": "pupil",
                       "meta": {"n_ctx": s.n_ctx, "n_vocab": s.tokenizer.n_vocab(), "parallel": s.opts.parallel}});
    axum::Json(json!({"object": "list", "data": [model]})).into_response()
}

async fn tokenize(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let run = async {
        let (content, add_special) = api::tokenize_request(&read_json(&s, &headers, body).await?)?;
        let tok = &s.tokenizer;
        let ids = if add_special { tok.encode_prompt(&content, true) } else { tok.encode(&content, true) };
        let ids = ids.map_err(|e| ApiError::field("content", e.to_string()))?;
        Ok::<_, ApiError>(json!({"tokens": ids}))
    };
    respond(run.await)
}

async fn detokenize(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let run = async {
        let ids = api::detokenize_request(&read_json(&s, &headers, body).await?, s.tokenizer.n_vocab())?;
        let text = s.tokenizer.decode(&ids).map_err(|e| ApiError::field("tokens", e.to_string()))?;
        Ok::<_, ApiError>(json!({"content": text}))
    };
    respond(run.await)
}

fn respond(result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn chat(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    completion(s, Endpoint::Chat, headers, body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn completions(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    completion(s, Endpoint::Completions, headers, body).await.unwrap_or_else(IntoResponse::into_response)
}

/// The prompt's tokens: a chat rendered with the model's template, or text, or ids.
fn prompt_ids(s: &Shared, prompt: &Prompt) -> Result<Vec<u32>, ApiError> {
    let tok = &s.tokenizer;
    let ids = match prompt {
        Prompt::Chat { messages, tools } => {
            let text = s
                .template
                .render_with_tools(messages, tools.as_deref(), true)
                .map_err(|e| ApiError::field("messages", e.to_string()))?;
            tok.encode_prompt(&text, true).map_err(|e| ApiError::field("messages", e.to_string()))?
        }
        Prompt::Text(text) => tok.encode_prompt(text, true).map_err(|e| ApiError::field("prompt", e.to_string()))?,
        Prompt::Ids(ids) => {
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= tok.n_vocab()) {
                return Err(ApiError::field(
                    "prompt",
                    format!("token id {id} is outside the vocabulary ({} tokens)", tok.n_vocab()),
                ));
            }
            ids.clone()
        }
    };
    if ids.is_empty() {
        let param = if matches!(prompt, Prompt::Chat { .. }) { "messages" } else { "prompt" };
        return Err(ApiError::field(param, "the prompt is empty: nothing to continue from"));
    }
    Ok(ids)
}

async fn completion(s: Arc<Shared>, endpoint: Endpoint, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let body = read_json(&s, &headers, body).await?;
    let req = api::completion_request(endpoint, &body, &s.opts.model_id, s.n_adapters)?;
    let prompt = prompt_ids(&s, &req.prompt)?;
    let room = s.n_ctx.saturating_sub(prompt.len());
    let context_error = |param: &str, message: String| ApiError {
        code: Some("context_length_exceeded"),
        ..ApiError::field(param, message)
    };
    if room == 0 {
        return Err(context_error(
            if endpoint == Endpoint::Chat { "messages" } else { "prompt" },
            format!(
                "the prompt has {} tokens; the context holds {} (start the server with a larger --ctx-size)",
                prompt.len(),
                s.n_ctx
            ),
        ));
    }
    let max_tokens = match req.max_tokens {
        Some(m) if m > room => {
            let key = if body.get("max_completion_tokens").is_some_and(|v| !v.is_null()) {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            return Err(context_error(
                key,
                format!(
                    "'{key}' is {m}, but the prompt's {} tokens leave room for {room} in the context of {}",
                    prompt.len(),
                    s.n_ctx
                ),
            ));
        }
        Some(m) => m,
        None => room,
    };
    let (events, rx) = unbounded_channel();
    let job = Job {
        prompt,
        max_tokens,
        sampling: req.sampling.clone(),
        stop: req.stop.clone(),
        logprobs: req.logprobs,
        lora: req.lora.clone(),
        events,
    };
    match s.queue.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return Err(ApiError::new(
                503,
                "server_error",
                Some("server_busy"),
                "every slot is busy and the queue is full; retry shortly",
            ));
        }
        Err(TrySendError::Disconnected(_)) => {
            return Err(ApiError::new(503, "server_error", None, "the engine has stopped"));
        }
    }
    let head = Head::new(endpoint, &s.opts.model_id);
    if req.stream {
        Ok(stream(s, head, req, rx))
    } else {
        collect(&s, head, &req, rx).await
    }
}

/// Waits for the whole text.
async fn collect(
    s: &Shared,
    head: Head,
    req: &CompletionRequest,
    mut rx: UnboundedReceiver<Event>,
) -> Result<Response, ApiError> {
    let (mut text, mut tokens) = (String::new(), Vec::new());
    loop {
        match rx.recv().await {
            Some(Event::Text { text: t, tokens: lp }) => {
                text.push_str(&t);
                tokens.extend(lp);
            }
            Some(Event::Done { finish, prompt_tokens, completion_tokens }) => {
                let logprobs = req.logprobs.map(|_| head.logprobs(&s.tokenizer, &tokens, 0));
                let body = head.response(&text, logprobs, finish, api::usage(prompt_tokens, completion_tokens));
                return Ok(axum::Json(body).into_response());
            }
            Some(Event::Failed(message)) => return Err(ApiError::new(500, "server_error", None, message)),
            None => return Err(ApiError::new(500, "server_error", None, "the engine dropped the request")),
        }
    }
}

/// Server-sent events: a chunk per piece of text, then the finish reason, the usage if
/// asked, and `[DONE]`. A client that goes away drops the engine's receiver, which ends
/// the request at the engine's next step.
fn stream(s: Arc<Shared>, head: Head, req: CompletionRequest, mut rx: UnboundedReceiver<Event>) -> Response {
    let (out, body) = tokio::sync::mpsc::channel::<Result<String, Infallible>>(64);
    let data = |v: Value| Ok(format!("data: {v}\n\n"));
    tokio::spawn(async move {
        let mut offset = 0;
        if head.endpoint == Endpoint::Chat && out.send(data(head.chunk(Some(""), true, None, None))).await.is_err() {
            return;
        }
        loop {
            let event = tokio::select! {
                e = rx.recv() => e,
                _ = out.closed() => return,
            };
            let message = match event {
                Some(Event::Text { text, tokens }) => {
                    let logprobs = req.logprobs.map(|_| head.logprobs(&s.tokenizer, &tokens, offset));
                    offset += text.len();
                    data(head.chunk(Some(&text), false, logprobs, None))
                }
                Some(Event::Done { finish, prompt_tokens, completion_tokens }) => {
                    let mut last = vec![data(head.chunk(None, false, None, Some(finish)))];
                    if req.include_usage {
                        last.push(data(head.usage_chunk(api::usage(prompt_tokens, completion_tokens))));
                    }
                    last.push(Ok("data: [DONE]\n\n".to_string()));
                    for m in last {
                        if out.send(m).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                Some(Event::Failed(message)) => {
                    let _ = out.send(data(ApiError::new(500, "server_error", None, message).body())).await;
                    return;
                }
                None => return,
            };
            if out.send(message).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(body)));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
