//! Live path: the capture queue and resampler with a fake device, the monitor's layout, and
//! `coda-asr live --input` end to end on a real clip and on noise.

mod common;
use coda_asr::stream::recognizer::{run_recognizer, simulate_recognizer, streaming_pass, Pacing, StreamOptions};
use coda_asr::stream::source::{start_resampler, CaptureQueue};
use coda_asr::stream::{Event, StreamStats};
use coda_asr::transcribe::{TranscribeOptions, Transcriber};
use coda_asr::tui::state::App;
use std::process::Command;
use std::sync::atomic::Ordering;

#[test]
fn fake_device_callback_reaches_the_recogniser_at_16k_mono() {
    // A 48 kHz stereo "device" delivering 10 ms callbacks of a 440 Hz tone.
    let queue = CaptureQueue::new(2, 48_000, 10.0);
    let (tx, rx) = crossbeam_channel::unbounded();
    let resampler = start_resampler(queue.clone(), tx).unwrap();
    let q = queue.clone();
    let device = std::thread::spawn(move || {
        let mut callback_buffer = vec![0f32; 960];
        for block in 0..200 {
            for i in 0..480 {
                let t = (block * 480 + i) as f32 / 48_000.0;
                let v = 0.5 * (2.0 * std::f32::consts::PI * 440.0 * t).sin();
                callback_buffer[2 * i] = v;
                callback_buffer[2 * i + 1] = v;
            }
            // What the cpal callback does with the buffer it is handed.
            q.push_all(callback_buffer.iter().copied());
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        q.finished.store(true, Ordering::Release);
    });
    device.join().unwrap();
    let audio: Vec<f32> = rx.iter().flatten().collect();
    resampler.join().unwrap();
    assert_eq!(queue.dropped.load(Ordering::Relaxed), 0);
    // Exactly 2 s, lined up with the tone: it starts at 0 and its first rising zero crossing is
    // where the source's is, not the resampler's delay later.
    assert_eq!(audio.len(), 32_000);
    let mid = &audio[4000..28000];
    let crossings = mid.windows(2).filter(|w| (w[0] < 0.0) != (w[1] < 0.0)).count();
    assert!((crossings as i64 - 1320).abs() <= 4, "{crossings} zero crossings in 1.5 s of 440 Hz");
    let expected = |i: usize| 0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16_000.0).sin();
    let worst = (4000..28000).map(|i| (audio[i] - expected(i)).abs()).fold(0.0, f32::max);
    assert!(worst < 0.01, "resampled tone off by up to {worst}");
}

#[test]
fn a_full_queue_counts_drops_instead_of_blocking() {
    let queue = CaptureQueue::new(1, 16_000, 0.01);
    queue.push_all(std::iter::repeat_n(0.1f32, 500));
    assert_eq!(queue.dropped.load(Ordering::Relaxed), 340);
}

#[test]
fn monitor_layout_fits_80_by_24() {
    let mut app = App::new("tiny.en");
    app.apply(Event::Final {
        text: "Printing, in the only sense".into(),
        start: 0.0,
        end: 2.0,
        emitted_at: 3.0,
        latency_s: 1.0,
        words: Vec::new(),
    });
    app.apply(Event::Partial { text: "with which we are".into(), start: 2.0, end: 3.0, emitted_at: 3.0 });
    app.apply(Event::Stats(StreamStats {
        audio_s: 3.5,
        buffer_s: 3.5,
        step_compute_ms: 180.0,
        compute_total_s: 0.9,
        load: 0.31,
        budget: 0.5,
        reduction: 4.0,
        can_adapt: true,
        heavy_fraction: vec![0.25, 0.25, 0.25, 0.25],
        flops_saved_pct: 71.0,
        dropped_samples: 0,
        speech: true,
        level_db: -23.0,
        last_latency_s: 1.0,
        paused: false,
    }));
    let backend = ratatui::backend::TestBackend::new(80, 24);
    let mut terminal = ratatui::Terminal::new(backend).unwrap();
    terminal.draw(|f| coda_asr::tui::view::draw(f, &app)).unwrap();
    let buffer = terminal.backend().buffer().clone();
    let lines: Vec<String> = (0..24).map(|y| (0..80).map(|x| buffer[(x, y)].symbol().to_string()).collect()).collect();
    let screen = lines.join("\n");
    for expected in [
        "transcript",
        "Printing, in the only sense with which we are",
        "r = 4",
        "heavy frames % per layer: 25/25/25/25",
        "FLOPs saved vs dense: 71%",
        "voice: speech",
        "q quit",
    ] {
        assert!(screen.contains(expected), "missing {expected:?} in\n{screen}");
    }
    // The partial is drawn dimmed, the finals are not.
    let row = lines.iter().position(|l| l.contains("with which")).unwrap();
    let col = lines[row].find("with which").unwrap();
    assert!(buffer[(col as u16, row as u16)].modifier.contains(ratatui::style::Modifier::DIM));
    let col = lines[row].find("Printing").unwrap();
    assert!(!buffer[(col as u16, row as u16)].modifier.contains(ratatui::style::Modifier::DIM));
}

#[test]
fn live_replay_of_a_real_clip_gives_its_words() {
    let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("session.wav");
    let out = Command::new(common::binary())
        .args(["live", "--dense", "--no-tui", "--speed", "2", "--record"])
        .arg(&recording)
        .arg("--input")
        .arg(&wav)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference = "Printing, in the only sense with which we are at present concerned, differs from most if not from all the arts and crafts represented in the Exhibition";
    let counts = coda_asr::eval::score(reference, &stdout.replace('\n', " "));
    assert!(counts.wer() < 15.0, "WER {:.1}: {stdout}", counts.wer());
    // The recording holds the whole clip at 16 kHz mono.
    let kept = hound::WavReader::open(&recording).unwrap();
    assert_eq!((kept.spec().sample_rate, kept.spec().channels), (16_000, 1));
    let clip_seconds = coda_asr::audio::load_mono_16k(&wav).unwrap().len() as f64 / 16_000.0;
    let kept_seconds = kept.duration() as f64 / 16_000.0;
    assert!((kept_seconds - clip_seconds).abs() < 0.1, "recorded {kept_seconds:.2} s of a {clip_seconds:.2} s clip");
}

#[test]
fn an_existing_recording_is_never_overwritten() {
    let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("yesterday.wav");
    std::fs::write(&recording, b"yesterday's meeting").unwrap();
    let out = Command::new(common::binary())
        .args(["live", "--dense", "--no-tui", "--speed", "8", "--record"])
        .arg(&recording)
        .arg("--input")
        .arg(&wav)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an existing --record file was accepted");
    assert!(stderr.contains("yesterday.wav") && stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read(&recording).unwrap(), b"yesterday's meeting");
}

/// "Printing," alone (the first 0.72 s of the quick-start clip), `PAUSE_S` of silence, then the
/// rest of the sentence, written to `dir`. Returns the file and where the rest starts, seconds.
fn printing_then_a_pause(dir: &std::path::Path) -> (std::path::PathBuf, f64) {
    const PAUSE_S: f64 = 2.0;
    let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let audio = coda_asr::audio::load_mono_16k(&wav).unwrap();
    let split = (0.72 * 16_000.0) as usize;
    let mut spliced = audio[..split].to_vec();
    spliced.extend(std::iter::repeat(0.0).take((PAUSE_S * 16_000.0) as usize));
    spliced.extend_from_slice(&audio[split..]);
    let input = dir.join("spliced.wav");
    let spec = hound::WavSpec { channels: 1, sample_rate: 16_000, bits_per_sample: 32, sample_format: hound::SampleFormat::Float };
    let mut writer = hound::WavWriter::create(&input, spec).unwrap();
    for s in spliced {
        writer.write_sample(s).unwrap();
    }
    writer.finalize().unwrap();
    (input, split as f64 / 16_000.0 + PAUSE_S)
}

/// The final events of a dense `live --format jsonl` replay of `input` at double speed.
fn jsonl_finals(input: &std::path::Path, extra_args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(common::binary())
        .args(["live", "--dense", "--no-tui", "--format", "jsonl", "--speed", "2"])
        .args(extra_args)
        .arg("--input")
        .arg(input)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == "final")
        .collect()
}

#[test]
fn a_short_utterance_followed_by_more_speech_is_decided_with_it() {
    // The voice gate closes in the pause after "Printing,"; the first word must not be made
    // final on its own audio but wait for what follows (Whisper misreads short isolated speech).
    let dir = tempfile::tempdir().unwrap();
    let (input, rest_starts) = printing_then_a_pause(dir.path());
    let finals: Vec<(f64, String)> =
        jsonl_finals(&input, &[]).iter().map(|e| (e["emitted_at"].as_f64().unwrap(), e["text"].as_str().unwrap().to_string())).collect();
    assert!(!finals.is_empty());
    assert!(
        finals[0].0 > rest_starts,
        "first final at {:.2} s, before the rest of the speech at {rest_starts:.2} s: {finals:?}",
        finals[0].0
    );
    let text: Vec<&str> = finals.iter().map(|f| f.1.as_str()).collect();
    let reference = "Printing, in the only sense with which we are at present concerned, differs from most if not from all the arts and crafts represented in the Exhibition";
    let counts = coda_asr::eval::score(reference, &text.join(" "));
    assert!(counts.wer() < 15.0, "WER {:.1}: {text:?}", counts.wer());
}

#[test]
fn live_word_timestamps_place_each_final_word_in_its_own_audio() {
    // Both words beside the pause are in one utterance, often in one segment; spread over the
    // segment by letters, "in" would start inside the pause.
    let dir = tempfile::tempdir().unwrap();
    let (input, rest_starts) = printing_then_a_pause(dir.path());
    let finals = jsonl_finals(&input, &["--word-timestamps"]);
    assert!(!finals.is_empty());
    let mut words = Vec::new();
    for event in &finals {
        let own: Vec<(String, f64, f64)> = event["words"]
            .as_array()
            .unwrap_or_else(|| panic!("a final without words: {event}"))
            .iter()
            .map(|w| (w["word"].as_str().unwrap().to_string(), w["start"].as_f64().unwrap(), w["end"].as_f64().unwrap()))
            .collect();
        let text: Vec<&str> = own.iter().map(|w| w.0.as_str()).collect();
        assert_eq!(text.join(" "), event["text"].as_str().unwrap());
        words.extend(own);
    }
    assert!(words.windows(2).all(|w| w[0].1 <= w[1].1), "starts out of order: {words:?}");
    assert!(words.iter().all(|w| w.1 <= w.2), "a word ends before it starts: {words:?}");
    let key = |w: &str| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
    let printing = words.iter().position(|w| key(&w.0) == "printing").unwrap_or_else(|| panic!("no \"Printing\": {words:?}"));
    let (first, next) = (&words[printing], &words[printing + 1]);
    assert!(first.2 < rest_starts - 1.0, "\"Printing\" ends at {:.2} s, in the pause: {words:?}", first.2);
    assert!(next.1 > rest_starts - 0.2, "{:?} starts at {:.2} s, before the speech at {rest_starts:.2} s", next.0, next.1);
}

#[test]
fn live_replay_of_noise_gives_no_words() {
    let speech = common::speech_dir();
    let manifest = coda_asr::eval::read_manifest(&speech.join("noise.tsv")).unwrap();
    for entry in manifest {
        let out = Command::new(common::binary())
            .args(["live", "--dense", "--no-tui", "--speed", "8", "--input"])
            .arg(&entry.wav)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(coda_asr::eval::normalize::normalize(&stdout).is_empty(), "{}: {stdout:?}", entry.id);
    }
}

#[test]
fn noise_shows_no_partial_words() {
    // The running tap opens the voice gate for a few seconds. Only finals used to wait for a
    // voice: the first pass read "you" and it was shown as a partial.
    let noise = common::speech_excerpt("audio/noise/sc_noise_running_tap.wav", 0.0, 8.0);
    let t = Transcriber::new(common::tiny_en());
    let events = simulate_recognizer(&t, &noise, StreamOptions::default(), Pacing::Instant).unwrap();
    assert_eq!(words_shown(&events), Vec::<String>::new());
}

#[test]
fn a_recogniser_that_fell_behind_makes_no_words_of_noise() {
    // All of 8 s of a running tap is queued before the recogniser starts, as when it falls
    // behind: the voice gate opens on the noise's first seconds and closes, and the utterance's
    // first pass is also its last, flushed without a second pass to agree. It read "I'm going
    // to go to the next video." (a replay at `--speed 32` did the same).
    let noise = common::speech_excerpt("audio/noise/sc_noise_running_tap.wav", 0.0, 8.0);
    assert_eq!(final_text_of_queued(&noise), "");
}

/// The final words (see [`final_text`]) of a recogniser that finds all of `audio` queued when
/// it starts, in 10 ms blocks, as when it has fallen behind.
fn final_text_of_queued(audio: &[f32]) -> String {
    let (audio_tx, audio_rx) = crossbeam_channel::unbounded();
    for block in audio.chunks(160) {
        audio_tx.send(block.to_vec()).unwrap();
    }
    drop(audio_tx);
    let (_control_tx, control_rx) = crossbeam_channel::unbounded();
    let (events_tx, events_rx) = crossbeam_channel::unbounded();
    let t = Transcriber::new(common::tiny_en());
    run_recognizer(&t, audio_rx, control_rx, events_tx, StreamOptions::default(), Default::default()).unwrap();
    final_text(events_rx.try_iter())
}

/// The final words of a recogniser's events, normalised as WER is scored.
fn final_text(events: impl IntoIterator<Item = Event>) -> String {
    let finals: Vec<String> = events
        .into_iter()
        .filter_map(|e| match e {
            Event::Final { text, .. } => Some(text),
            _ => None,
        })
        .collect();
    coda_asr::eval::normalize::normalize(&finals.join(" "))
}

/// The text of every partial and final event that shows a word.
fn words_shown(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Partial { text, .. } | Event::Final { text, .. } if !coda_asr::eval::normalize::normalize(text).is_empty() => {
                Some(text.clone())
            }
            _ => None,
        })
        .collect()
}

/// Pink noise (Paul Kellet's filter of white noise), `seconds` long at 16 kHz, RMS about `rms`.
fn pink_noise(seconds: f64, rms: f32, seed: u64) -> Vec<f32> {
    let (mut state, mut b0, mut b1, mut b2) = (seed, 0.0f32, 0.0f32, 0.0f32);
    (0..(seconds * 16_000.0) as usize)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let white = (state >> 40) as f32 / (1u64 << 23) as f32 * 2.0 - 1.0;
            b0 = 0.99765 * b0 + white * 0.099046;
            b1 = 0.963 * b1 + white * 0.2965164;
            b2 = 0.57 * b2 + white * 1.0526913;
            (b0 + b1 + b2 + white * 0.1848) * rms / 1.78
        })
        .collect()
}

#[test]
fn bursts_of_noise_give_no_words() {
    // 0.7 s bursts of pink noise, 1.3 s apart: the noise floor falls back to the silence
    // between them, so each opens the energy gate, and Whisper read them as "you" in passes
    // that pass its no-speech tests; nothing in them is voiced.
    let mut audio = vec![0.0f32; 16_000];
    for burst in 0..9 {
        audio.extend(pink_noise(0.7, 0.063, burst));
        audio.extend(std::iter::repeat_n(0.0f32, 20_800));
    }
    let t = Transcriber::new(common::tiny_en());
    let events = simulate_recognizer(&t, &audio, StreamOptions::default(), Pacing::Instant).unwrap();
    assert_eq!(words_shown(&events), Vec::<String>::new());
}

#[test]
fn a_simulation_charged_with_compute_stamps_each_pass_when_it_ends() {
    let speech = common::speech_excerpt("audio/librispeech_train_clean_100/4214-7146-0000.wav", 0.0, 7.0);
    let t = Transcriber::new(common::tiny_en());
    let first_partial = |events: &[Event]| {
        events.iter().find_map(|e| match e {
            Event::Partial { text, emitted_at, .. } if !text.is_empty() => Some(*emitted_at),
            _ => None,
        })
    };
    let instant = simulate_recognizer(&t, &speech, StreamOptions::default(), Pacing::Instant).unwrap();
    let charged = simulate_recognizer(&t, &speech, StreamOptions::default(), Pacing::ChargeCompute).unwrap();
    // The first pass falls at the same audio time in both (no compute has been spent before
    // it); charged, its partial appears once that pass has run.
    let (at_instant, at_charged) = (first_partial(&instant).unwrap(), first_partial(&charged).unwrap());
    assert!(at_charged > at_instant + 0.005, "instant {at_instant:.3} s, charged {at_charged:.3} s");
    // The same words either way.
    let text = final_text(charged);
    assert!(text.contains("october was a beautiful month at green gables"), "{text}");
}

#[test]
fn sine_sweeps_give_no_words() {
    // Periodic, so they passed the voicing rule: a replay at `--speed 8` read "I'm going to go
    // to the next video.", this test "Wooooooh."; a tone is not a voice (see `vad`). Queued
    // all at once, as when the recogniser falls behind: each utterance's first pass is also
    // its last.
    assert_eq!(final_text_of_queued(&common::sine_sweeps(3)), "");
}

#[test]
fn whispered_speech_is_transcribed_only_when_asked() {
    let speech = common::speech_excerpt("audio/librispeech_train_clean_100/4214-7146-0000.wav", 0.0, 7.0);
    let whisper = whispered(&speech, 1);
    let t = Transcriber::new(common::tiny_en());
    // No voiced frames, so dropped as noise by default…
    let by_default = simulate_recognizer(&t, &whisper, StreamOptions::default(), Pacing::Instant).unwrap();
    assert_eq!(final_text(by_default), "");
    // …and heard with `--transcribe-unvoiced`.
    let asked = simulate_recognizer(&t, &whisper, StreamOptions { min_voiced_frames: 0, ..Default::default() }, Pacing::Instant).unwrap();
    let text = final_text(asked);
    assert!(text.contains("tragic results october was a beautiful month at green gables"), "{text}");
}

/// Whispered speech made from voiced speech: each 4 ms frame keeps its spectrum's magnitudes
/// with random phases, so the spectral envelope (the words) stays and the periodicity of the
/// vibrating vocal folds (the voice) goes.
fn whispered(speech: &[f32], seed: u64) -> Vec<f32> {
    use realfft::num_complex::Complex;
    const N: usize = 64;
    const HOP: usize = 16;
    let mut planner = realfft::RealFftPlanner::<f32>::new();
    let (forward, inverse) = (planner.plan_fft_forward(N), planner.plan_fft_inverse(N));
    let window: Vec<f32> = (0..N).map(|i| (std::f32::consts::PI * i as f32 / N as f32).sin().powi(2)).collect();
    let (mut out, mut weight) = (vec![0.0f32; speech.len() + N], vec![0.0f32; speech.len() + N]);
    let mut spectrum = forward.make_output_vec();
    let mut state = seed;
    for start in (0..speech.len()).step_by(HOP) {
        let mut frame: Vec<f32> = (0..N).map(|i| speech.get(start + i).copied().unwrap_or(0.0) * window[i]).collect();
        forward.process(&mut frame, &mut spectrum).unwrap();
        let last = spectrum.len() - 1;
        for (k, bin) in spectrum.iter_mut().enumerate() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let phase = (state >> 40) as f32 / (1u64 << 24) as f32 * std::f32::consts::TAU;
            // The DC and Nyquist bins of a real signal have no phase.
            *bin = if k == 0 || k == last { Complex::new(bin.norm(), 0.0) } else { Complex::from_polar(bin.norm(), phase) };
        }
        inverse.process(&mut spectrum, &mut frame).unwrap();
        for i in 0..N {
            out[start + i] += frame[i] * window[i] / N as f32;
            weight[start + i] += window[i] * window[i];
        }
    }
    out.truncate(speech.len());
    out.iter().zip(&weight).map(|(x, w)| if *w > 1e-3 { x / w } else { 0.0 }).collect()
}

/// A private PulseAudio server with a null sink, torn down on drop.
struct PulseServer {
    child: std::process::Child,
    socket: String,
    _dir: tempfile::TempDir,
}

impl PulseServer {
    fn start() -> PulseServer {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("native");
        let child = Command::new("pulseaudio")
            .args(["-n", "--daemonize=no", "--exit-idle-time=-1", "--load=module-null-sink sink_name=null"])
            .arg(format!("--load=module-native-protocol-unix socket={}", socket.display()))
            .env("PULSE_RUNTIME_PATH", dir.path())
            .env("HOME", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("pulseaudio is needed for this test (scripts/setup.sh installs it)");
        let socket = format!("unix:{}", socket.display());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let ok = Command::new("pactl")
                .args(["-s", &socket, "set-default-source", "null.monitor"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the PulseAudio test server did not start");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        PulseServer { child, socket, _dir: dir }
    }
}

impl Drop for PulseServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn live_capture_from_a_real_audio_server() {
    // cpal's ALSA backend → ALSA's pulse plugin → a null sink's monitor, into which paplay
    // plays a real clip; Ctrl-C (SIGINT) then flushes the finals and exits cleanly.
    let server = PulseServer::start();
    let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let live = Command::new(common::binary())
        .args(["live", "--dense", "--no-tui", "--capture", "PulseAudio Sound Server"])
        .env("PULSE_SERVER", &server.socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let played = Command::new("paplay").args(["-s", &server.socket]).arg(&wav).status().unwrap();
    assert!(played.success());
    std::thread::sleep(std::time::Duration::from_secs(4));
    Command::new("kill").args(["-INT", &live.id().to_string()]).status().unwrap();
    let out = live.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let reference = "Printing, in the only sense with which we are at present concerned, differs from most if not from all the arts and crafts represented in the Exhibition";
    let counts = coda_asr::eval::score(reference, &stdout.replace('\n', " "));
    assert!(counts.wer() < 20.0, "WER {:.1}: {stdout}", counts.wer());
}

#[test]
fn no_input_device_is_a_clear_error() {
    let out =
        Command::new(common::binary()).args(["live", "--dense", "--no-tui", "--capture", "no-such-device-anywhere"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no input device matches \"no-such-device-anywhere\""), "{stderr}");
}

#[test]
fn a_pass_derailed_by_its_prompt_is_decoded_again_without_it() {
    // Seen on a long-form replay of train.tsv clips: "Chapter 7 The" was final and out of the
    // buffer, which held "Timely Rescue. It was no pleasant thought to contemplate…"; every
    // pass prompted with the committed text read it as "The".
    let buffer = &common::speech_excerpt("audio/librispeech_train_clean_100/4014-186175-0000.wav", 2.895, 7.245);
    let t = Transcriber::new(common::tiny_en());
    let opts = TranscribeOptions {
        initial_prompt: Some("let alone their children. Chapter 7 The".into()),
        condition_on_previous_text: false,
        temperatures: vec![0.0],
        ..Default::default()
    };
    let prompted = t.transcribe(buffer, &opts, &mut |_| {}).unwrap();
    assert!(!prompted.text.contains("pleasant"), "the recorded failure no longer happens: {:?}", prompted.text);
    let (pass, _) = streaming_pass(&t, buffer, &opts).unwrap();
    assert!(pass.text.contains("no pleasant thought"), "{:?}", pass.text);
}
