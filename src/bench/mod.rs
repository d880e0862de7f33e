//! Measuring models: speed (llama-bench's tests), quality (perplexity, bits per byte),
//! memory, and the device a measurement came from.

pub mod bandwidth;
pub mod device;
pub mod memory;
pub mod quality;
pub mod report;
pub mod speed;

pub use quality::{perplexity, PerplexityResult};
