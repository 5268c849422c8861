//! Helpers shared by the integration tests: where the real speech and the imported model live.
#![allow(dead_code)]

use coda_asr::model::{resolve_model_dir, WhisperModel};
use std::path::PathBuf;
use std::sync::OnceLock;

/// `../shared/speech` beside the repository (or `$CODA_ASR_SPEECH`).
pub fn speech_dir() -> PathBuf {
    let dir = std::env::var("CODA_ASR_SPEECH")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/speech"));
    assert!(dir.join("dev.tsv").is_file(), "real speech data not found at {} (see README: Tests)", dir.display());
    dir
}

/// Seconds `from_s`..`to_s` of a clip under the speech folder, 16 kHz mono: what a streaming
/// pass hears of it.
pub fn speech_excerpt(relative: &str, from_s: f64, to_s: f64) -> Vec<f32> {
    let audio = coda_asr::audio::load_mono_16k(&speech_dir().join(relative)).unwrap();
    audio[(from_s * 16_000.0) as usize..(to_s * 16_000.0) as usize].to_vec()
}

/// The header and data rows of a manifest under the speech folder, with the wav paths made
/// absolute so that a test can write a manifest of some of the rows anywhere.
pub fn speech_manifest_rows(name: &str) -> (String, Vec<String>) {
    let speech = speech_dir();
    let text = std::fs::read_to_string(speech.join(name)).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_string();
    let rows = lines
        .map(|row| {
            let mut fields: Vec<String> = row.split('\t').map(String::from).collect();
            fields[1] = speech.join(&fields[1]).display().to_string();
            fields.join("\t")
        })
        .collect();
    (header, rows)
}

/// The duration column of a row from [`speech_manifest_rows`].
pub fn row_seconds(row: &str) -> f64 {
    row.split('\t').nth(2).and_then(|d| d.parse().ok()).unwrap_or(f64::INFINITY)
}

pub fn write_manifest(path: &std::path::Path, header: &str, rows: &[String]) {
    std::fs::write(path, format!("{header}\n{}\n", rows.join("\n"))).unwrap();
}

/// The default model, imported by scripts/setup.sh; loaded once per test binary.
pub fn tiny_en() -> &'static WhisperModel {
    static MODEL: OnceLock<WhisperModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = resolve_model_dir("tiny.en").expect("run scripts/setup.sh first to import models/tiny.en");
        WhisperModel::load(&dir, &candle_core::Device::Cpu).expect("tiny.en loads")
    })
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_coda-asr")
}

/// Sine sweeps, the tonal sound the voice gate used to take for a voice: `count` times a
/// second of silence and 5 s of a sine rising linearly from 300 to 3000 Hz at half of full
/// scale, then a second of silence.
pub fn sine_sweeps(count: usize) -> Vec<f32> {
    let (seconds, from, to) = (5.0f64, 300.0f64, 3000.0f64);
    let mut audio = Vec::new();
    for _ in 0..count {
        audio.extend(std::iter::repeat_n(0.0f32, 16_000));
        audio.extend((0..(seconds * 16_000.0) as usize).map(|i| {
            let t = i as f64 / 16_000.0;
            (0.5 * (2.0 * std::f64::consts::PI * (from * t + (to - from) * t * t / (2.0 * seconds))).sin()) as f32
        }));
    }
    audio.extend(std::iter::repeat_n(0.0f32, 16_000));
    audio
}
