//! The encoder's two convolutions (kernel 3, padding 1; the second with stride 2) as one matrix
//! product each over time-major frames.
//!
//! candle's CPU `conv1d` builds its im2col matrix one element at a time on one thread, repacks
//! the kernel for every call (the gemm crate reads a weight stored [out, in] transposed) and
//! writes its output back channels-first, which the next step transposes again. Here the
//! columns are gathered with a few whole-tensor copies, the kernel is stored transposed once,
//! and frames stay time-major from the mel to the first layer. The columns keep candle's
//! order (input channel, then tap), so the sums run in the same order as `conv1d`'s.

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

const TAPS: usize = 3;

#[derive(Debug, Clone)]
pub struct StemConv {
    /// The kernel [out, in, 3] as [in·3, out], contiguous.
    weight_t: Tensor,
    bias: Tensor,
    stride: usize,
    in_channels: usize,
}

impl StemConv {
    pub fn load(vb: VarBuilder, in_channels: usize, out_channels: usize, stride: usize) -> Result<Self> {
        let weight = vb.get((out_channels, in_channels, TAPS), "weight")?;
        let weight_t = weight.reshape((out_channels, in_channels * TAPS))?.t()?.contiguous()?;
        Ok(Self { weight_t, bias: vb.get(out_channels, "bias")?, stride, in_channels })
    }

    /// Frames [b, t, in] (time-major) → [b, (t − 1) / stride + 1, out], zero-padded by one frame
    /// on each side as Whisper's convolutions are.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, t, c) = x.dims3()?;
        ensure!(c == self.in_channels, "the stem convolution takes {} channels, got {c}", self.in_channels);
        ensure!(t > 0, "the stem convolution got no frames");
        let n = (t - 1) / self.stride + 1;
        let columns = if x.device().is_cpu() && x.dtype() == DType::F32 { self.columns_on_host(x, n)? } else { self.columns(x, n)? };
        Ok(columns.broadcast_matmul(&self.weight_t)?.broadcast_add(&self.bias)?)
    }

    /// The im2col matrix [b, n, in·3] with tensor ops (any device): column ch·3 + j of output
    /// frame i holds input frame i·stride + j − 1 (zero outside), channel ch.
    fn columns(&self, x: &Tensor, n: usize) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        // Pad the end so that every tap has n·stride rows to step through.
        let padded_len = n * self.stride + TAPS - 1;
        let zeros = |rows| Tensor::zeros((b, rows, c), x.dtype(), x.device());
        let padded = Tensor::cat(&[&zeros(1)?, x, &zeros(padded_len - 1 - t)?], 1)?;
        let taps: Vec<Tensor> = (0..TAPS)
            .map(|j| {
                let rows = padded.narrow(1, j, n * self.stride)?;
                Ok(rows.reshape((b, n, self.stride, c))?.narrow(2, 0, 1)?.squeeze(2)?)
            })
            .collect::<Result<_>>()?;
        Ok(Tensor::stack(&taps, 3)?.reshape((b, n, c * TAPS))?)
    }

    /// [`StemConv::columns`] as one pass over host memory: candle copies a strided stack
    /// element by element, which took longer than the product itself.
    fn columns_on_host(&self, x: &Tensor, n: usize) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let src = x.flatten_all()?.to_vec1::<f32>()?;
        let mut dst = vec![0f32; b * n * c * TAPS];
        for (seq, out) in src.chunks_exact(t * c).zip(dst.chunks_exact_mut(n * c * TAPS)) {
            for (i, out_row) in out.chunks_exact_mut(c * TAPS).enumerate() {
                for j in 0..TAPS {
                    let Some(frame) = (i * self.stride + j).checked_sub(1).filter(|&f| f < t) else { continue };
                    for (ch, &v) in seq[frame * c..(frame + 1) * c].iter().enumerate() {
                        out_row[ch * TAPS + j] = v;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(dst, (b, n, c * TAPS), x.device())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::{Conv1d, Conv1dConfig, Module};

    /// Against candle's conv1d on channels-first input, for both strides and odd and even lengths.
    #[test]
    fn matches_candle_conv1d() -> Result<()> {
        let device = Device::Cpu;
        for (stride, t) in [(1, 10), (1, 7), (2, 10), (2, 7), (2, 1), (1, 1)] {
            let (c_in, c_out) = (5, 4);
            let weight = Tensor::randn(0f32, 1.0, (c_out, c_in, TAPS), &device)?;
            let bias = Tensor::randn(0f32, 1.0, c_out, &device)?;
            let x = Tensor::randn(0f32, 1.0, (2, c_in, t), &device)?;
            let reference = Conv1d::new(weight.clone(), Some(bias.clone()), Conv1dConfig { padding: 1, stride, ..Default::default() })
                .forward(&x)?
                .transpose(1, 2)?;
            let vars = std::collections::HashMap::from([("weight".to_string(), weight), ("bias".to_string(), bias)]);
            let conv = StemConv::load(VarBuilder::from_tensors(vars, DType::F32, &device), c_in, c_out, stride)?;
            let x = x.transpose(1, 2)?.contiguous()?;
            let n = reference.dim(1)?;
            // Both ways of gathering the columns, the host loop and the tensor ops.
            assert_eq!(
                conv.columns_on_host(&x, n)?.to_vec3::<f32>()?,
                conv.columns(&x, n)?.to_vec3::<f32>()?,
                "stride {stride}, {t} frames"
            );
            let ours = conv.forward(&x)?;
            assert_eq!(ours.dims(), reference.dims(), "stride {stride}, {t} frames");
            let diff = (ours - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "stride {stride}, {t} frames: max difference {diff}");
            assert!(conv.forward(&Tensor::zeros((1, 0, c_in), DType::F32, &device)?).is_err(), "no frames is an error, not a panic");
        }
        Ok(())
    }
}
