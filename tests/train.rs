//! Distillation on a tiny synthetic Llama with Q8_0 weights (fast, exact checks): the
//! gradient reaches every adapter through the frozen quantized layers and matches finite
//! differences of the whole model; a resumed run equals an uninterrupted one bit for bit;
//! adapters round-trip through GGUF and apply at inference as in training; bad inputs are
//! clear errors.

mod common;

use std::path::{Path, PathBuf};

use common::scratch_dir;
use pupil::generate::Runtime;
use pupil::gguf::GgmlDType;
use pupil::model::{Adapter, Family, Target};
use pupil::rng::Rng;
use pupil::synth::{SynthModel, SynthQuant};
use pupil::targets::format::round_logprob;
use pupil::targets::*;
use pupil::train::distill::{distill, DistillConfig, DistillJob};
use pupil::train::loss::{position_loss, LossConfig};
use pupil::train::{LoraParams, Student};

fn tiny(dir: &Path, shape: SynthModel) -> Runtime {
    let path = dir.join("tiny.gguf");
    shape.writer().write(&path).unwrap();
    Runtime::load_path(&path, 2).unwrap()
}

fn q8_tiny() -> SynthModel {
    SynthModel { quant: SynthQuant::Q8_0, ..SynthModel::default() }
}

/// A tiny gemma3: Q/K norms, post-norms, GELU gate, scaled embeddings, NeoX RoPE, and six
/// layers of which five attend within a window of 3 positions (with their own RoPE base)
/// and the sixth globally.
fn q8_tiny_gemma() -> SynthModel {
    SynthModel {
        family: Family::Gemma3,
        sliding_window: Some(3),
        n_layer: 6,
        rope_base: 1e6,
        name: "tiny synthetic gemma3".into(),
        ..q8_tiny()
    }
}

/// A tiny qwen2: biases on Q, K and V, NeoX RoPE.
fn q8_tiny_qwen2() -> SynthModel {
    SynthModel { family: Family::Qwen2, name: "tiny synthetic qwen2".into(), ..q8_tiny() }
}

/// A tiny qwen3: Q/K norms per head, NeoX RoPE, and heads wider than `n_embd / n_head`.
fn q8_tiny_qwen3() -> SynthModel {
    SynthModel { family: Family::Qwen3, head_dim: Some(16), name: "tiny synthetic qwen3".into(), ..q8_tiny() }
}

/// A tiny phi3: fused Q/K/V and gate/up tensors, NeoX RoPE with per-pair factors and an
/// attention factor, an untied head, and a window of 3 positions over every layer.
fn q8_tiny_phi3() -> SynthModel {
    SynthModel {
        family: Family::Phi3,
        sliding_window: Some(3),
        rope_factors: Some(64),
        untied_output: true,
        name: "tiny synthetic phi3".into(),
        ..q8_tiny()
    }
}

/// A random top-k teacher distribution over `n_vocab` ids.
fn random_dist(rng: &mut Rng, n_vocab: u32, k: usize) -> Dist {
    let mut ids: Vec<u32> = Vec::new();
    while ids.len() < k {
        let id = (rng.next_u64() % n_vocab as u64) as u32;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let mut mass = 0.9;
    let logprobs = ids
        .iter()
        .map(|_| {
            let p = mass * 0.5;
            mass -= p;
            round_logprob((p as f32).ln())
        })
        .collect();
    Dist::TopK { ids, logprobs, rest_logprob: round_logprob((mass as f32).ln()) }
}

/// Total loss over all positions of `tokens` against `dists`, and (with `train`) its
/// gradient in `lora.grads`.
fn total_loss(rt: &Runtime, lora: &mut LoraParams, tokens: &[u32], dists: &[Dist], train: bool) -> f64 {
    let student = Student::new(&rt.model).unwrap();
    let positions: Vec<usize> = (0..tokens.len()).collect();
    let cfg = LossConfig { temperature: 1.5, hard_weight: 0.25 };
    let losses = rt
        .pool
        .install(|| {
            student.run(lora, tokens, &positions, train, |i, logits, d| {
                position_loss(logits, &dists[i], tokens.get(i + 1).copied(), &cfg, 1.0, d).loss
            })
        })
        .unwrap();
    losses.iter().sum()
}

/// The gradient of a whole model (every op's backward, in the graph's order) against
/// finite differences of its loss, for every family: llama, gemma3 with a window shorter
/// than the sequence, qwen2, qwen3 and phi3.
#[test]
fn gradients_reach_every_adapter_and_match_finite_differences() {
    for shape in [q8_tiny(), q8_tiny_gemma(), q8_tiny_qwen2(), q8_tiny_qwen3(), q8_tiny_phi3()] {
        let dir = scratch_dir(&format!("grad-{:?}", shape.family));
        let rt = tiny(&dir, shape);
        let cfg = &rt.model.cfg;
        assert!(cfg.sliding_window.is_none_or(|w| w < 9), "the window must bind");
        let n_vocab = cfg.n_vocab as u32;
        let mut rng = Rng::new(21);
        let tokens: Vec<u32> = (0..9).map(|_| (rng.next_u64() % 256) as u32).collect();
        let dists: Vec<Dist> = tokens.iter().map(|_| random_dist(&mut rng, n_vocab, 4)).collect();
        let mut lora = LoraParams::for_model(cfg, 4, 8.0, &Target::ALL, 3);
        // Non-zero B everywhere, as after the first update (at B = 0 A's gradient is 0).
        for (_, _, _, b) in lora.adapter.tensors() {
            for v in &mut lora.adapter.values[b] {
                *v = (rng.next_f64() as f32 - 0.5) * 0.2;
            }
        }
        total_loss(&rt, &mut lora, &tokens, &dists, true);
        let grads = lora.grads.clone();
        for (layer, target, a, b) in lora.adapter.tensors() {
            for (part, range) in [("A", a), ("B", b)] {
                let norm: f64 = grads[range].iter().map(|&g| g as f64 * g as f64).sum::<f64>().sqrt();
                assert!(norm > 1e-6, "{:?} layer {layer} {target:?} {part}: zero gradient", cfg.family);
            }
        }
        // Whole-model finite differences on a sample of parameters, in f64 loss.
        let h = 1e-2f32;
        let mut checked = 0;
        for (layer, target, a, b) in lora.adapter.tensors() {
            for idx in [a.start + (layer * 7) % a.len(), b.start + (layer * 5 + 3) % b.len()] {
                let old = lora.adapter.values[idx];
                lora.adapter.values[idx] = old + h;
                let up = total_loss(&rt, &mut lora, &tokens, &dists, false);
                lora.adapter.values[idx] = old - h;
                let down = total_loss(&rt, &mut lora, &tokens, &dists, false);
                lora.adapter.values[idx] = old;
                let numeric = (up - down) / (2.0 * h as f64);
                let analytic = grads[idx] as f64;
                assert!(
                    (analytic - numeric).abs() <= 0.03 * analytic.abs().max(numeric.abs()) + 2e-4,
                    "{:?} layer {layer} {target:?} param {idx}: analytic {analytic}, numeric {numeric}",
                    cfg.family
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 2 * 7 * cfg.n_layer);
    }
}

/// A target file over random token sequences for the tiny model.
fn tiny_targets(rt: &Runtime, path: &Path, n: usize, seed: u64) -> TargetFile {
    let mut rng = Rng::new(seed);
    let header = common::targets_header(rt.tokenizer.fingerprint(), rt.tokenizer.n_vocab(), Encoding::TopK { k: 4 });
    let Opened::Fresh(mut w) = TargetWriter::open(path, header, ChunkPolicy::default()).unwrap() else { panic!() };
    for _ in 0..n {
        let len = 6 + (rng.next_u64() % 10) as usize;
        let tokens: Vec<u32> = (0..len).map(|_| (rng.next_u64() % 256) as u32).collect();
        // The first two positions are "prompt": stored but not trained.
        let flags: Vec<u8> = (0..len).map(|j| if j < 2 { FLAG_TARGET } else { FLAG_TARGET | FLAG_TRAIN }).collect();
        let targets = (0..len).map(|_| random_dist(&mut rng, 259, 4)).collect();
        w.push(&SequenceRecord { tokens, flags, targets }).unwrap();
    }
    w.finish().unwrap();
    TargetFile::open(path).unwrap()
}

fn job<'a>(rt: &'a Runtime, targets: &'a TargetFile, checkpoint: PathBuf, stop_after: Option<usize>) -> DistillJob<'a> {
    let mut cfg = DistillConfig { rank: 4, alpha: 8.0, epochs: 2, seq: 12, ..DistillConfig::default() };
    cfg.optim.lr = 5e-3;
    cfg.optim.warmup_steps = 2;
    DistillJob {
        rt,
        targets,
        eval: Some(targets),
        cfg,
        eval_every: 3,
        checkpoint_every: 2,
        checkpoint,
        stop_after,
        recompute: false,
    }
}

#[test]
fn training_lowers_the_loss_and_a_resumed_run_is_bit_identical() {
    let dir = scratch_dir("resume");
    let rt = tiny(&dir, q8_tiny());
    let targets = tiny_targets(&rt, &dir.join("t.ptt"), 6, 4);
    let whole = rt.pool.install(|| distill(&job(&rt, &targets, dir.join("a.ckpt"), None), false, |_| {})).unwrap();
    assert!(whole.finished);
    let curve = &whole.state.curve;
    let (first, last) = (curve[0].eval_kl.unwrap(), curve.last().unwrap().eval_kl.unwrap());
    assert!(last < first, "held-out KL {first} → {last}");

    // Recomputing activations in the backward pass changes nothing.
    let mut recompute = job(&rt, &targets, dir.join("r.ckpt"), None);
    recompute.recompute = true;
    let again = rt.pool.install(|| distill(&recompute, false, |_| {})).unwrap();
    assert_eq!(again.lora.adapter.values, whole.lora.adapter.values, "recompute is bit-identical");

    // Stop after 3 steps (the last checkpoint is at step 2), then resume twice.
    let ck = dir.join("b.ckpt");
    let part = rt.pool.install(|| distill(&job(&rt, &targets, ck.clone(), Some(3)), false, |_| {})).unwrap();
    assert!(!part.finished);
    let part = rt.pool.install(|| distill(&job(&rt, &targets, ck.clone(), Some(4)), true, |_| {})).unwrap();
    assert!(!part.finished);
    let resumed = rt.pool.install(|| distill(&job(&rt, &targets, ck.clone(), None), true, |_| {})).unwrap();
    assert!(resumed.finished);
    assert_eq!(resumed.lora.adapter.values, whole.lora.adapter.values, "bit-for-bit equal adapters");
    let strip = |c: &[pupil::train::checkpoint::CurvePoint]| {
        c.iter().map(|p| (p.step, p.loss.map(f64::to_bits), p.eval_kl.map(f64::to_bits))).collect::<Vec<_>>()
    };
    assert_eq!(strip(&resumed.state.curve), strip(&whole.state.curve));

    // Resuming with other options is refused.
    let mut other = job(&rt, &targets, ck.clone(), None);
    other.cfg.optim.lr = 1e-3;
    let err = rt.pool.install(|| distill(&other, true, |_| {})).err().unwrap().to_string();
    assert!(err.contains("different run"), "{err}");
    // A corrupted checkpoint is refused.
    let mut bytes = std::fs::read(&ck).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&ck, bytes).unwrap();
    let err = rt.pool.install(|| distill(&job(&rt, &targets, ck, None), true, |_| {})).err().unwrap().to_string();
    assert!(err.contains("checksum"), "{err}");
}

#[test]
fn adapters_round_trip_and_apply_at_inference_as_in_training() {
    let dir = scratch_dir("adapter");
    let mut rt = tiny(&dir, q8_tiny());
    let cfg = rt.model.cfg.clone();
    // Not in file order: the loaded adapter stores its tensors in another order.
    let mut lora = LoraParams::for_model(&cfg, 4, 8.0, &[Target::Down, Target::Q, Target::V], 5);
    let mut rng = Rng::new(6);
    for (_, _, _, b) in lora.adapter.tensors() {
        for v in &mut lora.adapter.values[b] {
            *v = (rng.next_f64() as f32 - 0.5) * 0.5;
        }
    }
    let adapter = lora.adapter.clone();
    let path = dir.join("a.gguf");
    adapter.to_gguf("llama", "test", GgmlDType::F32).write(&path).unwrap();
    let back = Adapter::load(&path, &cfg).unwrap();
    assert_eq!(back, adapter);
    // Stored as f16: half the tensor bytes, every value its f16 rounding.
    let half_path = dir.join("a16.gguf");
    adapter.to_gguf("llama", "test", GgmlDType::F16).write(&half_path).unwrap();
    let half = Adapter::load(&half_path, &cfg).unwrap();
    for (l, t) in (0..cfg.n_layer).flat_map(|l| Target::ALL.map(|t| (l, t))) {
        let (Some((a, b)), Some((ha, hb))) = (adapter.pair(l, t), half.pair(l, t)) else { continue };
        for (x, y) in a.iter().chain(b).zip(ha.iter().chain(hb)) {
            assert_eq!(*y, half::f16::from_f32(*x).to_f32(), "layer {l} {t:?}");
        }
    }
    let tensor_bytes = |p: &std::path::Path| {
        let f = pupil::gguf::GgufFile::open(p).unwrap();
        f.tensors().iter().map(|t| f.tensor_bytes(t).len()).sum::<usize>()
    };
    assert_eq!(tensor_bytes(&half_path) * 2, tensor_bytes(&path));
    let file = pupil::gguf::GgufFile::open(&path).unwrap();
    assert_eq!(file.get_str("general.type").unwrap(), Some("adapter"));
    assert_eq!(file.tensor("blk.0.attn_q.weight.lora_a").unwrap().dims, vec![32, 4]);
    assert_eq!(file.tensor("blk.1.ffn_down.weight.lora_b").unwrap().dims, vec![4, 32]);

    // Training forward (f32) and inference forward with the adapter agree.
    let tokens: Vec<u32> = (0..7).map(|_| (rng.next_u64() % 256) as u32).collect();
    let student = Student::new(&rt.model).unwrap();
    let train_logits =
        rt.pool.install(|| student.run(&mut lora, &tokens, &[6], false, |_, l, _| l.to_vec())).unwrap().remove(0);
    let base_logits = infer_last(&rt, &tokens);
    rt.model.add_adapter(back, 1.0).unwrap();
    let adapted = infer_last(&rt, &tokens);
    let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let change = diff(&adapted, &base_logits);
    assert!(change > 0.05, "the adapter must change the output ({change})");
    assert!(diff(&adapted, &train_logits) < change / 10.0, "inference and training disagree");

    // Another model shape is refused.
    let wide = tiny(&scratch_dir("wide"), SynthModel { n_embd: 64, n_ff: 128, ..q8_tiny() });
    let err = Adapter::load(&path, &wide.model.cfg).unwrap_err().to_string();
    assert!(err.contains("do not fit"), "{err}");
}

#[test]
fn merged_weights_equal_the_adapter_applied_at_inference() {
    let mut rng = Rng::new(9);
    let tokens: Vec<u32> = (0..7).map(|_| (rng.next_u64() % 256) as u32).collect();
    // Phi-3's fused attn_qkv and ffn_up take each part's update in that part's rows.
    let phi3 = SynthModel { family: Family::Phi3, quant: SynthQuant::F32, ..SynthModel::default() };
    for shape in [SynthModel { quant: SynthQuant::Q8_0, ..SynthModel::default() }, SynthModel::default(), phi3] {
        let quant = shape.quant;
        let dir = scratch_dir(&format!("merge-{quant:?}-{:?}", shape.family));
        let mut rt = tiny(&dir, shape);
        let cfg = rt.model.cfg.clone();
        let mut lora = LoraParams::for_model(&cfg, 4, 8.0, &Target::ALL, 2);
        for (_, _, _, b) in lora.adapter.tensors() {
            for v in &mut lora.adapter.values[b] {
                *v = (rng.next_f64() as f32 - 0.5) * 0.5;
            }
        }
        let base = infer_last(&rt, &tokens);
        rt.model.add_adapter(lora.adapter.clone(), 0.5).unwrap();
        let adapted = infer_last(&rt, &tokens);
        let merged_path = dir.join("merged.gguf");
        pupil::model::lora::merge(&rt.file, &cfg, rt.model.adapters(), None).unwrap().write(&merged_path).unwrap();
        let merged_rt = Runtime::load_path(&merged_path, 2).unwrap();
        let merged = infer_last(&merged_rt, &tokens);
        let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let change = diff(&adapted, &base);
        let err = diff(&merged, &adapted);
        assert!(change > 0.05, "{quant:?}: the adapter must matter ({change})");
        // F32 merges exactly (up to summation order); Q8_0 requantizes the merged weight.
        let limit = if quant == SynthQuant::F32 { 1e-4 } else { change / 5.0 };
        assert!(err < limit, "{quant:?}: merged vs applied differ by {err} (adapter moved logits {change})");
    }
}

fn infer_last(rt: &Runtime, tokens: &[u32]) -> Vec<f32> {
    let mut cache = rt.model.new_cache(tokens.len()).unwrap();
    let hidden = rt.pool.install(|| rt.model.forward(tokens, &mut cache)).unwrap();
    let e = rt.model.cfg.n_embd;
    rt.pool.install(|| rt.model.logits(&hidden[hidden.len() - e..])).unwrap()
}

#[test]
fn targets_from_another_tokenizer_are_refused() {
    let dir = scratch_dir("vocab");
    let rt = tiny(&dir, q8_tiny());
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("targets/sample-smollm2-k16.ptt");
    let targets = TargetFile::open(&sample).unwrap();
    let err = rt.pool.install(|| distill(&job(&rt, &targets, dir.join("c.ckpt"), None), false, |_| {}));
    let err = err.err().unwrap().to_string();
    assert!(err.contains("another tokenizer"), "{err}");
}
