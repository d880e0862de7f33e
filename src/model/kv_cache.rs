//! The key/value cache: preallocated once for the whole context, written in place. It
//! also carries the forward pass's scratch arena, so that everything one session's
//! forward calls need is allocated once, with the session (llama2.c's `RunState`).
//!
//! Layout per layer: `[n_ctx][n_head_kv · head_dim]` f32, for keys and for values. The
//! buffers are anonymous memory maps, which the OS backs with zero pages on first touch,
//! so the unused tail of a long context costs address space, not memory. (A zeroed heap
//! allocation does not promise that: the allocator may have to clear reused memory.)

use memmap2::MmapMut;

use super::cpu::Scratch;
use super::Config;

/// A lazily committed, zero-initialised f32 buffer.
struct LazyBuffer {
    map: Option<MmapMut>,
    len: usize,
}

impl LazyBuffer {
    fn new(len: usize) -> std::io::Result<Self> {
        let map = if len == 0 { None } else { Some(MmapMut::map_anon(len * std::mem::size_of::<f32>())?) };
        Ok(Self { map, len })
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        match &mut self.map {
            // SAFETY: the map is page-aligned, holds exactly `len` f32s, and every bit
            // pattern is a valid f32.
            Some(m) => unsafe { std::slice::from_raw_parts_mut(m.as_mut_ptr().cast::<f32>(), self.len) },
            None => &mut [],
        }
    }
}

pub struct KvCache {
    n_layer: usize,
    n_ctx: usize,
    kv_dim: usize,
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
    pub fn new(cfg: &Config, n_ctx: usize) -> std::io::Result<Self> {
        let kv_dim = cfg.kv_dim();
        let layers = || (0..cfg.n_layer).map(|_| LazyBuffer::new(n_ctx * kv_dim)).collect::<std::io::Result<Vec<_>>>();
        Ok(Self {
            n_layer: cfg.n_layer,
            n_ctx,
            kv_dim,
            len: 0,
            k: layers()?,
            v: layers()?,
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
            kv_dim: cfg.kv_dim(),
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
        2 * self.n_layer * self.n_ctx * self.kv_dim * std::mem::size_of::<f32>()
    }

    /// Whether this cache holds its keys and values on the host (the CPU path's).
    pub(crate) fn is_on_host(&self) -> bool {
        self.k.len() == self.n_layer
    }

    /// The host keys and values, and the scratch arena, to run a forward pass on.
    pub(super) fn parts(&mut self) -> (KvLayers<'_>, &mut Scratch) {
        (KvLayers { k: &mut self.k, v: &mut self.v }, &mut self.scratch)
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
    /// Keys and values of `layer` (all `n_ctx` positions, mutable for writing new ones).
    pub fn layer_mut(&mut self, layer: usize) -> (&mut [f32], &mut [f32]) {
        (self.k[layer].as_mut_slice(), self.v[layer].as_mut_slice())
    }
}
