//! The engine: one thread that owns the model's KV caches and runs every forward pass.
//!
//! Up to `parallel` requests hold a slot (a KV cache) each. A step of the loop admits
//! queued requests into free slots, prefills one chunk of one waiting prompt, then runs
//! one decode pass over every decoding slot together
//! ([`Model::forward_batch`](crate::model::Model::forward_batch)), so the
//! weights stream from memory once per step for all of them, and a new prompt holds the
//! running ones back by at most one chunk.
//!
//! A request's text depends only on the request, never on what else the server is doing:
//! prompts are prefilled in chunks that start at multiples of [`PREFILL_CHUNK`]
//! positions, a slot re-uses a cached prefix only up to such a boundary and only where
//! prefill wrote it, and decode rows get decode's own arithmetic (`Batching::AsDecode`),
//! which gives each row the bits it gets alone. Same seed, same text, under any load.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use crate::generate::session::Utf8Stream;
use crate::generate::{Runtime, Sampler, SamplerConfig, TokenLogprob};
use crate::kernels::Batching;
use crate::model::{BatchItem, KvCache};

/// Prompt positions per prefill pass. A longer prompt runs in several passes, with a
/// decode step of the other slots between them.
pub const PREFILL_CHUNK: usize = 128;

/// What a client asked the engine to do, already parsed and checked.
pub struct Job {
    pub prompt: Vec<u32>,
    /// Generated tokens at most (the prompt and these fit the context: checked on entry).
    pub max_tokens: usize,
    pub sampling: SamplerConfig,
    /// Strings that end the text where they first appear (not included).
    pub stop: Vec<String>,
    /// Report each token's log-probability and this many alternatives (`None`: no).
    pub logprobs: Option<usize>,
    /// Scales of the server's adapters for this request (`None`: as loaded).
    pub lora: Option<Vec<f32>>,
    /// Where the text goes; the engine drops the job when the receiver is gone.
    pub events: UnboundedSender<Event>,
}

#[derive(Debug)]
pub enum Event {
    /// More text (possibly empty, when held back), and the tokens it completes.
    Text { text: String, tokens: Vec<TokenLogprob> },
    /// The end: why, and the token counts.
    Done { finish: Finish, prompt_tokens: usize, completion_tokens: usize },
    /// The request failed inside the engine.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End of generation or a stop string.
    Stop,
    /// `max_tokens` or the context.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// A request in a slot.
struct Active {
    job: Job,
    sampler: Sampler,
    /// Prompt positions in the cache so far.
    fed: usize,
    /// The prompt and the tokens generated (what the repetition penalty sees).
    history: Vec<u32>,
    generated: usize,
    /// The token to run next (chosen, not yet in the cache).
    next: Option<u32>,
    utf8: Utf8Stream,
    /// All text so far, and how much of it went out.
    text: String,
    sent: usize,
    /// Tokens whose text has not all gone out: (start, end of its text in `text`, logprob).
    pending: Vec<(usize, usize, TokenLogprob)>,
}

struct Slot {
    cache: KvCache,
    /// Tokens whose keys and values prefill wrote into `cache` (a prefix of the last
    /// prompt): what a later prompt may re-use.
    prefilled: Vec<u32>,
    active: Option<Active>,
}

pub struct Engine<'r> {
    rt: &'r Runtime,
    slots: Vec<Slot>,
    /// Slots holding a request, for `/health` to read.
    busy: Arc<AtomicUsize>,
}

impl<'r> Engine<'r> {
    pub fn new(rt: &'r Runtime, parallel: usize, n_ctx: usize) -> Result<Self, crate::model::ModelError> {
        let slots = (0..parallel.max(1))
            .map(|_| Ok(Slot { cache: rt.model.new_cache(n_ctx)?, prefilled: Vec::new(), active: None }))
            .collect::<Result<_, crate::model::ModelError>>()?;
        Ok(Self { rt, slots, busy: Arc::default() })
    }

    /// Each slot's context in tokens.
    pub fn n_ctx(&self) -> usize {
        self.slots[0].cache.n_ctx()
    }

    /// How many slots hold a request, kept up to date while the engine runs.
    pub fn busy(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.busy)
    }

    /// Serves jobs from `queue` until every sender is gone.
    pub fn run(&mut self, queue: Receiver<Job>) {
        loop {
            // Admit: block only when there is nothing else to do.
            while self.slots.iter().any(|s| s.active.is_none()) {
                let job = if self.is_idle() {
                    self.busy.store(0, Ordering::Relaxed);
                    match queue.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    }
                } else {
                    match queue.try_recv() {
                        Ok(job) => job,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return,
                    }
                };
                self.admit(job);
            }
            self.drop_cancelled();
            self.busy.store(self.slots.iter().filter(|s| s.active.is_some()).count(), Ordering::Relaxed);
            self.prefill_one_chunk();
            self.decode_step();
        }
    }

    fn is_idle(&self) -> bool {
        self.slots.iter().all(|s| s.active.is_none())
    }

    /// Puts `job` in the free slot whose cached prompt shares most with it.
    fn admit(&mut self, job: Job) {
        let shared = |s: &Slot| s.prefilled.iter().zip(&job.prompt).take_while(|(a, b)| a == b).count();
        let Some(slot) = self.slots.iter_mut().filter(|s| s.active.is_none()).max_by_key(|s| shared(s)) else {
            unreachable!("admit is called with a free slot")
        };
        // Re-use whole chunks only, and never the prompt's last token (its logits are needed).
        let keep = shared(slot).min(job.prompt.len() - 1) / PREFILL_CHUNK * PREFILL_CHUNK;
        slot.cache.truncate(keep);
        slot.prefilled.truncate(keep);
        let sampler = Sampler::new(job.sampling.clone());
        slot.active = Some(Active {
            history: job.prompt.clone(),
            job,
            sampler,
            fed: keep,
            generated: 0,
            next: None,
            utf8: Utf8Stream::default(),
            text: String::new(),
            sent: 0,
            pending: Vec::new(),
        });
    }

    /// Frees the slots of requests whose client went away.
    fn drop_cancelled(&mut self) {
        for slot in &mut self.slots {
            if slot.active.as_ref().is_some_and(|a| a.job.events.is_closed()) {
                slot.active = None;
            }
        }
    }

    /// Runs the next chunk of one prompt still being prefilled (the first such slot's: it
    /// runs to its end before the next slot's starts, so prompts finish one after another
    /// rather than all late); at its end, chooses the first token.
    fn prefill_one_chunk(&mut self) {
        let rt = self.rt;
        let Some(slot) = self.slots.iter_mut().find(|s| s.active.as_ref().is_some_and(|a| a.next.is_none())) else {
            return;
        };
        let active = slot.active.as_mut().expect("found active");
        let prompt = &active.job.prompt;
        let end = ((active.fed / PREFILL_CHUNK + 1) * PREFILL_CHUNK).min(prompt.len());
        let chunk = &prompt[active.fed..end];
        let mut item = [BatchItem { tokens: chunk, cache: &mut slot.cache, lora_scales: active.job.lora.as_deref() }];
        let n_embd = rt.model.cfg.n_embd;
        let result = rt.pool.install(|| {
            let hidden = rt.model.forward_batch(&mut item, Batching::Tiled)?;
            if end < prompt.len() {
                return Ok(None);
            }
            rt.model.logits(&hidden[hidden.len() - n_embd..]).map(Some)
        });
        match result {
            Err(e) => fail(slot, e.to_string()),
            Ok(logits) => {
                slot.prefilled.extend_from_slice(chunk);
                active.fed = end;
                if let Some(mut logits) = logits {
                    choose(rt, slot, &mut logits);
                }
            }
        }
    }

    /// One decode pass over every slot with a chosen token.
    fn decode_step(&mut self) {
        let rt = self.rt;
        let decoding: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].active.as_ref().is_some_and(|a| a.next.is_some()))
            .collect();
        if decoding.is_empty() {
            return;
        }
        let tokens: Vec<[u32; 1]> =
            decoding.iter().map(|&i| [self.slots[i].active.as_ref().and_then(|a| a.next).expect("decoding")]).collect();
        let mut items: Vec<BatchItem> = Vec::with_capacity(decoding.len());
        for (slot, t) in
            self.slots.iter_mut().filter(|s| s.active.as_ref().is_some_and(|a| a.next.is_some())).zip(&tokens)
        {
            let lora = slot.active.as_ref().and_then(|a| a.job.lora.as_deref());
            items.push(BatchItem { tokens: t, cache: &mut slot.cache, lora_scales: lora });
        }
        let result = rt.pool.install(|| {
            let hidden = rt.model.forward_batch(&mut items, Batching::AsDecode)?;
            rt.model.logits_with(hidden, Batching::AsDecode)
        });
        drop(items);
        match result {
            Err(e) => {
                for &i in &decoding {
                    fail(&mut self.slots[i], e.to_string());
                }
            }
            Ok(mut logits) => {
                let n_vocab = rt.model.cfg.n_vocab;
                for (&i, row) in decoding.iter().zip(logits.chunks_exact_mut(n_vocab)) {
                    choose(rt, &mut self.slots[i], row);
                }
            }
        }
    }
}

/// Ends the slot's request with an error.
fn fail(slot: &mut Slot, message: String) {
    if let Some(active) = slot.active.take() {
        let _ = active.job.events.send(Event::Failed(message));
    }
}

/// Samples the slot's next token from `logits` (the model's output after its last token)
/// and sends what it completes; ends the request when it is done.
fn choose(rt: &Runtime, slot: &mut Slot, logits: &mut [f32]) {
    let active = slot.active.as_mut().expect("choose on an active slot");
    let (id, logprob) = active.sampler.sample_noting(logits, &active.history, active.job.logprobs);
    let finish = if rt.tokenizer.is_end_of_generation(id) {
        Some(Finish::Stop)
    } else {
        active.generated += 1;
        active.history.push(id);
        let piece = match rt.tokenizer.token_bytes(id) {
            Ok(bytes) => active.utf8.push(bytes),
            Err(e) => return fail(slot, e.to_string()),
        };
        let start = active.text.len();
        active.text.push_str(&piece);
        if let Some(lp) = logprob {
            active.pending.push((start, active.text.len(), lp));
        }
        // The chosen token runs next, at position `cache.len()`.
        let out_of_room = active.generated >= active.job.max_tokens || slot.cache.len() >= slot.cache.n_ctx();
        out_of_room.then_some(Finish::Length)
    };
    let stopped_at = find_stop(&active.text, &active.job.stop, active.sent);
    let finish = if stopped_at.is_some() { Some(Finish::Stop) } else { finish };
    if finish.is_some() && stopped_at.is_none() {
        let tail = active.utf8.finish();
        active.text.push_str(&tail);
    }
    // What may go out: all of it at the end (cut at a stop string), else all but a tail
    // that could still become a stop string. A token goes out with the text it ends, or,
    // at a stop string, when its text began before it.
    let (release, tokens_done) = match (stopped_at, finish) {
        (Some(at), _) => (at, active.pending.iter().take_while(|p| p.0 < at).count()),
        (None, Some(_)) => (active.text.len(), active.pending.len()),
        (None, None) => {
            let release = active.text.len() - held_back(&active.text, &active.job.stop);
            (release, active.pending.iter().take_while(|p| p.1 <= release).count())
        }
    };
    let release = release.max(active.sent);
    if release > active.sent || tokens_done > 0 {
        let text = active.text[active.sent..release].to_string();
        let tokens = active.pending.drain(..tokens_done).map(|p| p.2).collect();
        active.sent = release;
        if active.job.events.send(Event::Text { text, tokens }).is_err() {
            slot.active = None;
            return;
        }
    }
    match finish {
        Some(finish) => {
            let active = slot.active.take().expect("active");
            let _ = active.job.events.send(Event::Done {
                finish,
                prompt_tokens: active.job.prompt.len(),
                completion_tokens: active.generated,
            });
        }
        None => active.next = Some(id),
    }
}

/// Where the first stop string begins in `text`, looking from a little before `from` (a
/// stop string may straddle text already checked and the new piece).
fn find_stop(text: &str, stops: &[String], from: usize) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let mut start = from.saturating_sub(s.len());
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            text[start..].find(s.as_str()).map(|i| start + i)
        })
        .min()
}

/// Bytes at the end of `text` that begin some stop string (held back until the next
/// token says whether the stop string completes).
fn held_back(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| (1..s.len()).filter(|&k| s.is_char_boundary(k)).map(move |k| &s[..k]))
        .filter(|prefix| text.ends_with(prefix))
        .map(str::len)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_across_pieces_and_their_prefixes_held_back() {
        let stops = vec!["END".to_string(), "\n\n".to_string()];
        assert_eq!(find_stop("abc EN", &stops, 4), None);
        assert_eq!(held_back("abc EN", &stops), 2);
        assert_eq!(find_stop("abc END more", &stops, 6), Some(4));
        assert_eq!(held_back("abc\n", &stops), 1);
        assert_eq!(held_back("abc", &stops), 0);
        assert_eq!(find_stop("é\n\n", &["\n\n".into()], 2), Some(2));
    }
}
