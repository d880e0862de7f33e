//! Synthetic GGUF files with random weights, written by pupil's own writer: tiny ones of
//! every family for tests of the loader, the forward and backward passes and error paths,
//! and ones with the exact published shapes of real students (Llama 3.2 1B/3B) for speed
//! and memory runs where the real weights cannot be downloaded — speed does not depend on
//! the values. They are marked `general.synthetic = true`; their outputs mean
//! nothing, and quality measurements refuse them.

use std::sync::Arc;

use crate::gguf::{value::type_id, GgmlDType, GgufWriter, Value};
use crate::kernels::quantize::{quantize, quantize_q8_0};
use crate::kernels::QMatrix;
use crate::model::lora::{Fused, FUSED_GATE_UP, FUSED_QKV};
use crate::model::{Family, Norm, Target};
use crate::rng::Rng;

/// How the synthetic weight matrices are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SynthQuant {
    F32,
    #[value(name = "f16", alias = "F16")]
    F16,
    #[value(name = "q8_0", alias = "Q8_0")]
    Q8_0,
    #[value(name = "q4_0", alias = "Q4_0")]
    Q4_0,
    /// llama.cpp's Q4_K_M mix: Q4_K, with Q6_K for the token embedding (the tied output
    /// head) and for `attn_v` / `ffn_down` in the layers llama.cpp gives more bits (the
    /// first and last eighth, and every third between).
    #[value(name = "q4_k_m", alias = "Q4_K_M")]
    Q4KM,
    /// llama.cpp's Q3_K_M mix: Q3_K, with Q4_K for `attn_output`, `ffn_down` and `attn_v`
    /// (Q5_K for the first two `attn_v` and the first sixteenth of `ffn_down`), Q6_K for
    /// the output head.
    #[value(name = "q3_k_m", alias = "Q3_K_M")]
    Q3KM,
    /// llama.cpp's Q2_K mix: Q2_K, with Q3_K for `attn_output`, `ffn_down` and `attn_v`
    /// (Q4_K for `attn_v` where four or more query heads share a KV head), Q6_K for the
    /// output head.
    #[value(name = "q2_k", alias = "Q2_K")]
    Q2K,
}

/// What a weight is, as far as llama.cpp's `_K` mixes care.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// The output head (or the token embedding that is also the head).
    Output,
    /// Projection `target` of `layer` (of `n_layer`), in a model whose query heads share
    /// each KV head `n_gqa` at a time; `None` for a fused projection.
    Layer { target: Option<Target>, layer: usize, n_layer: usize, n_gqa: usize },
}

impl SynthQuant {
    /// The name llama.cpp gives the file type (`Q4_K_M`).
    pub fn label(self) -> &'static str {
        match self {
            SynthQuant::F32 => "F32",
            SynthQuant::F16 => "F16",
            SynthQuant::Q8_0 => "Q8_0",
            SynthQuant::Q4_0 => "Q4_0",
            SynthQuant::Q4KM => "Q4_K_M",
            SynthQuant::Q3KM => "Q3_K_M",
            SynthQuant::Q2K => "Q2_K",
        }
    }

    /// The type of a `cols`-wide weight with `role`, as llama.cpp's `llama-quantize`
    /// picks it (`llama_tensor_get_type`). Rows not a multiple of 256 wide cannot hold
    /// K-quants and fall back to Q8_0 (llama.cpp: Q4_0, Q5_0, Q5_1 or Q8_0 by type).
    fn dtype(self, cols: usize, role: Role) -> GgmlDType {
        use GgmlDType::*;
        let k_mix = matches!(self, SynthQuant::Q4KM | SynthQuant::Q3KM | SynthQuant::Q2K);
        if k_mix && !cols.is_multiple_of(256) {
            return Q8_0;
        }
        let (target, layer, n_layer, n_gqa) = match role {
            Role::Output if k_mix => return Q6K,
            Role::Output => (None, 0, 1, 1),
            Role::Layer { target, layer, n_layer, n_gqa } => (target, layer, n_layer, n_gqa),
        };
        match (self, target) {
            (SynthQuant::F32, _) => F32,
            (SynthQuant::F16, _) => F16,
            (SynthQuant::Q8_0, _) => Q8_0,
            (SynthQuant::Q4_0, _) => Q4_0,
            (SynthQuant::Q4KM, Some(Target::V | Target::Down)) if use_more_bits(layer, n_layer) => Q6K,
            (SynthQuant::Q4KM, _) => Q4K,
            (SynthQuant::Q3KM, Some(Target::V)) if layer < 2 => Q5K,
            (SynthQuant::Q3KM, Some(Target::Down)) if layer < n_layer / 16 => Q5K,
            (SynthQuant::Q3KM, Some(Target::V | Target::Down | Target::O)) => Q4K,
            (SynthQuant::Q3KM, _) => Q3K,
            (SynthQuant::Q2K, Some(Target::V)) if n_gqa >= 4 => Q4K,
            (SynthQuant::Q2K, Some(Target::V | Target::Down | Target::O)) => Q3K,
            (SynthQuant::Q2K, _) => Q2K,
        }
    }
}

/// llama.cpp's `use_more_bits`: which layers of `n_layer` get the wider type in a `_M` mix.
fn use_more_bits(layer: usize, n_layer: usize) -> bool {
    let first = n_layer / 8;
    layer < first || layer >= 7 * n_layer / 8 || (layer - first) % 3 == 2
}

/// Shape of a synthetic model.
#[derive(Debug, Clone)]
pub struct SynthModel {
    /// Architecture: the tensors and metadata its family's files have. Default llama.
    pub family: Family,
    /// `{arch}.attention.sliding_window` (gemma3 only). Default none.
    pub sliding_window: Option<usize>,
    /// Vocabulary: 256 byte tokens, [`SPECIAL_TOKENS`], then filler tokens up to this
    /// size. Default 259 (no filler).
    pub n_vocab: usize,
    /// Residual width. Default 32.
    pub n_embd: usize,
    /// Layers. Default 2.
    pub n_layer: usize,
    /// Query heads. Default 4.
    pub n_head: usize,
    /// Key/value heads. Default 2.
    pub n_head_kv: usize,
    /// Width of one head, where it is not `n_embd / n_head` (`{arch}.attention.key_length`,
    /// as Qwen 3's 128 at width 1024 and 16 heads). Default none.
    pub head_dim: Option<usize>,
    /// MLP width. Default 64.
    pub n_ff: usize,
    /// Trained context. Default 128.
    pub n_ctx: usize,
    /// RoPE base. Default 10000.
    pub rope_base: f32,
    /// Seed of the random weights. Default 1.
    pub seed: u64,
    /// Storage of every weight matrix (embeddings included; norms stay F32). Default F32.
    pub quant: SynthQuant,
    /// Factor on the final norm's weights, so on the logits. Default 1; the published
    /// shapes take 3, which gives their random weights next-token distributions as peaked
    /// as a trained model's (logits' standard deviation above 2): flat ones would let a
    /// comparison with llama.cpp pass whatever the architecture does.
    pub output_gain: f32,
    /// An `output.weight` of its own rather than the embeddings again. Default false.
    pub untied_output: bool,
    /// Phi-3 128K's long-context RoPE: the original context length, written with per-pair
    /// `rope_factors_short` / `_long` and the attention factor that goes with them. Default
    /// none.
    pub rope_factors: Option<usize>,
    /// `general.name`. Default "tiny synthetic llama".
    pub name: String,
}

impl Default for SynthModel {
    fn default() -> Self {
        Self {
            family: Family::Llama,
            sliding_window: None,
            n_vocab: 259,
            n_embd: 32,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            head_dim: None,
            n_ff: 64,
            n_ctx: 128,
            rope_base: 10_000.0,
            seed: 1,
            quant: SynthQuant::F32,
            output_gain: 1.0,
            untied_output: false,
            rope_factors: None,
            name: "tiny synthetic llama".into(),
        }
    }
}

/// Published shapes of real students, by name (`pupil synth --shape`).
pub const SHAPES: &[&str] =
    &["llama-3.2-1b", "llama-3.2-3b", "smollm2-135m", "qwen2.5-0.5b", "qwen3-0.6b", "phi-3-mini", "gemma-3-1b"];

impl SynthModel {
    /// The exact shape of a published model (see [`SHAPES`]), with random weights.
    pub fn shape(name: &str, quant: SynthQuant) -> Option<Self> {
        let base =
            Self { quant, output_gain: 3.0, name: format!("synthetic {name} ({})", quant.label()), ..Self::default() };
        Some(match name {
            "llama-3.2-1b" => Self {
                n_vocab: 128_256,
                n_embd: 2048,
                n_layer: 16,
                n_head: 32,
                n_head_kv: 8,
                n_ff: 8192,
                n_ctx: 131_072,
                rope_base: 500_000.0,
                ..base
            },
            "llama-3.2-3b" => Self {
                n_vocab: 128_256,
                n_embd: 3072,
                n_layer: 28,
                n_head: 24,
                n_head_kv: 8,
                n_ff: 8192,
                n_ctx: 131_072,
                rope_base: 500_000.0,
                ..base
            },
            "smollm2-135m" => Self {
                n_vocab: 49_152,
                n_embd: 576,
                n_layer: 30,
                n_head: 9,
                n_head_kv: 3,
                n_ff: 1536,
                n_ctx: 8192,
                rope_base: 100_000.0,
                ..base
            },
            "qwen2.5-0.5b" => Self {
                family: Family::Qwen2,
                n_vocab: 151_936,
                n_embd: 896,
                n_layer: 24,
                n_head: 14,
                n_head_kv: 2,
                n_ff: 4864,
                n_ctx: 32_768,
                rope_base: 1_000_000.0,
                ..base
            },
            "qwen3-0.6b" => Self {
                family: Family::Qwen3,
                n_vocab: 151_936,
                n_embd: 1024,
                n_layer: 28,
                n_head: 16,
                n_head_kv: 8,
                head_dim: Some(128),
                n_ff: 3072,
                n_ctx: 40_960,
                rope_base: 1_000_000.0,
                ..base
            },
            // Phi-3 mini 128K (and 3.5 mini, the same shape): untied head, long-context RoPE
            // factors from a 4K original context, a window wider than any context.
            "phi-3-mini" => Self {
                family: Family::Phi3,
                n_vocab: 32_064,
                n_embd: 3072,
                n_layer: 32,
                n_head: 32,
                n_head_kv: 32,
                n_ff: 8192,
                n_ctx: 131_072,
                sliding_window: Some(262_144),
                untied_output: true,
                rope_factors: Some(4096),
                ..base
            },
            "gemma-3-1b" => Self {
                family: Family::Gemma3,
                n_vocab: 262_144,
                n_embd: 1152,
                n_layer: 26,
                n_head: 4,
                n_head_kv: 1,
                head_dim: Some(256),
                n_ff: 6912,
                n_ctx: 32_768,
                rope_base: 1_000_000.0,
                sliding_window: Some(512),
                ..base
            },
            _ => return None,
        })
    }
}

/// Control tokens appended after the 256 byte tokens.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

impl SynthModel {
    /// The GGUF metadata and tensors: a byte-level vocabulary of 256 byte tokens plus
    /// [`SPECIAL_TOKENS`], and random weights scaled like an initialised network.
    pub fn writer(&self) -> GgufWriter {
        let mut w = GgufWriter::new();
        let head_dim = self.head_dim.unwrap_or(self.n_embd / self.n_head);
        let u32v = |v: usize| Value::U32(v as u32);
        let arch = self.family.architecture();
        let key = |k: &str| format!("{arch}.{k}");
        w.add("general.architecture", Value::String(arch.into()))
            .add("general.name", Value::String(self.name.clone()))
            .add("general.synthetic", Value::Bool(true))
            .add(key("context_length"), u32v(self.n_ctx))
            .add(key("embedding_length"), u32v(self.n_embd))
            .add(key("block_count"), u32v(self.n_layer))
            .add(key("feed_forward_length"), u32v(self.n_ff))
            .add(key("attention.head_count"), u32v(self.n_head))
            .add(key("attention.head_count_kv"), u32v(self.n_head_kv))
            .add(key("rope.freq_base"), Value::F32(self.rope_base))
            .add(key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5));
        if let Some(d) = self.head_dim {
            w.add(key("attention.key_length"), u32v(d)).add(key("attention.value_length"), u32v(d));
        }
        if let Some(window) = self.sliding_window {
            w.add(key("attention.sliding_window"), u32v(window));
        }
        if let Some(orig) = self.rope_factors {
            // Phi-3's converter: √(1 + ln(scale) / ln(original context)).
            let scale = self.n_ctx as f64 / orig as f64;
            let attn_factor = (1.0 + scale.ln() / (orig as f64).ln()).sqrt() as f32;
            w.add(key("rope.scaling.original_context_length"), u32v(orig))
                .add(key("rope.scaling.attn_factor"), Value::F32(attn_factor));
        }

        let table = crate::tokenizer::from_gguf::byte_level_table();
        let mut tokens: Vec<Value> = table.iter().map(|c| Value::String(c.to_string())).collect();
        let mut types = vec![Value::I32(1); tokens.len()];
        // Phi-3's vocabulary also has SentencePiece's controls (llama.cpp looks them up).
        let phi3_controls: &[&str] = if self.family == Family::Phi3 { &["<unk>", "<s>", "</s>"] } else { &[] };
        for s in SPECIAL_TOKENS.iter().chain(phi3_controls) {
            tokens.push(Value::String(s.to_string()));
            types.push(Value::I32(3));
        }
        for i in tokens.len()..self.n_vocab {
            tokens.push(Value::String(format!("<|synth_{i}|>")));
            types.push(Value::I32(1));
        }
        let n_vocab = tokens.len();
        w.add("tokenizer.ggml.model", Value::String("gpt2".into()))
            .add("tokenizer.ggml.pre", Value::String("smollm".into()))
            .add("tokenizer.ggml.tokens", Value::array(type_id::STRING, tokens))
            .add("tokenizer.ggml.token_type", Value::array(type_id::I32, types))
            .add("tokenizer.ggml.merges", Value::array(type_id::STRING, Vec::new()))
            .add("tokenizer.ggml.bos_token_id", u32v(256))
            .add("tokenizer.ggml.eos_token_id", u32v(256))
            .add("tokenizer.ggml.add_bos_token", Value::Bool(false));

        let mut rng = Rng::new(self.seed);
        let quant = self.quant;
        let mut matrix = |w: &mut GgufWriter, name: &str, cols: usize, rows: usize, role: Role| {
            let values = random_weights(&mut rng, rows, cols);
            let dims = [cols as u64, rows as u64];
            let dtype = quant.dtype(cols, role);
            let bytes = quantize(dtype, &values).expect("the synthetic types all have quantizers");
            w.add_tensor(name, &dims, dtype, bytes);
        };
        let (e, q, kv) = (self.n_embd, self.n_head * head_dim, self.n_head_kv * head_dim);
        // Tied, the embedding is also the output head, which the _K mixes widen.
        let (n_layer, n_gqa) = (self.n_layer, self.n_head / self.n_head_kv);
        let embedding =
            if self.untied_output { Role::Layer { target: None, layer: 0, n_layer, n_gqa } } else { Role::Output };
        matrix(&mut w, "token_embd.weight", e, n_vocab, embedding);
        if self.untied_output {
            matrix(&mut w, "output.weight", e, n_vocab, Role::Output);
        }
        if self.rope_factors.is_some() {
            // Divisors of each pair's frequency, growing towards the slow pairs as Phi-3's
            // do: up to 2 for the original context, up to 40 for the long one.
            let half = head_dim / 2;
            let ramp = |top: f32| -> Vec<f32> { (0..half).map(|i| top.powf(i as f32 / (half - 1) as f32)).collect() };
            w.add_f32("rope_factors_short.weight", &[half as u64], &ramp(2.0));
            w.add_f32("rope_factors_long.weight", &[half as u64], &ramp(40.0));
        }
        // Llama's norms start at one; the extra norms of other families get values around
        // one, so that a norm applied with the wrong weight shows.
        let mut norm_rng = Rng::new(self.seed ^ 0x6e6f726d);
        let mut norm = |w: &mut GgufWriter, name: String, n: usize, plain: bool, gain: f32| {
            let values: Vec<f32> =
                (0..n).map(|_| gain * if plain { 1.0 } else { 0.75 + 0.5 * norm_rng.next_f64() as f32 }).collect();
            w.add_f32(name, &[n as u64], &values);
        };
        let plain = self.family == Family::Llama;
        let recipe = self.family.recipe(e);
        // Biases of the size a trained model's have (Qwen2's reach several units), so that a
        // missing or misplaced one shows.
        let mut bias_rng = Rng::new(self.seed ^ 0x62696173);
        let fused: &[&Fused] = if recipe.fused_gate_up { &[&FUSED_QKV, &FUSED_GATE_UP] } else { &[] };
        for i in 0..self.n_layer {
            let name = |t: &str| format!("blk.{i}.{t}.weight");
            let role = |target| Role::Layer { target, layer: i, n_layer, n_gqa };
            for t in Target::ALL {
                let (n_out, n_in) = t.shape_of(e, q, kv, self.n_ff);
                match fused.iter().find(|f| f.parts.contains(&t)) {
                    // A fused tensor is written whole, where its first part comes.
                    Some(f) if f.parts[0] == t => {
                        let rows = f.parts.iter().map(|p| p.shape_of(e, q, kv, self.n_ff).0).sum();
                        matrix(&mut w, &name(f.tensor), n_in, rows, role(None));
                    }
                    Some(_) => {}
                    None => matrix(&mut w, &name(t.tensor()), n_in, n_out, role(Some(t))),
                }
                if t.has_bias(&recipe) {
                    let values: Vec<f32> = (0..n_out).map(|_| (bias_rng.next_f64() as f32 - 0.5) * 2.0).collect();
                    w.add_f32(format!("blk.{i}.{}.bias", t.tensor()), &[n_out as u64], &values);
                }
            }
            for n in Norm::ALL.into_iter().filter(|n| n.present(&recipe)) {
                let width = if matches!(n, Norm::Q | Norm::K) { head_dim } else { e };
                norm(&mut w, name(n.tensor()), width, plain, 1.0);
            }
        }
        norm(&mut w, "output_norm.weight".into(), e, plain, self.output_gain);
        w
    }
}

/// Uniform weights scaled like an initialised layer (±1.7/√cols).
fn random_weights(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
    let scale = 1.0 / (cols as f64).sqrt();
    (0..rows * cols).map(|_| ((rng.next_f64() * 2.0 - 1.0) * scale * 1.7) as f32).collect()
}

/// A random `rows × cols` Q8_0 matrix (quantized from layer-like weights), for tests.
pub fn quantized_matrix(rows: usize, cols: usize, seed: u64) -> QMatrix {
    weight_from(GgmlDType::Q8_0, rows, cols, &quantize_q8_0(&random_weights(&mut Rng::new(seed), rows, cols)))
}

/// `n` values' worth of random `dtype` blocks (or F16 values) whose f16 scales are small
/// and finite (random bits would make NaNs), for kernel tests of every type.
pub fn random_blocks(dtype: GgmlDType, n: usize, rng: &mut Rng) -> Vec<u8> {
    let mut w: Vec<u8> = (0..dtype.bytes_for(n as u64).expect("whole blocks")).map(|_| rng.next_u64() as u8).collect();
    let scale_fields: &[usize] = match dtype {
        GgmlDType::Q6K => &[208],
        GgmlDType::Q3K => &[108],
        GgmlDType::Q2K => &[80, 82],
        GgmlDType::Q4_1 | GgmlDType::Q5_1 | GgmlDType::Q4K | GgmlDType::Q5K => &[0, 2],
        _ => &[0],
    };
    for b in w.chunks_exact_mut(dtype.type_size()) {
        for &f in scale_fields {
            let v = (rng.next_f64() as f32 - 0.5) / 64.0;
            b[f..f + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    w
}

/// `bytes` as a `rows × cols` weight of `dtype`.
pub fn weight_from(dtype: GgmlDType, rows: usize, cols: usize, bytes: &[u8]) -> QMatrix {
    QMatrix::new(dtype, rows, cols, Arc::new(bytes.to_vec()), 0..bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "Miri does not support file-backed memory maps")]
    fn q4_k_m_widens_the_tensors_llama_cpp_widens() {
        // llama.cpp's Llama 3.2 1B Q4_K_M (16 layers): token_embd plus attn_v and ffn_down
        // of layers 0, 1, 4, 7, 10, 13, 14, 15 are Q6_K; everything else Q4_K.
        let wide: Vec<usize> = (0..16).filter(|&i| use_more_bits(i, 16)).collect();
        assert_eq!(wide, [0, 1, 4, 7, 10, 13, 14, 15]);
        let shape =
            SynthModel { n_embd: 256, n_ff: 512, n_layer: 16, quant: SynthQuant::Q4KM, ..SynthModel::default() };
        let dir = std::env::temp_dir().join(format!("pupil-synth-q4km-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("q4km.gguf");
        shape.writer().write(&path).unwrap();
        let file = crate::gguf::GgufFile::open(&path).unwrap();
        let count = |t: GgmlDType| file.tensors().iter().filter(|i| i.dtype == t).count();
        assert_eq!((count(GgmlDType::Q6K), count(GgmlDType::Q4K)), (1 + 2 * 8, 7 * 16 - 2 * 8));
        assert_eq!(file.require_tensor("blk.4.ffn_down.weight").unwrap().dtype, GgmlDType::Q6K);
        assert_eq!(file.require_tensor("blk.5.attn_v.weight").unwrap().dtype, GgmlDType::Q4K);
        // pupil runs what it writes.
        let model = crate::model::Model::load(&file).unwrap();
        let mut cache = model.new_cache(8).unwrap();
        let hidden = model.forward(&[1, 2, 3], &mut cache).unwrap();
        assert!(model.logits(hidden).unwrap().iter().all(|v| v.is_finite()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The tensor types of a 16-layer mix, by type, and of a few tensors by name.
    fn mix(quant: SynthQuant) -> (Vec<(GgmlDType, usize)>, impl Fn(&str) -> GgmlDType) {
        let shape =
            SynthModel { n_embd: 256, n_ff: 512, n_layer: 16, n_head: 8, n_head_kv: 2, quant, ..SynthModel::default() };
        let dir = std::env::temp_dir().join(format!("pupil-synth-{}-{}", quant.label(), std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mix.gguf");
        shape.writer().write(&path).unwrap();
        let file = crate::gguf::GgufFile::open(&path).unwrap();
        let types = [GgmlDType::Q2K, GgmlDType::Q3K, GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K];
        let counts = types.map(|t| (t, file.tensors().iter().filter(|i| i.dtype == t).count())).to_vec();
        let named: std::collections::HashMap<String, GgmlDType> =
            file.tensors().iter().map(|i| (i.name.clone(), i.dtype)).collect();
        // pupil runs what it writes.
        let model = crate::model::Model::load(&file).unwrap();
        let mut cache = model.new_cache(8).unwrap();
        let hidden = model.forward(&[1, 2, 3], &mut cache).unwrap();
        assert!(model.logits(hidden).unwrap().iter().all(|v| v.is_finite()), "{}", quant.label());
        drop(model);
        std::fs::remove_dir_all(&dir).unwrap();
        (counts, move |name: &str| named[name])
    }

    #[test]
    fn low_bit_mixes_pick_llama_cpps_types() {
        use GgmlDType::*;
        // What llama-quantize wrote for the same mixes of `synth --shape llama-3.2-1b
        // --quant f16` (16 layers, four query heads per KV head): the same counts.
        let (counts, of) = mix(SynthQuant::Q3KM);
        assert_eq!(counts, [(Q2K, 0), (Q3K, 64), (Q4K, 45), (Q5K, 3), (Q6K, 1)]);
        let names = ["blk.1.attn_v", "blk.2.attn_v", "blk.0.ffn_down", "blk.1.ffn_down", "blk.3.attn_output"];
        assert_eq!(names.map(|n| of(&format!("{n}.weight"))), [Q5K, Q4K, Q5K, Q4K, Q4K]);
        assert_eq!((of("blk.3.attn_q.weight"), of("token_embd.weight")), (Q3K, Q6K));
        let (counts, of) = mix(SynthQuant::Q2K);
        assert_eq!(counts, [(Q2K, 64), (Q3K, 32), (Q4K, 16), (Q5K, 0), (Q6K, 1)]);
        let names = ["blk.0.attn_v", "blk.0.ffn_down", "blk.0.attn_output", "blk.0.ffn_up"];
        assert_eq!(names.map(|n| of(&format!("{n}.weight"))), [Q4K, Q3K, Q3K, Q2K]);
    }

    #[test]
    fn presets_have_the_published_shapes() {
        let s = SynthModel::shape("llama-3.2-1b", SynthQuant::Q4_0).unwrap();
        assert_eq!((s.n_vocab, s.n_embd, s.n_layer, s.n_head, s.n_head_kv, s.n_ff), (128_256, 2048, 16, 32, 8, 8192));
        let s = SynthModel::shape("llama-3.2-3b", SynthQuant::Q8_0).unwrap();
        assert_eq!((s.n_embd, s.n_layer, s.n_head, s.n_head_kv), (3072, 28, 24, 8));
        let s = SynthModel::shape("qwen2.5-0.5b", SynthQuant::Q8_0).unwrap();
        assert_eq!(
            (s.family, s.n_embd, s.n_layer, s.n_head, s.n_head_kv, s.n_ff),
            (Family::Qwen2, 896, 24, 14, 2, 4864)
        );
        let s = SynthModel::shape("qwen3-0.6b", SynthQuant::Q8_0).unwrap();
        assert_eq!((s.family, s.n_embd, s.n_layer, s.n_head, s.head_dim), (Family::Qwen3, 1024, 28, 16, Some(128)));
        let s = SynthModel::shape("phi-3-mini", SynthQuant::F16).unwrap();
        assert_eq!(
            (s.family, s.n_vocab, s.n_embd, s.n_layer, s.n_head_kv, s.n_ff, s.rope_factors),
            (Family::Phi3, 32_064, 3072, 32, 32, 8192, Some(4096))
        );
        let s = SynthModel::shape("gemma-3-1b", SynthQuant::F16).unwrap();
        assert_eq!(
            (s.family, s.n_vocab, s.n_embd, s.n_layer, s.n_head, s.n_head_kv, s.head_dim, s.sliding_window),
            (Family::Gemma3, 262_144, 1152, 26, 4, 1, Some(256), Some(512))
        );
        assert!(SynthModel::shape("gpt-5", SynthQuant::F32).is_none());
    }
}
