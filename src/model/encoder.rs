//! Whisper's audio encoder: conv stem, sinusoidal positions, a stack of layers, final norm.
//!
//! Each layer is an [`EncoderBlock`], so a layer can be dense (the pretrained transformer layer)
//! or conditional (CoDA: a router picks which frames go through the heavy layer). The
//! reduction factor travels with each call in [`EncodeOptions`], so it can change between
//! calls without reloading anything.

use super::config::WhisperConfig;
use super::layers::{attention, fused_linear, layer_norm, linear, merge_heads, split_heads, Gelu, Mlp, Norm};
use super::silence::SilenceCache;
use super::stem::StemConv;
use anyhow::{ensure, Result};
use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// Per-call options for the encoder.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    /// Reduction factor r: a conditional layer sends ceil(n / r) frames through its heavy
    /// branch. 1 means dense. Dense layers ignore it.
    pub reduction: f64,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self { reduction: 1.0 }
    }
}

impl EncodeOptions {
    /// How many of n frames a conditional layer sends through its heavy branch: ceil(n / r),
    /// at least one, at most all.
    pub fn heavy_frames(&self, n: usize) -> usize {
        ((n as f64 / self.reduction.max(1.0)).ceil() as usize).clamp(1, n)
    }
}

/// What one encoder call spent. Shared by the CLI's JSON, `eval` and the live monitor so that
/// every number a user sees is computed once, here.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EncodeStats {
    /// Frames of the window the decoder sees (after the stride-2 conv).
    pub frames: usize,
    /// Frames that actually ran through the layer stack: fewer than `frames` when the padding
    /// came from the silence cache.
    pub encoded_frames: usize,
    /// Frames that went through each layer's heavy (pretrained) branch.
    pub heavy_frames: Vec<usize>,
    /// Floating-point operations actually run (multiply-add = 2).
    pub flops: f64,
    /// What the dense encoder would have run on the same input.
    pub dense_flops: f64,
    pub ms: f64,
    /// Wall time of the conv stem, then of each layer, in ms (`coda-asr bench` shows where an
    /// encode's time goes). Exact on the CPU; a GPU runs kernels asynchronously, so there they
    /// are the time to queue the work.
    pub stage_ms: Vec<f64>,
}

impl EncodeStats {
    pub fn heavy_fraction(&self) -> Vec<f64> {
        self.heavy_frames.iter().map(|&k| k as f64 / self.frames.max(1) as f64).collect()
    }
}

/// FLOPs of one dense transformer layer on `n` frames of width `d` with MLP width `ffn`:
/// q/k/v/out projections, the two attention matmuls, and the MLP.
pub fn layer_flops(n: usize, d: usize, ffn: usize) -> f64 {
    let (n, d, ffn) = (n as f64, d as f64, ffn as f64);
    2.0 * n * (4.0 * d * d + 2.0 * d * ffn) + 4.0 * n * n * d
}

/// FLOPs of a layer whose `k` query frames attend to `context` other frames
/// ([`DenseLayer::run_attending`]): query and output projections and the MLP on k frames, key
/// and value projections on the context, and the two attention matmuls.
pub fn attending_layer_flops(k: usize, context: usize, d: usize, ffn: usize) -> f64 {
    let (k, m, d, ffn) = (k as f64, context as f64, d as f64, ffn as f64);
    2.0 * k * (2.0 * d * d + 2.0 * d * ffn) + 2.0 * m * 2.0 * d * d + 4.0 * k * m * d
}

/// One encoder layer, dense or conditional.
pub trait EncoderBlock: Send + Sync {
    /// Map x [batch, frames, d] to the layer output, and report how many frames went through
    /// the heavy branch and the FLOPs run.
    fn forward(&self, x: &Tensor, opts: &EncodeOptions) -> Result<(Tensor, BlockStats)>;
}

#[derive(Debug, Clone, Copy)]
pub struct BlockStats {
    pub heavy_frames: usize,
    pub flops: f64,
}

/// A pretrained Whisper encoder layer: x + attn(ln(x)), then + mlp(ln(x)).
#[derive(Debug, Clone)]
pub struct DenseLayer {
    pub attn_ln: Norm,
    pub qkv: Linear,
    pub out: Linear,
    pub mlp: Mlp,
    pub heads: usize,
    pub d: usize,
    pub ffn: usize,
}

impl DenseLayer {
    pub fn load(vb: VarBuilder, d: usize, heads: usize, ffn: usize) -> Result<Self> {
        let attn = vb.pp("self_attn");
        Ok(Self {
            attn_ln: layer_norm(vb.pp("self_attn_layer_norm"), d)?,
            qkv: fused_linear(&attn, &["q_proj", "k_proj", "v_proj"], &["k_proj"], d, d)?,
            out: linear(attn.pp("out_proj"), d, d)?,
            mlp: Mlp::load(&vb, d, ffn, "final_layer_norm")?,
            heads,
            d,
            ffn,
        })
    }

    /// The full layer on all frames of x; attention sees exactly the frames given.
    pub fn run(&self, x: &Tensor) -> Result<Tensor> {
        self.run_with_key_bias(x, None)
    }

    /// [`DenseLayer::run`] with `key_bias` [1, 1, 1, n] added to every attention logit of
    /// each key (pooled frames weighed by how many frames they stand for).
    pub fn run_with_key_bias(&self, x: &Tensor, key_bias: Option<&Tensor>) -> Result<Tensor> {
        let d = self.d;
        let qkv = self.qkv.forward(&self.attn_ln.forward(x)?)?;
        let q = split_heads(&qkv.narrow(2, 0, d)?, self.heads)?;
        let k = split_heads(&qkv.narrow(2, d, d)?, self.heads)?;
        let v = split_heads(&qkv.narrow(2, 2 * d, d)?, self.heads)?;
        self.attend_then_mlp(x, &q, &k, &v, key_bias)
    }

    /// The rest of the layer once queries, keys and values [b, heads, n, dh] are projected:
    /// attention (plus `key_bias` on its logits), output projection and residual on x, then
    /// the MLP.
    fn attend_then_mlp(&self, x: &Tensor, q: &Tensor, k: &Tensor, v: &Tensor, key_bias: Option<&Tensor>) -> Result<Tensor> {
        let a = self.out.forward(&merge_heads(&attention(q, k, v, key_bias)?)?)?;
        let x = (x + a)?;
        Ok((&x + self.mlp.forward(&x)?)?)
    }

    /// The layer on the frames of x whose attention reads keys and values from `context`
    /// instead of from x itself: queries, residual and MLP stay on x's frames.
    pub fn run_attending(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let d = self.d;
        let w = self.qkv.weight();
        let b = self.qkv.bias().expect("fused qkv has a bias");
        let q_proj = Linear::new(w.narrow(0, 0, d)?, Some(b.narrow(0, 0, d)?));
        let kv_proj = Linear::new(w.narrow(0, d, 2 * d)?, Some(b.narrow(0, d, 2 * d)?));
        let q = split_heads(&q_proj.forward(&self.attn_ln.forward(x)?)?, self.heads)?;
        let kv = kv_proj.forward(&self.attn_ln.forward(context)?)?;
        let k = split_heads(&kv.narrow(2, 0, d)?, self.heads)?;
        let v = split_heads(&kv.narrow(2, d, d)?, self.heads)?;
        self.attend_then_mlp(x, &q, &k, &v, None)
    }

    pub fn set_gelu(&mut self, gelu: Gelu) {
        self.mlp.gelu = gelu;
    }
}

impl EncoderBlock for DenseLayer {
    fn forward(&self, x: &Tensor, _opts: &EncodeOptions) -> Result<(Tensor, BlockStats)> {
        let n = x.dim(1)?;
        let b = x.dim(0)?;
        let flops = b as f64 * layer_flops(n, self.d, self.ffn);
        Ok((self.run(x)?, BlockStats { heavy_frames: n, flops }))
    }
}

pub struct Encoder {
    conv1: StemConv,
    conv2: StemConv,
    /// Sinusoidal positions [max_frames, d] as stored in the checkpoint (float16 in Whisper's).
    pub positions: Tensor,
    /// Pretrained layers, kept so conditional layers can wrap them.
    pub dense_layers: Vec<Arc<DenseLayer>>,
    /// The layers actually run; dense by default.
    pub layers: Vec<Arc<dyn EncoderBlock>>,
    ln_post: Norm,
    gelu: Gelu,
    pub d: usize,
    pub n_mels: usize,
    pub max_frames: usize,
    ffn: usize,
    /// Dense encodings of padding, for [`Encoder::forward_window`].
    pub silence: SilenceCache,
}

impl Encoder {
    pub fn load(vb: VarBuilder, cfg: &WhisperConfig) -> Result<Self> {
        let d = cfg.d_model;
        let conv1 = StemConv::load(vb.pp("conv1"), cfg.num_mel_bins, d, 1)?;
        let conv2 = StemConv::load(vb.pp("conv2"), d, d, 2)?;
        let positions = vb.get((cfg.max_source_positions, d), "embed_positions.weight")?;
        let dense_layers: Vec<Arc<DenseLayer>> = (0..cfg.encoder_layers)
            .map(|i| DenseLayer::load(vb.pp(format!("layers.{i}")), d, cfg.encoder_attention_heads, cfg.encoder_ffn()).map(Arc::new))
            .collect::<Result<_>>()?;
        let layers = dense_layers.iter().map(|l| l.clone() as Arc<dyn EncoderBlock>).collect();
        Ok(Self {
            conv1,
            conv2,
            positions,
            dense_layers,
            layers,
            ln_post: layer_norm(vb.pp("layer_norm"), d)?,
            gelu: Gelu::Exact,
            d,
            n_mels: cfg.num_mel_bins,
            max_frames: cfg.max_source_positions,
            ffn: cfg.encoder_ffn(),
            silence: SilenceCache::default(),
        })
    }

    /// Switch every dense layer and the stem to the given GELU (for comparisons only).
    pub fn set_gelu(&mut self, gelu: Gelu) {
        self.gelu = gelu;
        self.dense_layers = self
            .dense_layers
            .iter()
            .map(|l| {
                let mut l = (**l).clone();
                l.set_gelu(gelu);
                Arc::new(l)
            })
            .collect();
        self.layers = self.dense_layers.iter().map(|l| l.clone() as Arc<dyn EncoderBlock>).collect();
    }

    /// Conv stem and positions: mel [batch, n_mels, 2n] → [batch, n, d].
    pub fn stem(&self, mel: &Tensor) -> Result<Tensor> {
        let (_, n_mels, t) = mel.dims3()?;
        ensure!(n_mels == self.n_mels, "mel has {n_mels} bins, the model wants {}", self.n_mels);
        ensure!(t <= 2 * self.max_frames, "mel has {t} frames, the model takes at most {}", 2 * self.max_frames);
        let x = self.gelu.apply(self.conv1.forward(&mel.transpose(1, 2)?)?)?;
        let x = self.gelu.apply(self.conv2.forward(&x)?)?;
        let n = x.dim(1)?;
        Ok(x.broadcast_add(&self.positions.narrow(0, 0, n)?)?)
    }

    pub fn stem_flops(&self, mel_frames: usize) -> f64 {
        let n = mel_frames.div_ceil(2);
        let (d, m) = (self.d as f64, self.n_mels as f64);
        2.0 * mel_frames as f64 * m * 3.0 * d + 2.0 * n as f64 * d * 3.0 * d
    }

    /// Encode mel [batch, n_mels, frames] (frames ≤ 3000; fewer is allowed) → [batch, n, d].
    pub fn forward(&self, mel: &Tensor, opts: &EncodeOptions) -> Result<(Tensor, EncodeStats)> {
        self.forward_with(&self.layers, mel, opts)
    }

    /// Encode a window of `window_mel_frames` mel frames of which only the first ones, given in
    /// `mel` [1, n_mels, frames], hold audio; the rest is padding at mel value `silence_level`,
    /// served from the silence cache (see [`super::silence`]). Returns [1, window/2, d], and
    /// stats whose dense FLOPs are those of the whole window.
    pub fn forward_window(
        &self,
        mel: &Tensor,
        silence_level: f32,
        window_mel_frames: usize,
        opts: &EncodeOptions,
    ) -> Result<(Tensor, EncodeStats)> {
        self.forward_window_with(&self.layers, mel, silence_level, window_mel_frames, opts)
    }

    /// [`Encoder::forward_window`] with an explicit layer stack (training).
    pub fn forward_window_with(
        &self,
        layers: &[Arc<dyn EncoderBlock>],
        mel: &Tensor,
        silence_level: f32,
        window_mel_frames: usize,
        opts: &EncodeOptions,
    ) -> Result<(Tensor, EncodeStats)> {
        let (batch, _, frames) = mel.dims3()?;
        ensure!(batch == 1, "silence caching encodes one window at a time");
        ensure!(frames % 2 == 0 && frames <= window_mel_frames, "audio block of {frames} mel frames in a {window_mel_frames}-frame window");
        if frames == window_mel_frames {
            return self.forward_with(layers, mel, opts);
        }
        let start = Instant::now();
        let padding = self.silence.encoding(self, silence_level)?;
        let (block, mut stats) = self.forward_with(layers, mel, opts)?;
        let (n_block, n_window) = (frames / 2, window_mel_frames / 2);
        let x = Tensor::cat(&[&block, &padding.narrow(1, n_block, n_window - n_block)?], 1)?;
        x.device().synchronize()?;
        stats.frames = n_window;
        stats.dense_flops = self.stem_flops(window_mel_frames) + layers.len() as f64 * layer_flops(n_window, self.d, self.ffn);
        stats.ms = start.elapsed().as_secs_f64() * 1e3;
        Ok((x, stats))
    }

    /// The dense encoder, whatever layers are installed.
    pub fn forward_dense(&self, mel: &Tensor) -> Result<(Tensor, EncodeStats)> {
        let dense: Vec<Arc<dyn EncoderBlock>> = self.dense_layers.iter().map(|l| l.clone() as Arc<dyn EncoderBlock>).collect();
        self.forward_with(&dense, mel, &EncodeOptions::default())
    }

    /// Put conditional layers in place of the dense ones at the given indices.
    pub fn install(&mut self, blocks: Vec<(usize, Arc<dyn EncoderBlock>)>) {
        for (i, block) in blocks {
            self.layers[i] = block;
        }
    }

    /// Back to the pretrained dense layers everywhere.
    pub fn uninstall(&mut self) {
        self.layers = self.dense_layers.iter().map(|l| l.clone() as Arc<dyn EncoderBlock>).collect();
    }

    /// Encode with an explicit layer stack (training runs teacher and student side by side).
    pub fn forward_with(&self, layers: &[Arc<dyn EncoderBlock>], mel: &Tensor, opts: &EncodeOptions) -> Result<(Tensor, EncodeStats)> {
        let start = Instant::now();
        let b = mel.dim(0)? as f64;
        let mut x = self.stem(mel)?;
        let n = x.dim(1)?;
        let stem = b * self.stem_flops(mel.dim(2)?);
        let mut stats = EncodeStats { frames: n, encoded_frames: n, flops: stem, dense_flops: stem, ..Default::default() };
        let mut stage_start = Instant::now();
        stats.stage_ms.push((stage_start - start).as_secs_f64() * 1e3);
        for layer in layers {
            let (y, s) = layer.forward(&x, opts)?;
            x = y;
            let now = Instant::now();
            stats.stage_ms.push((now - stage_start).as_secs_f64() * 1e3);
            stage_start = now;
            stats.heavy_frames.push(s.heavy_frames);
            stats.flops += s.flops;
            stats.dense_flops += b * layer_flops(n, self.d, self.ffn);
        }
        let x = self.ln_post.forward(&x)?;
        // GPU kernels run asynchronously: wait for them so the time is the work's.
        x.device().synchronize()?;
        stats.ms = start.elapsed().as_secs_f64() * 1e3;
        Ok((x, stats))
    }
}
