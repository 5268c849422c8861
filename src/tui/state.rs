//! What the live monitor shows, updated from recogniser events (kept apart from drawing so
//! it can be tested and rendered into any backend).

use crate::stream::{Event, StreamStats};

#[derive(Debug, Clone, Default)]
pub struct App {
    pub finals: Vec<String>,
    pub partial: String,
    pub stats: StreamStats,
    pub model: String,
    /// None = automatic r.
    pub fixed_reduction: Option<f64>,
    pub status: String,
    pub ended: bool,
    pub error: Option<String>,
}

impl App {
    pub fn new(model: &str) -> Self {
        Self { model: model.to_string(), status: "listening".into(), ..Default::default() }
    }

    pub fn apply(&mut self, event: Event) {
        match event {
            Event::Partial { text, .. } => self.partial = text,
            Event::Final { text, .. } => self.finals.push(text),
            Event::Stats(s) => self.stats = s,
            Event::Error { message } => self.error = Some(message),
            Event::Ended => self.ended = true,
        }
    }

    pub fn transcript(&self) -> String {
        self.finals.join(" ")
    }

    /// The next fixed r when cycling with `r`: auto → each choice → auto.
    pub fn next_reduction(&self, choices: &[f64]) -> Option<f64> {
        match self.fixed_reduction {
            None => choices.first().copied(),
            Some(r) => choices.iter().copied().find(|&c| c > r),
        }
    }
}
