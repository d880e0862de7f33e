//! Prompt-lookup drafting for speculative decoding: when the text so far ends with a few
//! tokens that occurred earlier (in the prompt or in what was generated), guess that what
//! followed them then follows them again. Rewriting, editing code, answering from a
//! document and summarising quote their context, and there the guesses are often right;
//! no second model is needed. The session verifies every guess (see `Session`), so a wrong
//! one costs time, never text.

/// The longest suffix looked up, in tokens.
const NGRAM_MAX: usize = 4;
/// The shortest: shorter matches (a repeated "of the") were measured to be kept too
/// rarely to pay for their verification (SmolLM2, `benches/lookup.sh`).
const NGRAM_MIN: usize = 3;

/// Fills `draft` with up to `max` tokens that followed the latest earlier occurrence of
/// the longest suffix of `history` (from [`NGRAM_MAX`] down to [`NGRAM_MIN`] tokens) that
/// has one; leaves it empty when none has.
pub fn draft(history: &[u32], max: usize, draft: &mut Vec<u32>) {
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

#[cfg(test)]
mod tests {
    use super::draft;

    fn drafted(history: &[u32], max: usize) -> Vec<u32> {
        let mut d = vec![99];
        draft(history, max, &mut d);
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
