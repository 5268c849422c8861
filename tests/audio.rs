//! Audio input: every WAV encoding we promise, mixing, resampling, and a clear error (never a
//! panic) for each kind of bad input.

use coda_asr::audio::{decode_file, load_mono_16k, AudioError};
use std::path::Path;

fn write_wav(path: &Path, spec: hound::WavSpec, frames: usize, f: impl Fn(usize, usize) -> f64) {
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..frames {
        for c in 0..spec.channels as usize {
            let v = f(i, c);
            match (spec.sample_format, spec.bits_per_sample) {
                (hound::SampleFormat::Float, _) => w.write_sample(v as f32).unwrap(),
                (_, 8) => w.write_sample((v * 127.0).round() as i8).unwrap(),
                (_, 16) => w.write_sample((v * 32767.0).round() as i16).unwrap(),
                (_, 24) => w.write_sample((v * 8388607.0).round() as i32).unwrap(),
                (_, 32) => w.write_sample((v * 2147483647.0).round() as i32).unwrap(),
                _ => unreachable!(),
            }
        }
    }
    w.finalize().unwrap();
}

fn tone(i: usize, rate: f64) -> f64 {
    0.5 * (2.0 * std::f64::consts::PI * 300.0 * i as f64 / rate).sin()
}

#[test]
fn reads_every_pcm_width_and_float() {
    let dir = tempfile::tempdir().unwrap();
    for (format, bits) in [
        (hound::SampleFormat::Int, 8),
        (hound::SampleFormat::Int, 16),
        (hound::SampleFormat::Int, 24),
        (hound::SampleFormat::Int, 32),
        (hound::SampleFormat::Float, 32),
    ] {
        let path = dir.path().join(format!("{bits}-{format:?}.wav"));
        let spec = hound::WavSpec { channels: 1, sample_rate: 16_000, bits_per_sample: bits, sample_format: format };
        write_wav(&path, spec, 1600, |i, _| tone(i, 16_000.0));
        let audio = load_mono_16k(&path).unwrap();
        assert_eq!(audio.len(), 1600, "{bits}-bit {format:?}");
        let tolerance = if bits == 8 { 1.0 / 100.0 } else { 1e-4 };
        for (i, &s) in audio.iter().enumerate() {
            assert!((s as f64 - tone(i, 16_000.0)).abs() < tolerance, "{bits}-bit {format:?} sample {i}: {s}");
        }
    }
}

#[test]
fn mixes_channels_down_to_mono() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stereo.wav");
    let spec = hound::WavSpec { channels: 3, sample_rate: 16_000, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    // Channels 0.3, -0.3 and 0.6 average to 0.2.
    write_wav(&path, spec, 800, |_, c| [0.3, -0.3, 0.6][c]);
    let audio = load_mono_16k(&path).unwrap();
    assert_eq!(audio.len(), 800);
    assert!(audio.iter().all(|&s| (s - 0.2).abs() < 1e-3));
}

#[test]
fn resamples_any_rate_to_16k_keeping_pitch() {
    let dir = tempfile::tempdir().unwrap();
    for rate in [8_000u32, 22_050, 44_100, 48_000] {
        let path = dir.path().join(format!("{rate}.wav"));
        let spec = hound::WavSpec { channels: 2, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
        write_wav(&path, spec, rate as usize, |i, _| tone(i, rate as f64));
        let audio = load_mono_16k(&path).unwrap();
        assert!((audio.len() as i64 - 16_000).abs() <= 2, "{rate} Hz gave {} samples", audio.len());
        // Away from the edges: still a 300 Hz tone (600 zero crossings a second) of the same
        // loudness (RMS of a 0.5 sine is 0.354).
        let mid = &audio[2000..14000];
        let crossings = mid.windows(2).filter(|w| (w[0] < 0.0) != (w[1] < 0.0)).count();
        assert!((crossings as i64 - 450).abs() <= 2, "{rate} Hz: {crossings} zero crossings in 0.75 s");
        let rms = (mid.iter().map(|&x| (x * x) as f64).sum::<f64>() / mid.len() as f64).sqrt();
        assert!((rms - 0.3536).abs() < 0.01, "{rate} Hz: rms {rms}");
    }
}

#[test]
fn bad_inputs_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let missing = d.join("missing.wav");
    assert!(matches!(load_mono_16k(&missing), Err(AudioError::NotFound { .. })));

    let text = d.join("notes.wav");
    std::fs::write(&text, "this is not audio at all, just some text\n".repeat(20)).unwrap();
    assert!(matches!(load_mono_16k(&text), Err(AudioError::NotAudio { .. })));

    let empty_file = d.join("empty.wav");
    std::fs::write(&empty_file, b"").unwrap();
    assert!(matches!(load_mono_16k(&empty_file), Err(AudioError::NotAudio { .. })));

    let header_only = d.join("truncated-header.wav");
    std::fs::write(&header_only, b"RIFF\x24\x00\x00\x00WAVEfmt ").unwrap();
    assert!(matches!(load_mono_16k(&header_only), Err(AudioError::Corrupt { .. })));

    let spec = hound::WavSpec { channels: 1, sample_rate: 16_000, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let zero = d.join("zero-samples.wav");
    write_wav(&zero, spec, 0, |_, _| 0.0);
    assert!(matches!(load_mono_16k(&zero), Err(AudioError::Empty { .. })));

    // A data chunk cut short: the header promises more samples than the file holds.
    let full = d.join("full.wav");
    write_wav(&full, spec, 16_000, |i, _| tone(i, 16_000.0));
    let bytes = std::fs::read(&full).unwrap();
    let cut = d.join("cut.wav");
    std::fs::write(&cut, &bytes[..bytes.len() / 2 + 1]).unwrap();
    assert!(matches!(load_mono_16k(&cut), Err(AudioError::Corrupt { .. })));

    // A WAV format code nobody defines (0x1234): no decoder reads it.
    let mut unknown = bytes[..44].to_vec();
    unknown[20..22].copy_from_slice(&0x1234u16.to_le_bytes());
    unknown.extend_from_slice(&[0x55; 100]);
    let unknown_path = d.join("unknown-encoding.wav");
    std::fs::write(&unknown_path, &unknown).unwrap();
    let unread = load_mono_16k(&unknown_path);
    assert!(matches!(unread, Err(AudioError::Unsupported { .. } | AudioError::NotAudio { .. } | AudioError::Corrupt { .. })), "{unread:?}");

    assert!(matches!(decode_file(d), Err(AudioError::NotAudio { .. }) | Err(AudioError::Io { .. })));

    for path in [&missing, &text, &empty_file, &header_only, &zero, &cut, &unknown_path] {
        let msg = load_mono_16k(path).unwrap_err().to_string();
        assert!(msg.contains(&path.display().to_string()), "error does not name the file: {msg}");
    }
}

#[test]
fn reads_flac_through_symphonia() {
    // A real FLAC made from a real clip with sox, when sox is installed (scripts/setup.sh does).
    let wav = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let dir = tempfile::tempdir().unwrap();
    let flac = dir.path().join("clip.flac");
    let ok = std::process::Command::new("sox").arg(&wav).arg(&flac).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "sox is needed for this test (apt-get install sox)");
    let a = load_mono_16k(&wav).unwrap();
    let b = load_mono_16k(&flac).unwrap();
    assert_eq!(a.len(), b.len());
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4));
}

#[test]
fn reads_wav_encodings_hound_does_not() {
    // A-law and µ-law WAV, made with sox from a real clip, go through symphonia.
    let wav = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let dir = tempfile::tempdir().unwrap();
    let reference = load_mono_16k(&wav).unwrap();
    for encoding in ["a-law", "u-law"] {
        let coded = dir.path().join(format!("{encoding}.wav"));
        let ok = std::process::Command::new("sox").arg(&wav).args(["-e", encoding]).arg(&coded).status().map(|s| s.success());
        assert!(ok.unwrap_or(false), "sox is needed for this test (apt-get install sox)");
        let audio = load_mono_16k(&coded).unwrap();
        assert_eq!(audio.len(), reference.len(), "{encoding}");
        assert!(best_correlation(&reference, &audio) > 0.99, "{encoding}");
    }
}

/// The largest normalised correlation between one second of `a` (from 2 s in) and `b` shifted
/// by up to ±0.1 s: lossy codecs and their start-up delays keep it high for the same audio.
fn best_correlation(a: &[f32], b: &[f32]) -> f64 {
    let (start, len, max_lag) = (32_000usize, 16_000usize, 1_600usize);
    let x = &a[start..start + len];
    let energy = |s: &[f32]| s.iter().map(|&v| v as f64 * v as f64).sum::<f64>();
    (start - max_lag..=start + max_lag)
        .filter(|&at| at + len <= b.len())
        .map(|at| {
            let y = &b[at..at + len];
            x.iter().zip(y).map(|(&p, &q)| p as f64 * q as f64).sum::<f64>() / (energy(x) * energy(y)).sqrt().max(1e-12)
        })
        .fold(f64::MIN, f64::max)
}

/// The shift, in samples, at which one second of `decoded` (from 2 s in) best matches
/// `original`, within ±0.1 s: positive when the decoded audio starts late.
fn lag(decoded: &[f32], original: &[f32]) -> i64 {
    let (start, len, max_lag) = (32_000i64, 16_000usize, 1_600i64);
    let x = &original[start as usize..start as usize + len];
    (-max_lag..=max_lag)
        .filter(|&shift| start + shift >= 0 && (start + shift) as usize + len <= decoded.len())
        .max_by(|&a, &b| {
            let dot = |shift: i64| {
                let y = &decoded[(start + shift) as usize..(start + shift) as usize + len];
                x.iter().zip(y).map(|(&p, &q)| p as f64 * q as f64).sum::<f64>()
            };
            dot(a).total_cmp(&dot(b))
        })
        .unwrap()
}

#[test]
fn aac_and_mp3_start_where_their_source_did() {
    // AAC encoders prime the decoder with silence (ffmpeg 1024 samples) and MP3 encoders delay
    // the audio too (LAME 576 + the decoder's 529); the file says how much, in MP4's edit list
    // and MP3's LAME tag. Left in, they made every time stamp 23–25 ms late at 44.1 kHz.
    let dir = tempfile::tempdir().unwrap();
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let original = load_mono_16k(&clip).unwrap();
    for (name, codec) in [("memo.m4a", "aac"), ("memo.mp3", "libmp3lame")] {
        let file = dir.path().join(name);
        let made = std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i"])
            .arg(&clip)
            .args(["-ar", "44100", "-ac", "2", "-c:a", codec])
            .arg(&file)
            .status();
        assert!(made.map(|s| s.success()).unwrap_or(false), "ffmpeg is needed for this test (apt-get install ffmpeg)");
        let decoded = load_mono_16k(&file).unwrap();
        let shift = lag(&decoded, &original);
        assert!(shift.abs() <= 2, "{name}: starts {shift} samples late");
        // The padding after the audio is left out too.
        let extra = decoded.len() as i64 - original.len() as i64;
        assert!(extra.abs() <= 16, "{name}: {extra} samples longer than its source");
    }
}
