//! LocalAgreement-2 (Macháček et al., whisper_streaming, arXiv 2307.14743): a word becomes
//! final once two consecutive hypotheses of the growing buffer agree on it (and on everything
//! before it). Finals never change and are never repeated; the rest is a partial.

/// A word with absolute times (seconds from the start of the stream).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Word {
    #[serde(rename = "word")]
    pub text: String,
    pub start: f64,
    pub end: f64,
}

/// Comparison key: case and punctuation do not decide agreement ("Hello," = "hello").
fn key(w: &str) -> String {
    w.chars().filter(|c| c.is_alphanumeric() || *c == '\'').flat_map(char::to_lowercase).collect()
}

/// Leading final words a hypothesis may leave out when it hears them again: the buffer cut
/// can fall a little after where word-time estimates put it, and Whisper sometimes drops the
/// first word of a buffer. One less than this may come before them in the hypothesis: a word
/// cut in two at the buffer start is heard as something else ("azure" as "are your").
const SKIPPABLE_WORDS: usize = 3;
/// Hypotheses rejected in a row before one is taken anyway: a reading that consistently
/// differs from the final words (say "1848" for "eighteen forty-eight") must not stall the
/// stream.
const MAX_REJECTED_IN_A_ROW: usize = 2;
/// A word read differently by three hypotheses in a row ("woodcutters", "wood putters",
/// "woodcutters", …) would hold back everything after it until the voice gate closes; it is
/// settled as the newest hypothesis reads it once this many words after it agree.
const SETTLING_WORDS: usize = 2;
/// Longest run of words, on either side, that is compared as one when the hypotheses write
/// the same letters apart and together, or settled as one disputed reading.
const MAX_MERGED_WORDS: usize = 3;
/// How many of the last known words (final or partial) a rejected hypothesis must repeat
/// before its later words are taken at a flush (see [`LocalAgreement::flush`]).
const KNOWN_TAIL_WORDS: usize = 3;

#[derive(Debug, Default)]
pub struct LocalAgreement {
    /// Every word made final so far.
    committed: Vec<Word>,
    /// How many of the last committed words are still spoken in the buffer (each new
    /// hypothesis starts with them and they must not be committed twice).
    in_buffer: usize,
    /// The uncommitted tail of the previous hypothesis.
    previous: Vec<Word>,
    /// Hypotheses rejected since the last accepted one.
    rejected_in_a_row: usize,
    /// The newest of them (see [`Self::flush`]). A buffer cut keeps it: what it adds is placed
    /// by its words, not its times, and the cut may come just before the flush (a stall at the
    /// end of the stream).
    last_rejected: Option<Vec<Word>>,
    /// While set, agreement commits nothing (see [`Self::hold_commits`]).
    commits_held: bool,
    /// See [`Self::passes_without_words`].
    passes_without_words: usize,
    /// The last agreement stopped at a word the two hypotheses read differently (now the
    /// first word of `previous`).
    disputed: bool,
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

    /// While `hold` is set, hypotheses still replace the partial but nothing becomes final by
    /// agreement: the recogniser holds commits while an utterance is too short for two
    /// hypotheses to be worth agreeing on (Whisper reads a lone "replied he" as "reply to
    /// him", twice, and hears it right once the next words follow).
    pub fn hold_commits(&mut self, hold: bool) {
        self.commits_held = hold;
    }

    /// Hypotheses in a row, since the buffer was last cut, that added no word: rejected ones,
    /// and accepted ones with nothing new final and no partial. While speech goes on, two in a
    /// row mean Whisper has stopped at a sentence end and will keep stopping there.
    pub fn passes_without_words(&self) -> usize {
        self.passes_without_words
    }

    /// End time of the last final word (0 before any).
    pub fn committed_end(&self) -> f64 {
        self.committed.last().map_or(0.0, |w| w.end)
    }

    /// Feed a new hypothesis of the whole buffer. Returns the words that just became final
    /// (the partial is then [`Self::partial`]), or `None` when the hypothesis does not repeat
    /// the final words the buffer still holds: Whisper sometimes stops after the first
    /// sentence of the buffer (end-of-text and the next word are close there). Such a
    /// hypothesis says nothing about the audio after it, and its last words would otherwise
    /// match final ones out of place and come out again as new.
    pub fn update(&mut self, hypothesis: Vec<Word>) -> Option<Vec<Word>> {
        let repeat = self.repeated_prefix(&hypothesis);
        let repeated = if repeat.covers_committed {
            if repeat.score > 0 {
                repeat.words
            } else {
                0
            }
        } else if self.rejected_in_a_row < MAX_REJECTED_IN_A_ROW {
            self.rejected_in_a_row += 1;
            self.passes_without_words += 1;
            self.last_rejected = Some(hypothesis);
            return None;
        } else {
            // Consistently read otherwise: take it, less a prefix that matches some stretch of
            // the final words (a sentence heard twice), and none when nothing matches (Whisper
            // may leave out the audio in front that was heard before).
            self.local_repeat(&hypothesis)
        };
        Some(self.agree(hypothesis.into_iter().skip(repeated).collect()))
    }

    /// LocalAgreement on the words after the final ones.
    fn agree(&mut self, fresh: Vec<Word>) -> Vec<Word> {
        self.rejected_in_a_row = 0;
        self.last_rejected = None;
        let agreement = if self.commits_held {
            Agreement { fresh_words: 0, stopped_at_mismatch: false }
        } else {
            agreement(&self.previous, &fresh, self.disputed)
        };
        self.disputed = agreement.stopped_at_mismatch;
        let agreed = agreement.fresh_words;
        let newly: Vec<Word> = fresh[..agreed].to_vec();
        self.committed.extend(newly.iter().cloned());
        self.in_buffer += newly.len();
        self.previous = fresh[agreed..].to_vec();
        self.passes_without_words = if newly.is_empty() && self.previous.is_empty() { self.passes_without_words + 1 } else { 0 };
        newly
    }

    /// Make everything pending final (end of speech or of the stream). When the last
    /// hypotheses were rejected, the newest one's words after the last known ones are final
    /// too: at an utterance's end there is no later pass to hear them, and a buffer whose
    /// start Whisper reads differently from the final words ("ride Crystal, for which they
    /// were found. Two little crayfishes…" after a final "…arrived first at the port of which
    /// they were found.") has every pass rejected. A hypothesis that stopped early has no such
    /// words.
    pub fn flush(&mut self) -> Vec<Word> {
        let mut rest = std::mem::take(&mut self.previous);
        self.disputed = false;
        self.committed.extend(rest.iter().cloned());
        self.in_buffer += rest.len();
        if let Some(rejected) = self.last_rejected.take() {
            rest.extend(self.commit_continuation(&rejected));
        }
        rest
    }

    /// Make final, and return, the words of `hypothesis` after the place where it repeats the
    /// last final words (see [`KNOWN_TAIL_WORDS`]); none when it does not repeat them.
    pub fn commit_continuation(&mut self, hypothesis: &[Word]) -> Vec<Word> {
        let tail = &self.committed[self.committed.len().saturating_sub(KNOWN_TAIL_WORDS)..];
        let continuation = words_after_tail(hypothesis, tail).to_vec();
        self.committed.extend(continuation.iter().cloned());
        self.in_buffer += continuation.len();
        continuation
    }

    /// The buffer was cut at stream time `cut`: committed words that ended well before it are
    /// no longer heard; the last couple stay, since word times are estimates.
    pub fn trimmed(&mut self, cut: f64) {
        let still = self.committed.iter().rev().take_while(|w| w.end > cut - 0.3).count();
        self.in_buffer = still.max(self.in_buffer.min(2)).min(self.committed.len());
        self.passes_without_words = 0;
    }

    /// The buffer was cut at a segment boundary behind which `still_in_buffer` committed words
    /// are still heard (exact, unlike [`Self::trimmed`]'s time estimate).
    pub fn trimmed_keeping(&mut self, still_in_buffer: usize) {
        self.in_buffer = still_in_buffer.min(self.committed.len());
        self.passes_without_words = 0;
    }

    /// The speech ended at stream time `at`: no word ends later than that (word times are
    /// spread over their segment, whose end can be the buffer's, after the speech).
    pub fn end_words_by(&mut self, at: f64) {
        let rejected = self.last_rejected.iter_mut().flatten();
        for w in self.committed.iter_mut().rev().take_while(|w| w.end > at).chain(self.previous.iter_mut()).chain(rejected) {
            w.start = w.start.min(at);
            w.end = w.end.min(at);
        }
    }

    /// The buffer was emptied.
    pub fn cleared(&mut self) {
        self.in_buffer = 0;
        self.last_rejected = None;
        self.previous.clear();
        self.disputed = false;
        self.passes_without_words = 0;
    }

    pub fn partial(&self) -> &[Word] {
        &self.previous
    }

    /// The buffer still holds audio that was already committed, so a hypothesis starts by
    /// repeating committed words, though not always the same way ("Wot U-D" may come back as
    /// "Wotul-Di"), not always all of them, and sometimes after a word or two of noise (the
    /// buffer may start inside a word; see [`SKIPPABLE_WORDS`]). Each hypothesis prefix is
    /// aligned letter by letter with the final words still heard (see [`repeat_scores`]); the
    /// best-scoring one is the repetition.
    fn repeated_prefix(&self, hypothesis: &[Word]) -> RepeatMatch {
        let heard = &self.committed[self.committed.len() - self.in_buffer..];
        let committed = letters(heard);
        let skippable_committed = letters(&heard[..heard.len().min(SKIPPABLE_WORDS)]).len();
        let candidates = self.repeat_candidates(hypothesis);
        let skippable_spoken = letters(&candidates[..candidates.len().min(SKIPPABLE_WORDS - 1)]).len();
        let scores = repeat_scores(&committed, skippable_committed, &letters(candidates), skippable_spoken, true);
        let (words, score) = best_prefix(candidates, &scores, |_, _| true);
        RepeatMatch { words, score, covers_committed: committed.len() == skippable_committed || score > 0 }
    }

    /// Leading words of the hypothesis that match any stretch of the final words still
    /// heard (see [`repeat_scores`]), closely enough to score at least half their letters,
    /// which a chance alignment of unrelated words does not; 0 when none does.
    fn local_repeat(&self, hypothesis: &[Word]) -> usize {
        let committed = letters(&self.committed[self.committed.len() - self.in_buffer..]);
        let candidates = self.repeat_candidates(hypothesis);
        let scores = repeat_scores(&committed, committed.len(), &letters(candidates), 0, false);
        best_prefix(candidates, &scores, |score, length| 2 * score >= length as i64).0
    }

    /// The words a repetition of the final ones can span: prefixes of more words than were
    /// committed (plus slack for split words) are not repetitions.
    fn repeat_candidates<'h>(&self, hypothesis: &'h [Word]) -> &'h [Word] {
        &hypothesis[..hypothesis.len().min(self.in_buffer + 2)]
    }
}

/// How far two consecutive hypotheses (after the final words) agree.
struct Agreement {
    /// Leading words of the newer hypothesis that are agreed on.
    fresh_words: usize,
    /// Whether agreement ended at words the two read differently, rather than at the end of
    /// one of them.
    stopped_at_mismatch: bool,
}

/// LocalAgreement's longest common prefix, word by word, where words written apart in one
/// hypothesis and together in the other agree when their letters do ("woodcutters" / "wood
/// cutters"). With `settle_first` (the first words were in dispute last time too), a first
/// reading that differs again is taken from `fresh` when the [`SETTLING_WORDS`] after it agree.
fn agreement(previous: &[Word], fresh: &[Word], settle_first: bool) -> Agreement {
    let (mut i, mut j) = (0, 0);
    while i < previous.len() && j < fresh.len() {
        match same_letters(&previous[i..], &fresh[j..]) {
            Some((a, b)) => (i, j) = (i + a, j + b),
            None => break,
        }
    }
    if j == 0 && settle_first && !previous.is_empty() && !fresh.is_empty() {
        // The disputed words: fewest first; one side may have none (a word left out).
        let mut spans: Vec<(usize, usize)> =
            (0..=MAX_MERGED_WORDS).flat_map(|a| (0..=MAX_MERGED_WORDS).map(move |b| (a, b))).filter(|&(a, b)| a + b > 0).collect();
        spans.sort_by_key(|&(a, b)| a + b);
        for (a, b) in spans {
            if a >= previous.len() || b >= fresh.len() {
                continue;
            }
            let rest = agreement(&previous[a..], &fresh[b..], false);
            if rest.fresh_words >= SETTLING_WORDS {
                return Agreement { fresh_words: b + rest.fresh_words, ..rest };
            }
        }
    }
    Agreement { fresh_words: j, stopped_at_mismatch: i < previous.len() && j < fresh.len() }
}

/// The shortest runs of words at the heads of `a` and `b` (up to [`MAX_MERGED_WORDS`] each)
/// with the same letters, as word counts; `None` when the heads differ.
fn same_letters(a: &[Word], b: &[Word]) -> Option<(usize, usize)> {
    let (mut x, mut y) = (1, 1);
    let (mut la, mut lb) = (key(&a[0].text), key(&b[0].text));
    loop {
        if la == lb {
            return Some((x, y));
        }
        if la.len() < lb.len() && lb.starts_with(&la) && x < a.len().min(MAX_MERGED_WORDS) {
            la.push_str(&key(&a[x].text));
            x += 1;
        } else if lb.len() < la.len() && la.starts_with(&lb) && y < b.len().min(MAX_MERGED_WORDS) {
            lb.push_str(&key(&b[y].text));
            y += 1;
        } else {
            return None;
        }
    }
}

/// The comparison keys' letters of some words, run together.
fn letters(words: &[Word]) -> Vec<char> {
    words.iter().flat_map(|w| key(&w.text).chars().collect::<Vec<_>>()).collect()
}

/// The prefix of `words` (how many words) whose letters have the highest of `scores` (one per
/// prefix length in letters) among those `eligible(score, letters)` accepts, and that score;
/// the empty prefix on ties.
fn best_prefix(words: &[Word], scores: &[i64], eligible: impl Fn(i64, usize) -> bool) -> (usize, i64) {
    let mut best = (0, scores[0]);
    let mut length = 0;
    for (j, w) in words.iter().enumerate() {
        length += key(&w.text).chars().count();
        if scores[length] > best.1 && eligible(scores[length], length) {
            best = (j + 1, scores[length]);
        }
    }
    best
}

/// The words of `hypothesis` after the place that best repeats all of `tail` (letter by letter,
/// see [`repeat_scores`], scoring at least half its letters); none when no place does. Of
/// equally good places the last is taken.
fn words_after_tail<'h>(hypothesis: &'h [Word], tail: &[Word]) -> &'h [Word] {
    let tail_letters = letters(tail);
    if tail_letters.is_empty() {
        return &[];
    }
    let spoken = letters(hypothesis);
    // The repetition may start anywhere in the hypothesis: all its head letters are free.
    let scores = repeat_scores(&tail_letters, 0, &spoken, spoken.len(), true);
    let mut best: Option<(usize, i64)> = None;
    let mut length = 0;
    for (j, w) in hypothesis.iter().enumerate() {
        length += key(&w.text).chars().count();
        let score = scores[length];
        if 2 * score >= tail_letters.len() as i64 && best.is_none_or(|(_, s)| score >= s) {
            best = Some((j + 1, score));
        }
    }
    best.map_or(&[], |(words, _)| &hypothesis[words..])
}

/// How a hypothesis starts by repeating final words.
struct RepeatMatch {
    /// Leading words of the hypothesis that best match the final words.
    words: usize,
    /// Their alignment score (see [`repeat_scores`]).
    score: i64,
    /// Whether they match well enough to say the hypothesis heard all the final words that
    /// have to be heard (all but the first few).
    covers_committed: bool,
}

/// For every prefix `b[..y]` of a hypothesis' letters: the best score of an alignment of `a`,
/// the final words' letters, with it: every letter of `b` scores +1 and every edit −2 (a
/// matched letter +1, a substituted or extra one −1, a left-out letter of `a` −2), except that
/// up to `skip_a` first letters of `a` and `skip_b` first letters of `b` may be passed over
/// for nothing. With `to_end_of_a`, all of `a` after its skipped head must be aligned: a
/// hypothesis that stops before the end of `a` pays for every letter it did not reach, so its
/// best score is negative; without, `a` may end anywhere.
fn repeat_scores(a: &[char], skip_a: usize, b: &[char], skip_b: usize, to_end_of_a: bool) -> Vec<i64> {
    const LEFT_OUT: i64 = -2;
    const EXTRA: i64 = -1;
    let head = |x: usize, y: usize| -> i64 {
        // Only passing over heads: free within the allowances.
        LEFT_OUT * x.saturating_sub(skip_a) as i64 + EXTRA * y.saturating_sub(skip_b) as i64
    };
    // row[y] = best score for a[..x] against b[..y], row by row in x.
    let mut row: Vec<i64> = (0..=b.len()).map(|y| head(0, y)).collect();
    let mut best_over_ends = row.clone();
    for (x, &ca) in a.iter().enumerate() {
        let mut next = vec![head(x + 1, 0); b.len() + 1];
        for y in 1..=b.len() {
            let pair = row[y - 1] + if ca == b[y - 1] { 1 } else { EXTRA };
            next[y] = pair.max(row[y] + LEFT_OUT).max(next[y - 1] + EXTRA).max(head(x + 1, y));
        }
        row = next;
        for (best, &score) in best_over_ends.iter_mut().zip(&row) {
            *best = (*best).max(score);
        }
    }
    if to_end_of_a {
        row
    } else {
        best_over_ends
    }
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
        assert!(p.update(words("the cat", 0.0)).unwrap().is_empty(), "nothing is final after one hypothesis");
        assert_eq!(texts(p.partial()), ["the", "cat"]);
        let fin = p.update(words("the cat sat on", 0.0)).unwrap();
        assert_eq!(texts(&fin), ["the", "cat"]);
        assert_eq!(texts(p.partial()), ["sat", "on"]);
        // A revision of the partial: only the agreeing prefix ("sat") becomes final.
        let fin = p.update(words("the cat sat in the hat", 0.0)).unwrap();
        assert_eq!(texts(&fin), ["sat"]);
        assert_eq!(texts(p.partial()), ["in", "the", "hat"]);
    }

    #[test]
    fn a_hypothesis_that_stops_before_the_final_words_is_rejected() {
        // Seen on a long-form replay: the buffer starts with the previous utterance's last
        // sentence, and "Chapter sixteen. No one in all Raymond, including the" are final too;
        // one pass stops after the first sentence. Its last word matched the last final one
        // ("the") and the rest came out a second time as new words.
        let mut p = LocalAgreement::default();
        let heard = "quality of condition amongst the natives chapter sixteen no one in all raymond including the";
        p.update(words(heard, 0.0));
        p.update(words(&format!("{heard} rectangle"), 0.0));
        assert_eq!(p.committed().len(), 15);
        let truncated = "the quality of condition amongst the natives";
        assert_eq!(p.update(words(truncated, 0.0)), None);
        assert_eq!(p.update(words(truncated, 0.0)), None);
        assert_eq!(texts(p.partial()), ["rectangle"], "a rejected hypothesis changes nothing");
        let fin = p.update(words(&format!("{heard} rectangle felt"), 0.0)).unwrap();
        assert_eq!(texts(&fin), ["rectangle"]);
        assert_eq!(p.committed().len(), 16);
    }

    #[test]
    fn a_flush_keeps_the_words_a_rejected_last_hypothesis_adds_after_the_known_ones() {
        // Seen on a noisy long file at r = 3: the buffer starts with the final words "…speak
        // for itself", which the passes read as "future"; the stream's last pass was rejected
        // for it, and its last words, "produced on me", were never made final.
        let misread = "future if i am asked what impression of the writer those extraordinary pages";
        let heard_so_far = |p: &mut LocalAgreement| {
            p.update(words("autobiography speak for itself", 0.0));
            p.update(words("autobiography speak for itself if", 0.0));
            assert_eq!(p.update(words(misread, 0.0)), None);
            assert_eq!(p.update(words(misread, 0.0)), None);
            p.update(words(misread, 0.0)).expect("the third reading in a row is taken");
        };
        let mut p = LocalAgreement::default();
        heard_so_far(&mut p);
        assert_eq!(p.update(words(&format!("{misread} produced on me"), 0.0)), None);
        // A stall cut just before the flush (at the stream's end) keeps it.
        p.trimmed(1.0);
        let rest = p.flush();
        assert_eq!(texts(&rest), format!("{misread} produced on me").split_whitespace().collect::<Vec<_>>());
        // A rejected hypothesis that stops early adds nothing, and repeats nothing.
        let mut p = LocalAgreement::default();
        heard_so_far(&mut p);
        assert_eq!(p.update(words("future if i am asked what", 0.0)), None);
        assert_eq!(texts(&p.flush()), misread.split_whitespace().collect::<Vec<_>>());
    }

    #[test]
    fn a_continuation_is_what_a_hypothesis_hears_after_the_last_final_words() {
        // The end check of a noisy long file at r = 3: every pass had stopped at "…than ever."
        let mut p = LocalAgreement::default();
        p.update(words("presently they became more broad awake than ever", 0.0));
        p.update(words("presently they became more broad awake than ever", 0.0));
        assert_eq!(p.committed().len(), 8);
        let nothing_new = p.commit_continuation(&words("they became more broad awake than ever", 10.0));
        assert!(nothing_new.is_empty(), "{nothing_new:?}");
        let elsewhere = p.commit_continuation(&words("and a girl called bella", 10.0));
        assert!(elsewhere.is_empty(), "without the last final words there is no place to go on from: {elsewhere:?}");
        let late = p.commit_continuation(&words("they became more broad awake than ever and a girl called bella", 10.0));
        assert_eq!(texts(&late), ["and", "a", "girl", "called", "bella"]);
        assert_eq!(p.committed().len(), 13);
        // Misheard a little ("bella" as "bela"), the last final words still place it.
        let more = p.commit_continuation(&words("a girl called bela pastik", 10.0));
        assert_eq!(texts(&more), ["pastik"]);
    }

    #[test]
    fn passes_that_stop_at_a_sentence_end_are_counted_until_the_buffer_is_cut() {
        // Seen on a long-form replay (train.tsv clips): "Jeff" became final, then every pass
        // of the growing buffer ended at "…from its opponents." and the spoken title after it
        // was never decoded.
        let mut p = LocalAgreement::default();
        let sentence = "or which has received the slightest mark of approbation from its opponents";
        p.update(words(&format!("{sentence} jeff"), 0.0));
        p.update(words(&format!("{sentence} jeff the inquisitive"), 0.0));
        assert_eq!(p.passes_without_words(), 0, "a pass with a partial adds words");
        p.update(words(sentence, 0.0));
        p.update(words(sentence, 0.0));
        assert_eq!(p.passes_without_words(), 2);
        // The recogniser cuts the buffer; the next pass starts near the unheard speech.
        p.trimmed_keeping(2);
        assert_eq!(p.passes_without_words(), 0);
        let fin = p.update(words("opponents jeff the inquisitive by general rush c hawkins", 4.0)).unwrap();
        assert!(fin.is_empty());
        assert_eq!(texts(p.partial()), ["the", "inquisitive", "by", "general", "rush", "c", "hawkins"]);
        assert_eq!(p.passes_without_words(), 0);
    }

    #[test]
    fn an_ordinary_stream_of_hypotheses_never_counts_as_stalled() {
        let mut p = LocalAgreement::default();
        let text = "one two three four five six seven eight nine ten eleven twelve";
        let all: Vec<&str> = text.split_whitespace().collect();
        for n in 2..=all.len() {
            p.update(words(&all[..n].join(" "), 0.0));
            assert_eq!(p.passes_without_words(), 0, "after {n} words");
        }
    }

    #[test]
    fn a_word_cut_at_the_buffer_start_heard_as_two_others_is_still_a_repetition() {
        let mut p = LocalAgreement::default();
        p.update(words("hung upon their azure leaves did", 0.0));
        p.update(words("hung upon their azure leaves did show", 0.0));
        // The buffer now starts inside "azure", which comes back as "are your".
        p.trimmed_keeping(3);
        let fin = p.update(words("are your leaves did you like", 1.0)).unwrap();
        assert!(fin.is_empty());
        assert_eq!(texts(p.partial()), ["you", "like"]);
    }

    #[test]
    fn nothing_is_final_while_commits_are_held() {
        // The LibriSpeech long-form start: two passes on the first two seconds agree on a
        // misreading, and the third, which hears the next words, reads it right.
        let mut p = LocalAgreement::default();
        p.hold_commits(true);
        assert!(p.update(words("reply to him", 0.0)).unwrap().is_empty());
        assert!(p.update(words("reply to him", 0.0)).unwrap().is_empty(), "agreement is held");
        assert_eq!(texts(p.partial()), ["reply", "to", "him"]);
        p.hold_commits(false);
        assert!(p.update(words("replied he of a truth", 0.0)).unwrap().is_empty());
        assert_eq!(texts(&p.update(words("replied he of a truth i heard", 0.0)).unwrap()), ["replied", "he", "of", "a", "truth"]);
    }

    #[test]
    fn a_word_final_on_short_audio_and_heard_again_longer_is_not_repeated() {
        // The LibriSpeech long-form start: "reply" became final on a second of audio; the
        // next pass, on more, hears "replied he".
        let mut p = LocalAgreement::default();
        p.update(words("reply", 0.0));
        p.update(words("reply to him", 0.0));
        assert_eq!(p.update(words("replied he of a truth", 0.0)).unwrap(), vec![]);
        assert_eq!(texts(p.partial()), ["he", "of", "a", "truth"]);
    }

    #[test]
    fn a_consistently_different_reading_is_taken_after_two_rejections() {
        let mut p = LocalAgreement::default();
        p.update(words("in june eighteen forty eight", 0.0));
        p.update(words("in june eighteen forty eight knew", 0.0));
        // Every later pass writes the number in digits: rejected twice, then taken.
        assert_eq!(p.update(words("in june 1848 knew a", 0.0)), None);
        assert_eq!(p.update(words("in june 1848 knew a great", 0.0)), None);
        assert!(p.update(words("in june 1848 knew a great deal", 0.0)).is_some());
        // What matches a stretch of the final words is still dropped; the number itself can't
        // be matched letter by letter, so it stays (heard twice, in two spellings).
        assert_eq!(texts(p.partial()), ["1848", "knew", "a", "great", "deal"]);
    }

    #[test]
    fn a_hypothesis_that_leaves_out_the_heard_audio_keeps_all_its_words() {
        // Seen on a long-form replay: the next utterance is decoded with the last sentence's
        // audio in front, and Whisper transcribes only the new speech, every time.
        let mut p = LocalAgreement::default();
        p.update(words("running evenly like pellets in the groove of the nass road", 0.0));
        p.update(words("running evenly like pellets in the groove of the nass road", 0.0));
        p.flush();
        p.trimmed_keeping(11);
        let new = "there was once upon a time a man and a woman";
        assert_eq!(p.update(words(new, 6.0)), None);
        assert_eq!(p.update(words(new, 6.0)), None);
        assert!(p.update(words(new, 6.0)).is_some());
        assert_eq!(p.partial().len(), 11, "no new word may be taken for a final one");
    }

    #[test]
    fn a_third_hypothesis_in_a_row_that_stops_early_adds_nothing() {
        let mut p = LocalAgreement::default();
        let heard = "engines of destruction the cars came scudding in towards dublin running evenly";
        p.update(words(heard, 0.0));
        p.update(words(heard, 0.0));
        let truncated = "engines of destruction";
        assert_eq!(p.update(words(truncated, 0.0)), None);
        assert_eq!(p.update(words(truncated, 0.0)), None);
        assert_eq!(p.update(words(truncated, 0.0)), Some(vec![]));
        assert!(p.partial().is_empty());
        assert_eq!(p.committed().len(), 12);
    }

    #[test]
    fn finals_are_never_repeated_when_the_buffer_still_holds_them() {
        let mut p = LocalAgreement::default();
        p.update(words("one two three", 0.0));
        let a = p.update(words("one two three four", 0.0)).unwrap();
        assert_eq!(texts(&a), ["one", "two", "three"]);
        // The buffer still starts at 0 s: the committed words come back in the hypothesis.
        let b = p.update(words("one two three four five", 0.0)).unwrap();
        assert_eq!(texts(&b), ["four"]);
        let all: Vec<&str> = texts(p.committed());
        assert_eq!(all, ["one", "two", "three", "four"]);
    }

    #[test]
    fn words_written_apart_and_together_agree() {
        let mut p = LocalAgreement::default();
        p.update(words("took impressions from woodblocks engraved", 0.0));
        let fin = p.update(words("took impressions from wood blocks engraved in relief", 0.0)).unwrap();
        assert_eq!(texts(&fin), ["took", "impressions", "from", "wood", "blocks", "engraved"], "the newer spelling is final");
    }

    #[test]
    fn a_word_read_differently_pass_after_pass_is_settled_by_the_newest_reading() {
        // Seen on a long-form replay with CoDA at r = 4: the passes alternated between
        // "woodcutters" and "wood putters", and nothing after it was final for 10 s.
        let mut p = LocalAgreement::default();
        let before = "for centuries before the";
        p.update(words(&format!("{before} woodcutters of"), 0.0));
        let fin = p.update(words(&format!("{before} wood putters of the netherlands"), 0.0)).unwrap();
        assert_eq!(texts(&fin), ["for", "centuries", "before", "the"], "one disagreement settles nothing");
        let fin = p.update(words(&format!("{before} woodcutters of the netherlands by a"), 0.0)).unwrap();
        assert_eq!(texts(&fin), ["woodcutters", "of", "the", "netherlands"], "the second settles it as this pass reads it");
        assert_eq!(texts(p.partial()), ["by", "a"]);
        // Words after a dispute that do not agree settle nothing.
        let mut p = LocalAgreement::default();
        p.update(words("alpha beta gamma", 0.0));
        p.update(words("alpha bravo delta", 0.0));
        assert_eq!(p.update(words("alpha beta echo", 0.0)).unwrap(), vec![]);
        assert_eq!(texts(p.partial()), ["beta", "echo"]);
    }

    #[test]
    fn a_first_disagreement_after_agreement_ran_out_is_not_settled() {
        let mut p = LocalAgreement::default();
        p.update(words("one", 0.0));
        // Agreement stops at the end of the shorter hypothesis: no word is in dispute.
        p.update(words("one two three five", 0.0));
        assert_eq!(p.update(words("one four three five six", 0.0)).unwrap(), vec![]);
        assert_eq!(texts(p.committed()), ["one"]);
        assert_eq!(texts(p.partial()), ["four", "three", "five", "six"]);
    }

    #[test]
    fn agreement_ignores_case_and_punctuation() {
        let mut p = LocalAgreement::default();
        p.update(words("Hello world", 0.0));
        let fin = p.update(words("hello, world.", 0.0)).unwrap();
        assert_eq!(fin.len(), 2);
    }

    #[test]
    fn after_trimming_the_repeated_head_is_dropped() {
        let mut p = LocalAgreement::default();
        p.update(words("alpha beta gamma", 0.0));
        p.update(words("alpha beta gamma delta", 0.0));
        // Buffer cut at 1.2 s: "gamma" (ends 1.4 s) is still heard.
        p.trimmed(1.2);
        let fin = p.update(words("gamma delta epsilon", 1.0)).unwrap();
        assert_eq!(texts(&fin), ["delta"]);
        let rest = p.flush();
        assert_eq!(texts(&rest), ["epsilon"]);
        assert_eq!(texts(p.committed()), ["alpha", "beta", "gamma", "delta", "epsilon"]);
    }

    #[test]
    fn no_word_ends_after_the_speech_did() {
        let mut p = LocalAgreement::default();
        p.update(words("and said to him", 0.0));
        p.update(words("and said to him both to thee", 0.0));
        // The segment ran into the hangover of silence: its last words' times say 2.5–3.4 s,
        // but the gate heard the speech end at 2.2 s.
        p.end_words_by(2.2);
        let ends: Vec<f64> = p.committed().iter().chain(p.partial()).map(|w| w.end).collect();
        assert_eq!(ends, [0.4, 0.9, 1.4, 1.9, 2.2, 2.2, 2.2]);
        assert!(p.partial().iter().all(|w| w.start <= 2.2));
        assert_eq!(p.committed_end(), 1.9);
    }

    #[test]
    fn a_misheard_committed_word_is_still_skipped() {
        let mut p = LocalAgreement::default();
        p.update(words("it was a matter", 0.0));
        p.update(words("it was a matter of", 0.0));
        // The next pass hears "it is a matter of course": the committed head differs in one
        // word but is still recognised as already said.
        let fin = p.update(words("it is a matter of course", 0.0)).unwrap();
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
        assert_eq!(texts(&p.update(words("types composed to form", 1.5)).unwrap()), ["types"]);
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
