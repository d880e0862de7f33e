//! Memory after loading SmolLM2 and generating 32 tokens, both ways a CPU model can hold
//! its weights. Read in place (`--no-repack`): the process's anonymous resident memory
//! stays within a quarter of the model file plus the KV cache in use — the weights (token
//! embeddings included) are read from the map, never copied or expanded to f32. Re-laid
//! for the CPU's kernels (the default): the copies replace the map's pages instead of
//! adding to them, so the resident total stays within 10 % of the in-place one.
//! This test runs alone in its process so nothing else inflates the figures.

mod common;

use common::*;
use pupil::bench::memory::{memory_status, mib};
use pupil::generate::{Runtime, Sampler, SamplerConfig, Session, WeightLayout};
use pupil::model::Device;

#[test]
fn smollm2_memory_in_place_and_repacked() {
    let Some(path) = model(SMOLLM2) else { return };
    let rt = Runtime::load_path_on(&path, 2, Device::Cpu, WeightLayout::Mapped).unwrap();
    let (anon, file_pages, budget, file) = after_32_tokens(&rt);
    assert!(anon <= budget, "in place: RssAnon {:.1} MiB exceeds {:.1} MiB", mib(anon), mib(budget));
    // The f32 embedding table alone would be n_vocab × n_embd × 4 bytes.
    let expanded_embeddings = (rt.model.cfg.n_vocab * rt.model.cfg.n_embd * 4) as u64;
    assert!(anon < expanded_embeddings, "anonymous memory could hold an expanded embedding table");
    // The weights were read through the map: it is resident as file pages.
    assert!(file_pages >= file / 2, "RssFile {:.1} MiB: weights not read from the map?", mib(file_pages));
    let in_place = anon + file_pages;
    drop(rt);

    let rt = Runtime::load_path(&path, 2).unwrap();
    let (anon, file_pages, _, file) = after_32_tokens(&rt);
    let repacked = rt.model.weights().blocks[0].weight(pupil::model::Target::Q).is_interleaved();
    if repacked {
        assert!(file_pages < file / 4, "RssFile {:.1} MiB: the map's pages were not handed back", mib(file_pages));
    }
    let total = anon + file_pages;
    assert!(
        total <= in_place + in_place / 10,
        "repacked: {:.1} MiB resident vs {:.1} in place",
        mib(total),
        mib(in_place)
    );
}

/// (RssAnon, RssFile, a quarter of the file plus the KV cache used, file size) after 32
/// generated tokens.
fn after_32_tokens(rt: &Runtime) -> (u64, u64, u64, u64) {
    let after_load = memory_status().expect("/proc/self/status");
    let mut session = Session::new(rt, 4096).unwrap();
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
    (after.rss_anon, after.rss_file, budget, file)
}
