//! The streaming recogniser thread.
//!
//! It keeps a buffer of at most `max_buffer_s` of 16 kHz audio. While the voice gate is open it
//! re-transcribes the buffer every `step_s` of new audio (the first time after `first_step_s`,
//! so a partial appears soon after speech starts), prompted with the committed text, and
//! commits what two consecutive hypotheses agree on; each pass starts from the previous
//! hypothesis as a decoder draft. When speech stops (or the stream ends) everything pending
//! becomes final and the buffer is cleared but for the utterance's last segment, which is
//! heard again before the next utterance; while it runs long, the buffer is trimmed at the end
//! of the committed words so latency and cost stay bounded.

use super::buffer::AudioBuffer;
use super::controller::{BudgetController, EncoderCost};
use super::policy::{segment_cut, segments_to_words, LocalAgreement, Word};
use super::vad::{Vad, MIN_VOICED_FRAMES};
use crate::model::EncodeOptions;
use crate::transcribe::{TranscribeOptions, Transcriber, Transcript};
use anyhow::Result;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RATE: f64 = 16_000.0;
/// The buffer is cut at the estimated end of the final words only when it has run this much
/// past `trim_s` without a final segment boundary to cut at.
const WORD_CUT_AFTER_S: f64 = 6.0;
/// How far before the estimated end of the final words that fallback cut is made.
const WORD_CUT_MARGIN_S: f64 = 1.0;
/// The least audio a stall's last-resort cut at the end of the final words drops.
const LAST_RESORT_CUT_MIN_S: f64 = 0.5;
/// How much audio must have come after the end of the final words before that cut is made:
/// it can fall inside a word, so only a long stall is worth it ("It was" after a cut at
/// "…The Timely Rescue." 1.8 s into a stall came out "New York. He was"); a shorter one at an
/// utterance's end is heard by the end check (see [`END_CHECK_S`]).
const LAST_RESORT_AFTER_S: f64 = 4.0;
/// Decoding of a step stops past 10 + this many tokens per second of buffer: fast speech
/// stays under 5 (timestamps included), a loop on a short buffer does not.
const MAX_TOKENS_PER_SECOND: f64 = 6.0;
/// An utterance's own audio (from its pre-roll) must be this long before two hypotheses of it
/// may agree on final words: on a second or two of isolated speech tiny.en is confidently
/// wrong ("reply to him" for "replied he", in two passes in a row) and right once the next
/// words follow.
const MIN_AGREEMENT_AUDIO_S: f64 = 3.0;
/// When the voice gate closes on an utterance shorter than that, it stays open this long for
/// more speech (no passes run meanwhile) before its words are made final on their own.
const SHORT_UTTERANCE_HOLD_S: f64 = 2.0;
/// Hypotheses in a row that add no word while the voice gate stays open before the decoder
/// is taken to be stuck at a sentence end (see [`State::unstick_if_stalled`]); they must span
/// this many steps of audio too, since an utterance's first passes come faster.
const STALLED_STEPS: usize = 2;

/// How much of the buffer's end is heard again when an utterance ends (see
/// [`State::hear_the_end_again`]): the last final words and up to a few seconds after them.
const END_CHECK_S: f64 = 5.0;

/// A pass whose least likely segment has a mean token log-probability under this (Whisper's
/// `logprob_threshold`) is decoded again without the prompt.
const UNLIKELY_LOGPROB: f64 = -1.0;

/// A pass over a buffer of speech that reads fewer words than one per this many seconds of it
/// is decoded again without the prompt (see [`streaming_pass`]); speech runs at 2–3 words a
/// second, and the buffer's pauses are under the voice gate's hangover.
const SECONDS_PER_WORD_AT_LEAST: f64 = 4.0;

/// One pass over the buffer, prompted with the committed text. The prompt can derail a pass:
/// after a committed "…Chapter 7 The", the buffer "Timely Rescue. It was no pleasant thought…"
/// came out as "The", pass after pass; after "…Chapter 16 A Girl and a Bit of Lowestoft.", a
/// noisy buffer came out as "Girl and a Girl and a …", confidently (log-probability −0.1),
/// pass after pass for 28 s; 13 s of the shared LJ Speech file came out as "the", likely
/// enough (−0.65), pass after pass until the stream ended. Whisper's own fallback drops the
/// prompt when it retries a decode; so does this, once, when the reading is unlikely, a
/// repetition loop or far too short for the audio, and keeps the better one: a reading that
/// is neither loop nor too short over one that is, else the likelier. Returns the transcript
/// and the encoder time of every decode it took.
pub fn streaming_pass(t: &Transcriber, audio: &[f32], opts: &TranscribeOptions) -> Result<(Transcript, f64)> {
    let first = t.transcribe(audio, opts, &mut |_| {})?;
    let audio_s = audio.len() as f64 / RATE;
    let first_reading = Reading::of(&first, opts, audio_s);
    if opts.initial_prompt.is_none() || first_reading.is_sound() {
        let encoder_ms = first.timings.encoder_ms;
        return Ok((first, encoder_ms));
    }
    let bare = TranscribeOptions { initial_prompt: None, draft: Vec::new(), ..opts.clone() };
    let retry = t.transcribe(audio, &bare, &mut |_| {})?;
    let encoder_ms = first.timings.encoder_ms + retry.timings.encoder_ms;
    Ok((if Reading::of(&retry, opts, audio_s).replaces(&first_reading) { retry } else { first }, encoder_ms))
}

/// `CODA_ASR_DEBUG_STREAM` set: each pass, utterance and end check is traced on stderr.
fn tracing() -> bool {
    std::env::var_os("CODA_ASR_DEBUG_STREAM").is_some()
}

/// Decoding options every streaming pass shares, at reduction factor `r`.
fn pass_options(r: f64, word_timestamps: bool) -> TranscribeOptions {
    TranscribeOptions {
        condition_on_previous_text: false,
        encode: EncodeOptions { reduction: r },
        // Keep a step's cost predictable: one greedy pass, no sampling retries.
        temperatures: vec![0.0],
        max_tokens_per_second: Some(MAX_TOKENS_PER_SECOND),
        // No dense re-encodes either: the next pass hears the audio again, and the budget
        // controller needs each pass to cost what r says (simulated at r = 4, the rescue
        // raised compute / audio 0.259 → 0.304 on the shared long files; README, CoDA).
        dense_rescue: false,
        // The voice gate decides, on the utterance as a whole, not on a buffer that may hold
        // only its first unvoiced consonant.
        skip_unvoiced_windows: false,
        // It retries the pass as a whole (see `streaming_pass`).
        unprompted_retry: false,
        word_timestamps,
        // The policy uses the times only; the probabilities would cost more than the times.
        word_probabilities: false,
        ..Default::default()
    }
}

/// A segment's words in buffer time: aligned by the decoder's cross-attention when the pass
/// timed them, else spread over the segment by their letters.
fn segment_words(segment: &crate::transcribe::Segment) -> Vec<Word> {
    if segment.words.is_empty() {
        segments_to_words(&[(segment.start, segment.end, segment.text.clone())])
    } else {
        segment
            .words
            .iter()
            .filter(|w| !w.word.trim().is_empty())
            .map(|w| Word { text: w.word.trim().to_string(), start: w.start, end: w.end })
            .collect()
    }
}

/// What decides between a prompted pass and its retry without the prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    has_segments: bool,
    is_loop: bool,
    /// Under one word per [`SECONDS_PER_WORD_AT_LEAST`] of a buffer that long or longer: the
    /// voice gate heard speech in it all along, so the decoder stopped early.
    too_short: bool,
    /// The lowest mean token log-probability of its segments (0 when it has none).
    least_logprob: f64,
}

impl Reading {
    fn of(tr: &Transcript, opts: &TranscribeOptions, audio_s: f64) -> Self {
        let words: usize = tr.segments.iter().map(|s| s.text.split_whitespace().count()).sum();
        Self {
            has_segments: !tr.segments.is_empty(),
            is_loop: is_repetition_loop(tr, opts),
            too_short: audio_s >= SECONDS_PER_WORD_AT_LEAST && (words as f64) < audio_s / SECONDS_PER_WORD_AT_LEAST,
            least_logprob: least_likely_segment(tr),
        }
    }

    /// Likely enough, no loop and not too short: no retry needed.
    fn is_sound(&self) -> bool {
        self.least_logprob >= UNLIKELY_LOGPROB && !self.is_loop && !self.too_short
    }

    /// Failed in a way the log-probability does not show.
    fn is_broken(&self) -> bool {
        self.is_loop || self.too_short
    }

    /// Whether this retry is the better reading of the audio `first` was decoded from.
    fn replaces(&self, first: &Reading) -> bool {
        // A silent retry (no segments) says nothing about the audio the first pass heard words in.
        self.has_segments
            && match (first.is_broken(), self.is_broken()) {
                (true, false) => true,
                (false, true) => false,
                _ => self.least_logprob > first.least_logprob,
            }
    }
}

/// Greedy decoding's failure mode: stopped by the token limit, or text that compresses like a
/// loop (the options' compression-ratio test, computed over each window's whole text).
fn is_repetition_loop(tr: &Transcript, opts: &TranscribeOptions) -> bool {
    tr.hit_token_limit || opts.compression_ratio_threshold.is_some_and(|cr| tr.segments.iter().any(|s| s.compression_ratio > cr as f64))
}

/// Either of Whisper's no-speech tests fails on some segment (see [`TranscribeOptions::doubts`]).
fn fails_no_speech_tests(tr: &Transcript, opts: &TranscribeOptions) -> bool {
    tr.segments.iter().any(|s| opts.doubts(s.no_speech_prob, s.avg_logprob))
}

/// The lowest mean token log-probability of a transcript's segments (0 when it has none).
fn least_likely_segment(tr: &Transcript) -> f64 {
    tr.segments.iter().map(|s| s.avg_logprob).fold(0.0, f64::min)
}

#[derive(Debug, Clone)]
pub struct StreamOptions {
    pub step_s: f64,
    pub first_step_s: f64,
    pub max_buffer_s: f64,
    /// Trim the buffer once it is longer than this. Long-form files from train.tsv, simulated:
    /// 12 s 7.48 / 7.67 % WER, 16 s 6.86 / 7.37 %, 20 s 7.48 / 6.98 % (and a p90 latency of 2.2 s
    /// against 1.5 s); a longer buffer gives each pass more context and fewer cuts.
    pub trim_s: f64,
    pub budget: f64,
    /// Available reduction factors (empty: dense encoder, nothing to adapt).
    pub reductions: Vec<f64>,
    pub start_reduction: f64,
    pub fixed_reduction: Option<f64>,
    pub vad_hangover_s: f64,
    /// Audio kept before speech onset so the first word is not cut.
    pub preroll_s: f64,
    /// The last segment of an utterance, up to this long, is heard again in front of the next
    /// one (0: each utterance starts from silence, with only the committed text as prompt).
    pub context_s: f64,
    /// Playback speed of a replayed file (1 for a microphone): converts wall time to audio time.
    pub speed: f64,
    /// Voiced frames an utterance needs before its words can be final (0 for whispered speech,
    /// which has none; see [`MIN_VOICED_FRAMES`]).
    pub min_voiced_frames: u64,
    /// Time each word by the decoder's cross-attention (as batch `--word-timestamps`), not by
    /// spreading its segment over its letters: final events then carry them (`words`).
    pub word_timestamps: bool,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            step_s: 1.0,
            first_step_s: 0.2,
            max_buffer_s: 28.0,
            trim_s: 16.0,
            budget: 0.5,
            reductions: Vec::new(),
            start_reduction: 1.0,
            fixed_reduction: None,
            vad_hangover_s: 1.0,
            preroll_s: 0.4,
            context_s: 8.0,
            speed: 1.0,
            min_voiced_frames: MIN_VOICED_FRAMES,
            word_timestamps: false,
        }
    }
}

/// What the monitor shows; one per processing step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamStats {
    /// Audio received so far, seconds.
    pub audio_s: f64,
    pub buffer_s: f64,
    pub step_compute_ms: f64,
    /// All recognition compute so far, seconds.
    pub compute_total_s: f64,
    /// Compute time / audio time, smoothed.
    pub load: f64,
    pub budget: f64,
    pub reduction: f64,
    pub can_adapt: bool,
    pub heavy_fraction: Vec<f64>,
    /// Encoder FLOPs saved against the dense encoder on the same input, percent.
    pub flops_saved_pct: f64,
    pub dropped_samples: u64,
    pub speech: bool,
    pub level_db: f64,
    /// Audio end → text final, seconds, of the last final.
    pub last_latency_s: f64,
    pub paused: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    Partial {
        text: String,
        start: f64,
        end: f64,
        emitted_at: f64,
    },
    /// `words`: with word timestamps, each final word with its start and end in stream time.
    Final {
        text: String,
        start: f64,
        end: f64,
        emitted_at: f64,
        latency_s: f64,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        words: Vec<Word>,
    },
    Stats(StreamStats),
    Error {
        message: String,
    },
    Ended,
}

#[derive(Debug, Clone, Copy)]
pub enum Control {
    Pause(bool),
    SetBudget(f64),
    /// None = automatic.
    SetReduction(Option<f64>),
    Stop,
}

struct State<'a> {
    t: &'a Transcriber<'a>,
    opts: StreamOptions,
    policy: LocalAgreement,
    vad: Vad,
    controller: BudgetController,
    buffer: AudioBuffer,
    received: usize,
    since_step: usize,
    speech_in_buffer: bool,
    /// Whether the current utterance has produced words yet (until then steps are short).
    heard_words: bool,
    /// Stream time where the current utterance's own audio (its pre-roll) starts.
    utterance_start: f64,
    /// Buffer end at the last pass that added words, or where the utterance started.
    progress_at: f64,
    /// Where the voice gate last heard speech, once it has closed on the current utterance:
    /// no word of it ends later (see [`Self::stream_words`]).
    speech_ended_at: Option<f64>,
    /// The voice gate's count of voiced frames when the current utterance started.
    voiced_frames_before: u64,
    /// Stream time at which the voice gate closed on a short utterance that is held open for
    /// more speech (see [`SHORT_UTTERANCE_HOLD_S`]).
    held_since: Option<f64>,
    /// The last segment of the previous utterance: its audio, stream start and final words.
    context: Option<(Vec<f32>, f64, usize)>,
    /// The last hypothesis' last segment: stream start, end and word count.
    last_segment: Option<(f64, f64, usize)>,
    /// The last hypothesis' tokens and the buffer start they were decoded at: the next step's
    /// draft while the buffer only grows (its timestamps are relative to the buffer start).
    draft: Option<(Vec<u32>, f64)>,
    /// Where the last final word ended, in stream time (with word timestamps).
    last_final_word_end: f64,
    /// What "now" is when an event is stamped.
    clock: Clock,
    stats: StreamStats,
    events: Sender<Event>,
    dropped: Arc<AtomicU64>,
    paused: bool,
    /// From the last hypothesis: where the buffer may be cut (see [`segment_cut`]).
    cut: Option<(f64, usize)>,
    /// The last segment boundary any hypothesis put behind final words only: stream time and
    /// how many words were final before it (kept when later hypotheses have none).
    boundary: Option<(f64, usize)>,
}

impl State<'_> {
    fn now_audio(&self) -> f64 {
        let received = self.received as f64 / RATE;
        match self.clock {
            Clock::Wall(started) => started.elapsed().as_secs_f64() * self.opts.speed,
            Clock::Audio => received,
            Clock::AudioAndCompute { compute_before } => received + (self.stats.compute_total_s - compute_before),
        }
    }

    fn send(&self, e: Event) {
        let _ = self.events.send(e);
    }

    fn emit_finals(&mut self, words: Vec<Word>) {
        if words.is_empty() {
            return;
        }
        let emitted_at = self.now_audio().min(self.received as f64 / RATE + self.stats.step_compute_ms / 1e3);
        let text = words.iter().map(|w| w.text.as_str()).collect::<Vec<_>>().join(" ");
        let (start, end) = (words[0].start, words[words.len() - 1].end);
        let latency = (emitted_at - end).max(0.0);
        self.stats.last_latency_s = latency;
        // Times on a millisecond grid, without the float noise of their sums. Words made final
        // by different passes were timed by different alignments, which can overlap by a frame
        // or two: a word never starts before the last final word ended.
        let ms = |t: f64| (t * 1000.0).round() / 1000.0;
        let words = if self.opts.word_timestamps {
            let mut timed = Vec::with_capacity(words.len());
            for w in words {
                let start = ms(w.start.max(self.last_final_word_end));
                let end = ms(w.end.max(start));
                self.last_final_word_end = end;
                timed.push(Word { start, end, ..w });
            }
            timed
        } else {
            Vec::new()
        };
        self.send(Event::Final { text, start, end, emitted_at, latency_s: latency, words });
    }

    fn emit_partial(&self) {
        let p = self.policy.partial();
        let text = p.iter().map(|w| w.text.as_str()).collect::<Vec<_>>().join(" ");
        let (start, end) = (p.first().map_or(0.0, |w| w.start), p.last().map_or(0.0, |w| w.end));
        let emitted_at = self.now_audio();
        self.send(Event::Partial { text, start, end, emitted_at });
    }

    /// Re-transcribe the buffer and commit what agrees. `last_of_utterance`: the utterance
    /// ends after this pass, and what it hears becomes final without a second pass to agree.
    fn process(&mut self, last_of_utterance: bool) -> Result<()> {
        if self.buffer.len() < 1600 {
            return Ok(());
        }
        let step_audio = self.since_step as f64 / RATE;
        self.since_step = 0;
        let r = self.controller.reduction();
        let prompt = self.policy.prompt_words();
        let committed_text: String =
            prompt[prompt.len().saturating_sub(40)..].iter().map(|w| w.text.as_str()).collect::<Vec<_>>().join(" ");
        let topts = TranscribeOptions {
            initial_prompt: (!committed_text.is_empty()).then_some(committed_text),
            // Until the utterance has words, its passes hear a fraction of a second and are often
            // in doubt, and the recheck's 30 s dense encode (about 0.3 s here) delayed the first
            // partial by as much; nothing becomes final before two passes agree on 3 s of audio,
            // and the second has the recheck. The utterance's last pass is flushed unagreed, so
            // it always has it: a recogniser that fell behind ran its first pass on 5 s of a
            // running tap, and "I'm going to go to the next video." became final.
            whole_window_recheck: self.heard_words || last_of_utterance,
            draft: match &self.draft {
                Some((tokens, start)) if *start == self.buffer.start() => tokens.clone(),
                _ => Vec::new(),
            },
            ..pass_options(r, self.opts.word_timestamps)
        };
        let t0 = Instant::now();
        let (tr, encoder_ms) = streaming_pass(self.t, self.buffer.samples(), &topts)?;
        let compute = t0.elapsed().as_secs_f64();
        let words = self.stream_words(&tr, 0.0);
        let segs: Vec<(f64, f64, String)> =
            tr.segments.iter().map(|s| (self.buffer.to_stream(s.start), self.buffer.to_stream(s.end), s.text.clone())).collect();
        if tracing() {
            let tm = &tr.timings;
            eprintln!(
                "[{:.2}+{:.2}s step {step_audio:.2} r={r}] mel {:.0} enc {:.0} dec {:.0} ms, {} tokens, draft {}, rechecked {}, logprob {:.2}, no-speech {:.2}: {:?}",
                self.buffer.start(),
                self.buffer.len_s(),
                tm.mel_ms,
                tm.encoder_ms,
                tm.decoder_ms,
                tm.tokens,
                topts.draft.len(),
                tm.whole_window_rechecks,
                least_likely_segment(&tr),
                tr.segments.iter().map(|s| s.no_speech_prob).fold(0.0, f64::max),
                segs.iter().map(|(start, end, text)| format!("{start:.2}-{end:.2}{text}")).collect::<Vec<_>>()
            );
        }
        self.stats.step_compute_ms = compute * 1e3;
        self.stats.compute_total_s += compute;
        // The controller's choice is read at the next step, whatever becomes of this one.
        self.controller.observe(compute, encoder_ms / 1e3, step_audio.max(self.opts.step_s * 0.5));
        // A repetition loop (greedy decoding's failure mode) is not a hypothesis: keep the last.
        if is_repetition_loop(&tr, &topts) {
            self.skip_hypothesis();
            return Ok(());
        }
        let hypothesis_words = words.len();
        self.policy.hold_commits(self.buffer.end() - self.utterance_start < MIN_AGREEMENT_AUDIO_S || !self.is_voiced());
        let Some(finals) = self.policy.update(words) else {
            // Nor is one that stopped before the words already final (see `update`).
            self.skip_hypothesis();
            self.unstick_if_stalled();
            return Ok(());
        };
        self.draft = Some((tr.first_window_tokens.clone(), self.buffer.start()));
        // Until the utterance has a voice, only a pass that passes Whisper's no-speech tests is
        // shown: a running tap read "you" (log-probability −1.12), bursts of noise "you" at a
        // no-speech probability of 0.75–0.89, and those flashed up as partials (nothing of an
        // unvoiced utterance becomes final). Hiding every partial until the first voiced frame
        // is no answer: the gate heard none in a loud "Chapter 16" for 1.6 s, read at −0.99.
        // A hidden reading does not count as words heard, so the next pass still comes a
        // first step later ("The H-" at −1.35 is hidden, "The Huns had…" shown 0.2 s on).
        let shown = self.is_voiced() || !fails_no_speech_tests(&tr, &topts);
        self.heard_words |= shown && (!finals.is_empty() || !self.policy.partial().is_empty());
        if self.policy.passes_without_words() == 0 {
            self.progress_at = self.buffer.end();
        }
        self.last_segment = segs.last().zip(tr.segments.last()).map(|((start, end, _), s)| (*start, *end, segment_words(s).len()));
        let words_per_segment: Vec<(f64, usize)> =
            segs.iter().zip(&tr.segments).map(|((_, end, _), s)| (*end, segment_words(s).len())).collect();
        self.cut = segment_cut(&words_per_segment, hypothesis_words - self.policy.partial().len());
        if let Some((at, still_in_buffer)) = self.cut {
            self.boundary = Some((at, self.policy.committed().len() - still_in_buffer));
        }
        self.emit_finals(finals);
        if shown {
            self.emit_partial();
        }
        self.stats.heavy_fraction = tr.encoder.heavy_fraction();
        self.stats.flops_saved_pct =
            if tr.encoder.dense_flops > 0.0 { 100.0 * (1.0 - tr.encoder.flops / tr.encoder.dense_flops) } else { 0.0 };
        if !self.unstick_if_stalled() {
            self.trim();
        }
        Ok(())
    }

    /// Whisper sometimes ends a hypothesis at a sentence end with more speech after it, and
    /// then every later pass of the growing buffer ends there too: the speech after it is
    /// never decoded (a spoken title after "…from its opponents." was lost that way). The last
    /// segment's end time cannot show it (it sits at the buffer end), so it shows as passes
    /// that add no word while the gate hears speech. Cutting the buffer at the last segment
    /// boundary behind final words makes the next pass start close to the unheard speech.
    /// Returns whether the buffer was cut.
    fn unstick_if_stalled(&mut self) -> bool {
        // Counted in audio as well as passes: an utterance's first passes come every
        // `first_step_s`, and two of them after the previous utterance's context, 0.4 s into
        // new speech, cut into that context, and the utterance's first words were lost.
        let stalled_for = self.buffer.end() - self.progress_at;
        if self.policy.passes_without_words() < STALLED_STEPS
            || stalled_for < STALLED_STEPS as f64 * self.opts.step_s
            || !self.vad.is_speech()
        {
            return false;
        }
        if let Some((at, final_before)) = self.boundary.take() {
            if self.cut_at_segment_boundary(at, self.policy.committed().len() - final_before) {
                return true;
            }
        }
        // No boundary after the buffer start (one segment so far).
        self.cut_before_final_words_end() || self.cut_at_final_words_end()
    }

    /// A long stall's last resort, when the final words end too close to the buffer's start
    /// for the cut a second before their end: cut at their estimated end itself. After one stall
    /// cut had left "…Mark greet wished." at the start of the buffer, every pass ended
    /// "Margaret wished." for 18 s of speech, which was lost. Returns whether it was cut.
    fn cut_at_final_words_end(&mut self) -> bool {
        let at = self.policy.committed_end();
        if at - self.buffer.start() < LAST_RESORT_CUT_MIN_S || self.buffer.end() - at < LAST_RESORT_AFTER_S {
            return false;
        }
        let cut = self.buffer.drain_before(at) > 0.0;
        if cut {
            self.policy.trimmed(self.buffer.start());
        }
        cut
    }

    /// Whether the current utterance has enough voiced frames to be speech.
    fn is_voiced(&self) -> bool {
        self.vad.voiced_frames() - self.voiced_frames_before >= self.opts.min_voiced_frames
    }

    /// The last hypothesis stays the one to agree with; its draft and segment are not reused.
    fn skip_hypothesis(&mut self) {
        self.last_segment = None;
        self.draft = None;
    }

    /// Drop audio that only holds committed words once the buffer runs long.
    fn trim(&mut self) {
        let len_s = self.buffer.len_s();
        if len_s > self.opts.max_buffer_s {
            // Nothing agreed for too long: make it final rather than grow past one window.
            if self.is_voiced() {
                let rest = self.policy.flush();
                self.emit_finals(rest);
            }
            self.clear_buffer_keeping(0);
            return;
        }
        if len_s > self.opts.trim_s {
            // At the end of the last segment that is all final, when there is one.
            if let Some((cut, still_in_buffer)) = self.cut.take() {
                if self.cut_at_segment_boundary(cut, still_in_buffer) {
                    return;
                }
            }
        }
        if len_s > self.opts.trim_s + WORD_CUT_AFTER_S {
            // No segment boundary to cut at.
            self.cut_before_final_words_end();
        }
    }

    /// Cut the buffer at a segment boundary (stream time `at`) behind which `still_in_buffer`
    /// final words are still heard. Returns whether it was cut.
    fn cut_at_segment_boundary(&mut self, at: f64, still_in_buffer: usize) -> bool {
        let cut = self.cut_buffer_at(at);
        if cut {
            self.policy.trimmed_keeping(still_in_buffer);
        }
        cut
    }

    /// Cut the buffer a little before the estimated end of the final words. Word times inside
    /// a long segment are estimates; cutting early only makes the next hypothesis repeat a few
    /// final words (matched and dropped by the policy), while cutting late would lose words
    /// nobody has seen final. Returns whether it was cut.
    fn cut_before_final_words_end(&mut self) -> bool {
        let cut = self.cut_buffer_at(self.policy.committed_end() - WORD_CUT_MARGIN_S);
        if cut {
            self.policy.trimmed(self.buffer.start());
        }
        cut
    }

    /// Drop the buffer's audio before stream time `at`, if that is over a second of it.
    fn cut_buffer_at(&mut self, at: f64) -> bool {
        if at - self.buffer.start() <= 1.0 {
            return false;
        }
        self.buffer.drain_before(at) > 0.0
    }

    /// Empty the buffer of all but its last `samples`, which belong to no utterance yet.
    fn clear_buffer_keeping(&mut self, samples: usize) {
        self.buffer.keep_last(samples);
        self.speech_in_buffer = false;
        self.policy.cleared();
        self.cut = None;
        self.boundary = None;
        self.last_segment = None;
    }

    /// Keep the utterance's last segment (all final by now) to be heard before the next one.
    fn keep_context(&mut self) {
        self.context = None;
        let Some((start, end, words)) = self.last_segment else { return };
        if words == 0 || end - start > self.opts.context_s {
            return;
        }
        // A little past the segment's end: Whisper's end times can fall inside the last word.
        let (audio, at) = self.buffer.slice(start, end + 0.3);
        if !audio.is_empty() {
            self.context = Some((audio, at, words));
        }
    }

    /// Speech starts: the buffer holds the pre-roll; the previous utterance's last segment goes
    /// in front of it, and its words are known to be final already.
    /// `voiced_frames_before`: the voice gate's count before the audio that opened it.
    fn start_utterance(&mut self, voiced_frames_before: u64) {
        self.heard_words = false;
        self.utterance_start = self.buffer.start();
        self.progress_at = self.utterance_start;
        self.speech_ended_at = None;
        self.voiced_frames_before = voiced_frames_before;
        if tracing() {
            eprintln!(
                "[utterance starts {:.2}] context {:?}",
                self.buffer.start(),
                self.context.as_ref().map(|(a, at, w)| (*at, a.len() as f64 / RATE, *w))
            );
        }
        if let Some((audio, at, words)) = self.context.take() {
            self.buffer.prepend(&audio, at);
            self.policy.trimmed_keeping(words);
        }
    }

    /// End of an utterance: one last pass, then everything pending is final. The last
    /// pre-roll of audio stays, as while idle, for an utterance that starts right after.
    fn finish_utterance(&mut self) -> Result<()> {
        self.held_since = None;
        if tracing() {
            eprintln!("[utterance ends {:.2}] last segment {:?}", self.buffer.end(), self.last_segment);
        }
        if self.speech_in_buffer && !self.is_voiced() {
            // Noise, not speech: whatever the passes read in it is dropped.
            self.policy.cleared();
            self.emit_partial();
        } else if self.speech_in_buffer {
            // A segment's end is often the buffer's end, a hangover of silence after the speech:
            // the final words' times would then put them there, and a stall cut "a second before
            // their end" at the next utterance's start cut after them, not into them (see
            // [`Self::cut_before_final_words_end`]).
            if let Some(at) = self.speech_ended_at {
                self.policy.end_words_by(at);
            }
            self.process(true)?;
            let rest = self.policy.flush();
            self.emit_finals(rest);
            let heard_late = self.hear_the_end_again()?;
            self.emit_finals(heard_late);
            self.emit_partial();
            self.keep_context();
        }
        self.clear_buffer_keeping((self.opts.preroll_s * RATE) as usize);
        Ok(())
    }

    /// Whisper can end every pass of a long buffer at a sentence end with speech after it (see
    /// [`Self::unstick_if_stalled`]), and at an utterance's end no later pass is coming to hear
    /// that speech: "…broad awake than ever." ended each pass of a 20 s buffer, and the
    /// "And a girl called Bellah Postik" spoken before the gate closed was lost. One pass over
    /// the buffer's last [`END_CHECK_S`] hears the last final words again; what it hears after
    /// them is made final. Returns those words.
    fn hear_the_end_again(&mut self) -> Result<Vec<Word>> {
        let tail = (END_CHECK_S * RATE) as usize;
        if self.buffer.len() < tail + RATE as usize || self.policy.committed().is_empty() {
            // The last pass heard little more than this one would, or there are no final words
            // to go on from.
            return Ok(Vec::new());
        }
        let offset = (self.buffer.len() - tail) as f64 / RATE;
        let topts = pass_options(self.controller.reduction(), self.opts.word_timestamps);
        let t0 = Instant::now();
        let tr = self.t.transcribe(&self.buffer.samples()[self.buffer.len() - tail..], &topts, &mut |_| {})?;
        let compute = t0.elapsed().as_secs_f64();
        // Counted in the totals but not shown to the budget controller: it runs once per
        // utterance, after the voice gate closed, not once per step of speech.
        self.stats.step_compute_ms += compute * 1e3;
        self.stats.compute_total_s += compute;
        if tracing() {
            eprintln!("[end check {:.2}+{END_CHECK_S:.2}s] {:?}", self.buffer.to_stream(offset), tr.text);
        }
        if is_repetition_loop(&tr, &topts) {
            return Ok(Vec::new());
        }
        let words = self.stream_words(&tr, offset);
        Ok(self.policy.commit_continuation(&words))
    }

    /// The words of a transcript of the buffer's audio from `offset` seconds on, in stream time.
    /// Word times ([`segment_words`]) are in buffer time, then mapped to stream time: a
    /// segment can span the left-out gap after the context, which has no audio.
    /// Once the gate has closed, no word ends after the speech did.
    fn stream_words(&self, tr: &Transcript, offset: f64) -> Vec<Word> {
        let latest = self.speech_ended_at.unwrap_or(f64::INFINITY);
        let to_stream = |w: Word| Word {
            start: self.buffer.to_stream(offset + w.start).min(latest),
            end: self.buffer.to_stream(offset + w.end).min(latest),
            ..w
        };
        tr.segments.iter().flat_map(segment_words).map(to_stream).collect()
    }

    /// The voice gate closed: finish the utterance, or hold a short one open for more speech.
    fn speech_stopped(&mut self) -> Result<()> {
        let speech_end = self.buffer.end() - self.opts.vad_hangover_s;
        self.speech_ended_at = Some(speech_end);
        if speech_end - self.utterance_start < MIN_AGREEMENT_AUDIO_S {
            self.held_since = Some(self.buffer.end());
            return Ok(());
        }
        self.finish_utterance()
    }

    /// Take a chunk of audio a voice-gate frame at a time, so an utterance ends where the gate
    /// closed and the rest of the chunk (maybe the next utterance's first sound) is not
    /// decoded as part of it.
    fn push_audio(&mut self, chunk: &[f32]) -> Result<()> {
        // The whole chunk has arrived, whatever part of it a step below is decided on.
        self.received += chunk.len();
        if self.paused {
            return Ok(());
        }
        for piece in chunk.chunks(super::vad::FRAME) {
            self.push_piece(piece)?;
        }
        Ok(())
    }

    fn push_piece(&mut self, chunk: &[f32]) -> Result<()> {
        let was_speaking = self.vad.is_speech();
        let voiced_frames_before = self.vad.voiced_frames();
        let speech = self.vad.push(chunk);
        self.buffer.extend(chunk);
        self.since_step += chunk.len();
        if speech && !self.speech_in_buffer {
            self.speech_in_buffer = true;
            self.start_utterance(voiced_frames_before);
        }
        if !self.speech_in_buffer {
            // Idle: keep only a short pre-roll.
            self.buffer.keep_last((self.opts.preroll_s * RATE) as usize);
            self.since_step = 0;
            return Ok(());
        }
        if let Some(closed_at) = self.held_since {
            if speech {
                // More speech: the held utterance goes on; its next pass hears both parts.
                self.held_since = None;
                self.speech_ended_at = None;
                self.since_step = 0;
            } else if self.buffer.end() - closed_at >= SHORT_UTTERANCE_HOLD_S {
                return self.finish_utterance();
            }
            return Ok(());
        }
        if was_speaking && !self.vad.is_speech() {
            return self.speech_stopped();
        }
        Ok(())
    }

    /// Re-transcribe if a step's worth of speech has arrived. Called once all audio that
    /// arrived during the last step has been pushed, so a recogniser that fell behind runs
    /// one pass on the latest audio instead of one per step it missed.
    fn step_if_due(&mut self) -> Result<()> {
        let due = if self.heard_words { self.opts.step_s } else { self.opts.first_step_s };
        if self.speech_in_buffer && self.held_since.is_none() && !self.paused && self.since_step as f64 / RATE >= due {
            self.process(false)?;
        }
        Ok(())
    }

    /// The stream is over: finals flushed, last stats, `Ended`.
    fn end_stream(&mut self) -> Result<()> {
        let flushed = self.finish_utterance();
        self.publish_stats();
        self.send(Event::Ended);
        flushed
    }

    fn publish_stats(&mut self) {
        self.stats.audio_s = self.received as f64 / RATE;
        self.stats.buffer_s = self.buffer.len_s();
        self.stats.load = self.controller.load;
        self.stats.budget = self.controller.budget;
        self.stats.reduction = self.controller.reduction();
        self.stats.can_adapt = self.controller.can_adapt();
        self.stats.dropped_samples = self.dropped.load(Ordering::Relaxed);
        self.stats.speech = self.vad.is_speech();
        self.stats.level_db = self.vad.level_db;
        self.stats.paused = self.paused;
        self.send(Event::Stats(self.stats.clone()));
    }
}

impl<'a> State<'a> {
    /// A recogniser with nothing heard yet; the decoder's padding is warmed up (before any
    /// speech, while the first audio queues up).
    fn new(t: &'a Transcriber<'a>, opts: StreamOptions, events: Sender<Event>, dropped: Arc<AtomicU64>, clock: Clock) -> Self {
        let mut controller = BudgetController::new(opts.reductions.clone(), opts.budget, opts.start_reduction);
        if let Some(coda) = &t.model.coda {
            controller = controller.with_cost(EncoderCost::new(coda.config.layer_reduction_scales(t.model.config.encoder_layers)));
        }
        controller.fixed = opts.fixed_reduction;
        let s = State {
            t,
            vad: Vad::new(opts.vad_hangover_s),
            controller,
            opts,
            policy: LocalAgreement::default(),
            buffer: AudioBuffer::default(),
            received: 0,
            since_step: 0,
            speech_in_buffer: false,
            heard_words: false,
            utterance_start: 0.0,
            progress_at: 0.0,
            speech_ended_at: None,
            voiced_frames_before: 0,
            held_since: None,
            context: None,
            last_segment: None,
            draft: None,
            last_final_word_end: 0.0,
            clock,
            stats: StreamStats::default(),
            events,
            dropped,
            paused: false,
            cut: None,
            boundary: None,
        };
        if let Err(e) = t.warm_up_padding() {
            s.send(Event::Error { message: format!("{e:#}") });
        }
        s
    }
}

/// What "now" is for a recogniser (the audio time events are stamped with).
#[derive(Debug, Clone, Copy)]
enum Clock {
    /// A live or replayed stream: the wall clock since the start, times the replay speed.
    Wall(Instant),
    /// A simulation whose passes take no time: the audio received.
    Audio,
    /// A simulation whose passes take the time they measured: the audio received before the
    /// current pass began, plus the compute spent since (`compute_before` is the running
    /// total of compute then).
    AudioAndCompute { compute_before: f64 },
}

/// How a simulated recogniser's passes take time (see [`simulate_recognizer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// Every pass takes no time: steps fall exactly every `step_s` of audio and events are
    /// stamped with the audio time they were decided at (algorithmic latency). The outcome
    /// depends only on the audio and the options.
    Instant,
    /// Every pass takes the compute it measured, as in a real-time replay: audio that arrives
    /// meanwhile waits and is taken in one go when the pass ends (so a pass that runs longer
    /// than the step delays the next one, which hears more), and events are stamped when
    /// their pass ends. What a real-time replay on this machine decides, in the time the
    /// compute takes instead of the audio's.
    ChargeCompute,
}

/// Audio is delivered in 10 ms blocks, as the capture path delivers them.
const SIMULATED_BLOCK: usize = 160;

/// The recogniser's decisions on a whole recording, without waiting for the audio to play.
/// Unlike a real-time replay, whose steps move with the machine's load, an
/// [`Pacing::Instant`] simulation depends only on the audio and the options, so policy
/// changes can be compared without run-to-run noise; a [`Pacing::ChargeCompute`] one is a
/// real-time replay in a fraction of the time. Compute is measured and reported either way.
pub fn simulate_recognizer(t: &Transcriber, audio: &[f32], opts: StreamOptions, pacing: Pacing) -> Result<Vec<Event>> {
    let (events, received) = crossbeam_channel::unbounded();
    let clock = match pacing {
        Pacing::Instant => Clock::Audio,
        Pacing::ChargeCompute => Clock::AudioAndCompute { compute_before: 0.0 },
    };
    let mut s = State::new(t, opts, events, Arc::new(AtomicU64::new(0)), clock);
    let blocks: Vec<&[f32]> = audio.chunks(SIMULATED_BLOCK).collect();
    let mut pushed = 0;
    // The simulation's clock (see [`Clock`]): audio pushed, plus compute spent since when charged.
    let mut now = 0.0;
    while pushed < blocks.len() {
        // Every block that has arrived by now (at least the next one: nothing to wait for).
        let arrived = ((now * RATE) as usize / SIMULATED_BLOCK).clamp(pushed + 1, blocks.len());
        if pacing == Pacing::ChargeCompute {
            s.clock = Clock::AudioAndCompute { compute_before: s.stats.compute_total_s };
        }
        for block in &blocks[pushed..arrived] {
            s.push_audio(block)?;
        }
        pushed = arrived;
        s.step_if_due()?;
        now = s.now_audio();
    }
    s.end_stream()?;
    drop(s);
    Ok(received.try_iter().collect())
}

/// Run until the audio channel closes or `Stop` arrives; always ends with finals flushed and
/// an `Ended` event.
pub fn run_recognizer(
    t: &Transcriber,
    audio: Receiver<Vec<f32>>,
    control: Receiver<Control>,
    events: Sender<Event>,
    opts: StreamOptions,
    dropped: Arc<AtomicU64>,
) -> Result<()> {
    let mut s = State::new(t, opts, events, dropped, Clock::Wall(Instant::now()));
    let result = (|| -> Result<()> {
        loop {
            while let Ok(c) = control.try_recv() {
                match c {
                    Control::Pause(p) => s.paused = p,
                    Control::SetBudget(b) => s.controller.budget = b,
                    Control::SetReduction(r) => s.controller.fixed = r,
                    Control::Stop => return Ok(()),
                }
            }
            match audio.recv_timeout(Duration::from_millis(100)) {
                Ok(chunk) => {
                    let mut chunks = vec![chunk];
                    // Catch up on everything that arrived during the last step.
                    chunks.extend(audio.try_iter());
                    let before = s.stats.step_compute_ms;
                    for c in &chunks {
                        s.push_audio(c)?;
                    }
                    s.step_if_due()?;
                    if s.stats.step_compute_ms != before || chunks.len() > 1 {
                        s.publish_stats();
                    }
                }
                Err(RecvTimeoutError::Timeout) => s.publish_stats(),
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    })();
    if let Err(e) = &result {
        s.send(Event::Error { message: format!("{e:#}") });
    }
    let _ = s.end_stream();
    result
}

#[cfg(test)]
mod tests {
    use super::Reading;

    fn reading(has_segments: bool, is_loop: bool, least_logprob: f64) -> Reading {
        Reading { has_segments, is_loop, too_short: false, least_logprob }
    }

    #[test]
    fn a_prompted_loop_is_retried_and_any_reading_that_is_no_loop_replaces_it() {
        let confident_loop = reading(true, true, -0.1);
        assert!(!confident_loop.is_sound());
        assert!(!reading(true, false, -1.2).is_sound());
        assert!(reading(true, false, -0.3).is_sound());
        // No loop beats a loop, however unlikely.
        assert!(reading(true, false, -1.5).replaces(&confident_loop));
        assert!(!reading(true, true, -0.05).replaces(&reading(true, false, -1.5)));
        // Between two loops or two readings that are none, the likelier.
        assert!(reading(true, true, -0.05).replaces(&confident_loop));
        assert!(!reading(true, false, -1.3).replaces(&reading(true, false, -1.1)));
        assert!(reading(true, false, -0.4).replaces(&reading(true, false, -1.1)));
        // A retry that hears nothing never replaces words.
        assert!(!reading(false, false, 0.0).replaces(&confident_loop));
    }

    #[test]
    fn a_prompted_reading_far_too_short_for_its_audio_is_retried_like_a_loop() {
        let the = Reading { too_short: true, ..reading(true, false, -0.65) };
        assert!(!the.is_sound());
        assert!(reading(true, false, -0.9).replaces(&the));
        assert!(!Reading { too_short: true, ..reading(true, false, -0.1) }.replaces(&reading(true, false, -0.9)));
    }
}
