//! Transcript writers: plain text, SubRip (SRT), WebVTT and JSON.

use crate::transcribe::Transcript;
use anyhow::Result;
use serde::Serialize;
use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Txt,
    Srt,
    Vtt,
    Json,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Txt, Format::Srt, Format::Vtt, Format::Json];

    pub fn extension(self) -> &'static str {
        match self {
            Format::Txt => "txt",
            Format::Srt => "srt",
            Format::Vtt => "vtt",
            Format::Json => "json",
        }
    }
}

/// `HH:MM:SS,mmm` (SRT) or `HH:MM:SS.mmm` (VTT).
pub fn timestamp(seconds: f64, decimal: char) -> String {
    let ms_total = (seconds.max(0.0) * 1000.0).round() as u64;
    let (h, rem) = (ms_total / 3_600_000, ms_total % 3_600_000);
    let (m, rem) = (rem / 60_000, rem % 60_000);
    let (s, ms) = (rem / 1000, rem % 1000);
    format!("{h:02}:{m:02}:{s:02}{decimal}{ms:03}")
}

/// Cue text: trimmed, and with "-->" broken so it cannot end a cue line early.
fn cue_text(text: &str) -> String {
    text.trim().replace("-->", "->")
}

pub fn to_txt(t: &Transcript) -> String {
    let mut out = String::new();
    for seg in &t.segments {
        let _ = writeln!(out, "{}", seg.text.trim());
    }
    out
}

/// How subtitle cues are laid out: one cue per segment, or with a line width (which needs word
/// timestamps) lines of at most that many characters, broken between words, and with a line
/// count at most that many lines per cue, each cue timed by its words. Cues never span two
/// segments.
#[derive(Debug, Clone, Copy, Default)]
pub struct CueLayout {
    pub max_line_width: Option<usize>,
    pub max_line_count: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cue {
    pub start: f64,
    pub end: f64,
    /// Lines separated by `\n`.
    pub text: String,
}

pub fn cues(t: &Transcript, layout: CueLayout) -> Vec<Cue> {
    let mut out = Vec::new();
    for seg in &t.segments {
        match layout.max_line_width {
            Some(width) if !seg.words.is_empty() => lay_out_words(&seg.words, width, layout.max_line_count, &mut out),
            _ => out.push(Cue { start: seg.start, end: seg.end, text: seg.text.trim().to_string() }),
        }
    }
    out
}

/// One segment's words as cues of at most `max_lines` lines of at most `width` characters (a
/// longer word gets a line of its own). A word keeps its leading space inside a line, so
/// languages written without spaces stay unspaced.
fn lay_out_words(words: &[crate::words::Word], width: usize, max_lines: Option<usize>, out: &mut Vec<Cue>) {
    let mut lines: Vec<String> = Vec::new();
    let mut times: Option<(f64, f64)> = None;
    let flush = |lines: &mut Vec<String>, times: &mut Option<(f64, f64)>, out: &mut Vec<Cue>| {
        if let Some((start, end)) = times.take() {
            out.push(Cue { start, end, text: lines.join("\n") });
        }
        lines.clear();
    };
    for word in words {
        let fits = lines.last().is_some_and(|line| line.chars().count() + word.word.chars().count() <= width);
        if fits {
            lines.last_mut().expect("a line").push_str(&word.word);
        } else {
            if max_lines.is_some_and(|n| lines.len() >= n) {
                flush(&mut lines, &mut times, out);
            }
            lines.push(word.word.trim_start().to_string());
        }
        let start = times.map_or(word.start, |(start, _)| start);
        times = Some((start, word.end.max(start)));
    }
    flush(&mut lines, &mut times, out);
}

pub fn to_srt(t: &Transcript, layout: CueLayout) -> String {
    let mut out = String::new();
    for (i, cue) in cues(t, layout).iter().enumerate() {
        let _ = write!(out, "{}\n{} --> {}\n{}\n\n", i + 1, timestamp(cue.start, ','), timestamp(cue.end, ','), cue_text(&cue.text));
    }
    out
}

pub fn to_vtt(t: &Transcript, layout: CueLayout) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for cue in cues(t, layout) {
        let _ = write!(out, "{} --> {}\n{}\n\n", timestamp(cue.start, '.'), timestamp(cue.end, '.'), cue_text(&cue.text));
    }
    out
}

#[derive(Serialize)]
struct JsonSegment<'a> {
    id: usize,
    start: f64,
    end: f64,
    text: &'a str,
    avg_logprob: f64,
    no_speech_prob: f64,
    compression_ratio: f64,
    temperature: f32,
    tokens: &'a [u32],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    words: &'a [crate::words::Word],
}

#[derive(Serialize)]
struct JsonTranscript<'a> {
    file: &'a str,
    model: &'a str,
    language: &'a str,
    duration: f64,
    text: &'a str,
    segments: Vec<JsonSegment<'a>>,
    timings: &'a crate::transcribe::Timings,
    encoder: &'a crate::model::EncodeStats,
}

/// One transcript as an indented JSON document.
pub fn to_json(t: &Transcript, file: &str, model: &str) -> Result<String> {
    Ok(serde_json::to_string_pretty(&json_document(t, file, model))? + "\n")
}

/// One transcript as a single line of JSON: several files printed to stdout one after the
/// other stay readable as JSON Lines (one document per line), where indented documents
/// back to back would not parse as anything.
pub fn to_json_line(t: &Transcript, file: &str, model: &str) -> Result<String> {
    Ok(serde_json::to_string(&json_document(t, file, model))? + "\n")
}

fn json_document<'a>(t: &'a Transcript, file: &'a str, model: &'a str) -> JsonTranscript<'a> {
    JsonTranscript {
        file,
        model,
        language: &t.language,
        duration: t.duration,
        text: &t.text,
        segments: t
            .segments
            .iter()
            .map(|s| JsonSegment {
                id: s.id,
                start: s.start,
                end: s.end,
                text: s.text.trim(),
                avg_logprob: s.avg_logprob,
                no_speech_prob: s.no_speech_prob,
                compression_ratio: s.compression_ratio,
                temperature: s.temperature,
                tokens: &s.tokens,
                words: &s.words,
            })
            .collect(),
        timings: &t.timings,
        encoder: &t.encoder,
    }
}

pub fn render(t: &Transcript, format: Format, file: &str, model: &str, layout: CueLayout) -> Result<String> {
    Ok(match format {
        Format::Txt => to_txt(t),
        Format::Srt => to_srt(t, layout),
        Format::Vtt => to_vtt(t, layout),
        Format::Json => to_json(t, file, model)?,
    })
}
