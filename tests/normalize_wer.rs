//! The scoring normaliser matches Whisper's EnglishTextNormalizer on tricky inputs (expected
//! strings produced by openai-whisper 20250625's Python normaliser), and WER counts edits.

use coda_asr::eval::normalize::normalize;
use coda_asr::eval::wer::{align, score, word_errors};

#[test]
fn normaliser_matches_whisper_english_normaliser() {
    let cases = [
        ("He paid $20 million for it, and one hundred and twenty-three dollars.", "he paid $20000000 for it and $123"),
        ("It's twenty one past two and a half hours, Mr. Smith's 1960s colour.", "it is 21 past 2.5 hours mister smith is 1960s color"),
        ("one oh one, double five, triple seven, the 32nd and the twenty first.", "10155777 the 32nd and the 21st"),
        ("Two point five percent of fifty per cent; minus three; 1,000,000 people.", "2.5% of 50% -3 1000000 people"),
        ("Uh, I can't, won't — (laughs) [noise] <unk> Dr. Jones, St. Paul's.", "i can not will not doctor jones saint paul is"),
        ("The nineteenth century; one thousand nine hundred and sixty two; sixties.", "the 19th century 196260s"),
        ("£5 and 50 cents, $0.25, five pounds, it's 3.14.", "£5.50 £0.255 it is 3.14"),
        ("First, second, third, fifth, twelfth, hundredth, millions, ones, one.", "1st 2nd 3rd 5th 12th 100th 1000000s ones one"),
        ("HE HOPED THERE WOULD BE STEW FOR DINNER", "he hoped there would be stew for dinner"),
        ("the Gutenberg, or \"forty-two line Bible\" of about fourteen fifty-five,", "the gutenberg or 42 line bible of about 1455"),
    ];
    for (input, expected) in cases {
        assert_eq!(normalize(input), expected, "input: {input}");
    }
}

#[test]
fn wer_counts_substitutions_insertions_deletions() {
    let c = word_errors(&["a", "b", "c", "d"], &["a", "x", "c", "d", "e"]);
    assert_eq!((c.substitutions, c.insertions, c.deletions), (1, 1, 0));
    let c = word_errors(&["a", "b", "c"], &["c"]);
    assert_eq!((c.substitutions, c.insertions, c.deletions), (0, 0, 2));
    assert!((c.wer() - 200.0 / 3.0).abs() < 1e-9);
    assert_eq!(word_errors(&[], &[]).wer(), 0.0);
}

#[test]
fn alignment_pairs_every_word_in_order() {
    let pairs = align(&["a", "b", "c", "d"], &["a", "x", "c", "d", "e"]);
    assert_eq!(pairs, [(Some(0), Some(0)), (Some(1), Some(1)), (Some(2), Some(2)), (Some(3), Some(3)), (None, Some(4))]);
    assert_eq!(align(&["a", "b"], &["b"]), [(Some(0), None), (Some(1), Some(0))]);
}

#[test]
fn scoring_ignores_case_punctuation_and_spelling_variants() {
    let c = score("MISTER THORNTON'S COLOUR", "Mr. Thornton's color.");
    assert_eq!(c.errors(), 0);
    assert_eq!(c.reference_words, 4);
}
