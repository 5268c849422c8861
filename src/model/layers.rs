//! Building blocks shared by the encoder and decoder: fused projections, exact GELU, and
//! multi-head attention over [batch, frames, d] tensors.

use anyhow::{ensure, Result};
use candle_core::{DType, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

/// Layer norm as Whisper uses it (eps 1e-5, with bias). candle's fused layer-norm kernel has
/// no backward pass, so when gradients are being tracked (adapter training) the same
/// arithmetic runs as differentiable tensor ops instead.
#[derive(Debug, Clone)]
pub struct Norm {
    inner: LayerNorm,
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    pub fn new(weight: Tensor, bias: Tensor) -> Self {
        Self { inner: LayerNorm::new(weight.clone(), bias.clone(), 1e-5), weight, bias }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !x.track_op() && !self.weight.track_op() {
            return Ok(self.inner.forward(x)?);
        }
        let x = normalize_last_dim(x)?;
        Ok(x.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

/// (x − mean) / sqrt(var + 1e-5) over the last dimension, differentiable.
pub fn normalize_last_dim(x: &Tensor) -> Result<Tensor> {
    let mean = x.mean_keepdim(candle_core::D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
    Ok(centered.broadcast_div(&(var + 1e-5)?.sqrt()?)?)
}

pub fn layer_norm(vb: VarBuilder, d: usize) -> Result<Norm> {
    Ok(Norm::new(vb.get(d, "weight")?, vb.get(d, "bias")?))
}

pub fn linear(vb: VarBuilder, d_in: usize, d_out: usize) -> Result<Linear> {
    let weight = vb.get((d_out, d_in), "weight")?;
    let bias = vb.get(d_out, "bias")?;
    frozen_linear(weight, bias)
}

/// A pretrained projection whose weight [out, in] is stored transposed ([in, out] contiguous,
/// seen through a transposed view), so that `Linear::forward`'s `x · weightᵀ` reads it in
/// place. candle's CPU matmul (the gemm crate) computes a row-major product as its transpose,
/// and a weight stored [out, in] was repacked on every call: at the 88 rows of a layer at r =
/// 4, fc2 took 1.6 ms instead of 0.9 (the same sums in the same order, so bit-identical output).
/// Only for frozen weights: the copy is not a training variable.
fn frozen_linear(weight: Tensor, bias: Tensor) -> Result<Linear> {
    Ok(Linear::new(weight.t()?.contiguous()?.t()?, Some(bias)))
}

/// Several projections of the same input fused into one matrix, so one matmul computes them
/// all. Projections named in `no_bias` (Whisper's `k_proj`) get a zero bias.
pub fn fused_linear(vb: &VarBuilder, names: &[&str], no_bias: &[&str], d_in: usize, d_out: usize) -> Result<Linear> {
    let mut weights = Vec::with_capacity(names.len());
    let mut biases = Vec::with_capacity(names.len());
    for name in names {
        let sub = vb.pp(*name);
        weights.push(sub.get((d_out, d_in), "weight")?);
        biases.push(if no_bias.contains(name) { Tensor::zeros(d_out, vb.dtype(), vb.device())? } else { sub.get(d_out, "bias")? });
    }
    frozen_linear(Tensor::cat(&weights, 0)?, Tensor::cat(&biases, 0)?)
}

/// Which GELU an MLP applies. Whisper is trained with the exact (erf) form; the tanh form exists
/// only to compare against implementations that use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Gelu {
    #[default]
    Exact,
    Tanh,
}

impl Gelu {
    /// Consumes `x`: the exact form works in place on its buffer.
    pub fn apply(self, x: Tensor) -> Result<Tensor> {
        Ok(match self {
            Gelu::Exact if x.track_op() => x.gelu_erf()?,
            Gelu::Exact => super::kernels::gelu_erf(x)?,
            Gelu::Tanh => x.gelu()?,
        })
    }
}

/// Split [b, n, h*dh] into heads [b, h, n, dh], contiguous.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    ensure!(d % heads == 0, "width {d} not divisible by {heads} heads");
    Ok(x.reshape((b, n, heads, d / heads))?.transpose(1, 2)?.contiguous()?)
}

/// Merge heads [b, h, n, dh] back to [b, n, h*dh].
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, n, dh) = x.dims4()?;
    Ok(x.transpose(1, 2)?.reshape((b, n, h * dh))?)
}

/// Largest score matrix computed at once: bigger ones are split by heads so the buffer is
/// reused from the heap instead of being mapped fresh (and page-faulted) every layer.
const MAX_SCORE_ELEMENTS: usize = 4 << 20;

/// softmax(q kᵀ / sqrt(dh) + mask) v for heads-split tensors [b, h, n, dh]. The scale is
/// applied to q, the smaller operand.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (_, heads, n_q, dh) = q.dims4()?;
    let n_k = k.dim(2)?;
    let q = (q * (1.0 / (dh as f64).sqrt()))?;
    let per_head = n_q * n_k;
    let group = (MAX_SCORE_ELEMENTS / per_head.max(1)).clamp(1, heads);
    // A per-key bias ([1, 1, 1, n_k]) is added inside the CPU softmax pass when no gradient is
    // tracked, rather than broadcast over every score as a tensor op of its own (on a GPU it
    // stays there, with the scores).
    let key_bias: Option<Vec<f32>> = match mask {
        Some(m) if m.dims() == [1, 1, 1, n_k] && q.device().is_cpu() && !q.track_op() && !k.track_op() => {
            Some(m.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?)
        }
        _ => None,
    };
    let mut outs = Vec::with_capacity(heads.div_ceil(group));
    for h0 in (0..heads).step_by(group) {
        let g = group.min(heads - h0);
        let (qh, kh, vh) = (q.narrow(1, h0, g)?, k.narrow(1, h0, g)?, v.narrow(1, h0, g)?);
        let mut scores = qh.matmul(&kh.t()?)?;
        if let (Some(mask), None) = (mask, &key_bias) {
            scores = scores.broadcast_add(&mask.to_dtype(scores.dtype())?)?;
        }
        let weights = if scores.track_op() {
            candle_nn::ops::softmax(&scores, candle_core::D::Minus1)?
        } else if let Some(bias) = &key_bias {
            super::kernels::softmax_last_dim_with_bias(scores, bias)?
        } else {
            super::kernels::softmax_last_dim(scores)?
        };
        outs.push(weights.matmul(&vh)?);
    }
    Ok(if outs.len() == 1 { outs.pop().expect("one group") } else { Tensor::cat(&outs, 1)? })
}

/// Causal mask for `t` new queries appended after `past` cached positions: [t, past + t].
pub fn causal_mask(t: usize, past: usize, device: &candle_core::Device) -> Result<Tensor> {
    let total = past + t;
    let mask: Vec<f32> = (0..t).flat_map(|i| (0..total).map(move |j| if j <= past + i { 0.0 } else { f32::NEG_INFINITY })).collect();
    Ok(Tensor::from_vec(mask, (t, total), device)?.to_dtype(DType::F32)?)
}

/// Pre-norm MLP of a transformer layer: fc2(gelu(fc1(ln(x)))).
#[derive(Debug, Clone)]
pub struct Mlp {
    pub ln: Norm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub gelu: Gelu,
}

impl Mlp {
    pub fn load(vb: &VarBuilder, d: usize, ffn: usize, ln_name: &str) -> Result<Self> {
        Ok(Self {
            ln: layer_norm(vb.pp(ln_name), d)?,
            fc1: linear(vb.pp("fc1"), d, ffn)?,
            fc2: linear(vb.pp("fc2"), ffn, d)?,
            gelu: Gelu::Exact,
        })
    }

    /// The residual update (without adding x).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(&self.ln.forward(x)?)?;
        Ok(self.fc2.forward(&self.gelu.apply(h)?)?)
    }
}
