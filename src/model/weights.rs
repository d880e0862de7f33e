//! A model's weights as its file holds them: every matrix a view into the memory map
//! (`QMatrix`), the small norm vectors copied out, and the RoPE frequencies. Which tensors
//! are read follows the family's [`Recipe`](super::config::Recipe), the same description
//! the layer graph runs. Tensor names are llama.cpp's.

use super::config::{Config, Family, Recipe, RopeScaling, GEMMA3_SWA_ROPE_BASE};
use super::lora::{Target, FUSED_GATE_UP, FUSED_QKV};
use super::ModelError;
use crate::gguf::GgufFile;
use crate::kernels::{self, QMatrix};

/// A layer's norm weights, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    /// Before attention (`attn_norm`).
    Attn,
    /// Before the MLP (`ffn_norm`).
    Ffn,
    /// On each query head (`attn_q_norm`; recipes with `qk_norm`).
    Q,
    /// On each key head (`attn_k_norm`).
    K,
    /// On the attention output (`post_attention_norm`; recipes with `post_norms`).
    PostAttn,
    /// On the MLP output (`post_ffw_norm`).
    PostFfn,
}

/// A norm weight of the model: one of a layer's, or the final one before the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormId {
    Layer(usize, Norm),
    Output,
}

impl Norm {
    pub const ALL: [Norm; 6] = [Norm::Attn, Norm::Ffn, Norm::Q, Norm::K, Norm::PostAttn, Norm::PostFfn];

    /// llama.cpp's tensor name within a block.
    pub fn tensor(self) -> &'static str {
        match self {
            Norm::Attn => "attn_norm",
            Norm::Ffn => "ffn_norm",
            Norm::Q => "attn_q_norm",
            Norm::K => "attn_k_norm",
            Norm::PostAttn => "post_attention_norm",
            Norm::PostFfn => "post_ffw_norm",
        }
    }

    /// Whether a model of `recipe` has this norm in every layer.
    pub fn present(self, recipe: &Recipe) -> bool {
        match self {
            Norm::Attn | Norm::Ffn => true,
            Norm::Q | Norm::K => recipe.qk_norm,
            Norm::PostAttn | Norm::PostFfn => recipe.post_norms,
        }
    }

    /// How many values it normalizes at once: a head for Q and K, a residual row else.
    pub fn width(self, cfg: &Config) -> usize {
        match self {
            Norm::Q | Norm::K => cfg.head_dim,
            _ => cfg.n_embd,
        }
    }

    /// The norm as part of `layer`.
    pub fn at(self, layer: usize) -> NormId {
        NormId::Layer(layer, self)
    }
}

/// One transformer layer's weights.
pub struct Block {
    /// By `Target as usize`.
    linear: [QMatrix; 7],
    /// By `Target as usize`; `None` where the family's projection has no bias.
    biases: [Option<Vec<f32>>; 7],
    /// By `Norm as usize`; `None` where the family has no such norm.
    norms: [Option<Vec<f32>>; 6],
}

impl Block {
    /// The frozen weight of a linear layer (the one an adapter of `target` modifies).
    pub fn weight(&self, target: Target) -> &QMatrix {
        &self.linear[target as usize]
    }

    /// The bias added to a linear layer's output, if the family has one (after any
    /// adapter's update, as llama.cpp adds it).
    pub fn bias(&self, target: Target) -> Option<&[f32]> {
        self.biases[target as usize].as_deref()
    }

    /// A norm weight of this layer, if the family has it.
    pub fn norm(&self, norm: Norm) -> Option<&[f32]> {
        self.norms[norm as usize].as_deref()
    }
}

pub struct Weights {
    /// `token_embd.weight`: looked up one quantized row at a time.
    pub token_embd: QMatrix,
    /// `output.weight`, or `token_embd.weight` again when the embeddings are tied.
    pub output: QMatrix,
    pub output_norm: Vec<f32>,
    pub blocks: Vec<Block>,
    pub rope: RopeFrequencies,
}

/// RoPE's angle per position for each rotated pair: `base^(-2i/n_rot) / freq_factor[i]`,
/// with linear scaling folded in, for each kind of layer and session.
#[derive(Debug, Clone)]
pub struct RopeFrequencies {
    global: Vec<f64>,
    /// The same with Phi-3 128K's long-context factors, used by every layer of a session
    /// whose context exceeds `n_ctx_orig` (as llama.cpp chooses).
    long: Option<Vec<f64>>,
    /// The same for sliding-window layers (Gemma 3's own base); equal to `global`
    /// elsewhere.
    sliding: Vec<f64>,
    n_ctx_orig: usize,
}

impl RopeFrequencies {
    /// The frequencies of sliding-window layers, or of the others, in a session of `n_ctx`
    /// positions.
    pub fn inv_freq(&self, sliding: bool, n_ctx: usize) -> &[f64] {
        match &self.long {
            Some(long) if n_ctx > self.n_ctx_orig => long,
            _ if sliding => &self.sliding,
            _ => &self.global,
        }
    }
}

/// A `rows × cols` view of tensor `name`, whose GGUF dimensions must be `dims`.
fn view(file: &GgufFile, name: &str, dims: &[usize], rows: usize, cols: usize) -> Result<QMatrix, ModelError> {
    let info = file.require_tensor(name)?;
    let expected: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
    if info.dims != expected {
        return Err(ModelError::BadTensorShape { tensor: name.into(), expected, found: info.dims.clone() });
    }
    if !kernels::is_supported(info.dtype) {
        return Err(ModelError::UnsupportedDType { tensor: name.into(), dtype: info.dtype });
    }
    Ok(QMatrix::new(info.dtype, rows, cols, file.map().clone(), info.data.clone()))
}

fn matrix(file: &GgufFile, name: &str, cols: usize, rows: usize) -> Result<QMatrix, ModelError> {
    view(file, name, &[cols, rows], rows, cols)
}

/// A small 1-D tensor (norm weights, RoPE factors), dequantized to an owned vector.
fn vector(file: &GgufFile, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
    let mut out = vec![0f32; n];
    view(file, name, &[n], 1, n)?.dequantize_row(0, &mut out);
    Ok(out)
}

impl Weights {
    /// Lays out every weight `cfg`'s recipe needs as a view of the mapped file; copies
    /// only the small norm vectors.
    pub fn load(file: &GgufFile, cfg: &Config) -> Result<Self, ModelError> {
        let e = cfg.n_embd;
        let token_embd = matrix(file, "token_embd.weight", e, cfg.n_vocab)?;
        let output = match file.tensor("output.weight") {
            Some(_) => matrix(file, "output.weight", e, cfg.n_vocab)?,
            None => token_embd.clone(),
        };
        let recipe = cfg.recipe();
        let blocks = (0..cfg.n_layer)
            .map(|i| {
                let name = |t: &str| format!("blk.{i}.{t}.weight");
                let biases: Vec<Option<Vec<f32>>> = Target::ALL
                    .iter()
                    .map(|t| {
                        let bias = format!("blk.{i}.{}.bias", t.tensor());
                        t.has_bias(&recipe).then(|| vector(file, &bias, t.shape(cfg).0)).transpose()
                    })
                    .collect::<Result<_, _>>()?;
                // Fused tensors first: their parts are row ranges of one view.
                let mut linear: [Option<QMatrix>; 7] = Default::default();
                let qkv_fused = file.tensor(&name(FUSED_QKV.tensor)).is_some();
                let fused = [qkv_fused.then_some(&FUSED_QKV), recipe.fused_gate_up.then_some(&FUSED_GATE_UP)];
                for f in fused.into_iter().flatten() {
                    let whole = matrix(file, &name(f.tensor), e, f.rows(cfg))?;
                    for (t, first) in f.parts(cfg) {
                        linear[t as usize] = Some(whole.row_range(first..first + t.shape(cfg).0));
                    }
                }
                for t in Target::ALL {
                    if linear[t as usize].is_none() {
                        let (n_out, n_in) = t.shape(cfg);
                        linear[t as usize] = Some(matrix(file, &name(t.tensor()), n_in, n_out)?);
                    }
                }
                let norms: Vec<Option<Vec<f32>>> = Norm::ALL
                    .iter()
                    .map(|n| n.present(&recipe).then(|| vector(file, &name(n.tensor()), n.width(cfg))).transpose())
                    .collect::<Result<_, _>>()?;
                Ok(Block {
                    linear: linear.map(|m| m.expect("every target loaded above")),
                    biases: biases.try_into().expect("one slot per target"),
                    norms: norms.try_into().expect("one slot per norm"),
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;

        // Per-pair frequency divisors: Llama 3.1+'s `rope_freqs`, or Phi-3 128K's short
        // factors, with long ones for sessions beyond the original context.
        let factors = |name: &str| file.tensor(name).map(|_| vector(file, name, cfg.n_rot / 2)).transpose();
        let short = match factors("rope_freqs.weight")? {
            Some(f) => Some(f),
            None => factors("rope_factors_short.weight")?,
        };
        let long = factors("rope_factors_long.weight")?;
        let pos_scale = match cfg.rope_scaling {
            RopeScaling::None => 1.0,
            RopeScaling::Linear { factor } => 1.0 / factor as f64,
        };
        let frequencies = |base: f32, factors: Option<&[f32]>| -> Vec<f64> {
            (0..cfg.n_rot / 2)
                .map(|i| {
                    let f = (base as f64).powf(-2.0 * i as f64 / cfg.n_rot as f64) * pos_scale;
                    match factors {
                        Some(ff) => f / ff[i] as f64,
                        None => f,
                    }
                })
                .collect()
        };
        let global = frequencies(cfg.rope_freq_base, short.as_deref());
        let rope = RopeFrequencies {
            long: long.map(|l| frequencies(cfg.rope_freq_base, Some(&l))),
            sliding: match cfg.family {
                Family::Gemma3 => frequencies(GEMMA3_SWA_ROPE_BASE, None),
                Family::Llama | Family::Qwen2 | Family::Qwen3 | Family::Phi3 => global.clone(),
            },
            global,
            n_ctx_orig: cfg.n_ctx_orig,
        };
        Ok(Self { token_embd, output, output_norm: vector(file, "output_norm.weight", e)?, blocks, rope })
    }

    /// Re-lays every layer matrix and the output head for the CPU's eight-row kernels,
    /// where this CPU has one for their type ([`QMatrix::interleaved_for_cpu`]); a tied
    /// embedding table is shared with the interleaved head (its rows are looked up from
    /// that layout). `release` gets each matrix it replaced (the file's layout), as soon as
    /// it is done, so that its pages can be handed back before the next one is read. The
    /// GPU path uploads the file's layout and never calls this.
    pub fn interleave_for_cpu(&mut self, mut release: impl FnMut(QMatrix)) {
        let mut relay = |m: &mut QMatrix| {
            if let Some(i) = m.interleaved_for_cpu() {
                release(std::mem::replace(m, i));
            }
        };
        for block in &mut self.blocks {
            block.linear.iter_mut().for_each(&mut relay);
        }
        let tied = self.output.bytes().as_ptr() == self.token_embd.bytes().as_ptr();
        relay(&mut self.output);
        if tied {
            self.token_embd = self.output.clone();
        }
    }

    /// A norm weight the graph uses.
    pub fn norm(&self, id: NormId) -> &[f32] {
        match id {
            NormId::Layer(layer, norm) => {
                self.blocks[layer].norm(norm).expect("the recipe that uses a norm is the one that loaded it")
            }
            NormId::Output => &self.output_norm,
        }
    }

    /// Total bytes of the weights the forward pass reads, by how they are stored.
    pub fn bytes(&self) -> usize {
        let per_block: usize =
            self.blocks.iter().map(|b| Target::ALL.iter().map(|&t| b.weight(t).bytes().len()).sum::<usize>()).sum();
        per_block + self.token_embd.bytes().len()
    }
}
