//! Speculative decoding changes speed, never text: on the real models (SmolLM2's Q4_1 and
//! Gemma 3's K-quants, whose decode kernels differ from their prefill ones), with and
//! without drafting (prompt lookup, or a draft model), greedy and seeded sampling give the
//! same tokens.

mod common;

use common::{model, scratch_dir, GEMMA3, SMOLLM2};
use pupil::generate::draft::Drafter;
use pupil::generate::{Generation, Runtime, Sampler, SamplerConfig, Session};

/// A task that repeats its context, where drafts are kept, and one where they rarely are.
const COPY: &str = "Repeat this paragraph exactly:\n\nThe lighthouse stood at the edge of the cliff for more than a hundred years. Every night its keeper climbed the narrow stairs, trimmed the wick and wound the clockwork that turned the great lens. Ships passing in the dark saw its beam sweep across the water and knew where the rocks were.";
const FREE: &str = "Write a short story about a dragon who learns to bake bread.";

fn generate(rt: &Runtime, prompt: &str, lookup: usize, sampling: SamplerConfig) -> Generation {
    let text = rt.template.render(&[pupil::tokenizer::Message::new("user", prompt)], true).unwrap();
    let ids = rt.tokenizer.encode_prompt(&text, true).unwrap();
    let mut session = Session::new(rt, 1024).unwrap();
    session.speculate((lookup > 0).then_some(Drafter::Lookup), lookup).unwrap();
    session.generate(&ids, 96, &mut Sampler::new(sampling), |_| {}).unwrap()
}

fn check(name: &str) {
    let Some(path) = model(name) else { return };
    let rt = Runtime::load_path(&path, 2).unwrap();
    let seeded = SamplerConfig { temperature: 0.8, seed: 11, ..SamplerConfig::default() };
    for (prompt, sampling) in [(COPY, SamplerConfig::greedy()), (FREE, SamplerConfig::greedy()), (COPY, seeded)] {
        let plain = generate(&rt, prompt, 0, sampling.clone());
        let drafted = generate(&rt, prompt, 8, sampling.clone());
        assert_eq!(drafted.ids, plain.ids, "{name}, {sampling:?}: speculative decoding changed the text");
        assert_eq!(drafted.stop, plain.stop);
        assert_eq!(plain.timings.drafted_tokens, 0);
        if prompt == COPY && sampling.temperature == 0.0 {
            // The check above means something only if drafts were kept.
            let t = &drafted.timings;
            assert!(
                t.accepted_tokens >= 20,
                "{name}: only {} of {} drafted tokens kept",
                t.accepted_tokens,
                t.drafted_tokens
            );
        }
    }
}

#[test]
fn prompt_lookup_keeps_smollm2_text_exact() {
    check(SMOLLM2);
}

#[test]
fn prompt_lookup_keeps_gemma3_text_exact() {
    check(GEMMA3);
}

/// SmolLM2's layer weights requantized to `dtype`, written to a scratch file with pupil's
/// own merge of an all-zero adapter (so the tests need no other tool), and loaded.
fn requantized(draft: &Runtime, dtype: pupil::gguf::GgmlDType, dir: &std::path::Path) -> Runtime {
    use pupil::model::{lora, Adapter, Target};
    let cfg = &draft.model.cfg;
    // `init` leaves B at zero: the merged weights are the file's, requantized.
    let zero = Adapter::init(cfg, 4, 4.0, &Target::ALL, 1);
    let merged = lora::merge(&draft.file, cfg, &[(zero, 1.0)], Some(dtype)).unwrap();
    let path = dir.join(format!("smollm2-{dtype}.gguf"));
    merged.write(&path).unwrap();
    Runtime::load_path(&path, 2).unwrap()
}

/// A draft model: SmolLM2 Q4_1 drafting for SmolLM2 requantized to Q8_0.
#[test]
fn a_draft_model_keeps_the_text_exact() {
    use pupil::generate::draft::DraftModel;
    let Some(path) = model(SMOLLM2) else { return };
    let draft = Runtime::load_path(&path, 2).unwrap();
    let dir = scratch_dir("draft");
    let target = requantized(&draft, pupil::gguf::GgmlDType::Q8_0, &dir);

    let text = target.template.render(&[pupil::tokenizer::Message::new("user", COPY)], true).unwrap();
    let ids = target.tokenizer.encode_prompt(&text, true).unwrap();
    let run = |drafted: bool| {
        let mut session = Session::new(&target, 1024).unwrap();
        if drafted {
            let drafter = DraftModel::new(&draft, &target, 1024).unwrap();
            session.speculate(Some(Drafter::Model(Box::new(drafter))), 6).unwrap();
        }
        session.generate(&ids, 64, &mut Sampler::new(SamplerConfig::greedy()), |_| {}).unwrap()
    };
    let (plain, drafted) = (run(false), run(true));
    assert_eq!(drafted.ids, plain.ids, "a draft model changed the text");
    let t = &drafted.timings;
    eprintln!("draft model: {} of {} drafted tokens kept", t.accepted_tokens, t.drafted_tokens);
    assert!(t.accepted_tokens * 2 > t.drafted_tokens, "{} of {} kept", t.accepted_tokens, t.drafted_tokens);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Largest KL between the next-token distributions of two runs that differ only in
/// rounding (the fixture tests' bound).
const MAX_KL: f64 = 0.1;

/// Q4_0 layer weights, which the CPU re-lays at load for its eight-row kernels where it
/// has them (AVX2): the model answers as it does from the file's layout, and drafting
/// (verified in decode-exact batches over the re-laid rows) keeps the text exact.
#[test]
fn interleaved_q4_0_weights_answer_as_the_files_layout_and_keep_drafts_exact() {
    use pupil::model::{Model, Target};
    let Some(path) = model(SMOLLM2) else { return };
    let source = Runtime::load_path(&path, 2).unwrap();
    let dir = scratch_dir("interleaved");
    let rt = requantized(&source, pupil::gguf::GgmlDType::Q4_0, &dir);
    let has_kernel =
        pupil::kernels::quant_dot::kernel(pupil::gguf::GgmlDType::Q4_0).is_some_and(|k| k.interleaved.is_some());
    let q = rt.model.weights().blocks[0].weight(Target::Q);
    assert_eq!(q.is_interleaved(), has_kernel, "Q4_0 is re-laid exactly where the CPU has the kernel for it");

    // Last-position logits of a prompt, and of one decoded token after it, both ways.
    let file_layout = Model::load(&rt.file).unwrap();
    let ids = rt.tokenizer.encode(COPY, true).unwrap();
    let logits = |m: &Model| {
        let mut cache = m.new_cache(256).unwrap();
        rt.pool.install(|| {
            let hidden = m.forward(&ids, &mut cache).unwrap();
            let last = hidden[hidden.len() - m.cfg.n_embd..].to_vec();
            let prefill = m.logits(&last).unwrap();
            let hidden = m.forward(&[ids[1]], &mut cache).unwrap().to_vec();
            (prefill, m.logits(&hidden).unwrap())
        })
    };
    let (want, got) = (logits(&file_layout), logits(&rt.model));
    for (what, want, got) in [("prefill", &want.0, &got.0), ("decode", &want.1, &got.1)] {
        // The interleaved kernels sum each row in another order than the file layout's
        // one-row kernels, and a rounding now and then moves an 8-bit
        // activation a step: agreement as two correct runs, by the fixtures' KL measure.
        let kl = pupil::train::loss::full_kl(want, got);
        eprintln!("interleaved Q4_0 {what}: KL(file layout ‖ interleaved) {kl:.2e}");
        assert!(kl <= MAX_KL, "{what}: KL(file layout ‖ interleaved) {kl:.4}");
    }

    let text = rt.template.render(&[pupil::tokenizer::Message::new("user", COPY)], true).unwrap();
    let ids = rt.tokenizer.encode_prompt(&text, true).unwrap();
    let run = |lookup: usize| {
        let mut session = Session::new(&rt, 1024).unwrap();
        session.speculate((lookup > 0).then_some(Drafter::Lookup), lookup).unwrap();
        session.generate(&ids, 64, &mut Sampler::new(SamplerConfig::greedy()), |_| {}).unwrap()
    };
    let (plain, drafted) = (run(0), run(8));
    assert_eq!(drafted.ids, plain.ids, "prompt lookup changed the text over interleaved weights");
    assert!(drafted.timings.accepted_tokens >= 20, "only {} drafted tokens kept", drafted.timings.accepted_tokens);
    std::fs::remove_dir_all(&dir).unwrap();
}
