//! Word error rate by word-level edit distance, with the substitutions, insertions and
//! deletions of one minimal alignment.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub reference_words: usize,
    pub substitutions: usize,
    pub insertions: usize,
    pub deletions: usize,
}

impl ErrorCounts {
    pub fn errors(&self) -> usize {
        self.substitutions + self.insertions + self.deletions
    }

    /// WER in percent; an empty reference scores 0 if the hypothesis is empty too, else 100
    /// per inserted word.
    pub fn wer(&self) -> f64 {
        if self.reference_words == 0 {
            return if self.insertions == 0 { 0.0 } else { 100.0 * self.insertions as f64 };
        }
        100.0 * self.errors() as f64 / self.reference_words as f64
    }

    pub fn add(&mut self, o: &ErrorCounts) {
        self.reference_words += o.reference_words;
        self.substitutions += o.substitutions;
        self.insertions += o.insertions;
        self.deletions += o.deletions;
    }
}

/// Align two word sequences and count the edits.
pub fn word_errors(reference: &[&str], hypothesis: &[&str]) -> ErrorCounts {
    let mut counts = ErrorCounts { reference_words: reference.len(), ..Default::default() };
    for pair in align(reference, hypothesis) {
        match pair {
            (Some(i), Some(j)) if reference[i] != hypothesis[j] => counts.substitutions += 1,
            (Some(_), None) => counts.deletions += 1,
            (None, Some(_)) => counts.insertions += 1,
            _ => {}
        }
    }
    counts
}

/// One minimal alignment of two word sequences, in order: (reference index, hypothesis index)
/// for a match or substitution, `(Some, None)` for a deletion, `(None, Some)` for an insertion.
pub fn align(reference: &[&str], hypothesis: &[&str]) -> Vec<(Option<usize>, Option<usize>)> {
    let (n, m) = (reference.len(), hypothesis.len());
    // cost[i][j]: edits to turn reference[..i] into hypothesis[..j].
    let mut cost = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in cost.iter_mut().enumerate() {
        row[0] = i;
    }
    for j in 0..=m {
        cost[0][j] = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let sub = cost[i - 1][j - 1] + usize::from(reference[i - 1] != hypothesis[j - 1]);
            cost[i][j] = sub.min(cost[i - 1][j] + 1).min(cost[i][j - 1] + 1);
        }
    }
    let mut pairs = Vec::with_capacity(n.max(m));
    let (mut i, mut j) = (n, m);
    while i > 0 || j > 0 {
        if i > 0 && j > 0 && cost[i][j] == cost[i - 1][j - 1] + usize::from(reference[i - 1] != hypothesis[j - 1]) {
            i -= 1;
            j -= 1;
            pairs.push((Some(i), Some(j)));
        } else if i > 0 && cost[i][j] == cost[i - 1][j] + 1 {
            i -= 1;
            pairs.push((Some(i), None));
        } else {
            j -= 1;
            pairs.push((None, Some(j)));
        }
    }
    pairs.reverse();
    pairs
}

/// Normalise both texts and count word errors.
pub fn score(reference: &str, hypothesis: &str) -> ErrorCounts {
    let r = super::normalize::normalize(reference);
    let h = super::normalize::normalize(hypothesis);
    let rw: Vec<&str> = r.split_whitespace().collect();
    let hw: Vec<&str> = h.split_whitespace().collect();
    word_errors(&rw, &hw)
}
