//! Writing a teacher-target file so that an interruption loses at most the chunk being
//! built: records go to `OUT.partial` in checksummed chunks, each synced to disk; a new
//! writer for the same job finds the last complete chunk, cuts anything after it and
//! continues; the END chunk and a rename to `OUT` finish the file. `OUT` itself only ever
//! appears complete.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::format::*;
use super::reader::{scan, Totals};

/// When to close a chunk: whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct ChunkPolicy {
    /// Bytes of records buffered.
    pub max_bytes: usize,
    /// Records buffered.
    pub max_sequences: usize,
    /// Time since the last chunk: bounds the work a kill can lose.
    pub max_interval: Duration,
}

impl Default for ChunkPolicy {
    fn default() -> Self {
        Self { max_bytes: 4 << 20, max_sequences: usize::MAX, max_interval: Duration::from_secs(10) }
    }
}

/// What opening a writer found at the output path.
pub enum Opened {
    /// Nothing was there: a new file.
    Fresh(TargetWriter),
    /// A partial file of the same job: continue after its `done` sequences.
    Resumed { writer: TargetWriter, done: u64, dropped_bytes: u64 },
    /// The output already exists, complete, for the same job.
    Complete(Totals),
}

pub struct TargetWriter {
    file: File,
    partial: PathBuf,
    out: PathBuf,
    layout: Layout,
    policy: ChunkPolicy,
    buf: Vec<u8>,
    buffered: u32,
    totals: Totals,
    last_chunk: Instant,
}

/// `OUT.partial`: where an unfinished file lives.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    out.with_file_name(name)
}

impl TargetWriter {
    /// Opens a writer for `header`'s job at `out`, resuming `OUT.partial` if it holds the
    /// same job. A different job's file (complete or partial) is never overwritten.
    pub fn open(out: &Path, header: Header, policy: ChunkPolicy) -> Result<Opened, TargetsError> {
        let layout = header.layout()?;
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| TargetsError::Io { path: p, source }
        };
        if out.exists() {
            let bytes = fs::read(out).map_err(io(out))?;
            let s = scan(&bytes).map_err(|e| refuse(out, &format!("it is not a usable target file ({e})")))?;
            if !s.header.same_job(&header) {
                return Err(refuse(out, "it was made by a different command (teacher, input or options differ)"));
            }
            return match (s.damage, s.end) {
                (None, Some(totals)) => Ok(Opened::Complete(totals)),
                (Some(e), _) => Err(refuse(out, &format!("it is damaged ({e})"))),
                (None, None) => Err(refuse(out, "it is unfinished")),
            };
        }
        let partial = partial_path(out);
        if partial.exists() {
            let bytes = fs::read(&partial).map_err(io(&partial))?;
            let s = scan(&bytes).map_err(|e| refuse(&partial, &format!("it cannot be resumed ({e})")))?;
            if !s.header.same_job(&header) {
                return Err(refuse(&partial, "it is the unfinished output of a different command"));
            }
            let dropped_bytes = bytes.len() as u64 - s.valid_end;
            let file = OpenOptions::new().write(true).open(&partial).map_err(io(&partial))?;
            file.set_len(s.valid_end).map_err(io(&partial))?;
            file.sync_all().map_err(io(&partial))?;
            let mut file = file;
            use std::io::Seek;
            file.seek(std::io::SeekFrom::End(0)).map_err(io(&partial))?;
            let mut writer = Self::with_file(file, partial, out, layout, policy);
            writer.totals = s.totals;
            if s.end.is_some() {
                // Finished but not yet renamed: just rename.
                fs::rename(&writer.partial, &writer.out).map_err(io(&writer.out))?;
                return Ok(Opened::Complete(s.totals));
            }
            return Ok(Opened::Resumed { done: s.totals.sequences, dropped_bytes, writer });
        }
        let json = serde_json::to_vec(&header).map_err(|e| TargetsError::Invalid(e.to_string()))?;
        let mut start = Vec::with_capacity(PREAMBLE_LEN + json.len() + 4);
        start.extend_from_slice(MAGIC);
        start.extend_from_slice(&VERSION.to_le_bytes());
        start.extend_from_slice(&(json.len() as u32).to_le_bytes());
        start.extend_from_slice(&json);
        start.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
        let mut file = File::create(&partial).map_err(io(&partial))?;
        file.write_all(&start).map_err(io(&partial))?;
        file.sync_all().map_err(io(&partial))?;
        Ok(Opened::Fresh(Self::with_file(file, partial, out, layout, policy)))
    }

    fn with_file(file: File, partial: PathBuf, out: &Path, layout: Layout, policy: ChunkPolicy) -> Self {
        Self {
            file,
            partial,
            out: out.to_path_buf(),
            layout,
            policy,
            buf: Vec::new(),
            buffered: 0,
            totals: Totals::default(),
            last_chunk: Instant::now(),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Totals over everything pushed, including resumed records.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Appends one sequence; closes a chunk when the policy says so.
    pub fn push(&mut self, rec: &SequenceRecord) -> Result<(), TargetsError> {
        encode_record(&self.layout, rec, &mut self.buf)?;
        self.buffered += 1;
        self.totals.add(rec.tokens.len(), rec.targets.len());
        let p = self.policy;
        if self.buf.len() >= p.max_bytes
            || self.buffered as usize >= p.max_sequences
            || self.last_chunk.elapsed() >= p.max_interval
            || self.buffered == u32::MAX
        {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered records as one chunk and syncs it.
    pub fn flush(&mut self) -> Result<(), TargetsError> {
        if self.buffered > 0 {
            let payload = std::mem::take(&mut self.buf);
            self.write_chunk(TAG_SEQUENCES, self.buffered, &payload)?;
            self.buffered = 0;
        }
        self.last_chunk = Instant::now();
        Ok(())
    }

    fn write_chunk(&mut self, tag: &[u8; 4], n_sequences: u32, payload: &[u8]) -> Result<(), TargetsError> {
        let mut h = [0u8; CHUNK_HEADER_LEN];
        h[0..4].copy_from_slice(tag);
        h[4..8].copy_from_slice(&n_sequences.to_le_bytes());
        h[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        h[16..20].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        let crc = crc32fast::hash(&h[..20]);
        h[20..24].copy_from_slice(&crc.to_le_bytes());
        let io = |source| TargetsError::Io { path: self.partial.display().to_string(), source };
        self.file.write_all(&h).map_err(io)?;
        self.file.write_all(payload).map_err(io)?;
        self.file.sync_data().map_err(io)
    }

    /// Flushes, writes the END chunk and renames `OUT.partial` to `OUT`.
    pub fn finish(mut self) -> Result<Totals, TargetsError> {
        self.flush()?;
        let end = self.totals.to_bytes();
        self.write_chunk(TAG_END, 0, &end)?;
        fs::rename(&self.partial, &self.out)
            .map_err(|source| TargetsError::Io { path: self.out.display().to_string(), source })?;
        Ok(self.totals)
    }
}

fn refuse(path: &Path, why: &str) -> TargetsError {
    TargetsError::Invalid(format!(
        "{} exists and {why}; it is left untouched: remove it or choose another output",
        path.display()
    ))
}
