//! End to end on real speech: twelve clips of ../shared/speech/dev.tsv through audio → mel →
//! encoder → decoder → text, scored with the normalised WER; output formats are well formed.

mod common;
use coda_asr::eval::{read_manifest, run};
use coda_asr::output::{to_json, to_srt, to_vtt, CueLayout};
use coda_asr::transcribe::{compression_ratio, TranscribeOptions, Transcriber};

#[test]
fn dev_clips_transcribe_with_low_wer() {
    let manifest = common::speech_dir().join("dev.tsv");
    let entries = read_manifest(&manifest).unwrap();
    // Every seventh clip: test-other, test-clean, dev-clean, LJ Speech and PocketSphinx alike.
    let picked: Vec<_> = entries.iter().step_by(7).cloned().collect();
    assert!(picked.len() >= 10);
    let t = Transcriber::new(common::tiny_en());
    let report = run(&t, &picked, &TranscribeOptions::default(), "test", "dev.tsv", &mut |_, _| {}).unwrap();
    let s = &report.summary;
    assert_eq!(s.failed, 0);
    // Whisper tiny.en scores about 10–12 % on all of dev.tsv; these clips are a mixed sample.
    assert!(
        s.wer < 20.0,
        "WER {:.2} on {} clips: {:#?}",
        s.wer,
        s.clips,
        report.clips.iter().map(|c| (&c.id, c.wer, &c.hypothesis)).collect::<Vec<_>>()
    );
    assert!(s.counts.reference_words > 150);
}

#[test]
fn quick_start_sample_is_transcribed_exactly() {
    let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let audio = coda_asr::audio::load_mono_16k(&wav).unwrap();
    let t = Transcriber::new(common::tiny_en());
    let tr = t.transcribe(&audio, &TranscribeOptions::default(), &mut |_| {}).unwrap();
    let reference = "Printing, in the only sense with which we are at present concerned, differs from most if not from all the arts and crafts represented in the Exhibition";
    let counts = coda_asr::eval::score(reference, &tr.text);
    assert!(counts.errors() <= 1, "{}", tr.text);
    assert!(!tr.segments.is_empty());
    for s in &tr.segments {
        assert!(s.start < s.end && s.end <= tr.duration + 1e-6, "segment times {} → {}", s.start, s.end);
    }
    assert!(tr.segments.windows(2).all(|w| w[0].end <= w[1].start + 1e-6), "segments overlap");

    let srt = to_srt(&tr, CueLayout::default());
    let blocks: Vec<&str> = srt.trim_end().split("\n\n").collect();
    assert_eq!(blocks.len(), tr.segments.len());
    for (i, b) in blocks.iter().enumerate() {
        let lines: Vec<&str> = b.lines().collect();
        assert_eq!(lines[0], (i + 1).to_string());
        let re = regex::Regex::new(r"^\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}$").unwrap();
        assert!(re.is_match(lines[1]), "{}", lines[1]);
        assert!(!lines[2].trim().is_empty());
    }
    let vtt = to_vtt(&tr, CueLayout::default());
    assert!(vtt.starts_with("WEBVTT\n\n"));
    let re = regex::Regex::new(r"(?m)^\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}$").unwrap();
    assert_eq!(re.find_iter(&vtt).count(), tr.segments.len());
    let json: serde_json::Value = serde_json::from_str(&to_json(&tr, "LJ001-0001.wav", "tiny.en").unwrap()).unwrap();
    assert_eq!(json["segments"].as_array().unwrap().len(), tr.segments.len());
    for key in ["mel_ms", "encoder_ms", "decoder_ms", "tokens"] {
        assert!(json["timings"][key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert!(json["segments"][0]["avg_logprob"].as_f64().unwrap() < 0.0);
    assert!(json["segments"][0]["no_speech_prob"].as_f64().unwrap() >= 0.0);
}

#[test]
fn silence_and_noise_give_no_words() {
    let manifest = common::speech_dir().join("noise.tsv");
    let t = Transcriber::new(common::tiny_en());
    for entry in read_manifest(&manifest).unwrap() {
        let audio = coda_asr::audio::load_mono_16k(&entry.wav).unwrap();
        let tr = t.transcribe(&audio, &TranscribeOptions::default(), &mut |_| {}).unwrap();
        let words = coda_asr::eval::normalize::normalize(&tr.text);
        assert!(words.is_empty(), "{}: transcribed {:?}", entry.id, tr.text);
    }
}

#[test]
fn bursts_of_noise_are_skipped_as_unvoiced() {
    // 0.7 s of a running tap every 2 s: Whisper's no-speech tests let the window through, and
    // it read "I'm going to go to the next one."; it has no voiced frame, so it is skipped.
    let mut audio = Vec::new();
    for burst in 0..9 {
        let start = 1.0 + 2.0 * burst as f64;
        audio.extend(common::speech_excerpt("audio/noise/sc_noise_running_tap.wav", start, start + 0.7));
        audio.extend(std::iter::repeat_n(0.0f32, 20_800));
    }
    assert_read_as_words_unless_skipped_as_unvoiced(&audio);
}

/// Decoded, `audio` gives words (the failure the voicing rule is there for), and by default it
/// is skipped before it is encoded.
fn assert_read_as_words_unless_skipped_as_unvoiced(audio: &[f32]) {
    let t = Transcriber::new(common::tiny_en());
    let decoded = t.transcribe(audio, &TranscribeOptions { skip_unvoiced_windows: false, ..Default::default() }, &mut |_| {}).unwrap();
    assert!(!decoded.text.trim().is_empty(), "the recorded failure no longer happens");
    let tr = t.transcribe(audio, &TranscribeOptions::default(), &mut |_| {}).unwrap();
    assert!(tr.segments.is_empty(), "{:?}", tr.text);
    assert_eq!(tr.timings.windows, 0, "nothing is encoded or decoded");
}

#[test]
fn sine_sweeps_are_skipped_as_unvoiced() {
    // Periodic, so YIN alone took them for a voice, and Whisper read "I'll see you later.";
    // nearly all their energy is in one spectral peak, so they are not voiced.
    assert_read_as_words_unless_skipped_as_unvoiced(&common::sine_sweeps(2));
}

#[test]
fn a_doubtful_short_buffer_is_rechecked_on_the_whole_window_unless_turned_off() {
    // The first 0.6 s of the LibriSpeech long file ("Replied he…"), as a streaming pass hears
    // it: on the block encoding Whisper is in doubt, so by default the window is decoded again
    // from a whole 30 s window; streaming turns that off on an utterance's first passes.
    let buffer = &common::speech_excerpt("audio/longform/ls_test_other_2033-164914_0000-0009.wav", 0.19, 0.79);
    let t = Transcriber::new(common::tiny_en());
    let greedy = TranscribeOptions { temperatures: vec![0.0], ..Default::default() };
    let rechecked = t.transcribe(buffer, &greedy, &mut |_| {}).unwrap();
    assert_eq!(rechecked.timings.whole_window_rechecks, 1);
    let direct = t.transcribe(buffer, &TranscribeOptions { whole_window_recheck: false, ..greedy }, &mut |_| {}).unwrap();
    assert_eq!(direct.timings.whole_window_rechecks, 0);
    assert!(direct.encoder.flops < rechecked.encoder.flops / 5.0, "the recheck encodes a whole window");
}

#[test]
fn compression_ratio_flags_repetition() {
    assert!(compression_ratio(&"the same words again ".repeat(20)) > 2.4);
    assert!(compression_ratio("He hoped there would be stew for dinner, turnips and carrots.") < 2.4);
}

#[test]
fn a_draft_changes_the_work_not_the_transcript() {
    // A streaming step's draft is the previous hypothesis of a shorter buffer: it agrees for a
    // while, then differs (its closing timestamp, then new words). Greedy decoding with it must
    // give exactly what greedy decoding without it gives; so must a draft that is all wrong.
    let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let audio = coda_asr::audio::load_mono_16k(&wav).unwrap();
    let t = Transcriber::new(common::tiny_en());
    let greedy = TranscribeOptions { temperatures: vec![0.0], ..Default::default() };
    let plain = t.transcribe(&audio, &greedy, &mut |_| {}).unwrap();
    let shorter = t.transcribe(&audio[..audio.len() * 6 / 10], &greedy, &mut |_| {}).unwrap();
    assert!(shorter.first_window_tokens.len() > 5);
    let mut wrong = plain.first_window_tokens.clone();
    wrong.reverse();
    for draft in [shorter.first_window_tokens.clone(), plain.first_window_tokens.clone(), wrong] {
        let with_draft = t.transcribe(&audio, &TranscribeOptions { draft, ..greedy.clone() }, &mut |_| {}).unwrap();
        assert_eq!(with_draft.text, plain.text);
        assert_eq!(with_draft.first_window_tokens, plain.first_window_tokens);
    }
}

#[test]
fn the_token_limit_stops_a_window_and_says_so() {
    // 10 tokens plus `rate` a second: the quick-start clip (9.7 s, ~35 tokens) fits under 6 a
    // second and is cut short under 1.
    let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let audio = coda_asr::audio::load_mono_16k(&wav).unwrap();
    let t = Transcriber::new(common::tiny_en());
    let greedy = TranscribeOptions { temperatures: vec![0.0], ..Default::default() };
    let plain = t.transcribe(&audio, &greedy, &mut |_| {}).unwrap();
    assert!(!plain.hit_token_limit);
    let roomy = t.transcribe(&audio, &TranscribeOptions { max_tokens_per_second: Some(6.0), ..greedy.clone() }, &mut |_| {}).unwrap();
    assert!(!roomy.hit_token_limit);
    assert_eq!(roomy.text, plain.text);
    let tight = t.transcribe(&audio, &TranscribeOptions { max_tokens_per_second: Some(1.0), ..greedy }, &mut |_| {}).unwrap();
    assert!(tight.hit_token_limit);
    assert!(tight.first_window_tokens.len() <= 10 + 10, "{} tokens", tight.first_window_tokens.len());
    assert!(plain.first_window_tokens.len() > 20 + 1);
}

#[test]
fn a_long_segment_with_few_words_counts_as_skipped_speech() {
    // What sends a reduced-encoder window back to the dense encoder: the decoder jumped over
    // speech (29.6 s read as 16 words, as CoDA r = 4 once did), not a short pause.
    let tok = &common::tiny_en().tokenizer;
    let at = |seconds: f64| tok.timestamp_begin + (seconds / 0.02).round() as u32;
    let segment = |start: f64, end: f64, words: usize| {
        let mut tokens = vec![at(start)];
        tokens.extend(tok.encode(&" word".repeat(words)).unwrap());
        tokens.push(at(end));
        tokens
    };
    let sparse = |tokens: &[u32]| coda_asr::transcribe::has_sparse_segment(tokens, tok).unwrap();
    assert!(sparse(&segment(0.0, 29.6, 16)));
    assert!(!sparse(&segment(0.0, 6.2, 2)), "a short segment around a pause");
    assert!(!sparse(&segment(0.0, 12.0, 15)), "a long segment of ordinary speech");
    // Judged segment by segment, across the doubled timestamps between them.
    let mut two = segment(0.0, 5.0, 12);
    two.extend(segment(5.0, 28.0, 6));
    assert!(sparse(&two));
    let mut ordinary = segment(0.0, 5.0, 12);
    ordinary.extend(segment(5.0, 9.0, 10));
    ordinary.push(tok.eot);
    assert!(!sparse(&ordinary));
}

/// The quick-start clip's encoder output (tiny.en, dense, its audio block and cached padding).
fn quick_start_features() -> candle_core::Tensor {
    let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let audio = coda_asr::audio::load_mono_16k(&wav).unwrap();
    let t = Transcriber::new(common::tiny_en());
    let mel = t.log_mel(&audio);
    t.encode_segment(&mel, 0, audio.len() / coda_asr::mel::HOP_LENGTH, &TranscribeOptions::default()).unwrap().0
}

/// The single-token decoder (every decoded token on the CPU, and a window's short prompt) gives
/// the batched decoder's predictions at every position: exact logits for the tokens after the
/// text ones, and, once refined, the same largest text logit for the same token, also with the
/// likeliest tokens masked. Running a token without its vocabulary projection (`advance`)
/// leaves the same state as a full step.
#[test]
fn single_token_decoder_matches_the_batched_decoder_position_by_position() {
    use candle_core::{IndexOp, Tensor};
    use coda_asr::model::step::StepState;
    let model = common::tiny_en();
    let step = model.step.as_ref().expect("the CPU float32 model has a single-token decoder");
    let features = quick_start_features();
    // <|startoftranscript|>, a timestamp, then the words' tokens.
    let mut tokens = vec![model.tokenizer.sot, model.tokenizer.timestamp_begin];
    tokens.extend(model.tokenizer.encode(" Printing, in the only sense").unwrap());

    let mut batched = model.decoder.start(&features).unwrap();
    let input = Tensor::new(tokens.as_slice(), &model.device).unwrap().unsqueeze(0).unwrap();
    let hidden = model.decoder.forward(&input, &mut batched).unwrap();
    let expected = model.decoder.logits(&hidden.i(0).unwrap()).unwrap();

    let fresh = || StepState::from_exported(step, model.decoder.start(&features).unwrap().export().unwrap()).unwrap();
    let mut state = fresh();
    let mut logits = vec![0f32; step.vocab_size];
    let text_rows = model.tokenizer.eot as usize;
    let best = |v: &[f32]| v.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b });
    for (i, &token) in tokens.iter().enumerate() {
        step.step(token, &mut state, &mut logits).unwrap();
        let want: Vec<f32> = expected.i(i).unwrap().to_vec1().unwrap();
        let worst = logits[text_rows..].iter().zip(&want[text_rows..]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 2e-3, "position {i}: logits after the text tokens differ by {worst}");
        // Mask the 0, 1 or 2 likeliest text tokens, as suppression can, then refine.
        for masked in 0..3 {
            let mut want = want.clone();
            let mut got = logits.clone();
            for _ in 0..masked {
                let (top, _) = best(&want[..text_rows]);
                want[top] = f32::NEG_INFINITY;
                got[top] = f32::NEG_INFINITY;
            }
            step.refine(&state, &mut got);
            let ((got_token, got_max), (want_token, want_max)) = (best(&got[..text_rows]), best(&want[..text_rows]));
            assert_eq!(got_token, want_token, "position {i}, {masked} masked: the likeliest text token");
            assert!((got_max - want_max).abs() < 2e-3, "position {i}, {masked} masked: {got_max} vs {want_max}");
        }
        // For beam search: the six likeliest text tokens and their logits, in order.
        let mut got = logits.clone();
        step.refine_top(&state, &mut got, 6);
        let top6 = |v: &[f32]| {
            let mut ranked: Vec<(usize, f32)> = v[..text_rows].iter().copied().enumerate().collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
            ranked.truncate(6);
            ranked
        };
        for ((got_token, got_logit), (want_token, want_logit)) in top6(&got).into_iter().zip(top6(&want)) {
            assert_eq!(got_token, want_token, "position {i}: the six likeliest text tokens");
            assert!((got_logit - want_logit).abs() < 2e-3, "position {i}: {got_logit} vs {want_logit}");
        }
        // The fork decodes on as the state it came from.
        let (mut forked, mut forked_logits, mut original_logits) =
            (state.fork(step), vec![0f32; step.vocab_size], vec![0f32; step.vocab_size]);
        step.step(model.tokenizer.eot, &mut forked, &mut forked_logits).unwrap();
        step.step(model.tokenizer.eot, &mut state.clone(), &mut original_logits).unwrap();
        assert_eq!(forked_logits, original_logits, "position {i}: a forked state decodes differently");
    }
    let mut skipped = fresh();
    for &token in &tokens[..tokens.len() - 1] {
        step.advance(token, &mut skipped).unwrap();
    }
    let mut last = vec![0f32; step.vocab_size];
    step.step(*tokens.last().unwrap(), &mut skipped, &mut last).unwrap();
    assert_eq!(last, logits, "advance must leave the state a full step leaves");
}

/// Beams stepped as one batch (`step_batch`, which reads each weight once for all of them)
/// decode exactly as each stepped alone: the same logits bit for bit, also once refined (from
/// the hidden state the batch leaves in each state), round after round, with histories of
/// different lengths and more sequences than one kernel pass takes (six).
#[test]
fn sequences_stepped_together_decode_bit_for_bit_as_each_alone() {
    use coda_asr::model::step::StepState;
    let model = common::tiny_en();
    let step = model.step.as_ref().expect("the CPU float32 model has a single-token decoder");
    let features = quick_start_features();
    let fresh = || StepState::from_exported(step, model.decoder.start(&features).unwrap().export().unwrap()).unwrap();
    let words = model.tokenizer.encode(" Printing, in the only sense with which we are at present concerned").unwrap();
    let base = fresh();
    let sequences = 7;
    let mut alone: Vec<StepState> = (0..sequences)
        .map(|i| {
            let mut s = base.fork(step);
            for &token in &words[..i % 4] {
                step.advance(token, &mut s).unwrap();
            }
            s
        })
        .collect();
    let mut together: Vec<StepState> = alone.iter().map(|s| s.fork(step)).collect();
    let vocab = step.vocab_size;
    let mut scratch = step.batch_scratch(sequences, &base);
    let mut batch_logits = vec![0f32; sequences * vocab];
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    for round in 0..3 {
        let tokens: Vec<u32> = (0..sequences).map(|i| words[(i + round) % words.len()]).collect();
        step.step_batch(&tokens, &mut together.iter_mut().collect::<Vec<_>>(), &mut scratch, &mut batch_logits).unwrap();
        for (i, state) in alone.iter_mut().enumerate() {
            let mut want = vec![0f32; vocab];
            step.step(tokens[i], state, &mut want).unwrap();
            let got = &batch_logits[i * vocab..(i + 1) * vocab];
            assert!(bits(got) == bits(&want), "round {round}, sequence {i}: the batch's logits differ");
            let (mut got, mut want) = (got.to_vec(), want);
            step.refine_top(&together[i], &mut got, 6);
            step.refine_top(state, &mut want, 6);
            assert!(bits(&got) == bits(&want), "round {round}, sequence {i}: the refined logits differ");
        }
    }
    // Sequences of two windows cannot share one pass over cross-attention keys.
    let mut other = fresh();
    let mut two = vec![0f32; 2 * vocab];
    let err = step.step_batch(&words[..2], &mut [&mut together[0], &mut other], &mut scratch, &mut two).unwrap_err();
    assert!(err.to_string().contains("one window"), "{err}");
}

#[test]
fn a_prompted_window_read_as_nothing_is_decoded_again_without_the_prompt() {
    // The shared LJ Speech file 0.5 s later, at r = 3: after the first window the second (27–57
    // s) read "<|0.00|>" and end-of-text after its prompt, likely enough for Whisper's
    // fallback, and "the invention of movable metal letters … Now," (23 s) was lost.
    let dir = coda_asr::model::resolve_model_dir("tiny.en").unwrap();
    let mut model = coda_asr::model::WhisperModel::load(&dir, &candle_core::Device::Cpu).unwrap();
    model.attach_coda(&model.default_coda_dir().expect("models/coda-tiny.en is shipped")).unwrap();
    let mut audio = vec![0.0f32; 8_000];
    audio.extend(common::speech_excerpt("audio/longform/ljspeech_LJ001-0001_to_0016.wav", 0.0, 60.0));
    let t = Transcriber::new(&model);
    let at_r3 = TranscribeOptions { encode: coda_asr::model::EncodeOptions { reduction: 3.0 }, ..Default::default() };
    let without = t.transcribe(&audio, &TranscribeOptions { unprompted_retry: false, ..at_r3.clone() }, &mut |_| {}).unwrap();
    assert!(!without.text.contains("movable metal"), "the recorded failure no longer happens: {}", without.text);
    let tr = t.transcribe(&audio, &at_r3, &mut |_| {}).unwrap();
    assert!(tr.timings.unprompted_retries >= 1);
    assert!(tr.text.to_lowercase().contains("invention of movable metal letters"), "{}", tr.text);
}

#[test]
fn beam_search_reads_more_exactly_than_greedy_decoding() {
    // Greedy decoding hears "concern" in the quick-start clip; five beams find "concerned",
    // the reference word for word.
    let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let audio = coda_asr::audio::load_mono_16k(&wav).unwrap();
    let t = Transcriber::new(common::tiny_en());
    let reference = "Printing, in the only sense with which we are at present concerned, differs from most if not from all the arts and crafts represented in the Exhibition";
    let greedy = t.transcribe(&audio, &TranscribeOptions::default(), &mut |_| {}).unwrap();
    let beams = t.transcribe(&audio, &TranscribeOptions { beam_size: 5, ..Default::default() }, &mut |_| {}).unwrap();
    assert_eq!(coda_asr::eval::score(reference, &greedy.text).errors(), 1, "{}", greedy.text);
    assert_eq!(coda_asr::eval::score(reference, &beams.text).errors(), 0, "{}", beams.text);
    // The timestamp rules hold for every beam: segments in order, inside the clip.
    assert!(!beams.segments.is_empty());
    for s in &beams.segments {
        assert!(s.start < s.end && s.end <= beams.duration + 1e-6, "segment times {} → {}", s.start, s.end);
    }
    assert!(beams.segments.windows(2).all(|w| w[0].end <= w[1].start + 1e-6), "segments overlap");
    assert!(beams.segments.iter().all(|s| s.avg_logprob < 0.0 && s.avg_logprob > -1.0));
    // The tensor decoder (the GPU and float16 path) steps its beams one by one to the same words.
    let dir = coda_asr::model::resolve_model_dir("tiny.en").unwrap();
    let mut tensors_only = coda_asr::model::WhisperModel::load(&dir, &candle_core::Device::Cpu).unwrap();
    tensors_only.step = None;
    let on_tensors =
        Transcriber::new(&tensors_only).transcribe(&audio, &TranscribeOptions { beam_size: 5, ..Default::default() }, &mut |_| {}).unwrap();
    assert_eq!(on_tensors.text, beams.text);
}

#[test]
fn beam_search_on_dev_clips_stays_within_the_greedy_bound() {
    let entries = read_manifest(&common::speech_dir().join("dev.tsv")).unwrap();
    let picked: Vec<_> = entries.iter().step_by(7).cloned().collect();
    let t = Transcriber::new(common::tiny_en());
    let opts = TranscribeOptions { beam_size: 5, ..Default::default() };
    let report = run(&t, &picked, &opts, "test", "dev.tsv", &mut |_, _| {}).unwrap();
    assert_eq!(report.summary.failed, 0);
    assert!(report.summary.wer < 20.0, "WER {:.2}", report.summary.wer);
}

#[test]
fn best_of_keeps_the_likeliest_of_several_samples() {
    // Temperature 1.0 only, no fallback checks: the window is read by sampling. The first of
    // five draws is the single draw (same seed), so the kept one is at least as likely per
    // token, and five draws decode about five times the tokens.
    let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let audio = coda_asr::audio::load_mono_16k(&wav).unwrap();
    let t = Transcriber::new(common::tiny_en());
    let sampled = |best_of| {
        let opts = TranscribeOptions {
            temperatures: vec![1.0],
            compression_ratio_threshold: None,
            logprob_threshold: None,
            condition_on_previous_text: false,
            best_of,
            seed: 7,
            ..Default::default()
        };
        let tr = t.transcribe(&audio, &opts, &mut |_| {}).unwrap();
        assert_eq!(tr.timings.windows, 1);
        assert!(!tr.segments.is_empty(), "{best_of}: no segments");
        (tr.segments[0].avg_logprob, tr.timings.tokens)
    };
    let ((one, one_tokens), (five, five_tokens)) = (sampled(1), sampled(5));
    assert!(five >= one, "best of five {five} against one sample {one}");
    assert!(five_tokens > 3 * one_tokens, "{five_tokens} tokens decoded for five samples, {one_tokens} for one");
}
