//! Whisper's text decoder with a self-attention KV cache and cross-attention keys/values
//! computed once per audio window (not once per token).

use super::config::WhisperConfig;
use super::layers::{attention, causal_mask, fused_linear, layer_norm, linear, merge_heads, split_heads, Mlp, Norm};
use anyhow::{ensure, Context, Result};
use candle_core::{IndexOp, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

struct DecoderLayer {
    self_ln: Norm,
    self_qkv: Linear,
    self_out: Linear,
    cross_ln: Norm,
    cross_q: Linear,
    cross_kv: Linear,
    cross_out: Linear,
    mlp: Mlp,
}

/// Keys and values of one layer, split into heads: [batch, heads, positions, dh].
#[derive(Clone)]
struct KeyValues {
    k: Tensor,
    v: Tensor,
}

/// Cross-attention keys and values of one encoded window, per layer.
#[derive(Clone)]
pub struct CrossKeyValues(Vec<KeyValues>);

impl CrossKeyValues {
    /// Keys and values of one layer, [batch, heads, frames, dh] each.
    pub fn layer(&self, i: usize) -> (&Tensor, &Tensor) {
        (&self.0[i].k, &self.0[i].v)
    }

    /// Σ weight · K/V over padding windows (a [`super::silence::blend`] of grid points). The
    /// projections are affine and the weights sum to one, so this is the K/V of the blended
    /// window.
    pub fn weighted_sum(parts: &[(CrossKeyValues, f64)]) -> Result<Self> {
        let first = &parts.first().context("an empty blend")?.0;
        let layer = |i: usize, pick: fn(&KeyValues) -> &Tensor| {
            super::silence::weighted_sum(parts.iter().map(|(p, w)| Ok((pick(&p.0[i]).clone(), *w))))
        };
        let layers =
            (0..first.0.len()).map(|i| Ok(KeyValues { k: layer(i, |kv| &kv.k)?, v: layer(i, |kv| &kv.v)? })).collect::<Result<_>>()?;
        Ok(Self(layers))
    }
}

/// Decoding state for one window: the cross-attention K/V of its audio and the growing
/// self-attention cache.
#[derive(Clone)]
pub struct DecoderState {
    cross: Vec<KeyValues>,
    cache: Vec<Option<KeyValues>>,
    /// Tokens already run through the decoder (the next position).
    pub position: usize,
}

pub struct Decoder {
    embedding: Tensor,
    positions: Tensor,
    layers: Vec<DecoderLayer>,
    ln: Norm,
    heads: usize,
    d: usize,
    pub max_positions: usize,
    pub vocab_size: usize,
}

impl Decoder {
    pub fn load(vb: VarBuilder, cfg: &WhisperConfig) -> Result<Self> {
        let d = cfg.d_model;
        let layers = (0..cfg.decoder_layers)
            .map(|i| {
                let vb = vb.pp(format!("layers.{i}"));
                let sa = vb.pp("self_attn");
                let ca = vb.pp("encoder_attn");
                Ok(DecoderLayer {
                    self_ln: layer_norm(vb.pp("self_attn_layer_norm"), d)?,
                    self_qkv: fused_linear(&sa, &["q_proj", "k_proj", "v_proj"], &["k_proj"], d, d)?,
                    self_out: linear(sa.pp("out_proj"), d, d)?,
                    cross_ln: layer_norm(vb.pp("encoder_attn_layer_norm"), d)?,
                    cross_q: linear(ca.pp("q_proj"), d, d)?,
                    cross_kv: fused_linear(&ca, &["k_proj", "v_proj"], &["k_proj"], d, d)?,
                    cross_out: linear(ca.pp("out_proj"), d, d)?,
                    mlp: Mlp::load(&vb, d, cfg.decoder_ffn(), "final_layer_norm")?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            embedding: vb.get((cfg.vocab_size, d), "embed_tokens.weight")?,
            positions: vb.get((cfg.max_target_positions, d), "embed_positions.weight")?,
            layers,
            ln: layer_norm(vb.pp("layer_norm"), d)?,
            heads: cfg.decoder_attention_heads,
            d,
            max_positions: cfg.max_target_positions,
            vocab_size: cfg.vocab_size,
        })
    }

    /// Prepare a state for the encoded audio [batch, frames, d]: cross K/V once per window.
    pub fn start(&self, audio: &Tensor) -> Result<DecoderState> {
        Ok(self.start_from(self.cross(audio)?))
    }

    pub fn start_from(&self, cross: CrossKeyValues) -> DecoderState {
        DecoderState { cross: cross.0, cache: vec![None; self.layers.len()], position: 0 }
    }

    /// Cross-attention keys and values of encoded audio [batch, frames, d].
    pub fn cross(&self, audio: &Tensor) -> Result<CrossKeyValues> {
        let d = self.d;
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let kv = l.cross_kv.forward(audio)?;
                Ok(KeyValues { k: split_heads(&kv.narrow(2, 0, d)?, self.heads)?, v: split_heads(&kv.narrow(2, d, d)?, self.heads)? })
            })
            .collect::<Result<_>>()?;
        Ok(CrossKeyValues(layers))
    }

    /// Cross K/V of a window [1, frames, d] whose frames from `audio_frames` on are padding
    /// (silence caching): projected for the audio frames only, the rest taken from `padding`,
    /// the K/V of a whole padding window at the same level (see [`CrossKeyValues::weighted_sum`]).
    pub fn cross_padded(&self, window: &Tensor, audio_frames: usize, padding: &CrossKeyValues) -> Result<CrossKeyValues> {
        let frames = window.dim(1)?;
        ensure!(audio_frames < frames, "no padding after {audio_frames} of {frames} frames");
        let audio = self.cross(&window.narrow(1, 0, audio_frames)?)?;
        let n = frames - audio_frames;
        let layers = audio
            .0
            .iter()
            .zip(&padding.0)
            .map(|(a, p)| {
                Ok(KeyValues {
                    k: Tensor::cat(&[&a.k, &p.k.narrow(2, audio_frames, n)?], 2)?,
                    v: Tensor::cat(&[&a.v, &p.v.narrow(2, audio_frames, n)?], 2)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(CrossKeyValues(layers))
    }

    /// Run `tokens` (shape [batch, t]) after what the state already holds; returns the final
    /// hidden states [batch, t, d] (before the vocabulary projection).
    pub fn forward(&self, tokens: &Tensor, state: &mut DecoderState) -> Result<Tensor> {
        Ok(self.forward_with_cross_scores(tokens, state, &[])?.0)
    }

    /// [`Self::forward`], also returning the cross-attention scores (q·k / √dh, before the
    /// softmax) of the given (layer, head) pairs, [t, frames] each for the first sequence of
    /// the batch: where each token looked in the audio (word timestamps).
    pub fn forward_with_cross_scores(
        &self,
        tokens: &Tensor,
        state: &mut DecoderState,
        heads: &[(usize, usize)],
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut scores = vec![None; heads.len()];
        let (_, t) = tokens.dims2()?;
        let past = state.position;
        ensure!(past + t <= self.max_positions, "decoder context of {} tokens exceeded", self.max_positions);
        let d = self.d;
        let mut x = self.embedding.embedding(&tokens.flatten_all()?)?.reshape((tokens.dim(0)?, t, d))?;
        x = x.broadcast_add(&self.positions.narrow(0, past, t)?)?;
        let mask = if t > 1 { Some(causal_mask(t, past, x.device())?) } else { None };
        for (index, (layer, (cache, cross))) in self.layers.iter().zip(state.cache.iter_mut().zip(&state.cross)).enumerate() {
            let qkv = layer.self_qkv.forward(&layer.self_ln.forward(&x)?)?;
            let q = split_heads(&qkv.narrow(2, 0, d)?, self.heads)?;
            let k_new = split_heads(&qkv.narrow(2, d, d)?, self.heads)?;
            let v_new = split_heads(&qkv.narrow(2, 2 * d, d)?, self.heads)?;
            let kv = match cache.take() {
                Some(c) => KeyValues { k: Tensor::cat(&[&c.k, &k_new], 2)?, v: Tensor::cat(&[&c.v, &v_new], 2)? },
                None => KeyValues { k: k_new, v: v_new },
            };
            let a = attention(&q, &kv.k, &kv.v, mask.as_ref())?;
            *cache = Some(kv);
            x = (&x + layer.self_out.forward(&merge_heads(&a)?)?)?;
            let q = split_heads(&layer.cross_q.forward(&layer.cross_ln.forward(&x)?)?, self.heads)?;
            for (slot, &(_, head)) in scores.iter_mut().zip(heads).filter(|(_, &(l, _))| l == index) {
                let (q, k) = (q.i((0, head))?, cross.k.i((0, head))?);
                *slot = Some((q.matmul(&k.t()?)? * (1.0 / (q.dim(1)? as f64).sqrt()))?);
            }
            let a = attention(&q, &cross.k, &cross.v, None)?;
            x = (&x + layer.cross_out.forward(&merge_heads(&a)?)?)?;
            x = (&x + layer.mlp.forward(&x)?)?;
        }
        state.position += t;
        let scores =
            scores.into_iter().zip(heads).map(|(s, h)| s.with_context(|| format!("no decoder head {h:?}"))).collect::<Result<_>>()?;
        Ok((self.ln.forward(&x)?, scores))
    }

    /// Vocabulary logits for hidden states [rows, d] → [rows, vocab] (tied to the embedding).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(hidden.matmul(&self.embedding.t()?)?)
    }
}

/// Keys and values of a decoder state as flat f32 rows, [heads][positions][dh] per layer, for
/// the single-token fast path.
pub struct ExportedState {
    pub cross_k: Vec<Vec<f32>>,
    pub cross_v: Vec<Vec<f32>>,
    pub frames: usize,
    pub self_k: Vec<Vec<f32>>,
    pub self_v: Vec<Vec<f32>>,
    pub position: usize,
}

impl DecoderState {
    /// Forget every position from `len` on (a draft's rejected tail).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        ensure!(len <= self.position, "cannot truncate a decoder state of {} positions to {len}", self.position);
        for kv in self.cache.iter_mut().flatten() {
            kv.k = kv.k.narrow(2, 0, len)?;
            kv.v = kv.v.narrow(2, 0, len)?;
        }
        self.position = len;
        Ok(())
    }

    pub fn export(&self) -> Result<ExportedState> {
        let flat = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let frames = self.cross.first().map(|kv| kv.k.dim(2)).transpose()?.unwrap_or(0);
        let mut out = ExportedState { cross_k: vec![], cross_v: vec![], frames, self_k: vec![], self_v: vec![], position: self.position };
        for (cross, cache) in self.cross.iter().zip(&self.cache) {
            ensure!(cross.k.dim(0)? == 1, "the fast path decodes one sequence at a time");
            out.cross_k.push(flat(&cross.k)?);
            out.cross_v.push(flat(&cross.v)?);
            match cache {
                Some(kv) => {
                    out.self_k.push(flat(&kv.k)?);
                    out.self_v.push(flat(&kv.v)?);
                }
                None => {
                    out.self_k.push(Vec::new());
                    out.self_v.push(Vec::new());
                }
            }
        }
        Ok(out)
    }
}
