//! Builds a `tokenizers::Tokenizer` from `tokenizer.ggml.*` so pupil tokenizes exactly as
//! llama.cpp does on the same file.
//!
//! Two vocabulary kinds:
//! - `gpt2` (byte-level BPE: SmolLM, Llama 3, Qwen 2): tokens + merges, with the
//!   pre-tokenizer regex chosen by `tokenizer.ggml.pre`. An unknown `pre` is refused:
//!   guessing silently changes token ids.
//! - `llama` (SentencePiece BPE: Llama 2, Gemma): tokens + scores; merges are derived from
//!   the scores (a pair merges with the priority of the token it forms), `▁` stands for a
//!   space, and bytes without a token fall back to `<0xNN>` tokens.
//!
//! Control tokens (type 3) are matched in text only when special parsing is asked for;
//! user-defined tokens (type 4) always are, as in llama.cpp.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as NormSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::gguf::{GgufError, GgufFile, Value};

/// GGUF token types.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// Llama 3's pre-tokenizer pattern (`tokenizer.ggml.pre = llama-bpe`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's: Llama 3's with single digits.
const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Texts that end a turn in common chat formats; control tokens with these texts stop
/// generation even when the metadata names only `eos`.
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|return|>",
    "<EOT>",
    "<｜end▁of▁sentence｜>",
];

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported tokenizer model {0:?} (pupil reads gpt2 and llama vocabularies)")]
    UnsupportedModel(String),
    #[error("unsupported pre-tokenizer {0:?} (pupil knows: smollm, llama-bpe, qwen2, gpt-2); refusing to guess")]
    UnsupportedPre(String),
    #[error("corrupt tokenizer metadata: {0}")]
    Corrupt(String),
    #[error("tokenizer failed: {0}")]
    Backend(String),
    #[error("token id {id} is outside the vocabulary ({n_vocab} tokens)")]
    OutOfRange { id: u32, n_vocab: usize },
}

fn backend(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Backend(e.to_string())
}

/// Which vocabulary family, and for `gpt2` which pre-tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VocabKind {
    Gpt2 { pre: String },
    SentencePiece,
}

/// Many short byte strings in one buffer (a `Vec<String>` of a vocabulary costs several
/// times its text in per-string headers and allocator overhead).
struct StringTable {
    data: Vec<u8>,
    /// `offsets[i]..offsets[i + 1]` is item `i`.
    offsets: Vec<u32>,
}

impl StringTable {
    fn new<I: IntoIterator<Item = B>, B: AsRef<[u8]>>(items: I) -> Self {
        let mut data = Vec::new();
        let mut offsets = vec![0u32];
        for item in items {
            data.extend_from_slice(item.as_ref());
            offsets.push(data.len() as u32);
        }
        data.shrink_to_fit();
        Self { data, offsets }
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    fn get(&self, i: usize) -> Option<&[u8]> {
        let (start, end) = (*self.offsets.get(i)?, *self.offsets.get(i + 1)?);
        Some(&self.data[start as usize..end as usize])
    }
}

pub struct Tokenizer {
    /// `tokenizers` carries its "treat special tokens as text" switch inside itself, so
    /// encoding flips it under a lock.
    inner: Mutex<tokenizers::Tokenizer>,
    kind: VocabKind,
    /// Token texts as stored in the vocabulary (valid UTF-8: they came from GGUF strings).
    tokens: StringTable,
    /// What each token prints as (control tokens print as nothing).
    token_bytes: StringTable,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    end_of_generation: HashSet<u32>,
    chat_template: Option<String>,
    fingerprint: [u8; 32],
}

impl Tokenizer {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let model = file.require_str("tokenizer.ggml.model")?.to_string();
        let tokens = string_array(file, "tokenizer.ggml.tokens")?;
        let n = tokens.len();
        if n == 0 {
            return Err(TokenizerError::Corrupt("tokenizer.ggml.tokens is empty".into()));
        }
        let token_types: Vec<i32> = match file.get_array("tokenizer.ggml.token_type")? {
            Some(arr) if arr.len() == n => arr.iter().map(|v| v.as_i64().unwrap_or(1) as i32).collect(),
            Some(arr) => return Err(TokenizerError::Corrupt(format!("{} token types for {n} tokens", arr.len()))),
            None => vec![token_type::NORMAL; n],
        };
        let id = |key: &str| -> Result<Option<u32>, TokenizerError> {
            match file.get_u64(key)? {
                Some(v) if v < n as u64 => Ok(Some(v as u32)),
                Some(v) => Err(TokenizerError::Corrupt(format!("{key} = {v} is outside the vocabulary ({n} tokens)"))),
                None => Ok(None),
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;

        let (kind, inner, token_bytes, default_add_bos) = match model.as_str() {
            "gpt2" => {
                let pre = file.get_str("tokenizer.ggml.pre")?.unwrap_or("default").to_string();
                let merges = string_array(file, "tokenizer.ggml.merges")?;
                let (inner, bytes) = build_gpt2(&tokens, &token_types, &merges, &pre)?;
                (VocabKind::Gpt2 { pre }, inner, bytes, false)
            }
            "llama" => {
                let scores: Vec<f32> = match file.get_array("tokenizer.ggml.scores")? {
                    Some(arr) if arr.len() == n => arr.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
                    Some(arr) => return Err(TokenizerError::Corrupt(format!("{} scores for {n} tokens", arr.len()))),
                    None => return Err(GgufError::MissingKey("tokenizer.ggml.scores".into()).into()),
                };
                let add_space_prefix = file.get_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
                let (inner, bytes) = build_spm(&tokens, &token_types, &scores, add_space_prefix)?;
                (VocabKind::SentencePiece, inner, bytes, true)
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        let add_bos = file.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(default_add_bos) && bos.is_some();

        let mut end_of_generation: HashSet<u32> = eos.into_iter().collect();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            end_of_generation.extend(id(key)?);
        }
        for (i, t) in tokens.iter().enumerate() {
            if token_types[i] == token_type::CONTROL && END_OF_GENERATION_TEXTS.contains(&t.as_str()) {
                end_of_generation.insert(i as u32);
            }
        }
        let chat_template = file.get_str("tokenizer.chat_template")?.map(str::to_string);
        let fingerprint = vocabulary_fingerprint(&tokens, &token_types);
        Ok(Self {
            inner: Mutex::new(inner),
            kind,
            tokens: StringTable::new(&tokens),
            token_bytes: StringTable::new(&token_bytes),
            bos,
            eos,
            add_bos,
            end_of_generation,
            chat_template,
            fingerprint,
        })
    }

    pub fn kind(&self) -> &VocabKind {
        &self.kind
    }

    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether prompts start with BOS (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// sha256 over the vocabulary's tokens and their types: two models whose token ids
    /// mean the same thing share it, so teacher targets can be checked against a student.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The token's text as stored in the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The id of the token whose text is exactly `text` (a linear scan: not for hot paths).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        (0..self.tokens.len()).find(|&i| self.tokens.get(i) == Some(text.as_bytes())).map(|i| i as u32)
    }

    /// Whether generating `id` ends the reply (EOS, end-of-turn tokens).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// Tokenizes `text` with no BOS. With `parse_special`, control-token text such as
    /// `<|im_start|>` becomes that token; without, it is tokenized as plain text.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.set_encode_special_tokens(!parse_special);
        let enc = inner.encode_fast(text, false).map_err(backend)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokenizes a prompt: `encode` plus BOS where the model asks for it, unless the text
    /// already starts with BOS (as chat templates often write it), which would double it.
    pub fn encode_prompt(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = self.encode(text, parse_special)?;
        if let Some(bos) = self.bos.filter(|_| self.add_bos) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// The bytes token `id` prints as (empty for control tokens). Generated text is
    /// streamed from these, since one token can hold part of a UTF-8 character.
    pub fn token_bytes(&self, id: u32) -> Result<&[u8], TokenizerError> {
        self.token_bytes.get(id as usize).ok_or(TokenizerError::OutOfRange { id, n_vocab: self.tokens.len() })
    }

    /// Decodes ids to text (control tokens dropped, invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id)?);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// The vocabulary fingerprint: sha256 of the token count, then each token as
/// `u32 byte length, bytes, i32 type` (all little-endian).
pub fn vocabulary_fingerprint(tokens: &[String], token_types: &[i32]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((tokens.len() as u64).to_le_bytes());
    for (t, ty) in tokens.iter().zip(token_types) {
        h.update((t.len() as u32).to_le_bytes());
        h.update(t.as_bytes());
        h.update(ty.to_le_bytes());
    }
    h.finalize().into()
}

fn string_array(file: &GgufFile, key: &str) -> Result<Vec<String>, TokenizerError> {
    let arr = file.get_array(key)?.ok_or_else(|| GgufError::MissingKey(key.into()))?;
    arr.iter()
        .map(|v| match v {
            Value::String(s) => Ok(s),
            other => Err(TokenizerError::Corrupt(format!("{key} holds a non-string ({})", other.summary()))),
        })
        .collect()
}

/// GPT-2's byte ↔ printable-character table: bytes that are printable map to themselves,
/// the rest to code points from U+0100 up.
pub fn byte_level_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (b'!' as u32..=b'~' as u32).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).expect("latin-1 code point")
        } else {
            let c = char::from_u32(next).expect("code point below U+0200");
            next += 1;
            c
        };
    }
    table
}

fn added_tokens(contents: impl Iterator<Item = (String, i32)>) -> (Vec<AddedToken>, Vec<AddedToken>) {
    let (mut special, mut user) = (Vec::new(), Vec::new());
    for (content, ty) in contents {
        if content.is_empty() {
            continue;
        }
        match ty {
            token_type::CONTROL => special.push(AddedToken::from(content, true).normalized(false)),
            token_type::USER_DEFINED => user.push(AddedToken::from(content, false).normalized(false)),
            _ => {}
        }
    }
    (special, user)
}

fn build_gpt2(
    tokens: &[String],
    types: &[i32],
    merges: &[String],
    pre: &str,
) -> Result<(tokenizers::Tokenizer, Vec<Vec<u8>>), TokenizerError> {
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "smollm" => Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into(),
        "gpt-2" | "gpt2" => ByteLevel::new(false, true, true).into(),
        "llama-bpe" | "llama3" | "qwen2" => {
            let pattern = if pre == "qwen2" { QWEN2_PATTERN } else { LLAMA3_PATTERN };
            let split = Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
                .map_err(backend)?;
            Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
        }
        other => return Err(TokenizerError::UnsupportedPre(other.to_string())),
    };
    let vocab: ahash::AHashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| TokenizerError::Corrupt(format!("merge {m:?} has no space")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre != "smollm" && pre != "gpt-2" && pre != "gpt2")
        .build()
        .map_err(backend)?;

    let table = byte_level_table();
    let reverse: HashMap<char, u8> = table.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
    let token_bytes: Vec<Vec<u8>> = tokens
        .iter()
        .zip(types)
        .map(|(t, &ty)| match ty {
            token_type::CONTROL => Vec::new(),
            token_type::NORMAL => {
                let mut out = Vec::with_capacity(t.len());
                for c in t.chars() {
                    match reverse.get(&c) {
                        Some(&b) => out.push(b),
                        None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                out
            }
            _ => t.as_bytes().to_vec(),
        })
        .collect();

    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(pre_tokenizer));
    let contents = tokens.iter().zip(types).map(|(t, &ty)| (t.clone(), ty));
    let (special, user) = added_tokens(contents);
    tk.add_special_tokens(special).map_err(backend)?;
    tk.add_tokens(user).map_err(backend)?;
    Ok((tk, token_bytes))
}

/// `<0xNN>` → the byte NN.
fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok()).flatten()
}

fn build_spm(
    tokens: &[String],
    types: &[i32],
    scores: &[f32],
    add_space_prefix: bool,
) -> Result<(tokenizers::Tokenizer, Vec<Vec<u8>>), TokenizerError> {
    let mut vocab: ahash::AHashMap<String, u32> = ahash::AHashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(i as u32);
    }
    // Every way a normal token splits into two vocabulary pieces is a merge, ranked by the
    // score of the token it forms (higher first), as SentencePiece's BPE applies them.
    let mut ranked: Vec<(f32, u32, usize)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if types[i] != token_type::NORMAL || t.chars().nth(1).is_none() {
            continue;
        }
        for (split, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(split);
            let usable = |s: &str| vocab.get(s).is_some_and(|&id| types[id as usize] == token_type::NORMAL);
            if usable(a) && usable(b) {
                ranked.push((scores[i], i as u32, split));
            }
        }
    }
    ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let merges: Vec<(String, String)> = ranked
        .iter()
        .map(|&(_, id, split)| {
            let (a, b) = tokens[id as usize].split_at(split);
            (a.to_string(), b.to_string())
        })
        .collect();
    let unk = types.iter().position(|&t| t == token_type::UNKNOWN).map(|i| tokens[i].clone());
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk).fuse_unk(true);
    }
    let bpe = builder.build().map_err(backend)?;

    let token_bytes: Vec<Vec<u8>> = tokens
        .iter()
        .zip(types)
        .map(|(t, &ty)| match ty {
            token_type::CONTROL | token_type::UNKNOWN => Vec::new(),
            token_type::BYTE => parse_byte_token(t).map(|b| vec![b]).unwrap_or_default(),
            _ => t.replace('\u{2581}', " ").into_bytes(),
        })
        .collect();

    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        normalizers.push(Prepend::new("\u{2581}".into()).into());
    }
    normalizers.push(Replace::new(" ", "\u{2581}").map_err(backend)?.into());
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_normalizer(Some(NormSequence::new(normalizers))).map_err(backend)?;
    let contents = tokens.iter().zip(types).map(|(t, &ty)| (t.replace('\u{2581}', " "), ty));
    let (special, user) = added_tokens(contents);
    tk.add_special_tokens(special).map_err(backend)?;
    tk.add_tokens(user).map_err(backend)?;
    Ok((tk, token_bytes))
}
