//! Speculative decoding changes speed, never text: on the real models (SmolLM2's Q4_1 and
//! Gemma 3's K-quants, whose decode kernels differ from their prefill ones), with and
//! without drafting (prompt lookup, or a draft model), greedy and seeded sampling give the
//! same tokens.

mod common;

use common::{model, GEMMA3, SMOLLM2};
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

/// A draft model: SmolLM2 Q4_1 drafting for SmolLM2 requantized to Q8_0 (written here with
/// pupil's own merge of an all-zero adapter, so the test needs no other tool).
#[test]
fn a_draft_model_keeps_the_text_exact() {
    use pupil::generate::draft::DraftModel;
    use pupil::model::{lora, Adapter, Target};
    let Some(path) = model(SMOLLM2) else { return };
    let draft = Runtime::load_path(&path, 2).unwrap();
    let cfg = &draft.model.cfg;
    // `init` leaves B at zero: the merged weights are the file's, requantized.
    let zero = Adapter::init(cfg, 4, 4.0, &Target::ALL, 1);
    let merged = lora::merge(&draft.file, cfg, &[(zero, 1.0)], Some(pupil::gguf::GgmlDType::Q8_0)).unwrap();
    let dir = std::env::temp_dir().join(format!("pupil-draft-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let target_path = dir.join("smollm2-q8_0.gguf");
    merged.write(&target_path).unwrap();
    let target = Runtime::load_path(&target_path, 2).unwrap();

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
