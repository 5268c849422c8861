//! Whisper's tokenizer and the special tokens that steer decoding.

use anyhow::{anyhow, Context, Result};
use std::path::Path;
use tokenizers::Tokenizer;

pub struct WhisperTokenizer {
    inner: Tokenizer,
    pub eot: u32,
    pub sot: u32,
    pub sot_prev: u32,
    pub sot_lm: Option<u32>,
    pub transcribe: u32,
    pub translate: u32,
    pub no_timestamps: u32,
    pub no_speech: Option<u32>,
    /// First timestamp token (<|0.00|>); timestamps step by 0.02 s.
    pub timestamp_begin: u32,
    /// Language codes and their tokens, in the model's order (empty for English-only models).
    pub languages: Vec<(String, u32)>,
}

impl WhisperTokenizer {
    pub fn load(path: &Path, multilingual: bool) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        let id = |name: &str| inner.token_to_id(name);
        let need = |name: &str| id(name).with_context(|| format!("{}: tokenizer has no {name}", path.display()));
        let sot = need("<|startoftranscript|>")?;
        let translate = need("<|translate|>")?;
        let no_timestamps = need("<|notimestamps|>")?;
        let languages = if multilingual {
            (sot + 1..translate)
                .filter_map(|i| inner.id_to_token(i).map(|t| (t.trim_start_matches("<|").trim_end_matches("|>").to_string(), i)))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            eot: need("<|endoftext|>")?,
            sot,
            sot_prev: need("<|startofprev|>")?,
            sot_lm: id("<|startoflm|>"),
            transcribe: need("<|transcribe|>")?,
            translate,
            no_timestamps,
            no_speech: id("<|nospeech|>").or_else(|| id("<|nocaptions|>")),
            timestamp_begin: id("<|0.00|>").unwrap_or(no_timestamps + 1),
            languages,
            inner,
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("cannot tokenize prompt: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of the given tokens; special and timestamp tokens are dropped.
    pub fn decode_text(&self, tokens: &[u32]) -> Result<String> {
        let text: Vec<u32> = tokens.iter().copied().filter(|&t| t < self.eot).collect();
        self.inner.decode(&text, true).map_err(|e| anyhow!("cannot decode tokens: {e}"))
    }

    pub fn language_token(&self, code: &str) -> Option<u32> {
        self.languages.iter().find(|(c, _)| c == code).map(|(_, t)| *t)
    }

    pub fn is_timestamp(&self, token: u32) -> bool {
        token >= self.timestamp_begin
    }
}
