//! Teacher targets: the teacher's sparse next-token distributions, cached in a compact,
//! checksummed, resumable file (`targets/FORMAT.md`) so a student can distil from them
//! later without the teacher.
//!
//! [`format`] is the byte layout, [`reader`] and [`writer`] the file, [`make`] runs a
//! teacher GGUF to produce targets and [`import`] converts serving engines' logprob dumps.

pub mod format;
pub mod import;
pub mod make;
pub mod reader;
pub mod writer;

pub use format::{
    Dist, Encoding, Header, Layout, SequenceRecord, SourceInfo, TargetsError, TeacherInfo, TokenizerInfo, FLAG_TARGET,
    FLAG_TRAIN,
};
pub use reader::{TargetFile, Totals};
pub use writer::{partial_path, ChunkPolicy, Opened, TargetWriter};

use serde::Serialize;

/// What `pupil targets inspect` reports beyond the header.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub totals: Totals,
    pub chunks: usize,
    pub file_bytes: usize,
    /// Bytes of one stored distribution.
    pub entry_bytes: usize,
    /// Whole file ÷ target positions: tokens, flags, framing and header included.
    pub bytes_per_target: f64,
    /// Positions whose loss applies.
    pub trained_positions: u64,
    /// Mean teacher entropy in nats: exact over the stored ids plus the rest bucket for
    /// top-k (a lower bound), the unbiased estimate −mean(log p of the draws) for samples.
    pub mean_entropy: f64,
    /// Mean teacher probability held by the stored ids.
    pub mean_covered_mass: f64,
}

/// Decodes every record (so every id is checked) and summarizes the file.
pub fn stats(file: &TargetFile) -> Result<Stats, TargetsError> {
    let (mut entropy, mut covered, mut trained) = (0f64, 0f64, 0u64);
    for i in 0..file.len() {
        let rec = file.sequence(i)?;
        trained += rec.flags.iter().filter(|&&f| f & FLAG_TRAIN != 0).count() as u64;
        for d in &rec.targets {
            covered += d.covered_mass();
            entropy += match d {
                Dist::TopK { logprobs, rest_logprob, .. } => logprobs
                    .iter()
                    .chain(std::iter::once(rest_logprob))
                    .filter(|l| l.is_finite())
                    .map(|&l| -(l as f64).exp() * l as f64)
                    .sum::<f64>(),
                Dist::Sampled { counts, logprobs, .. } => {
                    let n: u32 = counts.iter().sum();
                    counts.iter().zip(logprobs).map(|(&c, &l)| -(c as f64) * l as f64).sum::<f64>() / n as f64
                }
            };
        }
    }
    let totals = file.totals();
    let n = totals.targets.max(1) as f64;
    Ok(Stats {
        totals,
        chunks: file.chunks(),
        file_bytes: file.file_bytes(),
        entry_bytes: file.layout().entry_bytes,
        bytes_per_target: file.file_bytes() as f64 / n,
        trained_positions: trained,
        mean_entropy: entropy / n,
        mean_covered_mass: covered / n,
    })
}
