//! Training and inference run one layer graph, so with zero adapters the training forward
//! gives the inference forward's logits. They differ in one respect, on purpose: inference
//! multiplies quantized weights by 8-bit activations (as llama.cpp does, for speed),
//! training by f32 activations (so gradients are exact for the stored weights).
//!
//! - Models with F32 weights take no 8-bit path in either: there the two must agree to
//!   float rounding, for every family.
//! - The real quantized models: the difference is that rounding. Measured on the sample
//!   corpus (96 positions): SmolLM2 mean KL 0.0031, worst 0.0088, max |Δ logit| 1.15;
//!   Gemma 3 mean KL 0.013, worst 0.14, max |Δ logit| 3.6 (Gemma's activations have large
//!   outliers, which per-block 8-bit scales round coarsely: with its layer weights merged
//!   to F32, so that only the head rounds, the same comparison gives mean KL 0.0004).

mod common;

use common::*;
use pupil::generate::sampler::argmax;
use pupil::generate::Runtime;
use pupil::model::Target;
use pupil::train::loss::full_kl;
use pupil::train::{LoraParams, Student};

/// Mean KL over positions, as the fixtures allow between pupil and llama.cpp.
const MAX_MEAN_KL: f64 = 0.03;
/// Worst single position: the fixtures' 0.1, with room for Gemma's measured 0.14.
const MAX_POSITION_KL: f64 = 0.2;

/// Every position's logits from the training forward (zero adapters: B = 0) and from the
/// inference forward, on the sample corpus.
fn both_forwards(rt: &Runtime, n: usize, text: std::path::PathBuf) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let text = std::fs::read_to_string(text).unwrap();
    let ids: Vec<u32> = rt.tokenizer.encode(&text, false).unwrap().into_iter().take(n).collect();
    assert_eq!(ids.len(), n, "the sample corpus is long enough");
    let positions: Vec<usize> = (0..n).collect();
    let mut lora = LoraParams::for_model(&rt.model.cfg, 4, 8.0, &Target::ALL, 1);
    let student = Student::new(&rt.model).unwrap();
    let trained =
        rt.pool.install(|| student.run(&mut lora, &ids, &positions, false, |_, logits, _| logits.to_vec())).unwrap();
    (trained, all_logits(rt, &ids))
}

fn check(name: &str) {
    let Some(path) = model(name) else { return };
    let rt = Runtime::load_path(&path, 2).unwrap();
    let (trained, inferred) = both_forwards(&rt, 96, repo_path("targets/sample-corpus.txt"));
    let (mut sum, mut worst, mut max_delta, mut same) = (0f64, 0f64, 0f32, 0);
    for (t, i) in trained.iter().zip(&inferred) {
        let kl = full_kl(i, t);
        sum += kl;
        worst = worst.max(kl);
        max_delta = t.iter().zip(i).map(|(a, b)| (a - b).abs()).fold(max_delta, f32::max);
        same += (argmax(t) == argmax(i)) as usize;
    }
    let mean = sum / trained.len() as f64;
    eprintln!(
        "{name}: training vs inference forward over {} positions: mean KL {mean:.5}, worst {worst:.5}, \
         max |Δ logit| {max_delta:.3}, top-1 equal {same}/{}",
        trained.len(),
        trained.len()
    );
    assert!(mean <= MAX_MEAN_KL && worst <= MAX_POSITION_KL, "{name}: mean KL {mean:.4}, worst {worst:.4}");
    assert!(same * 10 >= trained.len() * 9, "{name}: top-1 equal at only {same}/{}", trained.len());
}

#[test]
fn smollm2_training_forward_equals_inference_forward() {
    check(SMOLLM2);
}

#[test]
fn gemma3_training_forward_equals_inference_forward() {
    check(GEMMA3);
}

#[test]
fn qwen25_training_forward_equals_inference_forward() {
    check(QWEN25);
}

/// Tiny F32 models of every family (gemma3 and phi3 with a window shorter than the
/// sequence, phi3 with fused projections and RoPE factors):
/// no 8-bit rounding on either side and an f32 KV cache (the default f16 one rounds the
/// keys and values training keeps in f32), so the logits agree to float rounding.
#[test]
fn with_f32_weights_training_and_inference_agree_to_rounding() {
    use pupil::model::{CacheType, CacheTypes, Family};
    use pupil::synth::{SynthModel, SynthQuant};
    for shape in [
        SynthModel { quant: SynthQuant::F32, ..SynthModel::default() },
        SynthModel {
            family: Family::Gemma3,
            sliding_window: Some(5),
            n_layer: 6,
            rope_base: 1e6,
            quant: SynthQuant::F32,
            ..SynthModel::default()
        },
        SynthModel { family: Family::Qwen2, quant: SynthQuant::F32, ..SynthModel::default() },
        SynthModel { family: Family::Qwen3, head_dim: Some(16), quant: SynthQuant::F32, ..SynthModel::default() },
        SynthModel {
            family: Family::Phi3,
            sliding_window: Some(5),
            rope_factors: Some(64),
            untied_output: true,
            quant: SynthQuant::F32,
            ..SynthModel::default()
        },
    ] {
        let dir = scratch_dir(&format!("parity-{:?}", shape.family));
        let path = dir.join("tiny.gguf");
        shape.writer().write(&path).unwrap();
        let mut rt = Runtime::load_path(&path, 2).unwrap();
        rt.model.cache_types = CacheTypes { k: CacheType::F32, v: CacheType::F32 };
        let (trained, inferred) = both_forwards(&rt, 24, repo_path("targets/sample-corpus.txt"));
        let max_delta =
            trained.iter().flatten().zip(inferred.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let scale = inferred.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("{:?}: max |Δ logit| {max_delta:.2e} (logits up to {scale:.2})", shape.family);
        assert!(max_delta <= 1e-4 * scale.max(1.0), "{:?}: max |Δ logit| {max_delta}", shape.family);
    }
}

/// Phi-3 128K switches to its long RoPE factors for a session longer than the original
/// context (llama.cpp's rule): the same tokens give other logits in a 17-position session
/// than in a 16-position one, and the same in any session up to 16.
#[test]
fn phi3_takes_long_rope_factors_beyond_the_original_context() {
    use pupil::model::Family;
    use pupil::synth::SynthModel;
    let dir = scratch_dir("phi3-long-rope");
    let path = dir.join("tiny.gguf");
    SynthModel { family: Family::Phi3, rope_factors: Some(16), ..SynthModel::default() }.writer().write(&path).unwrap();
    let rt = Runtime::load_path(&path, 2).unwrap();
    let tokens = [72, 101, 108, 108, 111, 32, 119, 111];
    let last = |n_ctx: usize| {
        let mut cache = rt.model.new_cache(n_ctx).unwrap();
        let hidden = rt.pool.install(|| rt.model.forward(&tokens, &mut cache)).unwrap().to_vec();
        rt.pool.install(|| rt.model.logits(&hidden)).unwrap()
    };
    let (short, short_too, long) = (last(8), last(16), last(17));
    assert_eq!(short, short_too);
    let change = short.iter().zip(&long).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(change > 1e-2, "long factors changed the logits by only {change}");
}
