use candle_core::{Device, Tensor, Module};
use std::time::Instant;
fn t<F: FnMut() -> candle_core::Result<Tensor>>(name: &str, mut f: F) {
    f().unwrap();
    let s = Instant::now();
    for _ in 0..5 { f().unwrap(); }
    println!("{name}: {:.1} ms", s.elapsed().as_secs_f64() * 1e3 / 5.0);
}
fn main() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, 1500, 384), &dev).unwrap();
    let w = Tensor::randn(0f32, 1.0, (1152, 384), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, 1152, &dev).unwrap();
    let lin = candle_nn::Linear::new(w.clone(), Some(b));
    t("linear qkv", || lin.forward(&x));
    t("matmul 2d qkv", || x.squeeze(0)?.matmul(&w.t()?));
    let wt = w.t().unwrap().contiguous().unwrap();
    t("matmul 2d qkv pre-t", || x.squeeze(0)?.matmul(&wt));
    let h = Tensor::randn(0f32, 1.0, (1, 1500, 1536), &dev).unwrap();
    t("gelu_erf", || h.gelu_erf());
    t("gelu", || h.gelu());
    let q = Tensor::randn(0f32, 1.0, (1, 6, 1500, 64), &dev).unwrap();
    t("qk", || q.matmul(&q.t()?));
    let s = q.matmul(&q.t().unwrap()).unwrap();
    t("softmax", || candle_nn::ops::softmax_last_dim(&s));
    t("av", || s.matmul(&q));
    let mel = Tensor::randn(0f32, 1.0, (1, 80, 3000), &dev).unwrap();
    let c1 = candle_nn::conv1d(80, 384, 3, candle_nn::Conv1dConfig{padding:1,..Default::default()}, candle_nn::VarBuilder::zeros(candle_core::DType::F32, &dev)).unwrap();
    t("conv1", || c1.forward(&mel));
    let y = Tensor::randn(0f32, 1.0, (1, 384, 3000), &dev).unwrap();
    let c2 = candle_nn::conv1d(384, 384, 3, candle_nn::Conv1dConfig{padding:1,stride:2,..Default::default()}, candle_nn::VarBuilder::zeros(candle_core::DType::F32, &dev)).unwrap();
    t("conv2", || c2.forward(&y));
    let ln = candle_nn::layer_norm(384, 1e-5, candle_nn::VarBuilder::zeros(candle_core::DType::F32, &dev)).unwrap();
    t("layernorm", || ln.forward(&x));
    t("split heads", || x.reshape((1,1500,6,64))?.transpose(1,2)?.contiguous());
    let emb = Tensor::randn(0f32, 1.0, (51864, 384), &dev).unwrap();
    let hv = Tensor::randn(0f32, 1.0, (1, 384), &dev).unwrap();
    t("logits hv @ emb.t", || hv.matmul(&emb.t()?));
    t("logits emb @ hv.t", || emb.matmul(&hv.t()?));
    let small = Tensor::randn(0f32, 1.0, (1, 1, 384), &dev).unwrap();
    t("linear 1 tok", || lin.forward(&small));
    println!("threads {}", candle_core::utils::get_num_threads());
}
