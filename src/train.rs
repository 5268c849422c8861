//! `coda-asr train`: the light-weight phase of CoDA. The pretrained Whisper stays frozen; the
//! routers and adapters learn by distillation from the dense model on the same audio, so no
//! transcripts are needed:
//! - KL(dense ‖ CoDA) of the decoder's next-token distributions, teacher-forced on the dense
//!   model's own greedy transcript;
//! - MSE between the encoder outputs, audio frames weighted 1 and padding frames `pad_weight`.
//!
//! Windows are encoded as inference encodes them: the audio block only, with the padding from
//! the silence cache, so r applies to the frames that hold audio.
//!
//! One adapter set serves every budget: r is drawn per step from the configured set.

use crate::audio;
use crate::mel::{MelFrontend, CHUNK_FRAMES, CHUNK_SAMPLES, HOP_LENGTH, SAMPLE_RATE};
use crate::model::coda::{CodaConfig, CodaWeights, Routing};
use crate::model::{EncodeOptions, EncoderBlock, WhisperModel};
use crate::rng::Rng;
use crate::transcribe::{encoded_block_frames, Transcriber};
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Budget gates learn this many times faster than the adapters (see `train`).
const GATE_LR_FACTOR: f64 = 30.0;

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub manifest: PathBuf,
    pub out_dir: PathBuf,
    pub max_minutes: f64,
    pub max_steps: usize,
    pub seed: u64,
    pub lr: f64,
    /// How the learning rate moves over the run (constant for every run before session 18).
    pub lr_schedule: LrSchedule,
    /// Steps of linear warm-up from 0 to `lr` at the start of the run (0 = none).
    pub warmup_steps: usize,
    pub kl_weight: f64,
    pub mse_weight: f64,
    pub pad_weight: f64,
    pub checkpoint_minutes: f64,
    pub resume: bool,
    pub layers: Option<Vec<usize>>,
    /// Adapter width: 64 for fresh adapters when None; with `resume`, None keeps the
    /// checkpoint's and a larger value widens it ([`CodaWeights::widen`]).
    pub bottleneck: Option<usize>,
    pub reductions: Vec<f64>,
    /// Routing of fresh adapters (grid when None). With `resume`, None keeps the checkpoint's
    /// and Some switches it: grid, pooled grid and top-k share their parameters.
    pub routing: Option<Routing>,
    /// Layers to run at a lower reduction, (layer, scale): see `CodaConfig::reduction_scale`.
    pub reduction_scale: Vec<(usize, f64)>,
    /// See `CodaConfig::segments_up_to`; None keeps the checkpoint's (fresh adapters: every r).
    pub segments_up_to: Option<f64>,
    /// Share of steps whose teacher transcript carries timestamp tokens (the rest decode with
    /// <|notimestamps|>). Transcription decodes with timestamps by default, so 1.0 distils what
    /// inference runs; runs before session 13 used 0.0.
    pub timestamp_share: f64,
    /// A second manifest (synthetic speech from `scripts/make_synthetic.py`) and the share of
    /// examples built from it; the rest come from `manifest`.
    pub synthetic_manifest: Option<PathBuf>,
    pub synthetic_share: f64,
    /// Share of steps decoded after a <|startofprev|> prompt: the text of the previous step's
    /// teacher transcript. Long-form and streaming transcription prompt with earlier text.
    pub prompt_share: f64,
    /// Clips of audio shorter/longer than this are made by crops and concatenation.
    pub min_seconds: f64,
    pub max_seconds: f64,
}

impl TrainOptions {
    /// `--pad-weight`'s default; held-out losses use it too.
    pub const DEFAULT_PAD_WEIGHT: f64 = 0.1;
}

/// The learning rate over a run, as a factor of `--lr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrSchedule {
    Constant,
    /// Half a cosine from 1 down to 0 over the run. With one example per step, Adam at a
    /// constant rate keeps the weights jittering around the optimum; annealing lets them settle.
    Cosine,
}

impl LrSchedule {
    /// The factor at `progress` (0 at the first step, 1 at the end of the run) after
    /// `warmup_steps` of linear warm-up (Adam's moments restart on --resume, so its first
    /// steps move every weight by about the full rate whatever its gradient).
    pub fn factor(self, step: usize, warmup_steps: usize, progress: f64) -> f64 {
        let warmup = if step < warmup_steps { (step + 1) as f64 / warmup_steps as f64 } else { 1.0 };
        let decay = match self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress.clamp(0.0, 1.0)).cos()),
        };
        warmup * decay
    }
}

/// How far through the run `step` is: by steps when `--max-steps` bounds it (deterministic),
/// else by the time budget.
fn run_progress(step: usize, max_steps: usize, elapsed_s: f64, max_minutes: f64) -> f64 {
    if max_steps != usize::MAX {
        step as f64 / max_steps as f64
    } else {
        elapsed_s / (max_minutes * 60.0)
    }
}

/// One augmented training example: 16 kHz audio of min..max seconds built from random clips
/// (concatenated when short, cropped when long), with random gain, speed and added noise.
pub fn make_example(clips: &[Vec<f32>], rng: &mut Rng, min_s: f64, max_s: f64) -> Vec<f32> {
    let target = (rng.range(min_s, max_s) * SAMPLE_RATE as f64) as usize;
    let mut audio = Vec::with_capacity(target + SAMPLE_RATE);
    while audio.len() < target {
        let clip = &clips[rng.below(clips.len())];
        // A short pause between concatenated utterances, as in running speech.
        if !audio.is_empty() {
            audio.extend(std::iter::repeat_n(0.0, (rng.range(0.1, 0.6) * SAMPLE_RATE as f64) as usize));
        }
        audio.extend_from_slice(clip);
    }
    let start = rng.below(audio.len() - target + 1);
    let mut audio = audio[start..start + target].to_vec();
    if rng.uniform() < 0.3 {
        // Speed perturbation by resampling: 0.9–1.1× (tempo and pitch together).
        let factor = rng.range(0.9, 1.1);
        let from = (SAMPLE_RATE as f64 * factor).round() as usize;
        if let Ok(resampled) = audio::resample(&audio, from, SAMPLE_RATE) {
            audio = resampled;
        }
    }
    let gain = 10f64.powf(rng.range(-10.0, 4.0) / 20.0) as f32;
    let rms = (audio.iter().map(|&x| (x * x) as f64).sum::<f64>() / audio.len().max(1) as f64).sqrt();
    let noise_rms = if rng.uniform() < 0.3 { rms / 10f64.powf(rng.range(10.0, 30.0) / 20.0) } else { 0.0 };
    for x in audio.iter_mut() {
        *x = (*x + (noise_rms * rng.normal()) as f32) * gain;
        *x = x.clamp(-1.0, 1.0);
    }
    audio
}

fn load_clips(manifest: &std::path::Path) -> Result<Vec<Vec<f32>>> {
    let entries = crate::eval::read_manifest(manifest)?;
    entries.iter().map(|e| Ok(audio::load_mono_16k(&e.wav)?)).collect()
}

/// Initialise fresh adapters deterministically from the seed (router ~ N(0, 0.02²), down
/// projections Kaiming-normal, up projections zero).
fn seeded_fresh(config: CodaConfig, model: &WhisperModel, rng: &mut Rng) -> Result<CodaWeights> {
    let d = model.config.d_model;
    let weights = CodaWeights::fresh(config, d, &model.device)?;
    let data = weights.vars.data().lock().expect("var map lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let shape = var.shape().clone();
        let n = shape.elem_count();
        let std = if name.ends_with(".router") {
            0.02
        } else if name.ends_with("down.weight") {
            (2.0 / d as f64).sqrt()
        } else {
            continue;
        };
        let values: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
        var.set(&Tensor::from_vec(values, shape, &model.device)?)?;
    }
    drop(data);
    Ok(weights)
}

/// Whether this step takes the option given to a `share` of steps. Drawn only for a mixed
/// share, so runs at 0 or 1 keep the examples and r of their seed.
fn drawn(rng: &mut Rng, share: f64) -> bool {
    match share {
        s if s >= 1.0 => true,
        s if s <= 0.0 => false,
        s => rng.uniform() < s,
    }
}

/// The pretrained encoder layers, as a layer stack.
fn dense_stack(model: &WhisperModel) -> Vec<Arc<dyn EncoderBlock>> {
    model.encoder.dense_layers.iter().map(|l| l.clone() as Arc<dyn EncoderBlock>).collect()
}

/// The pretrained stack with `weights`' conditional layers in place of the adapted ones;
/// `trainable` layers track gradients through the weights' variables.
fn coda_stack(model: &WhisperModel, weights: &CodaWeights, trainable: bool) -> Result<Vec<Arc<dyn EncoderBlock>>> {
    let mut stack = dense_stack(model);
    for (i, layer) in weights.layers(&model.encoder.dense_layers, trainable)? {
        stack[i] = Arc::new(layer);
    }
    Ok(stack)
}

/// Distillation of one example: the frozen dense model (teacher) and CoDA layers (student)
/// encode the same window as inference does (the audio block through the layers, the padding
/// from the silence cache, so r applies to the frames that hold audio), and both decoders are
/// teacher-forced on the teacher's own greedy transcript.
struct Distiller<'m> {
    model: &'m WhisperModel,
    transcriber: Transcriber<'m>,
    mel: MelFrontend,
    teacher_layers: Vec<Arc<dyn EncoderBlock>>,
    pad_weight: f64,
}

/// The losses of one example (scalar tensors, differentiable in the student's variables).
struct Distilled {
    /// KL(dense ‖ CoDA) per predicted token, averaged over the transcript.
    kl: Tensor,
    /// Encoder-output MSE per channel: audio frames weigh 1, the padding margin `pad_weight`.
    mse: Tensor,
    /// How many next-token distributions the KL averages.
    predicted_tokens: usize,
    /// How many of them have the same most likely token for student and teacher.
    agreeing_tokens: usize,
}

impl<'m> Distiller<'m> {
    fn new(model: &'m WhisperModel, pad_weight: f64) -> Self {
        Distiller {
            model,
            transcriber: Transcriber::new(model),
            mel: MelFrontend::new(model.config.num_mel_bins),
            teacher_layers: dense_stack(model),
            pad_weight,
        }
    }

    /// The teacher's side of an example: `audio` (16 kHz, at most one 30 s window is used)
    /// encoded densely and decoded greedily, and its next-token distributions on that transcript.
    fn teach(&self, audio: &[f32], timestamps: bool, prompt: &[u32]) -> Result<Teaching> {
        let model = self.model;
        let dev = &model.device;
        let m = self.mel.compute(audio, CHUNK_SAMPLES);
        let audio_mel_frames = (audio.len() / HOP_LENGTH).min(CHUNK_FRAMES);
        let block = encoded_block_frames(audio_mel_frames);
        let window = Tensor::from_vec(m.window(0, block, m.silence), (1, model.config.num_mel_bins, block), dev)?;
        let (encoded, _) =
            model.encoder.forward_window_with(&self.teacher_layers, &window, m.silence, CHUNK_FRAMES, &EncodeOptions { reduction: 1.0 })?;
        let (prefix, target) = self.transcriber.greedy_tokens(&encoded, timestamps, prompt)?;
        let text_tokens: Vec<u32> = target.iter().copied().filter(|&t| t < model.tokenizer.eot).collect();
        let mut tokens = prefix.clone();
        tokens.extend(&target);
        // Positions whose next token is predicted: the last prefix token onwards.
        let first = prefix.len() - 1;
        let forced = Forced { input: Tensor::new(tokens.as_slice(), dev)?.unsqueeze(0)?, first, count: tokens.len() - first };
        let logits = self.logits(&forced, &encoded)?;
        Ok(Teaching {
            window,
            silence: m.silence,
            audio_frames: audio_mel_frames.div_ceil(2),
            block_frames: block / 2,
            encoded,
            probabilities: candle_nn::ops::softmax(&logits, D::Minus1)?,
            log_probabilities: candle_nn::ops::log_softmax(&logits, D::Minus1)?,
            top_tokens: logits.argmax(D::Minus1)?,
            forced,
            text_tokens,
        })
    }

    /// The decoder's logits at the predicted positions, teacher-forced on the teacher's tokens.
    fn logits(&self, forced: &Forced, encoded: &Tensor) -> Result<Tensor> {
        let decoder = &self.model.decoder;
        let mut state = decoder.start(encoded)?;
        let h = decoder.forward(&forced.input, &mut state)?.narrow(1, forced.first, forced.count)?.squeeze(0)?;
        Ok(decoder.logits(&h)?)
    }

    /// The student's losses on a taught example at r.
    fn losses(&self, teaching: &Teaching, student: &[Arc<dyn EncoderBlock>], reduction: f64) -> Result<Distilled> {
        let model = self.model;
        let (encoded, _) =
            model.encoder.forward_window_with(student, &teaching.window, teaching.silence, CHUNK_FRAMES, &EncodeOptions { reduction })?;
        let logits = self.logits(&teaching.forced, &encoded)?;
        let agreeing_tokens =
            logits.argmax(D::Minus1)?.eq(&teaching.top_tokens)?.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize;
        let log_probabilities = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let kl = (&teaching.probabilities * (&teaching.log_probabilities - log_probabilities)?)?.sum(D::Minus1)?.mean_all()?;

        // Encoder MSE over the encoded block (the cached padding is the same for both).
        let (audio_frames, block_frames) = (teaching.audio_frames, teaching.block_frames);
        let frame_weights: Vec<f32> = (0..block_frames).map(|i| if i < audio_frames { 1.0 } else { self.pad_weight as f32 }).collect();
        let fw = Tensor::from_vec(frame_weights, (1, block_frames, 1), &model.device)?;
        let diff = (encoded.narrow(1, 0, block_frames)? - teaching.encoded.narrow(1, 0, block_frames)?)?;
        let sq = diff.sqr()?.broadcast_mul(&fw)?;
        let mse = (sq.sum_all()? / (fw.sum_all()?.to_scalar::<f32>()? as f64 * model.config.d_model as f64))?;
        Ok(Distilled { kl, mse, predicted_tokens: teaching.forced.count, agreeing_tokens })
    }
}

/// What the teacher gives an example: its window, encoding, transcript and distributions.
struct Teaching {
    /// The mel of the audio block, and the padding level of the rest of the 30 s window.
    window: Tensor,
    silence: f32,
    /// Encoder frames that hold audio, and those of the encoded block (audio and margin).
    audio_frames: usize,
    block_frames: usize,
    encoded: Tensor,
    /// Its next-token distributions at the predicted positions, and its most likely tokens.
    probabilities: Tensor,
    log_probabilities: Tensor,
    top_tokens: Tensor,
    forced: Forced,
    /// The transcript without special tokens (the next step's prompt).
    text_tokens: Vec<u32>,
}

/// Teacher forcing: prefix and transcript tokens, and the predicted positions (the last prefix
/// token onwards: `count` from `first`).
struct Forced {
    input: Tensor,
    first: usize,
    count: usize,
}

/// Held-out distillation losses of adapters at one r (see [`held_out_losses`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldOutLoss {
    pub reduction: f64,
    pub clips: usize,
    pub predicted_tokens: usize,
    /// KL(dense ‖ CoDA) per predicted token, over all the clips' tokens.
    pub kl_per_token: f64,
    /// Share of predicted tokens where the student's most likely token is the teacher's: what
    /// greedy decoding sees of the KL.
    pub token_agreement: f64,
    /// Encoder-output MSE, the mean over clips.
    pub encoder_mse: f64,
}

/// The training losses measured on clips the adapters never trained on, without augmentation
/// or prompts, teacher transcripts with timestamps (as transcription decodes). Far less noisy
/// than WER for comparing two adapter sets: every token's whole distribution counts, not
/// only whether the greedy choice flipped. Clips over 30 s are cut to their first window.
/// Teacher and student run their own layer stacks, whatever `model` has installed.
pub fn held_out_losses(
    model: &WhisperModel,
    weights: &CodaWeights,
    manifest: &std::path::Path,
    reductions: &[f64],
) -> Result<Vec<HeldOutLoss>> {
    let clips = load_clips(manifest)?;
    ensure!(!clips.is_empty(), "{}: no clips", manifest.display());
    let student = coda_stack(model, weights, false)?;
    let distiller = Distiller::new(model, TrainOptions::DEFAULT_PAD_WEIGHT);
    // Sums per r of KL × tokens, MSE, tokens and agreeing tokens; each clip is taught once.
    let mut sums = vec![(0.0, 0.0, 0, 0); reductions.len()];
    for clip in &clips {
        let teaching = distiller.teach(&clip[..clip.len().min(CHUNK_SAMPLES)], true, &[])?;
        for (&reduction, (kl, mse, tokens, agreeing)) in reductions.iter().zip(sums.iter_mut()) {
            let d = distiller.losses(&teaching, &student, reduction)?;
            *kl += d.kl.to_dtype(DType::F64)?.to_scalar::<f64>()? * d.predicted_tokens as f64;
            *mse += d.mse.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            *tokens += d.predicted_tokens;
            *agreeing += d.agreeing_tokens;
        }
    }
    Ok(reductions
        .iter()
        .zip(sums)
        .map(|(&reduction, (kl, mse, tokens, agreeing))| HeldOutLoss {
            reduction,
            clips: clips.len(),
            predicted_tokens: tokens,
            kl_per_token: kl / tokens as f64,
            token_agreement: agreeing as f64 / tokens as f64,
            encoder_mse: mse / clips.len() as f64,
        })
        .collect())
}

pub struct StepLog {
    pub step: usize,
    pub reduction: f64,
    pub loss: f64,
    pub kl: f64,
    pub mse: f64,
}

/// Train adapters; writes `adapters.safetensors`, `coda.json` and `train_log.csv` into
/// `opts.out_dir`, checkpointing as it goes. `progress` sees every step.
pub fn train(model: &mut WhisperModel, opts: &TrainOptions, progress: &mut dyn FnMut(&StepLog, f64)) -> Result<Vec<StepLog>> {
    ensure!(!opts.reductions.is_empty(), "no reduction factors to train for");
    // A fresh run checkpoints over whatever adapters are there (the shipped ones, for
    // `--out models/coda-tiny.en`), so it must not start where some already are.
    ensure!(
        opts.resume || !opts.out_dir.join("coda.json").exists(),
        "{}: already holds adapters (coda.json), which a fresh run would overwrite; --resume continues them, or choose another --out",
        opts.out_dir.display()
    );
    ensure!((0.0..=1.0).contains(&opts.timestamp_share), "--timestamp-share must be between 0 and 1, got {}", opts.timestamp_share);
    ensure!((0.0..=1.0).contains(&opts.synthetic_share), "--synthetic-share must be between 0 and 1, got {}", opts.synthetic_share);
    ensure!((0.0..=1.0).contains(&opts.prompt_share), "--prompt-share must be between 0 and 1, got {}", opts.prompt_share);
    ensure!(
        opts.synthetic_share == 0.0 || opts.synthetic_manifest.is_some(),
        "--synthetic-share {} needs --synthetic-manifest",
        opts.synthetic_share
    );
    let mut rng = Rng::new(opts.seed);
    let clips = load_clips(&opts.manifest)?;
    ensure!(!clips.is_empty(), "{}: no training clips", opts.manifest.display());
    let synthetic = match &opts.synthetic_manifest {
        Some(path) if opts.synthetic_share > 0.0 => {
            let synthetic = load_clips(path)?;
            ensure!(!synthetic.is_empty(), "{}: no training clips", path.display());
            synthetic
        }
        _ => Vec::new(),
    };
    let base_sha = model.weights_sha256()?;
    let fresh_routing = opts.routing.unwrap_or(Routing::Grid);
    let layers = opts.layers.clone().unwrap_or_else(|| crate::model::coda::default_layers(fresh_routing, model.config.encoder_layers));
    let weights = if opts.resume && opts.out_dir.join("coda.json").is_file() {
        let mut weights = CodaWeights::load(&opts.out_dir, &model.device).context("--resume: cannot load the checkpoint")?;
        if let Some(routing) = opts.routing {
            weights.config.routing = routing;
        }
        let mut weights = match opts.bottleneck {
            Some(b) if b != weights.config.bottleneck => {
                let d = model.config.d_model;
                // As fresh adapters' down projections: Kaiming-normal, from a stream of its own
                // so the run draws the same examples and r as one at the same seed without it.
                let mut init = Rng::new(opts.seed ^ 0x9e37_79b9_7f4a_7c15);
                weights.widen(b, &mut |rows, cols| (0..rows * cols).map(|_| (init.normal() * (2.0 / d as f64).sqrt()) as f32).collect())?
            }
            _ => weights,
        };
        if let Some(wanted) = &opts.layers {
            ensure!(
                weights.config.layers.iter().all(|l| wanted.contains(l)),
                "--resume: --layers {wanted:?} would drop adapted layers of the checkpoint ({:?})",
                weights.config.layers
            );
            if wanted.iter().any(|l| !weights.config.layers.contains(l)) {
                // New layers' adapters start fresh, from a stream of their own (so the run draws
                // the same examples and r as one at the same seed without them); the others
                // keep their weights.
                let mut config = weights.config.clone();
                config.layers = wanted.clone();
                config.layers.sort_unstable();
                config.layers.dedup();
                let grown = seeded_fresh(config, model, &mut Rng::new(opts.seed ^ 0x5851_f42d_4c95_7f2d))?;
                grown.copy_from(&weights)?;
                weights = grown;
            }
        }
        weights
    } else {
        let mut config = CodaConfig::new(layers, &model.name(), &base_sha);
        config.bottleneck = opts.bottleneck.unwrap_or(64);
        config.reductions = opts.reductions.clone();
        config.routing = fresh_routing;
        seeded_fresh(config, model, &mut rng)?
    };
    ensure!(weights.config.base_model_sha256 == base_sha, "checkpoint was trained on another base model");
    let mut weights = weights;
    weights.config.reduction_scale.extend(opts.reduction_scale.iter().copied());
    if opts.segments_up_to.is_some() {
        weights.config.segments_up_to = opts.segments_up_to;
    }
    // A resumed run keeps the record of what it started from.
    let resumed_from = (opts.resume && !weights.config.training.is_null()).then(|| weights.config.training.clone());
    weights.config.training = serde_json::json!({
        "manifest": opts.manifest.display().to_string(),
        "seed": opts.seed, "lr": opts.lr,
        "lr_schedule": format!("{:?}", opts.lr_schedule).to_lowercase(), "warmup_steps": opts.warmup_steps,
        "kl_weight": opts.kl_weight, "mse_weight": opts.mse_weight,
        "pad_weight": opts.pad_weight, "max_minutes": opts.max_minutes,
        "max_steps": (opts.max_steps != usize::MAX).then_some(opts.max_steps),
        "clip_seconds": [opts.min_seconds, opts.max_seconds],
        "timestamp_share": opts.timestamp_share,
        "synthetic_manifest": opts.synthetic_manifest.as_ref().map(|p| p.display().to_string()),
        "synthetic_share": opts.synthetic_share,
        "prompt_share": opts.prompt_share,
        // What r was drawn from; a resumed run may draw from fewer r than have gates.
        "sampled_reductions": opts.reductions,
        // A resumed run may switch routing (--routing), so each run records its own.
        "routing": weights.config.routing,
        "resumed_from": resumed_from,
    });
    let student_layers = coda_stack(model, &weights, true)?;
    // The budget gates start at 1 and must be able to reach ~0 within a run's few hundred steps
    // per r; Adam moves a parameter by about lr per step, so they get their own, larger rate.
    let (gate_vars, adapter_vars) = {
        let data = weights.vars.data().lock().expect("var map lock");
        let mut named: Vec<(&String, &candle_core::Var)> = data.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0)); // a fixed order, so runs are deterministic
        let (gates, others): (Vec<_>, Vec<_>) = named.into_iter().partition(|(name, _)| name.ends_with(".gates"));
        let vars = |named: Vec<(&String, &candle_core::Var)>| named.into_iter().map(|(_, var)| var.clone()).collect::<Vec<_>>();
        (vars(gates), vars(others))
    };
    let adam = |vars, lr| AdamW::new(vars, ParamsAdamW { lr, weight_decay: 0.0, ..Default::default() });
    let mut optimizer = adam(adapter_vars, opts.lr)?;
    let mut gate_optimizer = adam(gate_vars, opts.lr * GATE_LR_FACTOR)?;
    model.encoder.uninstall();
    let distiller = Distiller::new(model, opts.pad_weight);
    std::fs::create_dir_all(&opts.out_dir).with_context(|| format!("{}: cannot create", opts.out_dir.display()))?;
    let log_path = opts.out_dir.join("train_log.csv");
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    if log.metadata()?.len() == 0 {
        writeln!(log, "step,elapsed_s,reduction,loss,kl,mse")?;
    }
    let start = Instant::now();
    let mut last_checkpoint = Instant::now();
    let mut history = Vec::new();
    let mut previous_text: Vec<u32> = Vec::new();
    for step in 0..opts.max_steps {
        if start.elapsed().as_secs_f64() > opts.max_minutes * 60.0 {
            break;
        }
        let lr_factor = opts.lr_schedule.factor(
            step,
            opts.warmup_steps,
            run_progress(step, opts.max_steps, start.elapsed().as_secs_f64(), opts.max_minutes),
        );
        optimizer.set_learning_rate(opts.lr * lr_factor);
        gate_optimizer.set_learning_rate(opts.lr * GATE_LR_FACTOR * lr_factor);
        let pool = if drawn(&mut rng, opts.synthetic_share) { &synthetic } else { &clips };
        let audio = make_example(pool, &mut rng, opts.min_seconds, opts.max_seconds);
        let reduction = opts.reductions[rng.below(opts.reductions.len())];
        let timestamps = drawn(&mut rng, opts.timestamp_share);
        // Spread evenly over the steps rather than drawn, so a run keeps the examples and r of
        // the same seed without prompts: the two are a paired comparison.
        let prompted = ((step + 1) as f64 * opts.prompt_share).floor() > (step as f64 * opts.prompt_share).floor();
        let prompt: &[u32] = if prompted { &previous_text } else { &[] };
        let teaching = distiller.teach(&audio, timestamps, prompt)?;
        let Distilled { kl, mse, .. } = distiller.losses(&teaching, &student_layers, reduction)?;

        let loss = ((kl.clone() * opts.kl_weight)? + (mse.clone() * opts.mse_weight)?)?;
        let grads = loss.backward()?;
        optimizer.step(&grads)?;
        gate_optimizer.step(&grads)?;
        let entry = StepLog {
            step,
            reduction,
            loss: loss.to_dtype(DType::F64)?.to_scalar()?,
            kl: kl.to_dtype(DType::F64)?.to_scalar()?,
            mse: mse.to_dtype(DType::F64)?.to_scalar()?,
        };
        let elapsed = start.elapsed().as_secs_f64();
        writeln!(log, "{},{:.1},{},{:.5},{:.5},{:.5}", entry.step, elapsed, entry.reduction, entry.loss, entry.kl, entry.mse)?;
        progress(&entry, elapsed);
        history.push(entry);
        previous_text = teaching.text_tokens;
        if last_checkpoint.elapsed().as_secs_f64() > opts.checkpoint_minutes * 60.0 {
            weights.save(&opts.out_dir)?;
            last_checkpoint = Instant::now();
        }
    }
    if let Some(t) = weights.config.training.as_object_mut() {
        t.insert("steps_done".into(), serde_json::json!(history.len()));
        t.insert("minutes".into(), serde_json::json!(start.elapsed().as_secs_f64() / 60.0));
    }
    weights.save(&opts.out_dir)?;
    model.install_coda(weights)?;
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_schedule_falls_from_the_full_rate_to_zero_after_its_warm_up() {
        let cosine = |step, progress| LrSchedule::Cosine.factor(step, 0, progress);
        assert!((cosine(0, 0.0) - 1.0).abs() < 1e-12);
        assert!((cosine(50, 0.5) - 0.5).abs() < 1e-12);
        assert!(cosine(99, 0.99) < 1e-3);
        assert!((0..100).map(|s| cosine(s, s as f64 / 100.0)).collect::<Vec<_>>().windows(2).all(|w| w[1] < w[0]));
        // Warm-up ramps linearly to the scheduled rate, for either schedule.
        assert!((LrSchedule::Constant.factor(0, 10, 0.0) - 0.1).abs() < 1e-12);
        assert!((LrSchedule::Constant.factor(9, 10, 0.0) - 1.0).abs() < 1e-12);
        assert!((LrSchedule::Cosine.factor(4, 10, 0.5) - 0.25).abs() < 1e-12);
        assert_eq!(LrSchedule::Constant.factor(500, 10, 0.9), 1.0);
    }

    #[test]
    fn run_progress_counts_steps_when_they_bound_the_run_and_time_otherwise() {
        assert_eq!(run_progress(150, 600, 1e6, 1.0), 0.25);
        assert_eq!(run_progress(150, usize::MAX, 30.0, 2.0), 0.25);
    }
}
