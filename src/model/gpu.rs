//! The forward pass on a GPU (features `cuda`, `metal`), built from candle's device ops.
//!
//! It runs the same layer graph as the CPU (`model::graph`), so every family runs on it
//! with the same results within float tolerance (tests compare it against the fixtures). Weights are
//! copied once from the memory map straight into device memory (`QStorage::from_data` over
//! the mapped bytes, no host copy in between) and multiplied by candle's quantized
//! kernels; norms, RoPE and softmax use candle's fused device kernels; the KV cache lives
//! on the device. Only token ids go up and final hidden states (or logits) come back.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType as CandleDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Module, Tensor};

use super::device::{Device, DeviceError};
use super::graph::{self, Ops, Rope};
use super::weights::{Norm, NormId, RopeFrequencies, Weights};
use super::{Adapter, Config, Target};
use crate::gguf::GgmlDType;
use crate::kernels::dot::Gate;
use crate::kernels::rope::{rope_tables, RopeStyle};
use crate::kernels::QMatrix;

/// Opens `device` through candle.
pub fn open(device: Device) -> Result<candle_core::Device, DeviceError> {
    let opened = match device {
        Device::Cpu | Device::CandleCpu => Ok(candle_core::Device::Cpu),
        Device::Cuda(n) => candle_core::Device::new_cuda(n),
        Device::Metal(n) => candle_core::Device::new_metal(n),
    };
    opened.map_err(|e| DeviceError::Open { device, reason: one_line(&e) })
}

/// candle's errors can carry a backtrace and several lines; the CLI prints one.
fn one_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or("unknown error").to_string()
}

/// A failed device operation on `device`, as pupil reports it.
fn failure(device: Device) -> impl Fn(candle_core::Error) -> DeviceError {
    move |e| DeviceError::Compute { device, reason: one_line(&e) }
}

/// A layer's weights on the device.
struct Block {
    /// By `Target as usize`.
    linear: Vec<QMatMul>,
    /// By `Target as usize`; `None` where the family's projection has no bias.
    biases: Vec<Option<Tensor>>,
    /// By `Norm as usize`; `None` where the family has no such norm.
    norms: Vec<Option<Tensor>>,
}

/// One LoRA update on the device: `y += scale · (x · Aᵀ) · Bᵀ`.
struct DeviceLora {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

/// A model's weights (and adapters) in device memory.
pub struct GpuWeights {
    device: Device,
    dev: candle_core::Device,
    /// A readable name of the device (`NVIDIA H200`), for bench rows.
    name: String,
    token_embd: Arc<QTensor>,
    output: QMatMul,
    output_norm: Tensor,
    blocks: Vec<Block>,
    /// RoPE frequencies, as the host has them.
    rope: RopeFrequencies,
    loras: HashMap<(usize, Target), Vec<DeviceLora>>,
    /// Each uploaded weight by the address of its mapped bytes, so that training can find
    /// the device copy of a host [`QMatrix`].
    by_address: HashMap<usize, Arc<QTensor>>,
}

/// The KV cache of one context on the device: per layer `[n_head_kv, n_ctx, head_dim]`,
/// so the positions a query reads are one narrow along dimension 1.
pub struct DeviceKv {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
}

fn candle_dtype(t: GgmlDType) -> Option<CandleDType> {
    Some(match t {
        GgmlDType::F32 => CandleDType::F32,
        GgmlDType::F16 => CandleDType::F16,
        GgmlDType::BF16 => CandleDType::BF16,
        GgmlDType::Q4_0 => CandleDType::Q4_0,
        GgmlDType::Q4_1 => CandleDType::Q4_1,
        GgmlDType::Q5_0 => CandleDType::Q5_0,
        GgmlDType::Q5_1 => CandleDType::Q5_1,
        GgmlDType::Q8_0 => CandleDType::Q8_0,
        GgmlDType::Q2K => CandleDType::Q2K,
        GgmlDType::Q3K => CandleDType::Q3K,
        GgmlDType::Q4K => CandleDType::Q4K,
        GgmlDType::Q5K => CandleDType::Q5K,
        GgmlDType::Q6K => CandleDType::Q6K,
        _ => return None,
    })
}

impl GpuWeights {
    /// Uploads every weight of `w` (already validated against the file) to `device`.
    pub fn upload(w: &Weights, device: Device) -> Result<Self, DeviceError> {
        let dev = open(device)?;
        let fail = failure(device);
        let mut by_address = HashMap::new();
        let mut upload = |m: &QMatrix| -> Result<Arc<QTensor>, DeviceError> {
            let q = upload_matrix(m, &dev).map_err(&fail)?.ok_or_else(|| DeviceError::Compute {
                device,
                reason: format!("candle has no {device} kernels for {} weights", m.dtype),
            })?;
            by_address.insert(m.bytes().as_ptr() as usize, q.clone());
            Ok(q)
        };
        let linear = |q: Arc<QTensor>| QMatMul::from_arc(q).map_err(&fail);
        let vector = |v: &[f32]| Tensor::from_slice(v, v.len(), &dev).map_err(&fail);

        let token_embd = upload(&w.token_embd)?;
        // A tied head is the same mapped bytes: upload them once.
        let output = if w.output.bytes().as_ptr() == w.token_embd.bytes().as_ptr() {
            token_embd.clone()
        } else {
            upload(&w.output)?
        };
        let mut blocks = Vec::with_capacity(w.blocks.len());
        for b in &w.blocks {
            let linear = Target::ALL.iter().map(|&t| linear(upload(b.weight(t))?)).collect::<Result<_, _>>()?;
            let biases = Target::ALL.iter().map(|&t| b.bias(t).map(vector).transpose()).collect::<Result<_, _>>()?;
            let norms = Norm::ALL.iter().map(|&n| b.norm(n).map(vector).transpose()).collect::<Result<_, _>>()?;
            blocks.push(Block { linear, biases, norms });
        }
        Ok(Self {
            device,
            name: device_name(device),
            output: linear(output)?,
            token_embd,
            output_norm: vector(&w.output_norm)?,
            blocks,
            rope: w.rope.clone(),
            loras: HashMap::new(),
            by_address,
            dev,
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Uploads `adapter`'s pairs, to be applied with `scale` (α/r times the user's scale).
    pub fn add_adapter(&mut self, adapter: &Adapter, scale: f32) -> Result<(), DeviceError> {
        let fail = failure(self.device);
        let mut added = Vec::new();
        let r = adapter.rank;
        for (layer, target, a, b) in adapter.tensors() {
            let (a, b) = (&adapter.values[a], &adapter.values[b]);
            let a = Tensor::from_slice(a, (r, a.len() / r), &self.dev).map_err(&fail)?;
            let b = Tensor::from_slice(b, (b.len() / r, r), &self.dev).map_err(&fail)?;
            added.push(((layer, target), DeviceLora { a, b, scale: scale as f64 }));
        }
        for (key, lora) in added {
            self.loras.entry(key).or_default().push(lora);
        }
        Ok(())
    }

    /// An empty cache for `n_ctx` positions.
    pub fn new_cache(&self, cfg: &Config, n_ctx: usize) -> Result<DeviceKv, DeviceError> {
        let layer = || Tensor::zeros((cfg.n_head_kv, n_ctx, cfg.head_dim), DType::F32, &self.dev);
        let layers = || (0..cfg.n_layer).map(|_| layer()).collect::<candle_core::Result<Vec<_>>>();
        Ok(DeviceKv { k: layers().map_err(failure(self.device))?, v: layers().map_err(failure(self.device))? })
    }

    /// Runs `tokens` at positions `pos0..` of a cache of `n_ctx` positions and returns the
    /// final normed hidden state of every position (`tokens.len() × n_embd`, on the host).
    pub fn forward(
        &self,
        cfg: &Config,
        tokens: &[u32],
        kv: &mut DeviceKv,
        pos0: usize,
        n_ctx: usize,
    ) -> Result<Vec<f32>, DeviceError> {
        let mut run = || -> candle_core::Result<Vec<f32>> {
            let n = tokens.len();
            let tables = |sliding: bool| -> candle_core::Result<(Tensor, Tensor)> {
                let inv_freq = self.rope.inv_freq(sliding, n_ctx);
                let (mut c, mut s) = (Vec::new(), Vec::new());
                rope_tables(inv_freq, cfg.rope_attn_factor, pos0, n, &mut c, &mut s);
                let half = inv_freq.len();
                Ok((Tensor::from_vec(c, (n, half), &self.dev)?, Tensor::from_vec(s, (n, half), &self.dev)?))
            };
            let global = tables(false)?;
            let local = if cfg.sliding_window.is_some() { tables(true)? } else { global.clone() };
            let full_mask = attention_mask(pos0, n, None, &self.dev)?;
            let window_mask = cfg.sliding_window.map(|w| attention_mask(pos0, n, Some(w), &self.dev)).transpose()?;
            let mut pass = GpuPass { g: self, cfg, tokens, kv, pos0, rope: [global, local], full_mask, window_mask };
            graph::forward(cfg, &mut pass)?.flatten_all()?.to_vec1::<f32>()
        };
        run().map_err(failure(self.device))
    }

    /// The device copy of the host weight `w` (found by the address of its mapped bytes).
    fn uploaded(&self, w: &QMatrix) -> candle_core::Result<&Arc<QTensor>> {
        match self.by_address.get(&(w.bytes().as_ptr() as usize)) {
            Some(q) => Ok(q),
            None => candle_core::bail!("weight {w:?} was not uploaded to the device"),
        }
    }

    /// The device copy of `w`, dequantized to f32 (`n_out × n_in`).
    fn dense(&self, w: &QMatrix) -> candle_core::Result<Tensor> {
        self.uploaded(w)?.dequantize(&self.dev)
    }

    /// Training's frozen forward product on the device: `y = x · Wᵀ` for `n` rows.
    pub fn frozen_forward(&self, w: &QMatrix, x: &[f32], n: usize, y: &mut [f32]) -> Result<(), DeviceError> {
        let run = || -> candle_core::Result<Vec<f32>> {
            let x = Tensor::from_slice(&x[..n * w.cols], (n, w.cols), &self.dev)?;
            x.matmul(&self.dense(w)?.t()?)?.flatten_all()?.to_vec1::<f32>()
        };
        let out = run().map_err(failure(self.device))?;
        y[..out.len()].copy_from_slice(&out);
        Ok(())
    }

    /// Training's frozen backward product on the device: `dx += dy · W` for `n` rows.
    pub fn frozen_backward(&self, w: &QMatrix, dy: &[f32], n: usize, dx: &mut [f32]) -> Result<(), DeviceError> {
        let run = || -> candle_core::Result<Vec<f32>> {
            let dy = Tensor::from_slice(&dy[..n * w.rows], (n, w.rows), &self.dev)?;
            dy.matmul(&self.dense(w)?)?.flatten_all()?.to_vec1::<f32>()
        };
        let out = run().map_err(failure(self.device))?;
        dx.iter_mut().zip(&out).for_each(|(d, o)| *d += o);
        Ok(())
    }

    /// Logits (`rows × n_vocab`, on the host) of hidden states from [`GpuWeights::forward`].
    pub fn logits(&self, hidden: &[f32], n_embd: usize) -> Result<Vec<f32>, DeviceError> {
        let rows = hidden.len() / n_embd;
        let run = || -> candle_core::Result<Vec<f32>> {
            let h = Tensor::from_slice(hidden, (rows, n_embd), &self.dev)?;
            product(&self.output, &h)?.flatten_all()?.to_vec1::<f32>()
        };
        run().map_err(failure(self.device))
    }
}

/// One forward call on the device: the layer graph's ops on candle tensors. Activations
/// are `[n, width]`, except that RoPE hands attention its queries and keys as
/// `[1, heads, n, head_dim]`, the layout attention multiplies in.
struct GpuPass<'a> {
    g: &'a GpuWeights,
    cfg: &'a Config,
    tokens: &'a [u32],
    kv: &'a mut DeviceKv,
    pos0: usize,
    /// cos and sin tables of global and of sliding-window layers.
    rope: [(Tensor, Tensor); 2],
    /// The additive masks (and the first key position each covers) of global and of
    /// sliding-window layers.
    full_mask: (Tensor, usize),
    window_mask: Option<(Tensor, usize)>,
}

impl GpuPass<'_> {
    fn norm_weight(&self, id: NormId) -> &Tensor {
        match id {
            NormId::Layer(layer, norm) => self.g.blocks[layer].norms[norm as usize]
                .as_ref()
                .expect("the recipe that uses a norm is the one that uploaded it"),
            NormId::Output => &self.g.output_norm,
        }
    }
}

impl Ops for GpuPass<'_> {
    type Act = Tensor;
    type Error = candle_core::Error;

    fn embed(&mut self) -> candle_core::Result<Tensor> {
        let ids = Tensor::from_slice(self.tokens, self.tokens.len(), &self.g.dev)?;
        self.g.token_embd.embedding(&ids)
    }

    fn scale(&mut self, x: Tensor, by: f32) -> candle_core::Result<Tensor> {
        x * by as f64
    }

    fn rms_norm(&mut self, x: &Tensor, id: NormId) -> candle_core::Result<Tensor> {
        rms_norm(x, self.norm_weight(id), self.cfg.rms_norm_eps)
    }

    fn rms_norm_owned(&mut self, x: Tensor, id: NormId) -> candle_core::Result<Tensor> {
        self.rms_norm(&x, id)
    }

    fn linear<const N: usize>(
        &mut self,
        x: Tensor,
        layer: usize,
        targets: [Target; N],
    ) -> candle_core::Result<[Tensor; N]> {
        let mut outs = Vec::with_capacity(N);
        for t in targets {
            let block = &self.g.blocks[layer];
            let mut y = product(&block.linear[t as usize], &x)?;
            for l in self.g.loras.get(&(layer, t)).into_iter().flatten() {
                y = (y + lora_update(&x, &l.a, &l.b, l.scale)?)?;
            }
            if let Some(bias) = &block.biases[t as usize] {
                y = y.broadcast_add(bias)?;
            }
            outs.push(y);
        }
        Ok(outs.try_into().expect("one output per target"))
    }

    fn rope(&mut self, x: Tensor, r: Rope) -> candle_core::Result<Tensor> {
        let (cos, sin) = &self.rope[r.sliding as usize];
        rope(&x, cos, sin, r.style, self.cfg.head_dim, self.cfg.n_rot)
    }

    fn attention(
        &mut self,
        layer: usize,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        window: Option<usize>,
    ) -> candle_core::Result<Tensor> {
        let (nkv, d) = (self.cfg.n_head_kv, self.cfg.head_dim);
        let n = self.tokens.len();
        self.kv.k[layer].slice_set(&k.squeeze(0)?, 1, self.pos0)?;
        self.kv.v[layer].slice_set(&v.reshape((n, nkv, d))?.transpose(0, 1)?.contiguous()?, 1, self.pos0)?;
        let (mask, start) = match (&self.window_mask, window) {
            (Some(masked), Some(_)) => masked,
            _ => &self.full_mask,
        };
        let len = self.pos0 + n - start;
        let keys = self.kv.k[layer].narrow(1, *start, len)?.contiguous()?;
        let values = self.kv.v[layer].narrow(1, *start, len)?.contiguous()?;
        attend(&q, &keys, &values, mask)
    }

    fn gate(&mut self, act: Gate, gate: Tensor, up: Tensor) -> candle_core::Result<Tensor> {
        gated(act, &gate, &up)
    }

    fn add(&mut self, x: Tensor, y: Tensor) -> candle_core::Result<Tensor> {
        x + y
    }
}

// The ops of the device pass, each a free function so that the op table
// (`tests/op_table.rs`) runs exactly what the pass runs.

/// Copies `m`'s blocks from the map to `dev` (in the file's layout, whatever the CPU
/// made of them); `None` for a type candle has no kernels for.
pub fn upload_matrix(m: &QMatrix, dev: &candle_core::Device) -> candle_core::Result<Option<Arc<QTensor>>> {
    let Some(dtype) = candle_dtype(m.dtype) else { return Ok(None) };
    let storage = QStorage::from_data(m.file_layout(), dev, dtype)?;
    Ok(Some(Arc::new(QTensor::new(storage, (m.rows, m.cols))?)))
}

/// `x · Wᵀ` for the rows of `x` (2-D).
///
/// candle's kernels multiply 8-bit activations. For Q4_1 and Q5_1 weights (SmolLM2's
/// type) they were measured on an H200 to be off: with several rows (MMVQ for 2–8,
/// MMQ above) by far more than that rounding (logit errors of 2, a 0.2 KL to
/// llama.cpp), and with one row twice as noisy as for the other types (7.7e-3
/// relative, decode against prefill at a 0.12 KL). Those weights are dequantized on
/// the device per product (the kernel the training test checks against the CPU to
/// 1e-7) and multiplied in f32 with cuBLAS: decode costs one extra pass over the
/// weights, which a launch-bound step hardly notices.
pub fn product(w: &QMatMul, x: &Tensor) -> candle_core::Result<Tensor> {
    match w {
        QMatMul::QTensor(q) if matches!(q.dtype(), CandleDType::Q4_1 | CandleDType::Q5_1) => {
            x.matmul(&q.dequantize(x.device())?.t()?)
        }
        _ => w.forward(x),
    }
}

/// RMS-norm of every `w`-wide part of each row of `x` (`[rows, width]`): whole rows, or
/// heads.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    let (rows, width) = x.dims2()?;
    let part = w.dim(0)?;
    if part == width {
        candle_nn::ops::rms_norm(x, w, eps)
    } else {
        // Per head: normalize `[rows, heads, head_dim]` over its last dimension.
        candle_nn::ops::rms_norm(&x.reshape((rows, width / part, part))?, w, eps)?.reshape((rows, width))
    }
}

/// `[n, heads · head_dim]` → `[1, heads, n, head_dim]`, the first `n_rot` dimensions of
/// each head turned by the `[n, n_rot/2]` tables.
pub fn rope(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    style: RopeStyle,
    head_dim: usize,
    n_rot: usize,
) -> candle_core::Result<Tensor> {
    let (n, width) = x.dims2()?;
    let heads = x.reshape((n, width / head_dim, head_dim))?.transpose(0, 1)?.contiguous()?.unsqueeze(0)?;
    let turn = |t: &Tensor| match style {
        RopeStyle::NeoX => candle_nn::rotary_emb::rope(t, cos, sin),
        RopeStyle::Adjacent => candle_nn::rotary_emb::rope_i(t, cos, sin),
    };
    if n_rot == head_dim {
        turn(&heads)
    } else {
        let turned = turn(&heads.narrow(3, 0, n_rot)?.contiguous()?)?;
        Tensor::cat(&[turned, heads.narrow(3, n_rot, head_dim - n_rot)?], 3)?.contiguous()
    }
}

/// Attention of queries `[1, n_head, n, d]` over `keys`/`values` `[n_head_kv, len, d]`
/// with an additive `[n, len]` mask: `[n, n_head · d]`. The query heads sharing a KV head
/// go in one batch (`[n_head_kv, group · n, d]`), so grouped-query attention needs no
/// copies of the keys and values.
pub fn attend(q: &Tensor, keys: &Tensor, values: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let (_, nh, n, d) = q.dims4()?;
    let (nkv, len, _) = keys.dims3()?;
    let group = nh / nkv;
    let q = q.reshape((nkv, group * n, d))?;
    let scale = 1.0 / (d as f64).sqrt();
    let scores = (q.matmul(&keys.t()?)? * scale)?.reshape((nkv, group, n, len))?.broadcast_add(mask)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((nkv, group * n, len))?;
    probs.matmul(values)?.reshape((nh, n, d))?.transpose(0, 1)?.reshape((n, nh * d))
}

/// `act(gate) · up` (candle's `gelu` is the tanh form).
pub fn gated(act: Gate, gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    let activated = match act {
        Gate::Silu => gate.silu()?,
        Gate::GeluTanh => gate.gelu()?,
    };
    activated * up
}

/// One LoRA update of the rows `x`: `scale · (x · Aᵀ) · Bᵀ`.
pub fn lora_update(x: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    (x.matmul(&a.t()?)? * scale)?.matmul(&b.t()?)
}

/// The additive mask of `n` queries at `pos0..` over the keys they can see, and the first
/// key position it covers: causal, and with a `window` only the last `window` positions
/// (the query's own included), as the CPU path's attention.
pub fn attention_mask(
    pos0: usize,
    n: usize,
    window: Option<usize>,
    dev: &candle_core::Device,
) -> candle_core::Result<(Tensor, usize)> {
    let start = window.map_or(0, |w| (pos0 + 1).saturating_sub(w));
    let len = pos0 + n - start;
    let mut mask = vec![0f32; n * len];
    for t in 0..n {
        let end = pos0 + t + 1;
        let first = window.map_or(0, |w| end.saturating_sub(w));
        for (j, m) in mask[t * len..(t + 1) * len].iter_mut().enumerate() {
            let p = start + j;
            if p >= end || p < first {
                *m = f32::NEG_INFINITY;
            }
        }
    }
    Ok((Tensor::from_vec(mask, (n, len), dev)?, start))
}

fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(n) => cuda_name(n).unwrap_or_else(|| format!("CUDA device {n}")),
        other => other.to_string(),
    }
}

/// The GPU's marketing name from `nvidia-smi` (the driver's tool, present wherever the
/// driver is), so bench rows say "NVIDIA H200" rather than an ordinal.
fn cuda_name(n: usize) -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader", &format!("--id={n}")])
        .output()
        .ok()?;
    let name = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !name.is_empty()).then_some(name)
}
