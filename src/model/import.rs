//! `coda-asr import`: CTranslate2 Whisper `model.bin` → a Hugging Face-layout Whisper directory
//! (`config.json`, `model.safetensors`, `tokenizer.json`) that [`crate::model::WhisperModel`]
//! and any other HF-compatible loader can read.

use super::ct2::{Ct2Dtype, Ct2Model, Ct2Variable};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What `import` wrote, for the caller to report.
#[derive(Debug)]
pub struct ImportSummary {
    pub out_dir: PathBuf,
    pub n_tensors: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub d_model: usize,
    pub vocab_size: usize,
    pub source_sha256: String,
}

/// Import a CTranslate2 Whisper directory (holding `model.bin`, `config.json`, `tokenizer.json`).
pub fn import_ct2_dir(src: &Path, out_dir: &Path) -> Result<ImportSummary> {
    let model_bin = src.join("model.bin");
    ensure!(model_bin.is_file(), "{}: no model.bin in this directory", src.display());
    let tokenizer = src.join("tokenizer.json");
    ensure!(tokenizer.is_file(), "{}: no tokenizer.json in this directory", src.display());
    let ct2_config: Value = match std::fs::read_to_string(src.join("config.json")) {
        Ok(text) => serde_json::from_str(&text).with_context(|| format!("{}/config.json: invalid JSON", src.display()))?,
        Err(_) => json!({}),
    };
    let bytes = std::fs::read(&model_bin).with_context(|| format!("{}: cannot read", model_bin.display()))?;
    let sha = hex(&Sha256::digest(&bytes));
    let model = Ct2Model::parse(&bytes).with_context(|| format!("{}: not a valid CTranslate2 model", model_bin.display()))?;
    drop(bytes);
    std::fs::create_dir_all(out_dir).with_context(|| format!("{}: cannot create", out_dir.display()))?;
    let summary = convert(&model, &ct2_config, out_dir, sha)?;
    std::fs::copy(&tokenizer, out_dir.join("tokenizer.json"))
        .with_context(|| format!("cannot copy tokenizer.json into {}", out_dir.display()))?;
    Ok(summary)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_flag(model: &Ct2Model, name: &str, expected: i64, what: &str) -> Result<()> {
    if let Ok(var) = model.get(name) {
        let value = var.as_int_scalar().with_context(|| format!("variable {name}"))?;
        ensure!(value == expected, "{name} = {value}, expected {expected} ({what}); this model variant is not supported");
    }
    Ok(())
}

fn count_layers(model: &Ct2Model, prefix: &str) -> usize {
    (0..).take_while(|i| model.variables.keys().any(|k| k.starts_with(&format!("{prefix}/layer_{i}/")))).count()
}

/// Build a tensor in the variable's own float dtype (f16 stays f16 on disk).
fn to_tensor(var: &Ct2Variable) -> Result<Tensor> {
    let dev = Device::Cpu;
    Ok(match var.dtype {
        Ct2Dtype::F16 => {
            let v: Vec<half::f16> = var.data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]])).collect();
            Tensor::from_vec(v, var.dims.as_slice(), &dev)?
        }
        Ct2Dtype::Bf16 => {
            let v: Vec<half::bf16> = var.data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]])).collect();
            Tensor::from_vec(v, var.dims.as_slice(), &dev)?
        }
        Ct2Dtype::F32 => Tensor::from_vec(var.to_f32()?, var.dims.as_slice(), &dev)?,
        other => bail!("weights of dtype {other:?} (quantized) cannot be imported; export the model in float16 or float32"),
    })
}

struct Writer<'a> {
    model: &'a Ct2Model,
    tensors: HashMap<String, Tensor>,
}

impl Writer<'_> {
    fn copy(&mut self, ct2: &str, hf: &str) -> Result<()> {
        let t = to_tensor(self.model.get(ct2)?).with_context(|| format!("variable {ct2}"))?;
        self.tensors.insert(hf.to_string(), t);
        Ok(())
    }

    fn linear(&mut self, ct2: &str, hf: &str) -> Result<()> {
        self.copy(&format!("{ct2}/weight"), &format!("{hf}.weight"))?;
        self.copy(&format!("{ct2}/bias"), &format!("{hf}.bias"))
    }

    fn norm(&mut self, ct2: &str, hf: &str) -> Result<()> {
        self.copy(&format!("{ct2}/gamma"), &format!("{hf}.weight"))?;
        self.copy(&format!("{ct2}/beta"), &format!("{hf}.bias"))
    }

    /// Split a fused projection (rows stacked as `names`) into HF's separate projections.
    /// Whisper's key projection has no bias: its slice of the fused bias must be zero.
    fn split(&mut self, ct2: &str, hf_prefix: &str, names: &[&str]) -> Result<()> {
        let w = to_tensor(self.model.get(&format!("{ct2}/weight"))?)?;
        let b = to_tensor(self.model.get(&format!("{ct2}/bias"))?)?;
        let rows = w.dim(0)?;
        ensure!(rows % names.len() == 0, "{ct2}: {rows} rows cannot be split {} ways", names.len());
        let d = rows / names.len();
        for (i, name) in names.iter().enumerate() {
            self.tensors.insert(format!("{hf_prefix}.{name}.weight"), w.narrow(0, i * d, d)?.contiguous()?);
            let bias = b.narrow(0, i * d, d)?.contiguous()?;
            if *name == "k_proj" {
                let max = bias.to_dtype(candle_core::DType::F32)?.abs()?.max(0)?.to_scalar::<f32>()?;
                ensure!(max == 0.0, "{ct2}: key bias is not zero (max |b| = {max}); not a Whisper model");
            } else {
                self.tensors.insert(format!("{hf_prefix}.{name}.bias"), bias);
            }
        }
        Ok(())
    }
}

fn convert(model: &Ct2Model, ct2_config: &Value, out_dir: &Path, source_sha256: String) -> Result<ImportSummary> {
    ensure!(model.spec == "WhisperSpec", "spec is {:?}, expected WhisperSpec", model.spec);
    for side in ["encoder", "decoder"] {
        check_flag(model, &format!("{side}/activation"), 3, "exact GELU")?;
        check_flag(model, &format!("{side}/pre_norm"), 1, "pre-norm layers")?;
        check_flag(model, &format!("{side}/scale_embeddings"), 0, "unscaled embeddings")?;
        check_flag(model, &format!("{side}/alibi"), 0, "no ALiBi")?;
    }
    let encoder_layers = count_layers(model, "encoder");
    let decoder_layers = count_layers(model, "decoder");
    ensure!(encoder_layers > 0 && decoder_layers > 0, "no encoder or decoder layers found");
    let enc_heads = model.int_scalar("encoder/num_heads")? as usize;
    let dec_heads = model.int_scalar("decoder/num_heads")? as usize;
    let emb = model.get("decoder/embeddings/weight")?;
    let (vocab_size, d_model) = (emb.dims[0], emb.dims[1]);
    let conv1 = model.get("encoder/conv1/weight")?;
    ensure!(conv1.dims.len() == 3 && conv1.dims[0] == d_model, "encoder/conv1/weight has dims {:?}", conv1.dims);
    let n_mels = conv1.dims[1];
    let enc_pos = model.get("encoder/position_encodings/encodings")?;
    let dec_pos = model.get("decoder/position_encodings/encodings")?;
    let ffn_dim = model.get("encoder/layer_0/ffn/linear_0/weight")?.dims[0];
    ensure!(d_model % enc_heads == 0 && d_model % dec_heads == 0, "d_model {d_model} not divisible by the head count");

    let mut w = Writer { model, tensors: HashMap::new() };
    w.linear("encoder/conv1", "model.encoder.conv1")?;
    w.linear("encoder/conv2", "model.encoder.conv2")?;
    w.copy("encoder/position_encodings/encodings", "model.encoder.embed_positions.weight")?;
    for i in 0..encoder_layers {
        let (c, h) = (format!("encoder/layer_{i}"), format!("model.encoder.layers.{i}"));
        w.split(&format!("{c}/self_attention/linear_0"), &format!("{h}.self_attn"), &["q_proj", "k_proj", "v_proj"])?;
        w.linear(&format!("{c}/self_attention/linear_1"), &format!("{h}.self_attn.out_proj"))?;
        w.norm(&format!("{c}/self_attention/layer_norm"), &format!("{h}.self_attn_layer_norm"))?;
        w.linear(&format!("{c}/ffn/linear_0"), &format!("{h}.fc1"))?;
        w.linear(&format!("{c}/ffn/linear_1"), &format!("{h}.fc2"))?;
        w.norm(&format!("{c}/ffn/layer_norm"), &format!("{h}.final_layer_norm"))?;
    }
    w.norm("encoder/layer_norm", "model.encoder.layer_norm")?;
    w.copy("decoder/embeddings/weight", "model.decoder.embed_tokens.weight")?;
    w.copy("decoder/position_encodings/encodings", "model.decoder.embed_positions.weight")?;
    for i in 0..decoder_layers {
        let (c, h) = (format!("decoder/layer_{i}"), format!("model.decoder.layers.{i}"));
        w.split(&format!("{c}/self_attention/linear_0"), &format!("{h}.self_attn"), &["q_proj", "k_proj", "v_proj"])?;
        w.linear(&format!("{c}/self_attention/linear_1"), &format!("{h}.self_attn.out_proj"))?;
        w.norm(&format!("{c}/self_attention/layer_norm"), &format!("{h}.self_attn_layer_norm"))?;
        w.linear(&format!("{c}/attention/linear_0"), &format!("{h}.encoder_attn.q_proj"))?;
        w.split(&format!("{c}/attention/linear_1"), &format!("{h}.encoder_attn"), &["k_proj", "v_proj"])?;
        w.linear(&format!("{c}/attention/linear_2"), &format!("{h}.encoder_attn.out_proj"))?;
        w.norm(&format!("{c}/attention/layer_norm"), &format!("{h}.encoder_attn_layer_norm"))?;
        w.linear(&format!("{c}/ffn/linear_0"), &format!("{h}.fc1"))?;
        w.linear(&format!("{c}/ffn/linear_1"), &format!("{h}.fc2"))?;
        w.norm(&format!("{c}/ffn/layer_norm"), &format!("{h}.final_layer_norm"))?;
    }
    w.norm("decoder/layer_norm", "model.decoder.layer_norm")?;
    // The output projection is tied to the token embedding (CT2 stores it as an alias).
    if let Some(target) = model.aliases.get("decoder/projection/weight") {
        ensure!(target == "decoder/embeddings/weight", "decoder/projection/weight aliases {target}, not the embedding");
    }

    let n_tensors = w.tensors.len();
    candle_core::safetensors::save(&w.tensors, out_dir.join("model.safetensors"))
        .with_context(|| format!("cannot write {}/model.safetensors", out_dir.display()))?;

    let config = json!({
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "activation_function": "gelu",
        "d_model": d_model,
        "encoder_layers": encoder_layers,
        "encoder_attention_heads": enc_heads,
        "encoder_ffn_dim": ffn_dim,
        "decoder_layers": decoder_layers,
        "decoder_attention_heads": dec_heads,
        "decoder_ffn_dim": model.get("decoder/layer_0/ffn/linear_0/weight")?.dims[0],
        "num_mel_bins": n_mels,
        "max_source_positions": enc_pos.dims[0],
        "max_target_positions": dec_pos.dims[0],
        "vocab_size": vocab_size,
        "scale_embedding": false,
        "tie_word_embeddings": true,
        "suppress_tokens": ct2_config.get("suppress_ids").cloned().unwrap_or(json!([])),
        "begin_suppress_tokens": ct2_config.get("suppress_ids_begin").cloned().unwrap_or(json!([])),
        "alignment_heads": ct2_config.get("alignment_heads").cloned().unwrap_or(json!([])),
        "lang_ids": ct2_config.get("lang_ids").cloned().unwrap_or(json!([])),
        "torch_dtype": match emb.dtype { Ct2Dtype::F16 => "float16", Ct2Dtype::Bf16 => "bfloat16", _ => "float32" },
        "imported_from": { "format": "ctranslate2", "spec_revision": model.revision, "model_bin_sha256": source_sha256 },
    });
    std::fs::write(out_dir.join("config.json"), serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("cannot write {}/config.json", out_dir.display()))?;
    Ok(ImportSummary { out_dir: out_dir.to_path_buf(), n_tensors, encoder_layers, decoder_layers, d_model, vocab_size, source_sha256 })
}
