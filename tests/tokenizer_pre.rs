//! Pre-tokenizers are chosen by `tokenizer.ggml.pre`, and each splits text as its model
//! family does. Checked on small vocabularies written by pupil's GGUF writer: whole
//! pre-tokens that exist in the vocabulary show where the splits fall.

use pupil::gguf::{value::type_id, GgufFile, GgufWriter, Value};
use pupil::tokenizer::Tokenizer;

fn tokenizer(pre: &str, extra: &[&str]) -> Result<Tokenizer, pupil::tokenizer::TokenizerError> {
    let table = pupil::tokenizer::from_gguf::byte_level_table();
    let mut tokens: Vec<String> = table.iter().map(|c| c.to_string()).collect();
    tokens.extend(extra.iter().map(|s| s.to_string()));
    tokens.push("<|eot_id|>".into());
    let mut types = vec![Value::I32(1); tokens.len()];
    *types.last_mut().unwrap() = Value::I32(3);
    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", Value::String("gpt2".into()))
        .add("tokenizer.ggml.pre", Value::String(pre.into()))
        .add("tokenizer.ggml.tokens", Value::array(type_id::STRING, tokens.into_iter().map(Value::String).collect()))
        .add("tokenizer.ggml.token_type", Value::array(type_id::I32, types))
        .add("tokenizer.ggml.merges", Value::array(type_id::STRING, vec![]));
    let dir = std::env::temp_dir().join(format!("pupil-pre-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{pre}-{}.gguf", extra.len()));
    w.write(&path).unwrap();
    Tokenizer::from_gguf(&GgufFile::open(&path).unwrap())
}

fn pieces(tok: &Tokenizer, text: &str) -> Vec<String> {
    tok.encode(text, false).unwrap().iter().map(|&id| tok.token_text(id).unwrap().to_string()).collect()
}

#[test]
fn llama3_groups_digits_in_threes_and_keeps_contractions() {
    let tok = tokenizer("llama-bpe", &["123", "456", "'ll", "Ġgo", "!!"]).unwrap();
    assert_eq!(pieces(&tok, "1234567"), ["123", "456", "7"]);
    assert_eq!(pieces(&tok, "we'll go!!"), ["w", "e", "'ll", "Ġgo", "!!"]);
    // The end-of-turn control token is matched only with special parsing, and stops generation.
    let eot = tok.token_id("<|eot_id|>").unwrap();
    assert_eq!(tok.encode("<|eot_id|>", true).unwrap(), [eot]);
    assert!(tok.is_end_of_generation(eot));
}

#[test]
fn qwen2_and_smollm_split_single_digits() {
    for pre in ["qwen2", "smollm"] {
        let tok = tokenizer(pre, &["123", "12"]).unwrap();
        assert_eq!(pieces(&tok, "123"), ["1", "2", "3"], "{pre}");
    }
}

#[test]
fn unknown_pre_tokenizer_is_refused_not_guessed() {
    let e = tokenizer("mystery-pre", &[]).err().expect("refused");
    assert!(e.to_string().contains("unsupported pre-tokenizer \"mystery-pre\""), "{e}");
}
