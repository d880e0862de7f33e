//! The key/value cache: preallocated once for the whole context, written in place. It
//! also carries the forward pass's scratch arena, so that everything one session's
//! forward calls need is allocated once, with the session (llama2.c's `RunState`).
//!
//! Layout per layer: `[n_ctx][n_head_kv · head_dim]`, for keys and for values, each in its
//! [`CacheType`] (f16 by default, like llama.cpp). The buffers are anonymous memory maps,
//! which the OS backs with zero pages on first touch, so the unused tail of a long context
//! costs address space, not memory. (A zeroed heap allocation does not promise that: the
//! allocator may have to clear reused memory.)

use half::f16;
use half::slice::HalfFloatSliceExt;
use memmap2::MmapMut;

use super::cpu::Scratch;
use super::Config;
use crate::kernels::attention::Cached;

/// How the cache stores each key or value (llama.cpp's `--cache-type-k/-v`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheType {
    /// The projections' own values.
    F32,
    /// Half the memory, and half the bytes attention reads per cached position, for a
    /// rounding (relative 2⁻¹¹) that llama.cpp's default cache makes too.
    #[default]
    F16,
}

impl CacheType {
    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            CacheType::F32 => 4,
            CacheType::F16 => 2,
        }
    }
}

impl std::str::FromStr for CacheType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(CacheType::F32),
            "f16" => Ok(CacheType::F16),
            _ => Err(format!("unknown KV cache type {s:?} (expected f32 or f16)")),
        }
    }
}

/// The storage types of keys and of values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheTypes {
    pub k: CacheType,
    pub v: CacheType,
}

/// A lazily committed, zero-initialised buffer of `len` values of one [`CacheType`].
struct LazyBuffer {
    map: Option<MmapMut>,
    len: usize,
    kind: CacheType,
}

impl LazyBuffer {
    fn new(len: usize, kind: CacheType) -> std::io::Result<Self> {
        let map = if len == 0 { None } else { Some(MmapMut::map_anon(len * kind.bytes())?) };
        Ok(Self { map, len, kind })
    }

    fn rows(&self) -> Cached<'_> {
        let Some(m) = &self.map else { return Cached::F32(&[]) };
        match self.kind {
            // SAFETY: the map is page-aligned and holds exactly `len` values of this type,
            // and every bit pattern is a valid f32 (or f16).
            CacheType::F32 => Cached::F32(unsafe { std::slice::from_raw_parts(m.as_ptr().cast::<f32>(), self.len) }),
            // SAFETY: as above.
            CacheType::F16 => Cached::F16(unsafe { std::slice::from_raw_parts(m.as_ptr().cast::<f16>(), self.len) }),
        }
    }

    /// Stores `values` from position `at` on, rounding them to the buffer's type.
    fn store(&mut self, at: usize, values: &[f32]) {
        let Some(m) = &mut self.map else {
            assert!(values.is_empty(), "KV cache: store past the end");
            return;
        };
        assert!(at + values.len() <= self.len, "KV cache: store past the end");
        let (ptr, range) = (m.as_mut_ptr(), at..at + values.len());
        match self.kind {
            CacheType::F32 => {
                // SAFETY: as in `rows`, and `&mut self` makes this the only view of the map.
                let all = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<f32>(), self.len) };
                all[range].copy_from_slice(values)
            }
            CacheType::F16 => {
                // SAFETY: as above.
                let all = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<f16>(), self.len) };
                all[range].convert_from_f32_slice(values)
            }
        }
    }
}

pub struct KvCache {
    n_layer: usize,
    n_ctx: usize,
    /// Positions filled so far.
    len: usize,
    k: Vec<LazyBuffer>,
    v: Vec<LazyBuffer>,
    /// Working memory of the CPU forward pass.
    scratch: Scratch,
    /// The cache of a model that runs on a GPU (the host buffers are then empty).
    #[cfg(feature = "gpu")]
    device: Option<super::gpu::DeviceKv>,
}

impl KvCache {
    /// Reserves keys and values for `n_ctx` positions of every layer.
    pub fn new(cfg: &Config, n_ctx: usize, types: CacheTypes) -> std::io::Result<Self> {
        let kv_dim = cfg.kv_dim();
        let layers =
            |kind| (0..cfg.n_layer).map(|_| LazyBuffer::new(n_ctx * kv_dim, kind)).collect::<std::io::Result<Vec<_>>>();
        Ok(Self {
            n_layer: cfg.n_layer,
            n_ctx,
            len: 0,
            k: layers(types.k)?,
            v: layers(types.v)?,
            scratch: Scratch::default(),
            #[cfg(feature = "gpu")]
            device: None,
        })
    }

    /// A cache whose keys and values live in device memory (no host buffers).
    #[cfg(feature = "gpu")]
    pub(crate) fn on_device(cfg: &Config, n_ctx: usize, kv: super::gpu::DeviceKv) -> Self {
        Self {
            n_layer: cfg.n_layer,
            n_ctx,
            len: 0,
            k: Vec::new(),
            v: Vec::new(),
            scratch: Scratch::default(),
            device: Some(kv),
        }
    }

    /// The device half of a GPU model's cache; an error for a host cache.
    #[cfg(feature = "gpu")]
    pub(crate) fn device_mut(&mut self) -> Result<&mut super::gpu::DeviceKv, super::ModelError> {
        self.device.as_mut().ok_or_else(|| {
            super::ModelError::BadConfig("this KV cache was made for the CPU, the model runs on a GPU".into())
        })
    }
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position (the buffers are kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Drops positions from `len` on, e.g. to re-use a shared prompt prefix.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Bytes the cache would take if every position were filled.
    pub fn capacity_bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|b| b.len * b.kind.bytes()).sum()
    }

    /// Whether this cache holds its keys and values on the host (the CPU path's).
    pub(crate) fn is_on_host(&self) -> bool {
        self.k.len() == self.n_layer
    }

    /// The host keys and values, and the scratch arena, to run a forward pass on.
    pub(super) fn parts(&mut self) -> (KvLayers<'_>, &mut Scratch) {
        (KvLayers { k: &mut self.k, v: &mut self.v }, &mut self.scratch)
    }

    /// The final hidden states of the last forward pass this cache's arena served.
    pub(super) fn hidden(&self) -> &[f32] {
        &self.scratch.hidden
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self.len <= self.n_ctx);
    }
}

/// Every layer's keys and values on the host, borrowed for one forward pass.
pub(super) struct KvLayers<'a> {
    k: &'a mut [LazyBuffer],
    v: &'a mut [LazyBuffer],
}

impl KvLayers<'_> {
    /// Stores new keys and values of `layer` from value `at` on (`at = pos · kv_dim` for
    /// position `pos`).
    pub fn store(&mut self, layer: usize, at: usize, k: &[f32], v: &[f32]) {
        self.k[layer].store(at, k);
        self.v[layer].store(at, v);
    }

    /// Keys and values of `layer` (all `n_ctx` positions).
    pub fn layer(&self, layer: usize) -> (Cached<'_>, Cached<'_>) {
        (self.k[layer].rows(), self.v[layer].rows())
    }
}
