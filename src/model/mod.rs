//! Model architectures owned by pupil, built from a validated GGUF file.
//!
//! [`graph`] describes the decoder once; [`weights`] reads what it needs from the map;
//! the CPU ([`cpu`]) and GPU (`gpu`, features `cuda`/`metal`) passes run the graph's ops;
//! [`Model`] ties a file's weights to the device they run on. The forward pass returns
//! hidden states for every position of a batch so that generation (last position),
//! perplexity and distillation (all positions) share it.

pub mod config;
pub mod cpu;
pub mod device;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod graph;
pub mod kv_cache;
pub mod lora;
pub mod weights;

pub use config::{Config, Family, Recipe, RopeScaling};
pub use device::{Device, DeviceError, DeviceRequest};
pub use kv_cache::{CacheType, CacheTypes, KvCache};
pub use lora::{Adapter, Target};
pub use weights::{Block, Norm, NormId, Weights};

use crate::gguf::{GgmlDType, GgufError, GgufFile};
use crate::kernels::{matmul_many, Batching};

/// Rows of logits a caller that needs many (perplexity, teacher targets) computes at
/// once: bounds the transient rows × n_vocab f32 buffer (6 MiB for a 49k vocabulary,
/// 32 MiB for Gemma's 262k).
pub const LOGIT_ROWS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported architecture {0:?} (pupil runs: {runs})", runs = Family::ALL.map(Family::architecture).join(", "))]
    UnsupportedArchitecture(String),
    #[error("tensor {tensor:?} has type {dtype}, which pupil cannot compute with yet")]
    UnsupportedDType { tensor: String, dtype: GgmlDType },
    #[error("tensor {tensor:?} has shape {found:?}, expected {expected:?}")]
    BadTensorShape { tensor: String, expected: Vec<u64>, found: Vec<u64> },
    #[error("invalid model hyperparameters: {0}")]
    BadConfig(String),
    #[error("unsupported rope scaling type {0:?} (pupil supports none, linear, and llama3 frequency factors)")]
    UnsupportedRopeScaling(String),
    #[error("token id {id} is outside the vocabulary ({n_vocab} tokens)")]
    TokenOutOfRange { id: u32, n_vocab: usize },
    #[error("cannot reserve the KV cache: {0}")]
    KvCache(std::io::Error),
    #[error("adapter {path}: {what}")]
    BadAdapter { path: String, what: String },
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("context is full: {needed} positions needed, the context holds {n_ctx} (raise --ctx-size)")]
    ContextFull { needed: usize, n_ctx: usize },
}

// Resolving a request probes the GPU backends, so it lives here, above both `device` (a
// leaf every layer may use) and `gpu`.
impl DeviceRequest {
    /// The device to load on: an exact request is checked against this build (not yet
    /// opened); `Auto` opens the first GPU the build supports and falls back to the CPU.
    pub fn resolve(self) -> Result<Device, DeviceError> {
        match self {
            DeviceRequest::Exact(d) => {
                d.check_built()?;
                Ok(d)
            }
            DeviceRequest::Auto => Ok(first_gpu().unwrap_or(Device::Cpu)),
        }
    }
}

fn first_gpu() -> Option<Device> {
    #[cfg(feature = "gpu")]
    return [Device::Cuda(0), Device::Metal(0)].into_iter().find(|&d| d.check_built().is_ok() && gpu::open(d).is_ok());
    #[cfg(not(feature = "gpu"))]
    None
}

/// One sequence's part of a batched forward pass ([`Model::forward_batch`]).
pub struct BatchItem<'c> {
    /// Its new tokens, at the next positions of its cache.
    pub tokens: &'c [u32],
    pub cache: &'c mut KvCache,
    /// Its scale for each of the model's adapters, in place of the scales they were added
    /// with (`None`: those): a server's requests that ask for different adapters share a
    /// pass.
    pub lora_scales: Option<&'c [f32]>,
}

/// A model ready to run: its hyperparameters, the weights in the map, the adapters applied
/// on top, and — when it runs on a GPU — the device's copy of the weights.
pub struct Model {
    pub cfg: Config,
    weights: Weights,
    /// LoRA adapters applied on top of the frozen weights, each with its user scale.
    adapters: Vec<(Adapter, f32)>,
    /// How new CPU caches store keys and values.
    pub cache_types: CacheTypes,
    /// The weights uploaded to a GPU, which then runs the forward pass.
    #[cfg(feature = "gpu")]
    gpu: Option<gpu::GpuWeights>,
}

impl Model {
    /// Reads the hyperparameters and lays out every weight as a view of the mapped file.
    pub fn load(file: &GgufFile) -> Result<Self, ModelError> {
        let cfg = Config::from_gguf(file)?;
        let weights = Weights::load(file, &cfg)?;
        Ok(Self {
            cfg,
            weights,
            adapters: Vec::new(),
            cache_types: CacheTypes::default(),
            #[cfg(feature = "gpu")]
            gpu: None,
        })
    }

    /// [`Model::load`], then runs on `device`: for a GPU the weights are uploaded once from
    /// the map and every later forward pass runs there.
    pub fn load_on(file: &GgufFile, device: Device) -> Result<Self, ModelError> {
        device.check_built()?;
        #[allow(unused_mut)]
        let mut model = Self::load(file)?;
        #[cfg(feature = "gpu")]
        if !device.is_cpu() {
            model.gpu = Some(gpu::GpuWeights::upload(&model.weights, device)?);
        }
        Ok(model)
    }

    /// On the CPU, re-lays the weights whose fastest kernel reads another layout
    /// ([`Weights::interleave_for_cpu`]), handing `file`'s pages of each back as soon as it
    /// is copied; on a GPU nothing changes. Runs on the current thread pool.
    pub fn repack_for_cpu(&mut self, file: &GgufFile) {
        if !self.device().is_cpu() {
            return;
        }
        let mut file_layout = Vec::new();
        self.weights.interleave_for_cpu(|m| {
            file.release(m.bytes());
            file_layout.push(m);
        });
        // Once more at the end: a fault in one matrix maps the page cache's pages around
        // it (fault-around, large folios), which can include pages of a matrix already
        // handed back. A fresh-clone CI run ended load with 7 MiB more of the file
        // resident than others did.
        for m in &file_layout {
            file.release(m.bytes());
        }
    }

    /// Where the forward pass runs.
    pub fn device(&self) -> Device {
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            return g.device();
        }
        Device::Cpu
    }

    /// The weights as the file holds them.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// The GPU's name (`NVIDIA H200`), or `None` on the CPU.
    pub fn gpu_name(&self) -> Option<&str> {
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            return Some(g.name());
        }
        None
    }

    /// The GPU copy of the weights, when the model runs on one.
    #[cfg(feature = "gpu")]
    pub fn gpu(&self) -> Option<&gpu::GpuWeights> {
        self.gpu.as_ref()
    }

    /// Applies `adapter` (already checked against this model's shapes by
    /// [`Adapter::load`]) on top of the frozen weights, its update scaled by `scale`.
    pub fn add_adapter(&mut self, adapter: Adapter, scale: f32) -> Result<(), ModelError> {
        #[cfg(feature = "gpu")]
        if let Some(g) = &mut self.gpu {
            g.add_adapter(&adapter, adapter.scale() * scale)?;
        }
        self.adapters.push((adapter, scale));
        Ok(())
    }

    /// The adapters applied, with their user scales.
    pub fn adapters(&self) -> &[(Adapter, f32)] {
        &self.adapters
    }

    /// A KV cache for `n_ctx` positions (clamped to the trained context), on the model's
    /// device: of [`Model::cache_types`] on the CPU, f32 on a GPU.
    pub fn new_cache(&self, n_ctx: usize) -> Result<KvCache, ModelError> {
        let n_ctx = n_ctx.clamp(1, self.cfg.n_ctx_train);
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            return Ok(KvCache::on_device(&self.cfg, n_ctx, g.new_cache(&self.cfg, n_ctx)?));
        }
        KvCache::new(&self.cfg, n_ctx, self.cache_types).map_err(ModelError::KvCache)
    }

    /// Runs `tokens` at the next positions of `cache` and returns the final (normed)
    /// hidden state of every position, `tokens.len() × n_embd`, held in the cache's scratch
    /// until the next call. Feed rows of it to [`Model::logits`]. Runs on the current
    /// thread pool (see `threads`).
    pub fn forward<'c>(&self, tokens: &[u32], cache: &'c mut KvCache) -> Result<&'c [f32], ModelError> {
        self.forward_with(tokens, cache, Batching::Tiled)
    }

    /// [`Model::forward`] with a choice of [`Batching`]; on a GPU only `Tiled` exists.
    pub fn forward_with<'c>(
        &self,
        tokens: &[u32],
        cache: &'c mut KvCache,
        batching: Batching,
    ) -> Result<&'c [f32], ModelError> {
        self.forward_batch(&mut [BatchItem { tokens, cache: &mut *cache, lora_scales: None }], batching)?;
        Ok(cache.hidden())
    }

    /// Runs several sequences in one pass, each item's tokens at the next positions of its
    /// own cache: every weight row is read once for the rows of all of them (a server's
    /// concurrent requests decode together), while attention stays within each sequence.
    /// Returns the final hidden states of all rows, item after item, held in the first
    /// item's cache until its next call. With [`Batching::AsDecode`] every row gets the
    /// bits it would get alone. On a GPU the items run one after another.
    pub fn forward_batch<'b>(
        &self,
        items: &'b mut [BatchItem<'_>],
        batching: Batching,
    ) -> Result<&'b [f32], ModelError> {
        for item in items.iter() {
            let (n, pos0, n_ctx) = (item.tokens.len(), item.cache.len(), item.cache.n_ctx());
            if pos0 + n > n_ctx {
                return Err(ModelError::ContextFull { needed: pos0 + n, n_ctx });
            }
            if let Some(&id) = item.tokens.iter().find(|&&id| id as usize >= self.cfg.n_vocab) {
                return Err(ModelError::TokenOutOfRange { id, n_vocab: self.cfg.n_vocab });
            }
            if item.lora_scales.is_some_and(|s| s.len() != self.adapters.len()) {
                return Err(ModelError::BadConfig(format!(
                    "{} adapter scales given for {} adapters",
                    item.lora_scales.map_or(0, <[f32]>::len),
                    self.adapters.len()
                )));
            }
        }
        let rows: usize = items.iter().map(|i| i.tokens.len()).sum();
        if rows == 0 {
            return Ok(&[]);
        }
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            return self.forward_batch_on_device(g, items);
        }
        if !items.iter().all(|i| i.cache.is_on_host()) {
            return Err(ModelError::BadConfig("this KV cache was made for a GPU, the model runs on the CPU".into()));
        }
        // The first item's arena serves the whole pass (and keeps its result).
        let mut scratch = std::mem::take(items[0].cache.parts().1);
        let pass = cpu::CpuPass {
            cfg: &self.cfg,
            weights: &self.weights,
            adapters: &self.adapters,
            items: &mut *items,
            rows,
            scratch: &mut scratch,
            batching,
        };
        let hidden = pass.run();
        for item in items.iter_mut() {
            item.cache.advance(item.tokens.len());
        }
        let first = items[0].cache.parts().1;
        *first = scratch;
        Ok(first.finish(hidden))
    }

    /// [`Model::forward_batch`] on a GPU: item by item, with the adapters' scales the
    /// weights were uploaded with.
    #[cfg(feature = "gpu")]
    fn forward_batch_on_device<'b>(
        &self,
        g: &gpu::GpuWeights,
        items: &'b mut [BatchItem<'_>],
    ) -> Result<&'b [f32], ModelError> {
        let uploaded: Vec<f32> = self.adapters.iter().map(|a| a.1).collect();
        if items.iter().any(|i| i.lora_scales.is_some_and(|s| s != uploaded)) {
            return Err(ModelError::BadConfig(
                "per-sequence adapter scales run on the CPU only (a GPU's weights carry the adapters' scales they were loaded with)".into(),
            ));
        }
        let mut all = Vec::new();
        for item in items.iter_mut() {
            let (pos0, n_ctx) = (item.cache.len(), item.cache.n_ctx());
            all.extend(g.forward(&self.cfg, item.tokens, item.cache.device_mut()?, pos0, n_ctx)?);
            item.cache.advance(item.tokens.len());
        }
        Ok(items[0].cache.parts().1.finish(all))
    }

    /// Logits (`rows × n_vocab`) for `rows` hidden states returned by [`Model::forward`].
    pub fn logits(&self, hidden: &[f32]) -> Result<Vec<f32>, ModelError> {
        self.logits_with(hidden, Batching::Tiled)
    }

    /// [`Model::logits`] with a choice of [`Batching`].
    pub fn logits_with(&self, hidden: &[f32], batching: Batching) -> Result<Vec<f32>, ModelError> {
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            return Ok(g.logits(hidden, self.cfg.n_embd)?);
        }
        let rows = hidden.len() / self.cfg.n_embd;
        let mut out = vec![0f32; rows * self.cfg.n_vocab];
        matmul_many(&mut [(&self.weights.output, &mut out[..])], hidden, rows, batching);
        Ok(out)
    }

    /// Total bytes of the weights this model reads, by how they are stored.
    pub fn weight_bytes(&self) -> usize {
        self.weights.bytes()
    }

    /// Bytes one decode step must read from memory with `context` positions cached (its
    /// own included): every layer weight, the output head in full (logits for every
    /// token), one embedding row, the norms, and each layer's keys and values of the
    /// positions it attends to. Nothing of it stays in cache from one step to the next
    /// at these sizes, so this over the step's time is the bandwidth decode achieves.
    pub fn decode_bytes(&self, context: usize) -> u64 {
        let w = &self.weights;
        let cfg = &self.cfg;
        let norms: usize =
            w.blocks.iter().flat_map(|b| Norm::ALL.iter().filter_map(|&n| b.norm(n))).map(|v| v.len() * 4).sum();
        // `Weights::bytes` counts the layer matrices and the whole embedding table.
        let layers = w.bytes() - w.token_embd.bytes().len() + norms;
        let per_value = self.cache_types.k.bytes() + self.cache_types.v.bytes();
        let kv: usize = (0..cfg.n_layer)
            .map(|l| cfg.window(l).map_or(context, |win| context.min(win)) * cfg.kv_dim() * per_value)
            .sum();
        let head = w.output.bytes().len() + w.output_norm.len() * 4;
        (layers + kv + head + w.token_embd.row_bytes()) as u64
    }
}
