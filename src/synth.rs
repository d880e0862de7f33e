//! Tiny Llama-architecture GGUF files with random f32 weights, written by pupil's own
//! writer: for tests of the loader, the forward pass's invariants and error paths, where
//! a real model would be slow or could not be corrupted on purpose. They are marked
//! `general.synthetic = true`; their outputs mean nothing.

use std::sync::Arc;

use crate::gguf::{value::type_id, GgmlDType, GgufWriter, Value};
use crate::kernels::QMatrix;
use crate::rng::Rng;

/// Shape of a synthetic model.
#[derive(Debug, Clone)]
pub struct TinyLlama {
    /// Residual width. Default 32.
    pub n_embd: usize,
    /// Layers. Default 2.
    pub n_layer: usize,
    /// Query heads. Default 4.
    pub n_head: usize,
    /// Key/value heads. Default 2.
    pub n_head_kv: usize,
    /// MLP width. Default 64.
    pub n_ff: usize,
    /// Trained context. Default 128.
    pub n_ctx: usize,
    /// Seed of the random weights. Default 1.
    pub seed: u64,
    /// Store the block weight matrices as Q8_0 instead of F32 (to exercise the
    /// quantized paths). Default false.
    pub q8_0: bool,
}

impl Default for TinyLlama {
    fn default() -> Self {
        Self { n_embd: 32, n_layer: 2, n_head: 4, n_head_kv: 2, n_ff: 64, n_ctx: 128, seed: 1, q8_0: false }
    }
}

/// Control tokens appended after the 256 byte tokens.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

impl TinyLlama {
    /// The GGUF metadata and tensors: a byte-level vocabulary of 256 byte tokens plus
    /// [`SPECIAL_TOKENS`], and random weights scaled like an initialised network.
    pub fn writer(&self) -> GgufWriter {
        let mut w = GgufWriter::new();
        let head_dim = self.n_embd / self.n_head;
        let u32v = |v: usize| Value::U32(v as u32);
        w.add("general.architecture", Value::String("llama".into()))
            .add("general.name", Value::String("tiny synthetic llama".into()))
            .add("general.synthetic", Value::Bool(true))
            .add("llama.context_length", u32v(self.n_ctx))
            .add("llama.embedding_length", u32v(self.n_embd))
            .add("llama.block_count", u32v(self.n_layer))
            .add("llama.feed_forward_length", u32v(self.n_ff))
            .add("llama.attention.head_count", u32v(self.n_head))
            .add("llama.attention.head_count_kv", u32v(self.n_head_kv))
            .add("llama.rope.freq_base", Value::F32(10000.0))
            .add("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));

        let table = crate::tokenizer::from_gguf::byte_level_table();
        let mut tokens: Vec<Value> = table.iter().map(|c| Value::String(c.to_string())).collect();
        let mut types = vec![Value::I32(1); tokens.len()];
        for s in SPECIAL_TOKENS {
            tokens.push(Value::String(s.into()));
            types.push(Value::I32(3));
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
        let q8_0 = self.q8_0;
        let mut matrix = |w: &mut GgufWriter, name: &str, cols: usize, rows: usize| {
            let values = random_weights(&mut rng, rows, cols);
            if q8_0 && name.starts_with("blk.") {
                w.add_tensor(name, &[cols as u64, rows as u64], GgmlDType::Q8_0, quantize_q8_0(&values));
            } else {
                w.add_f32(name, &[cols as u64, rows as u64], &values);
            }
        };
        let (e, q, kv) = (self.n_embd, self.n_head * head_dim, self.n_head_kv * head_dim);
        matrix(&mut w, "token_embd.weight", e, n_vocab);
        for i in 0..self.n_layer {
            let name = |t: &str| format!("blk.{i}.{t}.weight");
            w.add_f32(name("attn_norm"), &[e as u64], &vec![1.0; e]);
            matrix(&mut w, &name("attn_q"), e, q);
            matrix(&mut w, &name("attn_k"), e, kv);
            matrix(&mut w, &name("attn_v"), e, kv);
            matrix(&mut w, &name("attn_output"), q, e);
            w.add_f32(name("ffn_norm"), &[e as u64], &vec![1.0; e]);
            matrix(&mut w, &name("ffn_gate"), e, self.n_ff);
            matrix(&mut w, &name("ffn_up"), e, self.n_ff);
            matrix(&mut w, &name("ffn_down"), self.n_ff, e);
        }
        w.add_f32("output_norm.weight", &[e as u64], &vec![1.0; e]);
        w
    }
}

/// Uniform weights scaled like an initialised layer (±1.7/√cols).
fn random_weights(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
    let scale = 1.0 / (cols as f64).sqrt();
    (0..rows * cols).map(|_| ((rng.next_f64() * 2.0 - 1.0) * scale * 1.7) as f32).collect()
}

/// GGML's Q8_0 encoding of `values` (a multiple of 32 long): per block of 32, an f16
/// scale `max|x| / 127` and 32 signed bytes.
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    assert_eq!(values.len() % 32, 0, "Q8_0 needs whole blocks of 32");
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for block in values.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8 as u8));
    }
    out
}

/// A random `rows × cols` Q8_0 matrix in an anonymous map, for kernel tests.
pub fn quantized_matrix(rows: usize, cols: usize, seed: u64) -> QMatrix {
    let bytes = quantize_q8_0(&random_weights(&mut Rng::new(seed), rows, cols));
    let mut map = memmap2::MmapMut::map_anon(bytes.len()).expect("anonymous map");
    map.copy_from_slice(&bytes);
    let map = Arc::new(map.make_read_only().expect("read-only map"));
    QMatrix::new(GgmlDType::Q8_0, rows, cols, map, 0..bytes.len())
}
