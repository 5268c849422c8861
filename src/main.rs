use anyhow::Result;
use coda_asr::model::{import::import_ct2_dir, resolve_model_dir, WhisperModel};
use coda_asr::transcribe::{TranscribeOptions, Transcriber};
fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args[1] == "import" {
        let s = import_ct2_dir(args[2].as_ref(), args[3].as_ref())?;
        println!("{s:?}");
        return Ok(());
    }
    let dir = resolve_model_dir("tiny.en")?;
    let model = WhisperModel::load(&dir, &candle_core::Device::Cpu)?;
    let t = Transcriber::new(&model);
    for f in &args[1..] {
        let audio = coda_asr::audio::load_mono_16k(f.as_ref())?;
        let tr = t.transcribe(&audio, &TranscribeOptions::default(), &mut |_| {})?;
        println!("{}\n{:?}", tr.text, tr.timings);
    }
    Ok(())
}
