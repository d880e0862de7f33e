//! GGUF container: a validated, memory-mapped reader and a small writer.
//!
//! This layer knows the file format only — header, metadata, tensor table and the byte
//! ranges of tensor data. It never interprets weights (that is `model/`) and never
//! copies tensor bytes: every tensor is a range into the map.

pub mod dtype;
pub mod file;
pub mod value;
pub mod writer;

pub use dtype::GgmlDType;
pub use file::{GgufError, GgufFile, TensorInfo};
pub use value::Value;
pub use writer::GgufWriter;

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the tensor data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
