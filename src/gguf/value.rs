//! Metadata values as GGUF stores them.
//!
//! Arrays of scalars and strings are not copied out of the file: they stay in the memory
//! map and are decoded when iterated, so a 262,144-token vocabulary costs no heap until a
//! tokenizer reads it.

use std::ops::Range;
use std::sync::Arc;

use memmap2::Mmap;

/// GGUF metadata value type ids.
pub mod type_id {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The GGUF type id of this value.
    pub fn type_id(&self) -> u32 {
        use type_id::*;
        match self {
            Value::U8(_) => U8,
            Value::I8(_) => I8,
            Value::U16(_) => U16,
            Value::I16(_) => I16,
            Value::U32(_) => U32,
            Value::I32(_) => I32,
            Value::F32(_) => F32,
            Value::Bool(_) => BOOL,
            Value::String(_) => STRING,
            Value::Array(..) => ARRAY,
            Value::U64(_) => U64,
            Value::I64(_) => I64,
            Value::F64(_) => F64,
        }
    }

    /// Any integer type that fits, as `u64` (GGUF writers disagree on widths: accept all).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type, as `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any float type (and integers, which some writers use for whole-number floats).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// An in-memory array of `items`, all of GGUF type `item_type`.
    pub fn array(item_type: u32, items: Vec<Value>) -> Self {
        Value::Array(Array::Owned { item_type, items })
    }

    /// A short human rendering for `pupil inspect` (long arrays are summarised).
    pub fn summary(&self) -> String {
        match self {
            Value::String(s) if s.chars().count() > 60 => {
                let head: String = s.chars().take(57).collect();
                format!("{head:?}… ({} bytes)", s.len())
            }
            Value::String(s) => format!("{s:?}"),
            Value::Array(a) if a.len() > 6 => format!("[{} items]", a.len()),
            Value::Array(a) => {
                let parts: Vec<String> = a.iter().map(|v| v.summary()).collect();
                format!("[{}]", parts.join(", "))
            }
            Value::Bool(v) => v.to_string(),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            other => other.as_i64().map(|v| v.to_string()).unwrap_or_default(),
        }
    }
}

/// A metadata array: built in memory, or left in the mapped file.
#[derive(Clone)]
pub enum Array {
    Owned {
        item_type: u32,
        items: Vec<Value>,
    },
    /// `len` items of scalar or string type `item_type`, encoded in `map[range]`. The
    /// reader validated every item (sizes, string lengths, UTF-8) when it parsed the file.
    Mapped {
        item_type: u32,
        len: usize,
        map: Arc<Mmap>,
        range: Range<usize>,
    },
}

impl Array {
    pub fn item_type(&self) -> u32 {
        match self {
            Array::Owned { item_type, .. } | Array::Mapped { item_type, .. } => *item_type,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Array::Owned { items, .. } => items.len(),
            Array::Mapped { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The items, decoded one by one.
    pub fn iter(&self) -> Box<dyn Iterator<Item = Value> + '_> {
        match self {
            Array::Owned { items, .. } => Box::new(items.iter().cloned()),
            Array::Mapped { item_type, len, map, range } => {
                let bytes = &map[range.clone()];
                let mut pos = 0;
                Box::new((0..*len).map(move |_| decode_item(bytes, &mut pos, *item_type)))
            }
        }
    }
}

/// Decodes one scalar or string item at `pos` (already validated by the reader; a short
/// read yields zero bytes rather than a panic).
fn decode_item(bytes: &[u8], pos: &mut usize, item_type: u32) -> Value {
    let mut take = |n: usize| -> &[u8] {
        let start = (*pos).min(bytes.len());
        let end = (start + n).min(bytes.len());
        *pos = start + n;
        &bytes[start..end]
    };
    fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
        let mut out = [0u8; N];
        out[..b.len().min(N)].copy_from_slice(&b[..b.len().min(N)]);
        out
    }
    use type_id::*;
    match item_type {
        U8 => Value::U8(arr::<1>(take(1))[0]),
        I8 => Value::I8(arr::<1>(take(1))[0] as i8),
        U16 => Value::U16(u16::from_le_bytes(arr(take(2)))),
        I16 => Value::I16(i16::from_le_bytes(arr(take(2)))),
        U32 => Value::U32(u32::from_le_bytes(arr(take(4)))),
        I32 => Value::I32(i32::from_le_bytes(arr(take(4)))),
        F32 => Value::F32(f32::from_le_bytes(arr(take(4)))),
        BOOL => Value::Bool(arr::<1>(take(1))[0] != 0),
        U64 => Value::U64(u64::from_le_bytes(arr(take(8)))),
        I64 => Value::I64(i64::from_le_bytes(arr(take(8)))),
        F64 => Value::F64(f64::from_le_bytes(arr(take(8)))),
        _ => {
            let len = u64::from_le_bytes(arr(take(8))) as usize;
            Value::String(String::from_utf8_lossy(take(len)).into_owned())
        }
    }
}

impl PartialEq for Array {
    fn eq(&self, other: &Self) -> bool {
        self.item_type() == other.item_type() && self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl std::fmt::Debug for Array {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Array(type {}, {} items)", self.item_type(), self.len())
    }
}
