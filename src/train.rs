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
    // A resumed run keeps the record of what it started from.
    let resumed_from = (opts.resume && !weights.config.training.is_null()).then(|| weights.config.training.clone());
    weights.config.training = serde_json::json!({
        "manifest": opts.manifest.display().to_string(),
        "seed": opts.seed, "lr": opts.lr, "kl_weight": opts.kl_weight, "mse_weight": opts.mse_weight,
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
    let student_layers = {
        let mut all: Vec<Arc<dyn EncoderBlock>> = model.encoder.dense_layers.iter().map(|l| l.clone() as Arc<dyn EncoderBlock>).collect();
        for (i, layer) in weights.layers(&model.encoder.dense_layers, true)? {
            all[i] = Arc::new(layer);
        }
        all
    };
    let dense_layers: Vec<Arc<dyn EncoderBlock>> = model.encoder.dense_layers.iter().map(|l| l.clone() as Arc<dyn EncoderBlock>).collect();
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
    let mel = MelFrontend::new(model.config.num_mel_bins);
    model.encoder.uninstall();
    let transcriber = Transcriber::new(model);
    std::fs::create_dir_all(&opts.out_dir).with_context(|| format!("{}: cannot create", opts.out_dir.display()))?;
    let log_path = opts.out_dir.join("train_log.csv");
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    if log.metadata()?.len() == 0 {
        writeln!(log, "step,elapsed_s,reduction,loss,kl,mse")?;
    }
    let start = Instant::now();
    let mut last_checkpoint = Instant::now();
    let mut history = Vec::new();
    let dev = &model.device;
    let eot = model.tokenizer.eot;
    let mut previous_text: Vec<u32> = Vec::new();
    for step in 0..opts.max_steps {
        if start.elapsed().as_secs_f64() > opts.max_minutes * 60.0 {
            break;
        }
        let pool = if drawn(&mut rng, opts.synthetic_share) { &synthetic } else { &clips };
        let audio = make_example(pool, &mut rng, opts.min_seconds, opts.max_seconds);
        let m = mel.compute(&audio, CHUNK_SAMPLES);
        // As inference runs it: the audio block is encoded, the padding comes from the cache.
        let audio_mel_frames = (audio.len() / HOP_LENGTH).min(CHUNK_FRAMES);
        let block = encoded_block_frames(audio_mel_frames);
        let window = Tensor::from_vec(m.window(0, block, m.silence), (1, model.config.num_mel_bins, block), dev)?;
        let reduction = opts.reductions[rng.below(opts.reductions.len())];
        let encode = |layers: &[Arc<dyn EncoderBlock>], reduction: f64| {
            model.encoder.forward_window_with(layers, &window, m.silence, CHUNK_FRAMES, &EncodeOptions { reduction })
        };

        let timestamps = drawn(&mut rng, opts.timestamp_share);

        // Spread evenly over the steps rather than drawn, so a run keeps the examples and r of
        // the same seed without prompts: the two are a paired comparison.
        let prompted = ((step + 1) as f64 * opts.prompt_share).floor() > (step as f64 * opts.prompt_share).floor();
        let prompt: &[u32] = if prompted { &previous_text } else { &[] };

        // Teacher: the frozen dense model and its own greedy transcript.
        let (teacher_enc, _) = encode(&dense_layers, 1.0)?;
        let (prefix, target) = transcriber.greedy_tokens(&teacher_enc, timestamps, prompt)?;
        let text_tokens: Vec<u32> = target.iter().copied().filter(|&t| t < eot).collect();
        let mut tokens = prefix.clone();
        tokens.extend(&target);
        let input = Tensor::new(tokens.as_slice(), dev)?.unsqueeze(0)?;
        // Positions whose next token is predicted: the last prefix token onwards.
        let first = prefix.len() - 1;
        let count = tokens.len() - first;
        let teacher_logits = {
            let mut state = model.decoder.start(&teacher_enc)?;
            let h = model.decoder.forward(&input, &mut state)?.narrow(1, first, count)?.squeeze(0)?;
            model.decoder.logits(&h)?
        };
        let teacher_p = candle_nn::ops::softmax(&teacher_logits, D::Minus1)?;
        let teacher_logp = candle_nn::ops::log_softmax(&teacher_logits, D::Minus1)?;

        // Student: CoDA layers at this step's r.
        let (student_enc, _) = encode(&student_layers, reduction)?;
        let student_logits = {
            let mut state = model.decoder.start(&student_enc)?;
            let h = model.decoder.forward(&input, &mut state)?.narrow(1, first, count)?.squeeze(0)?;
            model.decoder.logits(&h)?
        };
        let student_logp = candle_nn::ops::log_softmax(&student_logits, D::Minus1)?;
        let kl = (teacher_p * (teacher_logp - student_logp)?)?.sum(D::Minus1)?.mean_all()?;

        // Encoder MSE over the encoded block (the cached padding is the same for both): audio
        // frames weighted 1, the margin of padding after them pad_weight.
        let (audio_frames, block_frames) = (audio_mel_frames.div_ceil(2), block / 2);
        let frame_weights: Vec<f32> = (0..block_frames).map(|i| if i < audio_frames { 1.0 } else { opts.pad_weight as f32 }).collect();
        let fw = Tensor::from_vec(frame_weights, (1, block_frames, 1), dev)?;
        let diff = (student_enc.narrow(1, 0, block_frames)? - teacher_enc.narrow(1, 0, block_frames)?)?;
        let sq = diff.sqr()?.broadcast_mul(&fw)?;
        let mse = (sq.sum_all()? / (fw.sum_all()?.to_scalar::<f32>()? as f64 * model.config.d_model as f64))?;

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
        previous_text = text_tokens;
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
