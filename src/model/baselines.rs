//! Training-free ways to cut encoder cost, kept as baselines for CoDA in the same harness:
//! - [`TopKNormLayer`]: each layer runs its heavy branch on the top-k frames by L2 norm and
//!   passes the rest through unchanged (no adapters, no learned router).
//! - [`GridLayer`]: the heavy branch on k evenly spaced frames, the skipped frames' updates
//!   interpolated from their grid neighbours: CoDA's grid routing with no adapters (in the
//!   layers CoDA adapts by default).
//! - whisper.cpp's `audio_ctx` (encode only the frames that hold audio) lives in the
//!   transcriber as [`crate::transcribe::TranscribeOptions::audio_ctx`].

use super::coda::{add_grid_update, add_heavy_update, top_k_in_time_order};
use super::encoder::{layer_flops, BlockStats, DenseLayer, EncodeOptions, EncoderBlock};
use anyhow::Result;
use candle_core::{Tensor, D};
use std::sync::Arc;

/// The heavy frames k and the FLOPs of a reduced layer at this call's r, or None when k is every
/// frame (r = 1): then the layer is the dense one.
fn reduced_cost(dense: &DenseLayer, x: &Tensor, opts: &EncodeOptions) -> Result<Option<(usize, f64)>> {
    let (batch, n, _) = x.dims3()?;
    let k = opts.heavy_frames(n);
    Ok((k < n).then(|| (k, batch as f64 * layer_flops(k, dense.d, dense.ffn))))
}

pub struct TopKNormLayer {
    pub dense: Arc<DenseLayer>,
}

impl EncoderBlock for TopKNormLayer {
    fn forward(&self, x: &Tensor, opts: &EncodeOptions) -> Result<(Tensor, BlockStats)> {
        let Some((k, flops)) = reduced_cost(&self.dense, x, opts)? else { return self.dense.forward(x, opts) };
        let norms: Vec<Vec<f32>> = x.sqr()?.sum(D::Minus1)?.to_vec2()?;
        let mut rows = Vec::with_capacity(norms.len());
        for (bi, row) in norms.iter().enumerate() {
            let idx = Tensor::new(top_k_in_time_order(row, k).as_slice(), x.device())?;
            let xb = x.narrow(0, bi, 1)?;
            rows.push(add_heavy_update(&self.dense, &xb, &xb, &idx, None)?);
        }
        let y = if rows.len() == 1 { rows.pop().expect("one row") } else { Tensor::cat(&rows, 0)? };
        Ok((y, BlockStats { heavy_frames: k, flops }))
    }
}

/// Every encoder layer as a norm-routed top-k layer.
pub fn top_k_norm_layers(dense: &[Arc<DenseLayer>]) -> Vec<(usize, Arc<dyn EncoderBlock>)> {
    dense.iter().enumerate().map(|(i, l)| (i, Arc::new(TopKNormLayer { dense: l.clone() }) as Arc<dyn EncoderBlock>)).collect()
}

pub struct GridLayer {
    pub dense: Arc<DenseLayer>,
}

impl EncoderBlock for GridLayer {
    fn forward(&self, x: &Tensor, opts: &EncodeOptions) -> Result<(Tensor, BlockStats)> {
        let Some((k, flops)) = reduced_cost(&self.dense, x, opts)? else { return self.dense.forward(x, opts) };
        Ok((add_grid_update(&self.dense, x, x, opts.reduction, super::coda::Routing::Grid)?, BlockStats { heavy_frames: k, flops }))
    }
}

/// The layers CoDA adapts by default with grid routing, as grid-routed layers without adapters.
pub fn grid_layers(dense: &[Arc<DenseLayer>]) -> Vec<(usize, Arc<dyn EncoderBlock>)> {
    super::coda::default_layers(super::coda::Routing::Grid, dense.len())
        .into_iter()
        .map(|i| (i, Arc::new(GridLayer { dense: dense[i].clone() }) as Arc<dyn EncoderBlock>))
        .collect()
}
