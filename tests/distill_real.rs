//! Distillation end to end on the real SmolLM2 through the binary: a teacher with a
//! system prompt writes targets, `distill` bakes the prompt into an adapter (the KL to the
//! teacher falls), the adapter applies with `complete --lora` and `experiment baking`
//! measures it from full distributions; bad adapters are one-line errors.

mod common;

use std::path::Path;

use common::*;

use common::pupil_cli as pupil;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const SYSTEM: &str = "You are a pirate. Start every answer with 'Arr!'.";

#[test]
fn a_baked_system_prompt_lowers_the_kl_to_the_teacher() {
    let Some(model) = model(SMOLLM2) else { return };
    let dir = scratch_dir("distill-real");
    let prompts = dir.join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"split\": \"train\", \"messages\": [{\"role\": \"user\", \"content\": \"What is the sea?\"}]}\n\
         {\"split\": \"train\", \"messages\": [{\"role\": \"user\", \"content\": \"Why is the sky blue?\"}]}\n\
         {\"split\": \"train\", \"messages\": [{\"role\": \"user\", \"content\": \"How do ships float?\"}]}\n",
    )
    .unwrap();
    let targets = dir.join("t.ptt");
    let (ok, _, stderr) = pupil(&[
        "-t",
        "2",
        "targets",
        "make",
        "--teacher",
        s(&model),
        "--prompts",
        s(&prompts),
        "--generate",
        "16",
        "--teacher-system",
        SYSTEM,
        "--seed",
        "4",
        "-o",
        s(&targets),
    ]);
    assert!(ok, "{stderr}");
    let adapter = dir.join("pirate.gguf");
    let (ok, stdout, stderr) = pupil(&[
        "-t",
        "2",
        "distill",
        "-m",
        s(&model),
        "--targets",
        s(&targets),
        "--eval-targets",
        s(&targets),
        "--steps",
        "12",
        "--lr",
        "1e-3",
        "--rank",
        "8",
        "--layers",
        "q,v,o,down",
        "--eval-every",
        "6",
        "-o",
        s(&adapter),
    ]);
    assert!(ok, "{stderr}");
    // "held-out KL A → B, top-1 agreement …"
    let line = stdout.lines().find(|l| l.starts_with("held-out KL")).unwrap_or_else(|| panic!("{stdout}"));
    let nums: Vec<f64> =
        line.split(|c: char| !(c.is_ascii_digit() || c == '.')).filter_map(|x| x.parse().ok()).collect();
    assert!(nums[1] < nums[0] * 0.7, "KL must fall well: {line}");
    assert!(dir.join("pirate.svg").exists() && dir.join("pirate.gguf.ckpt").exists());

    // Full-distribution check, and the adapter changes what `complete` writes.
    let eval = |lora: Option<&Path>| {
        let mut args = vec!["-t", "2", "experiment", "baking", "-m", s(&model), "--held", s(&targets)];
        args.extend(["--prompts", s(&prompts), "--split", "train", "--teacher-system", SYSTEM, "--json"]);
        if let Some(l) = lora {
            args.extend(["--lora", s(l)]);
        }
        let (ok, stdout, stderr) = pupil(&args);
        assert!(ok, "{stderr}");
        let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        // Free generation beside the forced measures: shares of distinct 2-grams of the
        // student's and the teacher's greedy replies.
        for share in ["distinct_2grams", "teacher_distinct_2grams"] {
            assert!(r[share].as_f64().is_some_and(|v| v > 0.0 && v <= 1.0), "{share}: {r}");
        }
        assert!(r["teacher_prefixed_replies"].as_u64().unwrap() <= r["prompts"].as_u64().unwrap(), "{r}");
        r["kl"].as_f64().unwrap()
    };
    let (before, after) = (eval(None), eval(Some(&adapter)));
    assert!(after < before * 0.7, "full KL {before} → {after}");
    let complete = |extra: &[&str]| {
        let mut args = vec!["complete", "-m", s(&model), "--temperature", "0", "-n", "12", "-t", "2"];
        args.extend_from_slice(extra);
        args.push("<|im_start|>user\nWhat is the sea?<|im_end|>\n<|im_start|>assistant\n");
        let (ok, stdout, stderr) = pupil(&args);
        assert!(ok, "{stderr}");
        stdout
    };
    assert_ne!(complete(&[]), complete(&["--lora", s(&adapter)]));
    assert_eq!(complete(&["--lora", s(&adapter), "--lora-scale", "0"]), complete(&[]));

    // Bad adapters: not an adapter, and one for another model.
    let (ok, _, stderr) = pupil(&["complete", "-m", s(&model), "-n", "1", "--lora", s(&targets), "hi"]);
    assert!(!ok && stderr.contains("pupil: error"), "{stderr}");
    let Some(gemma) = common::model(GEMMA3) else { return };
    let (ok, _, stderr) = pupil(&["complete", "-m", s(&gemma), "-n", "1", "--lora", s(&adapter), "hi"]);
    assert!(!ok && stderr.contains("made for a llama model"), "{stderr}");
}
