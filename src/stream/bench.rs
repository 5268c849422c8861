//! Streaming benchmark: replay long recordings through the live path at real-time pace and
//! measure what a user feels — latency from the end of each reference utterance to its words
//! being final, time to the first partial, streaming WER against batch WER, compute / audio,
//! and resident memory over the run.

use super::recognizer::{run_recognizer, Event, StreamOptions};
use super::source::{start_replay, start_resampler};
use crate::transcribe::Transcriber;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Replay one file, after `leading_silence_s` of silence, through capture → resample →
/// recogniser and collect every event.
pub fn replay_file(t: &Transcriber, path: &Path, leading_silence_s: f64, speed: f64, mut opts: StreamOptions) -> Result<Vec<Event>> {
    opts.speed = speed;
    let stop = Arc::new(AtomicBool::new(false));
    let mut decoded = crate::audio::decode_file(path)?;
    let silence = (leading_silence_s * decoded.sample_rate as f64).round() as usize * decoded.channels;
    decoded.samples.splice(0..0, std::iter::repeat_n(0.0, silence));
    let (replay, queue) = start_replay(decoded, speed, stop)?;
    let (audio_tx, audio_rx) = crossbeam_channel::unbounded();
    let resampler = start_resampler(queue.clone(), audio_tx)?;
    let (_control_tx, control_rx) = crossbeam_channel::unbounded();
    let (event_tx, event_rx) = crossbeam_channel::unbounded();
    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    run_recognizer(t, audio_rx, control_rx, event_tx, opts, dropped)?;
    let _ = replay.join();
    let _ = resampler.join();
    Ok(event_rx.try_iter().collect())
}

#[derive(Debug, Clone, Deserialize)]
pub struct Utterance {
    pub id: String,
    pub start_s: f64,
    pub end_s: f64,
    pub reference: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    pub file: String,
    pub audio_s: f64,
    /// Per utterance: when the last of its words became final, minus its end (seconds; see
    /// [`utterance_latencies`]).
    pub latencies_s: Vec<f64>,
    /// Where speech starts in the file ([`speech_onset_s`]).
    pub speech_onset_s: f64,
    pub first_partial_after_speech_s: Option<f64>,
    pub streaming_wer: f64,
    pub finals: String,
    /// Every final event: when it was emitted (stream seconds) and its text, for a closer look.
    pub final_events: Vec<(f64, String)>,
    pub compute_over_audio: f64,
    pub mean_reduction: f64,
    pub dropped_samples: u64,
    pub rss_start_mb: f64,
    pub rss_end_mb: f64,
}

/// Resident memory of this process, MB (Linux).
pub fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<f64>().ok()))
        .map_or(0.0, |pages| pages * 4096.0 / 1e6)
}

/// Mean and (population) standard deviation; zeros for no values.
pub fn mean_and_sd(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    (mean, (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt())
}

pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let idx = ((v.len() - 1) as f64 * p).round() as usize;
    v[idx]
}

/// When speech starts in a recording, seconds: the first 10 ms frame within 35 dB of the
/// loudest one. A reference utterance's start time is where its clip began, which for
/// LibriSpeech is up to half a second of room tone before the first word; the time to the
/// first partial is measured from the speech itself. (Independent of the live voice gate,
/// which decides from the past only.)
pub fn speech_onset_s(audio: &[f32]) -> f64 {
    const FRAME: usize = 160;
    let levels: Vec<f64> = audio
        .chunks(FRAME)
        .map(|f| 10.0 * (f.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / f.len() as f64 + 1e-12).log10())
        .collect();
    let loudest = levels.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    levels.iter().position(|&l| l >= loudest - 35.0).map_or(0.0, |i| (i * FRAME) as f64 / 16_000.0)
}

/// Score one replay against its reference utterances; `speech_onset` from [`speech_onset_s`].
pub fn score_replay(file: &str, events: &[Event], utterances: &[Utterance], speech_onset: f64, rss_start_mb: f64) -> ReplayReport {
    let finals: Vec<(f64, &str)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Final { text, emitted_at, .. } => Some((*emitted_at, text.as_str())),
            _ => None,
        })
        .collect();
    let latencies_s = utterance_latencies(&finals, utterances);
    let first_partial = events.iter().find_map(|e| match e {
        Event::Partial { text, emitted_at, .. } if !text.is_empty() => Some((emitted_at - speech_onset).max(0.0)),
        _ => None,
    });
    let text: String = finals.iter().map(|f| f.1).collect::<Vec<_>>().join(" ");
    let reference: String = utterances.iter().map(|u| u.reference.as_str()).collect::<Vec<_>>().join(" ");
    let stats: Vec<&super::StreamStats> = events.iter().filter_map(|e| if let Event::Stats(s) = e { Some(s) } else { None }).collect();
    let last = stats.last();
    let computing: Vec<&&super::StreamStats> = stats.iter().filter(|s| s.step_compute_ms > 0.0).collect();
    ReplayReport {
        file: file.to_string(),
        audio_s: last.map_or(0.0, |s| s.audio_s),
        latencies_s,
        speech_onset_s: speech_onset,
        first_partial_after_speech_s: first_partial,
        streaming_wer: crate::eval::score(&reference, &text).wer(),
        finals: text,
        final_events: finals.iter().map(|(at, text)| (*at, text.to_string())).collect(),
        compute_over_audio: last.map_or(0.0, |s| s.compute_total_s / s.audio_s.max(1e-9)),
        mean_reduction: if computing.is_empty() {
            1.0
        } else {
            computing.iter().map(|s| s.reduction).sum::<f64>() / computing.len() as f64
        },
        dropped_samples: last.map_or(0, |s| s.dropped_samples),
        rss_start_mb,
        rss_end_mb: rss_mb(),
    }
}

/// For each reference utterance, seconds from its end to the moment the last of its words
/// became final. Final words are aligned with the reference words (both normalised as for
/// WER), so which final event holds an utterance's last word does not rest on the
/// recogniser's own word-time estimates, which can be seconds off inside a long segment. An
/// utterance none of whose words were recognised has no latency.
pub fn utterance_latencies(finals: &[(f64, &str)], utterances: &[Utterance]) -> Vec<f64> {
    let (hypothesis, emitted_at) = normalised_words(finals.iter().map(|(at, text)| (*at, *text)));
    let (reference, utterance_of) = normalised_words(utterances.iter().enumerate().map(|(u, utt)| (u, utt.reference.as_str())));
    let (r, h): (Vec<&str>, Vec<&str>) = (reference.iter().map(String::as_str).collect(), hypothesis.iter().map(String::as_str).collect());
    let mut final_at: Vec<Option<f64>> = vec![None; utterances.len()];
    for pair in crate::eval::wer::align(&r, &h) {
        if let (Some(i), Some(j)) = pair {
            let at = &mut final_at[utterance_of[i]];
            *at = Some(at.map_or(emitted_at[j], |a: f64| a.max(emitted_at[j])));
        }
    }
    final_at.iter().zip(utterances).filter_map(|(at, u)| at.map(|at| (at - u.end_s).max(0.0))).collect()
}

/// The words of several texts, normalised as for WER, each with its text's tag.
fn normalised_words<'t, T: Copy>(texts: impl Iterator<Item = (T, &'t str)>) -> (Vec<String>, Vec<T>) {
    let mut words = Vec::new();
    let mut tags = Vec::new();
    for (tag, text) in texts {
        for w in crate::eval::normalize::normalize(text).split_whitespace() {
            words.push(w.to_string());
            tags.push(tag);
        }
    }
    (words, tags)
}

pub fn read_segments(path: &Path) -> Result<std::collections::HashMap<String, Vec<Utterance>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a segments file", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utterance(reference: &str, end_s: f64) -> Utterance {
        Utterance { id: String::new(), start_s: 0.0, end_s, reference: reference.into() }
    }

    #[test]
    fn an_utterance_is_final_when_its_last_aligned_word_is() {
        let utterances = [utterance("REPLIED HE OF A TRUTH", 3.0), utterance("BUT SHE SAID", 6.0)];
        // The second utterance's last word is misheard and comes in the same final as the
        // first word of a third; the first utterance's last word arrives with "But".
        let finals = [(2.0, "Replied he, of a"), (4.5, "truth. But"), (7.2, "she sad. Then")];
        let latencies = utterance_latencies(&finals, &utterances);
        assert_eq!(latencies.len(), 2);
        assert!((latencies[0] - 1.5).abs() < 1e-9, "{latencies:?}");
        assert!((latencies[1] - 1.2).abs() < 1e-9, "{latencies:?}");
        // Nothing recognised of an utterance: no latency for it.
        assert_eq!(utterance_latencies(&[(1.0, "replied he of a truth")], &utterances).len(), 1);
    }

    #[test]
    fn speech_onset_is_where_the_audio_gets_loud_not_where_the_clip_starts() {
        // Half a second of room tone (−80 dBFS), then a vowel-like tone at −20 dBFS.
        let mut audio: Vec<f32> = (0..8000).map(|i| 1e-4 * ((i * 7919 % 200) as f32 / 100.0 - 1.0)).collect();
        audio.extend((0..16_000).map(|i| 0.1 * (i as f32 * 2.0 * std::f32::consts::PI * 220.0 / 16_000.0).sin()));
        assert!((speech_onset_s(&audio) - 0.5).abs() < 0.011);
    }
}
