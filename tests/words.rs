//! Word timestamps: the alignment's parts on made-up inputs, on real speech that words land
//! where they were said, and subtitle cues laid out by their words.

mod common;
use coda_asr::output::{cues, to_srt, CueLayout};
use coda_asr::transcribe::{Segment, TranscribeOptions, Transcriber, Transcript};
use coda_asr::words::{dtw, median_filter, merge_punctuation, split_words, Word};

#[test]
fn dtw_follows_the_cheap_cells_monotonically() {
    // 3 rows × 6 columns; the cheap cells are row 0 at columns 0–1, row 1 at 2–3, row 2 at 4–5.
    let (rows, cols) = (3, 6);
    let cost: Vec<f32> = (0..rows * cols).map(|i| if (i % cols) / 2 == i / cols { 0.0 } else { 1.0 }).collect();
    let path = dtw(&cost, rows, cols);
    assert_eq!(path, [(0, 0), (0, 1), (1, 2), (1, 3), (2, 4), (2, 5)]);
    // Any cost: from the first cell to the last, one step at a time.
    let cost: Vec<f32> = (0..40 * 25).map(|i| ((i * 7919) % 13) as f32).collect();
    let path = dtw(&cost, 40, 25);
    assert_eq!((path[0], *path.last().unwrap()), ((0, 0), (39, 24)));
    for w in path.windows(2) {
        let (di, dj) = (w[1].0 - w[0].0, w[1].1 - w[0].1);
        assert!(matches!((di, dj), (0, 1) | (1, 0) | (1, 1)), "{w:?}");
    }
}

#[test]
fn median_filter_mirrors_the_edges() {
    let values = [5.0, 1.0, 9.0, 2.0, 8.0, 3.0, 7.0];
    // Width 3: the edges see their mirrored neighbour (1 beside 5 on both sides).
    assert_eq!(median_filter(&values, 3), [1.0, 5.0, 2.0, 8.0, 3.0, 7.0, 3.0]);
    // A single spike disappears under width 7; a step survives.
    let spike: Vec<f32> = (0..20).map(|i| if i == 10 { 9.0 } else { 0.0 }).collect();
    assert!(median_filter(&spike, 7).iter().all(|&v| v == 0.0));
    let step: Vec<f32> = (0..20).map(|i| if i < 10 { 0.0 } else { 1.0 }).collect();
    assert_eq!(median_filter(&step, 7), step);
}

#[test]
fn punctuation_joins_its_word_and_keeps_the_word_times() {
    let w = |word: &str, start: f64, end: f64| Word { word: word.into(), start, end, probability: 1.0 };
    let merged =
        merge_punctuation(vec![w(" \"", 0.0, 0.1), w("Hello", 0.1, 0.5), w(",", 0.5, 0.9), w(" world", 0.9, 1.3), w(".\"", 1.3, 1.8)]);
    assert_eq!(merged, [w(" \"Hello,", 0.1, 0.5), w(" world.\"", 0.9, 1.3)]);
}

#[test]
fn words_split_at_spaces_and_punctuation() {
    let tok = &common::tiny_en().tokenizer;
    let text = " Printing, in the only sense with which we are at present concerned.";
    let tokens = tok.encode(text).unwrap();
    let words = split_words(tok, &tokens, "en").unwrap();
    let spelled: Vec<&str> = words.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(
        spelled,
        [" Printing", ",", " in", " the", " only", " sense", " with", " which", " we", " are", " at", " present", " concerned", "."]
    );
    // The token ranges tile the tokens in order.
    assert_eq!(words.first().unwrap().1.start, 0);
    assert_eq!(words.last().unwrap().1.end, tokens.len());
    assert!(words.windows(2).all(|p| p[0].1.end == p[1].1.start));
}

fn transcribe_with_words(audio: &[f32]) -> Transcript {
    let t = Transcriber::new(common::tiny_en());
    t.transcribe(audio, &TranscribeOptions { word_timestamps: true, ..Default::default() }, &mut |_| {}).unwrap()
}

fn all_words(t: &Transcript) -> Vec<&Word> {
    t.segments.iter().flat_map(|s| &s.words).collect()
}

#[test]
fn words_move_with_the_audio_they_were_said_in() {
    // The quick-start clip, then the same clip with 2 s of silence after "Printing,": the first
    // word must end before the pause, the next start after it, and every later word move by
    // the 2 s of the pause.
    let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let audio = coda_asr::audio::load_mono_16k(&wav).unwrap();
    let split = (0.72 * 16_000.0) as usize;
    let mut paused = audio[..split].to_vec();
    paused.extend(std::iter::repeat_n(0.0, 32_000));
    paused.extend(&audio[split..]);

    let plain = transcribe_with_words(&audio);
    let moved = transcribe_with_words(&paused);
    for t in [&plain, &moved] {
        for s in &t.segments {
            let spelled: String = s.words.iter().map(|w| w.word.as_str()).collect();
            assert_eq!(spelled.trim(), s.text.trim(), "the words spell their segment");
            assert!(s.words.iter().all(|w| s.start - 1e-9 <= w.start && w.start <= w.end && w.end <= s.end + 1e-9), "{s:?}");
            assert!(s.words.iter().all(|w| (0.0..=1.0).contains(&w.probability)));
        }
        let words = all_words(t);
        assert!(words.windows(2).all(|p| p[0].start <= p[1].start), "words out of order");
    }
    let (before, after) = (all_words(&plain), all_words(&moved));
    assert!(before.len() >= 20 && before.len() == after.len(), "{} and {} words", before.len(), after.len());
    assert!(after[0].word.trim().starts_with("Printing") && after[0].end <= 0.72 + 0.2, "{:?}", after[0]);
    assert!(after[1].start >= 0.72 + 2.0 - 0.2, "{:?} starts inside the pause", after[1]);
    let shifted = before[1..].iter().zip(&after[1..]).filter(|(b, a)| (a.start - b.start - 2.0).abs() <= 0.1).count();
    assert!(shifted * 10 >= (before.len() - 1) * 9, "{shifted} of {} words moved by the pause", before.len() - 1);
}

fn segment(id: usize, words: &[(&str, f64, f64)]) -> Segment {
    let words: Vec<Word> = words.iter().map(|&(w, start, end)| Word { word: w.into(), start, end, probability: 0.9 }).collect();
    Segment {
        id,
        start: words[0].start,
        end: words.last().unwrap().end,
        text: words.iter().map(|w| w.word.as_str()).collect(),
        tokens: Vec::new(),
        temperature: 0.0,
        avg_logprob: -0.2,
        compression_ratio: 1.0,
        no_speech_prob: 0.0,
        words,
    }
}

#[test]
fn subtitle_cues_break_between_words_within_their_segment() {
    let first = segment(
        0,
        &[
            (" Printing,", 0.0, 0.5),
            (" in", 0.9, 1.1),
            (" the", 1.1, 1.3),
            (" only", 1.3, 1.6),
            (" sense", 1.6, 2.0),
            (" with", 2.0, 2.2),
            (" which", 2.2, 2.5),
            (" we", 2.5, 2.7),
        ],
    );
    let second = segment(1, &[(" differs", 4.9, 5.4), (" from", 5.4, 5.7), (" extraordinarily", 5.7, 6.9), (" most.", 6.9, 7.3)]);
    let t = Transcript {
        text: format!("{}{}", first.text, second.text).trim().into(),
        segments: vec![first.clone(), second.clone()],
        language: "en".into(),
        duration: 8.0,
        timings: Default::default(),
        encoder: Default::default(),
        first_window_tokens: Vec::new(),
        hit_token_limit: false,
    };
    // By default, one cue per segment.
    assert_eq!(cues(&t, CueLayout::default()).len(), 2);
    let layout = CueLayout { max_line_width: Some(14), max_line_count: Some(2) };
    let laid_out = cues(&t, layout);
    let lines: Vec<Vec<&str>> = laid_out.iter().map(|c| c.text.lines().collect()).collect();
    assert_eq!(
        lines,
        [vec!["Printing, in", "the only sense"], vec!["with which we"], vec!["differs from", "extraordinarily"], vec!["most."]]
    );
    // Each cue spans its words' times; none reaches across the segments.
    let spans: Vec<(f64, f64)> = laid_out.iter().map(|c| (c.start, c.end)).collect();
    assert_eq!(spans, [(0.0, 2.0), (2.0, 2.7), (4.9, 6.9), (6.9, 7.3)]);
    // Without a line count, each segment is one cue of broken lines.
    let unlimited = cues(&t, CueLayout { max_line_width: Some(14), max_line_count: None });
    assert_eq!(unlimited.len(), 2);
    assert_eq!(unlimited[0].text, "Printing, in\nthe only sense\nwith which we");
    assert!(to_srt(&t, layout).starts_with("1\n00:00:00,000 --> 00:00:02,000\nPrinting, in\nthe only sense\n\n2\n"));
}
