//! Training checkpoints: adapter parameters, AdamW moments and the position in the data,
//! with the options that produced them, so `--resume` continues exactly where a killed
//! run stopped.
//!
//! Layout: magic `PUPILCKP`, version u32, JSON length u32, JSON state, parameter count
//! u64, then params, first and second moments (f32 each), and a CRC-32 of everything
//! before it. Written to a temporary file, synced and renamed: a kill while writing leaves
//! the previous checkpoint intact, and a damaged file fails its checksum.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::optim::AdamW;
use super::TrainError;

const MAGIC: &[u8; 8] = b"PUPILCKP";
const VERSION: u32 = 1;

/// One point of the learning curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub step: usize,
    /// Mean training objective over the step's positions (none before the first step).
    pub loss: Option<f64>,
    /// Held-out mean KL and top-1 agreement, at evaluation steps.
    pub eval_kl: Option<f64>,
    pub eval_top1: Option<f64>,
}

/// Everything but the big arrays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// The run's options and inputs (checked on resume).
    pub job: serde_json::Value,
    /// Optimizer steps completed.
    pub step: usize,
    pub curve: Vec<CurvePoint>,
    /// Wall seconds spent training so far.
    pub train_seconds: f64,
    /// Tokens run through forward and backward so far.
    pub tokens: u64,
}

pub struct Checkpoint {
    pub state: CheckpointState,
    pub params: Vec<f32>,
    pub optim: AdamW,
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let json = serde_json::to_vec(&self.state).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let n = self.params.len();
        let mut out = Vec::with_capacity(32 + json.len() + 12 * n);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&(n as u64).to_le_bytes());
        out.extend_from_slice(&self.optim.t.to_le_bytes());
        for arr in [&self.params, &self.optim.m, &self.optim.v] {
            out.extend(arr.iter().flat_map(|v| v.to_le_bytes()));
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        crate::fsutil::write_atomic(path, &out)
            .map_err(|e| TrainError::Invalid(format!("writing checkpoint {}: {e}", path.display())))
    }

    /// Reads and checks a checkpoint (magic, version, lengths, checksum).
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let bad = |what: &str| TrainError::Invalid(format!("checkpoint {}: {what}", path.display()));
        let b = std::fs::read(path).map_err(|e| bad(&e.to_string()))?;
        if b.len() < 20 + 16 + 4 || &b[..8] != MAGIC {
            return Err(bad("not a pupil checkpoint"));
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(bad("checksum mismatch (damaged or truncated)"));
        }
        let u32_at = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().expect("4 bytes"));
        if u32_at(8) != VERSION {
            return Err(bad(&format!("version {} is not supported", u32_at(8))));
        }
        let json_len = u32_at(12) as usize;
        let arrays = 16usize.checked_add(json_len).and_then(|x| x.checked_add(16)).ok_or_else(|| bad("bad length"))?;
        if arrays > body.len() {
            return Err(bad("truncated header"));
        }
        let state: CheckpointState =
            serde_json::from_slice(&body[16..16 + json_len]).map_err(|e| bad(&format!("state: {e}")))?;
        let n = u64::from_le_bytes(body[16 + json_len..24 + json_len].try_into().expect("8 bytes")) as usize;
        let t = u64::from_le_bytes(body[24 + json_len..32 + json_len].try_into().expect("8 bytes"));
        if n.checked_mul(12).and_then(|x| x.checked_add(arrays)) != Some(body.len()) {
            return Err(bad("array lengths do not match the file size"));
        }
        let floats = |k: usize| -> Vec<f32> {
            body[arrays + 4 * n * k..arrays + 4 * n * (k + 1)]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        };
        Ok(Self { state, params: floats(0), optim: AdamW { m: floats(1), v: floats(2), t } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = std::env::temp_dir().join(format!("pupil-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.ckpt");
        let ck = Checkpoint {
            state: CheckpointState {
                job: serde_json::json!({"rank": 4}),
                step: 7,
                curve: vec![CurvePoint { step: 1, loss: Some(0.5), eval_kl: Some(0.1), eval_top1: None }],
                train_seconds: 1.5,
                tokens: 99,
            },
            params: vec![1.0, -2.0, 3.5],
            optim: AdamW { m: vec![0.1, 0.2, 0.3], v: vec![1e-3, 2e-3, 3e-3], t: 7 },
        };
        ck.save(&path).unwrap();
        let back = Checkpoint::load(&path).unwrap();
        assert_eq!((back.state, back.params, back.optim), (ck.state.clone(), ck.params.clone(), ck.optim.clone()));
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 4;
        std::fs::write(&path, &bytes).unwrap();
        assert!(Checkpoint::load(&path).err().unwrap().to_string().contains("checksum"));
        std::fs::write(&path, &bytes[..bytes.len() - 9]).unwrap();
        assert!(Checkpoint::load(&path).is_err());
        std::fs::write(&path, b"PUPILCKP").unwrap();
        assert!(Checkpoint::load(&path).is_err());
    }
}
