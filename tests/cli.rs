//! The `coda-asr` binary: bad inputs give a clear error and a non-zero exit without stopping
//! the rest of a batch; output files are written per input.

mod common;
use std::process::Command;

#[test]
fn one_bad_file_does_not_stop_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.wav");
    std::fs::write(&bad, b"RIFF\x10\x00\x00\x00WAVEjunk").unwrap();
    let missing = dir.path().join("nowhere.wav");
    let good = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let out_dir = dir.path().join("out");
    let output = Command::new(common::binary())
        .args(["transcribe", "--format", "srt", "--output-dir"])
        .arg(&out_dir)
        .arg(&bad)
        .arg(&missing)
        .arg(&good)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&bad.display().to_string()), "{stderr}");
    assert!(stderr.contains(&format!("{}: file not found", missing.display())), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let srt = std::fs::read_to_string(out_dir.join("LJ001-0001.srt")).unwrap();
    assert!(srt.starts_with("1\n00:00:00,000 --> "), "{srt}");
    assert!(srt.to_lowercase().contains("printing"));
}

#[test]
fn several_formats_are_written_side_by_side_and_clashing_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clip = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let transcribe = |args: &[&str], inputs: &[&std::path::Path]| {
        let output = Command::new(common::binary()).arg("transcribe").args(args).args(inputs).output().unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };

    // `all` (and txt named again): one file of each format, each once.
    let out = dir.path().join("all");
    let (code, stderr) = transcribe(&["--format", "all,txt", "--output-dir", out.to_str().unwrap()], &[&clip]);
    assert_eq!(code, Some(0), "{stderr}");
    let mut names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["LJ001-0001.json", "LJ001-0001.srt", "LJ001-0001.txt", "LJ001-0001.vtt"]);
    let read = |ext: &str| std::fs::read_to_string(out.join(format!("LJ001-0001.{ext}"))).unwrap();
    assert!(read("srt").starts_with("1\n00:00:00,000 --> "), "{}", read("srt"));
    assert!(read("vtt").starts_with("WEBVTT\n\n00:00:00.000 --> "), "{}", read("vtt"));
    let json: serde_json::Value = serde_json::from_str(&read("json")).unwrap();
    let text = json["text"].as_str().unwrap().to_lowercase();
    assert!(text.contains("printing") && read("txt").to_lowercase().contains("printing"), "{text}");

    // Several formats cannot all go to the terminal.
    let (code, stderr) = transcribe(&["--format", "srt,vtt"], &[&clip]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--output-dir"), "{stderr}");

    // talk.wav and talk.flac in one folder would both write talk.txt: refused before anything
    // runs, so neither transcript is lost (the FLAC is never read).
    let folder = dir.path().join("clash");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(&clip, folder.join("talk.wav")).unwrap();
    std::fs::write(folder.join("talk.flac"), b"not read").unwrap();
    let clash_out = dir.path().join("clash-out");
    let (code, stderr) = transcribe(&["--output-dir", clash_out.to_str().unwrap()], &[&folder]);
    assert_eq!(code, Some(1), "{stderr}");
    for named in ["talk.wav", "talk.flac", "talk.txt"] {
        assert!(stderr.contains(named), "{named}: {stderr}");
    }
    assert!(!clash_out.exists(), "something was written");
}

#[test]
fn json_for_several_files_on_stdout_is_one_document_per_line_with_word_times() {
    let dir = tempfile::tempdir().unwrap();
    let clip = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let copy = dir.path().join("again.wav");
    std::fs::copy(&clip, &copy).unwrap();
    let output = Command::new(common::binary())
        .args(["transcribe", "--format", "json", "--word-timestamps"])
        .arg(&clip)
        .arg(&copy)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let documents: Vec<serde_json::Value> = stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(documents.len(), 2, "{stdout}");
    for (document, file) in documents.iter().zip([&clip, &copy]) {
        assert_eq!(document["file"].as_str(), Some(file.to_str().unwrap()));
        assert!(document["text"].as_str().unwrap().to_lowercase().contains("printing"), "{document}");
        for segment in document["segments"].as_array().unwrap() {
            let words = segment["words"].as_array().unwrap();
            let spelled: String = words.iter().map(|w| w["word"].as_str().unwrap()).collect();
            assert_eq!(spelled.trim(), segment["text"].as_str().unwrap().trim());
            assert!(words.iter().all(|w| w["start"].as_f64().unwrap() <= w["end"].as_f64().unwrap()), "{segment}");
        }
    }
}

#[test]
fn subtitles_keep_to_a_line_width() {
    let clip = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let run = |args: &[&str]| Command::new(common::binary()).arg("transcribe").arg(&clip).args(args).output().unwrap();
    let output = run(&["--format", "srt", "--max-line-width", "20", "--max-line-count", "1"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let srt = String::from_utf8(output.stdout).unwrap();
    let cues: Vec<Vec<&str>> = srt.trim_end().split("\n\n").map(|c| c.lines().collect()).collect();
    // The clip reads as three segments; at 20 characters a line it takes more cues than that.
    assert!(cues.len() >= 6, "{srt}");
    for cue in &cues {
        assert_eq!(cue.len(), 3, "number, times and one line: {cue:?}");
        assert!(cue[2].chars().count() <= 20, "{:?}", cue[2]);
    }
    let text: Vec<&str> = cues.iter().map(|c| c[2]).collect();
    assert!(text.join(" ").to_lowercase().starts_with("printing, in the only sense"), "{text:?}");
    // A line count needs a line width.
    let output = run(&["--format", "srt", "--max-line-count", "2"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--max-line-width"));
}

#[test]
fn m4a_is_read_in_process_and_opus_through_ffmpeg() {
    // Both made with ffmpeg from a real clip (scripts/setup.sh and .ci/run install it).
    let dir = tempfile::tempdir().unwrap();
    let clip = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let (m4a, opus) = (dir.path().join("memo.m4a"), dir.path().join("voice-note.opus"));
    for (out, codec) in [(&m4a, "aac"), (&opus, "libopus")] {
        let made =
            Command::new("ffmpeg").args(["-nostdin", "-v", "error", "-i"]).arg(&clip).args(["-ac", "2", "-c:a", codec]).arg(out).status();
        assert!(made.map(|s| s.success()).unwrap_or(false), "ffmpeg is needed for this test (apt-get install ffmpeg)");
    }
    let transcribe = |file: &std::path::Path, with_ffmpeg: bool| {
        let mut command = Command::new(common::binary());
        if !with_ffmpeg {
            command.env("PATH", dir.path());
        }
        let output = command.arg("transcribe").arg(file).output().unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stdout).to_lowercase(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    // AAC in MP4 needs no ffmpeg.
    let (code, stdout, stderr) = transcribe(&m4a, false);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("printing") && stdout.contains("exhibition"), "{stdout}");
    // Opus does; without it, the error names the file and says what would read it.
    let (code, _, stderr) = transcribe(&opus, false);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("voice-note.opus") && stderr.contains("install ffmpeg"), "{stderr}");
    let (code, stdout, stderr) = transcribe(&opus, true);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("printing") && stdout.contains("exhibition"), "{stdout}");
}

#[test]
fn missing_model_is_a_clear_error() {
    let good = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let output = Command::new(common::binary()).args(["transcribe", "--model", "no-such-model"]).arg(&good).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("model \"no-such-model\" not found"), "{stderr}");
}

#[test]
fn out_of_range_numbers_are_refused_before_anything_runs() {
    // `live --speed 0` replayed nothing, forever; `--reduction 0.5` ran the dense encoder
    // under another name.
    let clip = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let clip = clip.to_str().unwrap();
    let cases: &[(&[&str], &str, &str)] = &[
        (&["live", "--no-tui", "--input", clip, "--speed", "0"], "--speed", "must be a number > 0"),
        (&["live", "--no-tui", "--input", clip, "--step=-1"], "--step", "must be a number > 0"),
        (&["live", "--no-tui", "--input", clip, "--context=-2"], "--context", "must be a number ≥ 0"),
        (&["live", "--no-tui", "--input", clip, "--max-reduction", "0"], "--max-reduction", "must be a number ≥ 1"),
        (&["transcribe", clip, "--reduction", "0.5"], "--reduction", "must be a number ≥ 1"),
        (&["transcribe", clip, "--reduction", "nan"], "--reduction", "must be a number ≥ 1"),
        (&["bench", "--reductions", "2,0"], "--reductions", "must be a number ≥ 1"),
        (&["bench", "--repeats", "0"], "--repeats", "must be at least 1"),
    ];
    for (args, option, problem) in cases {
        let output = Command::new(common::binary()).args(*args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(option) && stderr.contains(problem), "{args:?}: {stderr}");
    }
}

/// `transcribe` searches with five beams unless told otherwise (as openai/whisper's,
/// faster-whisper's and whisper.cpp's command lines): on the quick-start clip they read the
/// reference word for word, where greedy decoding (`--beam-size 1`) hears "concern".
#[test]
fn transcribe_searches_five_beams_by_default() {
    let clip = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let text = |extra: &[&str]| {
        let out = Command::new(common::binary()).arg("transcribe").args(extra).arg(&clip).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let default = text(&[]);
    assert!(default.contains("at present concerned,"), "{default}");
    assert_eq!(default, text(&["--beam-size", "5", "--best-of", "5"]));
    let greedy = text(&["--beam-size", "1"]);
    assert!(greedy.contains("at present concern,"), "{greedy}");
}

#[test]
fn eval_writes_reports_that_compare() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.tsv");
    let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    std::fs::write(
        &manifest,
        format!(
            "id\twav\tduration_s\treference\nlj1\t{}\t9.655\tPrinting, in the only sense with which we are at present concerned, differs from most if not from all the arts and crafts represented in the Exhibition\n",
            wav.display()
        ),
    )
    .unwrap();
    let json = dir.path().join("r.json");
    let md = dir.path().join("r.md");
    let status = Command::new(common::binary())
        .args(["eval", "--manifest"])
        .arg(&manifest)
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(&md)
        .status()
        .unwrap();
    assert!(status.success());
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["summary"]["clips"], 1);
    // Greedy, eval's default (the benchmark protocol): it hears "concern" for "concerned".
    let wer = report["summary"]["wer"].as_f64().unwrap();
    assert!(wer > 0.0 && wer < 10.0, "{wer}");
    assert_eq!(report["summary"]["beam_size"], 1);
    assert!(std::fs::read_to_string(&md).unwrap().contains("| search | greedy |"));
    // One 30 s window: 36.9 GFLOP dense; silence caching runs the 9.7 s of audio (and 1 s more).
    let (run, dense) = (report["summary"]["encoder_gflop"].as_f64().unwrap(), report["summary"]["encoder_dense_gflop"].as_f64().unwrap());
    assert!(dense > 36.0 && dense < 38.0, "{dense}");
    assert!(run > 0.2 * dense && run < 0.4 * dense, "{run} of {dense}");
    assert!(std::fs::read_to_string(&md).unwrap().contains("| lj1 |"));
    let out = Command::new(common::binary()).args(["eval", "--compare"]).arg(&json).arg(&json).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().any(|l| l.starts_with("| WER % |") && l.matches('|').count() == 4), "{table}");
}

#[test]
fn train_refuses_bad_mix_options() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.tsv");
    let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    std::fs::write(&manifest, format!("id\twav\tduration_s\treference\nlj1\t{}\t9.655\tPrinting\n", wav.display())).unwrap();
    let train = |extra: &[&str]| {
        let output = Command::new(common::binary())
            .args(["train", "--max-steps", "1", "--manifest"])
            .arg(&manifest)
            .arg("--out")
            .arg(dir.path().join("adapters"))
            .args(extra)
            .output()
            .unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).to_string())
    };
    let (code, stderr) = train(&["--synthetic-share", "0.3"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--synthetic-share 0.3 needs --synthetic-manifest"), "{stderr}");
    let (code, stderr) = train(&["--timestamp-share", "1.5"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--timestamp-share must be between 0 and 1, got 1.5"), "{stderr}");
    let missing = dir.path().join("none.tsv");
    let (code, stderr) = train(&["--synthetic-share", "0.3", "--synthetic-manifest", missing.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{}: cannot read manifest", missing.display())), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!dir.path().join("adapters").exists(), "a refused run must not write adapters");
    // Adapters already in --out are continued with --resume, never overwritten by a fresh run.
    std::fs::create_dir(dir.path().join("adapters")).unwrap();
    std::fs::write(dir.path().join("adapters/coda.json"), "{}").unwrap();
    let (code, stderr) = train(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("already holds adapters") && stderr.contains("--resume"), "{stderr}");
    assert_eq!(std::fs::read_to_string(dir.path().join("adapters/coda.json")).unwrap(), "{}");
}

#[test]
fn stream_bench_reports_each_offset_and_the_spread() {
    // One real clip, simulated, from its start and after 130 ms of silence.
    let dir = tempfile::tempdir().unwrap();
    let wav = common::speech_dir().join("audio/librispeech_train_clean_100/4214-7146-0000.wav");
    let reference = "DIANA IS INVITED TO TEA WITH TRAGIC RESULTS OCTOBER WAS A BEAUTIFUL MONTH AT GREEN GABLES";
    let manifest = dir.path().join("clip.tsv");
    common::write_manifest(&manifest, "id\twav\tduration_s\treference", &[format!("clip\t{}\t7.000\t{reference}", wav.display())]);
    let segments = dir.path().join("segments.json");
    let utterance = serde_json::json!({"clip": [{"id": "clip-0", "start_s": 0.0, "end_s": 7.0, "reference": reference}]});
    std::fs::write(&segments, utterance.to_string()).unwrap();
    let json = dir.path().join("report.json");
    let output = Command::new(common::binary())
        .args(["stream-bench", "--simulate", "--dense", "--offsets-ms", "0,130", "--manifest"])
        .arg(&manifest)
        .arg("--segments")
        .arg(&segments)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("| 0 |") && stdout.contains("| 130 |"), "{stdout}");
    assert!(stdout.contains("mean ± sd over 2 offsets"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let replays = report["replays"].as_array().unwrap();
    assert_eq!(replays.len(), 2);
    assert_eq!(report["batch"].as_array().unwrap().len(), 2);
    // The second replay heard the clip 130 ms later, and was scored against times moved as much.
    let onset = |r: &serde_json::Value| r["speech_onset_s"].as_f64().unwrap();
    assert!((onset(&replays[1]) - onset(&replays[0]) - 0.13).abs() < 0.011, "{replays:?}");
    for r in replays {
        assert!(r["streaming_wer"].as_f64().unwrap() < 20.0, "{r}");
        assert_eq!(r["latencies_s"].as_array().unwrap().len(), 1);
    }
}
