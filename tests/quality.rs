//! KL divergence between models on the same text (llama-perplexity's `--kl-divergence`,
//! run side by side), and quality measurements refusing synthetic models.

mod common;

use common::*;
use pupil::bench::quality::kl_divergence;
use pupil::generate::Runtime;
use pupil::model::Target;
use pupil::train::LoraParams;

fn text() -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("targets/sample-corpus.txt")).unwrap()
}

#[test]
fn kl_divergence_is_zero_against_itself_and_grows_with_a_perturbation() {
    let Some(path) = model(SMOLLM2) else { return };
    let base = Runtime::load_path(&path, 2).unwrap();
    let same = kl_divergence(&base, &base, &text(), 128, Some(2), |_, _, _| {}).unwrap();
    assert_eq!(same.scored_tokens, 2 * 63);
    assert!(same.mean_kld.abs() < 1e-9 && same.same_top == 1.0, "{same:?}");

    let mut perturbed = Runtime::load_path(&path, 2).unwrap();
    let mut lora = LoraParams::for_model(&perturbed.model.cfg, 4, 8.0, &[Target::V, Target::Down], 1);
    for (_, _, _, b) in lora.adapter.tensors() {
        lora.adapter.values[b].iter_mut().enumerate().for_each(|(i, v)| *v = ((i % 7) as f32 - 3.0) * 0.01);
    }
    perturbed.model.add_adapter(lora.adapter.clone(), 1.0).unwrap();
    let k = kl_divergence(&perturbed, &base, &text(), 128, Some(2), |_, _, _| {}).unwrap();
    assert!(k.mean_kld > 1e-3 && k.mean_kld < 5.0 && k.max_kld >= k.mean_kld, "{k:?}");
    assert!(k.same_top < 1.0 && k.same_top > 0.3, "{k:?}");

    let (ok, stdout, stderr) = pupil_cli(&[
        "perplexity",
        "-m",
        path.to_str().unwrap(),
        "-f",
        "targets/sample-corpus.txt",
        "-c",
        "128",
        "--kl-reference",
        path.to_str().unwrap(),
        "-t",
        "2",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Mean KLD = 0.000000") && stdout.contains("same top p = 100.000 %"), "{stdout}");
}

#[test]
fn quality_refuses_other_vocabularies_and_synthetic_models() {
    let dir = scratch_dir("quality");
    let synth = dir.join("synth.gguf");
    pupil::synth::SynthModel::default().writer().write(&synth).unwrap();
    let (ok, _, stderr) = pupil_cli(&["perplexity", "-m", synth.to_str().unwrap(), "-f", "targets/sample-corpus.txt"]);
    assert!(!ok && stderr.contains("synthetic"), "{stderr}");
    let (ok, _, stderr) = pupil_cli(&[
        "bench",
        "-m",
        synth.to_str().unwrap(),
        "-p",
        "8",
        "-n",
        "0",
        "-r",
        "1",
        "--quality",
        "targets/sample-corpus.txt",
    ]);
    assert!(!ok && stderr.contains("synthetic"), "{stderr}");

    let (Some(smol), Some(gemma)) = (model(SMOLLM2), model(GEMMA3)) else { return };
    let (a, b) = (Runtime::load_path(&smol, 1).unwrap(), Runtime::load_path(&gemma, 1).unwrap());
    let err = kl_divergence(&a, &b, &text(), 128, Some(1), |_, _, _| {}).unwrap_err().to_string();
    assert!(err.contains("different vocabularies"), "{err}");
}
