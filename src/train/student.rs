//! The trainable student: the Llama forward pass written again for training, in f32,
//! keeping every activation the backward pass needs, with LoRA updates on the frozen
//! quantized weights, and the backward pass that carries the gradient through every frozen
//! layer to every adapter (llm.c style: an explicit forward/backward pair per layer).
//!
//! Only the adapters train: the quantized weights stay in the memory map and are
//! dequantized a band at a time inside each product (`frozen`).

use super::frozen::Frozen;
use super::{par_gemm, TrainError};
use crate::kernels::dot::{attend, dot, silu};
use crate::kernels::gemm::{transpose, Mat};
use crate::kernels::QMatrix;
use crate::model::decoder::{rope, rope_tables};
use crate::model::{Adapter, Config, Family, LoraPair, Model, Target};
use crate::rng::Rng;
use crate::threads::{for_each_mut, DisjointMut};

/// The trainable parameters: A and B of every adapted weight, flat, with their gradients.
#[derive(Debug, Clone)]
pub struct LoraParams {
    pub rank: usize,
    pub alpha: f32,
    pub targets: Vec<Target>,
    /// Offsets of (A, B) in `values` per layer and `Target as usize`.
    slots: Vec<[Option<(usize, usize)>; 7]>,
    /// (n_out, n_in) per `Target as usize`.
    shapes: [(usize, usize); 7],
    pub values: Vec<f32>,
    pub grads: Vec<f32>,
}

impl LoraParams {
    /// Fresh adapters for every layer of a model of `cfg`.
    pub fn for_model(cfg: &Config, rank: usize, alpha: f32, targets: &[Target], seed: u64) -> Self {
        Self::new(cfg.n_layer, Target::ALL.map(|t| t.shape(cfg)), rank, alpha, targets, seed)
    }

    /// Fresh adapters as PEFT initialises them: A uniform in ±1/√n_in, B zero (so the
    /// student starts exactly as the base model). `shapes` are (n_out, n_in) per target.
    pub fn new(
        n_layer: usize,
        shapes: [(usize, usize); 7],
        rank: usize,
        alpha: f32,
        targets: &[Target],
        seed: u64,
    ) -> Self {
        let mut slots = vec![[None; 7]; n_layer];
        let mut values = Vec::new();
        let mut rng = Rng::new(seed);
        for layer_slots in slots.iter_mut() {
            for &t in targets {
                let (n_out, n_in) = shapes[t as usize];
                let a0 = values.len();
                let bound = 1.0 / (n_in as f64).sqrt();
                values.extend((0..rank * n_in).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32));
                let b0 = values.len();
                values.resize(b0 + n_out * rank, 0.0);
                layer_slots[t as usize] = Some((a0, b0));
            }
        }
        let grads = vec![0.0; values.len()];
        Self { rank, alpha, targets: targets.to_vec(), slots, shapes, values, grads }
    }

    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// (A, B) of `target` in `layer`, if adapted.
    pub fn pair(&self, layer: usize, target: Target) -> Option<(&[f32], &[f32])> {
        let (a0, b0) = self.slots[layer][target as usize]?;
        let (n_out, n_in) = self.shapes[target as usize];
        Some((&self.values[a0..a0 + self.rank * n_in], &self.values[b0..b0 + n_out * self.rank]))
    }

    fn grad_ranges(&self, layer: usize, target: Target) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>)> {
        let (a0, b0) = self.slots[layer][target as usize]?;
        let (n_out, n_in) = self.shapes[target as usize];
        Some((a0..a0 + self.rank * n_in, b0..b0 + n_out * self.rank))
    }

    /// The adapter these parameters describe.
    pub fn to_adapter(&self) -> Adapter {
        let layers = (0..self.slots.len())
            .map(|l| Target::ALL.map(|t| self.pair(l, t).map(|(a, b)| LoraPair { a: a.to_vec(), b: b.to_vec() })))
            .collect();
        Adapter { rank: self.rank, alpha: self.alpha, layers }
    }

    /// Which (layer, target) each stretch of `values` belongs to, in order (for tests and
    /// reports).
    pub fn tensors(&self) -> Vec<(usize, Target, std::ops::Range<usize>, std::ops::Range<usize>)> {
        let mut out = Vec::new();
        for l in 0..self.slots.len() {
            for t in Target::ALL {
                if let Some((a, b)) = self.grad_ranges(l, t) {
                    out.push((l, t, a, b));
                }
            }
        }
        out
    }
}

/// What one layer's forward pass keeps for its backward pass.
#[derive(Default)]
struct LayerActs {
    /// Residual stream entering the layer.
    x: Vec<f32>,
    rstd1: Vec<f32>,
    xn1: Vec<f32>,
    /// Q and K after RoPE, V.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention probabilities, `n_head × T × T` (causal: the upper triangle is zero).
    probs: Vec<f32>,
    att: Vec<f32>,
    /// Residual stream after attention.
    x2: Vec<f32>,
    rstd2: Vec<f32>,
    xn2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// silu(gate) · up, the input of `ffn_down`.
    h: Vec<f32>,
    /// x · Aᵀ of each adapted weight (T × rank).
    lora_u: [Vec<f32>; 7],
    /// The layer's output (the next layer's input).
    x_out: Vec<f32>,
}

/// The frozen base model seen as a trainable student.
pub struct Student<'m> {
    model: &'m Model,
    /// Products with the frozen weights, on the model's device.
    frozen: Frozen<'m>,
    /// Keep only each layer's input and recompute its activations in the backward pass:
    /// about one layer's activations in memory instead of all, for ~1/3 more compute.
    /// Default false.
    pub recompute: bool,
}

impl<'m> Student<'m> {
    pub fn new(model: &'m Model) -> Result<Self, TrainError> {
        if model.cfg.family != Family::Llama {
            return Err(TrainError::Unsupported(format!(
                "training supports the llama family; {} is not yet",
                model.cfg.architecture
            )));
        }
        Ok(Self { model, frozen: Frozen::of(model), recompute: false })
    }

    pub fn cfg(&self) -> &Config {
        &self.model.cfg
    }

    /// Runs `tokens` (from position 0), computes logits at `positions` (each `< T`), hands
    /// each row to `loss(i, logits, dlogits)` (which fills `dlogits`; rows run in parallel)
    /// and returns what it returned per row; with `train` it accumulates the gradient of the
    /// summed loss into `lora.grads`. Runs on the current thread pool.
    pub fn run<L: Send + Default>(
        &self,
        lora: &mut LoraParams,
        tokens: &[u32],
        positions: &[usize],
        train: bool,
        loss: impl Fn(usize, &[f32], &mut [f32]) -> L + Sync,
    ) -> Result<Vec<L>, TrainError> {
        let m = self.model;
        let cfg = &m.cfg;
        let t_len = tokens.len();
        let (e, d, nh, nkv) = (cfg.n_embd, cfg.head_dim, cfg.n_head, cfg.n_head_kv);
        let (qd, kvd, ff) = (nh * d, nkv * d, cfg.n_ff);
        if t_len == 0 || t_len > cfg.n_ctx_train {
            return Err(TrainError::Invalid(format!("sequence of {t_len} tokens (1..={})", cfg.n_ctx_train)));
        }
        if let Some(&p) = positions.iter().find(|&&p| p >= t_len) {
            return Err(TrainError::Invalid(format!("loss position {p} outside a {t_len}-token sequence")));
        }
        let mut x = vec![0f32; t_len * e];
        for (row, &id) in x.chunks_exact_mut(e).zip(tokens) {
            if id as usize >= cfg.n_vocab {
                return Err(TrainError::Invalid(format!("token id {id} ≥ vocabulary size {}", cfg.n_vocab)));
            }
            m.token_embd.dequantize_row(id as usize, row);
        }
        let (cos, sin) = rope_tables(&m.inv_freq, 0, t_len);

        // Without recompute every layer's activations stay; with it, only each layer's
        // input does, and the backward pass runs the layer again just before its backward.
        let mut acts: Vec<LayerActs> = Vec::with_capacity(cfg.n_layer);
        for layer in 0..cfg.n_layer {
            let mut a = self.layer_forward(lora, layer, x, &cos, &sin)?;
            x = std::mem::take(&mut a.x_out);
            acts.push(if self.recompute { LayerActs { x: a.x, ..Default::default() } } else { a });
        }
        let (mut xnf, mut rstdf) = (Vec::new(), Vec::new());
        rms_norm_forward(&x, &m.output_norm, cfg.rms_norm_eps, &mut xnf, &mut rstdf);

        // Head at the loss positions only.
        let n_vocab = cfg.n_vocab;
        let mut rows = vec![0f32; positions.len() * e];
        for (r, &p) in rows.chunks_exact_mut(e).zip(positions) {
            r.copy_from_slice(&xnf[p * e..(p + 1) * e]);
        }
        let mut logits = vec![0f32; positions.len() * n_vocab];
        self.frozen.forward(&m.output, &rows, positions.len(), &mut logits)?;
        let mut dlogits = vec![0f32; positions.len() * n_vocab];
        let mut rows: Vec<(usize, &[f32], &mut [f32], L)> = logits
            .chunks_exact(n_vocab)
            .zip(dlogits.chunks_exact_mut(n_vocab))
            .enumerate()
            .map(|(i, (l, dl))| (i, l, dl, L::default()))
            .collect();
        for_each_mut(&mut rows, |(i, l, dl, out)| *out = loss(*i, l, dl));
        let results: Vec<L> = rows.into_iter().map(|r| r.3).collect();
        drop(logits);
        if !train {
            return Ok(results);
        }

        // Backward.
        let mut drows = vec![0f32; positions.len() * e];
        self.frozen.backward(&m.output, &dlogits, positions.len(), &mut drows)?;
        drop(dlogits);
        let mut dxnf = vec![0f32; t_len * e];
        for (r, &p) in drows.chunks_exact(e).zip(positions) {
            dxnf[p * e..(p + 1) * e].iter_mut().zip(r).for_each(|(a, b)| *a += b);
        }
        let mut dx = vec![0f32; t_len * e];
        rms_norm_backward(&x, &m.output_norm, &rstdf, &dxnf, &mut dx);
        let neg_sin: Vec<f32> = sin.iter().map(|s| -s).collect();

        for (layer, b) in m.blocks.iter().enumerate().rev() {
            let saved = acts.pop().expect("one activation set per layer");
            let a = if self.recompute { self.layer_forward(lora, layer, saved.x, &cos, &sin)? } else { saved };
            let a = &a;
            let frozen = self.frozen;
            let mut lin_back = |t: Target, input: &[f32], dy: &[f32], dinput: &mut [f32]| {
                let u = &a.lora_u[t as usize];
                linear_backward(&frozen, b.weight(t), lora, layer, t, input, u, dy, t_len, dinput)
            };
            // MLP: x_out = x2 + down(silu(gate) · up).
            let mut dh = vec![0f32; t_len * ff];
            lin_back(Target::Down, &a.h, &dx, &mut dh)?;
            let mut dgate = vec![0f32; t_len * ff];
            let mut dup = vec![0f32; t_len * ff];
            for i in 0..t_len * ff {
                let (g, u) = (a.gate[i], a.up[i]);
                let sig = 1.0 / (1.0 + (-g).exp());
                dup[i] = dh[i] * g * sig;
                dgate[i] = dh[i] * u * sig * (1.0 + g * (1.0 - sig));
            }
            drop(dh);
            let mut dxn2 = vec![0f32; t_len * e];
            lin_back(Target::Gate, &a.xn2, &dgate, &mut dxn2)?;
            lin_back(Target::Up, &a.xn2, &dup, &mut dxn2)?;
            // dx (gradient at x_out) flows to x2 directly and through the norm.
            rms_norm_backward(&a.x2, &b.ffn_norm, &a.rstd2, &dxn2, &mut dx);

            // Attention: x2 = x + o(attn(rope(q), rope(k), v)).
            let mut datt = vec![0f32; t_len * qd];
            lin_back(Target::O, &a.att, &dx, &mut datt)?;
            let mut dq = vec![0f32; t_len * qd];
            let mut dk = vec![0f32; t_len * kvd];
            let mut dv = vec![0f32; t_len * kvd];
            attention_backward(&a.q, &a.k, &a.v, &a.probs, &datt, t_len, nh, nkv, d, &mut dq, &mut dk, &mut dv);
            // RoPE is a rotation: its backward rotates by the opposite angle.
            rope(&mut dq, d, cfg.n_rot, &cos, &neg_sin, false);
            rope(&mut dk, d, cfg.n_rot, &cos, &neg_sin, false);
            let mut dxn1 = vec![0f32; t_len * e];
            lin_back(Target::Q, &a.xn1, &dq, &mut dxn1)?;
            lin_back(Target::K, &a.xn1, &dk, &mut dxn1)?;
            lin_back(Target::V, &a.xn1, &dv, &mut dxn1)?;
            rms_norm_backward(&a.x, &b.attn_norm, &a.rstd1, &dxn1, &mut dx);
        }
        Ok(results)
    }
}

impl Student<'_> {
    /// One layer's forward pass over the residual stream `x` (T × n_embd), keeping what
    /// its backward pass needs.
    fn layer_forward(
        &self,
        lora: &LoraParams,
        layer: usize,
        x: Vec<f32>,
        cos: &[f32],
        sin: &[f32],
    ) -> Result<LayerActs, TrainError> {
        let cfg = &self.model.cfg;
        let b = &self.model.blocks[layer];
        let (e, d, nh, nkv) = (cfg.n_embd, cfg.head_dim, cfg.n_head, cfg.n_head_kv);
        let (qd, kvd, ff) = (nh * d, nkv * d, cfg.n_ff);
        let t_len = x.len() / e;
        let scale = lora.scale();
        let mut a = LayerActs { x, ..Default::default() };
        rms_norm_forward(&a.x, &b.attn_norm, cfg.rms_norm_eps, &mut a.xn1, &mut a.rstd1);
        let lin = |t: Target, input: &[f32], out: &mut Vec<f32>, n_out: usize, u: &mut Vec<f32>| {
            out.resize(t_len * n_out, 0.0);
            linear_forward(&self.frozen, b.weight(t), lora.pair(layer, t), scale, input, t_len, out, u)
        };
        let mut us: [Vec<f32>; 7] = Default::default();
        lin(Target::Q, &a.xn1, &mut a.q, qd, &mut us[Target::Q as usize])?;
        lin(Target::K, &a.xn1, &mut a.k, kvd, &mut us[Target::K as usize])?;
        lin(Target::V, &a.xn1, &mut a.v, kvd, &mut us[Target::V as usize])?;
        rope(&mut a.q, d, cfg.n_rot, cos, sin, false);
        rope(&mut a.k, d, cfg.n_rot, cos, sin, false);
        a.probs = vec![0f32; nh * t_len * t_len];
        a.att = vec![0f32; t_len * qd];
        attention_forward(&a.q, &a.k, &a.v, t_len, nh, nkv, d, &mut a.probs, &mut a.att);
        let mut proj = Vec::new();
        lin(Target::O, &a.att, &mut proj, e, &mut us[Target::O as usize])?;
        a.x2 = a.x.iter().zip(&proj).map(|(p, q)| p + q).collect();
        rms_norm_forward(&a.x2, &b.ffn_norm, cfg.rms_norm_eps, &mut a.xn2, &mut a.rstd2);
        lin(Target::Gate, &a.xn2, &mut a.gate, ff, &mut us[Target::Gate as usize])?;
        lin(Target::Up, &a.xn2, &mut a.up, ff, &mut us[Target::Up as usize])?;
        a.h = a.gate.iter().zip(&a.up).map(|(&g, &u)| silu(g) * u).collect();
        lin(Target::Down, &a.h, &mut proj, e, &mut us[Target::Down as usize])?;
        a.x_out = a.x2.iter().zip(&proj).map(|(p, q)| p + q).collect();
        a.lora_u = us;
        Ok(a)
    }
}

/// `out = x · rstd · w` per row of `w.len()`, keeping `rstd = 1/√(mean(x²) + eps)`.
fn rms_norm_forward(x: &[f32], w: &[f32], eps: f32, out: &mut Vec<f32>, rstd: &mut Vec<f32>) {
    let e = w.len();
    out.resize(x.len(), 0.0);
    rstd.clear();
    for (xr, or) in x.chunks_exact(e).zip(out.chunks_exact_mut(e)) {
        let r = 1.0 / (dot(xr, xr) / e as f32 + eps).sqrt();
        rstd.push(r);
        for ((o, &xi), &wi) in or.iter_mut().zip(xr).zip(w) {
            *o = xi * r * wi;
        }
    }
}

/// `dx += ∂(x · rstd · w)/∂x · dy` (w frozen).
fn rms_norm_backward(x: &[f32], w: &[f32], rstd: &[f32], dy: &[f32], dx: &mut [f32]) {
    let e = w.len();
    for (((xr, dyr), dxr), &r) in x.chunks_exact(e).zip(dy.chunks_exact(e)).zip(dx.chunks_exact_mut(e)).zip(rstd) {
        let gx: f32 = xr.iter().zip(dyr).zip(w).map(|((&xi, &g), &wi)| g * wi * xi).sum();
        let c = r * r * r * gx / e as f32;
        for (((d, &xi), &g), &wi) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
            *d += r * g * wi - c * xi;
        }
    }
}

/// `y = x · Wᵀ + s · (x · Aᵀ) · Bᵀ`; keeps `u = x · Aᵀ`.
#[allow(clippy::too_many_arguments)]
fn linear_forward(
    frozen: &Frozen,
    w: &QMatrix,
    lora: Option<(&[f32], &[f32])>,
    scale: f32,
    x: &[f32],
    t_len: usize,
    y: &mut [f32],
    u: &mut Vec<f32>,
) -> Result<(), TrainError> {
    frozen.forward(w, x, t_len, y)?;
    let Some((a, b)) = lora else { return Ok(()) };
    let (n_out, n_in) = (w.rows, w.cols);
    let r = a.len() / n_in;
    u.resize(t_len * r, 0.0);
    par_gemm(true, t_len, r, n_in, Mat { data: x, ld: n_in }, Mat { data: a, ld: n_in }, u, r, false);
    let us: Vec<f32> = u.iter().map(|v| v * scale).collect();
    par_gemm(true, t_len, n_out, r, Mat { data: &us, ld: r }, Mat { data: b, ld: r }, y, n_out, true);
    Ok(())
}

/// Backward of [`linear_forward`]: `dx += dy · W + s · (dy · B) · A`, and the adapter's
/// gradients `dA += s · (dy · B)ᵀ · x`, `dB += s · dyᵀ · u`.
#[allow(clippy::too_many_arguments)]
fn linear_backward(
    frozen: &Frozen,
    w: &QMatrix,
    lora: &mut LoraParams,
    layer: usize,
    target: Target,
    x: &[f32],
    u: &[f32],
    dy: &[f32],
    t_len: usize,
    dx: &mut [f32],
) -> Result<(), TrainError> {
    frozen.backward(w, dy, t_len, dx)?;
    let Some((ra, rb)) = lora.grad_ranges(layer, target) else { return Ok(()) };
    let (n_out, n_in) = (w.rows, w.cols);
    let r = lora.rank;
    let s = lora.scale();
    let us: Vec<f32> = u.iter().map(|v| v * s).collect();
    let mut dyt = vec![0f32; n_out * t_len];
    transpose(dy, t_len, n_out, &mut dyt);
    let mut du = vec![0f32; t_len * r];
    {
        let b = &lora.values[rb.clone()];
        par_gemm(false, t_len, r, n_out, Mat { data: dy, ld: n_out }, Mat { data: b, ld: r }, &mut du, r, false);
    }
    du.iter_mut().for_each(|v| *v *= s);
    let gb = &mut lora.grads[rb];
    par_gemm(false, n_out, r, t_len, Mat { data: &dyt, ld: t_len }, Mat { data: &us, ld: r }, gb, r, true);
    let mut dut = vec![0f32; r * t_len];
    transpose(&du, t_len, r, &mut dut);
    let a = lora.values[ra.clone()].to_vec();
    let ga = &mut lora.grads[ra];
    par_gemm(false, r, n_in, t_len, Mat { data: &dut, ld: t_len }, Mat { data: x, ld: n_in }, ga, n_in, true);
    par_gemm(false, t_len, n_in, r, Mat { data: &du, ld: r }, Mat { data: &a, ld: n_in }, dx, n_in, true);
    Ok(())
}

/// Causal attention over a whole sequence from position 0, keeping the probabilities.
#[allow(clippy::too_many_arguments)]
fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t_len: usize,
    nh: usize,
    nkv: usize,
    d: usize,
    probs: &mut [f32],
    out: &mut [f32],
) {
    let (qd, kvd, group) = (nh * d, nkv * d, nh / nkv);
    let scale = 1.0 / (d as f32).sqrt();
    let (pp, op) = (DisjointMut::new(probs), DisjointMut::new(out));
    let mut heads: Vec<usize> = (0..nh).collect();
    for_each_mut(&mut heads, |&mut h| {
        let g = h / group;
        let mut scores = Vec::with_capacity(t_len);
        for t in 0..t_len {
            // SAFETY: head h alone writes probs[h][t][..] and out[t][h·d..(h+1)·d].
            let p = unsafe { pp.slice((h * t_len + t) * t_len, t + 1) };
            let o = unsafe { op.slice(t * qd + h * d, d) };
            let qh = &q[t * qd + h * d..t * qd + (h + 1) * d];
            // The inference kernel leaves the softmax probabilities in `scores`.
            attend(qh, k, v, 0..t + 1, kvd, g * d, scale, &mut scores, o);
            p.copy_from_slice(&scores);
        }
    });
}

/// Backward of [`attention_forward`]: fills `dq` and accumulates `dk`, `dv` (which the
/// heads of one KV group share, so a task owns a whole group).
#[allow(clippy::too_many_arguments)]
fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    dout: &[f32],
    t_len: usize,
    nh: usize,
    nkv: usize,
    d: usize,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (qd, kvd, group) = (nh * d, nkv * d, nh / nkv);
    let scale = 1.0 / (d as f32).sqrt();
    let (dqp, dkp, dvp) = (DisjointMut::new(dq), DisjointMut::new(dk), DisjointMut::new(dv));
    let mut groups: Vec<usize> = (0..nkv).collect();
    for_each_mut(&mut groups, |&mut g| {
        let mut dp = vec![0f32; t_len];
        for h in g * group..(g + 1) * group {
            for t in 0..t_len {
                let p = &probs[(h * t_len + t) * t_len..(h * t_len + t) * t_len + t + 1];
                let dot_h = &dout[t * qd + h * d..t * qd + (h + 1) * d];
                for j in 0..=t {
                    dp[j] = dot(dot_h, &v[j * kvd + g * d..j * kvd + (g + 1) * d]);
                    // SAFETY: group g alone writes dv/dk columns g·d..(g+1)·d.
                    let dvj = unsafe { dvp.slice(j * kvd + g * d, d) };
                    dvj.iter_mut().zip(dot_h).for_each(|(a, &b)| *a += p[j] * b);
                }
                let pdp: f32 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                // SAFETY: head h (in group g) alone writes dq[t][h·d..(h+1)·d].
                let dqt = unsafe { dqp.slice(t * qd + h * d, d) };
                let qh = &q[t * qd + h * d..t * qd + (h + 1) * d];
                for j in 0..=t {
                    let ds = p[j] * (dp[j] - pdp) * scale;
                    let kj = &k[j * kvd + g * d..j * kvd + (g + 1) * d];
                    dqt.iter_mut().zip(kj).for_each(|(a, &b)| *a += ds * b);
                    let dkj = unsafe { dkp.slice(j * kvd + g * d, d) };
                    dkj.iter_mut().zip(qh).for_each(|(a, &b)| *a += ds * b);
                }
            }
        }
    });
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // finite differences walk indices
mod tests {
    use super::*;

    /// Central finite difference of `f` at `x[i]`.
    fn fd(x: &mut [f32], i: usize, h: f32, f: &mut impl FnMut(&[f32]) -> f64) -> f64 {
        let old = x[i];
        x[i] = old + h;
        let up = f(x);
        x[i] = old - h;
        let down = f(x);
        x[i] = old;
        (up - down) / (2.0 * h as f64)
    }

    fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| rng.next_f64() as f32 - 0.5).collect()
    }

    fn close(a: f64, b: f64, what: &str) {
        assert!((a - b).abs() <= 2e-2 * (a.abs().max(b.abs())) + 2e-3, "{what}: analytic {a}, numeric {b}");
    }

    /// Loss = Σ g ⊙ output, so the upstream gradient is g.
    fn weighted(out: &[f32], g: &[f32]) -> f64 {
        out.iter().zip(g).map(|(&a, &b)| a as f64 * b as f64).sum()
    }

    #[test]
    fn rms_norm_backward_matches_finite_differences() {
        let mut rng = Rng::new(1);
        let (rows, e) = (3, 8);
        let mut x = random(rows * e, &mut rng);
        let w: Vec<f32> = random(e, &mut rng).iter().map(|v| v + 1.0).collect();
        let g = random(rows * e, &mut rng);
        let (mut out, mut rstd) = (Vec::new(), Vec::new());
        rms_norm_forward(&x, &w, 1e-5, &mut out, &mut rstd);
        let mut dx = vec![0f32; rows * e];
        rms_norm_backward(&x, &w, &rstd, &g, &mut dx);
        let mut f = |x: &[f32]| {
            let (mut o, mut r) = (Vec::new(), Vec::new());
            rms_norm_forward(x, &w, 1e-5, &mut o, &mut r);
            weighted(&o, &g)
        };
        for i in 0..x.len() {
            close(dx[i] as f64, fd(&mut x, i, 1e-2, &mut f), &format!("dx[{i}]"));
        }
    }

    #[test]
    fn rope_backward_is_the_inverse_rotation() {
        let mut rng = Rng::new(2);
        let (t_len, d) = (5, 8);
        let inv_freq: Vec<f64> = (0..d / 2).map(|i| 10000f64.powf(-2.0 * i as f64 / d as f64)).collect();
        let (cos, sin) = rope_tables(&inv_freq, 0, t_len);
        let neg: Vec<f32> = sin.iter().map(|s| -s).collect();
        let mut x = random(t_len * 2 * d, &mut rng);
        let g = random(x.len(), &mut rng);
        let mut dx = g.clone();
        rope(&mut dx, d, d, &cos, &neg, false);
        let mut f = |x: &[f32]| {
            let mut y = x.to_vec();
            rope(&mut y, d, d, &cos, &sin, false);
            weighted(&y, &g)
        };
        for i in 0..x.len() {
            close(dx[i] as f64, fd(&mut x, i, 1e-2, &mut f), &format!("dx[{i}]"));
        }
    }

    #[test]
    fn attention_backward_matches_finite_differences() {
        let mut rng = Rng::new(3);
        let (t_len, nh, nkv, d) = (4, 4, 2, 4);
        let mut q = random(t_len * nh * d, &mut rng);
        let mut k = random(t_len * nkv * d, &mut rng);
        let mut v = random(t_len * nkv * d, &mut rng);
        let g = random(t_len * nh * d, &mut rng);
        let run = |q: &[f32], k: &[f32], v: &[f32]| {
            let mut probs = vec![0f32; nh * t_len * t_len];
            let mut out = vec![0f32; t_len * nh * d];
            attention_forward(q, k, v, t_len, nh, nkv, d, &mut probs, &mut out);
            (probs, out)
        };
        let (probs, _) = run(&q, &k, &v);
        let (mut dq, mut dk, mut dv) = (vec![0f32; q.len()], vec![0f32; k.len()], vec![0f32; v.len()]);
        attention_backward(&q, &k, &v, &probs, &g, t_len, nh, nkv, d, &mut dq, &mut dk, &mut dv);
        for i in 0..q.len() {
            let (kk, vv) = (k.clone(), v.clone());
            let num = fd(&mut q, i, 1e-2, &mut |q: &[f32]| weighted(&run(q, &kk, &vv).1, &g));
            close(dq[i] as f64, num, &format!("dq[{i}]"));
        }
        for i in 0..k.len() {
            let (qq, vv) = (q.clone(), v.clone());
            let num = fd(&mut k, i, 1e-2, &mut |k: &[f32]| weighted(&run(&qq, k, &vv).1, &g));
            close(dk[i] as f64, num, &format!("dk[{i}]"));
            let (qq, kk) = (q.clone(), k.clone());
            let num = fd(&mut v, i, 1e-2, &mut |v: &[f32]| weighted(&run(&qq, &kk, v).1, &g));
            close(dv[i] as f64, num, &format!("dv[{i}]"));
        }
    }

    #[test]
    fn frozen_quantized_linear_with_lora_matches_finite_differences() {
        let mut rng = Rng::new(4);
        let (t_len, n_in, n_out, r) = (3, 64, 40, 4);
        let w = crate::synth::quantized_matrix(n_out, n_in, 9);
        let mut x = random(t_len * n_in, &mut rng);
        let mut a = random(r * n_in, &mut rng);
        let mut b = random(n_out * r, &mut rng);
        let g = random(t_len * n_out, &mut rng);
        let s = 2.0;
        let f = |x: &[f32], a: &[f32], b: &[f32]| {
            let mut y = vec![0f32; t_len * n_out];
            linear_forward(&Frozen::cpu(), &w, Some((a, b)), s, x, t_len, &mut y, &mut Vec::new()).unwrap();
            weighted(&y, &g)
        };
        // The analytic gradients through LoraParams' layout: one layer, target Q.
        let mut lora = LoraParams::new(1, [(n_out, n_in); 7], r, s * r as f32, &[Target::Q], 0);
        let (ra, rb) = lora.grad_ranges(0, Target::Q).unwrap();
        lora.values[ra.clone()].copy_from_slice(&a);
        lora.values[rb.clone()].copy_from_slice(&b);
        let mut u = Vec::new();
        let mut y = vec![0f32; t_len * n_out];
        linear_forward(&Frozen::cpu(), &w, Some((&a, &b)), s, &x, t_len, &mut y, &mut u).unwrap();
        let mut dx = vec![0f32; x.len()];
        linear_backward(&Frozen::cpu(), &w, &mut lora, 0, Target::Q, &x, &u, &g, t_len, &mut dx).unwrap();
        let (da, db) = (lora.grads[ra].to_vec(), lora.grads[rb].to_vec());
        for i in (0..x.len()).step_by(7) {
            let (aa, bb) = (a.clone(), b.clone());
            close(dx[i] as f64, fd(&mut x, i, 1e-2, &mut |x: &[f32]| f(x, &aa, &bb)), &format!("dx[{i}]"));
        }
        for i in (0..a.len()).step_by(5) {
            let (xx, bb) = (x.clone(), b.clone());
            close(da[i] as f64, fd(&mut a, i, 1e-2, &mut |a: &[f32]| f(&xx, a, &bb)), &format!("dA[{i}]"));
        }
        for i in 0..b.len() {
            let (xx, aa) = (x.clone(), a.clone());
            close(db[i] as f64, fd(&mut b, i, 1e-2, &mut |b: &[f32]| f(&xx, &aa, b)), &format!("dB[{i}]"));
        }
    }
}
