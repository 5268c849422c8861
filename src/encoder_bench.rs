//! `coda-asr bench`: encoder milliseconds per 30 s window, dense against CoDA (or a baseline) at
//! each r, with the padding encoded or served from the silence cache, all in one run so the
//! ratios compare like with like.

use crate::mel::{CHUNK_FRAMES, HOP_LENGTH};
use crate::model::{EncodeOptions, EncodeStats, WhisperModel};
use crate::transcribe::{TranscribeOptions, Transcriber};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub encoder: String,
    pub reduction: f64,
    /// "encoded" (the whole padded window runs) or "cached" (silence cache).
    pub padding: &'static str,
    pub batch: usize,
    /// Median wall time per window (a batch's time divided by its size).
    pub ms_per_window: f64,
    pub speedup_vs_dense: f64,
    pub gflop: f64,
    pub dense_gflop: f64,
    pub encoded_frames: usize,
    pub heavy_frames: Vec<usize>,
    /// Median ms of the conv stem, then of each layer (see [`EncodeStats::stage_ms`]); the rest
    /// of `ms_per_window` is the final norm and, cached, the padding from the silence table.
    pub stage_ms: Vec<f64>,
}

pub struct BenchOptions {
    pub reductions: Vec<f64>,
    pub repeats: usize,
    /// Also time full windows in batches of this size (1: no batch rows).
    pub batch: usize,
}

/// Median of `repeats` timed runs after one untimed warm-up, and the warm-up's stats with
/// their stage times replaced by the timed runs' medians.
fn median(repeats: usize, mut run: impl FnMut() -> Result<EncodeStats>) -> Result<(f64, EncodeStats)> {
    let mut stats = run()?;
    let timed: Vec<EncodeStats> = (0..repeats.max(1)).map(|_| run()).collect::<Result<_>>()?;
    let median_of = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    stats.stage_ms = (0..stats.stage_ms.len()).map(|i| median_of(timed.iter().map(|s| s.stage_ms[i]).collect())).collect();
    Ok((median_of(timed.iter().map(|s| s.ms).collect()), stats))
}

/// Time `model` (CoDA or a baseline, labelled `name`) against `dense` on the first window of
/// `audio` (16 kHz).
pub fn run(model: &WhisperModel, name: &str, dense: &WhisperModel, audio: &[f32], opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let (t, dense_t) = (Transcriber::new(model), Transcriber::new(dense));
    let mel = t.log_mel(audio);
    let audio_frames = (audio.len() / HOP_LENGTH).min(CHUNK_FRAMES);
    let time_window = |t: &Transcriber, reduction: f64, silence_cache: bool| {
        let o = TranscribeOptions { encode: EncodeOptions { reduction }, silence_cache, ..Default::default() };
        median(opts.repeats, || Ok(t.encode_segment(&mel, 0, audio_frames, &o)?.1))
    };
    let (dense_ms, _) = time_window(&dense_t, 1.0, false)?;
    let mut rows = Vec::new();
    let configs = std::iter::once(("dense", dense, &dense_t, 1.0)).chain(opts.reductions.iter().map(|&r| (name, model, &t, r)));
    for (label, m, transcriber, r) in configs {
        let mut push = |padding, batch, ms: f64, s: &EncodeStats| {
            rows.push(BenchRow {
                encoder: label.to_string(),
                reduction: r,
                padding,
                batch,
                ms_per_window: ms,
                speedup_vs_dense: dense_ms / ms,
                gflop: s.flops / 1e9 / batch as f64,
                dense_gflop: s.dense_flops / 1e9 / batch as f64,
                encoded_frames: s.encoded_frames,
                heavy_frames: s.heavy_frames.clone(),
                stage_ms: s.stage_ms.clone(),
            })
        };
        for silence_cache in [false, true] {
            let (ms, stats) = time_window(transcriber, r, silence_cache)?;
            push(if silence_cache { "cached" } else { "encoded" }, 1, ms, &stats);
        }
        if opts.batch > 1 {
            let window = Tensor::from_vec(mel.window(0, CHUNK_FRAMES, 0.0), (1, mel.n_mels, CHUNK_FRAMES), &m.device)?.to_dtype(m.dtype)?;
            let batch = Tensor::cat(&vec![&window; opts.batch], 0)?;
            let encode = EncodeOptions { reduction: r };
            let (ms, stats) = median(opts.repeats, || Ok(m.encoder.forward(&batch, &encode)?.1))?;
            push("encoded", opts.batch, ms / opts.batch as f64, &stats);
        }
    }
    Ok(rows)
}

pub fn markdown(rows: &[BenchRow]) -> String {
    let mut s = String::from(
        "| encoder | r | padding | batch | ms / window | speed-up vs dense | GFLOP run (dense) | frames encoded | heavy frames per layer | ms: stem, each layer |\n",
    );
    s += "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |\n";
    for r in rows {
        let stages = r.stage_ms.iter().map(|ms| format!("{ms:.1}")).collect::<Vec<_>>().join(" / ");
        s += &format!(
            "| {} | {} | {} | {} | {:.1} | {:.2}x | {:.1} ({:.1}) | {} | {:?} | {stages} |\n",
            r.encoder,
            r.reduction,
            r.padding,
            r.batch,
            r.ms_per_window,
            r.speedup_vs_dense,
            r.gflop,
            r.dense_gflop,
            r.encoded_frames,
            r.heavy_frames
        );
    }
    s
}

/// Largest absolute difference between the dense encoder's output for the first window of
/// `audio` on `model`'s device and on the CPU in float32 (`reference`).
pub fn parity_max_abs_diff(model: &WhisperModel, reference: &WhisperModel, audio: &[f32]) -> Result<f32> {
    let encode = |m: &WhisperModel| -> Result<Tensor> {
        let t = Transcriber::new(m);
        let mel = t.log_mel(audio);
        let window = Tensor::from_vec(mel.window(0, CHUNK_FRAMES, 0.0), (1, mel.n_mels, CHUNK_FRAMES), &m.device)?.to_dtype(m.dtype)?;
        Ok(m.encoder.forward_dense(&window)?.0.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)
    };
    Ok((encode(model)? - encode(reference)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}
