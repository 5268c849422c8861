//! Silence caching: a window is encoded as its audio block plus padding from the table, the
//! table interpolates the dense encoding of padding, and transcripts match whole windows.

mod common;
use candle_core::{Device, Tensor};
use coda_asr::eval::{read_manifest, run};
use coda_asr::mel::{MelFrontend, CHUNK_FRAMES, CHUNK_SAMPLES, HOP_LENGTH};
use coda_asr::model::silence::{SilenceCache, GRID_STEP};
use coda_asr::model::CrossKeyValues;
use coda_asr::transcribe::{TranscribeOptions, Transcriber};

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn padding_encodings_interpolate_between_grid_levels_and_round_trip_through_a_file() {
    let model = common::tiny_en();
    let encoder = &model.encoder;
    let cache = SilenceCache::default();
    let level = -0.7f32; // between the grid points −0.75 and −0.625
    let interpolated = cache.encoding(encoder, level).unwrap();
    assert_eq!(cache.len(), 2, "two grid points around the level");
    let mel = Tensor::full(level, (1, 80, CHUNK_FRAMES), &Device::Cpu).unwrap();
    let (exact, _) = encoder.forward_dense(&mel).unwrap();
    let rms = |t: &Tensor| t.sqr().unwrap().mean_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
    let error = rms(&(&interpolated - &exact).unwrap());
    assert!(error < 0.03 * rms(&exact), "interpolation error {error} (RMS) against RMS {}", rms(&exact));
    // A level on the grid is that grid point exactly.
    let on_grid = cache.encoding(encoder, -8.0 * GRID_STEP).unwrap();
    let mel = Tensor::full(-8.0 * GRID_STEP, (1, 80, CHUNK_FRAMES), &Device::Cpu).unwrap();
    assert_eq!(max_abs(&on_grid, &encoder.forward_dense(&mel).unwrap().0), 0.0);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silence.safetensors");
    cache.save(&path).unwrap();
    let loaded = SilenceCache::load(&path, 1500, 384, &Device::Cpu, candle_core::DType::F32).unwrap();
    assert_eq!(loaded.len(), 3);
    // Stored as float16.
    assert!(max_abs(&loaded.encoding(encoder, level).unwrap(), &interpolated) < 1e-2);
    assert!(SilenceCache::load(&path, 1500, 512, &Device::Cpu, candle_core::DType::F32).is_err(), "a table for another width is refused");
}

#[test]
fn a_window_encodes_only_its_audio_block_and_keeps_the_dense_padding() {
    let model = common::tiny_en();
    let t = Transcriber::new(model);
    let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let audio = coda_asr::audio::load_mono_16k(&wav).unwrap();
    let mel = MelFrontend::new(80).compute(&audio, CHUNK_SAMPLES);
    let audio_frames = audio.len() / HOP_LENGTH;
    let cached = TranscribeOptions::default();
    let full = TranscribeOptions { silence_cache: false, ..Default::default() };
    let (a, stats) = t.encode_segment(&mel, 0, audio_frames, &cached).unwrap();
    let (b, full_stats) = t.encode_segment(&mel, 0, audio_frames, &full).unwrap();
    assert_eq!(a.dims(), b.dims());
    assert_eq!(stats.frames, 1500);
    let block = coda_asr::transcribe::encoded_block_frames(audio_frames) / 2;
    assert_eq!(stats.encoded_frames, block);
    assert_eq!(stats.heavy_frames, vec![block; 4]);
    assert_eq!(full_stats.encoded_frames, 1500);
    assert!(stats.flops < 0.4 * stats.dense_flops && stats.dense_flops == full_stats.dense_flops);
    // After the block, every frame is the table's padding encoding at the same position.
    let padding = model.encoder.silence.encoding(&model.encoder, mel.silence).unwrap();
    assert_eq!(max_abs(&a.narrow(1, block, 1500 - block).unwrap(), &padding.narrow(1, block, 1500 - block).unwrap()), 0.0);
    // The audio block itself is close to the whole window's (it no longer attends to padding).
    let rms = |t: &Tensor| t.sqr().unwrap().mean_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
    let speech = |x: &Tensor| x.narrow(1, 0, audio_frames / 2).unwrap();
    let drift = rms(&(speech(&a) - speech(&b)).unwrap()) / rms(&speech(&b));
    assert!(drift < 0.3, "audio frames moved by {drift:.3} of their RMS");
}

#[test]
fn transcripts_with_silence_caching_match_whole_windows() {
    let manifest = common::speech_dir().join("dev.tsv");
    let entries: Vec<_> = read_manifest(&manifest).unwrap().into_iter().step_by(9).collect();
    let t = Transcriber::new(common::tiny_en());
    let full = run(&t, &entries, &TranscribeOptions { silence_cache: false, ..Default::default() }, "full", "dev", &mut |_, _| {}).unwrap();
    let cached = run(&t, &entries, &TranscribeOptions::default(), "cached", "dev", &mut |_, _| {}).unwrap();
    // Measured on all of dev.tsv: 10.06 % with the cache, 10.20 % without.
    assert!(cached.summary.wer <= full.summary.wer + 1.0, "WER {:.2} cached vs {:.2} whole windows", cached.summary.wer, full.summary.wer);
    assert!(cached.summary.encoder_gflop < 0.5 * full.summary.encoder_gflop);
}

#[test]
fn padding_cross_attention_keys_are_blended_from_the_table_exactly() {
    // The decoder projects only the audio frames of a silence-cached window; the padding's
    // cross-attention keys and values are blended from the grid points' own. The projection is
    // affine and the blend weights sum to one, so both ways agree to float rounding.
    let model = common::tiny_en();
    let t = Transcriber::new(model);
    let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let audio = coda_asr::audio::load_mono_16k(&wav).unwrap();
    let mel = t.log_mel(&audio);
    let (features, stats) = t.encode_segment(&mel, 0, audio.len() / HOP_LENGTH, &TranscribeOptions::default()).unwrap();
    assert!(stats.encoded_frames < stats.frames);
    let points: Vec<_> = coda_asr::model::silence::blend(mel.silence)
        .into_iter()
        .map(|(i, w)| (model.decoder.cross(&model.encoder.silence.grid_point(&model.encoder, i).unwrap()).unwrap(), w))
        .collect();
    assert_eq!(points.len(), 2, "the clip's level {} lies between grid points", mel.silence);
    let padding = CrossKeyValues::weighted_sum(&points).unwrap();
    let blended = model.decoder.cross_padded(&features, stats.encoded_frames, &padding).unwrap();
    let projected = model.decoder.cross(&features).unwrap();
    for layer in 0..4 {
        let (k, v) = blended.layer(layer);
        let (k0, v0) = projected.layer(layer);
        assert_eq!(k.dims(), k0.dims());
        assert!(max_abs(k, k0) < 1e-3 && max_abs(v, v0) < 1e-3, "layer {layer}: {} {}", max_abs(k, k0), max_abs(v, v0));
    }
}
