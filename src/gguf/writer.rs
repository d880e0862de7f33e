//! A GGUF writer: metadata plus already-encoded tensor bytes, written atomically.
//!
//! Used for synthetic test models today and for adapters and merged models later. It
//! writes version 3 with the default alignment.

use std::io;
use std::path::Path;

use super::dtype::GgmlDType;
use super::value::Value;
use super::{DEFAULT_ALIGNMENT, MAGIC};

/// Collects metadata and tensors, then serialises them in one go.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlDType, Vec<u8>)>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        self.metadata.push((key.into(), value));
        self
    }

    /// Adds a tensor whose `bytes` are already in `dtype`'s block encoding. `dims` are in
    /// GGML order (`dims[0]` contiguous).
    pub fn add_tensor(&mut self, name: impl Into<String>, dims: &[u64], dtype: GgmlDType, bytes: Vec<u8>) -> &mut Self {
        self.tensors.push((name.into(), dims.to_vec(), dtype, bytes));
        self
    }

    /// Drops the tensor `name`, if present: files with a part missing, for the tests of
    /// loaders.
    pub fn remove_tensor(&mut self, name: &str) -> bool {
        let before = self.tensors.len();
        self.tensors.retain(|t| t.0 != name);
        self.tensors.len() < before
    }

    /// Adds an f32 tensor.
    pub fn add_f32(&mut self, name: impl Into<String>, dims: &[u64], values: &[f32]) -> &mut Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, dims, GgmlDType::F32, bytes)
    }

    /// Serialises the file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            write_value(&mut out, value);
        }
        let align = DEFAULT_ALIGNMENT as usize;
        let mut offset = 0usize;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for (name, dims, dtype, bytes) in &self.tensors {
            write_string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&(*dtype as u32).to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + bytes.len()).div_ceil(align) * align;
        }
        let data_start = out.len().div_ceil(align) * align;
        out.resize(data_start, 0);
        for ((_, _, _, bytes), off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off, 0);
            out.extend_from_slice(bytes);
        }
        out
    }

    /// Writes to `path` through a temporary file and a rename, so a crash never leaves a
    /// half-written file under the final name.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        crate::fsutil::write_atomic(path, &self.to_bytes())
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.push(*v as u8),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(*v as u8),
        Value::String(s) => write_string(out, s),
        Value::Array(a) => {
            out.extend_from_slice(&a.item_type().to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for item in a.iter() {
                write_value(out, &item);
            }
        }
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}
