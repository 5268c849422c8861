//! coda-asr: local speech-to-text with Whisper in candle, built so that conditional adapters
//! (CoDA) can replace encoder layers and cut the encoder's cost at run time.

pub mod audio;
pub mod device;
pub mod encoder_bench;
pub mod eval;
pub mod mel;
pub mod model;
pub mod output;
pub mod rng;
pub mod stream;
pub mod train;
pub mod transcribe;
pub mod tui;
pub mod words;
