//! Live transcription: capture → resample → a streaming recogniser over a sliding buffer,
//! committing words with LocalAgreement-2, gated by voice activity, with the CoDA reduction
//! factor picked per step to stay inside a real-time budget.

pub mod bench;
pub mod buffer;
pub mod controller;
pub mod policy;
pub mod recognizer;
pub mod source;
pub mod vad;

pub use recognizer::{run_recognizer, Control, Event, StreamOptions, StreamStats};
