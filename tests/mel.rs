//! The log-mel front-end against openai/whisper: its `mel_filters.npz` values and its
//! `log_mel_spectrogram` on a fixed signal (reference numbers computed with openai's algorithm
//! in numpy: centred reflect-padded STFT, periodic Hann, |X|², Slaney filters, log10, max−8).

use coda_asr::mel::{mel_filters, MelFrontend, CHUNK_SAMPLES};

#[test]
fn slaney_filters_match_openai_mel_filters_npz() {
    let f = mel_filters(16_000, 400, 80);
    // (mel, fft bin, value in openai's float32 mel_filters.npz["mel_80"])
    let reference = [
        (0, 1, 0.02486259490251541),
        (21, 21, 0.011899571865797043),
        (39, 40, 0.001418047584593296),
        (49, 61, 0.009859241545200348),
        (56, 82, 0.0017961094854399562),
        (62, 101, 0.005150905344635248),
        (67, 120, 0.003723552217707038),
        (71, 140, 0.0032578727696090937),
        (74, 163, 0.0013560398947447538),
        (77, 183, 0.001158291706815362),
        (79, 190, 0.0022320549469441175),
    ];
    for (m, bin, value) in reference {
        // npz holds float32: compare after the same rounding.
        assert!(((f[m][bin] as f32) as f64 - value).abs() < 1e-9, "filter {m} bin {bin}: {} vs {value}", f[m][bin]);
    }
    let nonzero: usize = f.iter().map(|row| row.iter().filter(|&&w| w > 0.0).count()).sum();
    assert_eq!(nonzero, 391);
    let total: f64 = f.iter().flatten().sum();
    assert!((total - 1.999024092387117).abs() < 1e-6);
}

#[test]
fn log_mel_matches_openai_on_a_fixed_signal() {
    let audio: Vec<f32> = (0..16_000)
        .map(|i| {
            let t = i as f64 / 16_000.0;
            (0.5 * (2.0 * std::f64::consts::PI * 440.0 * t).sin() + 0.25 * (2.0 * std::f64::consts::PI * 1234.5 * t).sin() * (-t).exp())
                as f32
        })
        .collect();
    let mel = MelFrontend::new(80).compute(&audio, CHUNK_SAMPLES);
    assert_eq!(mel.frames, 3100);
    let at = |m: usize, t: usize| mel.data[m * mel.frames + t] as f64;
    let reference = [
        (0, 0, 1.0178447757170208),
        (5, 0, 1.0751760478935517),
        (12, 7, 1.2935265970313985),
        (13, 40, -0.5617947322442034),
        (20, 99, 0.21202857037554979),
        (27, 50, -0.22625028102958988),
        (28, 99, 0.07974791459144148),
        (35, 60, -0.24194961027326145),
        (36, 10, -0.2962131043135623),
        (0, 100, 0.8185225327836814),
        (13, 101, 0.3366516110181569),
        (30, 3000, -0.5617947322442034),
    ];
    for (m, t, value) in reference {
        assert!((at(m, t) - value).abs() < 2e-4, "mel {m} frame {t}: {} vs {value}", at(m, t));
    }
}

#[test]
fn thirty_seconds_give_3000_finite_frames() {
    let audio = vec![0.01f32; CHUNK_SAMPLES];
    let mel = MelFrontend::new(80).compute(&audio, 0);
    assert_eq!(mel.frames, 3000);
    assert!(mel.data.iter().all(|v| v.is_finite()));
}
