//! `pupil serve` on loopback, from the outside: raw sockets for what a client must never
//! be able to break, concurrent requests against the same requests one at a time, a
//! client that goes away, a full queue, and the Python `openai` package as a real client
//! (`tests/serve_client.py`).
#![cfg(feature = "serve")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A `pupil serve` process on a free loopback port, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(args: &[&str]) -> Option<Self> {
        let path = model(SMOLLM2)?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_pupil"))
            .args(["serve", "-t", "2", "--port", "0", "-m"])
            .arg(&path)
            .args(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start pupil serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("pupil serve exited before listening").unwrap();
            if let Some(rest) = line.split(" on http://").nth(1) {
                break rest.split(' ').next().unwrap().parse().unwrap();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Some(Self { child, addr })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends raw bytes; returns the status, the head and the body.
fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, out[split + 4..].to_vec())
}

/// A request with a JSON-ish body (any bytes), content type and extra header lines.
fn request(method: &str, path: &str, content_type: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn post(addr: SocketAddr, path: &str, body: &Value, extra: &str) -> (u16, Value) {
    let (status, _, body) = raw(addr, &request("POST", path, "application/json", extra, body.to_string().as_bytes()));
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn get(addr: SocketAddr, path: &str) -> Value {
    let (status, _, body) =
        raw(addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes());
    assert_eq!(status, 200, "GET {path}");
    serde_json::from_slice(&body).unwrap()
}

/// Asserts an error answer in OpenAI's shape, with `status` and, if given, `param`/`code`.
fn assert_error(what: &str, got: (u16, Value), status: u16, param: Option<&str>, code: Option<&str>) {
    let (s, body) = got;
    assert_eq!(s, status, "{what}: status ({body})");
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: no message in {body}");
    assert!(e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(), "{what}: shape of {body}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{what}: param");
    }
    if let Some(c) = code {
        assert_eq!(e["code"], c, "{what}: code");
    }
    eprintln!("{what}: {status} {}", e["message"]);
}

const KEY: &str = "Authorization: Bearer sesame\r\n";

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let Some(server) = Server::start(&["--api-key", "sesame", "-c", "256"]) else { return };
    let a = server.addr;
    let chat = |body: &[u8], ct: &str, extra: &str| {
        let (status, _, body) = raw(a, &request("POST", "/v1/chat/completions", ct, extra, body));
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    };
    let hello = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    assert_error("malformed JSON", chat(b"{\"messages\": [", "application/json", KEY), 400, None, None);
    assert_error("not an object", chat(b"[1, 2]", "application/json", KEY), 400, None, None);
    assert_error("wrong content type", chat(hello.to_string().as_bytes(), "text/plain", KEY), 415, None, None);
    assert_error("invalid UTF-8", chat(b"{\"prompt\": \"\xff\xfe\"}", "application/json", KEY), 400, None, None);
    // Declares 5 MiB and sends a little: the server answers from the length alone.
    let (status, _, body) = raw(
        a,
        format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{KEY}\r\n{{\"prompt\": \"", 5 << 20).as_bytes(),
    );
    assert_error("oversized body", (status, serde_json::from_slice(&body).unwrap()), 413, None, None);
    assert_error(
        "no messages",
        post(a, "/v1/chat/completions", &json!({"max_tokens": 4}), KEY),
        400,
        Some("messages"),
        None,
    );
    assert_error("no prompt", post(a, "/v1/completions", &json!({"max_tokens": 4}), KEY), 400, Some("prompt"), None);
    let with = |k: &str, v: Value| {
        let mut b = hello.clone();
        b[k] = v;
        post(a, "/v1/chat/completions", &b, KEY)
    };
    assert_error("wrong type", with("temperature", json!("hot")), 400, Some("temperature"), None);
    assert_error("n = 2", with("n", json!(2)), 400, Some("n"), None);
    let mut many = hello.clone();
    many["logprobs"] = json!(true);
    many["top_logprobs"] = json!(21);
    assert_error("top_logprobs > 20", post(a, "/v1/chat/completions", &many, KEY), 400, Some("top_logprobs"), None);
    assert_error("bad stop", with("stop", json!([1])), 400, Some("stop"), None);
    assert_error("logit_bias", with("logit_bias", json!({"42": 100})), 400, Some("logit_bias"), None);
    assert_error("no such adapter", with("lora", json!([{"id": 0, "scale": 1.0}])), 400, Some("lora"), None);
    assert_error(
        "beyond the context",
        with("max_tokens", json!(10_000)),
        400,
        Some("max_tokens"),
        Some("context_length_exceeded"),
    );
    assert_error("unknown model", with("model", json!("gpt-5")), 404, Some("model"), Some("model_not_found"));
    assert_error(
        "bad role",
        with("messages", json!([{"role": "wizard", "content": "x"}])),
        400,
        Some("messages[0]"),
        None,
    );
    let ids = post(a, "/v1/completions", &json!({"prompt": [1, 2, 99_999_999], "max_tokens": 2}), KEY);
    assert_error("token id out of range", ids, 400, Some("prompt"), None);
    assert_error(
        "wrong key",
        post(a, "/v1/chat/completions", &hello, "Authorization: Bearer guess\r\n"),
        401,
        None,
        Some("invalid_api_key"),
    );
    let (status, _, body) = raw(a, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_error("no key", (status, serde_json::from_slice(&body).unwrap()), 401, None, Some("invalid_api_key"));
    assert_error("wrong method", post(a, "/v1/models", &hello, KEY), 405, None, None);
    assert_error("no such endpoint", post(a, "/v2/everything", &hello, KEY), 404, None, None);
    assert_error(
        "detokenize out of range",
        post(a, "/detokenize", &json!({"tokens": [70_000]}), KEY),
        400,
        Some("tokens"),
        None,
    );

    // A browser's preflight, and the header that lets a page read the answers.
    let (status, head, _) = raw(a, b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nOrigin: http://localhost:3000\r\nAccess-Control-Request-Method: POST\r\n\r\n");
    assert_eq!(status, 204, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("access-control-allow-origin: *")
            && head.contains("access-control-allow-headers: authorization, content-type"),
        "{head}"
    );

    // Still serving, unknown fields ignored; /health needs no key.
    assert_eq!(get(a, "/health")["status"], "ok");
    let mut ok = hello.clone();
    ok["some_future_field"] = json!({"x": 1});
    let (status, body) = post(a, "/v1/chat/completions", &ok, KEY);
    assert_eq!(status, 200, "{body}");
    let n = body["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=4).contains(&n), "{body}");
    let (status, tokens) = post(a, "/tokenize", &json!({"content": "Hello world"}), KEY);
    assert_eq!(status, 200);
    let (_, text) = post(a, "/detokenize", &tokens, KEY);
    assert_eq!(text["content"], "Hello world");
}

/// Reads server-sent events from `s` until `[DONE]` or `limit` of them; returns them.
fn read_events(s: &mut BufReader<TcpStream>, limit: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let mut line = String::new();
    while events.len() < limit {
        line.clear();
        if s.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let Some(data) = line.trim_end().strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            break;
        }
        events.push(serde_json::from_str(data).unwrap());
    }
    events
}

fn open_stream(addr: SocketAddr, body: &Value) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(&request("POST", "/v1/completions", "application/json", "", body.to_string().as_bytes())).unwrap();
    BufReader::new(s)
}

/// Eight seeded, sampled requests (chat and completions; short prompts, and long ones
/// that share a 300-token prefix, so prefill runs in chunks and re-uses cached ones) sent
/// all at once to four slots give the texts, and the logprobs to the last bit, they give
/// one at a time. Exactly: decode rows
/// run with decode's own arithmetic whatever else is in the pass, and prefill's chunks
/// start at the same positions however a slot was used before (`serve::engine`).
#[test]
fn concurrent_requests_get_the_texts_they_get_one_at_a_time() {
    let Some(server) = Server::start(&["--parallel", "4"]) else { return };
    let a = server.addr;
    let story = "Once upon a time, in a village by the sea, there lived an old fisherman and his cat. ".repeat(16);
    let requests: Vec<(&str, Value)> = (0..8u64)
        .map(|i| {
            let common = json!({"seed": 100 + i, "temperature": 0.9, "max_tokens": 24 + 4 * i, "logprobs": 2});
            let mut body = match i % 4 {
                0 => json!({"messages": [{"role": "user", "content": format!("Tell me about the number {i}.")}]}),
                1 => json!({"prompt": format!("{story}Chapter {i}:")}),
                2 => json!({"messages": [{"role": "system", "content": story.clone()}, {"role": "user", "content": format!("Continue, part {i}.")}]}),
                _ => json!({"prompt": format!("Recipe number {i}: take")}),
            };
            body.as_object_mut().unwrap().extend(common.as_object().unwrap().clone());
            if body.get("messages").is_some() {
                body["logprobs"] = json!(true);
                body["top_logprobs"] = json!(2);
            }
            let path = if body.get("messages").is_some() { "/v1/chat/completions" } else { "/v1/completions" };
            (path, body)
        })
        .collect();
    // The text and every token's logprobs, which show any difference in the logits' bits.
    let text = |v: &Value| {
        let c = &v["choices"][0];
        let text = c["message"]["content"].as_str().or(c["text"].as_str()).unwrap();
        format!("{text}\n{}", c["logprobs"])
    };
    let alone: Vec<String> = requests.iter().map(|(p, b)| text(&post(a, p, b, "").1)).collect();

    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let watching = watching.clone();
        std::thread::spawn(move || {
            let mut most = 0;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(get(a, "/health")["slots_processing"].as_u64().unwrap());
                std::thread::sleep(Duration::from_millis(5));
            }
            most
        })
    };
    let together: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = requests.iter().map(|(p, b)| scope.spawn(move || text(&post(a, p, b, "").1))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let most_busy = watcher.join().unwrap();
    eprintln!("at most {most_busy} slots busy at once");
    for (i, (x, y)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(x, y, "request {i}: concurrent text differs from the text alone");
    }
    assert_eq!(most_busy, 4, "the eight requests never filled the four slots at once");
    // Different seeds give different texts (the comparison above could not pass by accident).
    assert!(alone.iter().collect::<std::collections::HashSet<_>>().len() >= 6, "{alone:?}");
}

/// A client that goes away, streaming or waiting for the whole answer, frees its slot at
/// the engine's next step: with one slot, the next request is served at once instead of
/// after thousands of tokens.
#[test]
fn a_client_that_disconnects_frees_its_slot() {
    let Some(server) = Server::start(&["--parallel", "1", "-c", "4096"]) else { return };
    let a = server.addr;
    let mut long = open_stream(
        a,
        &json!({"prompt": "Count to ten thousand: 1, 2, 3,", "max_tokens": 4000, "stream": true, "seed": 1}),
    );
    assert_eq!(read_events(&mut long, 3).len(), 3);
    assert_eq!(get(a, "/health")["slots_processing"], 1);
    drop(long);
    let start = Instant::now();
    while get(a, "/health")["slots_processing"] != 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "the slot of a client that left is still busy");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The same for a client waiting for a whole (non-streamed) answer.
    let mut waiting = TcpStream::connect(a).unwrap();
    let body = json!({"prompt": "Count to ten thousand: 1, 2, 3,", "max_tokens": 4000}).to_string();
    waiting.write_all(&request("POST", "/v1/completions", "application/json", "", body.as_bytes())).unwrap();
    while get(a, "/health")["slots_processing"] != 1 {
        assert!(start.elapsed() < Duration::from_secs(60), "the request never took the slot");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(waiting);
    let start = Instant::now();
    while get(a, "/health")["slots_processing"] != 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "the slot of a client that left is still busy");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, body) = post(a, "/v1/completions", &json!({"prompt": "Hi", "max_tokens": 3}), "");
    assert_eq!(status, 200, "{body}");
}

/// Ctrl-C (SIGINT) stops the server at once, even with a client streaming a long answer.
#[test]
fn an_interrupt_stops_the_server_with_a_stream_open() {
    let Some(mut server) = Server::start(&["--parallel", "1"]) else { return };
    let mut long = open_stream(server.addr, &json!({"prompt": "Count: 1, 2, 3,", "max_tokens": 4000, "stream": true}));
    assert_eq!(read_events(&mut long, 2).len(), 2);
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let start = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "pupil serve exited with {status} on SIGINT");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "pupil serve still running 10 s after SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With one slot and a queue of one, a third request is refused at once (503 with
/// Retry-After), and the queued one is served when the slot frees.
#[test]
fn a_full_queue_is_answered_503_with_retry_after() {
    let Some(server) = Server::start(&["--parallel", "1", "--queue", "1"]) else { return };
    let a = server.addr;
    let mut first = open_stream(a, &json!({"prompt": "Count: 1, 2, 3,", "max_tokens": 2000, "stream": true}));
    assert_eq!(read_events(&mut first, 1).len(), 1);
    let queued = std::thread::spawn(move || post(a, "/v1/completions", &json!({"prompt": "Hi", "max_tokens": 3}), ""));
    std::thread::sleep(Duration::from_millis(500));
    let (status, head, body) =
        raw(a, &request("POST", "/v1/completions", "application/json", "", br#"{"prompt": "Hi", "max_tokens": 3}"#));
    assert_error("queue full", (status, serde_json::from_slice(&body).unwrap()), 503, None, None);
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    drop(first);
    let (status, body) = queued.join().unwrap();
    assert_eq!(status, 200, "{body}");
}

/// The Python `openai` package against the live server (`tests/serve_client.py`: chat
/// and completions, streamed text equals non-streamed at a fixed seed, `models.list`,
/// logprobs against `pupil complete --logprobs`, finish reasons, stop strings, usage,
/// per-request LoRA). The interpreter is `PUPIL_PYTHON` (`.ci/run` makes a venv with
/// `openai`), else `python3`; without the package the test is skipped, or fails under
/// `PUPIL_REQUIRE_MODELS=1`.
#[test]
fn the_openai_python_client_works_against_the_server() {
    let python = std::env::var("PUPIL_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_openai = Command::new(&python).args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    if !has_openai {
        assert!(
            std::env::var("PUPIL_REQUIRE_MODELS").as_deref() != Ok("1"),
            "{python} cannot import openai (PUPIL_REQUIRE_MODELS=1; .ci/run installs it into a venv and sets PUPIL_PYTHON)"
        );
        eprintln!("SKIPPED: {python} has no openai package");
        return;
    }
    let Some(path) = model(SMOLLM2) else { return };
    let dir = scratch_dir("serve-client");
    // An adapter that changes the text: random A and B on every projection.
    let rt = pupil::generate::Runtime::load_path(&path, 2).unwrap();
    let adapter = random_adapter(&rt.model.cfg, 8, 16.0, 3, 0.2);
    let adapter_path = dir.join("adapter.gguf");
    adapter.to_gguf(&rt.model.cfg.architecture, "random", pupil::gguf::GgmlDType::F32).write(&adapter_path).unwrap();
    // The reference distribution: `pupil complete`, greedy, with logprobs.
    let prompt = "The three primary colors are";
    let (ok, out, err) = pupil_cli(&[
        "complete",
        "-m",
        path.to_str().unwrap(),
        "-t",
        "2",
        "--temperature",
        "0",
        "-n",
        "8",
        "--json",
        "--logprobs",
        "5",
        prompt,
    ]);
    assert!(ok, "{err}");
    let reference = dir.join("reference.json");
    std::fs::write(&reference, out).unwrap();

    let Some(server) =
        Server::start(&["--lora", adapter_path.to_str().unwrap(), "--lora-scale", "0", "--alias", "smol"])
    else {
        return;
    };
    let out = Command::new(&python)
        .arg(repo_path("tests/serve_client.py"))
        .args([format!("http://{}/v1", server.addr), "smol".into(), prompt.into()])
        .arg(&reference)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "tests/serve_client.py failed");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A teacher behind a server makes targets the way a local one does: the server's own
/// chat replies with logprobs (`scripts/openai-dump.py`), imported with `targets import
/// --from openai`, store the distributions `targets make` stores when it scores the same
/// replies, within the format's half precision (the server's come from decode passes,
/// make's from one prefill pass; both are rounded to f16).
#[test]
fn targets_imported_from_the_servers_dump_equal_targets_made_on_the_same_replies() {
    use pupil::targets::TargetFile;
    let Some(server) = Server::start(&["--alias", "teacher"]) else { return };
    let path = model(SMOLLM2).unwrap();
    let dir = scratch_dir("serve-targets");
    let prompts = dir.join("prompts.jsonl");
    let questions = ["What is a rainbow?", "Name three fruits.", "Why is the sky blue?"];
    let lines: Vec<String> =
        questions.iter().map(|q| json!({"messages": [{"role": "user", "content": q}]}).to_string()).collect();
    std::fs::write(&prompts, lines.join("\n")).unwrap();
    let dump = dir.join("dump.jsonl");
    let status = Command::new("python3")
        .arg(repo_path("scripts/openai-dump.py"))
        .args([format!("http://{}/v1", server.addr), "teacher".into()])
        .args([&prompts, &dump])
        .args(["--max-tokens", "24", "--temperature", "0", "--top-logprobs", "16"])
        .status()
        .unwrap();
    assert!(status.success(), "openai-dump.py failed");
    let p = path.to_str().unwrap();
    let imported = dir.join("imported.ptt");
    let (ok, _, err) = pupil_cli(&[
        "targets",
        "import",
        "--from",
        "openai",
        dump.to_str().unwrap(),
        "--tokenizer-model",
        p,
        "-o",
        imported.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    eprintln!("{err}");
    // The same replies, scored by `targets make`.
    let scored = dir.join("scored.jsonl");
    let with_replies: Vec<String> = std::fs::read_to_string(&dump)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let mut messages = v["messages"].as_array().unwrap().clone();
            let reply = v["response"]["choices"][0]["message"]["content"].clone();
            messages.push(json!({"role": "assistant", "content": reply}));
            json!({ "messages": messages }).to_string()
        })
        .collect();
    std::fs::write(&scored, with_replies.join("\n")).unwrap();
    let made = dir.join("made.ptt");
    let (ok, _, err) = pupil_cli(&[
        "-t",
        "2",
        "targets",
        "make",
        "--teacher",
        p,
        "--prompts",
        scored.to_str().unwrap(),
        "--k",
        "16",
        "-o",
        made.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");

    let (imported, made) = (TargetFile::open(&imported).unwrap(), TargetFile::open(&made).unwrap());
    assert_eq!(imported.len(), questions.len());
    assert_eq!(made.len(), questions.len());
    let (mut positions, mut worst) = (0, 0f32);
    for i in 0..questions.len() {
        let (a, b) = (imported.sequence(i).unwrap(), made.sequence(i).unwrap());
        // make also scores the end-of-turn the template writes after the reply.
        assert!(b.tokens.starts_with(&a.tokens), "sequence {i}: the imported tokens are not what make scored");
        assert!(!a.targets.is_empty());
        for (pos, (x, y)) in a.targets.iter().zip(&b.targets).enumerate() {
            let ours: std::collections::HashMap<u32, f32> =
                y.ids().iter().copied().zip(y.logprobs().iter().copied()).collect();
            let mut shared = 0;
            for (id, lp) in x.ids().iter().zip(x.logprobs()) {
                if let Some(other) = ours.get(id) {
                    shared += 1;
                    let d = (lp - other).abs();
                    worst = worst.max(d / lp.abs().max(1.0));
                    assert!(d <= 4e-3 * lp.abs().max(1.0), "sequence {i} position {pos} id {id}: {lp} vs {other}");
                }
            }
            // Only near-ties at the edge of the top 16 may differ.
            assert!(shared >= 14, "sequence {i} position {pos}: {shared} of 16 ids shared");
            positions += 1;
        }
    }
    eprintln!("{positions} positions: worst relative logprob difference {worst:.1e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
