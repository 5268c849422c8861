//! Matrix–vector products for single-token decoding, over weights kept in the checkpoint's own
//! precision (Whisper ships float16; widening to f32 happens in registers, so results equal an
//! f32 matmul up to summation order while half the bytes cross the memory bus).

use anyhow::Result;
use candle_core::{DType, Tensor};
use half::f16;
use rayon::prelude::*;

#[derive(Debug, Clone)]
enum Data {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

/// A row-major weight matrix [rows, cols].
#[derive(Debug, Clone)]
pub struct Matrix {
    data: Data,
    pub rows: usize,
    pub cols: usize,
}

/// Rows per parallel task: below this much work, threads cost more than they save.
const ROWS_PER_TASK_MIN_ELEMS: usize = 1 << 16;

impl Matrix {
    /// Keep float16 tensors as float16; anything else becomes f32.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let (rows, cols) = t.dims2()?;
        let data = match t.dtype() {
            DType::F16 => Data::F16(t.flatten_all()?.to_vec1::<f16>()?),
            _ => Data::F32(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
        };
        Ok(Self { data, rows, cols })
    }

    /// Stack matrices with the same column count (fused projections).
    pub fn stack(parts: &[Matrix]) -> Matrix {
        let cols = parts[0].cols;
        let rows = parts.iter().map(|p| p.rows).sum();
        let all_f16 = parts.iter().all(|p| matches!(p.data, Data::F16(_)));
        let data = if all_f16 {
            Data::F16(parts.iter().flat_map(|p| if let Data::F16(d) = &p.data { d.clone() } else { unreachable!() }).collect())
        } else {
            Data::F32(
                parts
                    .iter()
                    .flat_map(|p| match &p.data {
                        Data::F16(d) => d.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
                        Data::F32(d) => d.clone(),
                    })
                    .collect(),
            )
        };
        Matrix { data, rows, cols }
    }

    /// Row `r` widened to f32 (an embedding lookup).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        match &self.data {
            Data::F16(d) => out.iter_mut().zip(&d[r * c..(r + 1) * c]).for_each(|(o, v)| *o = v.to_f32()),
            Data::F32(d) => out.copy_from_slice(&d[r * c..(r + 1) * c]),
        }
    }

    /// out = W x (+ bias).
    pub fn gemv(&self, x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
        debug_assert_eq!(x.len(), self.cols);
        debug_assert_eq!(out.len(), self.rows);
        let cols = self.cols;
        let rows_per_task = (ROWS_PER_TASK_MIN_ELEMS / cols).max(1);
        let run = |first_row: usize, chunk: &mut [f32]| {
            for (i, o) in chunk.iter_mut().enumerate() {
                let r = first_row + i;
                *o = match &self.data {
                    Data::F16(d) => dot_f16(&d[r * cols..(r + 1) * cols], x),
                    Data::F32(d) => dot_f32(&d[r * cols..(r + 1) * cols], x),
                } + bias.map_or(0.0, |b| b[r]);
            }
        };
        if self.rows * cols >= 4 * ROWS_PER_TASK_MIN_ELEMS {
            out.par_chunks_mut(rows_per_task).enumerate().for_each(|(i, chunk)| run(i * rows_per_task, chunk));
        } else {
            run(0, out);
        }
    }
}

/// Dot product of f32 slices.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { dot_f32_avx2(a, b) };
        }
    }
    dot_f32_generic(a, b)
}

#[inline(always)]
fn dot_f32_generic(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent partial sums let the compiler keep one vector register of them.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_generic(a, b)
}

fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c") {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { dot_f16_avx2(w, x) };
        }
    }
    w.iter().zip(x).map(|(a, b)| a.to_f32() * b).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(w: &[f16], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = w.len().min(x.len());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        let w0 = _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(i) as *const __m128i));
        let w1 = _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(i + 8) as *const __m128i));
        acc0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x.as_ptr().add(i)), acc0);
        acc1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.as_ptr().add(i + 8)), acc1);
        i += 16;
    }
    let acc = _mm256_add_ps(acc0, acc1);
    let hi = _mm256_extractf128_ps(acc, 1);
    let lo = _mm256_castps256_ps128(acc);
    let s = _mm_add_ps(hi, lo);
    let s = _mm_hadd_ps(s, s);
    let s = _mm_hadd_ps(s, s);
    let mut sum = _mm_cvtss_f32(s);
    while i < n {
        sum += w[i].to_f32() * x[i];
        i += 1;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn gemv_matches_candle_matmul_for_f16_and_f32() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (300, 389), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (389,), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (300,), &dev).unwrap();
        for wt in [w.clone(), w.to_dtype(DType::F16).unwrap()] {
            let m = Matrix::from_tensor(&wt).unwrap();
            let mut out = vec![0f32; 300];
            m.gemv(&x.to_vec1().unwrap(), Some(&b.to_vec1::<f32>().unwrap()), &mut out);
            let expected = (wt.to_dtype(DType::F32).unwrap().matmul(&x.unsqueeze(1).unwrap()).unwrap().squeeze(1).unwrap() + &b)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (o, e) in out.iter().zip(&expected) {
                assert!((o - e).abs() < 1e-3, "{o} vs {e}");
            }
        }
    }
}
