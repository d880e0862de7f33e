//! The trainable student: the model's one layer graph run on the recording backend
//! (`tape`), with the loss head at the chosen positions, and the backward pass that
//! carries the gradient through every frozen layer to every adapter.
//!
//! Only the adapters ([`LoraParams`]) train: the quantized weights stay in the memory map
//! and are dequantized a band at a time inside each product (`frozen`).

use super::frozen::Frozen;
use super::tape::{Id, Sequence, Tape};
use super::TrainError;
use crate::model::{graph, Adapter, Config, LoraPair, Model, Target};
use crate::rng::Rng;
use crate::threads::for_each_mut;

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

    /// (A, B) of `target` in `layer` and their gradients, if adapted.
    #[allow(clippy::type_complexity)]
    pub(super) fn pair_and_grads(
        &mut self,
        layer: usize,
        target: Target,
    ) -> Option<((&[f32], &[f32]), (&mut [f32], &mut [f32]))> {
        let (a, b) = self.grad_ranges(layer, target)?;
        assert_eq!(a.end, b.start, "B follows its A");
        let (grad_a, grad_b) = self.grads[a.start..b.end].split_at_mut(a.len());
        Some(((&self.values[a], &self.values[b]), (grad_a, grad_b)))
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

/// The frozen base model seen as a trainable student.
pub struct Student<'m> {
    model: &'m Model,
    /// Products with the frozen weights, on the model's device.
    frozen: Frozen<'m>,
    /// Keep only each layer's input and record the layer again just before its backward
    /// pass: about one layer's activations in memory instead of all, for ~1/3 more
    /// compute. Default false.
    pub recompute: bool,
}

/// What the forward pass keeps of a layer for its backward pass.
enum Kept {
    /// The whole record: the tape, its input and its output.
    Tape(Tape, Id, Id),
    /// Only the input (`recompute`).
    Input(Vec<f32>),
}

impl<'m> Student<'m> {
    pub fn new(model: &'m Model) -> Result<Self, TrainError> {
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
        let cfg = self.cfg();
        let t_len = tokens.len();
        let e = cfg.n_embd;
        if t_len == 0 || t_len > cfg.n_ctx_train {
            return Err(TrainError::Invalid(format!("sequence of {t_len} tokens (1..={})", cfg.n_ctx_train)));
        }
        if let Some(&p) = positions.iter().find(|&&p| p >= t_len) {
            return Err(TrainError::Invalid(format!("loss position {p} outside a {t_len}-token sequence")));
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= cfg.n_vocab) {
            return Err(TrainError::Invalid(format!("token id {id} ≥ vocabulary size {}", cfg.n_vocab)));
        }
        let seq = Sequence::new(self.model, self.frozen, tokens);

        // Forward, a tape per stretch of the graph.
        let mut embedding = Tape::default();
        let x = graph::embed(cfg, &mut embedding.recorder(&seq, lora))?;
        let mut x = embedding.move_out(x);
        let mut kept = Vec::with_capacity(cfg.n_layer);
        for layer in 0..cfg.n_layer {
            let (mut tape, input, output) = self.record_layer(&seq, lora, layer, x)?;
            x = tape.move_out(output);
            kept.push(if self.recompute { Kept::Input(tape.move_out(input)) } else { Kept::Tape(tape, input, output) });
        }
        let mut last = Tape::default();
        let input = last.leaf(x);
        let output = graph::output_norm(&mut last.recorder(&seq, lora), input)?;
        let xnf = last.move_out(output);

        // Head at the loss positions only.
        let n_vocab = cfg.n_vocab;
        let weights = self.model.weights();
        let mut rows = vec![0f32; positions.len() * e];
        for (r, &p) in rows.chunks_exact_mut(e).zip(positions) {
            r.copy_from_slice(&xnf[p * e..(p + 1) * e]);
        }
        let mut logits = vec![0f32; positions.len() * n_vocab];
        self.frozen.forward(&weights.output, &rows, positions.len(), &mut logits)?;
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
        self.frozen.backward(&weights.output, &dlogits, positions.len(), &mut drows)?;
        drop(dlogits);
        let mut dxnf = vec![0f32; t_len * e];
        for (r, &p) in drows.chunks_exact(e).zip(positions) {
            dxnf[p * e..(p + 1) * e].iter_mut().zip(r).for_each(|(a, b)| *a += b);
        }
        let mut dx = last.backward(&seq, lora, output, dxnf, input)?;
        for layer in (0..cfg.n_layer).rev() {
            let (tape, input, output) = match kept.pop().expect("one record per layer") {
                Kept::Tape(tape, input, output) => (tape, input, output),
                Kept::Input(x) => self.record_layer(&seq, lora, layer, x)?,
            };
            dx = tape.backward(&seq, lora, output, dx, input)?;
        }
        Ok(results)
    }

    /// Records `layer` over the residual stream `x`: its tape, input and output.
    fn record_layer(
        &self,
        seq: &Sequence,
        lora: &LoraParams,
        layer: usize,
        x: Vec<f32>,
    ) -> Result<(Tape, Id, Id), TrainError> {
        let mut tape = Tape::default();
        let input = tape.leaf(x);
        let output = graph::layer(self.cfg(), &mut tape.recorder(seq, lora), layer, input)?;
        Ok((tape, input, output))
    }
}
