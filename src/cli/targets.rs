//! `targets make | import | inspect | verify`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::fsutil::{hex, sha256_file};
use crate::generate::{Runtime, SamplerConfig};
use crate::targets::import::{import_line, Engine, TokenMap};
use crate::targets::make::{make_record, DistBuilder, MakeOptions, Source};
use crate::targets::{
    stats, ChunkPolicy, Encoding, Header, Opened, SourceInfo, TargetFile, TargetWriter, TeacherInfo, TokenizerInfo,
    Totals,
};

#[derive(Subcommand, Debug)]
pub enum TargetsCommand {
    /// Run a teacher GGUF over a text corpus or chat prompts and store its distributions.
    Make(MakeArgs),
    /// Convert logprob dumps from vLLM, llama-server or an OpenAI-style API.
    Import(ImportArgs),
    /// Show a target file's header and statistics (verifies it on the way).
    Inspect(InspectArgs),
    /// Check every checksum and record; exit status 1 on damage.
    Verify(InspectArgs),
}

#[derive(Args, Debug)]
pub struct MakeArgs {
    /// Teacher GGUF file or catalog name.
    #[arg(long)]
    pub teacher: String,
    /// Plain-text corpus: windows of --ctx tokens, a target at every position.
    #[arg(long, conflicts_with = "prompts", required_unless_present = "prompts")]
    pub text: Option<PathBuf>,
    /// JSONL of `{"messages": [...]}`: targets over the assistant reply.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Output file (an unfinished run lives in OUT.partial and resumes on re-run).
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Store the k most likely tokens per position (the default encoding, k = 16).
    #[arg(long, conflicts_with = "samples")]
    pub k: Option<u32>,
    /// Store this many draws from the teacher distribution per position instead (unbiased).
    #[arg(long)]
    pub samples: Option<u32>,
    /// Temperature of the stored distributions.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Window size for --text, context limit for --prompts.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// A system prompt only the teacher sees (context distillation).
    #[arg(long)]
    pub teacher_system: Option<String>,
    /// Let the teacher write replies of at most N tokens (sampled, seeded per prompt).
    #[arg(long)]
    pub generate: Option<usize>,
    /// Sampling of those replies (llama.cpp's defaults; 0 turns top-k / min-p off).
    #[arg(long, default_value_t = 0.8)]
    pub gen_temperature: f32,
    #[arg(long, default_value_t = 40)]
    pub gen_top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub gen_top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub gen_min_p: f32,
    /// With --prompts: use only lines whose "split" is this.
    #[arg(long, requires = "prompts")]
    pub split: Option<String>,
    /// Seed of sampled targets and generated replies.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Close a chunk (a resume point) after this many sequences (default: every 10 s or 4 MiB).
    #[arg(long)]
    pub chunk_sequences: Option<usize>,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Which engine wrote the dump.
    #[arg(long = "from", value_enum)]
    pub engine: Engine,
    /// JSONL dump: one request/response per line.
    pub file: PathBuf,
    /// The student whose vocabulary maps the dump's tokens to ids.
    #[arg(long)]
    pub tokenizer_model: String,
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Teacher name recorded in the header.
    #[arg(long)]
    pub teacher_name: Option<String>,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    pub file: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also print the first N target positions of the first sequence: input token and the
    /// stored teacher distribution.
    #[arg(long, default_value_t = 0)]
    pub show: usize,
    /// Decode token ids with this model's vocabulary (it must match the file's).
    #[arg(short = 'm', long = "model")]
    pub model: Option<String>,
}

pub fn run(cmd: TargetsCommand, exec: super::Exec) -> anyhow::Result<()> {
    match cmd {
        TargetsCommand::Make(a) => make(a, exec),
        TargetsCommand::Import(a) => import(a),
        TargetsCommand::Inspect(a) => inspect(a, true),
        TargetsCommand::Verify(a) => inspect(a, false),
    }
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    crate::tokenizer::template::format_time(secs, "%Y-%m-%dT%H:%M:%SZ")
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

fn header(rt: &Runtime, teacher: TeacherInfo, encoding: Encoding, temperature: f32, source: SourceInfo) -> Header {
    Header {
        teacher,
        tokenizer: TokenizerInfo {
            fingerprint: hex(rt.tokenizer.fingerprint()),
            n_vocab: rt.tokenizer.n_vocab() as u32,
        },
        encoding,
        temperature,
        source,
        created: now_rfc3339(),
        pupil_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} sequences, {msg} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar
}

/// The summary line after a file is complete (from the totals and the file's size: no
/// second pass over what was just written and checked).
fn report_done(out: &Path, totals: Totals, entry_bytes: usize) -> anyhow::Result<()> {
    let size = std::fs::metadata(out).with_context(|| format!("reading {}", out.display()))?.len();
    println!(
        "{}: {} sequences, {} tokens, {} target positions, {:.1} bytes/position ({} per distribution)",
        out.display(),
        totals.sequences,
        totals.tokens,
        totals.targets,
        size as f64 / totals.targets.max(1) as f64,
        entry_bytes,
    );
    Ok(())
}

pub fn make(a: MakeArgs, exec: super::Exec) -> anyhow::Result<()> {
    anyhow::ensure!(a.temperature > 0.0 && a.temperature.is_finite(), "--temperature must be > 0");
    let encoding = match (a.k, a.samples) {
        (_, Some(s)) => Encoding::Sampled { samples: s },
        (k, None) => Encoding::TopK { k: k.unwrap_or(16) },
    };
    anyhow::ensure!(encoding.slots() >= 1, "--k / --samples must be at least 1");
    anyhow::ensure!(a.gen_temperature >= 0.0 && a.gen_temperature.is_finite(), "--gen-temperature must be ≥ 0");
    anyhow::ensure!((0.0..=1.0).contains(&a.gen_top_p), "--gen-top-p must be in [0, 1]");
    anyhow::ensure!((0.0..=1.0).contains(&a.gen_min_p), "--gen-min-p must be in [0, 1]");
    let (input, kind) = match (&a.text, &a.prompts) {
        (Some(t), _) => (t, "text"),
        (None, Some(p)) => (p, "prompts"),
        (None, None) => unreachable!("clap requires one"),
    };
    let text = std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let (input_sha, _) = sha256_file(input).with_context(|| format!("hashing {}", input.display()))?;

    let rt = exec.load(&a.teacher)?;
    let (teacher_sha, _) = sha256_file(rt.file.path()).context("hashing the teacher")?;
    let opts = MakeOptions {
        encoding,
        temperature: a.temperature,
        ctx: a.ctx,
        seed: a.seed,
        teacher_system: a.teacher_system.clone(),
        generate: a.generate,
        sampler: SamplerConfig {
            temperature: a.gen_temperature,
            top_k: a.gen_top_k,
            top_p: a.gen_top_p,
            min_p: a.gen_min_p,
            ..SamplerConfig::default()
        },
    };
    let mut params = serde_json::Map::new();
    params.insert("ctx".into(), a.ctx.into());
    params.insert("seed".into(), a.seed.into());
    params.insert("teacher_system".into(), a.teacher_system.clone().into());
    params.insert("generate".into(), a.generate.into());
    params.insert("split".into(), a.split.clone().into());
    if a.generate.is_some() {
        let sampling = format!(
            "temperature {} top-k {} top-p {} min-p {}",
            a.gen_temperature, a.gen_top_k, a.gen_top_p, a.gen_min_p
        );
        params.insert("sampling".into(), sampling.into());
    }
    let teacher = TeacherInfo {
        name: a.teacher.clone(),
        sha256: Some(teacher_sha),
        architecture: Some(rt.model.cfg.architecture.clone()),
    };
    let source = SourceInfo { kind: kind.into(), path: file_name(input), sha256: input_sha, params };
    let header = header(&rt, teacher, encoding, a.temperature, source);
    let entry_bytes = header.layout()?.entry_bytes;

    let policy =
        ChunkPolicy { max_sequences: a.chunk_sequences.unwrap_or(usize::MAX).max(1), ..ChunkPolicy::default() };
    let (mut writer, done) = match TargetWriter::open(&a.output, header, policy)? {
        Opened::Complete(totals) => {
            eprintln!("pupil: {} is already complete for these arguments", a.output.display());
            return report_done(&a.output, totals, entry_bytes);
        }
        Opened::Fresh(w) => (w, 0),
        Opened::Resumed { writer, done, dropped_bytes } => {
            eprintln!(
                "pupil: resuming {} after {done} complete sequences ({dropped_bytes} bytes of an unfinished chunk dropped)",
                crate::targets::partial_path(&a.output).display()
            );
            (writer, done as usize)
        }
    };
    let source = match kind {
        "text" => Source::text(&rt, &text, a.ctx)?,
        _ => Source::prompts(&text, a.split.as_deref())?,
    };
    let bar = progress_bar(source.len() as u64);
    bar.set_prefix("teacher");
    bar.set_position(done as u64);
    let start = Instant::now();
    let mut builder = DistBuilder::default();
    let mut positions = 0u64;
    for i in done..source.len() {
        let rec = make_record(&rt, &source, i, &opts, &mut builder)?;
        writer.push(&rec)?;
        positions += rec.targets.len() as u64;
        bar.set_message(format!("{:.0} positions/s", positions as f64 / start.elapsed().as_secs_f64()));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let totals = writer.finish()?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!("pupil: {positions} positions in {secs:.1} s ({:.1} positions/s)", positions as f64 / secs.max(1e-9));
    report_done(&a.output, totals, entry_bytes)
}

pub fn import(a: ImportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let (input_sha, _) = sha256_file(&a.file)?;
    let rt = Runtime::load(&a.tokenizer_model, 1, true)?;
    let map = TokenMap::new(&rt.tokenizer);
    let (mut imported, mut refused, mut first_refusal) = (Vec::new(), 0usize, None);
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match import_line(a.engine, line, &map, &rt.template) {
            Ok(x) => imported.push(x),
            Err(why) => {
                refused += 1;
                first_refusal.get_or_insert(format!("line {}: {why}", i + 1));
            }
        }
    }
    if refused > 0 {
        eprintln!("pupil: refused {refused} lines; first: {}", first_refusal.as_deref().unwrap_or(""));
    }
    anyhow::ensure!(!imported.is_empty(), "no line of {} could be imported", a.file.display());
    let k = imported.iter().map(|x| x.max_entries()).max().unwrap_or(1).max(1);
    let teacher = TeacherInfo {
        name: a.teacher_name.clone().unwrap_or_else(|| format!("{} dump", a.engine.name())),
        sha256: None,
        architecture: None,
    };
    let source = SourceInfo {
        kind: format!("import:{}", a.engine.name()),
        path: file_name(&a.file),
        sha256: input_sha,
        params: serde_json::Map::new(),
    };
    let header = header(&rt, teacher, Encoding::TopK { k: k as u32 }, 1.0, source);
    let entry_bytes = header.layout()?.entry_bytes;
    let mut writer = match TargetWriter::open(&a.output, header, ChunkPolicy::default())? {
        Opened::Complete(totals) => {
            eprintln!("pupil: {} is already complete for this dump", a.output.display());
            return report_done(&a.output, totals, entry_bytes);
        }
        Opened::Fresh(w) => w,
        Opened::Resumed { writer, done, .. } => {
            imported.drain(..(done as usize).min(imported.len()));
            writer
        }
    };
    for x in imported {
        writer.push(&x.into_record(k))?;
    }
    let totals = writer.finish()?;
    eprintln!("pupil: imported {} lines, refused {refused}", totals.sequences);
    report_done(&a.output, totals, entry_bytes)
}

pub fn inspect(a: InspectArgs, show: bool) -> anyhow::Result<()> {
    let file = TargetFile::open(&a.file)?;
    let s = stats(&file)?;
    if !show {
        println!(
            "{}: ok ({} chunks, {} sequences, {} target positions; checksums and records valid)",
            a.file.display(),
            s.chunks,
            s.totals.sequences,
            s.totals.targets
        );
        return Ok(());
    }
    let h = file.header();
    if a.json {
        println!("{}", serde_json::json!({ "header": h, "stats": s }));
        return Ok(());
    }
    println!("file          {} ({} bytes, {} chunks)", a.file.display(), s.file_bytes, s.chunks);
    println!(
        "teacher       {} ({}), sha256 {}",
        h.teacher.name,
        h.teacher.architecture.as_deref().unwrap_or("architecture unknown"),
        h.teacher.sha256.as_deref().unwrap_or("unknown")
    );
    println!("tokenizer     {} tokens, fingerprint {}", h.tokenizer.n_vocab, h.tokenizer.fingerprint);
    println!("encoding      {}, temperature {}", h.encoding.describe(), h.temperature);
    println!("source        {} {} (sha256 {})", h.source.kind, h.source.path, h.source.sha256);
    if !h.source.params.is_empty() {
        println!("parameters    {}", serde_json::Value::Object(h.source.params.clone()));
    }
    println!("created       {} by pupil {}", h.created, h.pupil_version);
    println!(
        "sequences     {} ({} tokens, {} target positions, {} trained)",
        s.totals.sequences, s.totals.tokens, s.totals.targets, s.trained_positions
    );
    println!("size          {:.1} bytes/position ({} bytes per distribution)", s.bytes_per_target, s.entry_bytes);
    println!(
        "teacher       mean entropy {:.3} nats, mean mass covered by stored ids {:.3}",
        s.mean_entropy, s.mean_covered_mass
    );
    if a.show > 0 && !file.is_empty() {
        show_positions(&file, a.show, a.model.as_deref())?;
    }
    Ok(())
}

/// Prints the first `n` target positions of sequence 0, decoded when a model is given.
fn show_positions(file: &TargetFile, n: usize, model: Option<&str>) -> anyhow::Result<()> {
    let rt = match model {
        Some(m) => {
            let rt = Runtime::load(m, 1, true)?;
            file.header().check_student(rt.tokenizer.fingerprint())?;
            Some(rt)
        }
        None => None,
    };
    let text = |id: u32| match &rt {
        Some(rt) => format!("{:?}", String::from_utf8_lossy(rt.tokenizer.token_bytes(id).unwrap_or_default())),
        None => format!("#{id}"),
    };
    let rec = file.sequence(0)?;
    let positions = rec.flags.iter().enumerate().filter(|(_, &f)| f & crate::targets::FLAG_TARGET != 0);
    for ((j, &flags), dist) in positions.zip(&rec.targets).take(n) {
        let counts = match dist {
            crate::targets::Dist::Sampled { counts, .. } => counts.iter().map(|c| format!(" ×{c}")).collect(),
            crate::targets::Dist::TopK { ids, .. } => vec![String::new(); ids.len()],
        };
        let top: Vec<String> = dist
            .ids()
            .iter()
            .zip(dist.logprobs())
            .zip(&counts)
            .take(5)
            .map(|((&id, &lp), c)| format!("{} {:.3}{c}", text(id), (lp as f64).exp()))
            .collect();
        let train = if flags & crate::targets::FLAG_TRAIN != 0 { "" } else { " (not trained)" };
        println!("  [{j}] after {}{train}: {}", text(rec.tokens[j]), top.join(", "));
    }
    Ok(())
}
