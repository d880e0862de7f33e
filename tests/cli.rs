//! The `pupil` binary end to end on the real default model: streamed completion with a
//! stats line, JSON output, tokenize, chat over piped stdin, inspect and list.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

fn pupil(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pupil"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pupil");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn complete_streams_text_and_reports_stats() {
    let Some(path) = model(SMOLLM2) else { return };
    let m = path.to_str().unwrap();
    let (ok, stdout, stderr) =
        pupil(&["complete", "-m", m, "--temperature", "0", "-n", "8", "-t", "2", "The capital of France is"], None);
    assert!(ok, "{stderr}");
    // llama.cpp's greedy continuation starts " Paris.\n\nThe".
    assert!(stdout.starts_with(" Paris.\n\nThe"), "{stdout:?}");
    let stats = stderr.lines().last().unwrap();
    for field in ["load", "prompt 5 tokens", "generated 8 tokens", "t/s", "stop: max tokens"] {
        assert!(stats.contains(field), "{stats:?} lacks {field:?}");
    }
}

#[test]
fn complete_json_gives_ids_and_timings() {
    let Some(path) = model(SMOLLM2) else { return };
    let fixture = &fixture_lines(SMOLLM2_FIXTURES, "greedy.jsonl")[0];
    let (ok, stdout, stderr) = pupil(
        &[
            "complete",
            "-m",
            path.to_str().unwrap(),
            "--json",
            "--temperature",
            "0",
            "-n",
            "3",
            fixture["prompt"].as_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(ids(&v["prompt_ids"]), ids(&fixture["prompt_ids"]));
    assert_eq!(ids(&v["ids"]), ids(&fixture["ids"])[..3]);
    assert_eq!(v["stop"], "max_tokens");
    assert!(v["timings"]["generation_tps"].as_f64().unwrap() > 0.0);
    assert!(v["text"].as_str().unwrap().starts_with(" Paris"));
}

#[test]
fn special_token_text_is_parsed_unless_no_special() {
    let Some(path) = model(SMOLLM2) else { return };
    let m = path.to_str().unwrap();
    let prompt = "<|im_start|>user\nHi<|im_end|>\n";
    let (_, special, _) = pupil(&["complete", "-m", m, "--json", "-n", "1", "--temperature", "0", prompt], None);
    let (_, plain, _) =
        pupil(&["complete", "-m", m, "--json", "-n", "1", "--temperature", "0", "--no-special", prompt], None);
    let special: serde_json::Value = serde_json::from_str(special.trim()).unwrap();
    let plain: serde_json::Value = serde_json::from_str(plain.trim()).unwrap();
    assert_eq!(special["prompt_ids"][0], 1, "<|im_start|> is token 1");
    assert_ne!(plain["prompt_ids"][0], 1);
}

#[test]
fn tokenize_prints_fixture_ids() {
    let Some(path) = model(SMOLLM2) else { return };
    let case = &fixture_lines(SMOLLM2_FIXTURES, "tokenizer.jsonl")[2];
    let (ok, stdout, stderr) =
        pupil(&["tokenize", "-m", path.to_str().unwrap(), "--json", case["text"].as_str().unwrap()], None);
    assert!(ok, "{stderr}");
    let got: Vec<u32> = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(got, ids(&case["ids"]));
}

#[test]
fn chat_answers_piped_turns_and_resets() {
    let Some(path) = model(SMOLLM2) else { return };
    let m = path.to_str().unwrap();
    // The same question before and after /reset must get the same greedy reply, and that
    // reply is what `complete` gives for the template's rendering (from the fixtures).
    let input = "What is the capital of France?\n/reset\nWhat is the capital of France?\n/exit\nnot read\n";
    let (ok, stdout, stderr) = pupil(&["chat", "-m", m, "--temperature", "0", "-n", "24"], Some(input));
    assert!(ok, "{stderr}");
    assert!(stderr.contains("conversation cleared"), "{stderr:?}");
    let replies: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(replies.len(), 2, "two replies: {stdout:?}");
    assert_eq!(replies[0], replies[1], "a reset conversation answers as a new one");

    let rendered = &fixture_lines(SMOLLM2_FIXTURES, "chat_template.jsonl")[0];
    assert_eq!(rendered["messages"][0]["content"], "What is the capital of France?");
    let (ok, completion, stderr) =
        pupil(&["complete", "-m", m, "--temperature", "0", "-n", "24", rendered["text"].as_str().unwrap()], None);
    assert!(ok, "{stderr}");
    assert_eq!(completion.trim(), replies[0].trim(), "chat renders the template as the fixtures do");
}

#[test]
fn inspect_and_list_describe_the_model() {
    let Some(path) = model(SMOLLM2) else { return };
    let (ok, stdout, stderr) = pupil(&["inspect", path.to_str().unwrap()], None);
    assert!(ok, "{stderr}");
    for field in [
        "architecture:  llama",
        "block_count",
        "context_length                       8192",
        "gpt2 vocabulary, pre-tokenizer smollm, 49152 tokens",
        "chat template: present",
        "Q4_1",
        "Q8_0",
        "272 (",
    ] {
        assert!(stdout.contains(field), "inspect output lacks {field:?}:\n{stdout}");
    }
    let (ok, stdout, _) = pupil(&["list"], None);
    assert!(ok);
    assert!(stdout.contains("smollm2-135m-instruct") && stdout.contains("gemma3-270m"), "{stdout}");
}

/// `--chat --lookup` on a task that repeats its prompt: the stats line says how many
/// drafted tokens were kept; a draft model of another vocabulary is refused in one line.
#[test]
fn complete_speculates_and_refuses_a_foreign_draft_model() {
    let (Some(smollm2), Some(gemma)) = (model(SMOLLM2), model(GEMMA3)) else { return };
    let m = smollm2.to_str().unwrap();
    let prompt =
        "Repeat exactly: the quick brown fox jumps over the lazy dog, the quick brown fox jumps over the lazy dog.";
    let (ok, _, stderr) =
        pupil(&["complete", "-m", m, "--chat", "--lookup", "--temperature", "0", "-n", "24", "-t", "2", prompt], None);
    assert!(ok, "{stderr}");
    let stats = stderr.lines().last().unwrap();
    assert!(stats.contains("drafted tokens kept"), "{stats:?}");

    let (ok, _, stderr) = pupil(&["complete", "-m", m, "--draft", gemma.to_str().unwrap(), "-n", "4", "hi"], None);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("vocabulary differs"), "{stderr}");
}
