//! The evaluation harness: manifests, normalised WER, wall time per stage, RTF and encoder
//! cost, written as JSON and Markdown so runs can be compared side by side.

pub mod normalize;
pub mod wer;

use crate::transcribe::{Timings, TranscribeOptions, Transcriber};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;
pub use wer::{score, ErrorCounts};

/// One row of a manifest (tab-separated, header line, columns `id`, `wav`, `duration_s`,
/// `reference`, ...; `wav` is relative to the manifest's folder).
#[derive(Debug, Clone)]
pub struct ManifestEntry {
    pub id: String,
    pub wav: PathBuf,
    pub duration_s: f64,
    pub reference: String,
}

pub fn read_manifest(path: &Path) -> Result<Vec<ManifestEntry>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read manifest", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().with_context(|| format!("{}: empty manifest", path.display()))?.split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(id_col), Some(wav_col), Some(ref_col)) = (col("id"), col("wav"), col("reference")) else {
        bail!("{}: manifest header must name the columns id, wav and reference (got {:?})", path.display(), header);
    };
    let dur_col = col("duration_s");
    let mut entries = Vec::new();
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let get = |c: usize| fields.get(c).copied().with_context(|| format!("{}: line {} has too few columns", path.display(), n + 2));
        entries.push(ManifestEntry {
            id: get(id_col)?.to_string(),
            wav: base.join(get(wav_col)?),
            duration_s: dur_col.and_then(|c| fields.get(c)).and_then(|d| d.parse().ok()).unwrap_or(0.0),
            reference: get(ref_col)?.to_string(),
        });
    }
    Ok(entries)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClipResult {
    pub id: String,
    pub reference: String,
    pub hypothesis: String,
    pub counts: ErrorCounts,
    pub wer: f64,
    pub audio_s: f64,
    pub wall_ms: f64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EvalSummary {
    pub label: String,
    pub model: String,
    pub manifest: String,
    pub clips: usize,
    pub failed: usize,
    pub wer: f64,
    pub counts: ErrorCounts,
    pub audio_s: f64,
    pub wall_s: f64,
    pub rtf: f64,
    pub load_ms: f64,
    pub mel_ms: f64,
    pub encoder_ms: f64,
    pub decoder_ms: f64,
    pub windows: usize,
    /// Windows decided again: (r > 1) doubtful no-speech tests by the dense encoder with
    /// silence caching, then, still in doubt, by whole windows; and (r > 1) decodings that
    /// skipped speech. Older reports lack some.
    #[serde(default)]
    pub dense_rechecks: usize,
    #[serde(default)]
    pub whole_window_rechecks: usize,
    #[serde(default)]
    pub dense_redecodes: usize,
    /// Prompted windows decoded again without the prompt (read as far too few words).
    #[serde(default)]
    pub unprompted_retries: usize,
    pub tokens: usize,
    pub encoder_ms_per_window: f64,
    pub decoder_ms_per_token: f64,
    pub encoder_gflop: f64,
    pub encoder_dense_gflop: f64,
    /// Fraction of frames through each layer's heavy branch.
    pub heavy_fraction: Vec<f64>,
    pub reduction: f64,
    /// Beams at temperature 0 (1: greedy) and samples per fallback temperature. Older reports
    /// lack them and read as greedy, which all but a few of session 34's were.
    #[serde(default = "one")]
    pub beam_size: usize,
    #[serde(default = "one")]
    pub best_of: usize,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub summary: EvalSummary,
    pub clips: Vec<ClipResult>,
}

/// Transcribe every clip of a manifest and score it. A clip that fails to load is reported
/// and counted as all deletions; the others go on.
pub fn run(
    transcriber: &Transcriber,
    entries: &[ManifestEntry],
    opts: &TranscribeOptions,
    label: &str,
    manifest: &str,
    progress: &mut dyn FnMut(usize, &ClipResult),
) -> Result<EvalReport> {
    let start = Instant::now();
    let mut clips = Vec::new();
    let mut total = ErrorCounts::default();
    let mut timings = Timings::default();
    let mut frames = 0usize;
    let mut heavy: Vec<usize> = Vec::new();
    let (mut gflop, mut dense_gflop) = (0.0, 0.0);
    let mut load_ms = 0.0;
    let mut audio_s = 0.0;
    let mut failed = 0;
    for (i, entry) in entries.iter().enumerate() {
        let clip_start = Instant::now();
        let result = (|| -> Result<(String, f64, crate::transcribe::Transcript, f64)> {
            let t = Instant::now();
            let audio = crate::audio::load_mono_16k(&entry.wav)?;
            let load = t.elapsed().as_secs_f64() * 1e3;
            let dur = audio.len() as f64 / crate::mel::SAMPLE_RATE as f64;
            let tr = transcriber.transcribe(&audio, opts, &mut |_| {})?;
            Ok((tr.text.clone(), dur, tr, load))
        })();
        let clip = match result {
            Ok((text, dur, tr, load)) => {
                load_ms += load;
                audio_s += dur;
                timings.add(&tr.timings);
                frames += tr.encoder.frames;
                if heavy.len() < tr.encoder.heavy_frames.len() {
                    heavy.resize(tr.encoder.heavy_frames.len(), 0);
                }
                for (h, x) in heavy.iter_mut().zip(&tr.encoder.heavy_frames) {
                    *h += x;
                }
                gflop += tr.encoder.flops / 1e9;
                dense_gflop += tr.encoder.dense_flops / 1e9;
                let counts = score(&entry.reference, &text);
                ClipResult {
                    id: entry.id.clone(),
                    reference: entry.reference.clone(),
                    hypothesis: text,
                    wer: counts.wer(),
                    counts,
                    audio_s: dur,
                    wall_ms: clip_start.elapsed().as_secs_f64() * 1e3,
                    error: None,
                }
            }
            Err(e) => {
                failed += 1;
                let counts = score(&entry.reference, "");
                ClipResult {
                    id: entry.id.clone(),
                    reference: entry.reference.clone(),
                    hypothesis: String::new(),
                    wer: counts.wer(),
                    counts,
                    audio_s: entry.duration_s,
                    wall_ms: clip_start.elapsed().as_secs_f64() * 1e3,
                    error: Some(format!("{e:#}")),
                }
            }
        };
        total.add(&clip.counts);
        progress(i, &clip);
        clips.push(clip);
    }
    let wall_s = start.elapsed().as_secs_f64();
    let summary = EvalSummary {
        label: label.to_string(),
        model: transcriber.model.name(),
        manifest: manifest.to_string(),
        clips: clips.len(),
        failed,
        wer: total.wer(),
        counts: total,
        audio_s,
        wall_s,
        rtf: if audio_s > 0.0 { wall_s / audio_s } else { 0.0 },
        load_ms,
        mel_ms: timings.mel_ms,
        encoder_ms: timings.encoder_ms,
        decoder_ms: timings.decoder_ms,
        windows: timings.windows,
        dense_rechecks: timings.dense_rechecks,
        whole_window_rechecks: timings.whole_window_rechecks,
        dense_redecodes: timings.dense_redecodes,
        unprompted_retries: timings.unprompted_retries,
        tokens: timings.tokens,
        encoder_ms_per_window: timings.encoder_ms / timings.windows.max(1) as f64,
        decoder_ms_per_token: timings.decoder_ms / timings.tokens.max(1) as f64,
        encoder_gflop: gflop,
        encoder_dense_gflop: dense_gflop,
        heavy_fraction: heavy.iter().map(|&h| h as f64 / frames.max(1) as f64).collect(),
        reduction: opts.encode.reduction,
        beam_size: opts.beam_size.max(1),
        best_of: opts.best_of.max(1),
    };
    Ok(EvalReport { summary, clips })
}

fn fmt_fractions(v: &[f64]) -> String {
    v.iter().map(|f| format!("{:.0}", f * 100.0)).collect::<Vec<_>>().join("/")
}

/// Rows of (metric, formatter) shared by the single-run table and the comparison.
fn metric_rows() -> Vec<(&'static str, fn(&EvalSummary) -> String)> {
    vec![
        ("model", |s| s.model.clone()),
        ("reduction r", |s| format!("{}", s.reduction)),
        ("search", |s| match (s.beam_size, s.best_of) {
            (1, 1) => "greedy".to_string(),
            (1, n) => format!("greedy, best of {n} when sampling"),
            (b, 1) => format!("{b} beams"),
            (b, n) => format!("{b} beams, best of {n} when sampling"),
        }),
        ("clips (failed)", |s| format!("{} ({})", s.clips, s.failed)),
        ("WER %", |s| format!("{:.2}", s.wer)),
        ("sub / ins / del", |s| format!("{} / {} / {}", s.counts.substitutions, s.counts.insertions, s.counts.deletions)),
        ("reference words", |s| s.counts.reference_words.to_string()),
        ("audio s", |s| format!("{:.1}", s.audio_s)),
        ("wall s", |s| format!("{:.2}", s.wall_s)),
        ("RTF", |s| format!("{:.4}", s.rtf)),
        ("audio load ms", |s| format!("{:.0}", s.load_ms)),
        ("mel ms", |s| format!("{:.0}", s.mel_ms)),
        ("encoder ms", |s| format!("{:.0}", s.encoder_ms)),
        ("decoder ms", |s| format!("{:.0}", s.decoder_ms)),
        ("encoder ms / 30 s window", |s| format!("{:.1}", s.encoder_ms_per_window)),
        ("decoder ms / token", |s| format!("{:.2}", s.decoder_ms_per_token)),
        ("windows / tokens", |s| format!("{} / {}", s.windows, s.tokens)),
        ("windows rechecked dense / whole; re-decoded dense", |s| {
            format!("{} / {}; {}", s.dense_rechecks, s.whole_window_rechecks, s.dense_redecodes)
        }),
        ("windows retried without the prompt", |s| s.unprompted_retries.to_string()),
        ("encoder GFLOP run (dense)", |s| format!("{:.1} ({:.1})", s.encoder_gflop, s.encoder_dense_gflop)),
        ("heavy frames % per layer", |s| fmt_fractions(&s.heavy_fraction)),
    ]
}

pub fn markdown(report: &EvalReport) -> String {
    let s = &report.summary;
    let mut out = format!("## {} on {}\n\n| metric | value |\n| --- | --- |\n", s.label, s.manifest);
    for (name, f) in metric_rows() {
        let _ = writeln!(out, "| {name} | {} |", f(s));
    }
    out.push_str("\n| clip | WER % | words | audio s | wall ms | hypothesis |\n| --- | ---: | ---: | ---: | ---: | --- |\n");
    for c in &report.clips {
        let hyp = c.error.as_deref().map(|e| format!("ERROR: {e}")).unwrap_or_else(|| c.hypothesis.clone());
        let _ = writeln!(
            out,
            "| {} | {:.1} | {} | {:.1} | {:.0} | {} |",
            c.id,
            c.wer,
            c.counts.reference_words,
            c.audio_s,
            c.wall_ms,
            hyp.replace('|', "\\|")
        );
    }
    out
}

pub fn compare_markdown(reports: &[EvalSummary]) -> String {
    let mut out = String::from("| metric |");
    for r in reports {
        let _ = write!(out, " {} |", r.label);
    }
    out.push_str("\n| --- |");
    out.push_str(&" --- |".repeat(reports.len()));
    out.push('\n');
    for (name, f) in metric_rows() {
        let _ = write!(out, "| {name} |");
        for r in reports {
            let _ = write!(out, " {} |", f(r));
        }
        out.push('\n');
    }
    out
}

pub fn load_report(path: &Path) -> Result<EvalReport> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not an eval report", path.display()))
}
