//! `pull`, `list`, `inspect`, `tokenize`, `complete`, `chat`.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use clap::Args;

use super::{AdapterArgs, ModelArg, SamplingArgs};
use crate::bench::memory::{memory_status, mib};
use crate::catalog::{self, Catalog};
use crate::generate::{Generation, Runtime, Sampler, Session};
use crate::gguf::GgufFile;
use crate::tokenizer::Message;

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Catalog name (see `pupil list`).
    pub name: String,
    /// Download again even if the file is present.
    #[arg(long)]
    pub force: bool,
    /// Re-hash an installed file against the catalog instead of downloading.
    #[arg(long)]
    pub verify: bool,
}

pub fn pull(a: PullArgs) -> anyhow::Result<()> {
    let catalog = Catalog::load()?;
    let entry = catalog
        .find(&a.name)
        .ok_or_else(|| anyhow::anyhow!("unknown model {:?} (known: {})", a.name, catalog.names()))?;
    if a.verify {
        catalog::verify(entry)?;
        println!("{}: ok ({} bytes, sha256 {})", entry.path()?.display(), entry.size, entry.sha256);
        return Ok(());
    }
    let path = if a.force { catalog::pull(entry, true)? } else { catalog::ensure(entry, true)? };
    println!("{}", path.display());
    Ok(())
}

pub fn list() -> anyhow::Result<()> {
    let catalog = Catalog::load()?;
    println!("models directory: {}", catalog::models_dir()?.display());
    println!("{:<24} {:<8} {:>10}  {:<38} description", "name", "present", "size", "quant");
    for m in &catalog.model {
        let default = if m.name == catalog.default { " (default)" } else { "" };
        println!(
            "{:<24} {:<8} {:>8.1} MB  {:<38} {}{default}",
            m.name,
            if m.is_present() { "yes" } else { "no" },
            m.size as f64 / 1e6,
            m.quant,
            m.description
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// GGUF file or catalog name.
    pub model: String,
    /// Also print every metadata key.
    #[arg(long)]
    pub metadata: bool,
}

pub fn inspect(a: InspectArgs) -> anyhow::Result<()> {
    let path = catalog::resolve(&a.model, true)?;
    let f = GgufFile::open(&path)?;
    let arch = f.get_str("general.architecture")?.unwrap_or("(none)").to_string();
    println!(
        "file:          {} ({:.1} MB, GGUF v{}, alignment {})",
        path.display(),
        f.file_size() as f64 / 1e6,
        f.version(),
        f.alignment()
    );
    println!("name:          {}", f.get_str("general.name")?.unwrap_or("(none)"));
    println!("architecture:  {arch}");
    println!("hyperparameters:");
    let prefix = format!("{arch}.");
    for (k, v) in f.metadata() {
        if let Some(short) = k.strip_prefix(&prefix) {
            println!("  {short:<36} {}", v.summary());
        }
    }
    let n_tokens = f.get_array("tokenizer.ggml.tokens")?.map_or(0, |t| t.len());
    println!(
        "tokenizer:     {} vocabulary, pre-tokenizer {}, {n_tokens} tokens, add BOS {}",
        f.get_str("tokenizer.ggml.model")?.unwrap_or("(none)"),
        f.get_str("tokenizer.ggml.pre")?.unwrap_or("(none)"),
        f.get_bool("tokenizer.ggml.add_bos_token")?.map_or("(unset)".to_string(), |b| b.to_string()),
    );
    match f.get_str("tokenizer.chat_template")? {
        Some(t) => println!("chat template: present ({} bytes)", t.len()),
        None => println!(
            "chat template: absent (pupil falls back to {})",
            if arch.starts_with("gemma") { "Gemma turns" } else { "ChatML" }
        ),
    }
    let mut by_type: BTreeMap<&str, (usize, u64, u64)> = BTreeMap::new();
    for t in f.tensors() {
        let e = by_type.entry(t.dtype.name()).or_default();
        e.0 += 1;
        e.1 += t.data.len() as u64;
        e.2 += t.n_elements();
    }
    let total: u64 = by_type.values().map(|v| v.1).sum();
    let params: u64 = by_type.values().map(|v| v.2).sum();
    println!(
        "tensors:       {} ({:.1} M parameters, {:.1} MB)",
        f.tensors().len(),
        params as f64 / 1e6,
        total as f64 / 1e6
    );
    for (ty, (count, bytes, elems)) in &by_type {
        let bpw = *bytes as f64 * 8.0 / *elems as f64;
        println!(
            "  {ty:<8} {count:>5} tensors {:>9.1} MB {:>5.1}% {bpw:>6.2} bits/weight",
            *bytes as f64 / 1e6,
            100.0 * *bytes as f64 / total.max(1) as f64
        );
    }
    if a.metadata {
        println!("metadata:");
        for (k, v) in f.metadata() {
            println!("  {k:<44} {}", v.summary());
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Parse special-token text such as <|im_start|> as special tokens.
    #[arg(long)]
    pub special: bool,
    /// Add BOS where the model's metadata asks for it.
    #[arg(long)]
    pub bos: bool,
    /// Print a JSON array of ids instead of one `id 'piece'` line per token.
    #[arg(long)]
    pub json: bool,
    pub text: String,
}

pub fn tokenize(a: TokenizeArgs, threads: usize) -> anyhow::Result<()> {
    let rt = Runtime::load(&a.model.model, threads, true)?;
    let tok = &rt.tokenizer;
    let ids = if a.bos { tok.encode_prompt(&a.text, a.special)? } else { tok.encode(&a.text, a.special)? };
    if a.json {
        println!("{}", serde_json::to_string(&ids)?);
    } else {
        for id in ids {
            let piece = tok.token_text(id).unwrap_or("");
            println!("{id:>7} {piece:?}");
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct CompleteArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub adapters: AdapterArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Treat special-token text in the prompt as plain text.
    #[arg(long)]
    pub no_special: bool,
    /// Send the prompt as one user message, rendered with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Print one JSON object {prompt_ids, ids, text, stop, timings} instead of streaming.
    #[arg(long)]
    pub json: bool,
    /// With --json: each generated token's log-probability under the model and its N most
    /// likely alternatives (`logprobs`: [{id, logprob, top: [[id, logprob], ...]}]).
    #[arg(long, value_name = "N", requires = "json")]
    pub logprobs: Option<usize>,
    /// Print memory and kernel details to stderr.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Read the prompt from this file instead.
    #[arg(short = 'f', long, conflicts_with = "prompt")]
    pub file: Option<std::path::PathBuf>,
    /// The text to continue.
    #[arg(required_unless_present = "file")]
    pub prompt: Option<String>,
}

pub fn complete(a: CompleteArgs, exec: super::Exec) -> anyhow::Result<()> {
    let prompt = match (&a.prompt, &a.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => unreachable!("clap requires one"),
    };
    let mut sampler = Sampler::new(a.sampling.sampler_config()?);
    let rt = a.adapters.load(&a.model.model, exec)?;
    let draft = a.sampling.load_draft(&exec)?;
    if a.verbose {
        report_load(&rt);
    }
    let prompt = if a.chat { rt.template.render(&[Message::new("user", prompt)], true)? } else { prompt };
    let prompt_ids = rt.tokenizer.encode_prompt(&prompt, !a.no_special || a.chat)?;
    let mut session = Session::new(&rt, a.sampling.ctx_size)?;
    a.sampling.speculate(&mut session, draft.as_ref())?;
    session.record_logprobs(a.logprobs);
    let mut stdout = std::io::stdout().lock();
    let stream = !a.json;
    let generation = session.generate(&prompt_ids, a.sampling.max_tokens, &mut sampler, |piece| {
        if stream {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    if a.json {
        let t = &generation.timings;
        let mut out = serde_json::json!({
            "prompt_ids": prompt_ids,
            "ids": generation.ids,
            "text": generation.text,
            "stop": generation.stop,
            "timings": {
                "load_ms": rt.load_time.as_secs_f64() * 1000.0,
                "prompt_tokens": t.prompt_tokens, "prompt_ms": t.prompt_ms, "prompt_tps": t.prompt_tps(),
                "generated_tokens": t.generated_tokens, "generation_ms": t.generation_ms, "generation_tps": t.generation_tps(),
                "drafted_tokens": t.drafted_tokens, "accepted_tokens": t.accepted_tokens,
            },
        });
        if a.logprobs.is_some() {
            out["logprobs"] = serde_json::to_value(&generation.logprobs)?;
        }
        writeln!(stdout, "{out}")?;
    } else {
        writeln!(stdout)?;
    }
    report_generation(&rt, &generation, session.n_ctx());
    if a.verbose {
        report_memory(&rt, &session);
    }
    Ok(())
}

fn report_load(rt: &Runtime) {
    let cfg = &rt.model.cfg;
    eprintln!(
        "pupil: {} | {} layers, {} heads ({} KV), vocab {} | weights {:.1} MB mapped | {} threads, kernels {}",
        rt.file.path().display(),
        cfg.n_layer,
        cfg.n_head,
        cfg.n_head_kv,
        cfg.n_vocab,
        rt.model.weight_bytes() as f64 / 1e6,
        rt.threads(),
        crate::kernels::features::Features::detected().kernel_name(),
    );
}

fn report_generation(rt: &Runtime, g: &Generation, n_ctx: usize) {
    let t = &g.timings;
    let lookup = if t.drafted_tokens > 0 {
        format!(" ({} of {} drafted tokens kept, {:.0} %)", t.accepted_tokens, t.drafted_tokens, 100.0 * t.acceptance())
    } else {
        String::new()
    };
    eprintln!(
        "pupil: load {:.0} ms | prompt {} tokens, {:.1} t/s | generated {} tokens, {:.1} t/s{lookup} | stop: {}",
        rt.load_time.as_secs_f64() * 1000.0,
        t.prompt_tokens,
        t.prompt_tps(),
        t.generated_tokens,
        t.generation_tps(),
        match g.stop {
            crate::generate::StopReason::EndOfGeneration => "end of generation".to_string(),
            crate::generate::StopReason::MaxTokens => "max tokens".to_string(),
            crate::generate::StopReason::ContextFull => format!("context full ({n_ctx} tokens; raise --ctx-size)"),
        }
    );
}

fn report_memory(rt: &Runtime, session: &Session) {
    if let Some(m) = memory_status() {
        eprintln!(
            "pupil: memory RSS {:.1} MiB = {:.1} MiB anonymous + {:.1} MiB mapped file (file {:.1} MiB, KV cache capacity {:.1} MiB); token embeddings stay quantized in the map",
            mib(m.rss),
            mib(m.rss_anon),
            mib(m.rss_file),
            mib(rt.file.file_size() as u64),
            mib(session.kv_capacity_bytes() as u64),
        );
    }
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub adapters: AdapterArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// System prompt (default: the template's own, if any).
    #[arg(long)]
    pub system: Option<String>,
}

pub fn chat(a: ChatArgs, exec: super::Exec) -> anyhow::Result<()> {
    let mut sampler = Sampler::new(a.sampling.sampler_config()?);
    let rt = a.adapters.load(&a.model.model, exec)?;
    let draft = a.sampling.load_draft(&exec)?;
    let mut session = Session::new(&rt, a.sampling.ctx_size)?;
    a.sampling.speculate(&mut session, draft.as_ref())?;
    let interactive = std::io::stdin().is_terminal();
    let system: Vec<Message> = a.system.iter().map(|s| Message::new("system", s.clone())).collect();
    let mut history: Vec<Message> = Vec::new();
    if interactive {
        eprintln!("pupil chat with {} — /reset clears the conversation, /exit quits.", rt.file.path().display());
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let input = line.trim();
        match input {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.clear();
                session.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", input));
        // Keep the rendered conversation within the context, leaving room for the reply:
        // drop the oldest turns first (the system prompt always stays).
        let budget = session.n_ctx().saturating_sub(a.sampling.max_tokens.min(session.n_ctx() / 2)).max(1);
        let prompt_ids = loop {
            let messages: Vec<Message> = system.iter().chain(&history).cloned().collect();
            let text = rt.template.render(&messages, true)?;
            let ids = rt.tokenizer.encode_prompt(&text, true)?;
            if ids.len() <= budget || history.len() <= 1 {
                break ids;
            }
            history.drain(..history.len().min(2));
        };
        let mut stdout = std::io::stdout().lock();
        let g = session.generate(&prompt_ids, a.sampling.max_tokens, &mut sampler, |piece| {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        })?;
        writeln!(stdout)?;
        drop(stdout);
        if interactive {
            report_generation(&rt, &g, session.n_ctx());
        }
        history.push(Message::new("assistant", g.text.trim().to_string()));
    }
    Ok(())
}
