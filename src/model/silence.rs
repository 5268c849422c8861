//! Silence caching: encode only the audio part of a window, serve the padding from a table.
//!
//! Whisper always encodes a 30 s window; a 5 s clip is 83 % padding, and padding frames cost
//! as much as speech. Here a window is encoded as two blocks that do not attend to each other
//! (WhisperKit's block-diagonal mask): the frames holding audio, plus a short margin of the
//! padding after it, run through the layers; every later frame is taken, at its own position,
//! from the dense encoding of a window that is nothing but padding. The decoder still sees a
//! full window whose padding looks as it always does, so it stops where the audio stops.
//!
//! A padding frame's mel value (its "level") depends on the clip's loudness, because openai
//! clamps the log-mel at max − 8. The table holds dense encodings at levels [`GRID_STEP`] apart
//! and interpolates linearly between the two around a clip's level: on tiny.en that is within
//! 2 % RMS of the exact encoding. `coda-asr import` precomputes the grid into
//! `silence.safetensors` next to the weights; missing grid points are computed on first use.

use super::encoder::Encoder;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// Spacing of the precomputed padding levels (normalised log-mel units).
pub const GRID_STEP: f32 = 0.125;
/// The levels a padding frame can take: −1.5 is the floor of log10(1e-10) after scaling;
/// above 0.25 the clip would have to be far louder than full-scale speech.
const GRID_RANGE: (f32, f32) = (-1.5, 0.25);
pub const FILE_NAME: &str = "silence.safetensors";

/// The grid points whose weighted sum is the padding at `level`, and their weights (one point
/// when the level is on the grid).
pub fn blend(level: f32) -> Vec<(i32, f64)> {
    let position = level / GRID_STEP;
    let below = position.floor() as i32;
    let weight_above = (position - below as f32) as f64;
    if weight_above < 1e-6 {
        vec![(below, 1.0)]
    } else {
        vec![(below, 1.0 - weight_above), (below + 1, weight_above)]
    }
}

/// Σ weight · tensor over a [`blend`]'s parts.
pub fn weighted_sum(parts: impl IntoIterator<Item = Result<(Tensor, f64)>>) -> Result<Tensor> {
    let mut sum: Option<Tensor> = None;
    for part in parts {
        let (t, weight) = part?;
        let t = if weight == 1.0 { t } else { (t * weight)? };
        sum = Some(match sum {
            None => t,
            Some(s) => (s + t)?,
        });
    }
    sum.context("an empty blend")
}

/// Dense encodings of all-padding windows, keyed by grid index (level / GRID_STEP).
#[derive(Default)]
pub struct SilenceCache {
    grid: Mutex<HashMap<i32, Tensor>>,
}

impl SilenceCache {
    /// The padding encoding at `level`, [1, max_frames, d]: interpolated between grid points.
    pub fn encoding(&self, encoder: &Encoder, level: f32) -> Result<Tensor> {
        weighted_sum(blend(level).into_iter().map(|(index, weight)| Ok((self.grid_point(encoder, index)?, weight))))
    }

    /// The dense encoding of an all-padding window at grid point `index`, [1, max_frames, d].
    pub fn grid_point(&self, encoder: &Encoder, index: i32) -> Result<Tensor> {
        if let Some(t) = self.grid.lock().expect("silence cache lock").get(&index) {
            return Ok(t.clone());
        }
        // Computed outside the lock: two threads may both compute a missing point once, which
        // is cheaper than making every reader wait behind a dense encode.
        let level = index as f32 * GRID_STEP;
        let mel = Tensor::full(level, (1, encoder.n_mels, 2 * encoder.max_frames), encoder.positions.device())?
            .to_dtype(encoder.positions.dtype())?;
        let (encoded, _) = encoder.forward_dense(&mel)?;
        self.grid.lock().expect("silence cache lock").insert(index, encoded.clone());
        Ok(encoded)
    }

    /// Compute every grid point of the level range (what `import` stores).
    pub fn fill(&self, encoder: &Encoder) -> Result<()> {
        let (lo, hi) = ((GRID_RANGE.0 / GRID_STEP).round() as i32, (GRID_RANGE.1 / GRID_STEP).round() as i32);
        for index in lo..=hi {
            self.grid_point(encoder, index)?;
        }
        Ok(())
    }

    /// Save the grid as float16 (the interpolation error is far above float16's).
    pub fn save(&self, path: &Path) -> Result<()> {
        let grid = self.grid.lock().expect("silence cache lock");
        let tensors: HashMap<String, Tensor> =
            grid.iter().map(|(i, t)| Ok((format!("level.{i}"), t.to_dtype(DType::F16)?))).collect::<Result<_>>()?;
        candle_core::safetensors::save(&tensors, path).with_context(|| format!("{}: cannot write", path.display()))
    }

    /// Load a grid saved by [`SilenceCache::save`]; `frames`×`d` must match the encoder.
    pub fn load(path: &Path, frames: usize, d: usize, device: &Device, dtype: DType) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, device).with_context(|| format!("{}: cannot read", path.display()))?;
        let mut grid = HashMap::new();
        for (name, t) in tensors {
            let index: i32 = name
                .strip_prefix("level.")
                .and_then(|i| i.parse().ok())
                .with_context(|| format!("{}: unexpected tensor {name:?}", path.display()))?;
            anyhow::ensure!(
                t.dims() == [1, frames, d],
                "{}: {name} has shape {:?}, the encoder makes [1, {frames}, {d}]",
                path.display(),
                t.dims()
            );
            grid.insert(index, t.to_dtype(dtype)?);
        }
        Ok(Self { grid: Mutex::new(grid) })
    }

    pub fn len(&self) -> usize {
        self.grid.lock().expect("silence cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
