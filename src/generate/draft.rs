//! Where speculative decoding's drafts come from. The session verifies every drafted
//! token (see `Session`), so a wrong guess costs time, never text.
//!
//! - Prompt lookup ([`lookup`]): when the text so far ends with a few tokens that occurred
//!   earlier (in the prompt or in what was generated), guess that what followed them then
//!   follows them again. Rewriting, editing code, answering from a document and
//!   summarising quote their context, and there the guesses are often right; no second
//!   model is needed.
//! - A draft model ([`DraftModel`]): a smaller model of the same vocabulary decodes a few
//!   tokens ahead, greedily, in a session of its own.

use super::{GenerationError, Runtime, Session};

/// A source of drafts.
pub enum Drafter<'r> {
    Lookup,
    Model(Box<DraftModel<'r>>),
}

impl Drafter<'_> {
    /// Fills `draft` with up to `max` tokens guessed to follow `history` (maybe none).
    pub fn draft(&mut self, history: &[u32], max: usize, draft: &mut Vec<u32>) -> Result<(), GenerationError> {
        match self {
            Drafter::Lookup => {
                lookup(history, max, draft);
                Ok(())
            }
            Drafter::Model(m) => m.draft(history, max, draft),
        }
    }
}

/// The longest suffix looked up, in tokens.
const NGRAM_MAX: usize = 4;
/// The shortest: shorter matches (a repeated "of the") were measured to be kept too
/// rarely to pay for their verification (SmolLM2, `benches/lookup.sh`).
const NGRAM_MIN: usize = 3;

/// Fills `draft` with up to `max` tokens that followed the latest earlier occurrence of
/// the longest suffix of `history` (from [`NGRAM_MAX`] down to [`NGRAM_MIN`] tokens) that
/// has one; leaves it empty when none has.
pub fn lookup(history: &[u32], max: usize, draft: &mut Vec<u32>) {
    draft.clear();
    if max == 0 {
        return;
    }
    for n in (NGRAM_MIN..=NGRAM_MAX.min(history.len().saturating_sub(1))).rev() {
        let suffix = &history[history.len() - n..];
        // Latest first: the nearest context is the likeliest to repeat. `start + n` stays
        // below the suffix's own start, so a match always has a token after it.
        if let Some(start) = (0..history.len() - n).rev().find(|&s| &history[s..s + n] == suffix) {
            let next = start + n;
            draft.extend_from_slice(&history[next..(next + max).min(history.len())]);
            return;
        }
    }
}

/// A smaller model of the same vocabulary that drafts by greedy decoding, in a session
/// of its own: the session's prefix reuse means each call only runs what the history
/// added since (the tokens the big model kept, and the one it chose).
pub struct DraftModel<'r> {
    session: Session<'r>,
    /// The history and the tokens drafted so far in this call, reused from call to call.
    sequence: Vec<u32>,
}

impl<'r> DraftModel<'r> {
    /// A drafter for a session of `target`'s vocabulary and `n_ctx` positions.
    pub fn new(rt: &'r Runtime, target: &Runtime, n_ctx: usize) -> Result<Self, GenerationError> {
        let (mine, theirs) = (&rt.tokenizer, &target.tokenizer);
        let same = mine.n_vocab() == theirs.n_vocab()
            && (0..mine.n_vocab() as u32).all(|id| mine.token_text(id) == theirs.token_text(id));
        if !same {
            return Err(GenerationError::DraftVocabulary);
        }
        Ok(Self { session: Session::new(rt, n_ctx)?, sequence: Vec::new() })
    }

    fn draft(&mut self, history: &[u32], max: usize, draft: &mut Vec<u32>) -> Result<(), GenerationError> {
        draft.clear();
        // Room for the history and all but the last drafted token, which is never run.
        let max = max.min((self.session.n_ctx() + 1).saturating_sub(history.len()));
        if max == 0 || history.is_empty() {
            return Ok(());
        }
        self.sequence.clear();
        self.sequence.extend_from_slice(history);
        loop {
            let next = super::sampler::argmax(&self.session.prefill(&self.sequence)?);
            draft.push(next);
            if draft.len() == max || self.session.runtime().tokenizer.is_end_of_generation(next) {
                return Ok(());
            }
            self.sequence.push(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::lookup;

    fn drafted(history: &[u32], max: usize) -> Vec<u32> {
        let mut d = vec![99];
        lookup(history, max, &mut d);
        d
    }

    #[test]
    fn the_longest_latest_match_is_continued() {
        // "6 7 8" occurs twice; "5 6 7 8" once, at the start: the longer match wins.
        assert_eq!(drafted(&[5, 6, 7, 8, 1, 2, 9, 6, 7, 8, 3, 4, 5, 6, 7, 8], 3), [1, 2, 9]);
        // Only "6 7 8" repeats: its latest earlier occurrence is followed by 3 4.
        assert_eq!(drafted(&[6, 7, 8, 1, 2, 6, 7, 8, 3, 4, 0, 6, 7, 8], 2), [3, 4]);
        // The continuation stops at the end of the history.
        assert_eq!(drafted(&[1, 2, 3, 1, 2, 3], 8), [1, 2, 3]);
    }

    #[test]
    fn nothing_is_drafted_without_a_repeated_triple() {
        assert_eq!(drafted(&[1, 2, 3, 4, 2, 3], 4), Vec::<u32>::new());
        assert_eq!(drafted(&[5], 4), Vec::<u32>::new());
        assert_eq!(drafted(&[], 4), Vec::<u32>::new());
        assert_eq!(drafted(&[1, 2, 3, 1, 2, 3], 0), Vec::<u32>::new());
    }
}
