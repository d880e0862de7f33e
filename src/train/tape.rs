//! The training backend of the layer graph (`model::graph`): the forward pass in f32 that
//! records, op by op, what the op's backward needs, and the backward pass that replays
//! the record in reverse — llm.c's explicit forward/backward pair per op, put in order by
//! the one graph instead of by a second copy of the model.
//!
//! A tape records one stretch of the graph (the embedding, one layer, the final norm), so
//! a run can keep every layer's tape, or only each layer's input and record the layer
//! again just before its backward pass (`--recompute`). Every op makes one tensor, whose
//! id is the op's index. A tensor no backward needs is freed as soon as the graph has
//! consumed it, so a tape holds about what the backward pass reads.
//!
//! Products with the frozen weights run in f32 on dequantized bands (`frozen`), so the
//! gradient is exact for the weights as stored; only the adapters train.

use super::frozen::Frozen;
use super::student::LoraParams;
use super::TrainError;
use crate::kernels::attention;
use crate::kernels::dot::{add_to_rows, gated, gated_backward, Gate};
use crate::kernels::norm::{rms_norm, rms_norm_backward};
use crate::kernels::rope::{rope, rope_tables};
use crate::model::graph::{Ops, Rope};
use crate::model::lora::{lora_backward, lora_forward};
use crate::model::{Config, Model, NormId, Target};

/// What every tape of one sequence shares.
pub(super) struct Sequence<'a> {
    pub model: &'a Model,
    pub frozen: Frozen<'a>,
    pub tokens: &'a [u32],
    /// cos and sin of positions `0..T`: for global layers, then for sliding ones.
    rope: [(Vec<f32>, Vec<f32>); 2],
}

impl<'a> Sequence<'a> {
    pub fn new(model: &'a Model, frozen: Frozen<'a>, tokens: &'a [u32]) -> Self {
        let rope = [false, true].map(|sliding| {
            let (mut cos, mut sin) = (Vec::new(), Vec::new());
            let inv_freq = model.weights().rope.inv_freq(sliding, tokens.len());
            rope_tables(inv_freq, model.cfg.rope_attn_factor, 0, tokens.len(), &mut cos, &mut sin);
            (cos, sin)
        });
        Self { model, frozen, tokens, rope }
    }

    fn cfg(&self) -> &Config {
        &self.model.cfg
    }

    fn rows(&self) -> usize {
        self.tokens.len()
    }
}

/// A tensor on a tape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Id(usize);

/// One recorded op: its inputs and what its backward needs besides their values.
enum Op {
    /// An input to the stretch (or the embedding rows): no backward.
    Leaf,
    Scale {
        x: Id,
        by: f32,
    },
    RmsNorm {
        x: Id,
        w: NormId,
        rstd: Vec<f32>,
    },
    /// One product with a frozen weight, plus the trainable adapter's update (`u` is its
    /// `scale · x · Aᵀ`; empty where the weight has no adapter).
    Linear {
        x: Id,
        layer: usize,
        target: Target,
        u: Vec<f32>,
    },
    Rope {
        x: Id,
        rope: Rope,
    },
    Attention {
        q: Id,
        k: Id,
        v: Id,
        probs: Vec<f32>,
        window: Option<usize>,
    },
    Gate {
        act: Gate,
        gate: Id,
        up: Id,
    },
    Add {
        x: Id,
        y: Id,
    },
}

#[derive(Default)]
pub(super) struct Tape {
    ops: Vec<Op>,
    /// Each tensor's values while they are still needed.
    values: Vec<Option<Vec<f32>>>,
    lens: Vec<usize>,
    /// Whether a recorded backward reads the tensor's values.
    saved: Vec<bool>,
}

impl Tape {
    /// Records an input of `values`.
    pub fn leaf(&mut self, values: Vec<f32>) -> Id {
        self.push(Op::Leaf, values)
    }

    fn push(&mut self, op: Op, values: Vec<f32>) -> Id {
        self.ops.push(op);
        self.lens.push(values.len());
        self.values.push(Some(values));
        self.saved.push(false);
        Id(self.ops.len() - 1)
    }

    fn value(&self, id: Id) -> &[f32] {
        self.values[id.0].as_deref().expect("a tensor is read only while it is kept")
    }

    /// Marks `id` as read by a backward pass, so that it is kept.
    fn save(&mut self, id: Id) -> &[f32] {
        self.saved[id.0] = true;
        self.value(id)
    }

    /// The values of `id`, which the graph hands over: moved out unless a backward pass
    /// reads them (then copied).
    fn take_or_copy(&mut self, id: Id) -> Vec<f32> {
        if self.saved[id.0] {
            self.value(id).to_vec()
        } else {
            self.values[id.0].take().expect("a tensor is consumed once")
        }
    }

    /// The graph is done with `id`: free it unless a backward pass reads it.
    fn consume(&mut self, id: Id) {
        if !self.saved[id.0] {
            self.values[id.0] = None;
        }
    }

    /// Moves the values of `id` out of the tape (a stretch's output, or an input kept
    /// instead of the whole tape).
    pub fn move_out(&mut self, id: Id) -> Vec<f32> {
        self.values[id.0].take().expect("a tensor is moved out once")
    }

    /// Records ops of `seq` run with `lora`'s adapters.
    pub fn recorder<'t>(&'t mut self, seq: &'t Sequence<'t>, lora: &'t LoraParams) -> Recorder<'t> {
        Recorder { tape: self, seq, lora }
    }

    /// Given `dout`, the gradient at `out`, returns the gradient at `wrt` (a leaf) and
    /// adds the adapters' gradients to `lora.grads`, running each op's backward in reverse.
    pub fn backward(
        &self,
        seq: &Sequence,
        lora: &mut LoraParams,
        out: Id,
        dout: Vec<f32>,
        wrt: Id,
    ) -> Result<Vec<f32>, TrainError> {
        let cfg = seq.cfg();
        let n = seq.rows();
        let mut grads = Grads { grads: self.lens.iter().map(|_| None).collect(), lens: &self.lens };
        grads.add(out, dout);
        for (i, op) in self.ops.iter().enumerate().rev() {
            // A leaf's gradient stays for the caller.
            if matches!(op, Op::Leaf) {
                continue;
            }
            let Some(mut dy) = grads.grads[i].take() else { continue };
            match op {
                Op::Leaf => unreachable!("leaves are skipped above"),
                Op::Scale { x, by } => {
                    dy.iter_mut().for_each(|g| *g *= by);
                    grads.add(*x, dy);
                }
                Op::RmsNorm { x, w, rstd } => {
                    let mut dx = grads.take(*x);
                    rms_norm_backward(self.value(*x), seq.model.weights().norm(*w), rstd, &dy, &mut dx);
                    grads.put(*x, dx);
                }
                Op::Linear { x, layer, target, u } => {
                    let mut dx = grads.take(*x);
                    seq.frozen.backward(seq.model.weights().blocks[*layer].weight(*target), &dy, n, &mut dx)?;
                    let scale = lora.adapter.scale();
                    if let Some((pair, grads_of_pair)) = lora.pair_and_grads(*layer, *target) {
                        lora_backward(pair, grads_of_pair, scale, self.value(*x), u, &dy, n, &mut dx);
                    }
                    grads.put(*x, dx);
                }
                Op::Rope { x, rope: r } => {
                    // A rotation: its backward turns the gradient back.
                    let (cos, sin) = &seq.rope[r.sliding as usize];
                    rope(&mut dy, cfg.head_dim, cfg.n_rot, cos, sin, r.style, true);
                    grads.add(*x, dy);
                }
                Op::Attention { q, k, v, probs, window } => {
                    let (mut dq, mut dk, mut dv) = (grads.take(*q), grads.take(*k), grads.take(*v));
                    let (qv, kv, vv) = (self.value(*q), self.value(*k), self.value(*v));
                    attention::causal_backward(qv, kv, vv, probs, &dy, cfg.heads(), *window, &mut dq, &mut dk, &mut dv);
                    grads.put(*q, dq);
                    grads.put(*k, dk);
                    grads.put(*v, dv);
                }
                Op::Gate { act, gate, up } => {
                    let (mut dg, mut du) = (grads.take(*gate), grads.take(*up));
                    gated_backward(*act, self.value(*gate), self.value(*up), &dy, &mut dg, &mut du);
                    grads.put(*gate, dg);
                    grads.put(*up, du);
                }
                Op::Add { x, y } => {
                    grads.add(*y, dy.clone());
                    grads.add(*x, dy);
                }
            }
        }
        Ok(grads.take(wrt))
    }
}

/// The gradients of a tape's tensors during its backward pass.
struct Grads<'a> {
    grads: Vec<Option<Vec<f32>>>,
    lens: &'a [usize],
}

impl Grads<'_> {
    /// The gradient at `id` so far (zeros if none), to add to and [`Grads::put`] back.
    fn take(&mut self, id: Id) -> Vec<f32> {
        self.grads[id.0].take().unwrap_or_else(|| vec![0.0; self.lens[id.0]])
    }

    fn put(&mut self, id: Id, g: Vec<f32>) {
        self.grads[id.0] = Some(g);
    }

    /// Adds `g` to the gradient at `id`.
    fn add(&mut self, id: Id, g: Vec<f32>) {
        match &mut self.grads[id.0] {
            Some(sum) => sum.iter_mut().zip(&g).for_each(|(a, b)| *a += b),
            none => *none = Some(g),
        }
    }
}

/// A tape being written by the graph: the training backend's [`Ops`].
pub(super) struct Recorder<'t> {
    tape: &'t mut Tape,
    seq: &'t Sequence<'t>,
    lora: &'t LoraParams,
}

impl Ops for Recorder<'_> {
    type Act = Id;
    type Error = TrainError;

    fn embed(&mut self) -> Result<Id, TrainError> {
        let e = self.seq.cfg().n_embd;
        let mut x = vec![0f32; self.seq.rows() * e];
        for (row, &id) in x.chunks_exact_mut(e).zip(self.seq.tokens) {
            self.seq.model.weights().token_embd.dequantize_row(id as usize, row);
        }
        Ok(self.tape.leaf(x))
    }

    fn scale(&mut self, x: Id, by: f32) -> Result<Id, TrainError> {
        let mut out = self.tape.take_or_copy(x);
        out.iter_mut().for_each(|v| *v *= by);
        Ok(self.tape.push(Op::Scale { x, by }, out))
    }

    fn rms_norm(&mut self, x: &Id, w: NormId) -> Result<Id, TrainError> {
        let weight = self.seq.model.weights().norm(w);
        let xv = self.tape.save(*x);
        let mut out = vec![0f32; xv.len()];
        let mut rstd = vec![0f32; xv.len() / weight.len()];
        rms_norm(xv, weight, self.seq.cfg().rms_norm_eps, &mut out, Some(&mut rstd));
        Ok(self.tape.push(Op::RmsNorm { x: *x, w, rstd }, out))
    }

    fn rms_norm_owned(&mut self, x: Id, w: NormId) -> Result<Id, TrainError> {
        self.rms_norm(&x, w)
    }

    fn linear<const N: usize>(&mut self, x: Id, layer: usize, targets: [Target; N]) -> Result<[Id; N], TrainError> {
        let n = self.seq.rows();
        let block = &self.seq.model.weights().blocks[layer];
        let mut outs = Vec::with_capacity(N);
        for target in targets {
            let w = block.weight(target);
            let xv = self.tape.save(x);
            let mut y = vec![0f32; n * w.rows];
            self.seq.frozen.forward(w, xv, n, &mut y)?;
            let mut u = Vec::new();
            if let Some((a, b)) = self.lora.adapter.pair(layer, target) {
                lora_forward(a, b, self.lora.adapter.scale(), xv, n, &mut y, &mut u);
            }
            // A frozen bias: nothing to remember for the backward pass.
            if let Some(bias) = block.bias(target) {
                add_to_rows(&mut y, bias);
            }
            outs.push(self.tape.push(Op::Linear { x, layer, target, u }, y));
        }
        Ok(outs.try_into().expect("one output per target"))
    }

    fn rope(&mut self, x: Id, r: Rope) -> Result<Id, TrainError> {
        let cfg = self.seq.cfg();
        let mut out = self.tape.take_or_copy(x);
        let (cos, sin) = &self.seq.rope[r.sliding as usize];
        rope(&mut out, cfg.head_dim, cfg.n_rot, cos, sin, r.style, false);
        Ok(self.tape.push(Op::Rope { x, rope: r }, out))
    }

    fn attention(&mut self, _layer: usize, q: Id, k: Id, v: Id, window: Option<usize>) -> Result<Id, TrainError> {
        let heads = self.seq.cfg().heads();
        let n = self.seq.rows();
        for id in [q, k, v] {
            self.tape.save(id);
        }
        let (qv, kv, vv) = (self.tape.value(q), self.tape.value(k), self.tape.value(v));
        let mut out = vec![0f32; qv.len()];
        let mut probs = vec![0f32; heads.n_head * n * n];
        attention::causal_keeping_weights(qv, kv, vv, heads, window, &mut out, &mut probs);
        Ok(self.tape.push(Op::Attention { q, k, v, probs, window }, out))
    }

    fn gate(&mut self, act: Gate, gate: Id, up: Id) -> Result<Id, TrainError> {
        let mut out = self.tape.save(gate).to_vec();
        gated(act, &mut out, self.tape.save(up));
        Ok(self.tape.push(Op::Gate { act, gate, up }, out))
    }

    fn add(&mut self, x: Id, y: Id) -> Result<Id, TrainError> {
        let mut out = self.tape.take_or_copy(x);
        out.iter_mut().zip(self.tape.value(y)).for_each(|(a, b)| *a += b);
        self.tape.consume(y);
        Ok(self.tape.push(Op::Add { x, y }, out))
    }
}
