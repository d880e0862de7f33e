//! The decoder, written once: embed → [RMS-norm → attention → residual → RMS-norm →
//! gated MLP → residual] × n_layer → RMS-norm, with each family's extras (Q/K norms,
//! post-norms, embedding scale, RoPE pairing, gate, projection biases, sliding windows)
//! taken from its [`Recipe`](super::config::Recipe).
//!
//! What the model *is* lives here; how an op *runs* lives behind [`Ops`]. Three backends
//! implement it: the CPU inference pass (`model::cpu`: pupil's kernels over the mapped
//! weights and the KV cache), the training pass (`train::tape`: the same kernels in f32,
//! recording what each op's backward needs) and the GPU pass (`model::gpu`: candle's
//! device ops). A new family is a new recipe (and, if it brings a new kind of step, a new
//! op in every backend); a new backend is one `Ops` implementation.
//!
//! Activations are `rows × width`, one row per token of the batch, row-major. Ops that
//! take an activation by value consume it (a backend may reuse its buffer); `rms_norm`
//! borrows, because the residual stream it normalizes is added to afterwards.

use super::config::Config;
use super::lora::Target;
use super::weights::{Norm, NormId};
use crate::kernels::dot::Gate;
use crate::kernels::rope::RopeStyle;

/// Which RoPE a projection gets: the family's pairing, with the frequencies of
/// sliding-window layers or of the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rope {
    pub style: RopeStyle,
    pub sliding: bool,
}

/// The steps the layer graph is made of. Each backend runs them its own way; the graph
/// below is the only place that says in which order they run.
pub trait Ops {
    /// One activation (`rows × width`).
    type Act;
    type Error;

    /// The embedding rows of the tokens this pass runs.
    fn embed(&mut self) -> Result<Self::Act, Self::Error>;
    /// `x · by`.
    fn scale(&mut self, x: Self::Act, by: f32) -> Result<Self::Act, Self::Error>;
    /// RMS-norm of every `w`-wide part of every row (a whole row, or one head), into a new
    /// activation.
    fn rms_norm(&mut self, x: &Self::Act, w: NormId) -> Result<Self::Act, Self::Error>;
    /// [`Ops::rms_norm`] of an activation no longer needed as it was.
    fn rms_norm_owned(&mut self, x: Self::Act, w: NormId) -> Result<Self::Act, Self::Error>;
    /// `x · Wᵀ` for each of `targets`' weights in `layer`, plus the adapters' updates of
    /// those weights (LoRA is applied here and nowhere else), plus the projection's bias
    /// where the family has one.
    fn linear<const N: usize>(
        &mut self,
        x: Self::Act,
        layer: usize,
        targets: [Target; N],
    ) -> Result<[Self::Act; N], Self::Error>;
    /// Rotates every head of `x` by its token's position.
    fn rope(&mut self, x: Self::Act, rope: Rope) -> Result<Self::Act, Self::Error>;
    /// Causal grouped-query attention of the new queries over the keys and values of
    /// every position so far (this pass's included), within `window` positions if given.
    fn attention(
        &mut self,
        layer: usize,
        q: Self::Act,
        k: Self::Act,
        v: Self::Act,
        window: Option<usize>,
    ) -> Result<Self::Act, Self::Error>;
    /// `act(gate) · up`.
    fn gate(&mut self, act: Gate, gate: Self::Act, up: Self::Act) -> Result<Self::Act, Self::Error>;
    /// The residual add `x + y`.
    fn add(&mut self, x: Self::Act, y: Self::Act) -> Result<Self::Act, Self::Error>;
}

/// The residual stream entering the first layer.
pub fn embed<O: Ops>(cfg: &Config, ops: &mut O) -> Result<O::Act, O::Error> {
    let x = ops.embed()?;
    match cfg.recipe().embed_scale {
        Some(s) => ops.scale(x, s),
        None => Ok(x),
    }
}

/// One transformer layer over the residual stream `x`.
pub fn layer<O: Ops>(cfg: &Config, ops: &mut O, layer: usize, x: O::Act) -> Result<O::Act, O::Error> {
    let recipe = cfg.recipe();
    let rope = Rope { style: recipe.rope, sliding: cfg.is_sliding(layer) };

    // Attention.
    let h = ops.rms_norm(&x, Norm::Attn.at(layer))?;
    let [mut q, mut k, v] = ops.linear(h, layer, [Target::Q, Target::K, Target::V])?;
    if recipe.qk_norm {
        q = ops.rms_norm_owned(q, Norm::Q.at(layer))?;
        k = ops.rms_norm_owned(k, Norm::K.at(layer))?;
    }
    let q = ops.rope(q, rope)?;
    let k = ops.rope(k, rope)?;
    let attended = ops.attention(layer, q, k, v, cfg.window(layer))?;
    let [mut out] = ops.linear(attended, layer, [Target::O])?;
    if recipe.post_norms {
        out = ops.rms_norm_owned(out, Norm::PostAttn.at(layer))?;
    }
    let x = ops.add(x, out)?;

    // Gated MLP.
    let h = ops.rms_norm(&x, Norm::Ffn.at(layer))?;
    let [gate, up] = ops.linear(h, layer, [Target::Gate, Target::Up])?;
    let h = ops.gate(recipe.gate, gate, up)?;
    let [mut out] = ops.linear(h, layer, [Target::Down])?;
    if recipe.post_norms {
        out = ops.rms_norm_owned(out, Norm::PostFfn.at(layer))?;
    }
    ops.add(x, out)
}

/// The final RMS-norm: what the output head reads.
pub fn output_norm<O: Ops>(ops: &mut O, x: O::Act) -> Result<O::Act, O::Error> {
    ops.rms_norm_owned(x, NormId::Output)
}

/// The whole decoder: the final (normed) hidden state of every token.
pub fn forward<O: Ops>(cfg: &Config, ops: &mut O) -> Result<O::Act, O::Error> {
    let mut x = embed(cfg, ops)?;
    for l in 0..cfg.n_layer {
        x = layer(cfg, ops, l, x)?;
    }
    output_norm(ops, x)
}
