//! The key/value cache: preallocated once for the whole context, written in place.
//!
//! Layout per layer: `[n_ctx][n_head_kv · head_dim]` f32, for keys and for values. The
//! buffers are zero-initialised allocations, which the OS backs lazily, so an unused tail
//! of a long context costs address space, not memory.

use super::Config;

pub struct KvCache {
    n_ctx: usize,
    kv_dim: usize,
    /// Positions filled so far.
    len: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl KvCache {
    pub fn new(cfg: &Config, n_ctx: usize) -> Self {
        let kv_dim = cfg.kv_dim();
        let layer = || vec![0f32; n_ctx * kv_dim];
        Self {
            n_ctx,
            kv_dim,
            len: 0,
            k: (0..cfg.n_layer).map(|_| layer()).collect(),
            v: (0..cfg.n_layer).map(|_| layer()).collect(),
        }
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
        2 * self.k.len() * self.n_ctx * self.kv_dim * std::mem::size_of::<f32>()
    }

    /// Keys and values of `layer` (all `n_ctx` positions, mutable for writing new ones).
    pub(crate) fn layer_mut(&mut self, layer: usize) -> (&mut [f32], &mut [f32]) {
        (&mut self.k[layer], &mut self.v[layer])
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self.len <= self.n_ctx);
    }
}
