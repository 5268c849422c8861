//! LocalAgreement-2 (Macháček et al., whisper_streaming, arXiv 2307.14743): a word becomes
//! final once two consecutive hypotheses of the growing buffer agree on it (and on everything
//! before it). Finals never change and are never repeated; the rest is a partial.

/// A word with absolute times (seconds from the start of the stream).
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub text: String,
    pub start: f64,
    pub end: f64,
}

/// Comparison key: case and punctuation do not decide agreement ("Hello," = "hello").
fn key(w: &str) -> String {
    w.chars().filter(|c| c.is_alphanumeric() || *c == '\'').flat_map(char::to_lowercase).collect()
}

#[derive(Debug, Default)]
pub struct LocalAgreement {
    /// Every word made final so far.
    committed: Vec<Word>,
    /// How many of the last committed words are still spoken in the buffer (each new
    /// hypothesis starts with them and they must not be committed twice).
    in_buffer: usize,
    /// The uncommitted tail of the previous hypothesis.
    previous: Vec<Word>,
}

impl LocalAgreement {
    pub fn committed(&self) -> &[Word] {
        &self.committed
    }

    /// Committed words whose audio has left the buffer: the prompt for the next pass (words
    /// still in the buffer must not be in the prompt, or Whisper skips them in one pass and
    /// not the next).
    pub fn prompt_words(&self) -> &[Word] {
        &self.committed[..self.committed.len() - self.in_buffer]
    }

    /// End time of the last final word (0 before any).
    pub fn committed_end(&self) -> f64 {
        self.committed.last().map_or(0.0, |w| w.end)
    }

    /// Feed a new hypothesis of the whole buffer. Returns the words that just became final;
    /// the partial is then [`Self::partial`].
    pub fn update(&mut self, hypothesis: Vec<Word>) -> Vec<Word> {
        let fresh = self.drop_already_committed(hypothesis);
        let agreed = self.previous.iter().zip(&fresh).take_while(|(a, b)| key(&a.text) == key(&b.text)).count();
        let newly: Vec<Word> = fresh[..agreed].to_vec();
        self.committed.extend(newly.iter().cloned());
        self.in_buffer += newly.len();
        self.previous = fresh[agreed..].to_vec();
        newly
    }

    /// Make everything pending final (end of speech or of the stream).
    pub fn flush(&mut self) -> Vec<Word> {
        let rest = std::mem::take(&mut self.previous);
        self.committed.extend(rest.iter().cloned());
        self.in_buffer += rest.len();
        rest
    }

    /// The buffer was cut at stream time `cut`: committed words that ended well before it are
    /// no longer heard; the last couple stay, since word times are estimates.
    pub fn trimmed(&mut self, cut: f64) {
        let still = self.committed.iter().rev().take_while(|w| w.end > cut - 0.3).count();
        self.in_buffer = still.max(self.in_buffer.min(2)).min(self.committed.len());
    }

    /// The buffer was cut at a segment boundary behind which `still_in_buffer` committed words
    /// are still heard (exact, unlike [`Self::trimmed`]'s time estimate).
    pub fn trimmed_keeping(&mut self, still_in_buffer: usize) {
        self.in_buffer = still_in_buffer.min(self.committed.len());
    }

    /// The buffer was emptied.
    pub fn cleared(&mut self) {
        self.in_buffer = 0;
        self.previous.clear();
    }

    pub fn partial(&self) -> &[Word] {
        &self.previous
    }

    /// The buffer still holds audio that was already committed, so a hypothesis starts by
    /// repeating committed words, though not always the same way ("Wot U-D" may come back as
    /// "Wotul-Di") and not always all of them (word times are estimates, so the cut may have
    /// fallen after some). The hypothesis prefix that best matches the end of the committed
    /// words, letter by letter, is dropped: the one that gains most matched letters over
    /// twice its edits, and none when no prefix gains anything.
    fn drop_already_committed(&self, hypothesis: Vec<Word>) -> Vec<Word> {
        let committed: Vec<char> =
            self.committed[self.committed.len() - self.in_buffer..].iter().flat_map(|w| key(&w.text).chars().collect::<Vec<_>>()).collect();
        if committed.is_empty() {
            return hypothesis;
        }
        // Prefixes of more words than were committed (plus slack for split words) are not
        // repetitions.
        let candidates = hypothesis.len().min(self.in_buffer + 2);
        let spoken: Vec<char> = hypothesis[..candidates].iter().flat_map(|w| key(&w.text).chars().collect::<Vec<_>>()).collect();
        let edits = suffix_edit_distances(&committed, &spoken);
        let mut best = (0usize, 0i64);
        let mut letters = 0;
        for (j, w) in hypothesis[..candidates].iter().enumerate() {
            letters += key(&w.text).chars().count();
            let gain = letters as i64 - 2 * edits[letters] as i64;
            if gain > best.1 {
                best = (j + 1, gain);
            }
        }
        hypothesis.into_iter().skip(best.0).collect()
    }
}

/// For every prefix `b[..y]`: the fewest edits that turn some ending of `a` (any suffix,
/// the empty one included) into it.
fn suffix_edit_distances(a: &[char], b: &[char]) -> Vec<usize> {
    // column[y] = edits between the best-starting part of a[..x] and b[..y], row by row in x.
    let mut column: Vec<usize> = (0..=b.len()).collect();
    for &ca in a {
        let mut next = vec![0; b.len() + 1];
        for y in 1..=b.len() {
            next[y] = (column[y - 1] + usize::from(ca != b[y - 1])).min(column[y] + 1).min(next[y - 1] + 1);
        }
        column = next;
    }
    column
}

/// Where to cut the buffer so that it starts at a segment boundary (Whisper's timestamps sit in
/// the pauses; word times inside a segment are only estimates): the end of the last segment,
/// never the hypothesis' last, whose words are all final. `segments` holds each segment's end
/// time and word count; `committed` how many leading words of the hypothesis are final. Returns
/// the cut time and the committed words after it.
pub fn segment_cut(segments: &[(f64, usize)], committed: usize) -> Option<(f64, usize)> {
    let mut words_before = 0;
    let mut cut = None;
    for &(end, words) in segments.iter().take(segments.len().saturating_sub(1)) {
        words_before += words;
        if words_before > committed {
            break;
        }
        cut = Some((end, committed - words_before));
    }
    cut
}

/// Split segments into words with times spread over each segment by character count.
pub fn segments_to_words(segments: &[(f64, f64, String)]) -> Vec<Word> {
    let mut out = Vec::new();
    for (start, end, text) in segments {
        let words: Vec<&str> = text.split_whitespace().collect();
        let total: usize = words.iter().map(|w| w.len()).sum::<usize>().max(1);
        let mut t = *start;
        for w in words {
            let dur = (end - start) * w.len() as f64 / total as f64;
            out.push(Word { text: w.to_string(), start: t, end: t + dur });
            t += dur;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str, start: f64) -> Vec<Word> {
        text.split_whitespace()
            .enumerate()
            .map(|(i, w)| Word { text: w.into(), start: start + i as f64 * 0.5, end: start + i as f64 * 0.5 + 0.4 })
            .collect()
    }

    fn texts(ws: &[Word]) -> Vec<&str> {
        ws.iter().map(|w| w.text.as_str()).collect()
    }

    #[test]
    fn commits_the_prefix_two_hypotheses_agree_on() {
        let mut p = LocalAgreement::default();
        assert!(p.update(words("the cat", 0.0)).is_empty(), "nothing is final after one hypothesis");
        assert_eq!(texts(p.partial()), ["the", "cat"]);
        let fin = p.update(words("the cat sat on", 0.0));
        assert_eq!(texts(&fin), ["the", "cat"]);
        assert_eq!(texts(p.partial()), ["sat", "on"]);
        // A revision of the partial: only the agreeing prefix ("sat") becomes final.
        let fin = p.update(words("the cat sat in the hat", 0.0));
        assert_eq!(texts(&fin), ["sat"]);
        assert_eq!(texts(p.partial()), ["in", "the", "hat"]);
    }

    #[test]
    fn finals_are_never_repeated_when_the_buffer_still_holds_them() {
        let mut p = LocalAgreement::default();
        p.update(words("one two three", 0.0));
        let a = p.update(words("one two three four", 0.0));
        assert_eq!(texts(&a), ["one", "two", "three"]);
        // The buffer still starts at 0 s: the committed words come back in the hypothesis.
        let b = p.update(words("one two three four five", 0.0));
        assert_eq!(texts(&b), ["four"]);
        let all: Vec<&str> = texts(p.committed());
        assert_eq!(all, ["one", "two", "three", "four"]);
    }

    #[test]
    fn agreement_ignores_case_and_punctuation() {
        let mut p = LocalAgreement::default();
        p.update(words("Hello world", 0.0));
        let fin = p.update(words("hello, world.", 0.0));
        assert_eq!(fin.len(), 2);
    }

    #[test]
    fn after_trimming_the_repeated_head_is_dropped() {
        let mut p = LocalAgreement::default();
        p.update(words("alpha beta gamma", 0.0));
        p.update(words("alpha beta gamma delta", 0.0));
        // Buffer cut at 1.2 s: "gamma" (ends 1.4 s) is still heard.
        p.trimmed(1.2);
        let fin = p.update(words("gamma delta epsilon", 1.0));
        assert_eq!(texts(&fin), ["delta"]);
        let rest = p.flush();
        assert_eq!(texts(&rest), ["epsilon"]);
        assert_eq!(texts(p.committed()), ["alpha", "beta", "gamma", "delta", "epsilon"]);
    }

    #[test]
    fn a_misheard_committed_word_is_still_skipped() {
        let mut p = LocalAgreement::default();
        p.update(words("it was a matter", 0.0));
        p.update(words("it was a matter of", 0.0));
        // The next pass hears "it is a matter of course": the committed head differs in one
        // word but is still recognised as already said.
        let fin = p.update(words("it is a matter of course", 0.0));
        assert_eq!(texts(&fin), ["of"]);
        assert_eq!(texts(p.partial()), ["course"]);
    }

    #[test]
    fn new_words_are_kept_when_the_hypothesis_does_not_repeat_the_committed_ones() {
        let mut p = LocalAgreement::default();
        p.update(words("consist principally of", 0.0));
        p.update(words("consist principally of types", 0.0));
        // The cut fell after "of", but the time estimate says two words are still heard; the
        // next hypothesis starts with new words, which must not be taken for those two.
        p.trimmed(1.4);
        assert_eq!(texts(&p.update(words("types composed to form", 1.5))), ["types"]);
        p.flush();
        assert_eq!(texts(p.committed()), ["consist", "principally", "of", "types", "composed", "to", "form"]);
    }

    #[test]
    fn committed_words_heard_again_differently_are_still_recognised() {
        let mut p = LocalAgreement::default();
        p.update(words("said to him Wot U-D", 0.0));
        p.update(words("said to him Wot U-D", 0.0));
        // The next utterance is decoded with the last one's audio in front of it.
        p.trimmed_keeping(2);
        p.update(words("Wotul-Di He who recited", 1.0));
        p.flush();
        assert_eq!(texts(p.committed()), ["said", "to", "him", "Wot", "U-D", "He", "who", "recited"]);
    }

    #[test]
    fn the_buffer_is_cut_after_the_last_fully_final_segment() {
        // Three segments of 3, 2 and 4 words; 6 words final: the first two segments are.
        let segs = [(2.0, 3), (3.5, 2), (6.0, 4)];
        assert_eq!(segment_cut(&segs, 6), Some((3.5, 1)));
        assert_eq!(segment_cut(&segs, 4), Some((2.0, 1)));
        assert_eq!(segment_cut(&segs, 2), None);
        // Never after the last segment, even when it is all final.
        assert_eq!(segment_cut(&segs, 9), Some((3.5, 4)));
        assert_eq!(segment_cut(&[(2.0, 3)], 3), None);
    }

    #[test]
    fn words_get_times_spread_over_their_segment() {
        let w = segments_to_words(&[(1.0, 2.0, " ab abcdef ab".into())]);
        assert_eq!(w.len(), 3);
        assert!((w[0].start - 1.0).abs() < 1e-9 && (w[2].end - 2.0).abs() < 1e-9);
        assert!(w[1].end - w[1].start > w[0].end - w[0].start);
    }
}
