//! Time the encoder and one decoder step on a real window (development aid).
use coda_asr::model::{resolve_model_dir, EncodeOptions, WhisperModel};
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let model = WhisperModel::load(&resolve_model_dir("tiny.en")?, &candle_core::Device::Cpu)?;
    let mel = candle_core::Tensor::randn(0f32, 1.0, (1, 80, 3000), &candle_core::Device::Cpu)?;
    for r in [1.0] {
        for i in 0..3 {
            let t = Instant::now();
            let (_, s) = model.encoder.forward(&mel, &EncodeOptions { reduction: r })?;
            println!("r={r} run {i}: {:.1} ms ({:.1} GFLOP)", t.elapsed().as_secs_f64() * 1e3, s.flops / 1e9);
        }
    }
    Ok(())
}
