//! CoDA: conditional adapters in the encoder (Li et al. 2023, arXiv 2304.04947; routing as in
//! CoLT5, arXiv 2303.09752).
//!
//! Each adapted layer keeps the frozen pretrained layer as its heavy branch and adds:
//! - a router, score s_i = norm(x_i) · u, that picks the top k = ceil(n / r) frames;
//! - a light parallel adapter on every frame: LayerNorm → Linear(d→b) → GELU → Linear(b→d);
//! - the merge y_i = x_i + adapter(x_i) + λ_i Δ_i for selected frames (Δ = heavy(x_sel) − x_sel,
//!   attention only among the selected frames, in time order), y_i = x_i + adapter(x_i) else.
//!
//! λ comes from a soft top-k (entropy-regularised optimal transport), differentiable so the
//! router learns from the loss; at inference the hard top-k of s picks the same frames (λ is
//! monotone in s) and their λ is kept.
//!
//! [`Routing::Grid`] is the other routing this module offers: the heavy frames sit on a regular
//! time grid (k = ceil(n / r) of them, r frames apart) and every skipped frame gets the heavy
//! update interpolated linearly from its two grid neighbours, y_i = x_i + adapter(x_i) + Δ̃_i.
//! Speech encodings change little from one 20 ms frame to the next, so a skipped frame's update
//! is close to its neighbours'; a learned top-k leaves runs of frames with no update at all,
//! which the decoder has never seen (README, Measured, has both). The grid depends only on n
//! and r, so no data leaves the device to route.
//! [`Routing::PooledGrid`] (the shipped adapters') feeds the heavy layer the mean of each grid
//! frame's stretch of r frames instead of the grid frame alone: on a plain grid the frames
//! between grid frames never reach the pretrained attention, and that is most of what r = 4
//! loses (README, CoDA). [`Routing::PooledGridFineContext`] goes one step further: the heavy
//! layer's queries (and its FFN) stay on the k pooled frames, but its attention reads keys and
//! values from stretches half as long, so attention sees the sequence at twice the grid's
//! resolution for a sixth more work at r = 4.

use super::encoder::{attending_layer_flops, layer_flops, BlockStats, DenseLayer, EncodeOptions, EncoderBlock};
use super::layers::{normalize_last_dim, Gelu, Norm};
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How a conditional layer picks its heavy frames and what the others get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// The paper's: learned router scores, hard top-k, λ from the soft top-k; skipped frames
    /// get the adapter only.
    #[default]
    TopK,
    /// Heavy frames evenly spaced in time; skipped frames get the heavy update interpolated
    /// from their grid neighbours (plus the adapter). The router is not used.
    Grid,
    /// As `Grid`, but the heavy layer's k inputs are the means of the k stretches of r frames
    /// (the stretch around each grid frame) rather than the grid frames themselves, so every
    /// frame's content reaches the pretrained attention and FFN.
    PooledGrid,
    /// As `PooledGrid`, but the heavy layer's attention reads its keys and values from the
    /// means of stretches of r / 2 frames (every frame when r ≤ 2), twice as many as its
    /// queries; the queries, the residual and the FFN stay on the k pooled frames.
    PooledGridFineContext,
    /// As `PooledGrid`, but every [`SEGMENT_BLOCK`] consecutive grid stretches are cut again
    /// where the layer's input changes (as many stretches, the least sum of squares within
    /// them), so a pooled frame stands for a steady stretch of sound rather than a fixed
    /// 20·r ms, and the heavy attention weighs each pooled frame by its length.
    PooledSegments,
}

impl Routing {
    /// Grid-like routings: one heavy frame per stretch of about r frames, updates
    /// interpolated between them, no router.
    pub fn is_grid(self) -> bool {
        matches!(self, Routing::Grid | Routing::PooledGrid | Routing::PooledGridFineContext | Routing::PooledSegments)
    }
}

/// The reduction of the keys and values of a [`Routing::PooledGridFineContext`] layer at r.
pub fn context_reduction(r: f64) -> f64 {
    (r / 2.0).max(1.0)
}

/// What is saved next to the adapter weights (`coda.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodaConfig {
    /// Encoder layers that are conditional (the others stay dense).
    pub layers: Vec<usize>,
    pub bottleneck: usize,
    /// Reduction factors the adapters were trained for; any r ≥ 1 runs, these are tested.
    pub reductions: Vec<f64>,
    pub default_reduction: f64,
    /// Soft top-k temperature and iteration count.
    pub epsilon: f64,
    pub iterations: usize,
    /// Older configs have no field: they were trained with the learned top-k.
    #[serde(default)]
    pub routing: Routing,
    /// Each adapter scales its bottleneck by a learned gate per trained r (older configs have
    /// none). One set shared by every r otherwise learns the large corrections r = 4…8 need,
    /// and those hurt r = 2 (README, CoDA).
    #[serde(default)]
    pub budget_gates: bool,
    /// Layers that run at a lower reduction than the call's r: layer l runs at
    /// max(1, r × scale[l]) (absent: 1, the call's r). Layer 0 works on the conv stem's
    /// frames and loses the most when reduced, and it is half of the encoder's work at r = 4.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub reduction_scale: std::collections::BTreeMap<usize, f64>,
    /// With [`Routing::PooledSegments`], the largest r (the call's) that cuts stretches by
    /// content; above it the layers pool on the grid (absent: every r). Cut by content, r = 2
    /// came a quarter closer to the dense model in held-out KL, and r = 4 moved away from it
    /// (README, CoDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments_up_to: Option<f64>,
    pub base_model: String,
    pub base_model_sha256: String,
    #[serde(default)]
    pub training: serde_json::Value,
}

impl CodaConfig {
    pub fn new(layers: Vec<usize>, base_model: &str, base_model_sha256: &str) -> Self {
        Self {
            layers,
            bottleneck: 64,
            reductions: vec![2.0, 3.0, 4.0, 6.0, 8.0],
            // Dense until a budget asks for less: the shipped adapters lose accuracy at r ≥ 2
            // on windows full of speech (see README, Measured).
            default_reduction: 1.0,
            epsilon: 1.0,
            iterations: 30,
            routing: Routing::Grid,
            budget_gates: true,
            reduction_scale: Default::default(),
            segments_up_to: None,
            base_model: base_model.to_string(),
            base_model_sha256: base_model_sha256.to_string(),
            training: serde_json::Value::Null,
        }
    }

    /// Per encoder layer, the multiple of the call's r it runs at (0: a dense layer): what
    /// the live controller's cost model needs.
    pub fn layer_reduction_scales(&self, encoder_layers: usize) -> Vec<f64> {
        (0..encoder_layers).map(|l| if self.layers.contains(&l) { self.reduction_scale_of(l) } else { 0.0 }).collect()
    }

    /// The multiple of the call's r that adapted layer `layer` runs at (1 when not listed).
    pub fn reduction_scale_of(&self, layer: usize) -> f64 {
        self.reduction_scale.get(&layer).copied().unwrap_or(1.0)
    }

    /// The trained r that get a budget gate each (None: no gates).
    pub fn gated_reductions(&self) -> Option<&[f64]> {
        self.budget_gates.then_some(self.reductions.as_slice())
    }
}

/// Soft top-k weights λ for scores s [b, n]: Σλ = k per row, 0 ≤ λ ≤ 1, monotone in s.
/// The CoLT5 iteration a ← ε ln k − ε logsumexp((s + b)/ε), b ← min(−s − a, 0), with
/// λ = exp((s + a + b)/ε), converges slowly when k is a large share of n, so it starts from its
/// fixed point, found exactly by bisection (Σ exp(min(s + a, 0)/ε) = k is monotone in a); the
/// differentiable iterations then stay there and carry the gradient to s.
pub fn soft_top_k(scores: &Tensor, k: usize, epsilon: f64, iterations: usize) -> Result<Tensor> {
    let rows: Vec<Vec<f32>> = scores.detach().to_dtype(DType::F32)?.flatten_to(D::Minus2)?.to_vec2()?;
    soft_top_k_from_rows(scores, &rows, k, epsilon, iterations)
}

/// [`soft_top_k`] for callers that already hold the scores on the host (one copy per layer).
pub fn soft_top_k_from_rows(scores: &Tensor, rows: &[Vec<f32>], k: usize, epsilon: f64, iterations: usize) -> Result<Tensor> {
    let n = scores.dim(D::Minus1)?;
    ensure!(k >= 1 && k <= n, "soft top-k: k = {k} with {n} scores");
    if k == n {
        return Ok(scores.ones_like()?);
    }
    let a0: Vec<f32> = rows.iter().map(|r| solve_threshold(r, k, epsilon) as f32).collect();
    let mut a = Tensor::from_vec(a0, scores.dims()[..scores.rank() - 1].to_vec(), scores.device())?.unsqueeze(D::Minus1)?;
    let ln_k = (k as f64).ln();
    let mut b = scores.broadcast_add(&a)?.neg()?.minimum(0f64)?;
    // Without gradients the iterations would only confirm the fixed point: skip them.
    let iterations = if scores.track_op() { iterations } else { 0 };
    for _ in 0..iterations {
        let z = ((scores + &b)? / epsilon)?;
        a = ((logsumexp_last(&z)? * -epsilon)? + epsilon * ln_k)?;
        b = scores.broadcast_add(&a)?.neg()?.minimum(0f64)?;
    }
    Ok((scores.broadcast_add(&a)? + &b)?.affine(1.0 / epsilon, 0.0)?.exp()?)
}

/// The a with Σ exp(min(s_i + a, 0)/ε) = k, by bisection in f64.
fn solve_threshold(s: &[f32], k: usize, epsilon: f64) -> f64 {
    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let min = s.iter().copied().fold(f32::INFINITY, f32::min) as f64;
    let mass = |a: f64| s.iter().map(|&x| ((x as f64 + a).min(0.0) / epsilon).exp()).sum::<f64>();
    // At a = −min every term is 1 (mass n ≥ k); far below −max the mass vanishes.
    let (mut lo, mut hi) = (-max - epsilon * (s.len() as f64).ln() - 50.0 * epsilon, -min);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mass(mid) < k as f64 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// logsumexp over the last dimension, keeping it (differentiable, stable).
fn logsumexp_last(z: &Tensor) -> Result<Tensor> {
    let max = z.max_keepdim(D::Minus1)?.detach();
    Ok((z.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + max)?)
}

/// Indices of the k largest values of a row, in ascending (time) order.
pub fn top_k_in_time_order(row: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let k = k.min(row.len());
    if k < row.len() {
        idx.select_nth_unstable_by(k, |&a, &b| row[b as usize].total_cmp(&row[a as usize]));
        idx.truncate(k);
    }
    idx.sort_unstable();
    idx
}

/// For one sequence xb [1, n, d]: run the heavy layer on the frames at `idx` (time order, so
/// attention sees only them) and add its update, optionally weighted [1, k, 1], to `base` at
/// those frames.
pub fn add_heavy_update(dense: &DenseLayer, xb: &Tensor, base: &Tensor, idx: &Tensor, weights: Option<&Tensor>) -> Result<Tensor> {
    let sel = xb.index_select(idx, 1)?;
    let mut delta = (dense.run(&sel)? - &sel)?;
    if let Some(w) = weights {
        delta = delta.broadcast_mul(w)?;
    }
    Ok(base.index_add(idx, &delta, 1)?)
}

/// Encoder layers adapted by default. With grid routing the first layer stays dense: it works
/// on the conv stem's 50 Hz frames, and on a grid of every fourth frame it breaks decoding
/// (32 train.tsv clips, no adapters, r = 4: 50 % WER with it on the grid, 14 % with it dense,
/// dense encoder 5 %); the later layers take the grid well.
pub fn default_layers(routing: Routing, encoder_layers: usize) -> Vec<usize> {
    match routing {
        Routing::Grid | Routing::PooledGrid | Routing::PooledGridFineContext | Routing::PooledSegments => (1..encoder_layers).collect(),
        Routing::TopK => (0..encoder_layers).collect(),
    }
}

/// The heavy frames of n for reduction factor r: k = ceil(n / r) of them (as
/// [`EncodeOptions::heavy_frames`]), one in the middle of every stretch of r frames from the
/// first, in time order. Frame i's place on the grid depends on i and r only, not on n: a
/// streaming recogniser encodes a buffer that grows by 50 frames a step, and a grid spread
/// over n (the middle of every n / k stretch, as before) moved by up to two frames between
/// consecutive passes at r = 4, so they alternated between two readings and agreed on nothing
/// for seconds. The last frames are pulled back inside the sequence when r does not divide n.
pub fn grid_frames(n: usize, r: f64) -> Vec<u32> {
    let k = EncodeOptions { reduction: r }.heavy_frames(n);
    let r = r.max(1.0);
    (0..k).map(|j| (((j as f64 + 0.5) * r) as usize).min(n - k + j) as u32).collect()
}

/// For every frame of n, where its update comes from: the positions (in `selected`, time
/// order) of the selected frames on either side and their linear-interpolation weights. A
/// selected frame takes its own update; frames before the first or after the last selected
/// frame take the nearest one's.
pub struct Interpolation {
    pub left: Vec<u32>,
    pub right: Vec<u32>,
    pub left_weight: Vec<f32>,
    pub right_weight: Vec<f32>,
}

impl Interpolation {
    pub fn new(selected: &[u32], n: usize) -> Self {
        Self::at(&selected.iter().map(|&i| i as f32).collect::<Vec<_>>(), n)
    }

    /// As [`Interpolation::new`] for updates that sit at `positions` (increasing, in frames,
    /// possibly between frames: the centres of [`Routing::PooledSegments`]' stretches).
    pub fn at(positions: &[f32], n: usize) -> Self {
        let mut plan = Self {
            left: Vec::with_capacity(n),
            right: Vec::with_capacity(n),
            left_weight: Vec::with_capacity(n),
            right_weight: Vec::with_capacity(n),
        };
        let last = positions.len().saturating_sub(1);
        let mut next = 0usize; // first position ≥ i
        for i in 0..n {
            let i = i as f32;
            while next < positions.len() && positions[next] < i {
                next += 1;
            }
            let (l, r, t) = if next < positions.len() && positions[next] == i {
                (next, next, 0.0)
            } else if next == 0 {
                (0, 0, 0.0)
            } else if next == positions.len() {
                (last, last, 0.0)
            } else {
                let (p, q) = (positions[next - 1], positions[next]);
                (next - 1, next, (i - p) / (q - p))
            };
            plan.left.push(l as u32);
            plan.right.push(r as u32);
            plan.left_weight.push(1.0 - t);
            plan.right_weight.push(t);
        }
        plan
    }

    /// Updates of the selected frames [b, k, d] → updates of all n frames [b, n, d].
    pub fn apply(&self, delta: &Tensor) -> Result<Tensor> {
        let (device, n) = (delta.device(), self.left.len());
        let weights = |w: &[f32]| Tensor::from_slice(w, (1, n, 1), device)?.to_dtype(delta.dtype());
        let left = delta.index_select(&Tensor::new(self.left.as_slice(), device)?, 1)?;
        let right = delta.index_select(&Tensor::new(self.right.as_slice(), device)?, 1)?;
        Ok((left.broadcast_mul(&weights(&self.left_weight)?)? + right.broadcast_mul(&weights(&self.right_weight)?)?)?)
    }

    /// base [b, n, d] + [`Interpolation::apply`]`(delta)`. On the host (f32, no gradient) one
    /// pass over the frames does what six tensor ops did, with the same arithmetic in the same
    /// order: at r = 4 those ops, each a fresh buffer handed between threads, cost more than
    /// their arithmetic.
    pub fn add_to(&self, base: &Tensor, delta: &Tensor) -> Result<Tensor> {
        if !(on_host(base) && on_host(delta)) {
            return Ok((base + self.apply(delta)?)?);
        }
        let (b, n, d) = base.dims3()?;
        let k = delta.dim(1)?;
        let mut out = vec![0f32; b * n * d];
        with_host_f32(base, |base| {
            with_host_f32(delta, |delta| {
                for (seq, (out, base)) in out.chunks_exact_mut(n * d).zip(base.chunks_exact(n * d)).enumerate() {
                    let delta = &delta[seq * k * d..(seq + 1) * k * d];
                    for (i, (out, base)) in out.chunks_exact_mut(d).zip(base.chunks_exact(d)).enumerate() {
                        let (l, r) = (self.left[i] as usize, self.right[i] as usize);
                        let (wl, wr) = (self.left_weight[i], self.right_weight[i]);
                        let (left, right) = (&delta[l * d..(l + 1) * d], &delta[r * d..(r + 1) * d]);
                        for c in 0..d {
                            out[c] = base[c] + (left[c] * wl + right[c] * wr);
                        }
                    }
                }
            })
        })??;
        Ok(Tensor::from_vec(out, (b, n, d), &Device::Cpu)?)
    }
}

/// Whether an op on x may run as a loop over host memory: f32 on the CPU and no gradient to
/// track (training keeps the tensor ops, which autograd differentiates).
fn on_host(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op()
}

/// Runs `f` on the f32 values of a CPU tensor in row-major order: its own buffer when it is
/// contiguous (no copy), else a contiguous copy.
fn with_host_f32<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (storage, layout) = x.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&data[start..end]));
        }
    }
    Ok(f(&x.flatten_all()?.to_vec1::<f32>()?))
}

/// The stretch of frames grid frame j stands for: [floor(j·r), floor((j + 1)·r)) cut at n.
/// The k stretches of [`grid_frames`] are disjoint, cover all n frames and, like the grid,
/// depend on j and r only (the last one is cut by n).
pub fn grid_stretches(n: usize, r: f64) -> Vec<(usize, usize)> {
    let k = EncodeOptions { reduction: r }.heavy_frames(n);
    let r = r.max(1.0);
    (0..k)
        .map(|j| {
            let start = ((j as f64 * r) as usize).min(n - k + j);
            (start, (((j + 1) as f64 * r) as usize).clamp(start + 1, n))
        })
        .collect()
}

/// The mean of every grid stretch of x [b, n, d] → [b, k, d]. Gathered as one weighted
/// index_select per offset inside a stretch (at most ceil(r) of them), so it costs O(n·d)
/// and trains like any other tensor op.
pub fn pool_stretches(x: &Tensor, r: f64) -> Result<Tensor> {
    pool_over(x, &grid_stretches(x.dim(1)?, r))
}

/// The mean of each of the given stretches of x [b, n, d] → [b, stretches, d].
pub fn pool_over(x: &Tensor, stretches: &[(usize, usize)]) -> Result<Tensor> {
    if on_host(x) {
        return pool_on_host(x, stretches);
    }
    let longest = stretches.iter().map(|(a, b)| b - a).max().unwrap_or(1);
    let mut pooled: Option<Tensor> = None;
    for offset in 0..longest {
        let idx: Vec<u32> = stretches.iter().map(|&(a, b)| (a + offset).min(b - 1) as u32).collect();
        let w: Vec<f32> = stretches.iter().map(|&(a, b)| if a + offset < b { 1.0 / (b - a) as f32 } else { 0.0 }).collect();
        let w = Tensor::from_slice(&w, (1, w.len(), 1), x.device())?.to_dtype(x.dtype())?;
        let part = x.index_select(&Tensor::new(idx.as_slice(), x.device())?, 1)?.broadcast_mul(&w)?;
        pooled = Some(match pooled {
            Some(sum) => (sum + part)?,
            None => part,
        });
    }
    pooled.context("a sequence with no frames")
}

/// [`pool_stretches`] in one pass over host memory, summing in the same order (the stretch's
/// frames in time, each times 1 / its length).
fn pool_on_host(x: &Tensor, stretches: &[(usize, usize)]) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    let k = stretches.len();
    let mut out = vec![0f32; b * k * d];
    with_host_f32(x, |x| {
        for (seq, out) in x.chunks_exact(n * d).zip(out.chunks_exact_mut(k * d)) {
            for (&(start, end), mean) in stretches.iter().zip(out.chunks_exact_mut(d)) {
                let w = 1.0 / (end - start) as f32;
                mean.iter_mut().zip(&seq[start * d..(start + 1) * d]).for_each(|(m, &v)| *m = v * w);
                for frame in start + 1..end {
                    mean.iter_mut().zip(&seq[frame * d..(frame + 1) * d]).for_each(|(m, &v)| *m = *m + v * w);
                }
            }
        }
    })?;
    Ok(Tensor::from_vec(out, (b, k, d), &Device::Cpu)?)
}

/// Grid routing for a whole batch x [b, n, d]: the heavy layer runs on the grid frames of
/// every sequence for reduction factor r (one batched call), or on the means of their
/// stretches with the pooled routings, and `base` gets the interpolated updates. Stretches cut
/// by content ([`Routing::PooledSegments`]) differ per sequence: [`add_segment_update`].
pub fn add_grid_update(dense: &DenseLayer, x: &Tensor, base: &Tensor, r: f64, routing: Routing) -> Result<Tensor> {
    let n = x.dim(1)?;
    let selected = grid_frames(n, r);
    let (sel, heavy) = match routing {
        Routing::PooledSegments => return add_segment_update(dense, x, base, r),
        Routing::PooledGrid => {
            let sel = pool_stretches(x, r)?;
            let heavy = dense.run(&sel)?;
            (sel, heavy)
        }
        Routing::PooledGridFineContext => {
            let sel = pool_stretches(x, r)?;
            let r_context = context_reduction(r);
            let context = if r_context <= 1.0 { x.clone() } else { pool_stretches(x, r_context)? };
            let heavy = dense.run_attending(&sel, &context)?;
            (sel, heavy)
        }
        Routing::Grid | Routing::TopK => {
            let sel = x.index_select(&Tensor::new(selected.as_slice(), x.device())?, 1)?;
            let heavy = dense.run(&sel)?;
            (sel, heavy)
        }
    };
    let delta = (heavy - &sel)?;
    Interpolation::new(&selected, n).add_to(base, &delta)
}

/// Grid stretches cut again per block by [`Routing::PooledSegments`]: 8 of 20·r ms each (0.32 s
/// at r = 2, 0.64 s at r = 4, where they are about as many as the phones spoken), short enough
/// for an exact cut. Blocks start where grid stretches do, so a frame's stretch depends only on
/// the frames of its own block: a streaming buffer that grows changes its last block only.
pub const SEGMENT_BLOCK: usize = 8;

/// [`Routing::PooledSegments`]' stretches of one sequence x ([n, d], row-major) at r: each
/// block of [`SEGMENT_BLOCK`] grid stretches cut into as many stretches, with the least sum of
/// squared distances of frames from their stretch's mean. Same count as [`grid_stretches`].
pub fn content_stretches(x: &[f32], d: usize, r: f64) -> Vec<(usize, usize)> {
    let n = x.len() / d;
    let grid = grid_stretches(n, r);
    let mut out = Vec::with_capacity(grid.len());
    for block in grid.chunks(SEGMENT_BLOCK) {
        let (start, end) = (block[0].0, block[block.len() - 1].1);
        out.extend(cut_block(&x[start * d..end * d], d, block.len()).into_iter().map(|(a, b)| (start + a, start + b)));
    }
    out
}

/// Multiply-adds of [`content_stretches`] (the pair costs dominate), for the FLOP count.
pub fn content_stretches_flops(n: usize, d: usize, r: f64) -> f64 {
    let grid = grid_stretches(n, r);
    let pairs: usize = grid
        .chunks(SEGMENT_BLOCK)
        .map(|block| {
            let len = block[block.len() - 1].1 - block[0].0;
            len * (len + 1) / 2
        })
        .sum();
    2.0 * (pairs * d + 2 * n * d) as f64
}

/// The m stretches of the frames of x ([len, d]) with the least total within-stretch sum of
/// squares: exact, by dynamic programming over cut points on prefix sums (f64, since a sum of
/// squares minus a squared sum cancels most of its digits).
fn cut_block(x: &[f32], d: usize, m: usize) -> Vec<(usize, usize)> {
    let len = x.len() / d;
    if m >= len {
        return (0..len).map(|i| (i, i + 1)).collect();
    }
    let mut sum = vec![0f64; (len + 1) * d];
    let mut squares = vec![0f64; len + 1];
    for i in 0..len {
        let (done, next) = sum.split_at_mut((i + 1) * d);
        let mut sq = 0.0;
        for ((s, &prev), &v) in next[..d].iter_mut().zip(&done[i * d..]).zip(&x[i * d..(i + 1) * d]) {
            let v = v as f64;
            *s = prev + v;
            sq += v * v;
        }
        squares[i + 1] = squares[i] + sq;
    }
    // cost[a * (len + 1) + b]: frames [a, b) as one stretch.
    let mut cost = vec![0f64; len * (len + 1)];
    for a in 0..len {
        for b in a + 1..=len {
            let (sa, sb) = (&sum[a * d..(a + 1) * d], &sum[b * d..(b + 1) * d]);
            let squared_sum = squared_distance(sa, sb);
            cost[a * (len + 1) + b] = squares[b] - squares[a] - squared_sum / (b - a) as f64;
        }
    }
    // best[s][j]: least cost of frames [0, j) as s stretches; from[s][j]: where the last begins.
    let mut best = vec![f64::INFINITY; (m + 1) * (len + 1)];
    let mut from = vec![0usize; (m + 1) * (len + 1)];
    best[0] = 0.0;
    for s in 1..=m {
        // s stretches need s frames before them and leave m − s frames for the rest.
        for j in s..=len - (m - s) {
            for a in s - 1..j {
                let c = best[(s - 1) * (len + 1) + a] + cost[a * (len + 1) + j];
                if c < best[s * (len + 1) + j] {
                    best[s * (len + 1) + j] = c;
                    from[s * (len + 1) + j] = a;
                }
            }
        }
    }
    let mut stretches = vec![(0, 0); m];
    let mut end = len;
    for s in (1..=m).rev() {
        let start = from[s * (len + 1) + end];
        stretches[s - 1] = (start, end);
        end = start;
    }
    stretches
}

/// |q − p|², summed in 8 lanes so that it compiles to vector instructions (a plain sum must
/// keep its order and stays scalar): the pair costs are most of a cut's work.
fn squared_distance(p: &[f64], q: &[f64]) -> f64 {
    let mut lanes = [0f64; 8];
    let (p8, q8) = (p.chunks_exact(8), q.chunks_exact(8));
    let tail: f64 = p8.remainder().iter().zip(q8.remainder()).map(|(&a, &b)| (b - a) * (b - a)).sum();
    for (p, q) in p8.zip(q8) {
        for ((lane, &a), &b) in lanes.iter_mut().zip(p).zip(q) {
            *lane += (b - a) * (b - a);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// [`Routing::PooledSegments`] for a batch x [b, n, d]: each sequence's stretches from its own
/// frames, the heavy layer on their means with each mean's keys counted as often as it has
/// frames (ln(length) added to its attention logits, as token merging's proportional
/// attention: the softmax then weighs a stretch of like frames as the dense layer would), and
/// the updates interpolated from the stretches' centres onto `base`. The cut is not
/// differentiable; training's gradient flows through the means as on the pooled grid.
pub fn add_segment_update(dense: &DenseLayer, x: &Tensor, base: &Tensor, r: f64) -> Result<Tensor> {
    let (batch, n, d) = x.dims3()?;
    let cuts: Vec<Vec<(usize, usize)>> = with_host_f32(&x.detach().to_dtype(DType::F32)?, |host| {
        host.chunks_exact(n * d).map(|seq| content_stretches(seq, d, r)).collect()
    })?;
    let mut rows = Vec::with_capacity(batch);
    for (bi, stretches) in cuts.iter().enumerate() {
        let xb = x.narrow(0, bi, 1)?;
        let sel = pool_over(&xb, stretches)?;
        let lengths: Vec<f32> = stretches.iter().map(|&(a, b)| ((b - a) as f32).ln()).collect();
        let bias = Tensor::from_vec(lengths, (1, 1, 1, stretches.len()), x.device())?.to_dtype(x.dtype())?;
        let delta = (dense.run_with_key_bias(&sel, Some(&bias))? - &sel)?;
        let centres: Vec<f32> = stretches.iter().map(|&(a, b)| (a + b - 1) as f32 / 2.0).collect();
        rows.push(Interpolation::at(&centres, n).add_to(&base.narrow(0, bi, 1)?, &delta)?);
    }
    Ok(if rows.len() == 1 { rows.pop().expect("one row") } else { Tensor::cat(&rows, 0)? })
}

/// The trainable parts of one conditional layer.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub router: Tensor,
    pub ln: Norm,
    pub down: Linear,
    pub up: Linear,
    /// Budget gates [number of trained r, b] and the r they were trained for, when the config
    /// has them.
    pub gates: Option<(Tensor, Vec<f64>)>,
}

/// How much each trained r's gate counts at reduction `r`: all of it for a trained r, else
/// linear in 1 / r between the two trained values around it (the nearest one outside them).
pub fn budget_weights(reductions: &[f64], r: f64) -> Vec<f32> {
    let mut weights = vec![0f32; reductions.len()];
    let mut order: Vec<usize> = (0..reductions.len()).collect();
    order.sort_by(|&a, &b| reductions[a].total_cmp(&reductions[b]));
    let (Some(&lowest), Some(&highest)) = (order.first(), order.last()) else { return weights };
    if r <= reductions[lowest] {
        weights[lowest] = 1.0;
    } else if r >= reductions[highest] {
        weights[highest] = 1.0;
    } else {
        let above = order.iter().position(|&i| reductions[i] >= r).expect("r is below the highest");
        let (lo, hi) = (order[above - 1], order[above]);
        let t = (1.0 / reductions[lo] - 1.0 / r) / (1.0 / reductions[lo] - 1.0 / reductions[hi]);
        weights[lo] = (1.0 - t) as f32;
        weights[hi] += t as f32;
    }
    weights
}

impl Adapter {
    /// Parameters under `prefix` of a var builder (a VarMap-backed one creates them: router
    /// small random, up-projection zero so a fresh adapter changes nothing).
    /// `budgets`: the trained r that get a gate each (none: no gates).
    pub fn load(vb: VarBuilder, d: usize, bottleneck: usize, budgets: Option<&[f64]>) -> Result<Self> {
        let router = vb.get_with_hints(d, "router", candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 })?;
        let ln = Norm::new(
            vb.pp("ln").get_with_hints(d, "weight", candle_nn::Init::Const(1.0))?,
            vb.pp("ln").get_with_hints(d, "bias", candle_nn::Init::Const(0.0))?,
        );
        let down = Linear::new(
            vb.pp("down").get_with_hints((bottleneck, d), "weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)?,
            Some(vb.pp("down").get_with_hints(bottleneck, "bias", candle_nn::Init::Const(0.0))?),
        );
        let up = Linear::new(
            vb.pp("up").get_with_hints((d, bottleneck), "weight", candle_nn::Init::Const(0.0))?,
            Some(vb.pp("up").get_with_hints(d, "bias", candle_nn::Init::Const(0.0))?),
        );
        let gates = match budgets {
            Some(rs) => Some((vb.get_with_hints((rs.len(), bottleneck), "gates", candle_nn::Init::Const(1.0))?, rs.to_vec())),
            None => None,
        };
        Ok(Self { router, ln, down, up, gates })
    }

    pub fn scores(&self, x: &Tensor) -> Result<Tensor> {
        Ok(normalize_last_dim(x)?.broadcast_mul(&self.router)?.sum(D::Minus1)?)
    }

    /// The adapter's output at reduction r.
    pub fn light(&self, x: &Tensor, r: f64) -> Result<Tensor> {
        let h = self.down.forward(&self.ln.forward(x)?)?;
        let mut h = Gelu::Exact.apply(h)?;
        if let Some((gates, reductions)) = &self.gates {
            let weights = Tensor::new(budget_weights(reductions, r), gates.device())?.to_dtype(gates.dtype())?.unsqueeze(0)?;
            h = h.broadcast_mul(&weights.matmul(gates)?.squeeze(0)?.to_dtype(h.dtype())?)?;
        }
        Ok(self.up.forward(&h)?)
    }
}

/// A conditional encoder layer: router + light adapter on every frame + the frozen layer on
/// the routed frames.
pub struct CodaLayer {
    pub dense: Arc<DenseLayer>,
    pub adapter: Adapter,
    pub epsilon: f64,
    pub iterations: usize,
    pub bottleneck: usize,
    pub routing: Routing,
    /// This layer runs at max(1, r × reduction_scale) (see [`CodaConfig::reduction_scale`]).
    pub reduction_scale: f64,
    /// See [`CodaConfig::segments_up_to`].
    pub segments_up_to: Option<f64>,
}

impl CodaLayer {
    fn adapter_flops(&self, n: usize) -> f64 {
        let (n, d, b) = (n as f64, self.dense.d as f64, self.bottleneck as f64);
        // router dot product + two projections
        2.0 * n * d + 4.0 * n * d * b
    }
}

impl EncoderBlock for CodaLayer {
    fn forward(&self, x: &Tensor, opts: &EncodeOptions) -> Result<(Tensor, BlockStats)> {
        self.forward_routed(x, opts, !x.device().is_cpu())
    }
}

impl CodaLayer {
    /// The layer with routing done on the host (`on_device` false: exact bisection for λ, one
    /// copy of the scores per layer) or with tensor ops only (true: what GPUs run, so nothing
    /// leaves the device between layers; callable on the CPU to check it against the host path).
    pub fn forward_routed(&self, x: &Tensor, call: &EncodeOptions, on_device: bool) -> Result<(Tensor, BlockStats)> {
        // The budget gates follow the call's r (the budget); routing follows this layer's.
        let gate_r = call.reduction;
        let opts = &EncodeOptions { reduction: (call.reduction * self.reduction_scale).max(1.0) };
        let (batch, n, _) = x.dims3()?;
        let k = opts.heavy_frames(n);
        let (d, ffn) = (self.dense.d, self.dense.ffn);
        let heavy_flops = if self.routing == Routing::PooledGridFineContext {
            let context = EncodeOptions { reduction: context_reduction(opts.reduction) }.heavy_frames(n);
            attending_layer_flops(k, context, d, ffn)
        } else {
            layer_flops(k, d, ffn)
        };
        let flops = batch as f64 * (heavy_flops + self.adapter_flops(n));
        if k == n {
            // r = 1 is the dense layer (the project's vocabulary): every frame through the
            // pretrained layer, adapters off, so `--reduction 1` is exactly the base model.
            let flops = batch as f64 * layer_flops(n, self.dense.d, self.dense.ffn);
            return Ok((self.dense.run(x)?, BlockStats { heavy_frames: n, flops }));
        }
        let light = (x + self.adapter.light(x, gate_r)?)?;
        let routing = match (self.routing, self.segments_up_to) {
            (Routing::PooledSegments, Some(most)) if gate_r > most => Routing::PooledGrid,
            (routing, _) => routing,
        };
        if routing.is_grid() {
            // No router; pooling costs what the router would have (one multiply-add per frame
            // and channel), twice over when the keys and values are pooled too.
            let flops = match routing {
                Routing::PooledGrid => flops,
                Routing::PooledSegments => flops + batch as f64 * content_stretches_flops(n, d, opts.reduction),
                Routing::PooledGridFineContext => flops + batch as f64 * 2.0 * n as f64 * d as f64,
                _ => flops - batch as f64 * 2.0 * n as f64 * d as f64,
            };
            return Ok((add_grid_update(&self.dense, x, &light, opts.reduction, routing)?, BlockStats { heavy_frames: k, flops }));
        }
        let scores = self.adapter.scores(x)?;
        let mut rows = Vec::with_capacity(batch);
        if on_device {
            for bi in 0..batch {
                let (xb, lb) = (x.narrow(0, bi, 1)?, light.narrow(0, bi, 1)?);
                let (select, lam) = route_on_device(&scores.narrow(0, bi, 1)?, k, self.epsilon, self.iterations)?;
                let select = select.to_dtype(x.dtype())?;
                let sel = select.matmul(&xb)?;
                let delta = (self.dense.run(&sel)? - &sel)?.broadcast_mul(&lam.to_dtype(x.dtype())?)?;
                rows.push((lb + select.t()?.matmul(&delta)?)?);
            }
        } else {
            let score_rows: Vec<Vec<f32>> = scores.detach().to_dtype(DType::F32)?.to_vec2()?;
            let lambda =
                soft_top_k_from_rows(&scores.to_dtype(DType::F32)?, &score_rows, k, self.epsilon, self.iterations)?.to_dtype(x.dtype())?;
            for (bi, row) in score_rows.iter().enumerate() {
                let idx = Tensor::new(top_k_in_time_order(row, k).as_slice(), x.device())?;
                let lam = lambda.narrow(0, bi, 1)?.index_select(&idx, 1)?.unsqueeze(2)?;
                rows.push(add_heavy_update(&self.dense, &x.narrow(0, bi, 1)?, &light.narrow(0, bi, 1)?, &idx, Some(&lam))?);
            }
        }
        let y = if rows.len() == 1 { rows.pop().expect("one row") } else { Tensor::cat(&rows, 0)? };
        Ok((y, BlockStats { heavy_frames: k, flops }))
    }
}

/// Routing for one sequence with tensor ops only, for devices where a host round trip per layer
/// would stall the pipeline. Scores s [1, n] → (P [1, k, n], λ of the selected frames [1, k, 1]).
/// P has one 1 per row, at the j-th selected frame in time order, so P·X gathers the selected
/// frames and Pᵀ·Δ scatters their updates back, both exactly. A frame is selected when fewer
/// than k frames rank above it (ties broken by time). λ comes from the CoLT5 iteration started
/// at a = −(k-th largest score), next to its fixed point, so the iterations converge.
pub fn route_on_device(scores: &Tensor, k: usize, epsilon: f64, iterations: usize) -> Result<(Tensor, Tensor)> {
    let s = scores.detach().to_dtype(DType::F32)?;
    let n = s.dim(1)?;
    let device = s.device();
    // above[i, j] = 1 when frame j ranks above frame i.
    let (col, row) = (s.reshape((n, 1))?, s.reshape((1, n))?);
    let earlier = Tensor::tril2(n, DType::F32, device)?.sub(&Tensor::eye(n, DType::F32, device)?)?;
    let above = (row.broadcast_gt(&col)?.to_dtype(DType::F32)? + row.broadcast_eq(&col)?.to_dtype(DType::F32)?.mul(&earlier)?)?;
    let rank = above.sum(1)?; // [n]
    let selected = rank.lt(k as f64)?.to_dtype(DType::F32)?;
    let slot = (selected.cumsum(0)? - 1.0)?;
    let slots = Tensor::arange(0u32, k as u32, device)?.to_dtype(DType::F32)?.reshape((k, 1))?;
    let select = slots.broadcast_eq(&slot.reshape((1, n))?)?.to_dtype(DType::F32)?.broadcast_mul(&selected.reshape((1, n))?)?;
    // Soft top-k λ over all frames, then the selected ones.
    let kth = s.reshape(n)?.mul(&rank.eq((k - 1) as f64)?.to_dtype(DType::F32)?)?.sum_all()?;
    let mut a = kth.neg()?.reshape((1, 1))?;
    let ln_k = (k as f64).ln();
    let mut b = s.broadcast_add(&a)?.neg()?.minimum(0f64)?;
    for _ in 0..iterations {
        let z = ((&s + &b)? / epsilon)?;
        a = ((logsumexp_last(&z)? * -epsilon)? + epsilon * ln_k)?;
        b = s.broadcast_add(&a)?.neg()?.minimum(0f64)?;
    }
    let lambda = (s.broadcast_add(&a)? + &b)?.affine(1.0 / epsilon, 0.0)?.exp()?; // [1, n]
    let lam_selected = select.matmul(&lambda.reshape((n, 1))?)?; // [k, 1]
    Ok((select.unsqueeze(0)?, lam_selected.unsqueeze(0)?))
}

/// Adapter weights and their config, as shipped under `models/`.
pub struct CodaWeights {
    pub config: CodaConfig,
    pub vars: VarMap,
}

impl CodaWeights {
    /// Fresh (untrained) adapters for the given encoder: zero up-projections.
    pub fn fresh(config: CodaConfig, d: usize, device: &Device) -> Result<Self> {
        let vars = VarMap::new();
        {
            let vb = VarBuilder::from_varmap(&vars, DType::F32, device);
            for &l in &config.layers {
                Adapter::load(vb.pp(format!("layers.{l}")), d, config.bottleneck, config.gated_reductions())?;
            }
        }
        Ok(Self { config, vars })
    }

    pub fn load(dir: &std::path::Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("coda.json");
        let config: CodaConfig =
            serde_json::from_str(&std::fs::read_to_string(&cfg_path).with_context(|| format!("{}: cannot read", cfg_path.display()))?)
                .with_context(|| format!("{}: not a CoDA config", cfg_path.display()))?;
        let vars = VarMap::new();
        let weights = dir.join("adapters.safetensors");
        {
            let vb = VarBuilder::from_varmap(&vars, DType::F32, device);
            // Create the variables with the right shapes, then fill them from the file.
            let d = candle_core::safetensors::load(&weights, device)
                .with_context(|| format!("{}: cannot read adapter weights", weights.display()))?
                .get(&format!("layers.{}.router", config.layers.first().copied().unwrap_or(0)))
                .map(|t| t.dim(0))
                .transpose()?
                .context("adapter weights have no router for the first adapted layer")?;
            for &l in &config.layers {
                Adapter::load(vb.pp(format!("layers.{l}")), d, config.bottleneck, config.gated_reductions())?;
            }
        }
        let mut vars = vars;
        vars.load(&weights).with_context(|| format!("{}: adapter weights do not match coda.json", weights.display()))?;
        Ok(Self { config, vars })
    }

    /// The same adapters with a wider bottleneck, computing exactly what they computed: the new
    /// channels' down-projection rows come from `init_down` (rows, d) → values, their
    /// up-projection columns are zero and their budget gates 1, so training starts from where
    /// the narrow adapters ended.
    pub fn widen(&self, bottleneck: usize, init_down: &mut dyn FnMut(usize, usize) -> Vec<f32>) -> Result<Self> {
        let old = self.config.bottleneck;
        ensure!(bottleneck >= old, "cannot narrow the adapters' bottleneck from {old} to {bottleneck}");
        let mut config = self.config.clone();
        config.bottleneck = bottleneck;
        let data = self.vars.data().lock().expect("var map lock");
        let device = data.values().next().map(|v| v.device().clone()).unwrap_or(Device::Cpu);
        let d = data
            .get(&format!("layers.{}.router", config.layers.first().copied().unwrap_or(0)))
            .map(|v| v.dim(0))
            .transpose()?
            .context("adapter weights have no router for the first adapted layer")?;
        let wide = Self::fresh(config, d, &device)?;
        let extra = bottleneck - old;
        {
            let wide_data = wide.vars.data().lock().expect("var map lock");
            let mut names: Vec<&String> = data.keys().collect();
            names.sort(); // a fixed order, so the new rows are deterministic
            for name in names {
                let value = data[name].as_tensor();
                let widened = if extra == 0 {
                    value.clone()
                } else if name.ends_with("down.weight") {
                    let rows = Tensor::from_vec(init_down(extra, d), (extra, d), &device)?.to_dtype(value.dtype())?;
                    Tensor::cat(&[value, &rows], 0)?
                } else if name.ends_with("down.bias") {
                    Tensor::cat(&[value, &Tensor::zeros(extra, value.dtype(), &device)?], 0)?
                } else if name.ends_with("up.weight") {
                    Tensor::cat(&[value, &Tensor::zeros((value.dim(0)?, extra), value.dtype(), &device)?], 1)?
                } else if name.ends_with(".gates") {
                    Tensor::cat(&[value, &Tensor::ones((value.dim(0)?, extra), value.dtype(), &device)?], 1)?
                } else {
                    value.clone()
                };
                wide_data.get(name).with_context(|| format!("widened adapters have no {name}"))?.set(&widened)?;
            }
        }
        Ok(wide)
    }

    /// Take every variable these adapters share with `other` from it (adapters for layers
    /// `other` lacks keep their fresh values).
    pub fn copy_from(&self, other: &CodaWeights) -> Result<()> {
        let ours = self.vars.data().lock().expect("var map lock");
        for (name, value) in other.vars.data().lock().expect("var map lock").iter() {
            ours.get(name).with_context(|| format!("adapters have no {name}"))?.set(value.as_tensor())?;
        }
        Ok(())
    }

    pub fn save(&self, dir: &std::path::Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        self.vars.save(dir.join("adapters.safetensors"))?;
        std::fs::write(dir.join("coda.json"), serde_json::to_string_pretty(&self.config)? + "\n")?;
        Ok(())
    }

    /// Conditional layers wrapping the encoder's dense ones. `trainable` layers share the
    /// variables (gradients are tracked through them); otherwise they hold detached copies, so
    /// inference runs the fast, untracked kernels.
    pub fn layers(&self, dense: &[Arc<DenseLayer>], trainable: bool) -> Result<Vec<(usize, CodaLayer)>> {
        let data = self.vars.data().lock().expect("var map lock");
        let device = data.values().next().map(|v| v.device().clone()).unwrap_or(Device::Cpu);
        let vb = if trainable {
            VarBuilder::from_varmap(&self.vars, DType::F32, &device)
        } else {
            // Inference runs the adapters in the encoder's float type (float16 on a GPU).
            let dtype = dense.first().map_or(DType::F32, |l| l.qkv.weight().dtype());
            let frozen: std::collections::HashMap<String, Tensor> = data.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect();
            VarBuilder::from_tensors(frozen, dtype, &device)
        };
        drop(data);
        self.config
            .layers
            .iter()
            .map(|&l| {
                ensure!(l < dense.len(), "CoDA layer {l} but the encoder has {} layers", dense.len());
                let adapter =
                    Adapter::load(vb.pp(format!("layers.{l}")), dense[l].d, self.config.bottleneck, self.config.gated_reductions())?;
                Ok((
                    l,
                    CodaLayer {
                        dense: dense[l].clone(),
                        adapter,
                        epsilon: self.config.epsilon,
                        iterations: self.config.iterations,
                        bottleneck: self.config.bottleneck,
                        routing: self.config.routing,
                        reduction_scale: self.config.reduction_scale_of(l),
                        segments_up_to: self.config.segments_up_to,
                    },
                ))
            })
            .collect()
    }
}
