//! Measuring models: quality (perplexity, bits per byte) today; speed and reports later.

pub mod memory;
pub mod quality;

pub use quality::{perplexity, PerplexityResult};
