//! The decoder-only transformer of the Llama family, read top to bottom like the paper:
//! embed → [RMS-norm → attention → residual → RMS-norm → gated MLP → residual] × n_layer
//! → RMS-norm → output head.
//!
//! `llama` files (Llama 2/3, SmolLM, TinyLlama, Mistral-style GQA) run it as is; RoPE
//! rotates adjacent pairs (llama.cpp's "normal" mode: the GGUF converter permutes Q/K rows
//! for it). `gemma3` files add the extras listed on [`Family::Gemma3`]; their norm weights
//! already include Gemma's `1 +` (the converter adds it). Tensor names are llama.cpp's.

use super::config::GEMMA3_SWA_ROPE_BASE;
use super::device::Device;
use super::{Adapter, Config, Family, KvCache, ModelError, RopeScaling, Target};
use crate::gguf::GgufFile;
use crate::kernels::dot::{attend_group, dot, gated, Gate};
use crate::kernels::{self, matmul, matmul_many, QMatrix};
use crate::threads::DisjointMut;

/// One transformer layer's weights.
pub struct Block {
    pub attn_norm: Vec<f32>,
    pub attn_q: QMatrix,
    pub attn_k: QMatrix,
    pub attn_v: QMatrix,
    pub attn_output: QMatrix,
    pub ffn_norm: Vec<f32>,
    pub ffn_gate: QMatrix,
    pub ffn_up: QMatrix,
    pub ffn_down: QMatrix,
    /// Gemma 3 only: per-head norms of Q and K, and norms of the attention and MLP outputs.
    extra: Option<GemmaNorms>,
}

impl Block {
    /// The frozen weight an adapter `target` modifies.
    pub fn weight(&self, target: Target) -> &QMatrix {
        match target {
            Target::Q => &self.attn_q,
            Target::K => &self.attn_k,
            Target::V => &self.attn_v,
            Target::O => &self.attn_output,
            Target::Gate => &self.ffn_gate,
            Target::Up => &self.ffn_up,
            Target::Down => &self.ffn_down,
        }
    }

    /// Gemma 3's Q norm, K norm, post-attention norm and post-MLP norm.
    #[cfg(feature = "gpu")]
    pub(crate) fn gemma_norms(&self) -> Option<[&[f32]; 4]> {
        self.extra
            .as_ref()
            .map(|g| [&g.attn_q_norm[..], &g.attn_k_norm[..], &g.post_attention_norm[..], &g.post_ffw_norm[..]])
    }
}

struct GemmaNorms {
    attn_q_norm: Vec<f32>,
    attn_k_norm: Vec<f32>,
    post_attention_norm: Vec<f32>,
    post_ffw_norm: Vec<f32>,
}

pub struct Model {
    pub cfg: Config,
    /// `token_embd.weight`: looked up one quantized row at a time.
    pub(crate) token_embd: QMatrix,
    pub(crate) output_norm: Vec<f32>,
    /// `output.weight`, or `token_embd.weight` again when the embeddings are tied.
    pub(crate) output: QMatrix,
    pub(crate) blocks: Vec<Block>,
    /// Angle per position for each rotated pair: `base^(-2i/n_rot) / freq_factor[i]`,
    /// with linear scaling folded in.
    pub(crate) inv_freq: Vec<f64>,
    /// The same for sliding-window layers (Gemma 3's own base); equal to `inv_freq`
    /// elsewhere.
    inv_freq_swa: Vec<f64>,
    /// LoRA adapters applied on top of the frozen weights, each with its user scale.
    adapters: Vec<(Adapter, f32)>,
    /// The same weights uploaded to a GPU, which then runs the forward pass.
    #[cfg(feature = "gpu")]
    gpu: Option<super::gpu::GpuModel>,
}

fn matrix(file: &GgufFile, name: &str, cols: usize, rows: usize) -> Result<QMatrix, ModelError> {
    let info = file.require_tensor(name)?;
    let expected = vec![cols as u64, rows as u64];
    if info.dims != expected {
        return Err(ModelError::BadTensorShape { tensor: name.into(), expected, found: info.dims.clone() });
    }
    if !kernels::is_supported(info.dtype) {
        return Err(ModelError::UnsupportedDType { tensor: name.into(), dtype: info.dtype });
    }
    Ok(QMatrix::new(info.dtype, rows, cols, file.map().clone(), info.data.clone()))
}

/// A small 1-D tensor (norm weights, RoPE factors), dequantized to an owned vector.
fn vector(file: &GgufFile, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
    let m = matrix_1d(file, name, n)?;
    let mut out = vec![0f32; n];
    m.dequantize_row(0, &mut out);
    Ok(out)
}

fn matrix_1d(file: &GgufFile, name: &str, n: usize) -> Result<QMatrix, ModelError> {
    let info = file.require_tensor(name)?;
    if info.dims != [n as u64] {
        return Err(ModelError::BadTensorShape {
            tensor: name.into(),
            expected: vec![n as u64],
            found: info.dims.clone(),
        });
    }
    if !kernels::is_supported(info.dtype) {
        return Err(ModelError::UnsupportedDType { tensor: name.into(), dtype: info.dtype });
    }
    Ok(QMatrix::new(info.dtype, 1, n, file.map().clone(), info.data.clone()))
}

impl Model {
    /// Lays out every weight as a view of the mapped file; copies only the small norm
    /// vectors.
    pub fn load(file: &GgufFile) -> Result<Self, ModelError> {
        let cfg = Config::from_gguf(file)?;
        let (e, d) = (cfg.n_embd, cfg.head_dim);
        let token_embd = matrix(file, "token_embd.weight", e, cfg.n_vocab)?;
        let output = match file.tensor("output.weight") {
            Some(_) => matrix(file, "output.weight", e, cfg.n_vocab)?,
            None => token_embd.clone(),
        };
        let blocks = (0..cfg.n_layer)
            .map(|i| {
                let name = |t: &str| format!("blk.{i}.{t}.weight");
                Ok(Block {
                    attn_norm: vector(file, &name("attn_norm"), e)?,
                    attn_q: matrix(file, &name("attn_q"), e, cfg.n_head * d)?,
                    attn_k: matrix(file, &name("attn_k"), e, cfg.n_head_kv * d)?,
                    attn_v: matrix(file, &name("attn_v"), e, cfg.n_head_kv * d)?,
                    attn_output: matrix(file, &name("attn_output"), cfg.n_head * d, e)?,
                    ffn_norm: vector(file, &name("ffn_norm"), e)?,
                    ffn_gate: matrix(file, &name("ffn_gate"), e, cfg.n_ff)?,
                    ffn_up: matrix(file, &name("ffn_up"), e, cfg.n_ff)?,
                    ffn_down: matrix(file, &name("ffn_down"), cfg.n_ff, e)?,
                    extra: match cfg.family {
                        Family::Llama => None,
                        Family::Gemma3 => Some(GemmaNorms {
                            attn_q_norm: vector(file, &name("attn_q_norm"), d)?,
                            attn_k_norm: vector(file, &name("attn_k_norm"), d)?,
                            post_attention_norm: vector(file, &name("post_attention_norm"), e)?,
                            post_ffw_norm: vector(file, &name("post_ffw_norm"), e)?,
                        }),
                    },
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;

        // Llama 3.1+ stores per-pair frequency divisors in `rope_freqs.weight`.
        let freq_factors = match file.tensor("rope_freqs.weight") {
            Some(_) => Some(vector(file, "rope_freqs.weight", cfg.n_rot / 2)?),
            None => None,
        };
        let pos_scale = match cfg.rope_scaling {
            RopeScaling::None => 1.0,
            RopeScaling::Linear { factor } => 1.0 / factor as f64,
        };
        let frequencies = |base: f32| -> Vec<f64> {
            (0..cfg.n_rot / 2)
                .map(|i| {
                    let f = (base as f64).powf(-2.0 * i as f64 / cfg.n_rot as f64) * pos_scale;
                    match &freq_factors {
                        Some(ff) => f / ff[i] as f64,
                        None => f,
                    }
                })
                .collect()
        };
        let inv_freq = frequencies(cfg.rope_freq_base);
        let inv_freq_swa = match cfg.family {
            Family::Gemma3 => frequencies(GEMMA3_SWA_ROPE_BASE),
            Family::Llama => inv_freq.clone(),
        };
        let output_norm = vector(file, "output_norm.weight", e)?;
        Ok(Self {
            cfg,
            token_embd,
            output_norm,
            output,
            blocks,
            inv_freq,
            inv_freq_swa,
            adapters: Vec::new(),
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
            model.gpu = Some(super::gpu::GpuModel::load(&model, device)?);
        }
        Ok(model)
    }

    /// Where the forward pass runs.
    pub fn device(&self) -> Device {
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            return g.device();
        }
        Device::Cpu
    }

    /// Each layer's weights.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
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
    pub fn gpu(&self) -> Option<&super::gpu::GpuModel> {
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

    /// `out += Σ adapters' updates of weight `target` in `layer`, applied to `x`.
    fn apply_adapters(&self, layer: usize, target: Target, x: &[f32], out: &mut [f32]) {
        for (a, user_scale) in &self.adapters {
            a.apply(layer, target, x, out, a.scale() * user_scale);
        }
    }

    /// A KV cache for `n_ctx` positions (clamped to the trained context), on the model's
    /// device.
    pub fn new_cache(&self, n_ctx: usize) -> Result<KvCache, ModelError> {
        let n_ctx = n_ctx.clamp(1, self.cfg.n_ctx_train);
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            return Ok(KvCache::on_device(&self.cfg, n_ctx, g.new_cache(&self.cfg, n_ctx)?));
        }
        KvCache::new(&self.cfg, n_ctx).map_err(ModelError::KvCache)
    }

    /// Inverse RoPE frequencies of sliding-window layers.
    #[cfg(feature = "gpu")]
    pub(crate) fn inv_freq_swa(&self) -> &[f64] {
        &self.inv_freq_swa
    }

    /// Runs `tokens` at the next positions of `cache` and returns the final (normed)
    /// hidden state of every position, `tokens.len() × n_embd`. Feed rows of it to
    /// [`Model::logits`]. Runs on the current thread pool (see `threads`).
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, ModelError> {
        let cfg = &self.cfg;
        let n = tokens.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let pos0 = cache.len();
        if pos0 + n > cache.n_ctx() {
            return Err(ModelError::ContextFull { needed: pos0 + n, n_ctx: cache.n_ctx() });
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= cfg.n_vocab) {
            return Err(ModelError::TokenOutOfRange { id, n_vocab: cfg.n_vocab });
        }
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            let hidden = g.forward(self, tokens, cache.device_mut()?, pos0)?;
            cache.advance(n);
            return Ok(hidden);
        }
        if !cache.is_on_host() {
            return Err(ModelError::BadConfig("this KV cache was made for a GPU, the model runs on the CPU".into()));
        }
        let (e, d, nh, nkv) = (cfg.n_embd, cfg.head_dim, cfg.n_head, cfg.n_head_kv);
        let (q_dim, kv_dim) = (nh * d, nkv * d);

        let mut x = vec![0f32; n * e];
        for (row, &id) in x.chunks_exact_mut(e).zip(tokens) {
            self.token_embd.dequantize_row(id as usize, row);
        }
        if cfg.family == Family::Gemma3 {
            let scale = (e as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= scale);
        }

        let neox = cfg.family == Family::Gemma3;
        let global = rope_tables(&self.inv_freq, pos0, n);
        let local =
            if cfg.sliding_window.is_some() { rope_tables(&self.inv_freq_swa, pos0, n) } else { global.clone() };
        let mut xn = vec![0f32; n * e];
        let mut q = vec![0f32; n * q_dim];
        let mut k = vec![0f32; n * kv_dim];
        let mut v = vec![0f32; n * kv_dim];
        let mut att = vec![0f32; n * q_dim];
        let mut proj = vec![0f32; n * e];
        let mut gate = vec![0f32; n * cfg.n_ff];
        let mut up = vec![0f32; n * cfg.n_ff];

        for (layer, b) in self.blocks.iter().enumerate() {
            // Attention.
            by_rows(&mut xn, e, |rows, o| {
                rms_norm(&x[rows.start * e..rows.end * e], &b.attn_norm, cfg.rms_norm_eps, o)
            });
            matmul_many(&mut [(&b.attn_q, &mut q), (&b.attn_k, &mut k), (&b.attn_v, &mut v)], &xn, n);
            self.apply_adapters(layer, Target::Q, &xn, &mut q);
            self.apply_adapters(layer, Target::K, &xn, &mut k);
            self.apply_adapters(layer, Target::V, &xn, &mut v);
            if let Some(g) = &b.extra {
                rms_norm_in_place(&mut q, &g.attn_q_norm, cfg.rms_norm_eps);
                rms_norm_in_place(&mut k, &g.attn_k_norm, cfg.rms_norm_eps);
            }
            let sliding = cfg.is_sliding(layer);
            let (cos, sin) = if sliding { &local } else { &global };
            let half = cfg.n_rot / 2;
            for (rotated, width) in [(&mut q, q_dim), (&mut k, kv_dim)] {
                by_rows(rotated, width, |rows, o| {
                    let tables = rows.start * half..rows.end * half;
                    rope(o, d, cfg.n_rot, &cos[tables.clone()], &sin[tables], neox)
                });
            }
            let (k_cache, v_cache) = cache.layer_mut(layer);
            k_cache[pos0 * kv_dim..(pos0 + n) * kv_dim].copy_from_slice(&k);
            v_cache[pos0 * kv_dim..(pos0 + n) * kv_dim].copy_from_slice(&v);
            let window = if sliding { cfg.sliding_window } else { None };
            attention(&q, k_cache, v_cache, pos0, nh, nkv, d, window, &mut att);
            matmul(&b.attn_output, &att, n, &mut proj);
            self.apply_adapters(layer, Target::O, &att, &mut proj);
            if let Some(g) = &b.extra {
                rms_norm_in_place(&mut proj, &g.post_attention_norm, cfg.rms_norm_eps);
            }
            add_in_place(&mut x, &proj);

            // Feed-forward: SwiGLU, or GELU(tanh)-gated for Gemma.
            by_rows(&mut xn, e, |rows, o| rms_norm(&x[rows.start * e..rows.end * e], &b.ffn_norm, cfg.rms_norm_eps, o));
            matmul_many(&mut [(&b.ffn_gate, &mut gate), (&b.ffn_up, &mut up)], &xn, n);
            self.apply_adapters(layer, Target::Gate, &xn, &mut gate);
            self.apply_adapters(layer, Target::Up, &xn, &mut up);
            let act = if cfg.family == Family::Gemma3 { Gate::GeluTanh } else { Gate::Silu };
            let n_ff = cfg.n_ff;
            by_rows(&mut gate, n_ff, |rows, g| gated(act, g, &up[rows.start * n_ff..rows.end * n_ff]));
            matmul(&b.ffn_down, &gate, n, &mut proj);
            self.apply_adapters(layer, Target::Down, &gate, &mut proj);
            if let Some(g) = &b.extra {
                rms_norm_in_place(&mut proj, &g.post_ffw_norm, cfg.rms_norm_eps);
            }
            add_in_place(&mut x, &proj);
        }
        cache.advance(n);
        rms_norm(&x, &self.output_norm, cfg.rms_norm_eps, &mut xn);
        Ok(xn)
    }

    /// Logits (`rows × n_vocab`) for `rows` hidden states returned by [`Model::forward`].
    pub fn logits(&self, hidden: &[f32]) -> Result<Vec<f32>, ModelError> {
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            return Ok(g.logits(hidden, self.cfg.n_embd)?);
        }
        let rows = hidden.len() / self.cfg.n_embd;
        let mut out = vec![0f32; rows * self.cfg.n_vocab];
        matmul(&self.output, hidden, rows, &mut out);
        Ok(out)
    }

    /// Total bytes of the weights this model reads, by how they are stored.
    pub fn weight_bytes(&self) -> usize {
        let per_block: usize = self
            .blocks
            .iter()
            .map(|b| {
                [&b.attn_q, &b.attn_k, &b.attn_v, &b.attn_output, &b.ffn_gate, &b.ffn_up, &b.ffn_down]
                    .iter()
                    .map(|m| m.bytes().len())
                    .sum::<usize>()
            })
            .sum();
        per_block + self.token_embd.bytes().len()
    }
}

/// cos/sin of every rotated pair at positions `pos0..pos0 + n`, `n × n_rot/2` each.
pub(crate) fn rope_tables(inv_freq: &[f64], pos0: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in pos0..pos0 + n {
        for &f in inv_freq {
            let (s, c) = (p as f64 * f).sin_cos();
            cos.push(c as f32);
            sin.push(s as f32);
        }
    }
    (cos, sin)
}

/// [`rms_norm`] in place, over rows of `w.len()` (per head when `w` is a head's width).
fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let input = x.to_vec();
    rms_norm(&input, w, eps, x);
}

/// `out = x / rms(x) · w`, row by row.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let e = w.len();
    for (xr, or) in x.chunks_exact(e).zip(out.chunks_exact_mut(e)) {
        let ss: f32 = dot(xr, xr) / e as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for ((o, &xi), &wi) in or.iter_mut().zip(xr).zip(w) {
            *o = xi * scale * wi;
        }
    }
}

/// Rotates pairs of the first `n_rot` dimensions of every head, in place: adjacent pairs
/// `(2i, 2i+1)`, or with `neox` the halves `(i, i + n_rot/2)`. `x` is
/// `n × (n_heads · head_dim)`; `cos`/`sin` are `n × n_rot/2`.
pub(crate) fn rope(x: &mut [f32], head_dim: usize, n_rot: usize, cos: &[f32], sin: &[f32], neox: bool) {
    let half = n_rot / 2;
    let n = cos.len() / half.max(1);
    let row_len = x.len() / n.max(1);
    for (t, row) in x.chunks_exact_mut(row_len).enumerate() {
        let (c, s) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (a, b) = if neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c[i] - x1 * s[i];
                head[b] = x0 * s[i] + x1 * c[i];
            }
        }
    }
}

/// Causal grouped-query attention of `n` new queries (at positions `pos0..`) over the
/// cache, which already holds their own keys and values. Query head `h` reads KV head
/// `h / (n_head / n_head_kv)` in place: no per-head copies. With a `window`, a query sees
/// only the last `window` positions (itself included).
#[allow(clippy::too_many_arguments)]
fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    pos0: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    window: Option<usize>,
    out: &mut [f32],
) {
    let group = n_head / n_head_kv;
    let kv_dim = n_head_kv * head_dim;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let n_tokens = out.len() / (n_head * head_dim);
    // A prompt's work items are a token's whole query group (its heads share every key
    // and value row); one new token splits by head, so a single KV head (Gemma) still
    // keeps every thread busy.
    let heads_per_item = if n_tokens > 1 { group } else { 1 };
    let item_len = heads_per_item * head_dim;
    let item = |scores: &mut Vec<f32>, i: usize, o: &mut [f32]| {
        let first_head = i * heads_per_item;
        let (t, h) = (first_head / n_head, first_head % n_head);
        let kv_off = (h / group) * head_dim;
        let qh = &q[first_head * head_dim..first_head * head_dim + item_len];
        let end = pos0 + t + 1;
        let start = window.map_or(0, |w| end.saturating_sub(w));
        attend_group(qh, head_dim, k_cache, v_cache, start..end, kv_dim, kv_off, scale, scores, o);
    };
    thread_local! {
        /// Attention weights of the item a thread is on, reused from call to call.
        static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let n_items = out.len() / item_len;
    // Below some ten thousand multiply-adds, sharing the items out costs more than it saves.
    let work = out.len() / head_dim * (pos0 + n_tokens) * head_dim;
    let outs = DisjointMut::new(out);
    let run = |i: usize| {
        // SAFETY: item `i` writes only its own heads' outputs, `i·item_len..(i+1)·item_len`.
        let o = unsafe { outs.slice(i * item_len, item_len) };
        SCORES.with(|s| item(&mut s.borrow_mut(), i, o));
    };
    if work < 1 << 16 {
        (0..n_items).for_each(run);
    } else {
        crate::threads::for_each_index(n_items, run);
    }
}

/// Prompt rows per task of the per-layer elementwise steps (norms, RoPE, the gate).
const GLUE_ROWS: usize = 16;

/// Calls `f(rows, out_rows)` on consecutive groups of up to [`GLUE_ROWS`] rows of `out`
/// (`row_len` values each), on the thread pool when there are several: a prompt's norms,
/// RoPE and gate would otherwise run on one thread while the others wait (Amdahl's share
/// of two-thread prefill).
fn by_rows(out: &mut [f32], row_len: usize, f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync) {
    let n_rows = out.len() / row_len.max(1);
    let groups = n_rows.div_ceil(GLUE_ROWS);
    if groups <= 1 {
        return f(0..n_rows, out);
    }
    let outs = DisjointMut::new(out);
    crate::threads::for_each_index(groups, |g| {
        let rows = g * GLUE_ROWS..((g + 1) * GLUE_ROWS).min(n_rows);
        // SAFETY: group `g` alone owns rows `rows`.
        let o = unsafe { outs.slice(rows.start * row_len, rows.len() * row_len) };
        f(rows, o)
    });
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}
