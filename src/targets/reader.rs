//! Reading a teacher-target file through a memory map: the preamble and header are
//! parsed, every chunk's framing and checksum verified and an index of sequence records
//! built; records are decoded (and their ids checked) only when asked for.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::format::*;

/// Totals over a file (also the END chunk's payload).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub sequences: u64,
    pub tokens: u64,
    /// Positions with a stored teacher distribution.
    pub targets: u64,
}

impl Totals {
    pub fn add(&mut self, n_tokens: usize, n_targets: usize) {
        self.sequences += 1;
        self.tokens += n_tokens as u64;
        self.targets += n_targets as u64;
    }

    pub fn to_bytes(self) -> [u8; END_PAYLOAD_LEN] {
        let mut b = [0u8; END_PAYLOAD_LEN];
        b[0..8].copy_from_slice(&self.sequences.to_le_bytes());
        b[8..16].copy_from_slice(&self.tokens.to_le_bytes());
        b[16..24].copy_from_slice(&self.targets.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Self {
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Self { sequences: word(0), tokens: word(8), targets: word(16) }
    }
}

/// What a pass over the chunks found: the valid prefix, and what stopped it if anything.
pub(super) struct Scan {
    pub header: Header,
    pub layout: Layout,
    /// Where each sequence record starts.
    records: Vec<usize>,
    pub chunks: usize,
    /// Totals over the valid chunks.
    pub totals: Totals,
    /// Byte offset just past the last valid chunk.
    pub valid_end: u64,
    /// Totals recorded by the END chunk, when the valid prefix ends with one.
    pub end: Option<Totals>,
    /// Why the scan stopped before the end of the file.
    pub damage: Option<TargetsError>,
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}

/// Parses the preamble and header (errors here make the whole file unusable), then walks
/// the chunks until the end of the file or the first damaged one.
pub(super) fn scan(bytes: &[u8]) -> Result<Scan, TargetsError> {
    if bytes.len() < PREAMBLE_LEN {
        return Err(if bytes.len() >= 8 && &bytes[..8] != MAGIC {
            TargetsError::BadMagic { found: String::from_utf8_lossy(&bytes[..8]).into_owned() }
        } else {
            TargetsError::BadHeader(format!("file is {} bytes, shorter than the preamble", bytes.len()))
        });
    }
    if &bytes[..8] != MAGIC {
        return Err(TargetsError::BadMagic { found: String::from_utf8_lossy(&bytes[..8]).into_owned() });
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Err(TargetsError::BadVersion(version));
    }
    let header_len = u32_at(bytes, 12) as usize;
    if header_len > MAX_HEADER_LEN {
        return Err(TargetsError::BadHeader(format!("header length {header_len} exceeds {MAX_HEADER_LEN}")));
    }
    let data_start = PREAMBLE_LEN + header_len + 4;
    if bytes.len() < data_start {
        return Err(TargetsError::BadHeader(format!(
            "file ends inside the header ({} of {data_start} bytes)",
            bytes.len()
        )));
    }
    let json = &bytes[PREAMBLE_LEN..PREAMBLE_LEN + header_len];
    if crc32fast::hash(json) != u32_at(bytes, PREAMBLE_LEN + header_len) {
        return Err(TargetsError::BadHeader("checksum mismatch".into()));
    }
    let header: Header =
        serde_json::from_slice(json).map_err(|e| TargetsError::BadHeader(format!("header JSON: {e}")))?;
    let layout = header.layout()?;

    let mut s = Scan {
        header,
        layout,
        records: Vec::new(),
        chunks: 0,
        totals: Totals::default(),
        valid_end: data_start as u64,
        end: None,
        damage: None,
    };
    let mut pos = data_start;
    while pos < bytes.len() {
        let chunk = s.chunks;
        let offset = pos as u64;
        let truncated = |what: String| TargetsError::Truncated { chunk, offset, what };
        let corrupt = |what: String| TargetsError::Corrupt { chunk, offset, what };
        if s.end.is_some() {
            s.damage = Some(corrupt("data after the END chunk".into()));
            break;
        }
        if bytes.len() - pos < CHUNK_HEADER_LEN {
            s.damage = Some(truncated(format!("chunk header needs {CHUNK_HEADER_LEN} bytes")));
            break;
        }
        let h = &bytes[pos..pos + CHUNK_HEADER_LEN];
        if crc32fast::hash(&h[..20]) != u32_at(h, 20) {
            s.damage = Some(corrupt("chunk header checksum mismatch".into()));
            break;
        }
        let tag = &h[0..4];
        let n_sequences = u32_at(h, 4) as usize;
        let payload_len = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        let left = (bytes.len() - pos - CHUNK_HEADER_LEN) as u64;
        if payload_len > left {
            s.damage = Some(truncated(format!("payload of {payload_len} bytes, {left} present")));
            break;
        }
        let payload = &bytes[pos + CHUNK_HEADER_LEN..pos + CHUNK_HEADER_LEN + payload_len as usize];
        if crc32fast::hash(payload) != u32_at(h, 16) {
            s.damage = Some(corrupt("payload checksum mismatch".into()));
            break;
        }
        let payload_start = pos + CHUNK_HEADER_LEN;
        if tag == TAG_END {
            if payload.len() != END_PAYLOAD_LEN || n_sequences != 0 {
                s.damage = Some(corrupt("END chunk has the wrong size".into()));
                break;
            }
            let end = Totals::from_bytes(payload);
            if end != s.totals {
                s.damage = Some(corrupt(format!("END chunk counts {end:?} differ from the records {:?}", s.totals)));
                break;
            }
            s.end = Some(end);
        } else if tag == TAG_SEQUENCES {
            let mut at = 0usize;
            let mut found = Vec::with_capacity(n_sequences.min(payload.len() / 8));
            let mut totals = s.totals;
            for i in 0..n_sequences {
                match split_record(&s.layout, &payload[at..]) {
                    Ok((view, size)) => {
                        found.push(payload_start + at);
                        totals.add(view.n_tokens, view.n_targets);
                        at += size;
                    }
                    Err(what) => {
                        s.damage = Some(corrupt(format!("record {i}: {what}")));
                        break;
                    }
                }
            }
            if s.damage.is_some() {
                break;
            }
            if at != payload.len() {
                s.damage = Some(corrupt(format!("{} bytes after its {n_sequences} records", payload.len() - at)));
                break;
            }
            s.records.extend(found);
            s.totals = totals;
        } else {
            s.damage = Some(corrupt(format!("unknown chunk tag {:?}", String::from_utf8_lossy(tag))));
            break;
        }
        pos = payload_start + payload_len as usize;
        s.chunks += 1;
        s.valid_end = pos as u64;
    }
    Ok(s)
}

/// An open, verified teacher-target file.
pub struct TargetFile {
    path: PathBuf,
    map: Mmap,
    header: Header,
    layout: Layout,
    /// Where each sequence record starts in the map.
    records: Vec<usize>,
    chunks: usize,
    totals: Totals,
}

impl TargetFile {
    /// Opens `path`, verifying every chunk's checksum and framing. A damaged, truncated or
    /// unfinished file is an error that says where.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, TargetsError> {
        let path = path.as_ref();
        let io = |source| TargetsError::Io { path: path.display().to_string(), source };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; like every mmap reader we rely on the file not
        // being truncated underneath us while open.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let s = scan(&map)?;
        if let Some(damage) = s.damage {
            return Err(damage);
        }
        if s.end.is_none() {
            return Err(TargetsError::Unfinished);
        }
        Ok(Self {
            path: path.to_path_buf(),
            header: s.header,
            layout: s.layout,
            records: s.records,
            chunks: s.chunks,
            totals: s.totals,
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    pub fn chunks(&self) -> usize {
        self.chunks
    }

    pub fn file_bytes(&self) -> usize {
        self.map.len()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Decodes sequence `i`, checking every id against the vocabulary.
    pub fn sequence(&self, i: usize) -> Result<SequenceRecord, TargetsError> {
        let &offset = self.records.get(i).ok_or_else(|| TargetsError::BadRecord {
            sequence: i,
            what: format!("out of range ({} sequences)", self.records.len()),
        })?;
        let bad = |what| TargetsError::BadRecord { sequence: i, what };
        let (view, _) = split_record(&self.layout, &self.map[offset..]).map_err(bad)?;
        view.decode(&self.layout).map_err(bad)
    }
}
