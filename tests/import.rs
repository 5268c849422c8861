//! CTranslate2 import: a small synthetic model round-trips through the reader, splits into
//! Hugging Face tensors with the right values, and refuses unsupported variants; the real
//! imported tiny.en has Whisper tiny's shapes.

mod common;
use candle_core::{DType, Device, Tensor};
use coda_asr::model::ct2::{Ct2Dtype, Ct2Model, Ct2Variable};
use coda_asr::model::import::import_ct2_dir;
use std::collections::BTreeMap;
use std::path::Path;

const D: usize = 8;
const VOCAB: usize = 16;

fn f16_var(dims: &[usize], seed: usize) -> Ct2Variable {
    let n: usize = dims.iter().product();
    let data = (0..n).flat_map(|i| half::f16::from_f32((((i * 7 + seed * 13) % 29) as f32 - 14.0) / 16.0).to_le_bytes()).collect();
    Ct2Variable { dims: dims.to_vec(), dtype: Ct2Dtype::F16, data }
}

fn scalar(dtype: Ct2Dtype, v: i64) -> Ct2Variable {
    let data = match dtype {
        Ct2Dtype::I8 => vec![v as i8 as u8],
        Ct2Dtype::I16 => (v as i16).to_le_bytes().to_vec(),
        _ => (v as i32).to_le_bytes().to_vec(),
    };
    Ct2Variable { dims: vec![], dtype, data }
}

/// A one-layer Whisper-shaped CTranslate2 model with zero key biases.
fn synthetic_model() -> Ct2Model {
    let mut v = BTreeMap::new();
    let mut seed = 0;
    let mut put = |v: &mut BTreeMap<String, Ct2Variable>, name: &str, dims: &[usize]| {
        seed += 1;
        v.insert(name.to_string(), f16_var(dims, seed));
    };
    let zero_k_bias = |var: &mut Ct2Variable, d: usize| {
        for b in &mut var.data[d * 2..2 * d * 2] {
            *b = 0;
        }
    };
    put(&mut v, "encoder/conv1/weight", &[D, 4, 3]);
    put(&mut v, "encoder/conv1/bias", &[D]);
    put(&mut v, "encoder/conv2/weight", &[D, D, 3]);
    put(&mut v, "encoder/conv2/bias", &[D]);
    put(&mut v, "encoder/position_encodings/encodings", &[10, D]);
    for side in ["encoder", "decoder"] {
        let l = format!("{side}/layer_0");
        put(&mut v, &format!("{l}/self_attention/linear_0/weight"), &[3 * D, D]);
        put(&mut v, &format!("{l}/self_attention/linear_0/bias"), &[3 * D]);
        zero_k_bias(v.get_mut(&format!("{l}/self_attention/linear_0/bias")).unwrap(), D);
        put(&mut v, &format!("{l}/self_attention/linear_1/weight"), &[D, D]);
        put(&mut v, &format!("{l}/self_attention/linear_1/bias"), &[D]);
        for ln in ["self_attention/layer_norm", "ffn/layer_norm"] {
            put(&mut v, &format!("{l}/{ln}/gamma"), &[D]);
            put(&mut v, &format!("{l}/{ln}/beta"), &[D]);
        }
        put(&mut v, &format!("{l}/ffn/linear_0/weight"), &[4 * D, D]);
        put(&mut v, &format!("{l}/ffn/linear_0/bias"), &[4 * D]);
        put(&mut v, &format!("{l}/ffn/linear_1/weight"), &[D, 4 * D]);
        put(&mut v, &format!("{l}/ffn/linear_1/bias"), &[D]);
        put(&mut v, &format!("{side}/layer_norm/gamma"), &[D]);
        put(&mut v, &format!("{side}/layer_norm/beta"), &[D]);
        v.insert(format!("{side}/num_heads"), scalar(Ct2Dtype::I16, 2));
        v.insert(format!("{side}/activation"), scalar(Ct2Dtype::I8, 3));
        v.insert(format!("{side}/pre_norm"), scalar(Ct2Dtype::I8, 1));
    }
    let l = "decoder/layer_0";
    put(&mut v, &format!("{l}/attention/linear_0/weight"), &[D, D]);
    put(&mut v, &format!("{l}/attention/linear_0/bias"), &[D]);
    put(&mut v, &format!("{l}/attention/linear_1/weight"), &[2 * D, D]);
    put(&mut v, &format!("{l}/attention/linear_1/bias"), &[2 * D]);
    zero_k_bias(v.get_mut(&format!("{l}/attention/linear_1/bias")).unwrap(), 0);
    for b in &mut v.get_mut(&format!("{l}/attention/linear_1/bias")).unwrap().data[..D * 2] {
        *b = 0;
    }
    put(&mut v, &format!("{l}/attention/linear_2/weight"), &[D, D]);
    put(&mut v, &format!("{l}/attention/linear_2/bias"), &[D]);
    put(&mut v, &format!("{l}/attention/layer_norm/gamma"), &[D]);
    put(&mut v, &format!("{l}/attention/layer_norm/beta"), &[D]);
    put(&mut v, "decoder/embeddings/weight", &[VOCAB, D]);
    put(&mut v, "decoder/position_encodings/encodings", &[12, D]);
    v.insert("decoder/scale_embeddings".into(), scalar(Ct2Dtype::I8, 0));
    let aliases = [("decoder/projection/weight".to_string(), "decoder/embeddings/weight".to_string())].into();
    Ct2Model { spec: "WhisperSpec".into(), revision: 3, variables: v, aliases }
}

fn write_model_dir(dir: &Path, model: &Ct2Model) {
    std::fs::write(dir.join("model.bin"), model.to_bytes()).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"suppress_ids": [1, 2], "suppress_ids_begin": [3]}"#).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
}

#[test]
fn ct2_reader_round_trips() {
    let model = synthetic_model();
    let parsed = Ct2Model::parse(&model.to_bytes()).unwrap();
    assert_eq!(parsed.spec, "WhisperSpec");
    assert_eq!(parsed.variables.len(), model.variables.len());
    for (name, var) in &model.variables {
        let p = &parsed.variables[name];
        assert_eq!((&p.dims, p.dtype, &p.data), (&var.dims, var.dtype, &var.data), "{name}");
    }
    assert_eq!(parsed.get("decoder/projection/weight").unwrap().dims, vec![VOCAB, D]);
    assert_eq!(parsed.int_scalar("encoder/num_heads").unwrap(), 2);
}

#[test]
fn import_splits_fused_projections_into_hf_tensors() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let model = synthetic_model();
    write_model_dir(src.path(), &model);
    let summary = import_ct2_dir(src.path(), out.path()).unwrap();
    assert_eq!((summary.encoder_layers, summary.decoder_layers, summary.d_model, summary.vocab_size), (1, 1, D, VOCAB));
    let tensors = candle_core::safetensors::load(out.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let fused = model.variables["encoder/layer_0/self_attention/linear_0/weight"].to_f32().unwrap();
    let fused = Tensor::from_vec(fused, (3 * D, D), &Device::Cpu).unwrap();
    for (i, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
        let t = &tensors[&format!("model.encoder.layers.0.self_attn.{name}.weight")];
        assert_eq!(t.dims(), &[D, D]);
        let diff = (t.to_dtype(DType::F32).unwrap() - fused.narrow(0, i * D, D).unwrap()).unwrap().abs().unwrap();
        assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0, "{name}");
    }
    assert!(!tensors.contains_key("model.encoder.layers.0.self_attn.k_proj.bias"), "Whisper's k_proj has no bias");
    assert!(tensors.contains_key("model.decoder.layers.0.encoder_attn.v_proj.bias"));
    assert_eq!(tensors["model.decoder.embed_tokens.weight"].dims(), &[VOCAB, D]);
    assert_eq!(tensors["model.encoder.conv1.weight"].dims(), &[D, 4, 3]);
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["encoder_attention_heads"], 2);
    assert_eq!(config["num_mel_bins"], 4);
    assert_eq!(config["suppress_tokens"], serde_json::json!([1, 2]));
}

#[test]
fn import_refuses_unsupported_variants_and_broken_files() {
    let cases: Vec<(&str, Box<dyn Fn(&mut Ct2Model)>)> = vec![
        (
            "activation",
            Box::new(|m| {
                m.variables.insert("decoder/activation".into(), scalar(Ct2Dtype::I8, 1));
            }),
        ),
        (
            "pre_norm",
            Box::new(|m| {
                m.variables.insert("encoder/pre_norm".into(), scalar(Ct2Dtype::I8, 0));
            }),
        ),
        (
            "key bias",
            Box::new(|m| {
                let b = m.variables.get_mut("encoder/layer_0/self_attention/linear_0/bias").unwrap();
                b.data[D * 2 + 1] = 0x3c;
            }),
        ),
        ("WhisperSpec", Box::new(|m| m.spec = "TransformerSpec".into())),
    ];
    for (what, mutate) in cases {
        let src = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut model = synthetic_model();
        mutate(&mut model);
        write_model_dir(src.path(), &model);
        let err = format!("{:#}", import_ct2_dir(src.path(), out.path()).unwrap_err());
        assert!(err.contains(what), "{what}: {err}");
    }
    let src = tempfile::tempdir().unwrap();
    write_model_dir(src.path(), &synthetic_model());
    let bytes = std::fs::read(src.path().join("model.bin")).unwrap();
    std::fs::write(src.path().join("model.bin"), &bytes[..bytes.len() / 2]).unwrap();
    let err = format!("{:#}", import_ct2_dir(src.path(), tempfile::tempdir().unwrap().path()).unwrap_err());
    assert!(err.contains("model.bin") && err.contains("truncated"), "{err}");
}

#[test]
fn imported_tiny_en_has_whisper_tiny_shapes() {
    let model = common::tiny_en();
    let c = &model.config;
    assert_eq!((c.d_model, c.encoder_layers, c.decoder_layers), (384, 4, 4));
    assert_eq!((c.encoder_attention_heads, c.decoder_attention_heads), (6, 6));
    assert_eq!(c.vocab_size, 51864);
    assert!(!c.is_multilingual());
    let tok = &model.tokenizer;
    assert_eq!((tok.eot, tok.sot, tok.no_timestamps, tok.timestamp_begin), (50256, 50257, 50362, 50363));
}
