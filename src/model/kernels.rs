//! CPU kernels where candle's generic ones cost the most time in Whisper: the row softmax of
//! attention (candle calls libm's `expf` per element) and the exact GELU. Both use a
//! vectorisable polynomial exp (relative error ≈ 2e-7) compiled for AVX2+FMA when the CPU has
//! it. Other devices and dtypes fall back to candle's own operations.

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Result, Tensor};
use rayon::prelude::*;

const LOG2E: f32 = std::f32::consts::LOG2_E;

/// e^x as 2^n · 2^f with n = round(x·log2 e) and a degree-6 polynomial for 2^f on [-½, ½].
#[inline(always)]
fn exp_poly(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E;
    let n = (t + 0.5).floor();
    let f = t - n;
    let p = 1.0
        + f * (std::f32::consts::LN_2
            + f * (0.240_226_5 + f * (0.055_504_11 + f * (0.009_618_129 + f * (0.001_333_355 + f * 0.000_154_035_3)))));
    // SAFETY: n is a whole number in [-126, 127] after the clamp, so the conversion is exact;
    // the unchecked form compiles to one vector instruction where `as` would not.
    let e = unsafe { n.to_int_unchecked::<i32>() };
    p * f32::from_bits(((e + 127) as u32) << 23)
}

/// Inlined into the feature-specific wrappers below so that it is compiled for their
/// instruction sets; eight independent lanes let the reductions vectorise.
#[inline(always)]
fn softmax_row_generic(row: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    let mut max = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max = lanes.iter().copied().fold(max, f32::max);
    if max == f32::NEG_INFINITY {
        // A fully masked row: leave zeros rather than NaN.
        row.fill(0.0);
        return;
    }
    let mut sums = [0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for l in 0..8 {
            c[l] = exp_poly(c[l] - max);
            sums[l] += c[l];
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp_poly(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_row_avx2(row: &mut [f32]) {
    softmax_row_generic(row)
}

pub(crate) fn softmax_row(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { softmax_row_avx2(row) };
        }
    }
    softmax_row_generic(row)
}

/// ln Σ eˣ over a row: the log-normaliser of a token distribution, taken once per decoded
/// token over the whole vocabulary (libm's `exp` per element cost ~0.5 ms a token there). The
/// polynomial exp with the sum in f64 lanes stays within 1e-5 of the libm loop (unit test).
#[inline(always)]
fn logsumexp_generic(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    let max = lanes.iter().chain(chunks.remainder()).copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    let mut sums = [0f64; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            sums[l] += exp_poly(c[l] - max) as f64;
        }
    }
    let sum: f64 = sums.iter().sum::<f64>() + chunks.remainder().iter().map(|&v| exp_poly(v - max) as f64).sum::<f64>();
    max + sum.ln() as f32
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn logsumexp_avx2(row: &[f32]) -> f32 {
    logsumexp_generic(row)
}

pub(crate) fn logsumexp(row: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { logsumexp_avx2(row) };
        }
    }
    logsumexp_generic(row)
}

/// The `k` items with the largest values, largest first (the earlier item first on a tie):
/// one pass that keeps the k largest in order, without copying a vocabulary-long row (beam
/// search ranks every beam's logits at every step).
pub fn largest(items: impl Iterator<Item = (f32, u32)>, k: usize) -> Vec<(f32, u32)> {
    let mut top: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return top;
    }
    for (v, i) in items {
        if top.len() == k && v <= top[k - 1].0 {
            continue;
        }
        let at = top.partition_point(|&(x, _)| x >= v);
        top.insert(at, (v, i));
        top.truncate(k);
    }
    top
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7).
#[inline(always)]
fn erf_poly(x: f32) -> f32 {
    let s = x.signum();
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = 1.0 - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_7) * t - 0.284_496_74) * t + 0.254_829_6) * t * exp_poly(-a * a);
    s * y
}

#[inline(always)]
fn gelu_generic(xs: &mut [f32]) {
    for v in xs.iter_mut() {
        let x = *v;
        *v = 0.5 * x * (1.0 + erf_poly(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(xs: &mut [f32]) {
    gelu_generic(xs)
}

/// The same loop in 16-float registers (element-wise, so the same result as 8-float ones).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(xs: &mut [f32]) {
    gelu_generic(xs)
}

pub(crate) fn gelu_slice(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { gelu_avx512(xs) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { gelu_avx2(xs) };
        }
    }
    gelu_generic(xs)
}

fn contiguous_f32_mut<'a>(storage: &'a mut CpuStorage, layout: &Layout) -> Result<&'a mut [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&mut data[start..end]),
        _ => Err(candle_core::Error::Msg("fast kernel wants contiguous f32".into())),
    }
}

/// Softmax over the last dimension, in place (a fresh 54 MB copy per layer would cost more in
/// page faults than the arithmetic), after adding `bias[j]` to every row's j-th value when
/// there is one (a per-key attention bias, in the same pass rather than as a tensor op).
struct FastSoftmax<'a> {
    bias: Option<&'a [f32]>,
}

impl InplaceOp1 for FastSoftmax<'_> {
    fn name(&self) -> &'static str {
        "fast-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let dim = layout.dims().last().copied().unwrap_or(1).max(1);
        if let Some(bias) = self.bias.filter(|b| b.len() != dim) {
            candle_core::bail!("softmax bias of {} for rows of {dim}", bias.len());
        }
        let data = contiguous_f32_mut(storage, layout)?;
        // Rows are independent: split them across the worker threads in large blocks.
        let rows_per_task = (16_384 / dim).max(1);
        data.par_chunks_mut(dim * rows_per_task).for_each(|block| {
            block.chunks_mut(dim).for_each(|row| {
                if let Some(bias) = self.bias {
                    row.iter_mut().zip(bias).for_each(|(v, &b)| *v += b);
                }
                softmax_row(row)
            })
        });
        Ok(())
    }
}

struct FastGelu;

impl InplaceOp1 for FastGelu {
    fn name(&self) -> &'static str {
        "fast-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        contiguous_f32_mut(storage, layout)?.par_chunks_mut(16_384).for_each(gelu_slice);
        Ok(())
    }
}

fn use_fast_path(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && x.is_contiguous()
}

/// Softmax over the last dimension. Consumes `x`: on the CPU fast path the result reuses its
/// buffer, so the caller must not hold other views of it.
pub fn softmax_last_dim(x: Tensor) -> Result<Tensor> {
    if use_fast_path(&x) {
        x.inplace_op1(&FastSoftmax { bias: None })?;
        Ok(x)
    } else {
        candle_nn::ops::softmax_last_dim(&x)
    }
}

/// softmax(x + bias) over the last dimension, `bias` one value per position of it; consumes `x`
/// like [`softmax_last_dim`].
pub fn softmax_last_dim_with_bias(x: Tensor, bias: &[f32]) -> Result<Tensor> {
    if use_fast_path(&x) {
        x.inplace_op1(&FastSoftmax { bias: Some(bias) })?;
        Ok(x)
    } else {
        let bias = Tensor::from_slice(bias, bias.len(), x.device())?.to_dtype(x.dtype())?;
        candle_nn::ops::softmax_last_dim(&x.broadcast_add(&bias)?)
    }
}

/// Exact (erf) GELU; consumes `x` like [`softmax_last_dim`].
pub fn gelu_erf(x: Tensor) -> Result<Tensor> {
    if use_fast_path(&x) {
        x.inplace_op1(&FastGelu)?;
        Ok(x)
    } else {
        x.gelu_erf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `largest` against sorting the whole input: every k from none to more than there are,
    /// with ties (the earlier item first) and negative infinities among the values.
    #[test]
    fn largest_keeps_the_k_largest_in_order() {
        let mut rng = crate::rng::Rng::new(7);
        let values: Vec<f32> =
            (0..300).map(|i| if i % 17 == 0 { f32::NEG_INFINITY } else { (rng.normal() * 3.0).round() as f32 }).collect();
        let mut sorted: Vec<(f32, u32)> = values.iter().copied().zip(0..).collect();
        sorted.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
        for k in [0, 1, 2, 6, 50, 299, 300, 301] {
            let got = largest(values.iter().copied().zip(0..), k);
            assert_eq!(got, sorted[..k.min(300)], "k = {k}");
        }
    }

    #[test]
    fn logsumexp_matches_the_libm_loop_with_suppressed_tokens() {
        let exact = |v: &[f32]| -> f32 {
            let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            max + v.iter().map(|&x| ((x - max) as f64).exp()).sum::<f64>().ln() as f32
        };
        let mut rng = crate::rng::Rng::new(7);
        for n in [1, 7, 8, 9, 1501, 51_864] {
            let mut row: Vec<f32> = (0..n).map(|_| (rng.normal() * 4.0) as f32).collect();
            // Suppressed tokens, as the logit filters leave them.
            row.iter_mut().step_by(3).skip(1).for_each(|v| *v = f32::NEG_INFINITY);
            let (got, want) = (logsumexp(&row), exact(&row));
            assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "n = {n}: {got} vs {want}");
        }
        assert_eq!(logsumexp(&[f32::NEG_INFINITY; 5]), f32::NEG_INFINITY);
    }

    #[test]
    fn polynomial_exp_is_accurate() {
        // f32 rounding of x·log2(e) alone costs ~|x|·1e-7 relative, so the bound grows with |x|.
        let mut x = -80.0f32;
        while x < 80.0 {
            let rel = ((exp_poly(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            let bound = if x.abs() <= 20.0 { 1e-6 } else { 1e-5 };
            assert!(rel < bound, "exp({x}): relative error {rel}");
            x += 0.173;
        }
    }

    #[test]
    fn polynomial_erf_is_accurate() {
        for i in -400..400 {
            let x = i as f64 / 100.0;
            // Reference erf by its Maclaurin series, good to 1e-12 for |x| ≤ 4 in f64.
            let mut term = x;
            let mut sum = x;
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            let reference = sum * 2.0 / std::f64::consts::PI.sqrt();
            assert!((erf_poly(x as f32) as f64 - reference).abs() < 5e-7, "erf({x})");
        }
    }

    #[test]
    fn softmax_matches_candle_and_handles_masked_rows() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 3.0, (3, 7, 33), &dev).unwrap();
        let a = softmax_last_dim(x.copy().unwrap()).unwrap();
        let b = candle_nn::ops::softmax_last_dim(&x).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{diff}");
        let masked = Tensor::full(f32::NEG_INFINITY, (2, 5), &dev).unwrap();
        let s = softmax_last_dim(masked).unwrap().to_vec2::<f32>().unwrap();
        assert!(s.iter().flatten().all(|&v| v == 0.0));
    }

    #[test]
    fn gelu_matches_candle_exact_gelu() {
        let x = Tensor::randn(0f32, 3.0, (1000,), &candle_core::Device::Cpu).unwrap();
        let diff = (gelu_erf(x.copy().unwrap()).unwrap() - x.gelu_erf().unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 2e-6, "{diff}");
    }

    /// Every GELU kernel this CPU runs gives the portable loop's bits.
    #[test]
    fn gelu_kernels_agree_bit_for_bit() {
        let x: Vec<f32> = (0..1037).map(|i| (i as f32 * 0.731).sin() * 6.0).collect();
        let mut want = x.clone();
        gelu_generic(&mut want);
        #[cfg(target_arch = "x86_64")]
        {
            let mut kernels: Vec<(&str, unsafe fn(&mut [f32]))> = Vec::new();
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                kernels.push(("avx2", gelu_avx2));
            }
            if std::is_x86_feature_detected!("avx512f") {
                kernels.push(("avx512", gelu_avx512));
            }
            for (name, kernel) in kernels {
                let mut got = x.clone();
                // SAFETY: only kernels whose features this CPU has were pushed.
                unsafe { kernel(&mut got) };
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}");
            }
        }
    }
}
