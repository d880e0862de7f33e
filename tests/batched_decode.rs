//! Several sequences decoded in one pass ([`Model::forward_batch`], what `pupil serve` runs
//! for concurrent requests) against each decoded alone: with decode's arithmetic
//! (`Batching::AsDecode`) every row's logits are the bits it gets alone, whatever the
//! other rows are, their positions, windows and adapter scales included.

mod common;

use common::*;
use pupil::generate::Runtime;
use pupil::kernels::Batching;
use pupil::model::{BatchItem, KvCache};

/// Two random adapters on every projection (B nonzero, so they change the output).
fn add_adapters(rt: &mut Runtime) {
    for seed in [1, 2] {
        let adapter = random_adapter(&rt.model.cfg, 4, 8.0, seed, 0.05);
        rt.model.add_adapter(adapter, 1.0).unwrap();
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// Prefills three prompts of different lengths, then decodes six steps two ways: each
/// sequence alone, and all three in one pass; each sequence with its own adapter scales.
fn check(rt: &Runtime) {
    let scales: [&[f32]; 3] = [&[1.0, 0.0], &[0.0, 0.0], &[0.5, 2.0]];
    let prompts: [Vec<u32>; 3] = [(5..12).collect(), (40..43).collect(), (7..30).collect()];
    let prefilled = || -> Vec<KvCache> {
        prompts
            .iter()
            .zip(scales)
            .map(|(p, s)| {
                let mut cache = rt.model.new_cache(64).unwrap();
                let mut item = [BatchItem { tokens: p, cache: &mut cache, lora_scales: Some(s) }];
                rt.pool.install(|| rt.model.forward_batch(&mut item, Batching::Tiled)).unwrap();
                cache
            })
            .collect()
    };
    let n_vocab = rt.model.cfg.n_vocab;
    let (mut alone, mut together) = (prefilled(), prefilled());
    for step in 0..6u32 {
        let tokens: Vec<[u32; 1]> = (0..3).map(|i| [(step * 31 + i * 7 + 3) % n_vocab as u32]).collect();
        let mut want = Vec::new();
        for ((cache, t), s) in alone.iter_mut().zip(&tokens).zip(scales) {
            let mut item = [BatchItem { tokens: t, cache, lora_scales: Some(s) }];
            let hidden = rt.pool.install(|| rt.model.forward_batch(&mut item, Batching::AsDecode)).unwrap().to_vec();
            want.extend(rt.pool.install(|| rt.model.logits_with(&hidden, Batching::AsDecode)).unwrap());
        }
        let mut items: Vec<BatchItem> = together
            .iter_mut()
            .zip(&tokens)
            .zip(scales)
            .map(|((cache, t), s)| BatchItem { tokens: t, cache, lora_scales: Some(s) })
            .collect();
        let hidden = rt.pool.install(|| rt.model.forward_batch(&mut items, Batching::AsDecode)).unwrap().to_vec();
        let got = rt.pool.install(|| rt.model.logits_with(&hidden, Batching::AsDecode)).unwrap();
        assert_eq!(bits(&got), bits(&want), "{}: step {step}", rt.model.cfg.architecture);
    }
    // Scales of zero are the model without adapters; other scales change the logits.
    let last = |scales: &[f32]| {
        let mut cache = rt.model.new_cache(64).unwrap();
        let mut item = [BatchItem { tokens: &prompts[0], cache: &mut cache, lora_scales: Some(scales) }];
        let hidden = rt.pool.install(|| rt.model.forward_batch(&mut item, Batching::AsDecode)).unwrap().to_vec();
        rt.pool
            .install(|| rt.model.logits_with(&hidden[hidden.len() - rt.model.cfg.n_embd..], Batching::AsDecode))
            .unwrap()
    };
    let (off, on) = (last(&[0.0, 0.0]), last(&[1.0, 1.0]));
    assert_ne!(bits(&off), bits(&on), "the adapters changed nothing");
    let mut cache = rt.model.new_cache(64).unwrap();
    let mut item = [BatchItem { tokens: &prompts[0], cache: &mut cache, lora_scales: None }];
    let hidden = rt.pool.install(|| rt.model.forward_batch(&mut item, Batching::AsDecode)).unwrap().to_vec();
    let default = rt.model.logits_with(&hidden[hidden.len() - rt.model.cfg.n_embd..], Batching::AsDecode).unwrap();
    assert_eq!(bits(&default), bits(&on), "no scales given: the scales the adapters were added with");
}

#[test]
fn smollm2_sequences_decoded_together_get_the_bits_they_get_alone() {
    let Some(path) = model(SMOLLM2) else { return };
    let mut rt = Runtime::load_path(&path, 2).unwrap();
    add_adapters(&mut rt);
    check(&rt);
}

/// Every family's recipe (Gemma's and Phi-3's windows shorter than the sequences, Phi-3's
/// fused projections), quantized so the 8-bit activation kernels run.
#[test]
fn every_family_decodes_together_as_alone() {
    use pupil::model::Family;
    use pupil::synth::{SynthModel, SynthQuant};
    let tiny = SynthModel { quant: SynthQuant::Q8_0, ..SynthModel::default() };
    for shape in [
        tiny.clone(),
        SynthModel { family: Family::Gemma3, sliding_window: Some(5), n_layer: 6, ..tiny.clone() },
        SynthModel { family: Family::Qwen2, ..tiny.clone() },
        SynthModel { family: Family::Qwen3, head_dim: Some(16), ..tiny.clone() },
        SynthModel { family: Family::Phi3, sliding_window: Some(5), rope_factors: Some(16), ..tiny.clone() },
    ] {
        let dir = scratch_dir(&format!("batched-{:?}", shape.family));
        let path = dir.join("tiny.gguf");
        shape.writer().write(&path).unwrap();
        let mut rt = Runtime::load_path(&path, 2).unwrap();
        add_adapters(&mut rt);
        check(&rt);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn wrong_adapter_scales_and_a_full_context_are_errors() {
    use pupil::synth::SynthModel;
    let dir = scratch_dir("batched-errors");
    let path = dir.join("tiny.gguf");
    SynthModel::default().writer().write(&path).unwrap();
    let mut rt = Runtime::load_path(&path, 2).unwrap();
    add_adapters(&mut rt);
    let mut cache = rt.model.new_cache(4).unwrap();
    let mut item = [BatchItem { tokens: &[1, 2], cache: &mut cache, lora_scales: Some(&[1.0]) }];
    let err = rt.model.forward_batch(&mut item, Batching::AsDecode).unwrap_err().to_string();
    assert!(err.contains("1 adapter scales given for 2 adapters"), "{err}");
    let mut item = [BatchItem { tokens: &[1, 2, 3, 4, 5], cache: &mut cache, lora_scales: None }];
    let err = rt.model.forward_batch(&mut item, Batching::AsDecode).unwrap_err().to_string();
    assert!(err.contains("context is full"), "{err}");
    assert!(cache.is_empty(), "a refused pass left positions in the cache");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `pupil bench --parallel 1,3` adds a tg row that decodes three sequences together, its
/// rate counting the tokens of all three.
#[test]
fn bench_measures_sequences_decoded_together() {
    use pupil::synth::SynthModel;
    let dir = scratch_dir("batched-bench");
    let path = dir.join("tiny.gguf");
    SynthModel::default().writer().write(&path).unwrap();
    let args = ["bench", "-m", path.to_str().unwrap(), "-p", "0", "-n", "4", "--parallel", "1,3", "-r", "1", "-t", "1"];
    let (ok, stdout, stderr) = pupil_cli(&[&args[..], &["-o", "jsonl"]].concat());
    assert!(ok, "{stderr}");
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let tests: Vec<(&str, u64)> =
        rows.iter().map(|r| (r["test"].as_str().unwrap(), r["n_seq"].as_u64().unwrap())).collect();
    assert_eq!(tests, [("tg4", 1), ("tg4 x3", 3)]);
    assert!(rows.iter().all(|r| r["median_ts"].as_f64().unwrap() > 0.0));
    std::fs::remove_dir_all(&dir).unwrap();
}
