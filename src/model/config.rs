//! Whisper hyper-parameters as stored in a Hugging Face `config.json`.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
pub struct WhisperConfig {
    pub d_model: usize,
    pub encoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_layers: usize,
    pub decoder_attention_heads: usize,
    #[serde(default = "default_mels")]
    pub num_mel_bins: usize,
    #[serde(default = "default_audio_ctx")]
    pub max_source_positions: usize,
    #[serde(default = "default_text_ctx")]
    pub max_target_positions: usize,
    pub vocab_size: usize,
    #[serde(default)]
    pub encoder_ffn_dim: Option<usize>,
    #[serde(default)]
    pub decoder_ffn_dim: Option<usize>,
    #[serde(default)]
    pub suppress_tokens: Vec<i64>,
    #[serde(default)]
    pub begin_suppress_tokens: Vec<i64>,
    /// Decoder cross-attention heads (layer, head) that follow the audio in time, for word
    /// timestamps (openai/whisper's per-model lists; CTranslate2 and Hugging Face keep them).
    #[serde(default)]
    pub alignment_heads: Vec<(usize, usize)>,
}

fn default_mels() -> usize {
    80
}
fn default_audio_ctx() -> usize {
    1500
}
fn default_text_ctx() -> usize {
    448
}

#[derive(Deserialize, Default)]
struct GenerationConfig {
    #[serde(default)]
    suppress_tokens: Option<Vec<i64>>,
    #[serde(default)]
    begin_suppress_tokens: Option<Vec<i64>>,
    #[serde(default)]
    alignment_heads: Option<Vec<(usize, usize)>>,
}

impl WhisperConfig {
    /// Read `config.json`, taking the suppression lists from `generation_config.json` when the
    /// config itself has none (newer Hugging Face exports keep them there).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let mut config: WhisperConfig = serde_json::from_str(&text).with_context(|| format!("{}: not a Whisper config", path.display()))?;
        let gen_path = dir.join("generation_config.json");
        if let Ok(text) = std::fs::read_to_string(&gen_path) {
            let gen: GenerationConfig = serde_json::from_str(&text).unwrap_or_default();
            if config.suppress_tokens.is_empty() {
                config.suppress_tokens = gen.suppress_tokens.unwrap_or_default();
            }
            if config.begin_suppress_tokens.is_empty() {
                config.begin_suppress_tokens = gen.begin_suppress_tokens.unwrap_or_default();
            }
            if config.alignment_heads.is_empty() {
                config.alignment_heads = gen.alignment_heads.unwrap_or_default();
            }
        }
        Ok(config)
    }

    pub fn encoder_ffn(&self) -> usize {
        self.encoder_ffn_dim.unwrap_or(4 * self.d_model)
    }

    pub fn decoder_ffn(&self) -> usize {
        self.decoder_ffn_dim.unwrap_or(4 * self.d_model)
    }

    /// The alignment heads, or where the model names none every head of the decoder's second
    /// half (openai/whisper's default).
    pub fn word_alignment_heads(&self) -> Vec<(usize, usize)> {
        let valid = |&(layer, head): &(usize, usize)| layer < self.decoder_layers && head < self.decoder_attention_heads;
        if !self.alignment_heads.is_empty() && self.alignment_heads.iter().all(valid) {
            return self.alignment_heads.clone();
        }
        (self.decoder_layers / 2..self.decoder_layers).flat_map(|l| (0..self.decoder_attention_heads).map(move |h| (l, h))).collect()
    }

    pub fn is_multilingual(&self) -> bool {
        self.vocab_size >= 51865
    }
}
