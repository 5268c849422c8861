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
