//! Energy voice-activity gate with an adaptive noise floor.
//!
//! Audio is cut into 30 ms frames; a frame is loud when its level is 12 dB above the noise
//! floor and above −50 dBFS. The floor is the quietest frame of the last two seconds (minimum
//! statistics): speech always has quieter gaps between syllables, so the floor stays at the
//! background, while steady noise (a fan, a running tap) lifts the floor to itself and stops
//! counting as speech within two seconds.
//! Speech starts after 3 loud frames in 5 and ends after `hangover` of quiet. Once open, the
//! gate counts a frame as speech from 9 dB above the floor (hysteresis): in noise at 5–15 dB
//! SNR whole phrases stay under 12 dB, and the gate closed mid-sentence, losing "captured by
//! Bartholemy Portuguez and his men were" between two utterances. The recogniser
//! does nothing while the gate is closed, which is what keeps Whisper from inventing "Thank
//! you." on silence and keeps the CPU idle.
//!
//! Energy cannot tell speech from a sound that is not steady (a burst of noise, a door, a
//! rustle), and Whisper reads those as "you" in passes that pass its own no-speech tests
//! (no-speech probability 0.75–0.89 at log-probability −0.6 to −0.9, where real speech in pink
//! noise reached 0.86 at −0.91). Speech has voiced frames, periodic at a pitch of 70–400 Hz;
//! noise has none. So the gate also counts voiced frames ([`Vad::voiced_frames`], YIN's
//! cumulative-mean-normalised difference under 0.3, de Cheveigné & Kawahara 2002), and the
//! recogniser makes nothing final from an utterance that has too few; batch transcription
//! skips a window that has too few ([`has_voiced_frames`]). Whispered speech has none either and
//! is not transcribed. A pure tone is periodic too (a sine sweep, beeps, a phone's ringback tone
//! were read "I'm going to go to the next video.", "You"), but it puts nearly all its energy
//! into one spectral peak, where a voice spreads it over the harmonics of its pitch: such a
//! frame is not counted as voiced ([`TONE_PEAK_SHARE`]).

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};
use std::sync::Arc;

pub const FRAME: usize = 480; // 30 ms at 16 kHz
/// Frames over which the floor is the minimum (2 s).
const FLOOR_FRAMES: usize = 67;
/// Pitch periods searched for voicing, in samples: 400 Hz down to 70 Hz.
const SHORTEST_PERIOD: usize = 40;
const LONGEST_PERIOD: usize = 229;
/// A frame is voiced when its normalised difference at some period in that range is under this.
/// Over the frames above −50 dBFS: a running tap and bursts of pink noise never went under 0.6
/// (5th percentiles 0.66 and 0.63); speech from `train.tsv`, clean and in pink noise at
/// 5–15 dB SNR, was under 0.3 in about half of them.
const VOICED_MAX_DIFFERENCE: f32 = 0.3;
/// A periodic frame is a tone, not a voice, when the main lobe of its strongest spectral peak
/// (±2 bins of a 512-point Hann-windowed spectrum, ±62 Hz) holds more than this share of its
/// energy. Of the periodic frames of sine sweeps, beeps, a ringback tone (440 + 480 Hz) and a
/// triangle wave, 99–100 % were over it; of speech's, 8 % (60 `train.tsv` clips) and 3 % (the
/// design set's clips in pink noise), so an utterance keeps nearly all its voiced frames. Tones
/// far apart (DTMF) or rich in harmonics (a square-wave buzzer) are not caught: two peaks hold
/// over 90 % of the energy in a fifth of speech's periodic frames.
const TONE_PEAK_SHARE: f32 = 0.9;
const SPECTRUM_SIZE: usize = 512;
const PEAK_HALF_WIDTH: usize = 2;
/// Voiced frames a stretch of sound must have to be taken for speech: an utterance before any
/// of its words become final (one with fewer is dropped when it ends), a batch window before
/// it is decoded. Bursts of pink noise had none and were read "you"; in the tuning long files
/// every stretch the gate opened on had 8 or more but a 1 s one between two sentences, with
/// none.
pub const MIN_VOICED_FRAMES: u64 = 3;

#[derive(Clone)]
pub struct Vad {
    voicing: Voicing,
    floor_db: f64,
    history: std::collections::VecDeque<f64>,
    pending: Vec<f32>,
    /// Of each of the last 5 frames: whether it was loud, and whether it was loud and voiced.
    recent: std::collections::VecDeque<(bool, bool)>,
    speaking: bool,
    voiced_frames: u64,
    quiet_frames: usize,
    hangover_frames: usize,
    pub threshold_db: f64,
    /// While speaking, a frame this far above the floor keeps the gate open.
    pub continue_db: f64,
    pub min_level_db: f64,
    /// Level of the last frame, dBFS (for the level meter).
    pub level_db: f64,
}

impl Vad {
    pub fn new(hangover_s: f64) -> Self {
        Self {
            voicing: Voicing::new(),
            floor_db: -60.0,
            history: std::collections::VecDeque::with_capacity(FLOOR_FRAMES),
            pending: Vec::with_capacity(FRAME),
            recent: std::collections::VecDeque::with_capacity(5),
            speaking: false,
            voiced_frames: 0,
            quiet_frames: 0,
            hangover_frames: (hangover_s * 16_000.0 / FRAME as f64).ceil() as usize,
            threshold_db: 12.0,
            continue_db: 9.0,
            min_level_db: -50.0,
            level_db: -120.0,
        }
    }

    pub fn is_speech(&self) -> bool {
        self.speaking
    }

    pub fn noise_floor_db(&self) -> f64 {
        self.floor_db
    }

    /// Voiced frames heard so far inside speech, the frames that opened the gate included.
    pub fn voiced_frames(&self) -> u64 {
        self.voiced_frames
    }

    /// Feed samples; returns whether any frame in them was inside speech.
    pub fn push(&mut self, samples: &[f32]) -> bool {
        let mut any = false;
        for &s in samples {
            self.pending.push(s);
            if self.pending.len() == FRAME {
                let energy = mean_square(&self.pending);
                let voiced = self.voicing.is_voiced(&self.pending);
                self.pending.clear();
                any |= self.frame(10.0 * energy.max(1e-12).log10(), voiced);
            }
        }
        any
    }

    fn frame(&mut self, level_db: f64, voiced: bool) -> bool {
        self.level_db = level_db;
        if self.history.len() == FLOOR_FRAMES {
            self.history.pop_front();
        }
        self.history.push_back(level_db);
        self.floor_db = self.history.iter().copied().fold(f64::INFINITY, f64::min).max(-100.0);
        let loud = level_db > self.floor_db + self.threshold_db && level_db > self.min_level_db;
        if self.recent.len() == 5 {
            self.recent.pop_front();
        }
        self.recent.push_back((loud, loud && voiced));
        let loud_recent = self.recent.iter().filter(|&&(l, _)| l).count();
        if !self.speaking && loud_recent >= 3 {
            self.speaking = true;
            self.quiet_frames = 0;
            self.voiced_frames += self.recent.iter().filter(|&&(_, v)| v).count() as u64;
        } else if self.speaking {
            if level_db > self.floor_db + self.continue_db && level_db > self.min_level_db {
                self.quiet_frames = 0;
                self.voiced_frames += voiced as u64;
            } else {
                self.quiet_frames += 1;
                if self.quiet_frames >= self.hangover_frames {
                    self.speaking = false;
                }
            }
        }
        self.speaking
    }
}

/// Whether 16 kHz audio has [`MIN_VOICED_FRAMES`] voiced frames (see [`Voicing`]) above
/// −50 dBFS: a stretch of speech has many, noise none. It stops at the last one it needs, so
/// speech is told within its first syllables.
pub fn has_voiced_frames(audio: &[f32]) -> bool {
    voiced_frames_of(audio).nth(MIN_VOICED_FRAMES as usize - 1).is_some()
}

/// Seconds of 16 kHz audio in voiced frames above −50 dBFS: about half of the time speech is
/// heard.
pub fn voiced_seconds(audio: &[f32]) -> f64 {
    (voiced_frames_of(audio).count() * FRAME) as f64 / 16_000.0
}

/// The 30 ms frames of 16 kHz audio that are above −50 dBFS and voiced.
fn voiced_frames_of(audio: &[f32]) -> impl Iterator<Item = &[f32]> {
    let min_energy = 10f64.powf(-5.0); // −50 dBFS
    let mut voicing = Voicing::new();
    audio.chunks_exact(FRAME).filter(move |frame| mean_square(frame) > min_energy && voicing.is_voiced(frame))
}

fn mean_square(frame: &[f32]) -> f64 {
    frame.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / frame.len() as f64
}

/// Tells voiced frames from the rest; holds the spectrum's buffers so that a frame costs no
/// allocation.
#[derive(Clone)]
struct Voicing {
    fft: Arc<dyn RealToComplex<f32>>,
    window: Vec<f32>,
    windowed: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
    power: Vec<f32>,
}

impl Voicing {
    fn new() -> Self {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(SPECTRUM_SIZE);
        let window = (0..FRAME).map(|n| (std::f32::consts::PI * n as f32 / FRAME as f32).sin().powi(2)).collect();
        let (windowed, spectrum, scratch) = (fft.make_input_vec(), fft.make_output_vec(), fft.make_scratch_vec());
        Self { power: vec![0.0; spectrum.len()], fft, window, windowed, spectrum, scratch }
    }

    /// Periodic at a speech pitch (see [`is_periodic`]) and not a pure tone.
    fn is_voiced(&mut self, frame: &[f32]) -> bool {
        is_periodic(frame) && !self.is_tone(frame)
    }

    /// Whether one spectral peak holds nearly all the frame's energy (see [`TONE_PEAK_SHARE`]).
    fn is_tone(&mut self, frame: &[f32]) -> bool {
        self.windowed.fill(0.0);
        for ((x, &s), &w) in self.windowed.iter_mut().zip(frame).zip(&self.window) {
            *x = s * w;
        }
        self.fft.process_with_scratch(&mut self.windowed, &mut self.spectrum, &mut self.scratch).expect("FFT buffer sizes are fixed");
        for (p, c) in self.power.iter_mut().zip(&self.spectrum) {
            *p = c.norm_sqr();
        }
        let total: f32 = self.power.iter().sum();
        let peak = (0..self.power.len()).max_by(|&a, &b| self.power[a].total_cmp(&self.power[b])).unwrap_or(0);
        let lobe = peak.saturating_sub(PEAK_HALF_WIDTH)..(peak + PEAK_HALF_WIDTH + 1).min(self.power.len());
        total > 0.0 && self.power[lobe].iter().sum::<f32>() > TONE_PEAK_SHARE * total
    }
}

/// Whether a frame is periodic at a speech pitch: the minimum over the pitch periods of YIN's
/// cumulative-mean-normalised difference function is under [`VOICED_MAX_DIFFERENCE`]. Unlike
/// a plain autocorrelation it is not fooled by the slow waves of low-pass noise, whose
/// difference grows steadily with the lag and is normalised away. About 57 000 multiply-adds
/// per 30 ms frame.
fn is_periodic(frame: &[f32]) -> bool {
    let window = frame.len() - LONGEST_PERIOD;
    let mut running_sum = 0.0f32;
    let mut least = f32::INFINITY;
    for lag in 1..=LONGEST_PERIOD {
        let difference: f32 = frame[..window].iter().zip(&frame[lag..lag + window]).map(|(a, b)| (a - b) * (a - b)).sum();
        running_sum += difference;
        if lag >= SHORTEST_PERIOD && running_sum > 0.0 {
            least = least.min(difference * lag as f32 / running_sum);
        }
    }
    least < VOICED_MAX_DIFFERENCE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(seconds: f64, amp: f32) -> Vec<f32> {
        (0..(seconds * 16_000.0) as usize).map(|i| amp * (i as f32 * 0.1).sin()).collect()
    }

    fn noise(seconds: f64, amp: f32, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..(seconds * 16_000.0) as usize)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                amp * (((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5)
            })
            .collect()
    }

    #[test]
    fn silence_is_not_speech_and_a_loud_burst_is() {
        let mut v = Vad::new(0.5);
        assert!(!v.push(&vec![0.0; 16_000]));
        assert!(v.push(&tone(1.0, 0.3)));
        assert!(v.is_speech());
        v.push(&vec![0.0; 16_000]);
        assert!(!v.is_speech(), "speech ends after the hangover");
    }

    #[test]
    fn steady_noise_becomes_the_floor() {
        let mut v = Vad::new(0.5);
        v.push(&vec![0.0; 16_000]);
        let n = noise(20.0, 0.2, 7);
        // Noise starting out of silence opens the gate at first…
        v.push(&n[..16_000 * 3]);
        // …but within a few seconds it is the floor, and no longer does.
        assert!(!v.push(&n[16_000 * 3..]), "floor {} level {}", v.noise_floor_db(), v.level_db);
        // A syllable-like burst well above the noise still does.
        let burst: Vec<f32> = (0..16_000).map(|i| if (i / 4000) % 2 == 0 { 0.9 * (i as f32 * 0.1).sin() + n[i] } else { n[i] }).collect();
        assert!(v.push(&burst));
    }

    /// A vowel-like sound: a 120 Hz pitch and its first eight harmonics, at 1 / h.
    fn vowel(seconds: f64, amp: f32) -> Vec<f32> {
        (0..(seconds * 16_000.0) as usize)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                amp * (1..=8).map(|h| (2.0 * std::f32::consts::PI * 120.0 * h as f32 * t).sin() / h as f32).sum::<f32>() / 2.0
            })
            .collect()
    }

    /// Noise with most of its power at low frequencies (white noise through a one-pole
    /// low-pass), the kind whose slow waves a plain autocorrelation takes for a pitch.
    fn low_pass_noise(seconds: f64, amp: f32, seed: u64) -> Vec<f32> {
        let mut state = 0.0f32;
        noise(seconds, amp, seed)
            .into_iter()
            .map(|x| {
                state = 0.9 * state + x;
                state
            })
            .collect()
    }

    fn is_voiced(frame: &[f32]) -> bool {
        Voicing::new().is_voiced(frame)
    }

    /// A sine sweeping from `from` to `to` Hz (linearly in frequency).
    fn sweep(seconds: f64, from: f64, to: f64, amp: f32) -> Vec<f32> {
        let n = (seconds * 16_000.0) as usize;
        (0..n)
            .map(|i| {
                let t = i as f64 / 16_000.0;
                let phase = 2.0 * std::f64::consts::PI * (from * t + (to - from) * t * t / (2.0 * seconds));
                amp * phase.sin() as f32
            })
            .collect()
    }

    #[test]
    fn a_vowel_is_voiced_and_noise_is_not() {
        let v = vowel(0.03, 0.3);
        assert!(is_voiced(&v[..FRAME]));
        let mut noisy_vowel = vowel(0.03, 0.3);
        for (s, n) in noisy_vowel.iter_mut().zip(noise(0.03, 0.1, 3)) {
            *s += n;
        }
        assert!(is_voiced(&noisy_vowel[..FRAME]), "a vowel 10 dB over white noise");
        for seed in 0..20 {
            assert!(!is_voiced(&noise(0.03, 0.3, seed)[..FRAME]));
            assert!(!is_voiced(&low_pass_noise(0.03, 0.3, seed)[..FRAME]));
        }
    }

    #[test]
    fn tones_are_periodic_but_not_voiced() {
        let frames = |audio: Vec<f32>| audio.chunks_exact(FRAME).map(|f| f.to_vec()).collect::<Vec<_>>();
        let mut tones = frames(sweep(3.0, 300.0, 3000.0, 0.5));
        // A sine at 255 Hz, then a ringback tone: 440 and 480 Hz together.
        tones.extend(frames(tone(0.3, 0.5)));
        tones.extend(frames((0..4800).map(|i| 0.2 * ((i as f32 * 0.1728).sin() + (i as f32 * 0.1885).sin())).collect()));
        // YIN alone takes nearly all of them for a voice…
        let periodic = tones.iter().filter(|f| is_periodic(f)).count();
        assert!(periodic * 10 >= tones.len() * 9, "{periodic} of {} periodic", tones.len());
        // …the spectrum does not.
        assert!(tones.iter().all(|f| !is_voiced(f)));
        assert!(!has_voiced_frames(&sweep(3.0, 300.0, 3000.0, 0.5)));
        // Speech-like sound with a sweeping pitch is still voiced.
        let mut gliding_vowel = Vec::new();
        for (k, pitch) in [110.0f32, 130.0, 150.0, 170.0].into_iter().enumerate() {
            gliding_vowel.extend((0..FRAME).map(|i| {
                let t = (k * FRAME + i) as f32 / 16_000.0;
                0.15 * (1..=8).map(|h| (2.0 * std::f32::consts::PI * pitch * h as f32 * t).sin() / h as f32).sum::<f32>()
            }));
        }
        assert!(frames(gliding_vowel.clone()).iter().all(|f| is_voiced(f)));
        assert!(has_voiced_frames(&gliding_vowel));
    }

    #[test]
    fn bursts_of_noise_open_the_gate_without_voiced_frames_and_speech_has_them() {
        let mut v = Vad::new(0.5);
        v.push(&vec![0.0; 16_000]);
        for seed in 0..3 {
            assert!(v.push(&noise(0.7, 0.3, seed)), "each burst opens the gate");
            v.push(&vec![0.0; 16_000]);
        }
        assert_eq!(v.voiced_frames(), 0);
        assert!(v.push(&vowel(0.5, 0.3)));
        assert!(v.voiced_frames() >= 10, "{} voiced frames in 0.5 s of a vowel", v.voiced_frames());
    }

    #[test]
    fn open_speech_stays_open_while_a_phrase_is_quieter_than_the_opening_threshold() {
        let mut v = Vad::new(0.5);
        let feed = |v: &mut Vad, level: f64, frames: usize| (0..frames).map(|_| v.frame(level, false)).last().unwrap();
        feed(&mut v, -40.0, 70); // the floor: noise at −40 dBFS
        assert!(!feed(&mut v, -30.0, 10), "10 dB above the floor does not open the gate");
        assert!(feed(&mut v, -20.0, 5), "20 dB above it does");
        // A phrase 10 dB above the noise (speech at low SNR) keeps it open for 1.2 s…
        assert!(feed(&mut v, -30.0, 40));
        // …while 8 dB above it is quiet, and the gate closes after the hangover.
        assert!(!feed(&mut v, -32.0, 20));
    }
}
