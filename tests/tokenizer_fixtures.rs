//! The tokenizer and chat template reproduce llama.cpp's ids exactly on both real models.

mod common;

use common::*;
use pupil::gguf::GgufFile;
use pupil::tokenizer::{ChatTemplate, Message, Tokenizer};

fn tokenizer(name: &str) -> Option<(GgufFile, Tokenizer)> {
    let path = model(name)?;
    let file = GgufFile::open(path).expect("open model");
    let tok = Tokenizer::from_gguf(&file).expect("build tokenizer");
    Some((file, tok))
}

fn check_plain_tokenization(name: &str, fixtures: &str) {
    let Some((_, tok)) = tokenizer(name) else { return };
    let mut failures = Vec::new();
    for case in fixture_lines(fixtures, "tokenizer.jsonl") {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case["ids"]);
        let got = tok.encode(text, false).unwrap();
        if got != expected {
            failures.push(format!("{text:?}\n  expected {expected:?}\n  got      {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn smollm2_tokenizer_matches_llama_cpp() {
    check_plain_tokenization(SMOLLM2, SMOLLM2_FIXTURES);
}

#[test]
fn gemma3_tokenizer_matches_llama_cpp() {
    check_plain_tokenization(GEMMA3, GEMMA3_FIXTURES);
}

#[test]
fn qwen25_tokenizer_matches_llama_cpp() {
    check_plain_tokenization(QWEN25, QWEN25_FIXTURES);
}

#[test]
fn smollm2_chat_template_matches_jinja2_and_llama_cpp() {
    check_chat_template(SMOLLM2, SMOLLM2_FIXTURES);
}

#[test]
fn qwen25_chat_template_matches_jinja2_and_llama_cpp() {
    check_chat_template(QWEN25, QWEN25_FIXTURES);
}

fn check_chat_template(name: &str, fixtures: &str) {
    let Some((file, tok)) = tokenizer(name) else { return };
    let bos = tok.bos().and_then(|id| tok.token_text(id)).unwrap_or("");
    let eos = tok.eos().and_then(|id| tok.token_text(id)).unwrap_or("");
    let arch = file.require_str("general.architecture").unwrap();
    let template = ChatTemplate::new(tok.chat_template(), arch, bos, eos).unwrap();
    assert!(template.from_model);
    for case in fixture_lines(fixtures, "chat_template.jsonl") {
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let tools: Option<Vec<serde_json::Value>> = case.get("tools").map(|t| t.as_array().unwrap().clone());
        let text = template.render_with_tools(&messages, tools.as_deref(), agp).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "rendering of {messages:?}");
        assert_eq!(tok.encode(&text, true).unwrap(), ids(&case["ids"]), "ids of {text:?}");
    }
}

#[test]
fn special_tokens_parse_only_when_asked() {
    let Some((_, tok)) = tokenizer(SMOLLM2) else { return };
    let text = "<|im_start|>user";
    let special = tok.encode(text, true).unwrap();
    assert_eq!(special[0], tok.token_id("<|im_start|>").unwrap());
    let plain = tok.encode(text, false).unwrap();
    assert!(!plain.contains(&special[0]), "{plain:?}");
    assert_eq!(tok.decode(&plain).unwrap(), text);
}

#[test]
fn decoding_round_trips_the_fixture_texts() {
    for (name, fixtures) in [(SMOLLM2, SMOLLM2_FIXTURES), (GEMMA3, GEMMA3_FIXTURES)] {
        let Some((_, tok)) = tokenizer(name) else { return };
        for case in fixture_lines(fixtures, "tokenizer.jsonl") {
            let text = case["text"].as_str().unwrap();
            assert_eq!(tok.decode(&ids(&case["ids"])).unwrap(), text, "{name}");
        }
    }
}
