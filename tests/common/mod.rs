//! Shared helpers for tests that run the real models.
#![allow(dead_code)]

use std::path::PathBuf;

use pupil::catalog::{self, Catalog};
use pupil::generate::Runtime;
use pupil::model::{Device, DeviceRequest};

/// The path of catalog model `name`, pulled (and verified) on first use.
///
/// Without network access a test that needs a real model cannot run: it is skipped with a
/// message, unless `PUPIL_REQUIRE_MODELS=1` (as in CI), where it fails.
pub fn model(name: &str) -> Option<PathBuf> {
    let catalog = Catalog::builtin();
    let entry = catalog.find(name).unwrap_or_else(|| panic!("{name} is not in the catalog"));
    match catalog::ensure(entry, false) {
        Ok(path) => Some(path),
        Err(e) if std::env::var("PUPIL_REQUIRE_MODELS").as_deref() == Ok("1") => {
            panic!("model {name} is required (PUPIL_REQUIRE_MODELS=1) but could not be pulled: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: model {name} unavailable ({e}); set PUPIL_REQUIRE_MODELS=1 to make this a failure");
            None
        }
    }
}

/// The repository: `PUPIL_REPO` when a test binary runs away from its build tree (as
/// `scripts/gpu-check.sh` does on a GPU machine), else the crate's directory.
pub fn repo_path(rel: &str) -> PathBuf {
    std::env::var_os("PUPIL_REPO").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from).join(rel)
}

pub fn fixture_path(model_dir: &str, file: &str) -> PathBuf {
    repo_path("tests/fixtures").join(model_dir).join(file)
}

/// The device the reference tests run the model on: `PUPIL_DEVICE` (`cpu`, `cuda`, ...),
/// the CPU when unset, so the same llama.cpp checks run on a GPU build.
pub fn device() -> Device {
    match std::env::var("PUPIL_DEVICE") {
        Ok(s) => s
            .parse::<DeviceRequest>()
            .and_then(DeviceRequest::resolve)
            .unwrap_or_else(|e| panic!("PUPIL_DEVICE={s}: {e}")),
        Err(_) => Device::Cpu,
    }
}

/// Lines of a JSON-lines fixture.
pub fn fixture_lines(model_dir: &str, file: &str) -> Vec<serde_json::Value> {
    let path = fixture_path(model_dir, file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fixture line is JSON"))
        .collect()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("array of ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

pub const SMOLLM2: &str = "smollm2-135m-instruct";
pub const SMOLLM2_FIXTURES: &str = "smollm2-135m-instruct-q4_1";
pub const GEMMA3: &str = "gemma3-270m";
pub const GEMMA3_FIXTURES: &str = "gemma3-270m-q4_k_m";
pub const QWEN25: &str = "qwen2.5-coder-0.5b";
pub const QWEN25_FIXTURES: &str = "qwen2.5-coder-0.5b-q4_k_m";

/// An adapter of `rank` on every projection of every layer with every value (A and B)
/// drawn uniformly from ±`spread` / 2 by `seed`: B is nonzero, so it changes the output,
/// and the same seed writes the same file on every machine (fixtures made with llama.cpp
/// from it stay valid).
pub fn random_adapter(
    cfg: &pupil::model::Config,
    rank: usize,
    alpha: f32,
    seed: u64,
    spread: f32,
) -> pupil::model::Adapter {
    let mut adapter = pupil::model::Adapter::init(cfg, rank, alpha, &pupil::model::Target::ALL, seed);
    let mut rng = pupil::rng::Rng::new(seed + 10);
    adapter.values.iter_mut().for_each(|v| *v = (rng.next_f64() as f32 - 0.5) * spread);
    adapter
}

/// A fresh, empty temporary directory for one test (named by process and `name`).
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pupil-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the `pupil` binary; returns (success, stdout, stderr) and fails on any panic.
pub fn pupil_cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pupil")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

/// A teacher-target header for a student with `fingerprint` and `n_vocab` tokens.
pub fn targets_header(
    fingerprint: &[u8; 32],
    n_vocab: usize,
    encoding: pupil::targets::Encoding,
) -> pupil::targets::Header {
    use pupil::targets::*;
    Header {
        teacher: TeacherInfo { name: "test".into(), sha256: None, architecture: None },
        tokenizer: TokenizerInfo { fingerprint: pupil::fsutil::hex(fingerprint), n_vocab: n_vocab as u32 },
        encoding,
        temperature: 1.0,
        source: SourceInfo {
            kind: "test".into(),
            path: String::new(),
            sha256: String::new(),
            params: Default::default(),
        },
        created: String::new(),
        pupil_version: String::new(),
    }
}

/// Logits of every position of `ids`, run in one batch from an empty cache.
pub fn all_logits(rt: &Runtime, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = rt.model.new_cache(ids.len()).unwrap();
    let hidden = rt.pool.install(|| rt.model.forward(ids, &mut cache)).unwrap();
    let logits = rt.pool.install(|| rt.model.logits(hidden)).unwrap();
    logits.chunks_exact(rt.model.cfg.n_vocab).map(<[f32]>::to_vec).collect()
}

/// One position of a llama.cpp logits fixture (`{logsumexp, top_ids, top_logits}`) against
/// a row of our logits.
pub struct PositionCheck {
    /// KL(reference ‖ ours) over the reference's top 20 plus one bucket for the rest.
    pub kl: f64,
    /// The largest |Δ logit| over the reference's top 20.
    pub max_dlogit: f64,
    pub top_ids: Vec<u32>,
    pub top_logits: Vec<f64>,
}

pub fn compare_position(reference: &serde_json::Value, ours: &[f32]) -> PositionCheck {
    let ref_lse = reference["logsumexp"].as_f64().unwrap();
    let top_ids = ids(&reference["top_ids"]);
    let top_logits: Vec<f64> =
        reference["top_logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let our_lse = pupil::generate::sampler::log_sum_exp(ours, 1.0);
    let (mut kl, mut p_top, mut q_top, mut max_dlogit) = (0.0, 0.0, 0.0, 0f64);
    for (&id, &ref_logit) in top_ids.iter().zip(&top_logits) {
        let (lp, lq) = (ref_logit - ref_lse, ours[id as usize] as f64 - our_lse);
        kl += lp.exp() * (lp - lq);
        p_top += lp.exp();
        q_top += lq.exp();
        max_dlogit = max_dlogit.max((ours[id as usize] as f64 - ref_logit).abs());
    }
    let (p_rest, q_rest) = ((1.0 - p_top).max(1e-12), (1.0 - q_top).max(1e-12));
    kl += p_rest * (p_rest / q_rest).ln();
    PositionCheck { kl, max_dlogit, top_ids, top_logits }
}
