//! `bench`: llama-bench-compatible speed runs, plus load time, memory and device
//! identification.

use std::collections::BTreeMap;
use std::io::Write;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::bench::device::DeviceInfo;
use crate::bench::memory::{memory_status, mib, reset_peak};
use crate::bench::speed::{self, SpeedTest};
use crate::catalog;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Md,
    Json,
    Jsonl,
    Csv,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Models (GGUF paths or catalog names); repeat or separate with commas.
    #[arg(short = 'm', long = "model", value_delimiter = ',', default_value = "smollm2-135m-instruct")]
    pub models: Vec<String>,
    /// Prompt-processing tests: tokens per batch (0 to skip).
    #[arg(short = 'p', long = "n-prompt", value_delimiter = ',', default_value = "512")]
    pub n_prompt: Vec<usize>,
    /// Text-generation tests: tokens generated one at a time (0 to skip).
    #[arg(short = 'n', long = "n-gen", value_delimiter = ',', default_value = "128")]
    pub n_gen: Vec<usize>,
    /// Sequences decoded together in the text-generation tests (`tg128 x4`: each step one
    /// pass over a token of each, as `pupil serve` runs concurrent requests), e.g. `1,4`.
    #[arg(long = "parallel", value_delimiter = ',', default_value = "1")]
    pub parallel: Vec<usize>,
    /// Positions already in the KV cache before each test.
    #[arg(short = 'd', long = "n-depth", value_delimiter = ',', default_value = "0")]
    pub depth: Vec<usize>,
    /// Repetitions of each test (after one warm-up).
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub repetitions: usize,
    /// Thread counts to test, e.g. `-t 1,2` (default: one per core).
    #[arg(short = 't', long = "threads", value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Md)]
    pub output: Format,
    /// Also measure quality on this text: perplexity (llama-perplexity's method, -c 512)
    /// and bits per byte, the column that compares models with different tokenizers.
    /// Refused for synthetic models.
    #[arg(long, value_name = "TEXT_FILE")]
    pub quality: Option<std::path::PathBuf>,
    /// Score at most this many 512-token chunks of --quality.
    #[arg(long)]
    pub quality_chunks: Option<usize>,
    /// Also measure the machine's memory read bandwidth with each thread count (a
    /// streaming read of 1 GiB), so that tg rows show their share of that roofline.
    #[arg(long)]
    pub bandwidth: bool,
}

/// One result row: what llama-bench prints, plus what it lacks.
#[derive(Debug, Serialize)]
struct Row {
    /// Version of the row layout (`bench::report::SCHEMA`); `pupil report` refuses others.
    schema: u64,
    model: String,
    model_type: String,
    size_bytes: u64,
    n_params: u64,
    quant_mix: String,
    /// `CPU`, `CUDA` or `Metal`: the backend that ran the forward pass.
    backend: &'static str,
    /// The GPU's name when the backend is one (`NVIDIA H200`).
    gpu: Option<String>,
    threads: usize,
    test: String,
    n_prompt: usize,
    n_gen: usize,
    n_depth: usize,
    /// Sequences decoded together (tg rows; 1 elsewhere).
    n_seq: usize,
    repetitions: usize,
    avg_ts: f64,
    stddev_ts: f64,
    median_ts: f64,
    samples_ns: Vec<u64>,
    load_to_first_token_ms: f64,
    peak_rss_bytes: u64,
    peak_anon_bytes: u64,
    /// With `--quality`: perplexity and bits per byte of the text.
    ppl: Option<f64>,
    bits_per_byte: Option<f64>,
    /// tg rows: bytes a decode step reads (weights, output head, KV cache at the test's
    /// mean context) and the rate that makes at `avg_ts`.
    decode_bytes_per_token: Option<u64>,
    read_gbps: Option<f64>,
    /// With `--bandwidth`: the measured read bandwidth at these threads, and `read_gbps`
    /// as a share of it.
    roofline_gbps: Option<f64>,
    roofline_pct: Option<f64>,
    device: DeviceInfo,
}

pub fn bench(
    a: BenchArgs,
    request: crate::model::DeviceRequest,
    cache: crate::model::CacheTypes,
    layout: crate::generate::WeightLayout,
) -> anyhow::Result<()> {
    let device = DeviceInfo::detect();
    let on = request.resolve()?;
    let thread_counts: Vec<usize> = if a.threads.is_empty() {
        vec![device.cores]
    } else {
        a.threads.iter().map(|&t| if t == 0 { device.cores } else { t }).collect()
    };
    let mut tests = Vec::new();
    for &d in &a.depth {
        let pp = |p| SpeedTest { n_prompt: p, n_gen: 0, depth: d, sequences: 1 };
        tests.extend(a.n_prompt.iter().filter(|&&p| p > 0).map(|&p| pp(p)));
        for &n in a.n_gen.iter().filter(|&&n| n > 0) {
            tests.extend(a.parallel.iter().map(|&s| SpeedTest {
                n_prompt: 0,
                n_gen: n,
                depth: d,
                sequences: s.max(1),
            }));
        }
    }
    let quality_text = match &a.quality {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?),
        None => None,
    };
    let mut rows = Vec::new();
    let mut rooflines: BTreeMap<usize, f64> = BTreeMap::new();
    for model in &a.models {
        let path = catalog::resolve(model, true)?;
        let mut quality = None;
        for &threads in &thread_counts {
            // Measured once per thread count, before any model runs at it.
            let roofline = a.bandwidth.then(|| *rooflines.entry(threads).or_insert_with(|| read_bandwidth(threads)));
            reset_peak();
            let (load_ms, mut rt) = speed::load_to_first_token(&path, threads, on, layout)?;
            rt.model.cache_types = cache;
            let mut peak_anon = memory_status().map_or(0, |m| m.rss_anon);
            let desc = describe(&rt);
            if let (Some(text), None) = (&quality_text, &quality) {
                eprint!("pupil bench: {} quality ...", desc.file);
                let r = crate::bench::perplexity(&rt, text, 512, a.quality_chunks, |_, _, _| {})?;
                eprintln!(" PPL {:.4}, {:.4} bits/byte", r.ppl, r.bits_per_byte);
                quality = Some(r);
            }
            for &test in &tests {
                eprint!("pupil bench: {} {} t={threads} ...", desc.file, test.name());
                let _ = std::io::stderr().flush();
                let r = speed::run(&rt, test, a.repetitions, 42)?;
                eprintln!(" {:.2} ± {:.2} t/s", r.mean_tps(), r.stddev_tps());
                let mem = memory_status();
                peak_anon = peak_anon.max(mem.map_or(0, |m| m.rss_anon));
                // Step i of a tg test attends to depth + i + 1 positions: the mean context.
                // One sequence's bytes per token (several share their weights' reads).
                let decode_bytes = (test.n_gen > 0 && test.sequences == 1)
                    .then(|| rt.model.decode_bytes(test.depth + test.n_gen.div_ceil(2)));
                let read_gbps = decode_bytes.map(|b| b as f64 * r.mean_tps() / 1e9);
                let on_cpu = rt.model.device().is_cpu();
                // A shared machine's bandwidth drifts by more than a tg row's margin between
                // runs (23–35 GB/s minutes apart on the development VM): a row is compared
                // with the higher of the rate before any model ran and the rate right after it.
                let roofline_gbps =
                    roofline.filter(|_| on_cpu && test.n_gen > 0).map(|before| before.max(read_bandwidth(threads)));
                rows.push(Row {
                    schema: crate::bench::report::SCHEMA,
                    model: desc.file.clone(),
                    model_type: desc.model_type.clone(),
                    size_bytes: desc.size,
                    n_params: desc.params,
                    quant_mix: desc.quant_mix.clone(),
                    backend: rt.model.device().backend(),
                    gpu: rt.model.gpu_name().map(str::to_string),
                    threads,
                    test: test.name(),
                    n_prompt: test.n_prompt,
                    n_gen: test.n_gen,
                    n_depth: test.depth,
                    n_seq: test.sequences,
                    repetitions: a.repetitions,
                    avg_ts: r.mean_tps(),
                    stddev_ts: r.stddev_tps(),
                    median_ts: r.median_tps(),
                    samples_ns: r.samples_ns.clone(),
                    load_to_first_token_ms: load_ms,
                    peak_rss_bytes: mem.map_or(0, |m| m.rss_peak),
                    peak_anon_bytes: peak_anon,
                    ppl: quality.as_ref().map(|q| q.ppl),
                    bits_per_byte: quality.as_ref().map(|q| q.bits_per_byte),
                    decode_bytes_per_token: decode_bytes,
                    read_gbps,
                    roofline_gbps,
                    roofline_pct: read_gbps.zip(roofline_gbps).map(|(got, peak)| 100.0 * got / peak),
                    device: device.clone(),
                });
            }
        }
    }
    print_rows(&rows, a.output, &device)
}

/// The machine's read bandwidth with `threads` threads, in GB/s, reported as it is measured.
fn read_bandwidth(threads: usize) -> f64 {
    eprint!("pupil bench: memory read bandwidth t={threads} ...");
    let bw = crate::bench::bandwidth::read_bandwidth(threads, 20) / 1e9;
    eprintln!(" {bw:.2} GB/s");
    bw
}

struct Description {
    file: String,
    model_type: String,
    size: u64,
    params: u64,
    quant_mix: String,
}

fn describe(rt: &crate::generate::Runtime) -> Description {
    let f = &rt.file;
    let mut mix: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut size, mut params) = (0u64, 0u64);
    for t in f.tensors() {
        size += t.data.len() as u64;
        params += t.n_elements();
        if t.dims.len() > 1 {
            *mix.entry(t.dtype.name()).or_default() += t.data.len() as u64;
        }
    }
    let mut mix: Vec<(&str, u64)> = mix.into_iter().collect();
    mix.sort_by_key(|m| std::cmp::Reverse(m.1));
    let quant_mix = mix
        .iter()
        .map(|(t, b)| format!("{t} {:.0}%", 100.0 * *b as f64 / size.max(1) as f64))
        .collect::<Vec<_>>()
        .join(" + ");
    let main_type = mix.first().map_or("?", |m| m.0);
    Description {
        file: f.path().file_name().map_or_else(|| f.path().display().to_string(), |n| n.to_string_lossy().into_owned()),
        // Random-weight files (`pupil synth`) say so wherever their figures are shown.
        model_type: format!(
            "{} {:.0}M {main_type}{}",
            rt.model.cfg.architecture,
            params as f64 / 1e6,
            if rt.file.get_bool("general.synthetic").ok().flatten() == Some(true) { " (synthetic)" } else { "" }
        ),
        size,
        params,
        quant_mix,
    }
}

fn print_rows(rows: &[Row], format: Format, device: &DeviceInfo) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(rows)?)?,
        Format::Jsonl => {
            for r in rows {
                writeln!(out, "{}", serde_json::to_string(r)?)?;
            }
        }
        Format::Csv => {
            writeln!(out, "model,model_type,size_bytes,n_params,quant_mix,backend,threads,test,n_prompt,n_gen,n_depth,avg_ts,stddev_ts,median_ts,load_to_first_token_ms,peak_rss_bytes,peak_anon_bytes,ppl,bits_per_byte,cpu")?;
            for r in rows {
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{},{},{:.3},{:.3},{:.3},{:.1},{},{},{},{},\"{}\"",
                    r.model,
                    r.model_type,
                    r.size_bytes,
                    r.n_params,
                    r.quant_mix,
                    r.backend,
                    r.threads,
                    r.test,
                    r.n_prompt,
                    r.n_gen,
                    r.n_depth,
                    r.avg_ts,
                    r.stddev_ts,
                    r.median_ts,
                    r.load_to_first_token_ms,
                    r.peak_rss_bytes,
                    r.peak_anon_bytes,
                    r.ppl.map_or(String::new(), |v| format!("{v:.4}")),
                    r.bits_per_byte.map_or(String::new(), |v| format!("{v:.4}")),
                    device.cpu
                )?;
            }
        }
        Format::Md => {
            let quality = rows.iter().any(|r| r.ppl.is_some());
            let (qh, qs) = if quality { (" bits/byte | PPL |", " ---: | ---: |") } else { ("", "") };
            let roofline = rows.iter().any(|r| r.roofline_pct.is_some());
            let (bh, bs) = if roofline { (" % of roofline |", " ---: |") } else { ("", "") };
            writeln!(out, "| model | size | params | quant mix | backend | threads | test | t/s | read | load→1st token | peak RSS | peak anon |{bh}{qh}")?;
            writeln!(
                out,
                "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |{bs}{qs}"
            )?;
            for r in rows {
                let q = match (quality, r.bits_per_byte, r.ppl) {
                    (true, Some(b), Some(p)) => format!(" {b:.4} | {p:.4} |"),
                    (true, _, _) => " — | — |".to_string(),
                    _ => String::new(),
                };
                let read = match (r.decode_bytes_per_token, r.read_gbps) {
                    (Some(b), Some(g)) => format!("{:.1} MB/token, {g:.1} GB/s", b as f64 / 1e6),
                    _ => "—".to_string(),
                };
                let b = match (roofline, r.roofline_pct, r.roofline_gbps) {
                    (true, Some(p), Some(peak)) => format!(" {p:.0} % of {peak:.1} GB/s |"),
                    (true, _, _) => " — |".to_string(),
                    _ => String::new(),
                };
                writeln!(
                    out,
                    "| {} | {:.2} MiB | {:.2} M | {} | {} | {} | {} | {:.2} ± {:.2} | {read} | {:.0} ms | {:.1} MiB | {:.1} MiB |{b}{q}",
                    r.model_type,
                    mib(r.size_bytes),
                    r.n_params as f64 / 1e6,
                    r.quant_mix,
                    r.backend,
                    r.threads,
                    r.test,
                    r.avg_ts,
                    r.stddev_ts,
                    r.load_to_first_token_ms,
                    mib(r.peak_rss_bytes),
                    mib(r.peak_anon_bytes)
                )?;
            }
            writeln!(out)?;
            writeln!(
                out,
                "device: {} ({} {}, {} cores; SIMD {}; kernels {}); pupil {}",
                device.cpu,
                device.arch,
                device.os,
                device.cores,
                device.simd.join(" "),
                device.kernels,
                device.pupil_version
            )?;
        }
    }
    Ok(())
}
