//! The GGUF reader: map the file once, validate header, metadata and tensor table against
//! the file's size before anything is allocated or dereferenced, then hand out tensors as
//! byte ranges of the map.
//!
//! The file is treated as hostile: every count, length, offset and shape is checked, so a
//! corrupt or malicious file yields one [`GgufError`] naming the problem — never a panic
//! and never an allocation sized by an unchecked number.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::dtype::GgmlDType;
use super::value::{type_id, Array, Value};
use super::{DEFAULT_ALIGNMENT, MAGIC};

/// Most dimensions a GGML tensor may have.
pub const MAX_DIMS: usize = 4;
/// Arrays nested deeper than this are refused (GGUF writers never nest beyond one level).
const MAX_ARRAY_DEPTH: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("not a GGUF file: magic is {found:?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {0} (pupil reads versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("truncated GGUF file: {what} at byte {offset} runs past the end ({file_len} bytes)")]
    Truncated { what: String, offset: u64, file_len: u64 },
    #[error("corrupt or truncated GGUF file: {what} count {count} cannot fit in the {remaining} bytes left")]
    CountTooLarge { what: String, count: u64, remaining: u64 },
    #[error("corrupt GGUF file: {what} is not valid UTF-8")]
    InvalidUtf8 { what: String },
    #[error("corrupt GGUF file: metadata key {key:?} has unknown value type {type_id}")]
    UnknownValueType { key: String, type_id: u32 },
    #[error("corrupt GGUF file: metadata key {0:?} nests arrays too deeply")]
    NestedTooDeep(String),
    #[error("corrupt GGUF file: duplicate {what} {name:?}")]
    Duplicate { what: &'static str, name: String },
    #[error("tensor {tensor:?} has unknown GGML type id {type_id}")]
    UnknownDType { tensor: String, type_id: u32 },
    #[error("corrupt GGUF file: tensor {tensor:?} has {n_dims} dimensions (at most {MAX_DIMS})")]
    TooManyDims { tensor: String, n_dims: u32 },
    #[error("corrupt GGUF file: tensor {tensor:?} has shape {shape:?}: {why}")]
    BadShape { tensor: String, shape: Vec<u64>, why: &'static str },
    #[error("corrupt GGUF file: tensor {tensor:?} data [{start}, {end}) lies outside the file ({file_len} bytes)")]
    TensorOutOfBounds { tensor: String, start: u64, end: u64, file_len: u64 },
    #[error("corrupt GGUF file: tensor {tensor:?} offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned { tensor: String, offset: u64, alignment: u64 },
    #[error(
        "corrupt GGUF file: tensor {tensor:?} starts at data offset {offset} instead of {expected}, where {previous} \
         ends (each tensor must follow the one before it, padded to the alignment: a wrong type or shape, a gap or \
         an overlap)"
    )]
    Layout { tensor: String, offset: u64, expected: u64, previous: String },
    #[error("corrupt GGUF file: general.alignment {0} must be a power of two")]
    BadAlignment(u64),
    #[error("missing metadata key {0:?}")]
    MissingKey(String),
    #[error("metadata key {key:?} should be {expected}, found {found}")]
    WrongType { key: String, expected: &'static str, found: String },
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
}

/// Where one tensor lives and what it holds. `dims` are in GGML order: `dims[0]` is the
/// contiguous (row) dimension.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub dtype: GgmlDType,
    /// Absolute byte range in the file.
    pub data: Range<usize>,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A validated GGUF file over a read-only memory map.
pub struct GgufFile {
    path: PathBuf,
    map: Arc<Mmap>,
    version: u32,
    metadata: Vec<(String, Value)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
}

impl GgufFile {
    /// Map and validate `path`. Touches only the header pages; tensor bytes stay on disk
    /// until a kernel reads them.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let open_err = |source| GgufError::Open { path: path.clone(), source };
        let file = File::open(&path).map_err(open_err)?;
        // SAFETY: the map is read-only. Like every mmap-based runtime we rely on the file
        // not being truncated underneath us while it is in use.
        let map = unsafe { Mmap::map(&file) }.map_err(open_err)?;
        #[cfg(unix)]
        {
            // Weights are streamed layer by layer on every token; ask for read-ahead.
            let _ = map.advise(memmap2::Advice::WillNeed);
        }
        let map = Arc::new(map);
        let header = parse(&map)?;
        Ok(Self {
            path,
            map,
            version: header.version,
            metadata_index: header.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect(),
            metadata: header.metadata,
            tensor_index: header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect(),
            tensors: header.tensors,
            alignment: header.alignment,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    pub fn file_size(&self) -> usize {
        self.map.len()
    }

    /// The shared map, for zero-copy weight views that outlive this struct's borrow.
    pub fn map(&self) -> &Arc<Mmap> {
        &self.map
    }

    /// Hands back the resident pages under `bytes` (a slice of this map) once the caller
    /// has copied what it needs from them (weights re-laid for the CPU): the process then
    /// does not hold both copies. The map stays valid; a later read faults the same bytes
    /// back in from the file. A slice outside the map is ignored.
    pub fn release(&self, bytes: &[u8]) {
        let (base, start) = (self.map.as_ptr() as usize, bytes.as_ptr() as usize);
        if start < base || start + bytes.len() > base + self.map.len() {
            return;
        }
        // SAFETY: the map is a read-only shared file mapping. MADV_DONTNEED only drops its
        // resident pages; every later read, through any live borrow, repopulates them
        // from the file, so no borrow sees other bytes (the file must stay unmodified, as
        // for the map itself). The call is advice: failure changes nothing.
        #[cfg(unix)]
        let _ =
            unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start - base, bytes.len()) };
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor(name).ok_or_else(|| GgufError::MissingTensor(name.to_string()))
    }

    /// The bytes of a tensor: a view into the map, never a copy.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.map[info.data.clone()]
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.get(key).map(|v| v.as_str().ok_or_else(|| wrong_type(key, "a string", v))).transpose()
    }

    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.get(key).map(|v| v.as_u64().ok_or_else(|| wrong_type(key, "an unsigned integer", v))).transpose()
    }

    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.get(key).map(|v| v.as_f64().ok_or_else(|| wrong_type(key, "a number", v))).transpose()
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.get(key).map(|v| v.as_bool().ok_or_else(|| wrong_type(key, "a bool", v))).transpose()
    }

    pub fn get_array(&self, key: &str) -> Result<Option<&Array>, GgufError> {
        self.get(key).map(|v| v.as_array().ok_or_else(|| wrong_type(key, "an array", v))).transpose()
    }

    pub fn require_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get_str(key)?.ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_u64(key)?.ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }
}

pub(crate) fn wrong_type(key: &str, expected: &'static str, found: &Value) -> GgufError {
    GgufError::WrongType { key: key.to_string(), expected, found: found.summary() }
}

struct Header {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
}

/// A bounds-checked little-endian cursor over the mapped bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// The map `bytes` belongs to, so arrays can be left in it.
    map: &'a Arc<Mmap>,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                file_len: self.bytes.len() as u64,
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that announces `count` items of at least `min_item_bytes` each: refuse it
    /// before allocating if the rest of the file cannot possibly hold them.
    fn count(&mut self, min_item_bytes: u64, what: &dyn Fn() -> String) -> Result<usize, GgufError> {
        let count = self.u64(what)?;
        let fits = count.checked_mul(min_item_bytes).is_some_and(|b| b <= self.remaining());
        if !fits {
            return Err(GgufError::CountTooLarge { what: what(), count, remaining: self.remaining() });
        }
        Ok(count as usize)
    }

    fn str(&mut self, what: &dyn Fn() -> String) -> Result<&'a str, GgufError> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 { what: what() })
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        self.str(what).map(str::to_string)
    }
}

/// Smallest encoded size of one value of GGUF type `ty`, used to bound array counts.
fn min_value_size(ty: u32) -> u64 {
    use type_id::*;
    match ty {
        U8 | I8 | BOOL => 1,
        U16 | I16 => 2,
        U32 | I32 | F32 => 4,
        U64 | I64 | F64 | STRING => 8,
        ARRAY => 12,
        _ => 1,
    }
}

fn read_value(c: &mut Cursor, key: &str, ty: u32, depth: usize) -> Result<Value, GgufError> {
    use type_id::*;
    let what = || format!("value of {key:?}");
    Ok(match ty {
        U8 => Value::U8(c.array::<1>(&what)?[0]),
        I8 => Value::I8(c.array::<1>(&what)?[0] as i8),
        U16 => Value::U16(u16::from_le_bytes(c.array(&what)?)),
        I16 => Value::I16(i16::from_le_bytes(c.array(&what)?)),
        U32 => Value::U32(c.u32(&what)?),
        I32 => Value::I32(i32::from_le_bytes(c.array(&what)?)),
        F32 => Value::F32(f32::from_le_bytes(c.array(&what)?)),
        BOOL => Value::Bool(c.array::<1>(&what)?[0] != 0),
        STRING => Value::String(c.string(&what)?),
        U64 => Value::U64(c.u64(&what)?),
        I64 => Value::I64(i64::from_le_bytes(c.array(&what)?)),
        F64 => Value::F64(f64::from_le_bytes(c.array(&what)?)),
        ARRAY => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(GgufError::NestedTooDeep(key.to_string()));
            }
            let item_ty = c.u32(&what)?;
            if item_ty > F64 {
                return Err(GgufError::UnknownValueType { key: key.to_string(), type_id: item_ty });
            }
            let n = c.count(min_value_size(item_ty), &|| format!("array {key:?}"))?;
            if item_ty == ARRAY {
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(read_value(c, key, item_ty, depth + 1)?);
                }
                return Ok(Value::array(item_ty, items));
            }
            // Scalars and strings stay in the map: validate each item, copy nothing.
            let start = c.pos;
            let item_what = || format!("item of array {key:?}");
            if item_ty == STRING {
                for _ in 0..n {
                    c.str(&item_what)?;
                }
            } else {
                c.take(n as u64 * min_value_size(item_ty), &item_what)?;
            }
            Value::Array(Array::Mapped { item_type: item_ty, len: n, map: c.map.clone(), range: start..c.pos })
        }
        other => return Err(GgufError::UnknownValueType { key: key.to_string(), type_id: other }),
    })
}

fn parse(map: &Arc<Mmap>) -> Result<Header, GgufError> {
    let bytes: &[u8] = map;
    let mut c = Cursor { bytes, pos: 0, map };
    let magic: [u8; 4] = c.array(&|| "magic".into()).map_err(|_| {
        let mut found = [0u8; 4];
        found[..bytes.len().min(4)].copy_from_slice(&bytes[..bytes.len().min(4)]);
        GgufError::BadMagic { found }
    })?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = c.u32(&|| "version".into())?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    // Each tensor info takes at least 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset).
    let n_tensors_raw = c.u64(&|| "tensor count".into())?;
    let n_kv = c.count(8 + 4, &|| "metadata key/value".into())?;

    let mut metadata = Vec::with_capacity(n_kv);
    let mut seen = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = c.string(&|| format!("metadata key #{i}"))?;
        let ty = c.u32(&|| format!("type of {key:?}"))?;
        let value = read_value(&mut c, &key, ty, 0)?;
        if seen.insert(key.clone(), ()).is_some() {
            return Err(GgufError::Duplicate { what: "metadata key", name: key });
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        Some((k, v)) => v.as_u64().ok_or_else(|| wrong_type(k, "an unsigned integer", v))?,
        None => DEFAULT_ALIGNMENT,
    };
    // Kernels read block fields byte-wise, so any power of two will do.
    if !alignment.is_power_of_two() {
        return Err(GgufError::BadAlignment(alignment));
    }

    let min_tensor_info = 8 + 4 + 4 + 8;
    if n_tensors_raw.checked_mul(min_tensor_info).is_none_or(|b| b > c.remaining()) {
        return Err(GgufError::CountTooLarge { what: "tensor".into(), count: n_tensors_raw, remaining: c.remaining() });
    }
    let n_tensors = n_tensors_raw as usize;
    let mut raw = Vec::with_capacity(n_tensors);
    let mut names = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&|| format!("name of tensor #{i}"))?;
        let what = || format!("info of tensor {name:?}");
        let n_dims = c.u32(&what)?;
        if n_dims as usize > MAX_DIMS {
            return Err(GgufError::TooManyDims { tensor: name, n_dims });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&what)?);
        }
        let type_id = c.u32(&what)?;
        let offset = c.u64(&what)?;
        let dtype =
            GgmlDType::from_id(type_id).ok_or_else(|| GgufError::UnknownDType { tensor: name.clone(), type_id })?;
        if names.insert(name.clone(), ()).is_some() {
            return Err(GgufError::Duplicate { what: "tensor", name });
        }
        raw.push((name, dims, dtype, offset));
    }

    let file_len = bytes.len() as u64;
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    let mut tensors = Vec::with_capacity(raw.len());
    // Where the next tensor must start: GGUF writers lay tensors out in the order they are
    // listed, each padded to the alignment, and llama.cpp refuses any other layout. A
    // tensor whose declared type or shape disagrees with the bytes written for it (say Q8_0
    // declared over F32 data) moves every later offset, so this catches it, and overlaps.
    let (mut expected, mut previous) = (0u64, "the header".to_string());
    for (name, dims, dtype, offset) in raw {
        let bad_shape = |why| GgufError::BadShape { tensor: name.clone(), shape: dims.clone(), why };
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad_shape("element count overflows"))?;
        if dims.first().is_some_and(|&d| d % dtype.block_size() as u64 != 0) {
            return Err(bad_shape("row length is not a whole number of quantization blocks"));
        }
        let n_bytes = dtype.bytes_for(n_elements).ok_or_else(|| bad_shape("byte size overflows"))?;
        if offset % alignment != 0 {
            return Err(GgufError::Misaligned { tensor: name, offset, alignment });
        }
        let start = data_start.checked_add(offset);
        let end = start.and_then(|s| s.checked_add(n_bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => {
                if offset != expected {
                    return Err(GgufError::Layout { tensor: name, offset, expected, previous });
                }
                expected = (offset + n_bytes).next_multiple_of(alignment);
                previous = format!("{name:?} before it");
                tensors.push(TensorInfo { name, dims, dtype, data: start as usize..end as usize });
            }
            _ => {
                return Err(GgufError::TensorOutOfBounds {
                    tensor: name,
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    file_len,
                })
            }
        }
    }
    Ok(Header { version, metadata, tensors, alignment })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufWriter, Value};

    fn roundtrip(w: &GgufWriter) -> Result<GgufFile, GgufError> {
        let dir = std::env::temp_dir().join(format!("pupil-gguf-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.gguf", w.to_bytes().len()));
        w.write(&path).unwrap();
        GgufFile::open(&path)
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri does not support file-backed memory maps")]
    fn writer_and_reader_agree() {
        let mut w = GgufWriter::new();
        w.add("general.architecture", Value::String("llama".into()))
            .add("a.u8", Value::U8(7))
            .add("a.i64", Value::I64(-3))
            .add("a.f64", Value::F64(0.25))
            .add("a.bool", Value::Bool(true))
            .add(
                "a.strings",
                Value::array(type_id::STRING, vec![Value::String("x".into()), Value::String("héllo".into())]),
            )
            .add("a.floats", Value::array(type_id::F32, vec![Value::F32(1.5), Value::F32(-2.0)]))
            .add("a.nested", Value::array(type_id::ARRAY, vec![Value::array(type_id::U16, vec![Value::U16(9)])]));
        w.add_f32("t.a", &[3], &[1.0, 2.0, 3.0]).add_f32("t.b", &[2, 2], &[4.0, 5.0, 6.0, 7.0]);
        let f = roundtrip(&w).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.get_str("general.architecture").unwrap(), Some("llama"));
        assert_eq!(f.get_u64("a.u8").unwrap(), Some(7));
        assert_eq!(f.get("a.i64"), Some(&Value::I64(-3)));
        assert_eq!(f.get_f64("a.f64").unwrap(), Some(0.25));
        assert_eq!(f.get_bool("a.bool").unwrap(), Some(true));
        let strings: Vec<Value> = f.get_array("a.strings").unwrap().unwrap().iter().collect();
        assert_eq!(strings, vec![Value::String("x".into()), Value::String("héllo".into())]);
        assert_eq!(f.get("a.floats"), Some(&Value::array(type_id::F32, vec![Value::F32(1.5), Value::F32(-2.0)])));
        assert_eq!(f.get_array("a.nested").unwrap().unwrap().len(), 1);
        let b = f.require_tensor("t.b").unwrap();
        assert_eq!(b.dims, vec![2, 2]);
        assert_eq!(b.data.start % 32, 0, "tensor data is aligned");
        let bytes = f.tensor_bytes(b);
        assert_eq!(f32::from_le_bytes(bytes[12..16].try_into().unwrap()), 7.0);
        assert!(matches!(f.require_tensor("missing"), Err(GgufError::MissingTensor(_))));
        assert!(matches!(f.get_str("a.u8"), Err(GgufError::WrongType { .. })));
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri does not support file-backed memory maps")]
    fn duplicate_keys_and_bad_alignment_are_refused() {
        let mut w = GgufWriter::new();
        w.add("k", Value::U8(1)).add("k", Value::U8(2));
        assert!(matches!(roundtrip(&w), Err(GgufError::Duplicate { .. })));
        let mut w = GgufWriter::new();
        w.add("general.alignment", Value::U32(24));
        assert!(matches!(roundtrip(&w), Err(GgufError::BadAlignment(24))));
    }
}
