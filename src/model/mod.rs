//! Model architectures owned by pupil, built from a validated GGUF file.
//!
//! The forward pass reads weights straight from the memory map (`kernels::QMatrix`) and
//! keeps activations in f32. It returns hidden states for every position of a batch so
//! that generation (last position), perplexity and distillation (all positions) share it.

pub mod config;
pub mod decoder;
pub mod device;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod kv_cache;
pub mod lora;

pub use config::{Config, Family, RopeScaling};
pub use decoder::Model;

/// Rows of logits a caller that needs many (perplexity, teacher targets) computes at
/// once: bounds the transient rows × n_vocab f32 buffer (6 MiB for a 49k vocabulary,
/// 32 MiB for Gemma's 262k).
pub const LOGIT_ROWS: usize = 32;
pub use device::{Device, DeviceError, DeviceRequest};
pub use kv_cache::KvCache;
pub use lora::{Adapter, LoraPair, Target};

use crate::gguf::{GgmlDType, GgufError};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported architecture {0:?} (pupil runs: llama, gemma3)")]
    UnsupportedArchitecture(String),
    #[error("tensor {tensor:?} has type {dtype}, which pupil cannot compute with yet")]
    UnsupportedDType { tensor: String, dtype: GgmlDType },
    #[error("tensor {tensor:?} has shape {found:?}, expected {expected:?}")]
    BadTensorShape { tensor: String, expected: Vec<u64>, found: Vec<u64> },
    #[error("invalid model hyperparameters: {0}")]
    BadConfig(String),
    #[error("unsupported rope scaling type {0:?} (pupil supports none, linear, and llama3 frequency factors)")]
    UnsupportedRopeScaling(String),
    #[error("token id {id} is outside the vocabulary ({n_vocab} tokens)")]
    TokenOutOfRange { id: u32, n_vocab: usize },
    #[error("cannot reserve the KV cache: {0}")]
    KvCache(std::io::Error),
    #[error("adapter {path}: {what}")]
    BadAdapter { path: String, what: String },
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("context is full: {needed} positions needed, the context holds {n_ctx} (raise --ctx-size)")]
    ContextFull { needed: usize, n_ctx: usize },
}
