//! Reading audio files into 16 kHz mono f32: WAV through hound (8/16/24/32-bit integer and
//! 32-bit float); other WAV encodings (A-law, µ-law, ADPCM), FLAC, MP3, OGG Vorbis, M4A/MP4
//! (AAC, ALAC) through symphonia; anything else (Opus, WebM, AC-3, video files…) through
//! ffmpeg when it is installed. Any channel count is mixed down and any sample rate is
//! resampled with rubato.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

mod mp4_edits;

pub const TARGET_RATE: usize = crate::mel::SAMPLE_RATE;

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("{path}: file not found")]
    NotFound { path: PathBuf },
    #[error("{path}: cannot read: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path}: not an audio file this program can read ({reason})")]
    NotAudio { path: PathBuf, reason: String },
    #[error("{path}: unsupported audio encoding: {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: corrupt or truncated audio: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: the file holds no audio samples")]
    Empty { path: PathBuf },
    #[error("{path}: cannot resample from {rate} Hz: {reason}")]
    Resample { path: PathBuf, rate: usize, reason: String },
}

/// Decoded audio before mixing and resampling.
#[derive(Debug, Clone)]
pub struct DecodedAudio {
    /// Interleaved samples in [-1, 1].
    pub samples: Vec<f32>,
    pub channels: usize,
    pub sample_rate: usize,
}

/// Read any supported file and return 16 kHz mono samples.
pub fn load_mono_16k(path: &Path) -> Result<Vec<f32>, AudioError> {
    let decoded = decode_file(path)?;
    let mono = downmix(&decoded.samples, decoded.channels);
    resample(&mono, decoded.sample_rate, TARGET_RATE).map_err(|reason| AudioError::Resample {
        path: path.to_path_buf(),
        rate: decoded.sample_rate,
        reason,
    })
}

/// Decode a file to interleaved f32 at its own rate and channel count.
pub fn decode_file(path: &Path) -> Result<DecodedAudio, AudioError> {
    let p = path.to_path_buf();
    let mut file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => AudioError::NotFound { path: p.clone() },
        _ => AudioError::Io { path: p.clone(), reason: e.to_string() },
    })?;
    if path.is_dir() {
        return Err(AudioError::NotAudio { path: p, reason: "it is a directory".into() });
    }
    let mut magic = [0u8; 12];
    let n = read_up_to(&mut file, &mut magic).map_err(|e| AudioError::Io { path: p.clone(), reason: e.to_string() })?;
    if n == 0 {
        return Err(AudioError::NotAudio { path: p, reason: "the file is empty".into() });
    }
    let is_riff = n >= 4 && (&magic[..4] == b"RIFF" || &magic[..4] == b"RIFX" || &magic[..4] == b"RF64");
    let decoded = if is_riff {
        // hound reads PCM and float WAV exactly; symphonia and ffmpeg take the other encodings.
        match decode_wav(path) {
            Err(AudioError::Unsupported { .. }) => decode_other_or_ffmpeg(path)?,
            other => other?,
        }
    } else {
        decode_other_or_ffmpeg(path)?
    };
    if decoded.samples.is_empty() {
        return Err(AudioError::Empty { path: p });
    }
    Ok(decoded)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn decode_wav(path: &Path) -> Result<DecodedAudio, AudioError> {
    let p = path.to_path_buf();
    let reader = hound::WavReader::open(path).map_err(|e| match e {
        // The file opened a moment ago, so a read error here means the header is cut short.
        hound::Error::IoError(e) => AudioError::Corrupt { path: p.clone(), reason: format!("the WAV header is truncated ({e})") },
        hound::Error::FormatError(what) => AudioError::Corrupt { path: p.clone(), reason: format!("bad WAV header: {what}") },
        hound::Error::Unsupported => {
            AudioError::Unsupported { path: p.clone(), what: "this WAV encoding (only PCM integer and 32-bit float are read)".into() }
        }
        other => AudioError::Unsupported { path: p.clone(), what: other.to_string() },
    })?;
    let spec = reader.spec();
    if spec.channels == 0 {
        return Err(AudioError::Corrupt { path: p, reason: "the header declares zero channels".into() });
    }
    if spec.sample_rate == 0 {
        return Err(AudioError::Corrupt { path: p, reason: "the header declares a sample rate of 0".into() });
    }
    let expected = reader.len() as usize;
    let truncated = |got: usize, e: hound::Error| AudioError::Corrupt {
        path: p.clone(),
        reason: format!("data ends after {got} of {expected} samples ({e})"),
    };
    let samples: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => {
            let mut out = Vec::with_capacity(expected);
            for s in reader.into_samples::<f32>() {
                let v = s.map_err(|e| truncated(out.len(), e))?;
                out.push(if v.is_finite() { v } else { 0.0 });
            }
            out
        }
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            let mut out = Vec::with_capacity(expected);
            for s in reader.into_samples::<i32>() {
                out.push(s.map_err(|e| truncated(out.len(), e))? as f32 * scale);
            }
            out
        }
        (format, bits) => {
            return Err(AudioError::Unsupported { path: p, what: format!("{bits}-bit {format:?} WAV samples") });
        }
    };
    Ok(DecodedAudio { samples, channels: spec.channels as usize, sample_rate: spec.sample_rate as usize })
}

/// symphonia first (in process, pure Rust); ffmpeg for what it cannot read.
fn decode_other_or_ffmpeg(path: &Path) -> Result<DecodedAudio, AudioError> {
    match decode_other(path) {
        Err(unread @ (AudioError::NotAudio { .. } | AudioError::Unsupported { .. })) => match decode_with_ffmpeg(path)? {
            Some(decoded) => Ok(decoded),
            None => Err(match unread {
                AudioError::NotAudio { path, reason } => {
                    AudioError::NotAudio { path, reason: format!("{reason}; with ffmpeg installed it would be tried too") }
                }
                AudioError::Unsupported { path, what } => {
                    AudioError::Unsupported { path, what: format!("{what} (install ffmpeg to read this format)") }
                }
                other => other,
            }),
        },
        other => other,
    }
}

/// Decode with the ffmpeg command-line tool, keeping the file's rate and channels (ffprobe
/// reads them). Ok(None) when ffmpeg is not installed.
fn decode_with_ffmpeg(path: &Path) -> Result<Option<DecodedAudio>, AudioError> {
    use std::process::{Command, Stdio};
    let p = path.to_path_buf();
    // The `file:` protocol keeps a name such as `-x.ogg` or `http:…` a local file.
    let mut input = std::ffi::OsString::from("file:");
    input.push(path.as_os_str());
    let last_line = |stderr: &[u8]| {
        String::from_utf8_lossy(stderr).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message").trim().to_string()
    };
    let probe = match Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=sample_rate,channels",
            "-of",
            "default=noprint_wrappers=1",
        ])
        .arg(&input)
        .stdin(Stdio::null())
        .output()
    {
        Ok(probe) => probe,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AudioError::Io { path: p, reason: format!("cannot run ffprobe: {e}") }),
    };
    if !probe.status.success() {
        return Err(AudioError::NotAudio {
            path: p,
            reason: format!("neither symphonia nor ffmpeg reads it: {}", last_line(&probe.stderr)),
        });
    }
    let fields = String::from_utf8_lossy(&probe.stdout).into_owned();
    let field =
        |name: &str| fields.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix('=')?.trim().parse::<usize>().ok()).filter(|&v| v > 0);
    let (Some(sample_rate), Some(channels)) = (field("sample_rate"), field("channels")) else {
        return Err(AudioError::NotAudio { path: p, reason: "ffmpeg finds no audio stream in it".into() });
    };
    let decoded = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(&input)
        .args(["-map", "0:a:0", "-f", "f32le", "-acodec", "pcm_f32le", "-"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| AudioError::Io { path: p.clone(), reason: format!("cannot run ffmpeg: {e}") })?;
    if !decoded.status.success() {
        return Err(AudioError::Corrupt { path: p, reason: format!("ffmpeg: {}", last_line(&decoded.stderr)) });
    }
    let samples = decoded
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .map(|v| if v.is_finite() { v } else { 0.0 })
        .collect();
    Ok(Some(DecodedAudio { samples, channels, sample_rate }))
}

fn decode_other(path: &Path) -> Result<DecodedAudio, AudioError> {
    use symphonia::core::audio::SampleBuffer;
    use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
    use symphonia::core::errors::Error as SymError;
    use symphonia::core::formats::FormatOptions;
    use symphonia::core::io::MediaSourceStream;
    use symphonia::core::meta::MetadataOptions;
    use symphonia::core::probe::Hint;

    let p = path.to_path_buf();
    let file = File::open(path).map_err(|e| AudioError::Io { path: p.clone(), reason: e.to_string() })?;
    let stream = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let probed = symphonia::default::get_probe()
        // Gapless: MP3's encoder delay and padding (from its LAME tag) are left out, so its
        // audio starts at 0 as the source did (ffmpeg's MP3 started 25 ms late at 44.1 kHz).
        .format(&hint, stream, &FormatOptions { enable_gapless: true, ..Default::default() }, &MetadataOptions::default())
        .map_err(|e| AudioError::NotAudio { path: p.clone(), reason: format!("unrecognised format: {e}") })?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| AudioError::NotAudio { path: p.clone(), reason: "no audio track".into() })?;
    let track_id = track.id;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| AudioError::Unsupported { path: p.clone(), what: e.to_string() })?;
    let mut samples = Vec::new();
    let mut channels = track.codec_params.channels.map(|c| c.count()).unwrap_or(0);
    let mut sample_rate = track.codec_params.sample_rate.unwrap_or(0) as usize;
    let mut buffer: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(packet) => packet,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => break,
            Err(e) => return Err(AudioError::Corrupt { path: p, reason: e.to_string() }),
        };
        if packet.track_id() != track_id {
            continue;
        }
        match decoder.decode(&packet) {
            Ok(decoded) => {
                let spec = *decoded.spec();
                channels = spec.channels.count();
                sample_rate = spec.rate as usize;
                let buf = buffer.get_or_insert_with(|| SampleBuffer::new(decoded.capacity() as u64, spec));
                if buf.capacity() < decoded.capacity() * channels {
                    *buf = SampleBuffer::new(decoded.capacity() as u64, spec);
                }
                buf.copy_interleaved_ref(decoded);
                samples.extend(buf.samples().iter().map(|&v| if v.is_finite() { v } else { 0.0 }));
            }
            // A damaged packet is skipped, as players do; the rest of the stream still decodes.
            Err(SymError::DecodeError(_)) => continue,
            Err(e) => return Err(AudioError::Corrupt { path: p, reason: e.to_string() }),
        }
    }
    if channels == 0 || sample_rate == 0 {
        if samples.is_empty() {
            return Err(AudioError::Empty { path: p });
        }
        return Err(AudioError::Corrupt { path: p, reason: "unknown channel count or sample rate".into() });
    }
    // MP4's edit list, which symphonia reads but does not apply (see `mp4_edits`).
    let range = File::open(path).ok().and_then(|mut file| mp4_edits::played_range(&mut file, track_id as usize, sample_rate as u32));
    if let Some(range) = range {
        samples = range.apply(samples, channels);
    }
    Ok(DecodedAudio { samples, channels, sample_rate })
}

/// Average the channels of interleaved audio into one.
pub fn downmix(interleaved: &[f32], channels: usize) -> Vec<f32> {
    if channels <= 1 {
        return interleaved.to_vec();
    }
    let inv = 1.0 / channels as f32;
    interleaved.chunks_exact(channels).map(|frame| frame.iter().sum::<f32>() * inv).collect()
}

/// Resample mono audio with rubato's FFT resampler; the output is aligned with the input (the
/// resampler's delay is trimmed).
pub fn resample(mono: &[f32], from: usize, to: usize) -> Result<Vec<f32>, String> {
    use rubato::audioadapter_buffers::direct::InterleavedSlice;
    use rubato::{Fft, FixedSync, Resampler};
    if from == to || mono.is_empty() {
        return Ok(mono.to_vec());
    }
    let mut resampler = Fft::<f32>::new(from, to, 1024, 1, FixedSync::Both).map_err(|e| e.to_string())?;
    let input = InterleavedSlice::new(mono, 1, mono.len()).map_err(|e| e.to_string())?;
    let out = resampler.process_all(&input, mono.len(), None).map_err(|e| e.to_string())?;
    Ok(out.take_data())
}
