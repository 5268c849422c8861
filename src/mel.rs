//! Whisper's log-mel front-end, computed exactly as openai/whisper does: a centred STFT
//! (reflect padding, periodic Hann window, n_fft 400, hop 160), the power spectrum, Slaney mel
//! filters, log10 with a 1e-10 floor, the (max − 8) clamp, then (x + 4) / 4.

use realfft::{RealFftPlanner, RealToComplex};
use std::sync::Arc;

pub const SAMPLE_RATE: usize = 16_000;
pub const N_FFT: usize = 400;
pub const HOP_LENGTH: usize = 160;
/// Samples in one 30-second window.
pub const CHUNK_SAMPLES: usize = 30 * SAMPLE_RATE;
/// Mel frames in one 30-second window.
pub const CHUNK_FRAMES: usize = CHUNK_SAMPLES / HOP_LENGTH;

/// Slaney-style mel scale (librosa's default, `htk=False`): linear below 1 kHz, log above.
fn hz_to_mel(hz: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= min_log_hz {
        min_log_mel + (hz / min_log_hz).ln() / logstep
    } else {
        hz / f_sp
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel {
        min_log_hz * (logstep * (mel - min_log_mel)).exp()
    } else {
        f_sp * mel
    }
}

/// Slaney-normalised triangular mel filters, [n_mels][n_fft / 2 + 1], as
/// `librosa.filters.mel(sr, n_fft, n_mels)` computes them (the source of openai's
/// `mel_filters.npz`).
pub fn mel_filters(sample_rate: usize, n_fft: usize, n_mels: usize) -> Vec<Vec<f64>> {
    let n_bins = n_fft / 2 + 1;
    let fft_freqs: Vec<f64> = (0..n_bins).map(|i| i as f64 * sample_rate as f64 / n_fft as f64).collect();
    let (mel_min, mel_max) = (hz_to_mel(0.0), hz_to_mel(sample_rate as f64 / 2.0));
    let mel_f: Vec<f64> = (0..n_mels + 2).map(|i| mel_to_hz(mel_min + (mel_max - mel_min) * i as f64 / (n_mels + 1) as f64)).collect();
    (0..n_mels)
        .map(|m| {
            let (lo, center, hi) = (mel_f[m], mel_f[m + 1], mel_f[m + 2]);
            let enorm = 2.0 / (hi - lo);
            fft_freqs
                .iter()
                .map(|&f| {
                    let lower = (f - lo) / (center - lo);
                    let upper = (hi - f) / (hi - center);
                    lower.min(upper).max(0.0) * enorm
                })
                .collect()
        })
        .collect()
}

/// A log-mel spectrogram, row-major [n_mels][frames].
#[derive(Debug, Clone)]
pub struct LogMel {
    pub n_mels: usize,
    pub frames: usize,
    pub data: Vec<f32>,
    /// The value digital silence takes after the (max − 8) clamp and scaling: what every
    /// padding frame of this spectrogram holds.
    pub silence: f32,
}

impl LogMel {
    /// Frames [start, start + len), padded with `pad_value` past the end (openai pads with
    /// 0.0 in the log-mel domain); row-major [n_mels][len].
    pub fn window(&self, start: usize, len: usize, pad_value: f32) -> Vec<f32> {
        let mut out = vec![pad_value; self.n_mels * len];
        let available = self.frames.saturating_sub(start).min(len);
        for m in 0..self.n_mels {
            let row = &self.data[m * self.frames..(m + 1) * self.frames];
            out[m * len..m * len + available].copy_from_slice(&row[start..start + available]);
        }
        out
    }
}

/// One filter's non-zero span: first FFT bin and its weights.
struct SparseFilter {
    first_bin: usize,
    weights: Vec<f32>,
}

pub struct MelFrontend {
    pub n_mels: usize,
    filters: Vec<SparseFilter>,
    window: Vec<f32>,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl MelFrontend {
    pub fn new(n_mels: usize) -> Self {
        let filters = mel_filters(SAMPLE_RATE, N_FFT, n_mels)
            .into_iter()
            .map(|row| {
                let first = row.iter().position(|&w| w > 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w > 0.0).unwrap_or(0);
                SparseFilter { first_bin: first, weights: row[first..=last.max(first)].iter().map(|&w| w as f32).collect() }
            })
            .collect();
        // torch.hann_window is periodic: 0.5 − 0.5·cos(2πn/N).
        let window = (0..N_FFT).map(|n| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()) as f32).collect();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        Self { n_mels, filters, window, fft }
    }

    /// Log-mel of `audio` followed by `pad_samples` zeros (openai pads with 30 s of silence so
    /// that the last window is full), dropping the STFT's final frame as openai does.
    pub fn compute(&self, audio: &[f32], pad_samples: usize) -> LogMel {
        let len = audio.len() + pad_samples;
        let frames = len / HOP_LENGTH;
        let half = (N_FFT / 2) as isize;
        let sample = |i: isize| -> f32 {
            // Reflect (without repeating the edge) into [0, len), as torch's reflect pad does.
            let n = len as isize;
            let mut j = i;
            if n == 1 {
                j = 0;
            }
            while j < 0 || j >= n {
                if j < 0 {
                    j = -j;
                }
                if j >= n {
                    j = 2 * (n - 1) - j;
                }
            }
            let j = j as usize;
            if j < audio.len() {
                audio[j]
            } else {
                0.0
            }
        };
        let mut power = vec![0f32; N_FFT / 2 + 1];
        let mut frame = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut mel = vec![0f32; self.n_mels * frames];
        for t in 0..frames {
            let start = (t * HOP_LENGTH) as isize - half;
            if start >= 0 && (start as usize + N_FFT) <= audio.len() {
                let s = start as usize;
                for ((f, &a), &w) in frame.iter_mut().zip(&audio[s..s + N_FFT]).zip(&self.window) {
                    *f = a * w;
                }
            } else {
                for (k, (f, &w)) in frame.iter_mut().zip(&self.window).enumerate() {
                    *f = sample(start + k as isize) * w;
                }
            }
            self.fft.process_with_scratch(&mut frame, &mut spectrum, &mut scratch).expect("FFT buffer sizes are fixed");
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.re * c.re + c.im * c.im;
            }
            for (m, filter) in self.filters.iter().enumerate() {
                let bins = &power[filter.first_bin..filter.first_bin + filter.weights.len()];
                let energy: f32 = bins.iter().zip(&filter.weights).map(|(p, w)| p * w).sum();
                mel[m * frames + t] = energy;
            }
        }
        let mut max = f32::NEG_INFINITY;
        for v in mel.iter_mut() {
            *v = v.max(1e-10).log10();
            max = max.max(*v);
        }
        let floor = max - 8.0;
        for v in mel.iter_mut() {
            *v = (v.max(floor) + 4.0) / 4.0;
        }
        let silence = (1e-10f32.log10().max(floor) + 4.0) / 4.0;
        LogMel { n_mels: self.n_mels, frames, data: mel, silence }
    }
}
