//! Where live audio comes from, and its way to 16 kHz mono.
//!
//! A source (cpal's capture callback, or a file replayed at real-time pace) pushes interleaved
//! f32 samples at the device's rate into a lock-free bounded queue: the push never blocks,
//! locks or allocates, and a full queue counts dropped samples instead of waiting. A resampler
//! thread mixes down, resamples with rubato in fixed blocks, and hands 16 kHz chunks on.

use anyhow::{bail, Context, Result};
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use crossbeam_channel::Sender;
use crossbeam_queue::ArrayQueue;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The capture side's shared state.
pub struct CaptureQueue {
    pub queue: ArrayQueue<f32>,
    pub dropped: AtomicU64,
    /// Set by the source when it will push nothing more (end of file, device gone).
    pub finished: AtomicBool,
    /// Why the source stopped, if it failed (device lost).
    pub failure: std::sync::Mutex<Option<String>>,
    pub channels: usize,
    pub rate: usize,
}

impl CaptureQueue {
    /// A queue holding `seconds` of audio.
    pub fn new(channels: usize, rate: usize, seconds: f64) -> Arc<Self> {
        Arc::new(Self {
            queue: ArrayQueue::new(((channels * rate) as f64 * seconds) as usize),
            dropped: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            failure: std::sync::Mutex::new(None),
            channels,
            rate,
        })
    }

    /// Called from the audio callback: no locks, no allocation.
    #[inline]
    pub fn push_all(&self, samples: impl Iterator<Item = f32>) {
        for s in samples {
            if self.queue.push(s).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub index: usize,
    pub name: String,
    pub is_default: bool,
    /// "F32 48000 Hz 2 ch" per supported configuration, or why none could be read.
    pub configs: Vec<String>,
}

fn device_name(d: &cpal::Device) -> String {
    d.description().map(|desc| desc.to_string()).unwrap_or_else(|_| "(unnamed device)".into())
}

/// Input devices of the default host.
pub fn list_devices() -> Result<Vec<DeviceInfo>> {
    let host = cpal::default_host();
    let default_name = host.default_input_device().map(|d| device_name(&d));
    let devices = host.input_devices().context("cannot list audio input devices")?;
    Ok(devices
        .enumerate()
        .map(|(index, d)| {
            let name = device_name(&d);
            let configs = match d.supported_input_configs() {
                Ok(cs) => cs
                    .map(|c| format!("{:?} {}–{} Hz {} ch", c.sample_format(), c.min_sample_rate(), c.max_sample_rate(), c.channels()))
                    .collect(),
                Err(e) => vec![format!("configuration unavailable: {e}")],
            };
            DeviceInfo { index, is_default: default_name.as_deref() == Some(name.as_str()), name, configs }
        })
        .collect())
}

/// Open an input device (by index or name; the default when None) and start capturing into
/// a new queue. The stream stops when dropped.
pub fn start_capture(device: Option<&str>) -> Result<(cpal::Stream, Arc<CaptureQueue>)> {
    let host = cpal::default_host();
    let dev = match device {
        None => host.default_input_device().context("no audio input device found (is a microphone connected?)")?,
        Some(spec) => {
            let mut devices: Vec<cpal::Device> = host.input_devices().context("cannot list audio input devices")?.collect();
            match spec.parse::<usize>() {
                Ok(i) if i < devices.len() => devices.swap_remove(i),
                _ => devices
                    .into_iter()
                    .find(|d| device_name(d) == spec || device_name(d).contains(spec))
                    .with_context(|| format!("no input device matches {spec:?} (see `coda-asr devices`)"))?,
            }
        }
    };
    let name = device_name(&dev);
    let supported = dev.default_input_config().with_context(|| format!("input device {name:?} cannot be opened"))?;
    let channels = supported.channels() as usize;
    let rate = supported.sample_rate() as usize;
    let queue = CaptureQueue::new(channels, rate, 10.0);
    let config: cpal::StreamConfig = supported.config();
    let q_err = queue.clone();
    let on_error = move |e: cpal::Error| {
        if let Ok(mut f) = q_err.failure.try_lock() {
            f.get_or_insert_with(|| format!("audio input failed: {e}"));
        }
        q_err.finished.store(true, Ordering::Release);
    };
    let q = queue.clone();
    use cpal::SampleFormat as F;
    let stream = match supported.sample_format() {
        F::F32 => dev.build_input_stream(config, move |d: &[f32], _: &_| q.push_all(d.iter().copied()), on_error, None),
        F::F64 => dev.build_input_stream(config, move |d: &[f64], _: &_| q.push_all(d.iter().map(|&s| s as f32)), on_error, None),
        F::I16 => dev.build_input_stream(config, move |d: &[i16], _: &_| q.push_all(d.iter().map(|&s| s as f32 / 32768.0)), on_error, None),
        F::I32 => dev.build_input_stream(
            config,
            move |d: &[i32], _: &_| q.push_all(d.iter().map(|&s| s as f32 / 2_147_483_648.0)),
            on_error,
            None,
        ),
        F::I8 => dev.build_input_stream(config, move |d: &[i8], _: &_| q.push_all(d.iter().map(|&s| s as f32 / 128.0)), on_error, None),
        F::U16 => dev.build_input_stream(
            config,
            move |d: &[u16], _: &_| q.push_all(d.iter().map(|&s| (s as f32 - 32768.0) / 32768.0)),
            on_error,
            None,
        ),
        F::U8 => {
            dev.build_input_stream(config, move |d: &[u8], _: &_| q.push_all(d.iter().map(|&s| (s as f32 - 128.0) / 128.0)), on_error, None)
        }
        other => bail!("input device {name:?} delivers {other:?} samples, which are not supported"),
    }
    .with_context(|| format!("cannot start capture on {name:?}"))?;
    stream.play().with_context(|| format!("cannot start capture on {name:?}"))?;
    Ok((stream, queue))
}

/// Replay a file through the capture path at `speed`× real time, at its own rate and channels.
pub fn start_file_replay(path: &Path, speed: f64, stop: Arc<AtomicBool>) -> Result<(JoinHandle<()>, Arc<CaptureQueue>)> {
    start_replay(crate::audio::decode_file(path)?, speed, stop)
}

/// As [`start_file_replay`], of audio already decoded.
pub fn start_replay(decoded: crate::audio::DecodedAudio, speed: f64, stop: Arc<AtomicBool>) -> Result<(JoinHandle<()>, Arc<CaptureQueue>)> {
    let (channels, rate) = (decoded.channels, decoded.sample_rate);
    let queue = CaptureQueue::new(channels, rate, 10.0);
    let q = queue.clone();
    let handle = std::thread::Builder::new()
        .name("replay".into())
        .spawn(move || {
            // Deliver 10 ms blocks on the wall clock, as a sound card would.
            let block = (rate / 100).max(1) * channels;
            let start = Instant::now();
            for (i, chunk) in decoded.samples.chunks(block).enumerate() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let due = Duration::from_secs_f64((i as f64 * 0.01) / speed.max(1e-3));
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                q.push_all(chunk.iter().copied());
            }
            q.finished.store(true, Ordering::Release);
        })
        .context("cannot start the replay thread")?;
    Ok((handle, queue))
}

/// Mix down and resample to 16 kHz in fixed blocks; sends chunks until the source finishes
/// and the queue is drained, then drops the sender. The output lines up with the input, as
/// batch resampling's does: the resampler's delay is dropped at the start and flushed out at
/// the end (kept in, every time stamp of a 44.1 kHz source was 5 ms late).
pub fn start_resampler(queue: Arc<CaptureQueue>, out: Sender<Vec<f32>>) -> Result<JoinHandle<()>> {
    use rubato::audioadapter_buffers::direct::InterleavedSlice;
    use rubato::{Fft, FixedSync, Resampler};
    const BLOCK: usize = 1024;
    let (channels, rate) = (queue.channels.max(1), queue.rate);
    let mut resampler = if rate != crate::audio::TARGET_RATE {
        Some(Fft::<f32>::new(rate, crate::audio::TARGET_RATE, BLOCK, 1, FixedSync::Input).map_err(|e| anyhow::anyhow!("resampler: {e}"))?)
    } else {
        None
    };
    std::thread::Builder::new()
        .name("resample".into())
        .spawn(move || {
            let mut frame = Vec::with_capacity(channels);
            let mut mono = Vec::with_capacity(BLOCK);
            let mut out_buf = vec![0f32; resampler.as_ref().map_or(BLOCK, |r| r.output_frames_max())];
            // Output frames still to drop (the resampler's delay), input frames taken in and
            // output frames sent: the stream ends at its input's length at 16 kHz.
            let mut delay_left = resampler.as_ref().map_or(0, |r| r.output_delay());
            let (mut taken_in, mut sent) = (0usize, 0usize);
            let mut emit = |mono: &mut Vec<f32>, last: bool| -> bool {
                let chunk = match resampler.as_mut() {
                    None => std::mem::take(mono),
                    Some(r) => {
                        taken_in += mono.len();
                        let due = (taken_in as u128 * crate::audio::TARGET_RATE as u128).div_ceil(rate as u128) as usize;
                        let mut chunk = Vec::with_capacity(out_buf.len());
                        // The last block is padded with silence, and more silence pushes the
                        // delayed end through until every due frame is out.
                        loop {
                            mono.resize(BLOCK, 0.0);
                            let input = InterleavedSlice::new(mono.as_slice(), 1, BLOCK).expect("block size");
                            let out_frames = out_buf.len();
                            let mut output = InterleavedSlice::new_mut(&mut out_buf, 1, out_frames).expect("output size");
                            let (_, produced) = r.process_into_buffer(&input, &mut output, None).unwrap_or((0, 0));
                            mono.clear();
                            let dropped = delay_left.min(produced);
                            delay_left -= dropped;
                            chunk.extend_from_slice(&out_buf[dropped..produced]);
                            if !last || produced == 0 || sent + chunk.len() >= due {
                                break;
                            }
                        }
                        if last {
                            chunk.truncate(due.saturating_sub(sent));
                        }
                        sent += chunk.len();
                        chunk
                    }
                };
                chunk.is_empty() || out.send(chunk).is_ok()
            };
            loop {
                let mut got = false;
                while let Some(s) = queue.queue.pop() {
                    got = true;
                    frame.push(s);
                    if frame.len() == channels {
                        mono.push(frame.iter().sum::<f32>() / channels as f32);
                        frame.clear();
                        if mono.len() == BLOCK && !emit(&mut mono, false) {
                            return;
                        }
                    }
                }
                if !got {
                    if queue.finished.load(Ordering::Acquire) && queue.queue.is_empty() {
                        emit(&mut mono, true);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
        .context("cannot start the resampler thread")
}
