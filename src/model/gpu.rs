//! The forward pass on a GPU (features `cuda`, `metal`), built from candle's device ops.
//!
//! It mirrors [`super::decoder`] step for step, so both families run on it with the same
//! results within float tolerance (tests compare it against the fixtures). Weights are
//! copied once from the memory map straight into device memory (`QStorage::from_data` over
//! the mapped bytes, no host copy in between) and multiplied by candle's quantized
//! kernels; norms, RoPE and softmax use candle's fused device kernels; the KV cache lives
//! on the device. Only token ids go up and final hidden states (or logits) come back.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType as CandleDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Module, Tensor};

use super::decoder::rope_tables;
use super::device::{Device, DeviceError};
use super::{Adapter, Config, Family, Model, Target};
use crate::gguf::GgmlDType;
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

struct Block {
    attn_norm: Tensor,
    attn_q: QMatMul,
    attn_k: QMatMul,
    attn_v: QMatMul,
    attn_output: QMatMul,
    ffn_norm: Tensor,
    ffn_gate: QMatMul,
    ffn_up: QMatMul,
    ffn_down: QMatMul,
    /// Gemma 3: Q norm, K norm, post-attention norm, post-MLP norm.
    gemma: Option<[Tensor; 4]>,
}

/// One LoRA update on the device: `y += scale · (x · Aᵀ) · Bᵀ`.
struct DeviceLora {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

pub struct GpuModel {
    device: Device,
    dev: candle_core::Device,
    /// A readable name of the device (`NVIDIA H200`), for bench rows.
    name: String,
    token_embd: Arc<QTensor>,
    output: QMatMul,
    output_norm: Tensor,
    blocks: Vec<Block>,
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

impl GpuModel {
    /// Uploads every weight of `m` (already validated against the file) to `device`.
    pub fn load(m: &Model, device: Device) -> Result<Self, DeviceError> {
        let dev = open(device)?;
        let fail = failure(device);
        let mut by_address = HashMap::new();
        let mut upload = |w: &QMatrix| -> Result<Arc<QTensor>, DeviceError> {
            let dtype = candle_dtype(w.dtype).ok_or_else(|| DeviceError::Compute {
                device,
                reason: format!("candle has no {device} kernels for {} weights", w.dtype),
            })?;
            let storage = QStorage::from_data(Cow::Borrowed(w.bytes()), &dev, dtype).map_err(&fail)?;
            let q = Arc::new(QTensor::new(storage, (w.rows, w.cols)).map_err(&fail)?);
            by_address.insert(w.bytes().as_ptr() as usize, q.clone());
            Ok(q)
        };
        let linear = |q: Arc<QTensor>| QMatMul::from_arc(q).map_err(&fail);
        let vector = |v: &[f32]| Tensor::from_slice(v, v.len(), &dev).map_err(&fail);

        let token_embd = upload(&m.token_embd)?;
        // A tied head is the same mapped bytes: upload them once.
        let output = if m.output.bytes().as_ptr() == m.token_embd.bytes().as_ptr() {
            token_embd.clone()
        } else {
            upload(&m.output)?
        };
        let mut blocks = Vec::with_capacity(m.blocks.len());
        for b in &m.blocks {
            blocks.push(Block {
                attn_norm: vector(&b.attn_norm)?,
                attn_q: linear(upload(&b.attn_q)?)?,
                attn_k: linear(upload(&b.attn_k)?)?,
                attn_v: linear(upload(&b.attn_v)?)?,
                attn_output: linear(upload(&b.attn_output)?)?,
                ffn_norm: vector(&b.ffn_norm)?,
                ffn_gate: linear(upload(&b.ffn_gate)?)?,
                ffn_up: linear(upload(&b.ffn_up)?)?,
                ffn_down: linear(upload(&b.ffn_down)?)?,
                gemma: match b.gemma_norms() {
                    Some([q, k, pa, pf]) => Some([vector(q)?, vector(k)?, vector(pa)?, vector(pf)?]),
                    None => None,
                },
            });
        }
        Ok(Self {
            device,
            name: device_name(device),
            output: linear(output)?,
            token_embd,
            output_norm: vector(&m.output_norm)?,
            blocks,
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
        for (layer, pairs) in adapter.layers.iter().enumerate() {
            for target in Target::ALL {
                let Some(p) = &pairs[target as usize] else { continue };
                let r = adapter.rank;
                let a = Tensor::from_slice(&p.a, (r, p.a.len() / r), &self.dev).map_err(&fail)?;
                let b = Tensor::from_slice(&p.b, (p.b.len() / r, r), &self.dev).map_err(&fail)?;
                added.push(((layer, target), DeviceLora { a, b, scale: scale as f64 }));
            }
        }
        for (key, lora) in added {
            self.loras.entry(key).or_default().push(lora);
        }
        Ok(())
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
    fn product(&self, w: &QMatMul, x: &Tensor) -> candle_core::Result<Tensor> {
        match w {
            QMatMul::QTensor(q) if matches!(q.dtype(), CandleDType::Q4_1 | CandleDType::Q5_1) => {
                x.matmul(&q.dequantize(&self.dev)?.t()?)
            }
            _ => w.forward(x),
        }
    }

    /// The device product of the uploaded weight `w` with `n` rows `x`, by the path the
    /// forward pass takes (for the backend tests).
    pub fn product_of(&self, w: &QMatrix, x: &[f32], n: usize) -> Result<Vec<f32>, DeviceError> {
        let run = || -> candle_core::Result<Vec<f32>> {
            let x = Tensor::from_slice(&x[..n * w.cols], (n, w.cols), &self.dev)?;
            self.product(&QMatMul::from_arc(self.uploaded(w)?.clone())?, &x)?.flatten_all()?.to_vec1::<f32>()
        };
        run().map_err(failure(self.device))
    }

    /// `w · x` plus the adapters' updates of (`layer`, `target`).
    fn linear(&self, w: &QMatMul, layer: usize, target: Target, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut y = self.product(w, x)?;
        for l in self.loras.get(&(layer, target)).into_iter().flatten() {
            let u = (x.matmul(&l.a.t()?)? * l.scale)?;
            y = (y + u.matmul(&l.b.t()?)?)?;
        }
        Ok(y)
    }

    /// An empty cache for `n_ctx` positions.
    pub fn new_cache(&self, cfg: &Config, n_ctx: usize) -> Result<DeviceKv, DeviceError> {
        let layer = || Tensor::zeros((cfg.n_head_kv, n_ctx, cfg.head_dim), DType::F32, &self.dev);
        let layers = || (0..cfg.n_layer).map(|_| layer()).collect::<candle_core::Result<Vec<_>>>();
        Ok(DeviceKv { k: layers().map_err(failure(self.device))?, v: layers().map_err(failure(self.device))? })
    }

    /// Runs `tokens` at positions `pos0..` and returns the final normed hidden state of
    /// every position (`tokens.len() × n_embd`, on the host).
    pub fn forward(&self, m: &Model, tokens: &[u32], kv: &mut DeviceKv, pos0: usize) -> Result<Vec<f32>, DeviceError> {
        let x = self.forward_device(m, tokens, kv, pos0).map_err(failure(self.device))?;
        x.flatten_all().and_then(|x| x.to_vec1::<f32>()).map_err(failure(self.device))
    }

    fn forward_device(&self, m: &Model, tokens: &[u32], kv: &mut DeviceKv, pos0: usize) -> candle_core::Result<Tensor> {
        use candle_nn::ops::{rms_norm, softmax_last_dim};
        let cfg = &m.cfg;
        let n = tokens.len();
        let (e, d, nh, nkv) = (cfg.n_embd, cfg.head_dim, cfg.n_head, cfg.n_head_kv);
        let group = nh / nkv;
        let eps = cfg.rms_norm_eps;
        let gemma = cfg.family == Family::Gemma3;

        let ids = Tensor::from_slice(tokens, n, &self.dev)?;
        let mut x = self.token_embd.embedding(&ids)?;
        if gemma {
            x = (x * (e as f32).sqrt() as f64)?;
        }
        let tables = |inv_freq: &[f64]| -> candle_core::Result<(Tensor, Tensor)> {
            let (c, s) = rope_tables(inv_freq, pos0, n);
            let half = inv_freq.len();
            Ok((Tensor::from_vec(c, (n, half), &self.dev)?, Tensor::from_vec(s, (n, half), &self.dev)?))
        };
        let global = tables(&m.inv_freq)?;
        let local = if cfg.sliding_window.is_some() { tables(m.inv_freq_swa())? } else { global.clone() };
        let rotate = |t: &Tensor, (cos, sin): &(Tensor, Tensor)| -> candle_core::Result<Tensor> {
            // `t` is [1, heads, n, head_dim]; only the first n_rot dimensions turn.
            let turn = |t: &Tensor| {
                if gemma {
                    candle_nn::rotary_emb::rope(t, cos, sin)
                } else {
                    candle_nn::rotary_emb::rope_i(t, cos, sin)
                }
            };
            if cfg.n_rot == d {
                turn(t)
            } else {
                let head = turn(&t.narrow(3, 0, cfg.n_rot)?.contiguous()?)?;
                Tensor::cat(&[head, t.narrow(3, cfg.n_rot, d - cfg.n_rot)?], 3)?.contiguous()
            }
        };
        let full_mask = attention_mask(pos0, n, None, &self.dev)?;
        let window_mask = match cfg.sliding_window {
            Some(w) => Some(attention_mask(pos0, n, Some(w), &self.dev)?),
            None => None,
        };
        let scale = 1.0 / (d as f64).sqrt();

        for (layer, b) in self.blocks.iter().enumerate() {
            let h = rms_norm(&x, &b.attn_norm, eps)?;
            let mut q = self.linear(&b.attn_q, layer, Target::Q, &h)?.reshape((n, nh, d))?;
            let mut k = self.linear(&b.attn_k, layer, Target::K, &h)?.reshape((n, nkv, d))?;
            let v = self.linear(&b.attn_v, layer, Target::V, &h)?.reshape((n, nkv, d))?;
            if let Some([qn, kn, _, _]) = &b.gemma {
                q = rms_norm(&q.contiguous()?, qn, eps)?;
                k = rms_norm(&k.contiguous()?, kn, eps)?;
            }
            let sliding = cfg.is_sliding(layer);
            let table = if sliding { &local } else { &global };
            let q = rotate(&q.transpose(0, 1)?.contiguous()?.unsqueeze(0)?, table)?;
            let k = rotate(&k.transpose(0, 1)?.contiguous()?.unsqueeze(0)?, table)?;
            kv.k[layer].slice_set(&k.squeeze(0)?, 1, pos0)?;
            kv.v[layer].slice_set(&v.transpose(0, 1)?.contiguous()?, 1, pos0)?;

            let (mask, start) = match (&window_mask, sliding) {
                (Some(mask), true) => mask,
                _ => &full_mask,
            };
            let len = pos0 + n - start;
            let keys = kv.k[layer].narrow(1, *start, len)?.contiguous()?;
            let values = kv.v[layer].narrow(1, *start, len)?.contiguous()?;
            // Query heads sharing a KV head go in one batch: [n_head_kv, group · n, head_dim].
            let q = q.reshape((nkv, group * n, d))?;
            let scores = (q.matmul(&keys.t()?)? * scale)?.reshape((nkv, group, n, len))?;
            let scores = scores.broadcast_add(mask)?;
            let probs = softmax_last_dim(&scores)?.reshape((nkv, group * n, len))?;
            let att = probs.matmul(&values)?.reshape((nh, n, d))?.transpose(0, 1)?.reshape((n, nh * d))?;
            let mut proj = self.linear(&b.attn_output, layer, Target::O, &att)?;
            if let Some([_, _, post, _]) = &b.gemma {
                proj = rms_norm(&proj, post, eps)?;
            }
            x = (x + proj)?;

            let h = rms_norm(&x, &b.ffn_norm, eps)?;
            let gate = self.linear(&b.ffn_gate, layer, Target::Gate, &h)?;
            let up = self.linear(&b.ffn_up, layer, Target::Up, &h)?;
            let act = if gemma { gate.gelu()? } else { gate.silu()? };
            let mut proj = self.linear(&b.ffn_down, layer, Target::Down, &(act * up)?)?;
            if let Some([_, _, _, post]) = &b.gemma {
                proj = rms_norm(&proj, post, eps)?;
            }
            x = (x + proj)?;
        }
        rms_norm(&x, &self.output_norm, eps)
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

    /// Logits (`rows × n_vocab`, on the host) of hidden states from [`GpuModel::forward`].
    pub fn logits(&self, hidden: &[f32], n_embd: usize) -> Result<Vec<f32>, DeviceError> {
        let rows = hidden.len() / n_embd;
        let run = || -> candle_core::Result<Vec<f32>> {
            let h = Tensor::from_slice(hidden, (rows, n_embd), &self.dev)?;
            self.product(&self.output, &h)?.flatten_all()?.to_vec1::<f32>()
        };
        run().map_err(failure(self.device))
    }
}

/// The additive mask of `n` queries at `pos0..` over the keys they can see, and the first
/// key position it covers: causal, and with a `window` only the last `window` positions
/// (the query's own included), as the CPU path's attention.
fn attention_mask(
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
