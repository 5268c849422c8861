//! The recogniser's audio buffer: 16 kHz samples with their place in stream time.
//!
//! Usually the buffer is one stretch of the stream. When an utterance starts, the last segment
//! of the previous one can be put in front of it as context (Whisper hears the new words in
//! the flow they follow), with the silence between them left out; the buffer then holds one
//! splice, and times inside the buffer map to stream times across it.

const RATE: f64 = 16_000.0;

#[derive(Debug, Default)]
pub struct AudioBuffer {
    samples: Vec<f32>,
    /// Stream time of samples[0], seconds.
    start: f64,
    /// Sample index where the left-out gap was, and the gap's length in seconds.
    splice: Option<(usize, f64)>,
}

impl AudioBuffer {
    pub fn samples(&self) -> &[f32] {
        &self.samples
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn len_s(&self) -> f64 {
        self.samples.len() as f64 / RATE
    }

    /// Stream time of the first sample.
    pub fn start(&self) -> f64 {
        self.start
    }

    /// Stream time just after the last sample.
    pub fn end(&self) -> f64 {
        self.to_stream(self.len_s())
    }

    pub fn extend(&mut self, chunk: &[f32]) {
        self.samples.extend_from_slice(chunk);
    }

    /// Stream time of a time measured from the buffer's start (a hypothesis' timestamp).
    pub fn to_stream(&self, t: f64) -> f64 {
        match self.splice {
            Some((at, gap)) if t * RATE >= at as f64 => self.start + t + gap,
            _ => self.start + t,
        }
    }

    /// Index of the first sample at or after stream time `at` (a time inside the left-out gap
    /// maps to the splice).
    fn index_of(&self, at: f64) -> usize {
        let rel = ((at - self.start) * RATE).max(0.0);
        let i = match self.splice {
            Some((splice, gap)) if rel >= splice as f64 => ((rel - gap * RATE).max(splice as f64)) as usize,
            _ => rel as usize,
        };
        i.min(self.samples.len())
    }

    /// Drop the first `n` samples.
    pub fn drain(&mut self, n: usize) {
        let n = n.min(self.samples.len());
        let new_start = self.to_stream(n as f64 / RATE);
        self.samples.drain(..n);
        self.start = new_start;
        self.splice = match self.splice {
            Some((at, gap)) if at > n => Some((at - n, gap)),
            _ => None,
        };
    }

    /// Drop the audio before stream time `at`; returns how many seconds went.
    pub fn drain_before(&mut self, at: f64) -> f64 {
        let n = self.index_of(at);
        self.drain(n);
        n as f64 / RATE
    }

    /// Keep only the last `n` samples.
    pub fn keep_last(&mut self, n: usize) {
        self.drain(self.samples.len().saturating_sub(n));
    }

    /// The audio between stream times `from` and `to`, and the stream time it starts at.
    pub fn slice(&self, from: f64, to: f64) -> (Vec<f32>, f64) {
        let (a, b) = (self.index_of(from), self.index_of(to));
        let a = a.min(b);
        (self.samples[a..b].to_vec(), self.to_stream(a as f64 / RATE))
    }

    /// Put `context` (audio from stream time `context_start`) in front, leaving out the gap
    /// between them. Context that runs into the buffer's own audio is cut where that starts:
    /// the previous utterance's context is taken as it ends, and the pre-roll that stays may
    /// hold its last moments, which an utterance starting right after would hear twice.
    pub fn prepend(&mut self, context: &[f32], context_start: f64) {
        let context = &context[..context.len().min(((self.start - context_start) * RATE).max(0.0) as usize)];
        if context.is_empty() || self.splice.is_some() {
            return;
        }
        let gap = (self.start - (context_start + context.len() as f64 / RATE)).max(0.0);
        let mut samples = Vec::with_capacity(context.len() + self.samples.len());
        samples.extend_from_slice(context);
        samples.append(&mut self.samples);
        self.samples = samples;
        self.splice = Some((context.len(), gap));
        self.start = context_start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer_at(start: f64, seconds: f64) -> AudioBuffer {
        let mut b = AudioBuffer { start, ..Default::default() };
        b.extend(&vec![0.0; (seconds * RATE) as usize]);
        b
    }

    #[test]
    fn times_map_across_the_left_out_gap() {
        // 2 s of context from 10 s; the new speech starts at 20 s.
        let mut b = buffer_at(20.0, 3.0);
        b.prepend(&vec![0.0; 32_000], 10.0);
        assert_eq!(b.len_s(), 5.0);
        assert_eq!(b.start(), 10.0);
        assert!((b.to_stream(1.0) - 11.0).abs() < 1e-9);
        assert!((b.to_stream(2.5) - 20.5).abs() < 1e-9);
        assert!((b.end() - 23.0).abs() < 1e-9);
        // Cutting inside the context keeps the splice; cutting after it removes it.
        b.drain_before(11.0);
        assert!((b.to_stream(2.0) - 21.0).abs() < 1e-9);
        assert!((b.drain_before(21.5) - 2.5).abs() < 1e-9, "1 s of context and 1.5 s after the gap");
        assert!((b.start() - 21.5).abs() < 1e-9);
        assert!((b.to_stream(1.0) - 22.5).abs() < 1e-9);
    }

    #[test]
    fn context_that_runs_into_the_buffer_is_heard_once() {
        // The buffer's pre-roll starts at 20 s; the context, 10–20.3 s, holds its first 0.3 s.
        let mut b = buffer_at(20.0, 3.0);
        let context: Vec<f32> = (0..164_800).map(|i| i as f32).collect();
        b.prepend(&context, 10.0);
        assert_eq!(b.len_s(), 13.0);
        assert_eq!(b.samples()[159_999], 159_999.0, "the context up to 20 s");
        assert_eq!(b.samples()[160_000], 0.0, "then the buffer's own audio");
        assert!((b.to_stream(10.5) - 20.5).abs() < 1e-9);
        assert!((b.end() - 23.0).abs() < 1e-9);
    }

    #[test]
    fn a_cut_inside_the_gap_lands_on_the_splice() {
        let mut b = buffer_at(20.0, 3.0);
        b.prepend(&vec![0.0; 16_000], 15.0);
        assert!((b.drain_before(18.0) - 1.0).abs() < 1e-9);
        assert_eq!(b.start(), 20.0);
        assert_eq!(b.len_s(), 3.0);
    }

    #[test]
    fn slices_and_clears_keep_stream_time() {
        let mut b = buffer_at(5.0, 4.0);
        let (audio, at) = b.slice(6.0, 7.5);
        assert_eq!((audio.len(), at), (24_000, 6.0));
        b.keep_last(16_000);
        assert_eq!(b.start(), 8.0);
        b.keep_last(0);
        assert_eq!((b.start(), b.len()), (9.0, 0), "emptied, the next sample is at the end");
    }
}
