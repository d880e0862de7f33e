//! `serve`: the OpenAI-compatible HTTP server.

use clap::Args;

use super::{AdapterArgs, ModelArg};
use crate::serve::ServeOptions;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Adapters requests may turn on and scale (`"lora": [{"id": 0, "scale": 1.0}]`).
    #[command(flatten)]
    pub adapters: AdapterArgs,
    /// Address to listen on (loopback by default: there is no TLS).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests decoded together, each with its own KV cache.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Context of each of those requests, in tokens (clamped to the model's).
    #[arg(short = 'c', long, default_value_t = 4096)]
    pub ctx_size: usize,
    /// Requests waiting for a free slot, at most; more are answered 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long, env = "PUPIL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The model's name in requests and /v1/models (default: the catalog name or file stem).
    #[arg(long)]
    pub alias: Option<String>,
}

pub fn serve(a: ServeArgs, exec: super::Exec) -> anyhow::Result<()> {
    anyhow::ensure!(a.parallel >= 1, "--parallel must be at least 1");
    let rt = a.adapters.load(&a.model.model, exec)?;
    let model_id = a.alias.clone().unwrap_or_else(|| {
        let p = std::path::Path::new(&a.model.model);
        match p.extension() {
            Some(e) if e == "gguf" => p.file_stem().map_or(a.model.model.clone(), |s| s.to_string_lossy().into_owned()),
            _ => a.model.model.clone(),
        }
    });
    let opts = ServeOptions {
        host: a.host,
        port: a.port,
        parallel: a.parallel,
        ctx_size: a.ctx_size,
        queue: a.queue,
        api_key: a.api_key,
        model_id: model_id.clone(),
    };
    let (parallel, threads) = (opts.parallel, rt.threads());
    crate::serve::serve(rt, opts, |addr| {
        // Tests and scripts read this line for the port.
        eprintln!("pupil: serving {model_id} on http://{addr} ({parallel} slots, {threads} threads)");
    })
}
