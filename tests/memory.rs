//! Zero-copy loading: after loading SmolLM2 and generating 32 tokens, the process's
//! anonymous resident memory stays within a quarter of the model file plus the KV cache
//! in use — the weights (token embeddings included) are read from the map, never copied
//! or expanded to f32. This test runs alone in its process so nothing else inflates the
//! figure.

mod common;

use common::*;
use pupil::bench::memory::{memory_status, mib};
use pupil::generate::{Runtime, Sampler, SamplerConfig, Session};

#[test]
fn smollm2_anonymous_memory_is_a_fraction_of_the_file() {
    let Some(path) = model(SMOLLM2) else { return };
    let rt = Runtime::load_path(&path, 2).unwrap();
    let after_load = memory_status().expect("/proc/self/status");
    let mut session = Session::new(&rt, 4096).unwrap();
    let prompt = rt.tokenizer.encode_prompt("The Llama jumped over the", true).unwrap();
    let mut sampler = Sampler::new(SamplerConfig::greedy());
    let g = session.generate(&prompt, 32, &mut sampler, |_| {}).unwrap();
    assert_eq!(g.ids.len(), 32);
    let after = memory_status().unwrap();

    let file = rt.file.file_size() as u64;
    let kv = session.kv_used_bytes() as u64;
    let budget = file / 4 + kv;
    eprintln!(
        "after load: RssAnon {:.1} MiB; after 32 tokens: RssAnon {:.1} MiB, RssFile {:.1} MiB; budget {:.1} MiB (file {:.1} MiB / 4 + KV {:.2} MiB)",
        mib(after_load.rss_anon),
        mib(after.rss_anon),
        mib(after.rss_file),
        mib(budget),
        mib(file),
        mib(kv)
    );
    assert!(after.rss_anon <= budget, "RssAnon {:.1} MiB exceeds {:.1} MiB", mib(after.rss_anon), mib(budget));
    // The f32 embedding table alone would be n_vocab × n_embd × 4 bytes.
    let expanded_embeddings = (rt.model.cfg.n_vocab * rt.model.cfg.n_embd * 4) as u64;
    assert!(after.rss_anon < expanded_embeddings, "anonymous memory could hold an expanded embedding table");
    // The weights were read through the map: it is resident as file pages.
    assert!(after.rss_file >= file / 2, "RssFile {:.1} MiB: weights not read from the map?", mib(after.rss_file));
}
