//! The teacher-target file on its own (no model): write → read round trips in both
//! encodings across chunks, resume after a cut, and every kind of damage is a clear error
//! from the library and from `pupil targets verify`/`inspect`.

mod common;

use std::path::Path;

use common::{pupil_cli, scratch_dir};
use pupil::rng::Rng;
use pupil::targets::format::round_logprob;
use pupil::targets::*;

const N_VOCAB: u32 = 40_000;

fn header(encoding: Encoding) -> Header {
    Header {
        teacher: TeacherInfo { name: "test".into(), sha256: None, architecture: None },
        tokenizer: TokenizerInfo { fingerprint: "ab".repeat(32), n_vocab: N_VOCAB },
        encoding,
        temperature: 1.0,
        source: SourceInfo {
            kind: "text".into(),
            path: "x.txt".into(),
            sha256: "00".repeat(32),
            params: Default::default(),
        },
        created: "2026-11-26T00:00:00Z".into(),
        pupil_version: "test".into(),
    }
}

/// Random records: some masked positions, distributions with random ids and values.
fn records(encoding: Encoding, n: usize, seed: u64) -> Vec<SequenceRecord> {
    let mut rng = Rng::new(seed);
    let id = |rng: &mut Rng| (rng.next_u64() % N_VOCAB as u64) as u32;
    (0..n)
        .map(|_| {
            let len = 1 + (rng.next_u64() % 40) as usize;
            let tokens: Vec<u32> = (0..len).map(|_| id(&mut rng)).collect();
            let flags: Vec<u8> = (0..len)
                .map(|_| match rng.next_u64() % 3 {
                    0 => 0,
                    1 => FLAG_TARGET,
                    _ => FLAG_TARGET | FLAG_TRAIN,
                })
                .collect();
            let targets = flags
                .iter()
                .filter(|&&f| f & FLAG_TARGET != 0)
                .map(|_| {
                    let slots = encoding.slots() as usize;
                    let mut ids: Vec<u32> = Vec::new();
                    while ids.len() < 1 + (rng.next_u64() as usize % slots) {
                        let x = id(&mut rng);
                        if !ids.contains(&x) {
                            ids.push(x);
                        }
                    }
                    let mut lps: Vec<f32> =
                        ids.iter().map(|_| round_logprob(-(rng.next_f64() * 12.0) as f32)).collect();
                    lps.sort_by(|a, b| b.total_cmp(a));
                    match encoding {
                        Encoding::TopK { .. } => Dist::TopK {
                            ids,
                            logprobs: lps,
                            rest_logprob: round_logprob(-(rng.next_f64() * 5.0) as f32),
                        },
                        Encoding::Sampled { samples } => {
                            let mut counts = vec![1u32; ids.len()];
                            counts[0] += samples - ids.len() as u32;
                            Dist::Sampled { ids, counts, logprobs: lps }
                        }
                    }
                })
                .collect();
            SequenceRecord { tokens, flags, targets }
        })
        .collect()
}

fn write_file(path: &Path, encoding: Encoding, recs: &[SequenceRecord], per_chunk: usize) -> Totals {
    let policy = ChunkPolicy { max_sequences: per_chunk, ..ChunkPolicy::default() };
    let Opened::Fresh(mut w) = TargetWriter::open(path, header(encoding), policy).unwrap() else {
        panic!("expected a fresh file")
    };
    for r in recs {
        w.push(r).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn round_trip_in_both_encodings_across_chunks() {
    let dir = scratch_dir("roundtrip");
    for enc in [Encoding::TopK { k: 16 }, Encoding::Sampled { samples: 12 }] {
        let path = dir.join("t.ptt");
        let _ = std::fs::remove_file(&path);
        let recs = records(enc, 25, 7);
        let totals = write_file(&path, enc, &recs, 4);
        assert!(!partial_path(&path).exists(), "the partial file is renamed on finish");
        let f = TargetFile::open(&path).unwrap();
        assert_eq!(f.totals(), totals);
        assert_eq!(f.chunks(), 7 + 1, "25 records in chunks of 4, plus END");
        assert_eq!(f.header(), &header(enc));
        let back: Vec<SequenceRecord> = (0..f.len()).map(|i| f.sequence(i).unwrap()).collect();
        assert_eq!(back, recs, "{enc:?}");
        let s = stats(&f).unwrap();
        assert_eq!(s.totals.targets as usize, recs.iter().map(|r| r.targets.len()).sum::<usize>());
    }
}

#[test]
fn a_cut_partial_file_resumes_to_the_same_bytes() {
    let dir = scratch_dir("resume");
    let enc = Encoding::TopK { k: 8 };
    let recs = records(enc, 20, 3);
    let whole = dir.join("whole.ptt");
    write_file(&whole, enc, &recs, 3);
    let full = std::fs::read(&whole).unwrap();

    for cut in [full.len() / 3, full.len() / 2 + 7, full.len() - 30] {
        let out = dir.join(format!("cut{cut}.ptt"));
        std::fs::write(partial_path(&out), &full[..cut]).unwrap();
        let policy = ChunkPolicy { max_sequences: 3, ..ChunkPolicy::default() };
        let (mut w, done) = match TargetWriter::open(&out, header(enc), policy).unwrap() {
            Opened::Resumed { writer, done, .. } => (writer, done as usize),
            _ => panic!("expected a resume"),
        };
        // Whole chunks only; the last cut falls inside the END chunk, after every record.
        assert!(done % 3 == 0 || done == recs.len(), "{done}");
        for r in &recs[done..] {
            w.push(r).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), full, "cut at {cut}");
    }

    // The same job on a finished file is a no-op; a different job is refused, untouched.
    assert!(matches!(TargetWriter::open(&whole, header(enc), ChunkPolicy::default()).unwrap(), Opened::Complete(_)));
    let mut other = header(enc);
    other.temperature = 2.0;
    let err = TargetWriter::open(&whole, other.clone(), ChunkPolicy::default()).err().unwrap().to_string();
    assert!(err.contains("different command"), "{err}");
    std::fs::write(partial_path(&dir.join("p.ptt")), &full[..full.len() / 2]).unwrap();
    let err = TargetWriter::open(&dir.join("p.ptt"), other, ChunkPolicy::default()).err().unwrap().to_string();
    assert!(err.contains("different command"), "{err}");
    assert_eq!(std::fs::read(partial_path(&dir.join("p.ptt"))).unwrap(), &full[..full.len() / 2]);
}

/// Both the library and the CLI refuse `bytes` with an error containing `needle`.
fn assert_damaged(dir: &Path, name: &str, bytes: &[u8], needle: &str) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let err = match TargetFile::open(&path) {
        Ok(f) => (0..f.len()).find_map(|i| f.sequence(i).err()).expect("damage detected").to_string(),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(needle), "{name}: {err}");
    for cmd in ["verify", "inspect"] {
        let (ok, _, stderr) = pupil_cli(&["targets", cmd, path.to_str().unwrap()]);
        assert!(!ok, "{cmd} {name} succeeded");
        assert!(stderr.contains(needle), "{cmd} {name}: {stderr}");
    }
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().unwrap())
}

/// Rewrites the checksums of the chunk at `at` after its payload was edited.
fn reseal_chunk(b: &mut [u8], at: usize) {
    let len = u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap()) as usize;
    let crc = crc32fast::hash(&b[at + 24..at + 24 + len]);
    b[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32fast::hash(&b[at..at + 20]);
    b[at + 20..at + 24].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn damaged_files_are_clear_errors() {
    let dir = scratch_dir("damage");
    let enc = Encoding::TopK { k: 4 };
    let good_path = dir.join("good.ptt");
    write_file(&good_path, enc, &records(enc, 6, 1), 2);
    let good = std::fs::read(&good_path).unwrap();
    let (ok, _, _) = pupil_cli(&["targets", "verify", good_path.to_str().unwrap()]);
    assert!(ok);
    let first_chunk = 16 + u32_at(&good, 12) as usize + 4;

    let mut b = good.clone();
    b[..8].copy_from_slice(b"GGUF\x03\0\0\0");
    assert_damaged(&dir, "magic.ptt", &b, "not a teacher-target file");

    let mut b = good.clone();
    b[8] = 9;
    assert_damaged(&dir, "version.ptt", &b, "version 9 is not supported");

    let mut b = good.clone();
    b[20] ^= 1; // inside the header JSON
    assert_damaged(&dir, "header.ptt", &b, "header is damaged");

    assert_damaged(&dir, "short.ptt", &good[..first_chunk - 3], "header is damaged");
    assert_damaged(&dir, "cut.ptt", &good[..first_chunk + 40], "truncated in chunk 0");
    let second =
        first_chunk + 24 + u64::from_le_bytes(good[first_chunk + 8..first_chunk + 16].try_into().unwrap()) as usize;
    assert_damaged(&dir, "cut2.ptt", &good[..second + 30], "truncated in chunk 1");

    let mut b = good.clone();
    b[first_chunk + 30] ^= 0x10;
    assert_damaged(&dir, "flip.ptt", &b, "chunk 0 (at byte");
    let mut b = good.clone();
    b[second + 9] ^= 0x01; // payload length of chunk 1
    assert_damaged(&dir, "flip2.ptt", &b, "chunk 1");

    // Without the END chunk the file is unfinished, not silently short.
    let end = good.len() - 24 - 24;
    assert_damaged(&dir, "noend.ptt", &good[..end], "no END chunk");

    // A token id the id field can hold but the vocabulary cannot (checksums resealed).
    let mut b = good.clone();
    b[first_chunk + 24 + 8] = 0xFF;
    b[first_chunk + 24 + 9] = 0xFF;
    reseal_chunk(&mut b, first_chunk);
    assert_damaged(&dir, "id.ptt", &b, "≥ vocabulary size 40000");

    // A record count that the payload cannot hold.
    let mut b = good.clone();
    b[first_chunk + 4] = 200;
    reseal_chunk(&mut b, first_chunk);
    assert_damaged(&dir, "count.ptt", &b, "record");

    let (ok, _, stderr) = pupil_cli(&["targets", "inspect", dir.join("missing.ptt").to_str().unwrap()]);
    assert!(!ok && stderr.contains("missing.ptt"), "{stderr}");
}

#[test]
fn a_student_with_another_vocabulary_is_refused() {
    let h = header(Encoding::TopK { k: 4 });
    let err = h.check_student(&[7u8; 32]).unwrap_err().to_string();
    assert!(err.contains("another tokenizer"), "{err}");
    let mut same = [0u8; 32];
    same.fill(0xab);
    h.check_student(&same).unwrap();
}
