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

    /// Row r · x, summed exactly as [`Matrix::gemv`] sums it.
    pub fn dot_row(&self, r: usize, x: &[f32]) -> f32 {
        let c = self.cols;
        let mut out = [0f32];
        match &self.data {
            Data::F16(d) => dot_rows_f16(&d[r * c..(r + 1) * c], c, x, &mut out),
            Data::F32(d) => dot_rows_f32(&d[r * c..(r + 1) * c], c, x, &mut out),
        }
        out[0]
    }

    /// out = W x (+ bias).
    pub fn gemv(&self, x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
        debug_assert_eq!(out.len(), self.rows);
        self.gemv_rows(0, x, bias, out);
    }

    /// out = rows first_row.. of W times x (+ their bias), as many rows as `out` holds.
    pub fn gemv_rows(&self, first_row: usize, x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
        debug_assert_eq!(x.len(), self.cols);
        debug_assert!(first_row + out.len() <= self.rows);
        let cols = self.cols;
        let rows_per_task = (ROWS_PER_TASK_MIN_ELEMS / cols).max(1);
        let run = |chunk_row: usize, chunk: &mut [f32]| {
            let first_row = first_row + chunk_row;
            let rows = first_row * cols..(first_row + chunk.len()) * cols;
            match &self.data {
                Data::F16(d) => dot_rows_f16(&d[rows], cols, x, chunk),
                Data::F32(d) => dot_rows_f32(&d[rows], cols, x, chunk),
            }
            if let Some(b) = bias {
                chunk.iter_mut().zip(&b[first_row..]).for_each(|(o, b)| *o += b);
            }
        };
        if out.len() * cols >= 4 * ROWS_PER_TASK_MIN_ELEMS {
            out.par_chunks_mut(rows_per_task).enumerate().for_each(|(i, chunk)| run(i * rows_per_task, chunk));
        } else {
            run(0, out);
        }
    }
}

impl Matrix {
    /// [`Matrix::gemv_rows`] for `out.n` inputs at once (x holds them one after another):
    /// each weight is read from memory once for all of them, and every output is bit for bit
    /// what [`Matrix::gemv_rows`] gives for its input alone.
    pub fn gemv_batch_rows(&self, first_row: usize, x: &[f32], bias: Option<&[f32]>, out: BatchOut) {
        debug_assert_eq!(x.len(), out.n * self.cols);
        debug_assert!(first_row + out.rows <= self.rows);
        let cols = self.cols;
        let run = |chunk_row: usize, mut chunk: BatchOut| {
            let first_row = first_row + chunk_row;
            let rows = first_row * cols..(first_row + chunk.rows) * cols;
            match &self.data {
                Data::F16(d) => dot_rows_batch_f16(&d[rows], cols, x, chunk),
                Data::F32(d) => dot_rows_batch_f32(&d[rows], cols, x, chunk),
            }
            if let Some(b) = bias {
                for o in 0..chunk.n {
                    chunk.output(o).iter_mut().zip(&b[first_row..]).for_each(|(o, b)| *o += b);
                }
            }
        };
        in_row_tasks(out, cols, run);
    }
}

/// Runs `run(first_row, rows)` over `out`'s rows, split among threads when the batch's work
/// is large enough to pay for them.
fn in_row_tasks(out: BatchOut, cols: usize, run: impl Fn(usize, BatchOut) + Sync) {
    if out.n * out.rows * cols >= 4 * ROWS_PER_TASK_MIN_ELEMS {
        let rows_per_task = (ROWS_PER_TASK_MIN_ELEMS / cols).max(1);
        (0..out.rows.div_ceil(rows_per_task)).into_par_iter().for_each(|t| {
            let first = t * rows_per_task;
            run(first, out.rows(first, rows_per_task.min(out.rows - first)));
        });
    } else {
        run(0, out);
    }
}

/// The first rows of a matrix at 8 bits per weight, one scale per row (w ≈ scale · q, q in
/// −127..=127), for a first pass over the vocabulary that reads a quarter of the f32 bytes and
/// half of the float16 ones: single-token decoding is bound by memory, and the vocabulary
/// projection is most of what a token reads. Its error is bounded, so the rows that could
/// matter can be computed again exactly ([`QuantizedRows::error_bound`]).
#[derive(Debug, Clone)]
pub struct QuantizedRows {
    q: Vec<i8>,
    scale: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl QuantizedRows {
    /// The first `rows` rows of `m`.
    pub fn from_matrix(m: &Matrix, rows: usize) -> Self {
        let cols = m.cols;
        let mut row = vec![0f32; cols];
        let mut q = Vec::with_capacity(rows * cols);
        let mut scale = Vec::with_capacity(rows);
        for r in 0..rows {
            m.row_into(r, &mut row);
            let max = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            let s = if max > 0.0 { max / 127.0 } else { 1.0 };
            q.extend(row.iter().map(|v| (v / s).round().clamp(-127.0, 127.0) as i8));
            scale.push(s);
        }
        Self { q, scale, rows, cols }
    }

    /// out[r] ≈ w_r · x for the quantised rows, within [`QuantizedRows::error_bound`].
    pub fn gemv(&self, x: &[f32], out: &mut [f32]) {
        debug_assert_eq!(out.len(), self.rows);
        let cols = self.cols;
        let rows_per_task = (ROWS_PER_TASK_MIN_ELEMS / cols).max(1);
        out.par_chunks_mut(rows_per_task).enumerate().for_each(|(i, chunk)| {
            let first = i * rows_per_task;
            dot_rows_i8(&self.q[first * cols..(first + chunk.len()) * cols], cols, x, chunk);
            chunk.iter_mut().zip(&self.scale[first..]).for_each(|(o, s)| *o *= s);
        });
    }

    /// [`QuantizedRows::gemv`] for `out.n` inputs at once, bit for bit its outputs.
    pub fn gemv_batch(&self, x: &[f32], out: BatchOut) {
        debug_assert_eq!(out.rows, self.rows);
        let cols = self.cols;
        in_row_tasks(out, cols, |first, mut chunk| {
            dot_rows_batch_i8(&self.q[first * cols..(first + chunk.rows) * cols], cols, x, chunk);
            for o in 0..chunk.n {
                chunk.output(o).iter_mut().zip(&self.scale[first..]).for_each(|(o, s)| *o *= s);
            }
        });
    }

    /// How far row r's quantised product can be from the float16 one for an input whose
    /// absolute values sum to `x_l1`: half a quantisation step per weight, |Σ e_i x_i| ≤
    /// scale / 2 · ‖x‖₁, with a tenth more for the two products' float rounding (under 1 %).
    pub fn error_bound(&self, row: usize, x_l1: f32) -> f32 {
        0.55 * self.scale[row] * x_l1
    }
}

/// [`dot_rows_f32`] over 8-bit weights (unscaled), widened to f32 in registers.
pub fn dot_rows_i8(w: &[i8], cols: usize, x: &[f32], out: &mut [f32]) {
    check_row_shapes(w.len(), cols, x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: as in `dot_rows_f32`.
            return unsafe { dot_rows_i8_avx512(w, cols, x, out) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as in `dot_rows_f32`.
            return unsafe { dot_rows_i8_avx2(w, cols, x, out) };
        }
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = w[i * cols..(i + 1) * cols].iter().zip(x).map(|(&a, b)| f32::from(a) * b).sum();
    }
}

/// Dot products of the consecutive rows of `w` (row-major, `cols` wide) with `x`: out[i] = w_i · x.
/// The instruction set is picked once per call, not per row, and rows go four at a time, so each
/// load of `x` serves four rows; with short rows (an attention head's 64 channels) the per-row
/// call and horizontal sum would otherwise cost as much as the products.
pub fn dot_rows_f32(w: &[f32], cols: usize, x: &[f32], out: &mut [f32]) {
    check_row_shapes(w.len(), cols, x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function was compiled for, and the
            // slices are long enough (asserted above).
            return unsafe { dot_rows_f32_avx512(w, cols, x, out) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { dot_rows_f32_avx2(w, cols, x, out) };
        }
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot_f32_generic(&w[i * cols..(i + 1) * cols], x);
    }
}

/// The x86 kernels read whole registers through raw pointers: this keeps them in bounds.
fn check_row_shapes(weights: usize, cols: usize, inputs: usize, rows: usize) {
    assert!(weights >= rows * cols && inputs >= cols, "dot_rows: {weights} weights, {inputs} inputs for {rows} rows of {cols}");
}

/// [`dot_rows_f32`] over float16 weights, widened to f32 in registers.
pub fn dot_rows_f16(w: &[f16], cols: usize, x: &[f32], out: &mut [f32]) {
    check_row_shapes(w.len(), cols, x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: as in `dot_rows_f32`.
            return unsafe { dot_rows_f16_avx512(w, cols, x, out) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c") {
            // SAFETY: as in `dot_rows_f32`.
            return unsafe { dot_rows_f16_avx2(w, cols, x, out) };
        }
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = w[i * cols..(i + 1) * cols].iter().zip(x).map(|(a, b)| a.to_f32() * b).sum();
    }
}

/// One x86 batched kernel ([`dot_rows_batch`]): the one-input kernel's loop, each weight register
/// used for N inputs, each product summed in the one-input kernel's order.
#[cfg(target_arch = "x86_64")]
macro_rules! dot_rows_batch_kernel {
    ($name:ident, $features:literal, $elem:ty, $lanes:literal, $zero:ident, $load_w:expr, $load_x:ident, $fma:ident, $sum:expr) => {
        #[target_feature(enable = $features)]
        unsafe fn $name(w: &[$elem], cols: usize, x: &[f32], n: usize, out: BatchOut) {
            #[target_feature(enable = $features)]
            unsafe fn run<const N: usize>(w: &[$elem], cols: usize, x: &[f32], mut out: BatchOut) {
                use std::arch::x86_64::*;
                let body = cols / $lanes * $lanes;
                let tail = |row: usize, b: usize| -> f32 { (body..cols).map(|i| f32::from(w[row * cols + i]) * x[b * cols + i]).sum() };
                let (wp, xp) = (w.as_ptr(), x.as_ptr());
                let rows = out.rows;
                let mut r = 0;
                while r + 2 <= rows {
                    let p = wp.add(r * cols);
                    let mut a0 = [$zero(); N];
                    let mut a1 = [$zero(); N];
                    let mut i = 0;
                    while i < body {
                        let (w0, w1) = ($load_w(p.add(i)), $load_w(p.add(cols + i)));
                        for b in 0..N {
                            let xv = $load_x(xp.add(b * cols + i));
                            a0[b] = $fma(w0, xv, a0[b]);
                            a1[b] = $fma(w1, xv, a1[b]);
                        }
                        i += $lanes;
                    }
                    for b in 0..N {
                        let o = out.output(b);
                        o[r] = $sum(a0[b]) + tail(r, b);
                        o[r + 1] = $sum(a1[b]) + tail(r + 1, b);
                    }
                    r += 2;
                }
                if r < rows {
                    let p = wp.add(r * cols);
                    let mut a = [$zero(); N];
                    let mut i = 0;
                    while i < body {
                        let wv = $load_w(p.add(i));
                        for b in 0..N {
                            a[b] = $fma(wv, $load_x(xp.add(b * cols + i)), a[b]);
                        }
                        i += $lanes;
                    }
                    for b in 0..N {
                        out.output(b)[r] = $sum(a[b]) + tail(r, b);
                    }
                }
            }
            match n {
                1 => run::<1>(w, cols, x, out),
                2 => run::<2>(w, cols, x, out),
                3 => run::<3>(w, cols, x, out),
                4 => run::<4>(w, cols, x, out),
                5 => run::<5>(w, cols, x, out),
                6 => run::<6>(w, cols, x, out),
                _ => unreachable!("at most BATCH_PER_PASS inputs per pass"),
            }
        }
    };
}

/// One x86 kernel of `dot_rows_*`: `$lanes` floats per vector register, `$load_w` reads (and
/// widens) `$lanes` weights, `$sum` adds a register's lanes; the columns past the last full
/// register and the rows past the last block of four are summed one by one. `$batch` is the
/// same kernel for several inputs at once.
#[cfg(target_arch = "x86_64")]
macro_rules! dot_rows_kernel {
    ($name:ident, $batch:ident, $features:literal, $elem:ty, $lanes:literal, $zero:ident, $load_w:expr, $load_x:ident, $fma:ident, $sum:expr) => {
        dot_rows_batch_kernel!($batch, $features, $elem, $lanes, $zero, $load_w, $load_x, $fma, $sum);
        #[target_feature(enable = $features)]
        unsafe fn $name(w: &[$elem], cols: usize, x: &[f32], out: &mut [f32]) {
            use std::arch::x86_64::*;
            let body = cols / $lanes * $lanes;
            let tail = |row: usize| -> f32 { (body..cols).map(|i| f32::from(w[row * cols + i]) * x[i]).sum() };
            let (wp, xp) = (w.as_ptr(), x.as_ptr());
            let mut r = 0;
            while r + 4 <= out.len() {
                let p = wp.add(r * cols);
                let (mut a0, mut a1, mut a2, mut a3) = ($zero(), $zero(), $zero(), $zero());
                let mut i = 0;
                while i < body {
                    let xv = $load_x(xp.add(i));
                    a0 = $fma($load_w(p.add(i)), xv, a0);
                    a1 = $fma($load_w(p.add(cols + i)), xv, a1);
                    a2 = $fma($load_w(p.add(2 * cols + i)), xv, a2);
                    a3 = $fma($load_w(p.add(3 * cols + i)), xv, a3);
                    i += $lanes;
                }
                out[r] = $sum(a0) + tail(r);
                out[r + 1] = $sum(a1) + tail(r + 1);
                out[r + 2] = $sum(a2) + tail(r + 2);
                out[r + 3] = $sum(a3) + tail(r + 3);
                r += 4;
            }
            while r < out.len() {
                let p = wp.add(r * cols);
                let mut a = $zero();
                let mut i = 0;
                while i < body {
                    a = $fma($load_w(p.add(i)), $load_x(xp.add(i)), a);
                    i += $lanes;
                }
                out[r] = $sum(a) + tail(r);
                r += 1;
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
dot_rows_kernel!(
    dot_rows_f32_avx512,
    dot_rows_batch_f32_avx512,
    "avx512f",
    f32,
    16,
    _mm512_setzero_ps,
    |p| _mm512_loadu_ps(p),
    _mm512_loadu_ps,
    _mm512_fmadd_ps,
    |a| { _mm512_reduce_add_ps(a) }
);
#[cfg(target_arch = "x86_64")]
dot_rows_kernel!(
    dot_rows_f16_avx512,
    dot_rows_batch_f16_avx512,
    "avx512f",
    f16,
    16,
    _mm512_setzero_ps,
    |p: *const f16| _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
    _mm512_loadu_ps,
    _mm512_fmadd_ps,
    |a| _mm512_reduce_add_ps(a)
);
#[cfg(target_arch = "x86_64")]
dot_rows_kernel!(
    dot_rows_i8_avx512,
    dot_rows_batch_i8_avx512,
    "avx512f",
    i8,
    16,
    _mm512_setzero_ps,
    |p: *const i8| _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i))),
    _mm512_loadu_ps,
    _mm512_fmadd_ps,
    |a| _mm512_reduce_add_ps(a)
);
#[cfg(target_arch = "x86_64")]
dot_rows_kernel!(
    dot_rows_i8_avx2,
    dot_rows_batch_i8_avx2,
    "avx2,fma",
    i8,
    8,
    _mm256_setzero_ps,
    |p: *const i8| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))),
    _mm256_loadu_ps,
    _mm256_fmadd_ps,
    |a| sum_m256(a)
);
#[cfg(target_arch = "x86_64")]
dot_rows_kernel!(
    dot_rows_f32_avx2,
    dot_rows_batch_f32_avx2,
    "avx2,fma",
    f32,
    8,
    _mm256_setzero_ps,
    |p| _mm256_loadu_ps(p),
    _mm256_loadu_ps,
    _mm256_fmadd_ps,
    |a| { sum_m256(a) }
);
#[cfg(target_arch = "x86_64")]
dot_rows_kernel!(
    dot_rows_f16_avx2,
    dot_rows_batch_f16_avx2,
    "avx2,fma,f16c",
    f16,
    8,
    _mm256_setzero_ps,
    |p: *const f16| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
    _mm256_loadu_ps,
    _mm256_fmadd_ps,
    |a| sum_m256(a)
);

/// Where a batched row product writes: n outputs of `stride` floats each, beam-major
/// (out[b·stride + r]). Parallel tasks each take their own rows of every output
/// ([`BatchOut::rows`]); the rows of different tasks never overlap.
#[derive(Clone, Copy)]
pub struct BatchOut<'a> {
    ptr: *mut f32,
    stride: usize,
    first: usize,
    rows: usize,
    n: usize,
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: a `BatchOut` only writes the rows it was given, and the views handed to parallel
// tasks cover disjoint rows of the one slice they borrow exclusively.
unsafe impl Send for BatchOut<'_> {}
unsafe impl Sync for BatchOut<'_> {}

impl<'a> BatchOut<'a> {
    /// `out` holds `n` outputs of equal length, one after another.
    pub fn new(out: &'a mut [f32], n: usize) -> Self {
        assert!(n > 0 && out.len().is_multiple_of(n), "{} floats do not split into {n} outputs", out.len());
        let stride = out.len() / n;
        Self { ptr: out.as_mut_ptr(), stride, first: 0, rows: stride, n, _out: std::marker::PhantomData }
    }

    /// Rows first..first + count of every output (relative to this view).
    pub(crate) fn rows(self, first: usize, count: usize) -> Self {
        assert!(first + count <= self.rows);
        Self { first: self.first + first, rows: count, ..self }
    }

    /// Inputs b0..b0 + n of this view.
    fn outputs(self, b0: usize, n: usize) -> Self {
        assert!(b0 + n <= self.n);
        // SAFETY: within the borrowed slice: b0 + n ≤ self.n outputs of `stride` floats.
        Self { ptr: unsafe { self.ptr.add(b0 * self.stride) }, n, ..self }
    }

    /// Output b's rows as a slice.
    pub(crate) fn output(&mut self, b: usize) -> &mut [f32] {
        assert!(b < self.n);
        // SAFETY: inside the borrowed slice, and only this view writes these rows.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(b * self.stride + self.first), self.rows) }
    }
}

/// Batched row kernels take at most this many inputs per pass: two rows × six accumulators
/// fill twelve of AVX2's sixteen vector registers, beside the two weight rows and an input.
const BATCH_PER_PASS: usize = 6;

/// The row products of `w` (as many rows as `out` has) with each of `out.n` inputs
/// x_b = x[b·cols..(b + 1)·cols]. Each weight is read once for all the inputs, and every
/// product is summed in the order `single` (the one-input kernel) sums it, so each output is
/// bit for bit what `single` gives.
fn dot_rows_batch<T: Copy>(
    w: &[T],
    cols: usize,
    x: &[f32],
    mut out: BatchOut,
    single: fn(&[T], usize, &[f32], &mut [f32]),
    kernel: Option<BatchKernel<T>>,
) {
    assert!(w.len() >= out.rows * cols && x.len() >= out.n * cols, "dot_rows_batch: shapes");
    let mut b0 = 0;
    while b0 < out.n {
        let n = (out.n - b0).min(BATCH_PER_PASS);
        match kernel {
            // SAFETY: the kernel's features were checked when it was picked; the shapes above.
            Some(k) => unsafe { k(w, cols, &x[b0 * cols..(b0 + n) * cols], n, out.outputs(b0, n)) },
            None => (0..n).for_each(|b| single(w, cols, &x[(b0 + b) * cols..], out.output(b0 + b))),
        }
        b0 += n;
    }
}

type BatchKernel<T> = unsafe fn(&[T], usize, &[f32], usize, BatchOut);

/// A public batched row product: the AVX-512 kernel, else the AVX2 one where the CPU has
/// `$avx2_feature`s, else the one-input kernel per input ([`dot_rows_batch`]).
macro_rules! batch_entry {
    ($(#[$doc:meta])* $name:ident, $elem:ty, $single:ident, $avx512:ident, $avx2:ident, $($avx2_feature:tt),+) => {
        $(#[$doc])*
        pub fn $name(w: &[$elem], cols: usize, x: &[f32], out: BatchOut) {
            #[allow(unused_mut)]
            let mut kernel: Option<BatchKernel<$elem>> = None;
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512f") {
                    kernel = Some($avx512);
                } else if $(std::is_x86_feature_detected!($avx2_feature))&&+ {
                    kernel = Some($avx2);
                }
            }
            dot_rows_batch(w, cols, x, out, $single, kernel)
        }
    };
}

batch_entry!(
    /// [`dot_rows_f32`] for each input of a batch ([`dot_rows_batch`]).
    dot_rows_batch_f32, f32, dot_rows_f32, dot_rows_batch_f32_avx512, dot_rows_batch_f32_avx2, "avx2", "fma"
);
batch_entry!(
    /// [`dot_rows_f16`] for each input of a batch ([`dot_rows_batch`]).
    dot_rows_batch_f16, f16, dot_rows_f16, dot_rows_batch_f16_avx512, dot_rows_batch_f16_avx2, "avx2", "fma", "f16c"
);
batch_entry!(
    /// [`dot_rows_i8`] for each input of a batch ([`dot_rows_batch`]).
    dot_rows_batch_i8, i8, dot_rows_i8, dot_rows_batch_i8_avx512, dot_rows_batch_i8_avx2, "avx2", "fma"
);

/// out = Σ_t p_t · v_t over the rows v_t of `v` (row-major, `cols` wide): attention's weighted
/// sum of values. Compiled for the widest vector set the CPU has, chosen once per call.
pub fn add_weighted_rows(p: &[f32], v: &[f32], cols: usize, out: &mut [f32]) {
    #[inline(always)]
    fn generic(p: &[f32], v: &[f32], cols: usize, out: &mut [f32]) {
        out.fill(0.0);
        for (&pt, row) in p.iter().zip(v.chunks_exact(cols)) {
            out.iter_mut().zip(row).for_each(|(o, x)| *o += pt * x);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(p: &[f32], v: &[f32], cols: usize, out: &mut [f32]) {
            generic(p, v, cols, out)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(p: &[f32], v: &[f32], cols: usize, out: &mut [f32]) {
            generic(p, v, cols, out)
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { avx512(p, v, cols, out) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { avx2(p, v, cols, out) };
        }
    }
    generic(p, v, cols, out)
}

/// The sum of a 256-bit register's eight floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn sum_m256(a: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_extractf128_ps(a, 1), _mm256_castps256_ps128(a));
    let s = _mm_hadd_ps(s, s);
    _mm_cvtss_f32(_mm_hadd_ps(s, s))
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    type RowKernel<T> = fn(&[T], usize, &[f32], &mut [f32]);

    /// The dispatching row kernels and each x86 kernel this CPU can run, so the AVX2 kernels
    /// are checked on a CPU that would pick AVX-512.
    #[allow(clippy::type_complexity)]
    fn row_kernels() -> Vec<(&'static str, RowKernel<f32>, RowKernel<f16>)> {
        #[allow(unused_mut)]
        let mut kernels: Vec<(&'static str, RowKernel<f32>, RowKernel<f16>)> = vec![("dispatch", dot_rows_f32, dot_rows_f16)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY (both): the CPU has the features the kernels were compiled for.
                kernels.push((
                    "avx512",
                    |w, c, x, o| unsafe { dot_rows_f32_avx512(w, c, x, o) },
                    |w, c, x, o| unsafe { dot_rows_f16_avx512(w, c, x, o) },
                ));
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c") {
                kernels.push((
                    "avx2",
                    |w, c, x, o| unsafe { dot_rows_f32_avx2(w, c, x, o) },
                    |w, c, x, o| unsafe { dot_rows_f16_avx2(w, c, x, o) },
                ));
            }
        }
        kernels
    }

    /// Every block and tail case of the row kernels: row counts around the block of four,
    /// column counts around the 8- and 16-float registers.
    #[test]
    fn row_dot_products_and_weighted_row_sums_match_plain_loops() {
        let mut rng = crate::rng::Rng::new(3);
        for rows in [0, 1, 3, 4, 5, 9] {
            for cols in [1, 7, 8, 15, 16, 17, 64, 389] {
                let w: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
                let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
                let x: Vec<f32> = (0..cols).map(|_| rng.normal() as f32).collect();
                let expected = |w: &[f32]| -> Vec<f32> { (0..rows).map(|r| (0..cols).map(|i| w[r * cols + i] * x[i]).sum()).collect() };
                let widened: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
                for (name, f32_kernel, f16_kernel) in row_kernels() {
                    let (mut out, mut out16) = (vec![f32::NAN; rows], vec![f32::NAN; rows]);
                    f32_kernel(&w, cols, &x, &mut out);
                    f16_kernel(&w16, cols, &x, &mut out16);
                    for (got, want) in out.iter().zip(expected(&w)).chain(out16.iter().zip(expected(&widened))) {
                        assert!((got - want).abs() < 1e-4 * (cols as f32).sqrt(), "{name} {rows}x{cols}: {got} vs {want}");
                    }
                }

                let p: Vec<f32> = (0..rows).map(|_| rng.uniform() as f32).collect();
                let mut sum = vec![f32::NAN; cols];
                add_weighted_rows(&p, &w, cols, &mut sum);
                for (i, got) in sum.iter().enumerate() {
                    let want: f32 = (0..rows).map(|r| p[r] * w[r * cols + i]).sum();
                    assert!((got - want).abs() < 1e-4, "{rows}x{cols}, column {i}: {got} vs {want}");
                }
            }
        }
    }

    /// 8-bit rows: every kernel this CPU runs against a plain loop over the same 8-bit values,
    /// and the scaled products within `error_bound` of the float16 ones.
    #[test]
    fn quantized_rows_stay_within_their_error_bound() {
        let mut rng = crate::rng::Rng::new(5);
        for (rows, cols) in [(9, 389), (37, 64), (5, 17)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32 * 0.1).collect();
            let m = Matrix::from_tensor(&Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap().to_dtype(DType::F16).unwrap()).unwrap();
            let x: Vec<f32> = (0..cols).map(|_| rng.normal() as f32 * 5.0).collect();
            let q = QuantizedRows::from_matrix(&m, rows - 1);
            let mut plain = vec![0f32; q.rows];
            for (r, p) in plain.iter_mut().enumerate() {
                *p = (0..cols).map(|i| f32::from(q.q[r * cols + i]) * x[i]).sum();
            }
            #[allow(clippy::type_complexity)]
            let mut kernels: Vec<(&str, RowKernel<i8>)> = vec![("dispatch", dot_rows_i8)];
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY (both): the CPU has the features the kernels were compiled for.
                    kernels.push(("avx512", |w, c, x, o| unsafe { dot_rows_i8_avx512(w, c, x, o) }));
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    kernels.push(("avx2", |w, c, x, o| unsafe { dot_rows_i8_avx2(w, c, x, o) }));
                }
            }
            for (name, kernel) in kernels {
                let mut out = vec![f32::NAN; q.rows];
                kernel(&q.q, cols, &x, &mut out);
                for (got, want) in out.iter().zip(&plain) {
                    assert!((got - want).abs() < 1e-3 * want.abs().max(1.0), "{name} {rows}x{cols}: {got} vs {want}");
                }
            }
            let l1: f32 = x.iter().map(|v| v.abs()).sum();
            let mut approx = vec![0f32; q.rows];
            q.gemv(&x, &mut approx);
            for (r, a) in approx.iter().enumerate() {
                let exact = m.dot_row(r, &x);
                assert!((a - exact).abs() <= q.error_bound(r, l1), "{rows}x{cols} row {r}: {a} vs {exact}");
            }
        }
    }

    /// Runs `batch` on `n` inputs and checks each output against `single` on that input
    /// alone, bit for bit.
    fn check_batch<T: Copy>(what: &str, w: &[T], cols: usize, x: &[f32], n: usize, single: RowKernel<T>, batch: Option<BatchKernel<T>>) {
        let rows = w.len() / cols;
        let mut got = vec![f32::NAN; n * rows];
        dot_rows_batch(w, cols, x, BatchOut::new(&mut got, n.max(1)), single, batch);
        for b in 0..n {
            let mut want = vec![f32::NAN; rows];
            single(w, cols, &x[b * cols..(b + 1) * cols], &mut want);
            let same = got[b * rows..(b + 1) * rows].iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
            assert!(same, "{what}: {n} inputs, {rows}x{cols}, input {b}: {:?} vs {want:?}", &got[b * rows..(b + 1) * rows]);
        }
    }

    /// Batched row products equal the one-input kernels' bit for bit (so beams stepped together
    /// decode exactly as beams stepped alone): batch sizes around a pass's six, row counts
    /// around the pairs, column counts around the 8- and 16-float registers; each x86 kernel
    /// this CPU runs, paired with its own one-input kernel, and the portable fallback.
    #[test]
    fn batched_row_products_equal_the_one_input_kernels_bit_for_bit() {
        let mut rng = crate::rng::Rng::new(11);
        for n in [1, 2, 5, 6, 7, 13] {
            for rows in [0, 1, 2, 3, 5] {
                for cols in [1, 7, 16, 17, 64, 389] {
                    let w: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
                    let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
                    let w8: Vec<i8> = w.iter().map(|&v| (v * 40.0).clamp(-127.0, 127.0) as i8).collect();
                    let x: Vec<f32> = (0..n * cols).map(|_| rng.normal() as f32).collect();
                    check_batch("f32 dispatch", &w, cols, &x, n, dot_rows_f32, None);
                    check_batch("f16 dispatch", &w16, cols, &x, n, dot_rows_f16, None);
                    check_batch("i8 dispatch", &w8, cols, &x, n, dot_rows_i8, None);
                    let mut via_public = vec![f32::NAN; n * rows];
                    dot_rows_batch_f16(&w16, cols, &x, BatchOut::new(&mut via_public, n));
                    let mut want = vec![f32::NAN; rows];
                    dot_rows_f16(&w16, cols, &x[..cols], &mut want);
                    assert!(via_public[..rows].iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
                    #[cfg(target_arch = "x86_64")]
                    {
                        // SAFETY (all): the CPU has the features the kernels were compiled for.
                        if std::is_x86_feature_detected!("avx512f") {
                            check_batch(
                                "f32 avx512",
                                &w,
                                cols,
                                &x,
                                n,
                                |w, c, x, o| unsafe { dot_rows_f32_avx512(w, c, x, o) },
                                Some(dot_rows_batch_f32_avx512),
                            );
                            check_batch(
                                "f16 avx512",
                                &w16,
                                cols,
                                &x,
                                n,
                                |w, c, x, o| unsafe { dot_rows_f16_avx512(w, c, x, o) },
                                Some(dot_rows_batch_f16_avx512),
                            );
                            check_batch(
                                "i8 avx512",
                                &w8,
                                cols,
                                &x,
                                n,
                                |w, c, x, o| unsafe { dot_rows_i8_avx512(w, c, x, o) },
                                Some(dot_rows_batch_i8_avx512),
                            );
                        }
                        if std::is_x86_feature_detected!("avx2")
                            && std::is_x86_feature_detected!("fma")
                            && std::is_x86_feature_detected!("f16c")
                        {
                            check_batch(
                                "f32 avx2",
                                &w,
                                cols,
                                &x,
                                n,
                                |w, c, x, o| unsafe { dot_rows_f32_avx2(w, c, x, o) },
                                Some(dot_rows_batch_f32_avx2),
                            );
                            check_batch(
                                "f16 avx2",
                                &w16,
                                cols,
                                &x,
                                n,
                                |w, c, x, o| unsafe { dot_rows_f16_avx2(w, c, x, o) },
                                Some(dot_rows_batch_f16_avx2),
                            );
                            check_batch(
                                "i8 avx2",
                                &w8,
                                cols,
                                &x,
                                n,
                                |w, c, x, o| unsafe { dot_rows_i8_avx2(w, c, x, o) },
                                Some(dot_rows_batch_i8_avx2),
                            );
                        }
                    }
                }
            }
        }
        // Matrix and quantised rows, split among threads: the batch against one input at a time.
        let m = Matrix::from_tensor(&Tensor::randn(0f32, 1.0, (1500, 389), &Device::Cpu).unwrap().to_dtype(DType::F16).unwrap()).unwrap();
        let q = QuantizedRows::from_matrix(&m, 1200);
        let bias: Vec<f32> = (0..1500).map(|_| rng.normal() as f32).collect();
        let n = 5;
        let x: Vec<f32> = (0..n * 389).map(|_| rng.normal() as f32).collect();
        let (mut rows, mut quantized) = (vec![0f32; n * 1000], vec![0f32; n * 1200]);
        m.gemv_batch_rows(300, &x, Some(&bias), BatchOut::new(&mut rows, n));
        q.gemv_batch(&x, BatchOut::new(&mut quantized, n));
        for b in 0..n {
            let (mut want_rows, mut want_quantized) = (vec![0f32; 1000], vec![0f32; 1200]);
            m.gemv_rows(300, &x[b * 389..(b + 1) * 389], Some(&bias), &mut want_rows);
            q.gemv(&x[b * 389..(b + 1) * 389], &mut want_quantized);
            assert_eq!(&rows[b * 1000..(b + 1) * 1000], &want_rows[..], "gemv_batch_rows, input {b}");
            assert_eq!(&quantized[b * 1200..(b + 1) * 1200], &want_quantized[..], "QuantizedRows::gemv_batch, input {b}");
        }
    }

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
