//! Hyperparameters read from GGUF metadata: nothing about a model's shape is a constant.

use super::ModelError;
use crate::gguf::GgufFile;
use crate::kernels::attention::Heads;
use crate::kernels::dot::Gate;
use crate::kernels::rope::RopeStyle;

/// How RoPE positions are stretched beyond the trained context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Positions used as they are (the default).
    None,
    /// Positions divided by `factor` (`rope.scaling.type = linear`).
    Linear { factor: f32 },
}

/// Which member of the Llama family a file holds, and so which per-layer extras apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `llama` (Llama 2/3, SmolLM, TinyLlama, Mistral-style): SwiGLU MLP, RoPE on adjacent
    /// pairs.
    Llama,
    /// `gemma3`: embeddings scaled by √n_embd, an RMS-norm on every Q and K head, norms
    /// after attention and after the MLP, GELU(tanh)-gated MLP, RoPE on the two halves of
    /// each head, and sliding-window attention on five of every six layers with their own
    /// RoPE base.
    Gemma3,
    /// `qwen2` (Qwen 2 / 2.5): Llama's layer with biases on the Q, K and V projections and
    /// RoPE on the two halves of each head.
    Qwen2,
    /// `qwen3` (Qwen 3 dense): Llama's layer with an RMS-norm on every query and key head
    /// before RoPE, RoPE on the two halves of each head, no biases.
    Qwen3,
    /// `phi3` (Phi-3 / 3.5 mini, Phi-4 mini): Llama's layer with Q, K and V stored as one
    /// fused `attn_qkv` matrix and gate and up as one `ffn_up` of twice the MLP width, RoPE
    /// on the two halves of each head with the 128K variants' per-pair frequency factors
    /// (`rope_factors_short` / `_long`) and attention factor, and a sliding window over
    /// every layer where the metadata sets one.
    Phi3,
}

impl Family {
    pub const ALL: [Family; 5] = [Family::Llama, Family::Gemma3, Family::Qwen2, Family::Qwen3, Family::Phi3];

    /// `general.architecture` of the family's files.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Gemma3 => "gemma3",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Phi3 => "phi3",
        }
    }

    /// The layer recipe of the family's models of residual width `n_embd`.
    pub fn recipe(self, n_embd: usize) -> Recipe {
        match self {
            Family::Llama => Recipe {
                embed_scale: None,
                rope: RopeStyle::Adjacent,
                qk_norm: false,
                post_norms: false,
                gate: Gate::Silu,
                qkv_bias: false,
                fused_gate_up: false,
            },
            Family::Phi3 => Recipe { rope: RopeStyle::NeoX, fused_gate_up: true, ..Family::Llama.recipe(n_embd) },
            Family::Gemma3 => Recipe {
                embed_scale: Some((n_embd as f32).sqrt()),
                rope: RopeStyle::NeoX,
                qk_norm: true,
                post_norms: true,
                gate: Gate::GeluTanh,
                qkv_bias: false,
                fused_gate_up: false,
            },
            Family::Qwen2 => Recipe {
                embed_scale: None,
                rope: RopeStyle::NeoX,
                qk_norm: false,
                post_norms: false,
                gate: Gate::Silu,
                qkv_bias: true,
                fused_gate_up: false,
            },
            Family::Qwen3 => Recipe {
                embed_scale: None,
                rope: RopeStyle::NeoX,
                qk_norm: true,
                post_norms: false,
                gate: Gate::Silu,
                qkv_bias: false,
                fused_gate_up: false,
            },
        }
    }
}

/// What a family's layers are made of, beyond the steps every family shares: the one place
/// that says how the families differ. The layer graph (`graph.rs`) runs these steps; the
/// weight loader reads the tensors they need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recipe {
    /// Embeddings multiplied by this (Gemma: √n_embd).
    pub embed_scale: Option<f32>,
    /// How RoPE pairs each head's dimensions.
    pub rope: RopeStyle,
    /// An RMS-norm on every query and key head before RoPE (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// RMS-norms on the attention and MLP outputs before each residual add
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    /// The MLP's gate activation.
    pub gate: Gate,
    /// Biases added to the query, key and value projections (`attn_{q,k,v}.bias`).
    pub qkv_bias: bool,
    /// The MLP's gate and up projections stored as one `ffn_up` tensor, gate rows first
    /// ([`FUSED_GATE_UP`](super::lora::FUSED_GATE_UP)).
    pub fused_gate_up: bool,
}

/// In Gemma 3 every sixth layer attends globally; the others use the sliding window.
pub const GEMMA3_GLOBAL_EVERY: usize = 6;
/// RoPE base of Gemma 3's sliding-window layers (not stored in GGUF; llama.cpp's value).
pub const GEMMA3_SWA_ROPE_BASE: f32 = 10_000.0;

/// Llama-family hyperparameters, keyed as llama.cpp writes them (`{arch}.*`).
#[derive(Debug, Clone)]
pub struct Config {
    /// `general.architecture`.
    pub architecture: String,
    /// Derived from the architecture.
    pub family: Family,
    /// `{arch}.attention.sliding_window`: how many positions a sliding-window layer sees
    /// (Gemma 3, Phi-3; `None` elsewhere). llama.cpp ignores Phi-3's for now (its
    /// converter's value is doubtful); pupil applies it as Hugging Face does, so the two
    /// agree up to the window's length (2047 positions on Phi-3 mini 4K).
    pub sliding_window: Option<usize>,
    /// Vocabulary size: length of `tokenizer.ggml.tokens` (or `{arch}.vocab_size`).
    pub n_vocab: usize,
    /// `{arch}.embedding_length`: width of the residual stream.
    pub n_embd: usize,
    /// `{arch}.block_count`.
    pub n_layer: usize,
    /// `{arch}.attention.head_count`.
    pub n_head: usize,
    /// `{arch}.attention.head_count_kv`; defaults to `n_head` (no grouped-query attention).
    pub n_head_kv: usize,
    /// `{arch}.attention.key_length`; defaults to `n_embd / n_head`.
    pub head_dim: usize,
    /// `{arch}.feed_forward_length`.
    pub n_ff: usize,
    /// `{arch}.context_length`: the context the model was trained with.
    pub n_ctx_train: usize,
    /// `{arch}.rope.freq_base`; default 10000.
    pub rope_freq_base: f32,
    /// `{arch}.rope.dimension_count`: leading dimensions of each head that are rotated;
    /// defaults to `head_dim`.
    pub n_rot: usize,
    /// `{arch}.rope.scaling.type` / `.factor`.
    pub rope_scaling: RopeScaling,
    /// `{arch}.rope.scaling.attn_factor`: a factor on every rotated value (Phi-3 128K's
    /// `√(1 + ln(scale) / ln(n_ctx_orig))`); default 1.
    pub rope_attn_factor: f32,
    /// `{arch}.rope.scaling.original_context_length`: the context the RoPE frequencies were
    /// trained for before any extension; a session longer than this switches Phi-3 to its
    /// long-context factors. Defaults to `n_ctx_train`.
    pub n_ctx_orig: usize,
    /// `{arch}.attention.layer_norm_rms_epsilon`; default 1e-5.
    pub rms_norm_eps: f32,
}

/// Refuses sizes that would make the forward pass allocate absurd buffers.
const MAX_DIM: u64 = 1 << 20;

impl Config {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ModelError> {
        let arch = file.require_str("general.architecture")?.to_string();
        let Some(family) = Family::ALL.into_iter().find(|f| f.architecture() == arch) else {
            return Err(ModelError::UnsupportedArchitecture(arch));
        };
        let key = |k: &str| format!("{arch}.{k}");
        let dim = |k: &str| -> Result<usize, ModelError> {
            let v = file.require_u64(&key(k))?;
            if v == 0 || v > MAX_DIM {
                return Err(ModelError::BadConfig(format!("{} = {v} is out of range", key(k))));
            }
            Ok(v as usize)
        };
        let opt_dim = |k: &str| -> Result<Option<usize>, ModelError> {
            match file.get_u64(&key(k))? {
                Some(v) if v == 0 || v > MAX_DIM => {
                    Err(ModelError::BadConfig(format!("{} = {v} is out of range", key(k))))
                }
                other => Ok(other.map(|v| v as usize)),
            }
        };
        let n_embd = dim("embedding_length")?;
        let n_head = dim("attention.head_count")?;
        let n_head_kv = opt_dim("attention.head_count_kv")?.unwrap_or(n_head);
        if n_head % n_head_kv != 0 {
            return Err(ModelError::BadConfig(format!(
                "head_count {n_head} is not a multiple of head_count_kv {n_head_kv}"
            )));
        }
        let head_dim = match opt_dim("attention.key_length")? {
            Some(d) => d,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => {
                return Err(ModelError::BadConfig(format!(
                    "embedding_length {n_embd} is not a multiple of head_count {n_head}"
                )))
            }
        };
        let n_rot = opt_dim("rope.dimension_count")?.unwrap_or(head_dim);
        if n_rot > head_dim || n_rot % 2 != 0 {
            return Err(ModelError::BadConfig(format!(
                "rope.dimension_count {n_rot} does not fit head size {head_dim}"
            )));
        }
        let n_vocab = match file.get_array("tokenizer.ggml.tokens")? {
            Some(tokens) => tokens.len(),
            None => dim("vocab_size")?,
        };
        let rope_scaling = match file.get_str(&key("rope.scaling.type"))? {
            None | Some("none") => RopeScaling::None,
            Some("linear") => {
                let factor = file.get_f64(&key("rope.scaling.factor"))?.unwrap_or(1.0) as f32;
                if !(factor.is_finite() && factor > 0.0) {
                    return Err(ModelError::BadConfig(format!("rope.scaling.factor {factor} must be positive")));
                }
                RopeScaling::Linear { factor }
            }
            Some(other) => return Err(ModelError::UnsupportedRopeScaling(other.to_string())),
        };
        let rope_freq_base = file.get_f64(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32;
        let rms_norm_eps = file.get_f64(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5) as f32;
        if !(rope_freq_base.is_finite() && rope_freq_base > 0.0 && rms_norm_eps.is_finite() && rms_norm_eps >= 0.0) {
            return Err(ModelError::BadConfig("rope.freq_base or layer_norm_rms_epsilon out of range".into()));
        }
        let rope_attn_factor = file.get_f64(&key("rope.scaling.attn_factor"))?.unwrap_or(1.0) as f32;
        if !(rope_attn_factor.is_finite() && rope_attn_factor > 0.0) {
            return Err(ModelError::BadConfig(format!("rope.scaling.attn_factor {rope_attn_factor} must be positive")));
        }
        // Phi's converter writes 0 for "no window" (Phi-4).
        let sliding_window = match family {
            Family::Gemma3 => opt_dim("attention.sliding_window")?,
            Family::Phi3 => match file.get_u64(&key("attention.sliding_window"))? {
                None | Some(0) => None,
                Some(_) => opt_dim("attention.sliding_window")?,
            },
            Family::Llama | Family::Qwen2 | Family::Qwen3 => None,
        };
        let n_ctx_train = dim("context_length")?;
        Ok(Self {
            family,
            sliding_window,
            n_vocab,
            n_embd,
            n_layer: dim("block_count")?,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: dim("feed_forward_length")?,
            n_ctx_train,
            n_ctx_orig: opt_dim("rope.scaling.original_context_length")?.unwrap_or(n_ctx_train),
            rope_attn_factor,
            rope_freq_base,
            n_rot,
            rope_scaling,
            rms_norm_eps,
            architecture: arch,
        })
    }

    /// The family's layer recipe.
    pub fn recipe(&self) -> Recipe {
        self.family.recipe(self.n_embd)
    }

    /// How many positions `layer` attends over: the sliding window on its sliding layers,
    /// everything before it elsewhere.
    pub fn window(&self, layer: usize) -> Option<usize> {
        if self.is_sliding(layer) {
            self.sliding_window
        } else {
            None
        }
    }

    /// Whether `layer` attends only within the sliding window: five of every six layers of
    /// Gemma 3, every layer of a Phi-3 that has a window.
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.sliding_window.is_some()
            && match self.family {
                Family::Gemma3 => !(layer + 1).is_multiple_of(GEMMA3_GLOBAL_EVERY),
                Family::Phi3 => true,
                Family::Llama | Family::Qwen2 | Family::Qwen3 => false,
            }
    }

    /// The attention layers' head layout.
    pub fn heads(&self) -> Heads {
        Heads { n_head: self.n_head, n_head_kv: self.n_head_kv, head_dim: self.head_dim }
    }

    /// Width of one position's keys (or values) across all KV heads.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}
