//! The trainable student: the model's one layer graph run on the recording backend
//! (`tape`), with the loss head at the chosen positions, and the backward pass that
//! carries the gradient through every frozen layer to every adapter.
//!
//! Only the adapters ([`LoraParams`]) train: the quantized weights stay in the memory map
//! and are dequantized a band at a time inside each product (`frozen`).

use super::frozen::Frozen;
use super::tape::{Id, Sequence, Tape};
use super::TrainError;
use crate::model::{graph, Adapter, Config, Model, Target};
use crate::threads::for_each_mut;

/// The trainable parameters: an adapter (its A and B already one flat vector) and the
/// gradient of every value.
#[derive(Debug, Clone)]
pub struct LoraParams {
    pub adapter: Adapter,
    /// By the adapter's `values`.
    pub grads: Vec<f32>,
}

impl LoraParams {
    /// Fresh adapters for `targets` in every layer of a model of `cfg` (see
    /// [`Adapter::init`]), with zero gradients.
    pub fn for_model(cfg: &Config, rank: usize, alpha: f32, targets: &[Target], seed: u64) -> Self {
        let adapter = Adapter::init(cfg, rank, alpha, targets, seed);
        Self { grads: vec![0.0; adapter.values.len()], adapter }
    }

    /// (A, B) of `target` in `layer` and their gradients, if adapted.
    #[allow(clippy::type_complexity)]
    pub(super) fn pair_and_grads(
        &mut self,
        layer: usize,
        target: Target,
    ) -> Option<((&[f32], &[f32]), (&mut [f32], &mut [f32]))> {
        let (a, b) = self.adapter.ranges(layer, target)?;
        assert_eq!(a.end, b.start, "B follows its A");
        let (grad_a, grad_b) = self.grads[a.start..b.end].split_at_mut(a.len());
        Some(((&self.adapter.values[a], &self.adapter.values[b]), (grad_a, grad_b)))
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
