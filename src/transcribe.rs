//! Long-form transcription as openai/whisper does it: 30-second windows, greedy decoding with
//! timestamps, seeking to the last complete timestamp, temperature fallback on repetitive or
//! unlikely output, no-speech skipping and conditioning on the previous text.

use crate::mel::{LogMel, MelFrontend, CHUNK_FRAMES, CHUNK_SAMPLES, HOP_LENGTH, SAMPLE_RATE};
use crate::model::decoder::CrossKeyValues;
use crate::model::kernels::{largest, logsumexp};
use crate::model::step::StepState;
use crate::model::{silence, DecoderState, EncodeOptions, EncodeStats, WhisperModel};
use crate::rng::Rng;
use crate::stream::vad::{has_voiced_frames, voiced_seconds};
use crate::words::{self, Word};
use anyhow::{bail, Result};
use candle_core::{DType, IndexOp, Tensor};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

/// Seconds per timestamp token step (<|0.00|>, <|0.02|>, ...).
const TIME_PRECISION: f64 = 0.02;
/// Mel frames per encoder frame (the conv stem has stride 2).
const INPUT_STRIDE: usize = 2;
/// With silence caching, this much of the padding after the audio (mel frames, 10 ms each) is
/// encoded with it, so the last words see the silence that follows them as in the dense model.
pub const SILENCE_MARGIN_FRAMES: usize = 100;
/// A window encoded at r > 1 is decoded again with the dense encoder when one of its segments
/// runs longer than this (seconds) at more than [`SPARSE_SECONDS_PER_WORD`]: the decoder then
/// jumped over speech the reduced encoding lost (one CoDA r = 4 window read 29.6 s of speech as
/// 16 words). On the tuning long files no dense segment came close (the longest at over a
/// second per word: 6.5 s).
const SPARSE_SEGMENT_SECONDS: f64 = 10.0;
const SPARSE_SECONDS_PER_WORD: f64 = 1.0;
/// A prompted window read as fewer words than one per this many seconds of its voiced sound
/// (see [`crate::stream::vad::voiced_seconds`]) is decoded again without the prompt. Voiced
/// frames are about half of speech, and read speech runs at 2–3 words a second, so this is
/// ten times fewer words than speech has; a word and a long silence stay well above it.
const VOICED_SECONDS_PER_WORD_AT_LEAST: f64 = 2.0;

/// Mel frames of a window that silence caching encodes when `audio_frames` hold audio: the
/// audio and its margin, rounded up to even (the stem has stride 2).
pub fn encoded_block_frames(audio_frames: usize) -> usize {
    (audio_frames + SILENCE_MARGIN_FRAMES).next_multiple_of(2).clamp(2, CHUNK_FRAMES)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Transcribe,
    Translate,
}

#[derive(Debug, Clone)]
pub struct TranscribeOptions {
    /// Language code; None detects it on the first window (multilingual models only).
    pub language: Option<String>,
    pub task: Task,
    /// Tried in order until the output passes the checks below.
    pub temperatures: Vec<f32>,
    pub compression_ratio_threshold: Option<f32>,
    pub logprob_threshold: Option<f32>,
    pub no_speech_threshold: Option<f32>,
    pub condition_on_previous_text: bool,
    pub initial_prompt: Option<String>,
    pub without_timestamps: bool,
    /// The first timestamp may not be later than this (seconds).
    pub max_initial_timestamp: f32,
    pub encode: EncodeOptions,
    pub seed: u64,
    /// Baseline (whisper.cpp's audio_ctx): encode only the mel frames that hold audio instead
    /// of a padded 30 s window, with a length guard on decoding (such windows often never end).
    pub audio_ctx: bool,
    /// Encode only the audio part of a window (plus a margin) and take the padding frames from
    /// the encoder's silence cache (see [`crate::model::silence`]).
    pub silence_cache: bool,
    /// Tokens the first window's greedy decode is expected to start with (a streaming step's
    /// previous hypothesis of the same audio). They are checked in one batched decoder pass
    /// and kept as far as greedy decoding picks them, so the output is the same as without a
    /// draft; only the part that changed is decoded token by token.
    pub draft: Vec<u32>,
    /// Stop decoding a window after 10 + this many tokens per second of its audio, and mark
    /// the transcript [`Transcript::hit_token_limit`] (read speech takes 3–4 tokens a second
    /// with timestamps). A short streaming buffer that sends greedy decoding into a loop
    /// otherwise runs to 224 tokens, a second or more of compute, before anyone can reject it.
    pub max_tokens_per_second: Option<f64>,
    /// With a reduced encoder (r > 1), windows whose no-speech test is in doubt or whose
    /// decoding skipped speech are decided by the dense encoder. Off for the training-free
    /// baselines, which are measured as they are, and for streaming, whose passes must cost
    /// what their r says.
    pub dense_rescue: bool,
    /// A window encoded approximately (silence caching, CoDA) whose no-speech test is in doubt
    /// is decoded again from the whole window, densely, as openai/whisper would encode it.
    /// That costs a full 30 s encode; streaming skips it on an utterance's first passes.
    pub whole_window_recheck: bool,
    /// A window with fewer than [`crate::stream::vad::MIN_VOICED_FRAMES`] voiced frames is
    /// skipped as silence without being decoded: Whisper's no-speech tests let bursts of noise
    /// through as "you" or "I'm going to go to the next one." (see [`crate::stream::vad`]).
    pub skip_unvoiced_windows: bool,
    /// A prompted window read as far fewer words than its voiced sound holds is decoded again
    /// without the prompt (see [`VOICED_SECONDS_PER_WORD_AT_LEAST`]). Streaming has its own
    /// retry, on the pass as a whole.
    pub unprompted_retry: bool,
    /// Time each word of every segment (see [`crate::words`]): one more teacher-forced decoder
    /// pass per window.
    pub word_timestamps: bool,
    /// With `word_timestamps`, also each word's mean token probability. It takes the
    /// vocabulary projection at every text token, which costs more than the alignment itself;
    /// streaming needs only the times.
    pub word_probabilities: bool,
    /// Beams searched at temperature 0 (1: greedy). Higher temperatures of the fallback
    /// sample one sequence, as before.
    pub beam_size: usize,
    /// Samples drawn at each temperature of the fallback above 0, the one with the highest
    /// average log-probability kept (1: one sample).
    pub best_of: usize,
}

impl TranscribeOptions {
    /// Either of Whisper's no-speech tests fails on a decode with these scores: no-speech
    /// likely, or the text unlikely.
    pub fn doubts(&self, no_speech_prob: f64, avg_logprob: f64) -> bool {
        self.no_speech_threshold.is_some_and(|t| no_speech_prob > t as f64)
            || self.logprob_threshold.is_some_and(|lp| avg_logprob < lp as f64)
    }
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        Self {
            language: None,
            task: Task::Transcribe,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            compression_ratio_threshold: Some(2.4),
            logprob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
            condition_on_previous_text: true,
            initial_prompt: None,
            without_timestamps: false,
            max_initial_timestamp: 1.0,
            encode: EncodeOptions::default(),
            seed: 0,
            audio_ctx: false,
            silence_cache: true,
            max_tokens_per_second: None,
            dense_rescue: true,
            whole_window_recheck: true,
            skip_unvoiced_windows: true,
            unprompted_retry: true,
            word_timestamps: false,
            word_probabilities: true,
            beam_size: 1,
            best_of: 1,
            draft: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    pub id: usize,
    pub start: f64,
    pub end: f64,
    pub text: String,
    pub tokens: Vec<u32>,
    pub temperature: f32,
    pub avg_logprob: f64,
    pub compression_ratio: f64,
    pub no_speech_prob: f64,
    /// Each word and its time, with `--word-timestamps`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<Word>,
}

/// Wall time per stage, in milliseconds, and the tokens decoded (fallback retries included).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub mel_ms: f64,
    pub encoder_ms: f64,
    pub decoder_ms: f64,
    pub tokens: usize,
    pub windows: usize,
    /// Windows encoded at r > 1 whose no-speech decision was in doubt and were decoded again
    /// from the dense encoder with silence caching (the dense rescue's first recheck).
    pub dense_rechecks: usize,
    /// Windows whose silence-cached or reduced (r > 1) encoding left the no-speech decision in
    /// doubt and were encoded again whole; with the dense rescue, dense and only when the dense
    /// recheck was in doubt too.
    pub whole_window_rechecks: usize,
    /// Windows encoded at r > 1 whose decoding skipped speech (a long segment with few words)
    /// and were decoded again with the dense encoder.
    pub dense_redecodes: usize,
    /// Prompted windows read as far fewer words than their voiced sound holds and decoded
    /// again without the prompt (see [`VOICED_SECONDS_PER_WORD_AT_LEAST`]).
    pub unprompted_retries: usize,
}

impl Timings {
    pub fn add(&mut self, other: &Timings) {
        self.mel_ms += other.mel_ms;
        self.encoder_ms += other.encoder_ms;
        self.decoder_ms += other.decoder_ms;
        self.tokens += other.tokens;
        self.windows += other.windows;
        self.dense_rechecks += other.dense_rechecks;
        self.whole_window_rechecks += other.whole_window_rechecks;
        self.dense_redecodes += other.dense_redecodes;
        self.unprompted_retries += other.unprompted_retries;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Transcript {
    pub text: String,
    pub segments: Vec<Segment>,
    pub language: String,
    pub duration: f64,
    pub timings: Timings,
    pub encoder: EncodeStats,
    /// The first window's decoded tokens, timestamps included (the next streaming step's
    /// [`TranscribeOptions::draft`]).
    #[serde(skip)]
    pub first_window_tokens: Vec<u32>,
    /// Some window stopped at the [`TranscribeOptions::max_tokens_per_second`] limit.
    pub hit_token_limit: bool,
}

/// Prompts up to this many tokens (a window's start-of-transcript sequence: 1 token for an
/// English-only model, 4 for a multilingual one) go through the single-token decoder.
const SHORT_PROMPT_TOKENS: usize = 4;

/// How tokens after the prompt are run: the allocation-free CPU path, or candle tensors
/// (other devices).
#[derive(Clone)]
enum Stepper {
    Fast(StepState),
    Tensors(DecoderState),
}

/// A draft run through the decoder after the prompt: `logits` row i is the prediction after
/// the first i draft tokens; `state` holds the prompt and the whole draft.
struct CheckedDraft<'a> {
    tokens: &'a [u32],
    logits: Tensor,
    state: DecoderState,
}

/// One decode of one window at one temperature.
#[derive(Debug, Clone)]
struct DecodeResult {
    tokens: Vec<u32>,
    text: String,
    avg_logprob: f64,
    no_speech_prob: f64,
    compression_ratio: f64,
    temperature: f32,
    /// Stopped by the per-second token limit, not by end-of-text.
    hit_token_limit: bool,
}

/// Tokens a window of `seconds` may take at `per_second`, plus slack for a short window's
/// timestamps and punctuation.
fn token_allowance(per_second: f64, seconds: f64) -> usize {
    10 + (per_second * seconds).ceil() as usize
}

/// The ratio openai uses to spot repetition loops: text bytes / zlib-compressed bytes.
pub fn compression_ratio(text: &str) -> f64 {
    if text.is_empty() {
        return 0.0;
    }
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).expect("writing to memory");
    let compressed = enc.finish().expect("writing to memory");
    text.len() as f64 / compressed.len() as f64
}

pub struct Transcriber<'m> {
    pub model: &'m WhisperModel,
    mel: MelFrontend,
    /// Always suppressed: non-speech symbols from the config plus task/control tokens.
    suppress: Vec<u32>,
    /// Suppressed at the first sampled position (blank and end-of-text).
    suppress_begin: Vec<u32>,
    /// Decoder cross K/V of the silence table's padding windows, by grid point (see
    /// [`crate::model::Decoder::cross_padded`]); at most [`PADDING_CROSS_POINTS`] are kept.
    padding_cross: Mutex<HashMap<i32, CrossKeyValues>>,
    /// The last blend of those for a level (its f32 bits): a stream's level stays the same
    /// from step to step, and blending a whole window's K/V costs as much as a short decode.
    padding_blend: Mutex<Option<(u32, CrossKeyValues)>>,
}

/// A stream needs two neighbouring grid points, a batch of clips of different loudness a few
/// more; each holds a whole window's K/V (18 MB for tiny).
const PADDING_CROSS_POINTS: usize = 4;

/// Grid points (level / [`silence::GRID_STEP`]) of the padding level speech usually has: 97 %
/// of train.tsv's 220 clips blend two of these. As many as the cache keeps.
const TYPICAL_SPEECH_PADDING_POINTS: std::ops::RangeInclusive<i32> = -8..=-5;

/// Where a window's padding starts (encoder frames) and its level, when the padding came from
/// the silence table.
#[derive(Debug, Clone, Copy)]
struct Padding {
    audio_frames: usize,
    level: f32,
}

impl<'m> Transcriber<'m> {
    pub fn new(model: &'m WhisperModel) -> Self {
        let tok = &model.tokenizer;
        let vocab = model.config.vocab_size as i64;
        let mut suppress: Vec<u32> = model.config.suppress_tokens.iter().filter(|&&t| t >= 0 && t < vocab).map(|&t| t as u32).collect();
        suppress.extend([tok.transcribe, tok.translate, tok.sot, tok.sot_prev]);
        suppress.extend(tok.sot_lm);
        suppress.extend(tok.no_speech);
        suppress.sort_unstable();
        suppress.dedup();
        let mut suppress_begin: Vec<u32> =
            model.config.begin_suppress_tokens.iter().filter(|&&t| t >= 0 && t < vocab).map(|&t| t as u32).collect();
        if suppress_begin.is_empty() {
            suppress_begin = tok.encode(" ").unwrap_or_default();
            suppress_begin.push(tok.eot);
        }
        Self {
            model,
            mel: MelFrontend::new(model.config.num_mel_bins),
            suppress,
            suppress_begin,
            padding_cross: Mutex::new(HashMap::new()),
            padding_blend: Mutex::new(None),
        }
    }

    pub fn log_mel(&self, audio: &[f32]) -> LogMel {
        self.mel.compute(audio, CHUNK_SAMPLES)
    }

    /// Encode one mel window [n_mels, frames] → features [1, n, d].
    pub fn encode_window(&self, window: &[f32], frames: usize, opts: &EncodeOptions) -> Result<(Tensor, EncodeStats)> {
        let mel =
            Tensor::from_slice(window, (1, self.model.config.num_mel_bins, frames), &self.model.device)?.to_dtype(self.model.dtype)?;
        self.model.encoder.forward(&mel, opts)
    }

    /// Encode the window starting at mel frame `seek` whose first `segment_size` frames hold
    /// audio: the whole padded window, only the audio block with cached padding, or (audio_ctx
    /// baseline) only the audio block.
    pub fn encode_segment(
        &self,
        mel: &LogMel,
        seek: usize,
        segment_size: usize,
        opts: &TranscribeOptions,
    ) -> Result<(Tensor, EncodeStats)> {
        if opts.audio_ctx {
            let frames = segment_size.next_multiple_of(2).clamp(2, CHUNK_FRAMES);
            return self.encode_window(&mel.window(seek, frames, 0.0), frames, &opts.encode);
        }
        let block = encoded_block_frames(segment_size);
        if !opts.silence_cache || block == CHUNK_FRAMES {
            return self.encode_window(&mel.window(seek, CHUNK_FRAMES, 0.0), CHUNK_FRAMES, &opts.encode);
        }
        let window = Tensor::from_vec(mel.window(seek, block, mel.silence), (1, mel.n_mels, block), &self.model.device)?
            .to_dtype(self.model.dtype)?;
        self.model.encoder.forward_window(&window, mel.silence, CHUNK_FRAMES, &opts.encode)
    }

    /// Transcribe 16 kHz mono audio. `progress` is called with the seconds done so far.
    pub fn transcribe(&self, audio: &[f32], opts: &TranscribeOptions, progress: &mut dyn FnMut(f64)) -> Result<Transcript> {
        let tok = &self.model.tokenizer;
        let mut timings = Timings::default();
        let t0 = Instant::now();
        let mel = self.log_mel(audio);
        timings.mel_ms = t0.elapsed().as_secs_f64() * 1e3;
        let content_frames = audio.len() / HOP_LENGTH;
        let duration = audio.len() as f64 / SAMPLE_RATE as f64;
        let mut rng = Rng::new(opts.seed);
        let mut encoder_total = EncodeStats::default();

        let mut language = opts.language.clone();
        if !self.model.config.is_multilingual() {
            if let Some(l) = &language {
                if l != "en" {
                    bail!("model {} is English-only; --language {l} needs a multilingual model", self.model.name());
                }
            }
            language = Some("en".into());
        }

        let mut all_tokens: Vec<u32> = Vec::new();
        if let Some(prompt) = &opts.initial_prompt {
            all_tokens.extend(tok.encode(&format!(" {}", prompt.trim()))?);
        }
        let mut prompt_reset_since = 0;
        let mut segments: Vec<Segment> = Vec::new();
        let mut seek = 0usize;
        let mut first_window_tokens = Vec::new();
        let mut hit_token_limit = false;
        while seek < content_frames {
            let time_offset = (seek * HOP_LENGTH) as f64 / SAMPLE_RATE as f64;
            let segment_size = CHUNK_FRAMES.min(content_frames - seek);
            let window_seconds = (segment_size * HOP_LENGTH) as f64 / SAMPLE_RATE as f64;
            let window_audio = &audio[seek * HOP_LENGTH..((seek + segment_size) * HOP_LENGTH).min(audio.len())];
            if opts.skip_unvoiced_windows && !has_voiced_frames(window_audio) {
                seek += segment_size;
                progress(seek as f64 * HOP_LENGTH as f64 / SAMPLE_RATE as f64);
                continue;
            }
            let (features, stats) = self.encode_segment(&mel, seek, segment_size, opts)?;
            timings.encoder_ms += stats.ms;
            accumulate(&mut encoder_total, &stats);
            timings.windows += 1;

            let t_dec = Instant::now();
            let lang = match &language {
                Some(l) => l.clone(),
                None => {
                    let detected = self.detect_language(&features)?;
                    language = Some(detected.clone());
                    detected
                }
            };
            let prompt = &all_tokens[prompt_reset_since..];
            let draft: &[u32] = if seek == 0 { &opts.draft } else { &[] };
            let padding =
                (stats.encoded_frames < stats.frames).then_some(Padding { audio_frames: stats.encoded_frames, level: mel.silence });
            let mut result =
                self.decode_with_fallback(&features, padding, prompt, draft, &lang, opts, &mut rng, &mut timings.tokens, window_seconds)?;
            timings.decoder_ms += t_dec.elapsed().as_secs_f64() * 1e3;
            // The encoding `result` was decoded from.
            let mut encoded = (features, padding);

            let is_silent = |r: &DecodeResult| {
                opts.no_speech_threshold.is_some_and(|t| r.no_speech_prob > t as f64)
                    && !opts.logprob_threshold.is_some_and(|lp| r.avg_logprob > lp as f64)
            };
            let doubtful = |r: &DecodeResult| opts.doubts(r.no_speech_prob, r.avg_logprob);
            let reduced = opts.encode.reduction > 1.0 && opts.dense_rescue;
            let approximate = stats.encoded_frames < stats.frames || reduced;
            let dense = if reduced { TranscribeOptions { encode: EncodeOptions { reduction: 1.0 }, ..opts.clone() } } else { opts.clone() };
            // This window encoded again as `encoding` says.
            let encode_again = |encoding: &TranscribeOptions, timings: &mut Timings, encoder_total: &mut EncodeStats| -> Result<_> {
                let (features, stats) = self.encode_segment(&mel, seek, segment_size, encoding)?;
                timings.encoder_ms += stats.ms;
                accumulate(encoder_total, &stats);
                let padding =
                    (stats.encoded_frames < stats.frames).then_some(Padding { audio_frames: stats.encoded_frames, level: mel.silence });
                Ok((features, padding))
            };
            // An encoding of this window decoded after `prompt`.
            let decode = |(features, padding): &(Tensor, Option<Padding>), prompt: &[u32], timings: &mut Timings, rng: &mut Rng| {
                let t_dec = Instant::now();
                let result =
                    self.decode_with_fallback(features, *padding, prompt, draft, &lang, opts, rng, &mut timings.tokens, window_seconds);
                timings.decoder_ms += t_dec.elapsed().as_secs_f64() * 1e3;
                result
            };
            if approximate && opts.whole_window_recheck && opts.no_speech_threshold.is_some() && doubtful(&result) {
                // Noise is where Whisper invents "you" and "Thank you.", and the block encoding
                // shifts both scores there (no-speech 0.52 where the whole window gives over
                // 0.6 on running water), so a doubtful window is decided by the whole window,
                // as it would be without silence caching. Clear speech passes both tests.
                // CoDA at r = 4 made noisy speech doubtful where the dense model was sure, and
                // dropped it: with CoDA the window is first decoded as the dense default would
                // decode it (silence caching, a fifth of a whole window's encode on dev.tsv),
                // and only if that is in doubt too from the whole window, densely.
                if reduced && opts.silence_cache {
                    timings.dense_rechecks += 1;
                    encoded = encode_again(&dense, &mut timings, &mut encoder_total)?;
                    result = decode(&encoded, prompt, &mut timings, &mut rng)?;
                }
                if doubtful(&result) {
                    timings.whole_window_rechecks += 1;
                    let whole = TranscribeOptions { silence_cache: false, ..dense.clone() };
                    encoded = encode_again(&whole, &mut timings, &mut encoder_total)?;
                    result = decode(&encoded, prompt, &mut timings, &mut rng)?;
                }
            }
            if reduced && !opts.without_timestamps && has_sparse_segment(&result.tokens, tok)? {
                timings.dense_redecodes += 1;
                encoded = encode_again(&dense, &mut timings, &mut encoder_total)?;
                result = decode(&encoded, prompt, &mut timings, &mut rng)?;
            }
            if opts.unprompted_retry && !prompt.is_empty() && !is_silent(&result) {
                // The prompt can end greedy decoding at once: after the shared LJ Speech file's
                // first window (r = 3, the file 0.5 s later), the next read "<|0.00|>" and
                // end-of-text, likely enough (log-probability −0.31) for Whisper's fallback,
                // and 23 s of speech were lost. Without the prompt it reads them.
                let words = |r: &DecodeResult| -> Result<usize> { Ok(tok.decode_text(&r.tokens)?.split_whitespace().count()) };
                let first_words = words(&result)?;
                if (first_words as f64) * VOICED_SECONDS_PER_WORD_AT_LEAST < voiced_seconds(window_audio) {
                    timings.unprompted_retries += 1;
                    let retry = decode(&encoded, &[], &mut timings, &mut rng)?;
                    if words(&retry)? > first_words && !is_silent(&retry) {
                        result = retry;
                    }
                }
            }
            if is_silent(&result) {
                seek += segment_size;
                progress(seek as f64 * HOP_LENGTH as f64 / SAMPLE_RATE as f64);
                continue;
            }

            if seek == 0 {
                first_window_tokens = result.tokens.clone();
            }
            hit_token_limit |= result.hit_token_limit;
            let previous_seek = seek;
            let tokens = &result.tokens;
            let is_ts: Vec<bool> = tokens.iter().map(|&t| tok.is_timestamp(t)).collect();
            let single_timestamp_ending = is_ts.len() >= 2 && !is_ts[is_ts.len() - 2] && is_ts[is_ts.len() - 1];
            let consecutive: Vec<usize> = (1..is_ts.len()).filter(|&i| is_ts[i - 1] && is_ts[i]).collect();
            let mut new_segments: Vec<(f64, f64, Vec<u32>)> = Vec::new();
            if !consecutive.is_empty() {
                let mut slices = consecutive.clone();
                if single_timestamp_ending {
                    slices.push(tokens.len());
                }
                let mut last_slice = 0;
                for &current in &slices {
                    let sliced = &tokens[last_slice..current];
                    let start = (sliced[0] - tok.timestamp_begin) as f64 * TIME_PRECISION;
                    let end = (sliced[sliced.len() - 1] - tok.timestamp_begin) as f64 * TIME_PRECISION;
                    new_segments.push((time_offset + start, time_offset + end, sliced.to_vec()));
                    last_slice = current;
                }
                if single_timestamp_ending {
                    seek += segment_size;
                } else {
                    let last_ts = (tokens[last_slice - 1] - tok.timestamp_begin) as usize;
                    seek += last_ts * INPUT_STRIDE;
                }
            } else {
                let mut seg_duration = segment_size as f64 * HOP_LENGTH as f64 / SAMPLE_RATE as f64;
                if let Some(&last) = tokens.iter().rev().find(|&&t| tok.is_timestamp(t)) {
                    if last != tok.timestamp_begin {
                        seg_duration = (last - tok.timestamp_begin) as f64 * TIME_PRECISION;
                    }
                }
                new_segments.push((time_offset, time_offset + seg_duration, tokens.clone()));
                seek += segment_size;
            }
            // A window whose only timestamp pair sits at 0.00 would not move; never stall.
            if seek <= previous_seek {
                seek = previous_seek + segment_size;
            }

            let window_first_segment = segments.len();
            for (start, end, seg_tokens) in new_segments {
                let text = tok.decode_text(&seg_tokens)?;
                all_tokens.extend(seg_tokens.iter().copied().filter(|&t| t < tok.eot || tok.is_timestamp(t)));
                // A segment without a letter or digit ("...", "-") carries nothing said.
                if start >= end || start >= duration || !text.chars().any(char::is_alphanumeric) {
                    continue;
                }
                segments.push(Segment {
                    id: segments.len(),
                    start,
                    end: end.min(duration.max(start)),
                    text,
                    tokens: seg_tokens,
                    temperature: result.temperature,
                    avg_logprob: result.avg_logprob,
                    compression_ratio: result.compression_ratio,
                    no_speech_prob: result.no_speech_prob,
                    words: Vec::new(),
                });
            }
            if opts.word_timestamps {
                let t_words = Instant::now();
                let lang = language.as_deref().unwrap_or("en");
                self.time_words(&encoded, lang, opts, segment_size / 2, time_offset, window_audio, &mut segments[window_first_segment..])?;
                timings.decoder_ms += t_words.elapsed().as_secs_f64() * 1e3;
            }
            if !opts.condition_on_previous_text || result.temperature > 0.5 {
                prompt_reset_since = all_tokens.len();
            }
            progress((seek.min(content_frames) * HOP_LENGTH) as f64 / SAMPLE_RATE as f64);
        }
        let text = segments.iter().map(|s| s.text.as_str()).collect::<String>().trim().to_string();
        encoder_total.ms = timings.encoder_ms;
        Ok(Transcript {
            text,
            segments,
            language: language.unwrap_or_else(|| "en".into()),
            duration,
            timings,
            encoder: encoder_total,
            first_window_tokens,
            hit_token_limit,
        })
    }

    /// Greedy tokens for encoded audio, without fallback (the distillation target in training):
    /// with `timestamps` they include the timestamp tokens, under the same timestamp rules as
    /// transcription. `prompt` (earlier text, as long-form and streaming transcription pass it)
    /// goes after <|startofprev|>, cut to its last tokens as transcription cuts it. Returns the
    /// whole sequence it decoded after (prompt included), and the tokens.
    pub fn greedy_tokens(&self, features: &Tensor, timestamps: bool, prompt: &[u32]) -> Result<(Vec<u32>, Vec<u32>)> {
        let opts = TranscribeOptions { without_timestamps: !timestamps, temperatures: vec![0.0], ..Default::default() };
        let mut rng = Rng::new(0);
        let mut count = 0;
        // No token limit is set, so the window's length does not matter.
        let result = self.decode_with_fallback(features, None, prompt, &[], "en", &opts, &mut rng, &mut count, 30.0)?;
        let mut prefix = self.prompt_prefix(prompt);
        prefix.extend(self.sot_sequence("en", &opts)?);
        Ok((prefix, result.tokens))
    }

    /// Words and their times for the segments one window was read as (openai/whisper's
    /// alignment; see [`crate::words`]): the window's text is run through the decoder again
    /// after its start-of-transcript sequence and <|notimestamps|>, no prompt, and the
    /// alignment heads' attention over its `audio_frames` encoder frames places each token.
    /// Segment starts and ends move to their first and last words, unless a word runs far
    /// past the segment's own timestamp.
    #[allow(clippy::too_many_arguments)]
    fn time_words(
        &self,
        (features, padding): &(Tensor, Option<Padding>),
        language: &str,
        opts: &TranscribeOptions,
        audio_frames: usize,
        time_offset: f64,
        window_audio: &[f32],
        segments: &mut [Segment],
    ) -> Result<()> {
        let tok = &self.model.tokenizer;
        let text_of = |s: &Segment| s.tokens.iter().copied().filter(|&t| t < tok.eot).collect::<Vec<u32>>();
        let text: Vec<u32> = segments.iter().flat_map(text_of).collect();
        if text.is_empty() || audio_frames == 0 {
            return Ok(());
        }
        let sot = self.sot_sequence(language, &TranscribeOptions { without_timestamps: true, ..opts.clone() })?;
        let mut input = sot.clone();
        input.extend(&text);
        input.push(tok.eot);
        let dec = &self.model.decoder;
        let mut state = self.decoder_state(features, *padding)?;
        let heads = self.model.config.word_alignment_heads();
        let (hidden, scores) =
            dec.forward_with_cross_scores(&Tensor::new(input.as_slice(), &self.model.device)?.unsqueeze(0)?, &mut state, &heads)?;
        let (rows, frames) = scores[0].dims2()?;
        let scores = scores.iter().map(|s| Ok(s.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)).collect::<Result<Vec<_>>>()?;
        let first_row = sot.len() - 1;
        let starts = words::row_start_times(&scores, rows, frames, audio_frames.min(frames), first_row, text.len() + 1)?;
        // Probability of each text token, from the query that predicts it (NaN, written as
        // null, when not asked for).
        let probs: Vec<f32> = if opts.word_probabilities {
            let logits = dec.logits(&hidden.i((0, first_row..first_row + text.len()))?)?.to_dtype(DType::F32)?;
            let picked = Tensor::new(text.as_slice(), logits.device())?.unsqueeze(1)?;
            candle_nn::ops::softmax_last_dim(&logits)?.gather(&picked, 1)?.flatten_all()?.to_vec1()?
        } else {
            vec![f32::NAN; text.len()]
        };
        let split = words::split_words(tok, &text, language)?;
        let mut timed: Vec<Word> = split
            .iter()
            .map(|(word, range)| Word {
                word: word.clone(),
                start: time_offset + starts[range.start],
                end: time_offset + starts[range.end],
                probability: range.clone().map(|i| probs[i] as f64).sum::<f64>() / range.len() as f64,
            })
            .collect();
        let median = words::cap_long_words(&mut timed);
        words::trim_pauses(&mut timed, window_audio, time_offset);
        // Each word goes to the segment that holds its first token.
        let mut timed = timed.into_iter().zip(split.iter().map(|(_, range)| range.start)).peekable();
        let mut segment_end_token = 0;
        for segment in segments.iter_mut() {
            segment_end_token += text_of(segment).len();
            let mut own = Vec::new();
            while let Some((word, _)) = timed.next_if(|(_, first_token)| *first_token < segment_end_token) {
                own.push(word);
            }
            segment.words = words::merge_punctuation(own);
            let (Some(first), Some(last)) = (segment.words.first().cloned(), segment.words.last().cloned()) else { continue };
            // The warping path starts at the window's first frame, so the first word of a
            // window that opens with a pause would start too early: the segment's own
            // timestamp decides when the two disagree by more than half a second, and the
            // same at the end.
            if segment.start < first.end && segment.start - 0.5 > first.start {
                segment.words[0].start = (first.end - median).min(segment.start).max(0.0);
            } else {
                segment.start = first.start;
            }
            if segment.end > last.start && segment.end + 0.5 < last.end {
                segment.words.last_mut().expect("a last word").end = (last.start + median).max(segment.end);
            } else {
                segment.end = last.end;
            }
            // Times are on a 10 ms grid; drop the float noise of their sums (5.6000000000000005).
            let ms = |t: f64| (t * 1000.0).round() / 1000.0;
            for word in &mut segment.words {
                (word.start, word.end) = (ms(word.start), ms(word.end));
            }
            (segment.start, segment.end) = (ms(segment.start), ms(segment.end));
        }
        Ok(())
    }

    /// <|startofprev|> and the last tokens of `prompt` that fit (none for an empty prompt).
    fn prompt_prefix(&self, prompt: &[u32]) -> Vec<u32> {
        if prompt.is_empty() {
            return Vec::new();
        }
        let max_prompt = self.model.decoder.max_positions / 2 - 1;
        let mut prefix = vec![self.model.tokenizer.sot_prev];
        prefix.extend(&prompt[prompt.len().saturating_sub(max_prompt)..]);
        prefix
    }

    /// <|startoftranscript|> [language, task] [<|notimestamps|>].
    fn sot_sequence(&self, language: &str, opts: &TranscribeOptions) -> Result<Vec<u32>> {
        let tok = &self.model.tokenizer;
        let mut seq = vec![tok.sot];
        if !tok.languages.is_empty() {
            seq.push(tok.language_token(language).ok_or_else(|| anyhow::anyhow!("unknown language code {language:?}"))?);
            seq.push(match opts.task {
                Task::Transcribe => tok.transcribe,
                Task::Translate => tok.translate,
            });
        }
        if opts.without_timestamps {
            seq.push(tok.no_timestamps);
        }
        Ok(seq)
    }

    /// The most likely language token after <|startoftranscript|>.
    pub fn detect_language(&self, features: &Tensor) -> Result<String> {
        let tok = &self.model.tokenizer;
        if tok.languages.is_empty() {
            return Ok("en".into());
        }
        let dec = &self.model.decoder;
        let mut state = dec.start(features)?;
        let input = Tensor::new(&[[tok.sot]], &self.model.device)?;
        let hidden = dec.forward(&input, &mut state)?;
        let logits: Vec<f32> = dec.logits(&hidden.i((0, 0..1))?)?.i(0)?.to_dtype(DType::F32)?.to_vec1()?;
        let best = tok
            .languages
            .iter()
            .max_by(|a, b| logits[a.1 as usize].total_cmp(&logits[b.1 as usize]))
            .map(|(code, _)| code.clone())
            .unwrap_or_else(|| "en".into());
        Ok(best)
    }

    #[allow(clippy::too_many_arguments)]
    fn decode_with_fallback(
        &self,
        features: &Tensor,
        padding: Option<Padding>,
        prompt: &[u32],
        draft: &[u32],
        language: &str,
        opts: &TranscribeOptions,
        rng: &mut Rng,
        token_count: &mut usize,
        audio_seconds: f64,
    ) -> Result<DecodeResult> {
        let tok = &self.model.tokenizer;
        let dec = &self.model.decoder;
        let mut initial = self.prompt_prefix(prompt);
        let sot_index = initial.len();
        initial.extend(self.sot_sequence(language, opts)?);

        // Greedy decoding can check a draft; it has to leave room for the token after it.
        let draft_room = (dec.max_positions / 2).min(dec.max_positions - initial.len()).saturating_sub(1);
        let greedy_first = opts.temperatures.first() == Some(&0.0) && opts.beam_size <= 1;
        let draft = if greedy_first { &draft[..draft.len().min(draft_room)] } else { &[] };

        // The prompt pass is the same for every temperature: run it once, reuse its cache. A
        // draft rides along in the same pass.
        let mut state = self.decoder_state(features, padding)?;
        let mut stepper: Option<Stepper> = None;
        // The short prompt pass's logits come from the single-token decoder: approximate for
        // text tokens until refined (see `StepDecoder::refine`).
        let (sot_logits, first_logits, checked_draft, first_approximate) = match &self.model.step {
            Some(step) if draft.is_empty() && initial.len() <= SHORT_PROMPT_TOKENS => {
                let (sot_logits, first_logits, fast) = self.short_prompt_pass(step, &state, &initial, sot_index)?;
                stepper = Some(Stepper::Fast(fast));
                (sot_logits, first_logits, None, step.is_approximate())
            }
            _ => {
                let input: Vec<u32> = initial.iter().chain(draft).copied().collect();
                let input = Tensor::new(input.as_slice(), &self.model.device)?.unsqueeze(0)?;
                let hidden = dec.forward(&input, &mut state)?;
                let rows = Tensor::cat(&[hidden.i((0, sot_index..sot_index + 1))?, hidden.i((0, initial.len() - 1..input.dim(1)?))?], 0)?;
                let logits = dec.logits(&rows)?.to_dtype(DType::F32)?;
                let checked_draft = if draft.is_empty() {
                    None
                } else {
                    let full = state.clone();
                    state.truncate(initial.len())?;
                    Some(CheckedDraft { tokens: draft, logits: logits.narrow(0, 1, draft.len() + 1)?, state: full })
                };
                (logits.i(0)?.to_vec1()?, logits.i(1)?.to_vec1()?, checked_draft, false)
            }
        };
        let no_speech_prob = match tok.no_speech {
            Some(ns) => ((sot_logits[ns as usize] - logsumexp(&sot_logits)) as f64).exp(),
            None => 0.0,
        };

        let mut tried: Vec<DecodeResult> = Vec::new();
        for (attempt, &temperature) in opts.temperatures.iter().enumerate() {
            let draft = checked_draft.as_ref().filter(|_| attempt == 0);
            // With a draft, sampling makes its own stepper where it leaves the draft.
            let start = match (draft, &stepper) {
                (Some(_), _) => Stepper::Tensors(state.clone()),
                (None, Some(s)) => s.clone(),
                (None, None) => stepper.insert(self.stepper(state.clone())?).clone(),
            };
            let first = Logits { values: first_logits.clone(), approximate: first_approximate };
            let limits = self.sample_limits(opts, features.dim(1)?, audio_seconds);
            let result = if temperature <= 0.0 && opts.beam_size > 1 {
                self.beam_search(start, first, initial.len(), opts, token_count, limits)?
            } else if temperature > 0.0 && opts.best_of > 1 {
                self.sample_best_of(start, first, initial.len(), temperature, opts, rng, token_count, limits)?
            } else {
                self.sample(start, draft, first, initial.len(), temperature, opts, rng, token_count, limits)?
            };
            let mut result = DecodeResult { no_speech_prob, ..result };
            result.compression_ratio = compression_ratio(&result.text);
            let too_repetitive =
                result.hit_token_limit || opts.compression_ratio_threshold.is_some_and(|cr| result.compression_ratio > cr as f64);
            let too_unlikely = opts.logprob_threshold.is_some_and(|lp| result.avg_logprob < lp as f64);
            // Silence: the caller skips this window, no retry needed.
            let silent = too_unlikely && opts.no_speech_threshold.is_some_and(|ns| result.no_speech_prob > ns as f64);
            let done = silent || (!too_repetitive && !too_unlikely);
            tried.push(result);
            if done {
                return Ok(tried.pop().expect("just pushed"));
            }
        }
        // Every temperature failed a check. Rather than keep the last (hottest) sample, as
        // openai does, keep the likeliest one that is not a repetition loop (faster-whisper's
        // choice): at temperature 1.0 the sample is often invented text.
        let cr_limit = opts.compression_ratio_threshold.map(|c| c as f64).unwrap_or(f64::INFINITY);
        let pool: Vec<&DecodeResult> = if tried.iter().any(|r| r.compression_ratio <= cr_limit) {
            tried.iter().filter(|r| r.compression_ratio <= cr_limit).collect()
        } else {
            tried.iter().collect()
        };
        let best = pool.into_iter().max_by(|a, b| a.avg_logprob.total_cmp(&b.avg_logprob)).cloned();
        Ok(best.expect("at least one temperature"))
    }

    /// A decoder state for an encoded window; padding from the silence table has its cross
    /// K/V blended from cached ones instead of projected again.
    fn decoder_state(&self, features: &Tensor, padding: Option<Padding>) -> Result<DecoderState> {
        let dec = &self.model.decoder;
        let Some(padding) = padding else { return dec.start(features) };
        let blended = self.padding_cross_at(padding.level)?;
        Ok(dec.start_from(dec.cross_padded(features, padding.audio_frames, &blended)?))
    }

    /// The prompt pass of a short prompt (a window's start-of-transcript tokens, no earlier
    /// text, no draft) through the single-token decoder: one token at a time, the vocabulary
    /// projected only where a prediction is read. The batched pass costs ~20 ms whatever the
    /// length (candle packs the 80 MB f32 vocabulary matrix for its two rows, and the cross
    /// keys for every head); this costs about one decoded token per prompt token. Returns the
    /// logits after <|startoftranscript|> (the no-speech probability) and after the last
    /// prompt token, and the state to sample from.
    fn short_prompt_pass(
        &self,
        step: &crate::model::step::StepDecoder,
        state: &DecoderState,
        initial: &[u32],
        sot_index: usize,
    ) -> Result<(Vec<f32>, Vec<f32>, StepState)> {
        let mut fast = StepState::from_exported(step, state.export()?)?;
        let mut sot_logits = vec![0f32; step.vocab_size];
        let mut first_logits = vec![0f32; step.vocab_size];
        let last = initial.len() - 1;
        for (i, &token) in initial.iter().enumerate() {
            match i {
                i if i == last => {
                    step.step(token, &mut fast, &mut first_logits)?;
                    if i == sot_index {
                        sot_logits.copy_from_slice(&first_logits);
                    }
                }
                i if i == sot_index => step.step(token, &mut fast, &mut sot_logits)?,
                _ => step.advance(token, &mut fast)?,
            }
        }
        Ok((sot_logits, first_logits, fast))
    }

    /// Cross K/V of a whole padding window at `level`, blended from the grid points around it.
    fn padding_cross_at(&self, level: f32) -> Result<CrossKeyValues> {
        if let Some((bits, kv)) = &*self.padding_blend.lock().expect("padding blend lock") {
            if *bits == level.to_bits() {
                return Ok(kv.clone());
            }
        }
        let points = silence::blend(level)
            .into_iter()
            .map(|(index, weight)| Ok((self.padding_cross_point(index)?, weight)))
            .collect::<Result<Vec<_>>>()?;
        let blended = CrossKeyValues::weighted_sum(&points)?;
        *self.padding_blend.lock().expect("padding blend lock") = Some((level.to_bits(), blended.clone()));
        Ok(blended)
    }

    /// Project the padding K/V a stream most likely needs now, so that the first pass after
    /// speech starts does not (two grid points, about 90 ms each on a 2-core laptop CPU).
    pub fn warm_up_padding(&self) -> Result<()> {
        for index in TYPICAL_SPEECH_PADDING_POINTS {
            self.padding_cross_point(index)?;
        }
        Ok(())
    }

    fn padding_cross_point(&self, index: i32) -> Result<CrossKeyValues> {
        let mut cache = self.padding_cross.lock().expect("padding cache lock");
        if let Some(c) = cache.get(&index) {
            return Ok(c.clone());
        }
        let encoder = &self.model.encoder;
        let cross = self.model.decoder.cross(&encoder.silence.grid_point(encoder, index)?)?;
        if cache.len() >= PADDING_CROSS_POINTS {
            let farthest = *cache.keys().max_by_key(|k| k.abs_diff(index)).expect("cache is full");
            cache.remove(&farthest);
        }
        cache.insert(index, cross.clone());
        Ok(cross)
    }

    fn stepper(&self, state: DecoderState) -> Result<Stepper> {
        Ok(match &self.model.step {
            Some(step) => Stepper::Fast(StepState::from_exported(step, state.export()?)?),
            None => Stepper::Tensors(state),
        })
    }

    /// Sample tokens after the prompt until end-of-text or the length limit. While the tokens
    /// picked are the draft's, the next logits come from the draft's pass; from the first
    /// difference on, decoding goes on one token at a time from the draft's cache cut back to
    /// the agreed prefix.
    #[allow(clippy::too_many_arguments)]
    fn sample(
        &self,
        mut state: Stepper,
        draft: Option<&CheckedDraft>,
        first: Logits,
        sample_begin: usize,
        temperature: f32,
        opts: &TranscribeOptions,
        rng: &mut Rng,
        token_count: &mut usize,
        (sample_len, token_limit): (usize, Option<usize>),
    ) -> Result<DecodeResult> {
        let tok = &self.model.tokenizer;
        let dec = &self.model.decoder;
        let mut generated: Vec<u32> = Vec::new();
        let mut sum_logprob = 0f64;
        let max_initial = (opts.max_initial_timestamp as f64 / TIME_PRECISION).round() as usize;
        let mut on_draft = draft.is_some();
        let (mut logits, mut approximate) = (first.values, first.approximate);
        loop {
            // Approximate logits are the fast stepper's last step's, so its state refines them.
            let refine_from = match &state {
                Stepper::Fast(s) if approximate => Some(s),
                _ => None,
            };
            self.apply_filters(&mut logits, &generated, opts, max_initial, refine_from, 1);
            let next = if temperature <= 0.0 { argmax(&logits) } else { sample_from(&logits, temperature, rng) };
            *token_count += 1;
            if next == tok.eot {
                break;
            }
            // log-softmax of the chosen token only: nothing per-token is allocated.
            sum_logprob += (logits[next as usize] - logsumexp(&logits)) as f64;
            generated.push(next);
            if generated.len() >= sample_len || sample_begin + generated.len() >= dec.max_positions {
                break;
            }
            if let Some(d) = draft.filter(|_| on_draft) {
                let n = generated.len();
                if n <= d.tokens.len() && generated[n - 1] == d.tokens[n - 1] {
                    logits = d.logits.i(n)?.to_vec1()?;
                    approximate = false;
                    continue;
                }
                on_draft = false;
                let mut agreed = d.state.clone();
                agreed.truncate(sample_begin + n - 1)?;
                state = self.stepper(agreed)?;
            }
            match &mut state {
                Stepper::Fast(s) => {
                    let step = self.model.step.as_ref().expect("fast state implies a step decoder");
                    step.step(next, s, &mut logits)?;
                    approximate = step.is_approximate();
                }
                Stepper::Tensors(s) => {
                    let input = Tensor::new(&[[next]], &self.model.device)?;
                    let hidden = dec.forward(&input, s)?;
                    logits = dec.logits(&hidden.i(0)?)?.i(0)?.to_dtype(DType::F32)?.to_vec1()?;
                    approximate = false;
                }
            }
        }
        self.decoded(generated, sum_logprob, temperature, token_limit)
    }

    /// A decoded window's result: its text, and its log-probability per token counting the
    /// end-of-text (as openai's). The no-speech probability and compression ratio come later.
    fn decoded(&self, tokens: Vec<u32>, sum_logprob: f64, temperature: f32, token_limit: Option<usize>) -> Result<DecodeResult> {
        Ok(DecodeResult {
            avg_logprob: sum_logprob / (tokens.len() + 1) as f64,
            text: self.model.tokenizer.decode_text(&tokens)?,
            hit_token_limit: token_limit.is_some_and(|limit| tokens.len() >= limit),
            tokens,
            no_speech_prob: 0.0,
            compression_ratio: 0.0,
            temperature,
        })
    }

    /// openai's best_of: `opts.best_of` samples at `temperature` from one start, the one with
    /// the highest log-probability per token kept (the first on a tie). With the single-token
    /// decoder the samples step as one batch (each weight read once for all of them); each
    /// makes exactly the draws [`Transcriber::sample`] would, sample 0 from `rng` itself (so it
    /// is the single draw of the same seed) and the others from their own forks of it.
    #[allow(clippy::too_many_arguments)]
    fn sample_best_of(
        &self,
        start: Stepper,
        first: Logits,
        sample_begin: usize,
        temperature: f32,
        opts: &TranscribeOptions,
        rng: &mut Rng,
        token_count: &mut usize,
        (sample_len, token_limit): (usize, Option<usize>),
    ) -> Result<DecodeResult> {
        let n = opts.best_of.max(1);
        // The likeliest per token, the first on a tie.
        let likeliest = |samples: Vec<DecodeResult>| {
            samples.into_iter().reduce(|best, s| if s.avg_logprob > best.avg_logprob { s } else { best }).expect("best_of ≥ 1 samples")
        };
        let (Stepper::Fast(start), Some(step)) = (&start, &self.model.step) else {
            // The tensor decoder: one sample after another.
            let limits = (sample_len, token_limit);
            let samples = (0..n)
                .map(|_| self.sample(start.clone(), None, first.clone(), sample_begin, temperature, opts, rng, token_count, limits))
                .collect::<Result<Vec<_>>>()?;
            return Ok(likeliest(samples));
        };
        struct Draw {
            tokens: Vec<u32>,
            sum_logprob: f64,
            state: StepState,
            rng: Rng,
        }
        let eot = self.model.tokenizer.eot;
        let max_initial = (opts.max_initial_timestamp as f64 / TIME_PRECISION).round() as usize;
        let mut draws: Vec<Draw> = (0..n)
            .map(|k| Draw {
                tokens: Vec::new(),
                sum_logprob: 0.0,
                state: start.fork(step),
                rng: if k == 0 { rng.clone() } else { rng.fork(k as u64) },
            })
            .collect();
        let vocab = first.values.len();
        let mut logits: Vec<f32> = first.values.iter().copied().cycle().take(n * vocab).collect();
        let mut approximate = first.approximate;
        let mut scratch = step.batch_scratch(n, start);
        // The draws still decoding, in order; draw i's logits are at its place in this list.
        let mut active: Vec<usize> = (0..n).collect();
        while !active.is_empty() {
            let mut stepping = Vec::with_capacity(active.len());
            let mut next_tokens = Vec::with_capacity(active.len());
            for (&i, logits) in active.iter().zip(logits.chunks_mut(vocab)) {
                let draw = &mut draws[i];
                self.apply_filters(logits, &draw.tokens, opts, max_initial, approximate.then_some(&draw.state), 1);
                let next = sample_from(logits, temperature, &mut draw.rng);
                *token_count += 1;
                if next == eot {
                    continue;
                }
                draw.sum_logprob += (logits[next as usize] - logsumexp(logits)) as f64;
                draw.tokens.push(next);
                if draw.tokens.len() >= sample_len || sample_begin + draw.tokens.len() >= self.model.decoder.max_positions {
                    continue;
                }
                stepping.push(i);
                next_tokens.push(next);
            }
            active = stepping;
            if active.is_empty() {
                break;
            }
            logits.resize(active.len() * vocab, 0.0);
            // `active` is in increasing order, so this keeps each draw at its place in it.
            let mut states: Vec<&mut StepState> =
                draws.iter_mut().enumerate().filter(|(i, _)| active.binary_search(i).is_ok()).map(|(_, d)| &mut d.state).collect();
            step.step_batch(&next_tokens, &mut states, &mut scratch, &mut logits)?;
            approximate = step.is_approximate();
        }
        *rng = draws[0].rng.clone();
        let samples =
            draws.into_iter().map(|d| self.decoded(d.tokens, d.sum_logprob, temperature, token_limit)).collect::<Result<Vec<_>>>()?;
        Ok(likeliest(samples))
    }

    /// How many tokens a window may take: (the length limit, and the per-second token limit
    /// when one is set, which also marks the result).
    fn sample_limits(&self, opts: &TranscribeOptions, audio_frames: usize, audio_seconds: f64) -> (usize, Option<usize>) {
        let mut sample_len = self.model.decoder.max_positions / 2;
        if opts.audio_ctx {
            // Length guard for the audio_ctx baseline: ~6 tokens a second of audio plus slack
            // (read speech runs at 3–4 tokens a second with timestamps). Each encoder frame is
            // 20 ms.
            sample_len = sample_len.min(token_allowance(6.0, audio_frames as f64 * 0.02));
        }
        let token_limit = opts.max_tokens_per_second.map(|rate| token_allowance(rate, audio_seconds));
        if let Some(limit) = token_limit {
            sample_len = sample_len.min(limit);
        }
        (sample_len, token_limit)
    }

    /// Beam search at temperature 0, as openai/whisper's: every live beam proposes its
    /// `beam_size` + 1 likeliest next tokens (after the same logit filters as greedy decoding),
    /// the `beam_size` likeliest continuations live on, and one ending in end-of-text is
    /// finished. It stops once `beam_size` have finished (or at the length limit, where the
    /// live beams count as finished), and the finished sequence with the highest
    /// log-probability per token wins.
    fn beam_search(
        &self,
        start: Stepper,
        first: Logits,
        sample_begin: usize,
        opts: &TranscribeOptions,
        token_count: &mut usize,
        (sample_len, token_limit): (usize, Option<usize>),
    ) -> Result<DecodeResult> {
        struct Beam {
            tokens: Vec<u32>,
            sum_logprob: f64,
            state: Stepper,
        }
        let tok = &self.model.tokenizer;
        let dec = &self.model.decoder;
        let beam_size = opts.beam_size.max(1);
        let max_initial = (opts.max_initial_timestamp as f64 / TIME_PRECISION).round() as usize;
        let vocab = first.values.len();
        // The live beams' logits, beam b's at b·vocab.., and whether they are the 8-bit
        // vocabulary pass's (to be refined where they are ranked).
        let (mut logits, mut approximate) = (first.values, first.approximate);
        // The single-token decoder steps all beams as one batch, reading its weights once.
        let mut batch = match (&start, &self.model.step) {
            (Stepper::Fast(s), Some(step)) => Some(step.batch_scratch(beam_size, s)),
            _ => None,
        };
        let mut live = vec![Beam { tokens: Vec::new(), sum_logprob: 0.0, state: start }];
        let mut finished: Vec<(Vec<u32>, f64)> = Vec::new();
        loop {
            // (score, beam, token) for each beam's likeliest next tokens.
            let mut candidates: Vec<(f64, usize, u32)> = Vec::new();
            for (b, (beam, logits)) in live.iter().zip(logits.chunks_mut(vocab)).enumerate() {
                let refine_from = match &beam.state {
                    Stepper::Fast(s) if approximate => Some(s),
                    _ => None,
                };
                self.apply_filters(logits, &beam.tokens, opts, max_initial, refine_from, beam_size + 1);
                let norm = logsumexp(logits);
                for t in top_tokens(logits, beam_size + 1) {
                    candidates.push((beam.sum_logprob + (logits[t as usize] - norm) as f64, b, t));
                }
            }
            candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut next: Vec<(f64, usize, u32)> = Vec::new();
            for (score, b, t) in candidates {
                if t == tok.eot {
                    if finished.len() < beam_size {
                        finished.push((live[b].tokens.clone(), score));
                    }
                } else {
                    next.push((score, b, t));
                    if next.len() == beam_size {
                        break;
                    }
                }
            }
            if finished.len() >= beam_size || next.is_empty() {
                break;
            }
            let length = live[0].tokens.len() + 1;
            if length >= sample_len || sample_begin + length >= dec.max_positions {
                // Out of room: the continuations end here, unfinished.
                for &(score, b, t) in &next {
                    let mut tokens = live[b].tokens.clone();
                    tokens.push(t);
                    finished.push((tokens, score));
                }
                break;
            }
            // The continuations: a beam's state goes to its last child, earlier ones fork.
            let mut children_left: Vec<usize> = vec![0; live.len()];
            for &(_, b, _) in &next {
                children_left[b] += 1;
            }
            let mut parents: Vec<Option<Beam>> = live.into_iter().map(Some).collect();
            let mut grown = Vec::with_capacity(next.len());
            for &(score, b, t) in &next {
                children_left[b] -= 1;
                let (state, mut tokens) = if children_left[b] == 0 {
                    let parent = parents[b].take().expect("a parent with children left");
                    (parent.state, parent.tokens)
                } else {
                    let parent = parents[b].as_ref().expect("a parent with children left");
                    let state = match &parent.state {
                        Stepper::Fast(s) => Stepper::Fast(s.fork(self.model.step.as_ref().expect("fast state implies a step decoder"))),
                        Stepper::Tensors(s) => Stepper::Tensors(s.clone()),
                    };
                    (state, parent.tokens.clone())
                };
                tokens.push(t);
                grown.push(Beam { tokens, sum_logprob: score, state });
            }
            *token_count += grown.len();
            live = grown;
            // Step every continuation by its last token.
            logits.resize(live.len() * vocab, 0.0);
            let last: Vec<u32> = next.iter().map(|&(_, _, t)| t).collect();
            match (&mut batch, &self.model.step) {
                (Some(scratch), Some(step)) => {
                    let mut states: Vec<&mut StepState> = live
                        .iter_mut()
                        .map(|beam| match &mut beam.state {
                            Stepper::Fast(s) => s,
                            Stepper::Tensors(_) => unreachable!("every beam descends from the first beam's fast state"),
                        })
                        .collect();
                    step.step_batch(&last, &mut states, scratch, &mut logits)?;
                    approximate = step.is_approximate();
                }
                _ => {
                    for ((beam, &t), out) in live.iter_mut().zip(&last).zip(logits.chunks_mut(vocab)) {
                        let Stepper::Tensors(s) = &mut beam.state else {
                            unreachable!("every beam descends from the first beam's tensor state")
                        };
                        let hidden = dec.forward(&Tensor::new(&[[t]], &self.model.device)?, s)?;
                        out.copy_from_slice(&dec.logits(&hidden.i(0)?)?.i(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
                    }
                    approximate = false;
                }
            }
        }
        let per_token = |(tokens, score): &(Vec<u32>, f64)| score / tokens.len().max(1) as f64;
        let (tokens, sum_logprob) =
            finished.into_iter().max_by(|a, b| per_token(a).total_cmp(&per_token(b))).expect("a beam always finishes or runs out of room");
        self.decoded(tokens, sum_logprob, 0.0, token_limit)
    }

    /// openai's logit filters: SuppressBlank, SuppressTokens and the timestamp rules. Logits
    /// from the single-token decoder's 8-bit text rows are refined by `refine_from`'s state
    /// once the masks are in, so the `exact_top` largest allowed text logits are exact where
    /// they are compared.
    fn apply_filters(
        &self,
        logits: &mut [f32],
        generated: &[u32],
        opts: &TranscribeOptions,
        max_initial: usize,
        refine_from: Option<&StepState>,
        exact_top: usize,
    ) {
        let tok = &self.model.tokenizer;
        let ninf = f32::NEG_INFINITY;
        let refine = |logits: &mut [f32]| {
            if let (Some(state), Some(step)) = (refine_from, &self.model.step) {
                step.refine_top(state, logits, exact_top);
            }
        };
        if generated.is_empty() {
            for &t in &self.suppress_begin {
                logits[t as usize] = ninf;
            }
        }
        for &t in &self.suppress {
            logits[t as usize] = ninf;
        }
        if opts.without_timestamps {
            let tb = tok.timestamp_begin as usize;
            let len = logits.len();
            logits[tb.min(len)..].fill(ninf);
            refine(logits);
            return;
        }
        logits[tok.no_timestamps as usize] = ninf;
        let tb = tok.timestamp_begin as usize;
        let eot = tok.eot as usize;
        let n = generated.len();
        let last_ts = n >= 1 && tok.is_timestamp(generated[n - 1]);
        let penultimate_ts = n < 2 || tok.is_timestamp(generated[n - 2]);
        if last_ts {
            if penultimate_ts {
                logits[tb..].fill(ninf);
            } else {
                logits[..eot].fill(ninf);
            }
        }
        if let Some(&last) = generated.iter().rev().find(|&&t| tok.is_timestamp(t)) {
            // Timestamps never go backwards; after a closing one the next must move on.
            let bound = if last_ts && !penultimate_ts { last as usize } else { last as usize + 1 };
            let len = logits.len();
            logits[tb..bound.min(len)].fill(ninf);
        }
        if n == 0 {
            logits[..tb].fill(ninf);
            let last_allowed = tb + max_initial;
            if last_allowed + 1 < logits.len() {
                logits[last_allowed + 1..].fill(ninf);
            }
        }
        refine(logits);
        // If timestamps together are likelier than any text token, force a timestamp.
        // Compared as log-probabilities the normaliser cancels, so raw logits suffice.
        let ts_logprob = logsumexp(&logits[tb..]);
        let max_text = logits[..tb].iter().copied().fold(ninf, f32::max);
        if ts_logprob > max_text {
            logits[..tb].fill(ninf);
        }
    }
}

/// Logits to sample from, and whether they are the single-token decoder's approximate ones
/// (see `StepDecoder::refine`).
#[derive(Clone)]
struct Logits {
    values: Vec<f32>,
    approximate: bool,
}

/// Whether a timestamped decoding has a segment longer than [`SPARSE_SEGMENT_SECONDS`] at more
/// than [`SPARSE_SECONDS_PER_WORD`].
pub fn has_sparse_segment(tokens: &[u32], tok: &crate::model::tokens::WhisperTokenizer) -> Result<bool> {
    let mut start: Option<u32> = None;
    let mut text: Vec<u32> = Vec::new();
    for &t in tokens {
        if tok.is_timestamp(t) {
            match start {
                Some(s) if !text.is_empty() => {
                    let seconds = t.saturating_sub(s) as f64 * TIME_PRECISION;
                    let words = tok.decode_text(&text)?.split_whitespace().count();
                    if seconds > SPARSE_SEGMENT_SECONDS && seconds > SPARSE_SECONDS_PER_WORD * words as f64 {
                        return Ok(true);
                    }
                    start = None;
                    text.clear();
                }
                _ => start = Some(t),
            }
        } else if t < tok.eot && start.is_some() {
            text.push(t);
        }
    }
    Ok(false)
}

fn accumulate(total: &mut EncodeStats, s: &EncodeStats) {
    total.frames += s.frames;
    total.encoded_frames += s.encoded_frames;
    if total.heavy_frames.len() < s.heavy_frames.len() {
        total.heavy_frames.resize(s.heavy_frames.len(), 0);
    }
    for (t, h) in total.heavy_frames.iter_mut().zip(&s.heavy_frames) {
        *t += h;
    }
    total.flops += s.flops;
    total.dense_flops += s.dense_flops;
}

/// The `k` tokens with the largest finite logits, likeliest first.
fn top_tokens(logits: &[f32], k: usize) -> Vec<u32> {
    let finite = logits.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, &v)| (v, i as u32));
    largest(finite, k).into_iter().map(|(_, t)| t).collect()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn sample_from(logits: &[f32], temperature: f32, rng: &mut Rng) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = logits.iter().map(|&l| (((l - max) / temperature) as f64).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut target = rng.uniform() * total;
    for (i, w) in weights.iter().enumerate() {
        target -= w;
        if target <= 0.0 && *w > 0.0 {
            return i as u32;
        }
    }
    argmax(logits)
}
