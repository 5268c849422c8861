//! The Whisper model: configuration, weights, tokenizer, encoder and decoder.

pub mod baselines;
pub mod coda;
pub mod config;
pub mod ct2;
pub mod decoder;
pub mod encoder;
pub mod gemv;
pub mod import;
pub mod kernels;
pub mod layers;
pub mod silence;
pub mod stem;
pub mod step;
pub mod tokens;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::path::{Path, PathBuf};

pub use config::WhisperConfig;
pub use decoder::{CrossKeyValues, Decoder, DecoderState};
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
    /// Float type of the weights and activations (float32 on the CPU).
    pub dtype: DType,
    pub dir: PathBuf,
    /// Conditional adapters, when loaded; installed in the encoder unless turned off.
    pub coda: Option<coda::CodaWeights>,
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
        Self::load_with(dir, device, DType::F32)
    }

    /// [`WhisperModel::load`] with weights and activations in `dtype` (float16/bfloat16 for GPUs).
    pub fn load_with(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let config = WhisperConfig::from_dir(dir)?;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            bail!("{}: no model.safetensors in the model directory", dir.display());
        }
        // SAFETY: the file is memory-mapped read-only and not modified while loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], dtype, device) }
            .with_context(|| format!("{}: cannot read weights", weights.display()))?;
        let mut encoder = Encoder::load(vb.pp("model.encoder"), &config).with_context(|| format!("{}: encoder weights", dir.display()))?;
        let silence_table = dir.join(silence::FILE_NAME);
        if silence_table.is_file() {
            encoder.silence = silence::SilenceCache::load(&silence_table, config.max_source_positions, config.d_model, device, dtype)?;
        }
        let decoder = Decoder::load(vb.pp("model.decoder"), &config).with_context(|| format!("{}: decoder weights", dir.display()))?;
        let tokenizer = WhisperTokenizer::load(&dir.join("tokenizer.json"), config.is_multilingual())?;
        let step = if device.is_cpu() && dtype == DType::F32 {
            let mut step = step::StepDecoder::load(&weights, &config)?;
            step.quantize_text_rows(tokenizer.eot as usize);
            Some(step)
        } else {
            None
        };
        Ok(Self { config, encoder, decoder, step, tokenizer, device: device.clone(), dtype, dir: dir.to_path_buf(), coda: None })
    }

    /// sha256 identifying the weights, recorded with adapters so they never run on another
    /// model: the source `model.bin`'s for imported models (the safetensors file written by the
    /// import is not byte-stable across runs), else the safetensors file's own.
    pub fn weights_sha256(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(self.dir.join("config.json"))?)?;
        if let Some(sha) = config.pointer("/imported_from/model_bin_sha256").and_then(|v| v.as_str()) {
            return Ok(sha.to_string());
        }
        let path = self.dir.join("model.safetensors");
        let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Load adapters from `dir` (coda.json + adapters.safetensors), check that they were trained
    /// on this model, and install them in the encoder.
    pub fn attach_coda(&mut self, dir: &Path) -> Result<()> {
        let weights = coda::CodaWeights::load(dir, &self.device)?;
        let sha = self.weights_sha256()?;
        if weights.config.base_model_sha256 != sha {
            bail!(
                "{}: adapters were trained on a model with sha256 {}, not {} ({})",
                dir.display(),
                weights.config.base_model_sha256,
                self.dir.display(),
                sha
            );
        }
        self.install_coda(weights)
    }

    pub fn install_coda(&mut self, weights: coda::CodaWeights) -> Result<()> {
        let layers = weights.layers(&self.encoder.dense_layers, false)?;
        self.encoder.install(layers.into_iter().map(|(i, l)| (i, std::sync::Arc::new(l) as std::sync::Arc<dyn EncoderBlock>)).collect());
        self.coda = Some(weights);
        Ok(())
    }

    /// Where the default adapters for this model live, if shipped: `models/coda-<name>/`.
    pub fn default_coda_dir(&self) -> Option<PathBuf> {
        let name = format!("coda-{}", self.name());
        let candidates = [self.dir.parent().map(|p| p.join(&name)), Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(&name))];
        candidates.into_iter().flatten().find(|d| d.join("coda.json").is_file())
    }

    pub fn name(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}
