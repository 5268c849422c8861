//! Word-level timestamps, by openai/whisper's method. The decoder reads a window's text again,
//! teacher-forced, and the cross-attention of its alignment heads (heads whose attention
//! follows the audio in time) is turned into a token × frame similarity; dynamic time warping
//! finds the monotone path through it, and each word starts at the frame where the path
//! reaches the query that predicts its first token.

use crate::model::tokens::WhisperTokenizer;
use anyhow::{ensure, Result};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Word {
    /// The word as it appears in the segment's text, with its leading space and punctuation.
    pub word: String,
    pub start: f64,
    pub end: f64,
    /// Mean probability of the word's tokens under the teacher-forced pass.
    pub probability: f64,
}

/// Seconds per encoder frame.
pub const FRAME_SECONDS: f64 = 0.02;
/// openai/whisper's smoothing of each head's attention along time, in frames.
const MEDIAN_FILTER_WIDTH: usize = 7;
/// Punctuation that joins the next word, and punctuation that joins the one before.
const PREPENDED: &str = "\"'“¿([{-";
const APPENDED: &str = "\"'.。,，!！?？:：”)]}、";
/// Languages written without spaces between words: every character sequence is a word.
const UNSPACED_LANGUAGES: [&str; 6] = ["zh", "ja", "th", "lo", "my", "yue"];

/// Where each aligned query row first appears on the path, in seconds from the window start.
///
/// `heads` are the alignment heads' raw scores (q·k / √dh), `rows` × `frames` row-major each,
/// for every query of the teacher-forced pass; `audio_frames` of the frames hold the window's
/// audio; `first_row..first_row + n` are the queries that predict the text tokens and the
/// end-of-text. Returns n times.
pub fn row_start_times(
    heads: &[Vec<f32>],
    rows: usize,
    frames: usize,
    audio_frames: usize,
    first_row: usize,
    n: usize,
) -> Result<Vec<f64>> {
    ensure!(!heads.is_empty(), "no alignment heads");
    ensure!(audio_frames > 0 && audio_frames <= frames, "{audio_frames} audio frames of {frames}");
    ensure!(first_row + n <= rows && n > 0, "rows {first_row}..{} of {rows}", first_row + n);
    let mut similarity = vec![0f32; n * audio_frames];
    for scores in heads {
        ensure!(scores.len() == rows * frames, "a head's scores hold {} values, not {rows} × {frames}", scores.len());
        // Each query's attention over the audio frames only (the padding is not heard).
        let mut weights: Vec<f32> = Vec::with_capacity(rows * audio_frames);
        for row in scores.chunks_exact(frames) {
            let row = &row[..audio_frames];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let exps: Vec<f32> = row.iter().map(|&v| (v - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            weights.extend(exps.iter().map(|&e| e / sum));
        }
        // Standardised across the queries: a frame stands out where some tokens attend to it
        // more than the others do.
        for f in 0..audio_frames {
            let column = || (0..rows).map(|r| weights[r * audio_frames + f]);
            let mean = column().sum::<f32>() / rows as f32;
            let std = (column().map(|w| (w - mean) * (w - mean)).sum::<f32>() / rows as f32).sqrt();
            for r in 0..rows {
                let w = &mut weights[r * audio_frames + f];
                *w = (*w - mean) / std.max(1e-10);
            }
        }
        for (i, row) in weights.chunks_exact(audio_frames).skip(first_row).take(n).enumerate() {
            for (acc, v) in similarity[i * audio_frames..(i + 1) * audio_frames].iter_mut().zip(median_filter(row, MEDIAN_FILTER_WIDTH)) {
                *acc += v / heads.len() as f32;
            }
        }
    }
    let cost: Vec<f32> = similarity.iter().map(|&s| -s).collect();
    let mut starts = vec![None; n];
    for (row, frame) in dtw(&cost, n, audio_frames) {
        starts[row].get_or_insert(frame as f64 * FRAME_SECONDS);
    }
    Ok(starts.into_iter().map(|s| s.expect("a warping path visits every row")).collect())
}

/// The cheapest monotone path through `cost` (`rows` × `cols`, row-major) from the first cell
/// to the last, moving one row down, one column right, or both; (row, column) cells in order.
pub fn dtw(cost: &[f32], rows: usize, cols: usize) -> Vec<(usize, usize)> {
    assert_eq!(cost.len(), rows * cols);
    #[derive(Clone, Copy)]
    enum Step {
        Diagonal,
        Down,
        Right,
    }
    let width = cols + 1;
    let mut total = vec![f32::INFINITY; (rows + 1) * width];
    let mut step = vec![Step::Diagonal; (rows + 1) * width];
    total[0] = 0.0;
    for j in 1..=cols {
        for i in 1..=rows {
            let (diagonal, down, right) = (total[(i - 1) * width + j - 1], total[(i - 1) * width + j], total[i * width + j - 1]);
            let (best, from) = if diagonal < down && diagonal < right {
                (diagonal, Step::Diagonal)
            } else if down < diagonal && down < right {
                (down, Step::Down)
            } else {
                (right, Step::Right)
            };
            total[i * width + j] = cost[(i - 1) * cols + j - 1] + best;
            step[i * width + j] = from;
        }
    }
    let (mut i, mut j) = (rows, cols);
    let mut path = Vec::with_capacity(rows + cols);
    while i > 0 && j > 0 {
        path.push((i - 1, j - 1));
        match step[i * width + j] {
            Step::Diagonal => {
                i -= 1;
                j -= 1;
            }
            Step::Down => i -= 1,
            Step::Right => j -= 1,
        }
    }
    // Every cell off the first row and column came from a finite neighbour, so the path
    // ends at the first cell, coming from the corner.
    debug_assert_eq!(path.last(), Some(&(0, 0)));
    path.reverse();
    path
}

/// Median of each `width` values around every point, the edges mirrored (as scipy's and
/// openai/whisper's reflect padding).
pub fn median_filter(values: &[f32], width: usize) -> Vec<f32> {
    let half = width / 2;
    if values.len() <= half {
        return values.to_vec();
    }
    let n = values.len() as isize;
    let at = |i: isize| {
        values[(if i < 0 {
            -i
        } else if i >= n {
            2 * (n - 1) - i
        } else {
            i
        }) as usize]
    };
    let mut window = vec![0f32; width];
    (0..n)
        .map(|i| {
            for (k, w) in window.iter_mut().enumerate() {
                *w = at(i + k as isize - half as isize);
            }
            window.sort_by(f32::total_cmp);
            window[half]
        })
        .collect()
}

/// The words of `tokens` (text tokens only), each with the range of tokens that spell it: a
/// word starts at a token that begins with a space or is punctuation; in languages written
/// without spaces, at every complete character. Tokens that end inside a multi-byte
/// character are grouped until it is complete.
pub fn split_words(tok: &WhisperTokenizer, tokens: &[u32], language: &str) -> Result<Vec<(String, std::ops::Range<usize>)>> {
    // Pieces of whole characters first.
    let mut pieces: Vec<(String, std::ops::Range<usize>)> = Vec::new();
    let mut start = 0;
    for end in 1..=tokens.len() {
        let text = tok.decode_text(&tokens[start..end])?;
        if !text.contains('\u{FFFD}') || end == tokens.len() {
            pieces.push((text, start..end));
            start = end;
        }
    }
    if UNSPACED_LANGUAGES.contains(&language) {
        return Ok(pieces);
    }
    let mut words: Vec<(String, std::ops::Range<usize>)> = Vec::new();
    for (text, range) in pieces {
        let punctuation = !text.trim().is_empty() && text.trim().chars().all(|c| c.is_ascii_punctuation());
        match words.last_mut() {
            Some((word, span)) if !text.starts_with(' ') && !punctuation => {
                word.push_str(&text);
                span.end = range.end;
            }
            _ => words.push((text, range)),
        }
    }
    Ok(words)
}

/// Punctuation standing alone joins its neighbour: opening marks the next word, closing marks
/// the word before (openai/whisper's merge). The word keeps its own times: the decoder tends
/// to place a comma or a full stop in the pause after the word.
pub fn merge_punctuation(words: Vec<Word>) -> Vec<Word> {
    let is_only = |word: &str, set: &str| {
        let trimmed = word.trim();
        !trimmed.is_empty() && trimmed.chars().all(|c| set.contains(c))
    };
    // An opening mark after a space, as in ` "Hello`, joins the next word.
    let mut opened: Vec<Word> = Vec::with_capacity(words.len());
    let mut pending: Option<Word> = None;
    for mut word in words {
        if let Some(opening) = pending.take() {
            word.word = format!("{}{}", opening.word, word.word.trim_start());
        }
        if word.word.starts_with(' ') && is_only(&word.word, PREPENDED) {
            pending = Some(word);
        } else {
            opened.push(word);
        }
    }
    opened.extend(pending);
    // A closing mark written against the word before, as in `world."`, joins it.
    let mut merged: Vec<Word> = Vec::with_capacity(opened.len());
    for word in opened {
        match merged.last_mut() {
            Some(previous) if !word.word.starts_with(' ') && !previous.word.ends_with(' ') && is_only(&word.word, APPENDED) => {
                previous.word.push_str(&word.word)
            }
            _ => merged.push(word),
        }
    }
    merged
}

/// Long words at sentence ends are where the alignment drifts into the pause: openai/whisper
/// caps a word next to a sentence end at twice the median word length (itself at most 0.7 s).
/// Returns the median used.
pub fn cap_long_words(words: &mut [Word]) -> f64 {
    let mut durations: Vec<f64> = words.iter().map(|w| w.end - w.start).filter(|&d| d > 0.0).collect();
    if durations.is_empty() {
        return 0.0;
    }
    durations.sort_by(f64::total_cmp);
    let median = {
        let m = durations.len() / 2;
        if durations.len() % 2 == 1 {
            durations[m]
        } else {
            (durations[m - 1] + durations[m]) / 2.0
        }
    }
    .min(0.7);
    let max = 2.0 * median;
    let ends_sentence = |w: &str| w.trim().chars().last().is_some_and(|c| ".。!！?？".contains(c));
    for i in 1..words.len() {
        if words[i].end - words[i].start > max {
            if ends_sentence(&words[i].word) {
                words[i].end = words[i].start + max;
            } else if ends_sentence(&words[i - 1].word) {
                words[i].start = words[i].end - max;
            }
        }
    }
    median
}

/// Shortest pause, in seconds, taken out of a word's span.
const MIN_PAUSE_SECONDS: f64 = 0.2;
/// A 20 ms frame is silent this far below the window's loud frames (its 95th percentile).
const PAUSE_BELOW_LOUD_DB: f32 = 40.0;

/// The warping path has to spend a pause on some token, and hands it to the word after it
/// (or a word's end runs on into it): "Printing, [2 s of silence] in the only sense" gave "in"
/// 0.96–3.04 s, here and in faster-whisper. A word whose span starts or ends with at least
/// [`MIN_PAUSE_SECONDS`] of frames far quieter than the window's speech gets that stretch cut
/// off, so the pause falls between words. `audio` is the window's 16 kHz audio, starting at
/// `time_offset`. Audio with a noise floor near the speech level is left as aligned.
pub fn trim_pauses(words: &mut [Word], audio: &[f32], time_offset: f64) {
    let frame = (FRAME_SECONDS * 16_000.0) as usize;
    let db: Vec<f32> =
        audio.chunks(frame).map(|c| 10.0 * (c.iter().map(|&s| s * s).sum::<f32>() / c.len() as f32).max(1e-12).log10()).collect();
    if db.is_empty() {
        return;
    }
    let mut sorted = db.clone();
    sorted.sort_by(f32::total_cmp);
    let loud = sorted[(sorted.len() - 1) * 95 / 100];
    let silent = |i: usize| db.get(i).is_none_or(|&d| d < loud - PAUSE_BELOW_LOUD_DB);
    let min_run = (MIN_PAUSE_SECONDS / FRAME_SECONDS).round() as usize;
    let to_frame = |t: f64| (((t - time_offset) / FRAME_SECONDS).round().max(0.0) as usize).min(db.len());
    for word in words.iter_mut() {
        let (first, last) = (to_frame(word.start), to_frame(word.end));
        let Some(sounding) = (first..last).find(|&i| !silent(i)) else { continue };
        if sounding - first >= min_run {
            word.start = time_offset + sounding as f64 * FRAME_SECONDS;
        }
        let sounding_end = (first..last).rev().find(|&i| !silent(i)).map_or(last, |i| i + 1);
        if last - sounding_end >= min_run {
            word.end = time_offset + sounding_end as f64 * FRAME_SECONDS;
        }
    }
}
