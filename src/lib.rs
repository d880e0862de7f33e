//! pupil: a lean runtime for small quantized GGUF "student" language models.
//!
//! Layers, lowest first (each imports only the ones below it):
//! `gguf` (file format) → `kernels` (quantized math) → `model` (architectures) →
//! `tokenizer` → `generate` (sampling, sessions) → `targets` (teacher soft targets) →
//! `train` (distillation into LoRA adapters) → `bench` (quality and speed) → `serve` (the
//! OpenAI-compatible HTTP server) → `cli`.
//! `catalog` fetches and verifies the models everything else runs; `synth` writes tiny
//! synthetic models for tests; `rng`, `fsutil`, `svg` and `threads` are shared utilities.

pub mod bench;
pub mod catalog;
pub mod cli;
pub mod fsutil;
pub mod generate;
pub mod gguf;
pub mod kernels;
pub mod model;
pub mod rng;
#[cfg(feature = "serve")]
pub mod serve;
pub mod svg;
pub mod synth;
pub mod targets;
pub mod threads;
pub mod tokenizer;
pub mod train;
