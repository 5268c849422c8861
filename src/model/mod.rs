//! The Whisper model: configuration, weights, tokenizer, encoder and decoder.

pub mod config;
pub mod ct2;
pub mod decoder;
pub mod encoder;
pub mod gemv;
pub mod import;
pub mod kernels;
pub mod layers;
pub mod step;
pub mod tokens;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::path::{Path, PathBuf};

pub use config::WhisperConfig;
pub use decoder::{Decoder, DecoderState};
pub use encoder::{EncodeOptions, EncodeStats, Encoder, EncoderBlock};
pub use tokens::WhisperTokenizer;

/// Name of the model that setup imports and every command uses by default.
pub const DEFAULT_MODEL: &str = "tiny.en";

pub struct WhisperModel {
    pub config: WhisperConfig,
    pub encoder: Encoder,
    pub decoder: Decoder,
    /// Single-token decoder for the CPU (None on other devices, which use `decoder`).
    pub step: Option<step::StepDecoder>,
    pub tokenizer: WhisperTokenizer,
    pub device: Device,
    pub dir: PathBuf,
}

/// Resolve `--model`: a directory path, or the name of a model imported under `models/`
/// (looked up in `$CODA_ASR_MODELS`, `./models`, then the source tree's `models/`).
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    let direct = PathBuf::from(spec);
    if direct.join("config.json").is_file() {
        return Ok(direct);
    }
    let mut roots = Vec::new();
    if let Ok(dir) = std::env::var("CODA_ASR_MODELS") {
        roots.push(PathBuf::from(dir));
    }
    roots.push(PathBuf::from("models"));
    roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    for root in &roots {
        let candidate = root.join(spec);
        if candidate.join("config.json").is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "model {spec:?} not found (looked for {spec}/config.json and models/{spec}/config.json); run scripts/setup.sh to import the default model, or pass --model DIR with a Hugging Face Whisper directory"
    )
}

impl WhisperModel {
    /// Load a Hugging Face-layout Whisper directory (config.json, model.safetensors, tokenizer.json).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = WhisperConfig::from_dir(dir)?;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            bail!("{}: no model.safetensors in the model directory", dir.display());
        }
        // SAFETY: the file is memory-mapped read-only and not modified while loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
            .with_context(|| format!("{}: cannot read weights", weights.display()))?;
        let encoder = Encoder::load(vb.pp("model.encoder"), &config).with_context(|| format!("{}: encoder weights", dir.display()))?;
        let decoder = Decoder::load(vb.pp("model.decoder"), &config).with_context(|| format!("{}: decoder weights", dir.display()))?;
        let step = if device.is_cpu() { Some(step::StepDecoder::load(&weights, &config)?) } else { None };
        let tokenizer = WhisperTokenizer::load(&dir.join("tokenizer.json"), config.is_multilingual())?;
        Ok(Self { config, encoder, decoder, step, tokenizer, device: device.clone(), dir: dir.to_path_buf() })
    }

    pub fn name(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}
