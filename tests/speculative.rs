//! Speculative decoding by prompt lookup changes speed, never text: on the real models
//! (SmolLM2's Q4_1 and Gemma 3's K-quants, whose decode kernels differ from their prefill
//! ones), with and without drafting, greedy and seeded sampling give the same tokens.

mod common;

use common::{model, GEMMA3, SMOLLM2};
use pupil::generate::{Generation, Runtime, Sampler, SamplerConfig, Session};

/// A task that repeats its context, where drafts are kept, and one where they rarely are.
const COPY: &str = "Repeat this paragraph exactly:\n\nThe lighthouse stood at the edge of the cliff for more than a hundred years. Every night its keeper climbed the narrow stairs, trimmed the wick and wound the clockwork that turned the great lens. Ships passing in the dark saw its beam sweep across the water and knew where the rocks were.";
const FREE: &str = "Write a short story about a dragon who learns to bake bread.";

fn generate(rt: &Runtime, prompt: &str, lookup: usize, sampling: SamplerConfig) -> Generation {
    let text = rt.template.render(&[pupil::tokenizer::Message::new("user", prompt)], true).unwrap();
    let ids = rt.tokenizer.encode_prompt(&text, true).unwrap();
    let mut session = Session::new(rt, 1024).unwrap();
    session.set_lookup(lookup).unwrap();
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
