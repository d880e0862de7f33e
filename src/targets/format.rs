//! The teacher-target file format, version 1 (specified in `targets/FORMAT.md`): the
//! header, the bit-packed sequence records, and their encoding and decoding.
//!
//! Everything here works on byte slices, so a reader can decode records straight out of
//! a memory map and a writer can build them in memory before appending a chunk.

use serde::{Deserialize, Serialize};

/// First 8 bytes of every file.
pub const MAGIC: &[u8; 8] = b"PUPILTGT";
/// The only version this build reads and writes.
pub const VERSION: u32 = 1;
/// Magic, version, header length.
pub const PREAMBLE_LEN: usize = 16;
/// Tag, sequence count, payload length, payload CRC, chunk-header CRC.
pub const CHUNK_HEADER_LEN: usize = 24;
pub const TAG_SEQUENCES: &[u8; 4] = b"SEQS";
pub const TAG_END: &[u8; 4] = b"END!";
/// The END chunk's payload: total sequences, tokens and target positions (3 × u64).
pub const END_PAYLOAD_LEN: usize = 24;
/// Bits of a stored negative log-probability: an IEEE half with its sign bit dropped
/// (log-probabilities are ≤ 0, so the sign carries nothing).
pub const NLP_BITS: u32 = 15;
/// A half-float +∞: "probability zero" (an empty top-k slot, or no mass left outside).
pub const NLP_INFINITY: u16 = 0x7C00;
/// Largest header accepted on read: headers are a few hundred bytes of JSON.
pub const MAX_HEADER_LEN: usize = 1 << 20;
/// Largest k or sample count accepted: entries stay a few hundred bytes.
pub const MAX_SLOTS: u32 = 1024;

/// Per-position flag: a teacher distribution is stored for this position.
pub const FLAG_TARGET: u8 = 1;
/// Per-position flag: the loss applies at this position (clear on masked prompt tokens).
pub const FLAG_TRAIN: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("not a teacher-target file (magic {found:?}, expected \"PUPILTGT\")")]
    BadMagic { found: String },
    #[error("teacher-target file version {0} is not supported (this pupil reads version {VERSION})")]
    BadVersion(u32),
    #[error("header is damaged: {0}")]
    BadHeader(String),
    #[error("file is truncated in chunk {chunk} (at byte {offset}): {what}")]
    Truncated { chunk: usize, offset: u64, what: String },
    #[error("chunk {chunk} (at byte {offset}) is corrupted: {what}")]
    Corrupt { chunk: usize, offset: u64, what: String },
    #[error("file has no END chunk: the writer was interrupted (re-run the same command to finish it)")]
    Unfinished,
    #[error("sequence {sequence}: {what}")]
    BadRecord { sequence: usize, what: String },
    #[error(
        "these targets were made with another tokenizer (fingerprint {file}…, student {student}…): \
         token ids would mean different things; make targets with a teacher that shares the student's vocabulary"
    )]
    TokenizerMismatch { file: String, student: String },
    #[error("{0}")]
    Invalid(String),
}

/// How each target position's distribution is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Encoding {
    /// The `k` most likely ids with their log-probabilities, most likely first, plus the
    /// log of the mass outside them.
    TopK { k: u32 },
    /// `samples` ids drawn from the teacher distribution, stored as distinct ids with
    /// counts (and each id's log-probability): `count / samples` is an unbiased estimate of
    /// the teacher's probability.
    Sampled { samples: u32 },
}

impl Encoding {
    pub fn slots(&self) -> u32 {
        match *self {
            Encoding::TopK { k } => k,
            Encoding::Sampled { samples } => samples,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Encoding::TopK { k } => format!("top-k (k = {k})"),
            Encoding::Sampled { samples } => format!("sampled ({samples} draws per position)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherInfo {
    /// What the user called it (catalog name or file name).
    pub name: String,
    /// sha256 of the teacher GGUF, hex, when known.
    pub sha256: Option<String>,
    pub architecture: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// sha256 over the vocabulary tokens and their types, hex (see
    /// `tokenizer::from_gguf::vocabulary_fingerprint`).
    pub fingerprint: String,
    pub n_vocab: u32,
}

/// Where the token sequences came from and how they were cut; a resumed run must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `text`, `prompts`, or `import:<engine>`.
    pub kind: String,
    /// The input file's name as given.
    pub path: String,
    /// sha256 of the input file, hex.
    pub sha256: String,
    /// Everything else that shapes the records (context size, system prompt, seed, …).
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// The header, stored as JSON after the preamble.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub teacher: TeacherInfo,
    pub tokenizer: TokenizerInfo,
    pub encoding: Encoding,
    /// Temperature the stored log-probabilities were computed at (softmax(logits / T)).
    pub temperature: f32,
    pub source: SourceInfo,
    /// RFC 3339 UTC time the file was started.
    pub created: String,
    pub pupil_version: String,
}

impl Header {
    /// Whether `other` describes the same job (everything but when and by which build it
    /// was started): the condition for resuming a partial file.
    pub fn same_job(&self, other: &Header) -> bool {
        let strip = |h: &Header| Header { created: String::new(), pupil_version: String::new(), ..h.clone() };
        strip(self) == strip(other)
    }

    pub fn layout(&self) -> Result<Layout, TargetsError> {
        Layout::new(self.encoding, self.tokenizer.n_vocab)
    }

    /// Refuses a student whose vocabulary differs from the teacher's.
    pub fn check_student(&self, student_fingerprint: &[u8; 32]) -> Result<(), TargetsError> {
        let student = crate::fsutil::hex(student_fingerprint);
        if student != self.tokenizer.fingerprint {
            return Err(TargetsError::TokenizerMismatch {
                file: self.tokenizer.fingerprint.chars().take(12).collect(),
                student: student[..12].to_string(),
            });
        }
        Ok(())
    }
}

/// Bit widths and entry size that follow from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub encoding: Encoding,
    pub n_vocab: u32,
    /// Bits per token id: enough for `n_vocab - 1`.
    pub id_bits: u32,
    /// Bits per sample count (sampled encoding only).
    pub count_bits: u32,
    /// Bytes per stored distribution.
    pub entry_bytes: usize,
}

impl Layout {
    pub fn new(encoding: Encoding, n_vocab: u32) -> Result<Self, TargetsError> {
        let slots = encoding.slots();
        if slots == 0 || slots > MAX_SLOTS {
            return Err(TargetsError::BadHeader(format!("{} slots per position (1..={MAX_SLOTS})", slots)));
        }
        if n_vocab < 2 {
            return Err(TargetsError::BadHeader(format!("vocabulary of {n_vocab} tokens")));
        }
        let id_bits = bits_for(n_vocab - 1);
        let (count_bits, bits) = match encoding {
            Encoding::TopK { k } => (0, k * (id_bits + NLP_BITS) + NLP_BITS),
            Encoding::Sampled { samples } => {
                let c = bits_for(samples);
                (c, samples * (id_bits + c + NLP_BITS))
            }
        };
        Ok(Self { encoding, n_vocab, id_bits, count_bits, entry_bytes: bits.div_ceil(8) as usize })
    }

    /// Bytes of one sequence record of `n_tokens` tokens with `n_targets` targets.
    pub fn record_bytes(&self, n_tokens: usize, n_targets: usize) -> usize {
        8 + (n_tokens * self.id_bits as usize).div_ceil(8) + (n_tokens * 2).div_ceil(8) + n_targets * self.entry_bytes
    }
}

/// Bits needed to hold `max` (at least 1).
fn bits_for(max: u32) -> u32 {
    (32 - max.leading_zeros()).max(1)
}

/// One position's teacher distribution, as stored (log-probabilities rounded to halves).
#[derive(Debug, Clone, PartialEq)]
pub enum Dist {
    TopK {
        /// Most likely first; at most k.
        ids: Vec<u32>,
        logprobs: Vec<f32>,
        /// log of the probability mass outside `ids` (−∞ when they hold it all).
        rest_logprob: f32,
    },
    Sampled {
        /// Distinct drawn ids.
        ids: Vec<u32>,
        /// How often each was drawn; they sum to the sample count.
        counts: Vec<u32>,
        /// The teacher's log-probability of each id.
        logprobs: Vec<f32>,
    },
}

impl Dist {
    pub fn ids(&self) -> &[u32] {
        match self {
            Dist::TopK { ids, .. } | Dist::Sampled { ids, .. } => ids,
        }
    }

    pub fn logprobs(&self) -> &[f32] {
        match self {
            Dist::TopK { logprobs, .. } | Dist::Sampled { logprobs, .. } => logprobs,
        }
    }

    /// Teacher probability mass held by the stored ids.
    pub fn covered_mass(&self) -> f64 {
        self.logprobs().iter().map(|&l| (l as f64).exp()).sum()
    }
}

/// One sequence: the student's input tokens, a flag byte per position and the targets of
/// the positions flagged [`FLAG_TARGET`], in order. Position `i`'s target is the teacher's
/// distribution over the token that follows `tokens[i]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SequenceRecord {
    pub tokens: Vec<u32>,
    pub flags: Vec<u8>,
    pub targets: Vec<Dist>,
}

impl SequenceRecord {
    pub fn n_targets(&self) -> usize {
        self.flags.iter().filter(|&&f| f & FLAG_TARGET != 0).count()
    }
}

/// Rounds a log-probability to what the file stores (an unsigned half of its negation).
pub fn to_nlp(logprob: f32) -> u16 {
    if logprob.is_nan() {
        return NLP_INFINITY;
    }
    let bits = half::f16::from_f32((-logprob).max(0.0)).to_bits();
    bits & 0x7FFF
}

pub fn from_nlp(nlp: u16) -> f32 {
    -half::f16::from_bits(nlp).to_f32()
}

/// `logprob` after the storage round trip.
pub fn round_logprob(logprob: f32) -> f32 {
    from_nlp(to_nlp(logprob))
}

struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u64,
    n: u32,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out, acc: 0, n: 0 }
    }

    fn put(&mut self, value: u32, bits: u32) {
        debug_assert!(bits <= 32 && (bits == 32 || value >> bits == 0));
        self.acc |= (value as u64) << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// Pads to a byte boundary.
    fn finish(mut self) {
        if self.n > 0 {
            self.out.push(self.acc as u8);
            self.n = 0;
        }
    }
}

/// Reads LSB-first bit fields; the caller has checked that the slice is long enough.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    n: u32,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0, acc: 0, n: 0 }
    }

    fn get(&mut self, bits: u32) -> u32 {
        while self.n < bits {
            let byte = self.data.get(self.pos).copied().unwrap_or(0);
            self.acc |= (byte as u64) << self.n;
            self.pos += 1;
            self.n += 8;
        }
        let v = (self.acc & ((1u64 << bits) - 1)) as u32;
        self.acc >>= bits;
        self.n -= bits;
        v
    }
}

/// Appends `rec` to `out` in the record layout, after checking it against `layout`.
pub fn encode_record(layout: &Layout, rec: &SequenceRecord, out: &mut Vec<u8>) -> Result<(), TargetsError> {
    let bad = |what: String| TargetsError::Invalid(format!("cannot store sequence: {what}"));
    let n = rec.tokens.len();
    if rec.flags.len() != n {
        return Err(bad(format!("{} flags for {n} tokens", rec.flags.len())));
    }
    if rec.targets.len() != rec.n_targets() {
        return Err(bad(format!("{} targets for {} flagged positions", rec.targets.len(), rec.n_targets())));
    }
    if n > u32::MAX as usize {
        return Err(bad("too many tokens".into()));
    }
    if let Some(&id) = rec.tokens.iter().find(|&&id| id >= layout.n_vocab) {
        return Err(bad(format!("token id {id} ≥ vocabulary size {}", layout.n_vocab)));
    }
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&(rec.targets.len() as u32).to_le_bytes());
    let mut w = BitWriter::new(out);
    for &id in &rec.tokens {
        w.put(id, layout.id_bits);
    }
    w.finish();
    let mut w = BitWriter::new(out);
    for &f in &rec.flags {
        w.put((f & (FLAG_TARGET | FLAG_TRAIN)) as u32, 2);
    }
    w.finish();
    for dist in &rec.targets {
        encode_dist(layout, dist, out).map_err(bad)?;
    }
    Ok(())
}

fn encode_dist(layout: &Layout, dist: &Dist, out: &mut Vec<u8>) -> Result<(), String> {
    let start = out.len();
    let slots = layout.encoding.slots() as usize;
    let check_ids = |ids: &[u32]| -> Result<(), String> {
        if ids.len() > slots {
            return Err(format!("{} ids for {slots} slots", ids.len()));
        }
        match ids.iter().find(|&&id| id >= layout.n_vocab) {
            Some(id) => Err(format!("target id {id} ≥ vocabulary size {}", layout.n_vocab)),
            None => Ok(()),
        }
    };
    if dist.logprobs().iter().any(|l| l.is_nan()) {
        return Err("a log-probability is NaN".into());
    }
    let mut w = BitWriter::new(out);
    match (layout.encoding, dist) {
        (Encoding::TopK { .. }, Dist::TopK { ids, logprobs, rest_logprob }) => {
            check_ids(ids)?;
            if logprobs.len() != ids.len() {
                return Err(format!("{} log-probabilities for {} ids", logprobs.len(), ids.len()));
            }
            if logprobs.iter().any(|&l| to_nlp(l) == NLP_INFINITY) {
                return Err("a top-k entry has probability 0 (leave it out)".into());
            }
            for (&id, &l) in ids.iter().zip(logprobs) {
                w.put(id, layout.id_bits);
                w.put(to_nlp(l) as u32, NLP_BITS);
            }
            for _ in ids.len()..slots {
                w.put(0, layout.id_bits);
                w.put(NLP_INFINITY as u32, NLP_BITS);
            }
            w.put(to_nlp(*rest_logprob) as u32, NLP_BITS);
        }
        (Encoding::Sampled { samples }, Dist::Sampled { ids, counts, logprobs }) => {
            check_ids(ids)?;
            if counts.len() != ids.len() || logprobs.len() != ids.len() {
                return Err("ids, counts and log-probabilities differ in length".into());
            }
            let total: u64 = counts.iter().map(|&c| c as u64).sum();
            if total != samples as u64 || counts.contains(&0) {
                return Err(format!("counts {counts:?} must be positive and sum to {samples}"));
            }
            for slot in 0..slots {
                match ids.get(slot) {
                    Some(&id) => {
                        w.put(id, layout.id_bits);
                        w.put(counts[slot], layout.count_bits);
                        w.put(to_nlp(logprobs[slot]) as u32, NLP_BITS);
                    }
                    None => {
                        // An empty slot: the three fields, zero (one put could pass 32 bits).
                        w.put(0, layout.id_bits);
                        w.put(0, layout.count_bits);
                        w.put(0, NLP_BITS);
                    }
                }
            }
        }
        _ => return Err("distribution does not match the file's encoding".into()),
    }
    w.finish();
    debug_assert_eq!(out.len() - start, layout.entry_bytes);
    Ok(())
}

/// A sequence record located inside a payload: zero-copy views of its parts.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub n_tokens: usize,
    pub n_targets: usize,
    tokens: &'a [u8],
    flags: &'a [u8],
    entries: &'a [u8],
}

/// Splits the record at the start of `data`, checking its lengths; returns it and its size.
pub fn split_record<'a>(layout: &Layout, data: &'a [u8]) -> Result<(RecordView<'a>, usize), String> {
    if data.len() < 8 {
        return Err(format!("record header needs 8 bytes, {} left", data.len()));
    }
    let n_tokens = u32::from_le_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
    let n_targets = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes")) as usize;
    if n_targets > n_tokens {
        return Err(format!("{n_targets} targets for {n_tokens} tokens"));
    }
    // n_tokens < 2^32 and entry_bytes is bounded, so this cannot overflow a u64 or usize.
    let size = layout.record_bytes(n_tokens, n_targets);
    if size > data.len() {
        return Err(format!("record of {n_tokens} tokens needs {size} bytes, {} left", data.len()));
    }
    let tok_len = (n_tokens * layout.id_bits as usize).div_ceil(8);
    let flag_len = (n_tokens * 2).div_ceil(8);
    let (tokens, rest) = data[8..size].split_at(tok_len);
    let (flags, entries) = rest.split_at(flag_len);
    Ok((RecordView { n_tokens, n_targets, tokens, flags, entries }, size))
}

impl RecordView<'_> {
    /// Decodes the record, checking ids against the vocabulary and the entries' invariants.
    pub fn decode(&self, layout: &Layout) -> Result<SequenceRecord, String> {
        let mut r = BitReader::new(self.tokens);
        let tokens: Vec<u32> = (0..self.n_tokens).map(|_| r.get(layout.id_bits)).collect();
        if let Some(&id) = tokens.iter().find(|&&id| id >= layout.n_vocab) {
            return Err(format!("token id {id} ≥ vocabulary size {}", layout.n_vocab));
        }
        let mut r = BitReader::new(self.flags);
        let flags: Vec<u8> = (0..self.n_tokens).map(|_| r.get(2) as u8).collect();
        let flagged = flags.iter().filter(|&&f| f & FLAG_TARGET != 0).count();
        if flagged != self.n_targets {
            return Err(format!("{flagged} positions flagged for {} stored targets", self.n_targets));
        }
        let targets = self
            .entries
            .chunks_exact(layout.entry_bytes)
            .map(|e| decode_dist(layout, e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SequenceRecord { tokens, flags, targets })
    }
}

fn decode_nlp(r: &mut BitReader) -> Result<f32, String> {
    let nlp = r.get(NLP_BITS) as u16;
    if nlp > NLP_INFINITY {
        return Err(format!("log-probability bits {nlp:#06x} are NaN"));
    }
    Ok(from_nlp(nlp))
}

fn decode_dist(layout: &Layout, entry: &[u8]) -> Result<Dist, String> {
    let mut r = BitReader::new(entry);
    let slots = layout.encoding.slots() as usize;
    let check = |id: u32| {
        if id >= layout.n_vocab {
            Err(format!("target id {id} ≥ vocabulary size {}", layout.n_vocab))
        } else {
            Ok(id)
        }
    };
    match layout.encoding {
        Encoding::TopK { .. } => {
            let (mut ids, mut logprobs) = (Vec::with_capacity(slots), Vec::with_capacity(slots));
            for slot in 0..slots {
                let id = check(r.get(layout.id_bits))?;
                let lp = decode_nlp(&mut r)?;
                if lp != f32::NEG_INFINITY {
                    // Empty slots (probability 0) only pad the end.
                    if ids.len() != slot {
                        return Err("a top-k entry follows an empty slot".into());
                    }
                    ids.push(id);
                    logprobs.push(lp);
                }
            }
            let rest_logprob = decode_nlp(&mut r)?;
            Ok(Dist::TopK { ids, logprobs, rest_logprob })
        }
        Encoding::Sampled { samples } => {
            let (mut ids, mut counts, mut logprobs) = (Vec::new(), Vec::new(), Vec::new());
            let mut total = 0u64;
            for _ in 0..slots {
                let id = check(r.get(layout.id_bits))?;
                let count = r.get(layout.count_bits);
                let lp = decode_nlp(&mut r)?;
                if count > 0 {
                    if ids.contains(&id) {
                        return Err(format!("sampled id {id} stored twice"));
                    }
                    ids.push(id);
                    counts.push(count);
                    logprobs.push(lp);
                    total += count as u64;
                }
            }
            if total != samples as u64 {
                return Err(format!("sample counts sum to {total}, not {samples}"));
            }
            Ok(Dist::Sampled { ids, counts, logprobs })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_sizes_match_the_spec() {
        // SmolLM2 (49,152 tokens: 16-bit ids) at k = 16: 16 × 31 + 15 bits = 64 bytes.
        let l = Layout::new(Encoding::TopK { k: 16 }, 49_152).unwrap();
        assert_eq!((l.id_bits, l.entry_bytes), (16, 64));
        // Gemma 3 (262,144 tokens: 18-bit ids).
        assert_eq!(Layout::new(Encoding::TopK { k: 16 }, 262_144).unwrap().entry_bytes, 68);
        // 12 samples: 12 × (16 + 4 + 15) bits = 52.5 → 53 bytes.
        let s = Layout::new(Encoding::Sampled { samples: 12 }, 49_152).unwrap();
        assert_eq!((s.count_bits, s.entry_bytes), (4, 53));
        assert!(Layout::new(Encoding::TopK { k: 0 }, 10).is_err());
        assert!(Layout::new(Encoding::TopK { k: 4 }, 1).is_err());
    }

    #[test]
    fn nlp_round_trip_and_special_values() {
        assert_eq!(to_nlp(f32::NEG_INFINITY), NLP_INFINITY);
        assert_eq!(from_nlp(NLP_INFINITY), f32::NEG_INFINITY);
        assert_eq!(round_logprob(0.0), 0.0);
        assert_eq!(round_logprob(-0.5), -0.5);
        // Positive inputs (rounding noise above 0) clamp to probability 1.
        assert_eq!(round_logprob(1e-7), 0.0);
        let lp = -3.3f32;
        assert!((round_logprob(lp) - lp).abs() < 2e-3);
    }

    fn sample_record(layout: &Layout) -> SequenceRecord {
        let top = |a: u32| Dist::TopK {
            ids: vec![a, a + 1, 7],
            logprobs: vec![round_logprob(-0.1), round_logprob(-2.5), round_logprob(-4.0)],
            rest_logprob: round_logprob(-5.0),
        };
        let sampled = |a: u32| Dist::Sampled {
            ids: vec![a, 3],
            counts: vec![3, 1],
            logprobs: vec![round_logprob(-0.2), round_logprob(-1.7)],
        };
        let make = |a| if let Encoding::TopK { .. } = layout.encoding { top(a) } else { sampled(a) };
        SequenceRecord {
            tokens: vec![1, 2, 40_000, 5, layout.n_vocab - 1],
            flags: vec![0, FLAG_TARGET | FLAG_TRAIN, FLAG_TARGET, 0, FLAG_TARGET | FLAG_TRAIN],
            targets: vec![make(10), make(20), make(30)],
        }
    }

    #[test]
    fn records_round_trip_in_both_encodings() {
        for enc in [Encoding::TopK { k: 4 }, Encoding::Sampled { samples: 4 }] {
            let layout = Layout::new(enc, 49_152).unwrap();
            let rec = sample_record(&layout);
            let mut buf = vec![0xAA]; // records need not start aligned
            encode_record(&layout, &rec, &mut buf).unwrap();
            assert_eq!(buf.len() - 1, layout.record_bytes(5, 3));
            let (view, size) = split_record(&layout, &buf[1..]).unwrap();
            assert_eq!(size, buf.len() - 1);
            assert_eq!(view.decode(&layout).unwrap(), rec);
        }
    }

    #[test]
    fn bad_records_are_refused_on_write_and_read() {
        let layout = Layout::new(Encoding::TopK { k: 4 }, 49_152).unwrap();
        let mut rec = sample_record(&layout);
        rec.tokens[0] = 49_152;
        assert!(encode_record(&layout, &rec, &mut Vec::new()).is_err());
        let mut rec = sample_record(&layout);
        rec.flags[0] = FLAG_TARGET;
        assert!(encode_record(&layout, &rec, &mut Vec::new()).is_err());

        // An id past the vocabulary in a file whose id field can hold it.
        let small = Layout::new(Encoding::TopK { k: 1 }, 40_000).unwrap();
        let mut buf = Vec::new();
        let ok = SequenceRecord {
            tokens: vec![39_999],
            flags: vec![FLAG_TARGET],
            targets: vec![Dist::TopK { ids: vec![39_999], logprobs: vec![0.0], rest_logprob: f32::NEG_INFINITY }],
        };
        encode_record(&small, &ok, &mut buf).unwrap();
        buf[8] = 0xFF;
        buf[9] = 0xFF; // token id 65535
        let (view, _) = split_record(&small, &buf).unwrap();
        assert!(view.decode(&small).unwrap_err().contains("≥ vocabulary size"));
        // Truncated record.
        assert!(split_record(&small, &buf[..buf.len() - 1]).is_err());
        // More targets than tokens.
        let mut b = buf.clone();
        b[4] = 9;
        assert!(split_record(&small, &b).is_err());
    }
}
