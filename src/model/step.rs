//! Single-token decoding on the CPU without per-op tensor overhead: the decoder's weights in
//! their checkpoint precision, a key/value cache preallocated for the whole context, and
//! scratch buffers reused for every token (nothing in the per-token loop allocates).
//!
//! The prompt is still run through the batched candle [`super::Decoder`]; its caches are then
//! handed over with [`StepState::from_exported`].

use super::config::WhisperConfig;
use super::decoder::ExportedState;
use super::gemv::{add_weighted_rows, dot_rows_batch_f32, dot_rows_f32, BatchOut, Matrix, QuantizedRows};
use super::kernels::{gelu_slice, largest, softmax_row};
use anyhow::{ensure, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use std::path::Path;
use std::sync::Arc;

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl Norm {
    fn apply(&self, x: &[f32], out: &mut [f32]) {
        let n = x.len() as f32;
        let mean = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / (var + 1e-5).sqrt();
        for i in 0..x.len() {
            out[i] = (x[i] - mean) * inv * self.gamma[i] + self.beta[i];
        }
    }
}

struct Proj {
    w: Matrix,
    b: Vec<f32>,
}

impl Proj {
    fn apply(&self, x: &[f32], out: &mut [f32]) {
        self.w.gemv(x, Some(&self.b), out);
    }

    /// [`Proj::apply`] to `n` inputs laid one after another in `x`, outputs likewise in `out`.
    fn apply_batch(&self, x: &[f32], out: &mut [f32], n: usize) {
        self.w.gemv_batch_rows(0, x, Some(&self.b), BatchOut::new(out, n));
    }
}

struct StepLayer {
    self_ln: Norm,
    self_qkv: Proj,
    self_out: Proj,
    cross_ln: Norm,
    cross_q: Proj,
    cross_out: Proj,
    mlp_ln: Norm,
    fc1: Proj,
    fc2: Proj,
}

pub struct StepDecoder {
    layers: Vec<StepLayer>,
    embedding: Matrix,
    /// The text tokens' rows of the vocabulary projection at 8 bits, once
    /// [`StepDecoder::quantize_text_rows`] made them: `step` projects those rows from them and
    /// [`StepDecoder::refine`] makes exact the ones that matter.
    text_rows: Option<QuantizedRows>,
    positions: Vec<f32>,
    ln: Norm,
    d: usize,
    heads: usize,
    ffn: usize,
    pub max_positions: usize,
    pub vocab_size: usize,
}

struct Loader {
    st: MmapedSafetensors,
}

impl Loader {
    fn tensor(&self, name: &str) -> Result<Tensor> {
        self.st.load(name, &Device::Cpu).with_context(|| format!("weight {name}"))
    }
    fn vec(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.tensor(name)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }
    fn norm(&self, prefix: &str) -> Result<Norm> {
        Ok(Norm { gamma: self.vec(&format!("{prefix}.weight"))?, beta: self.vec(&format!("{prefix}.bias"))? })
    }
    fn proj(&self, prefix: &str) -> Result<Proj> {
        Ok(Proj { w: Matrix::from_tensor(&self.tensor(&format!("{prefix}.weight"))?)?, b: self.vec(&format!("{prefix}.bias"))? })
    }
    /// q, k, v stacked into one projection; k has no bias.
    fn fused(&self, prefix: &str, names: &[&str]) -> Result<Proj> {
        let mut ws = Vec::new();
        let mut b = Vec::new();
        for name in names {
            let w = Matrix::from_tensor(&self.tensor(&format!("{prefix}.{name}.weight"))?)?;
            if *name == "k_proj" {
                b.extend(std::iter::repeat_n(0.0, w.rows));
            } else {
                b.extend(self.vec(&format!("{prefix}.{name}.bias"))?);
            }
            ws.push(w);
        }
        Ok(Proj { w: Matrix::stack(&ws), b })
    }
}

impl StepDecoder {
    pub fn load(weights: &Path, cfg: &WhisperConfig) -> Result<Self> {
        // SAFETY: the file is memory-mapped read-only and not modified while loaded.
        let st = unsafe { MmapedSafetensors::new(weights) }.with_context(|| format!("{}: cannot map", weights.display()))?;
        let l = Loader { st };
        let p = "model.decoder";
        let layers = (0..cfg.decoder_layers)
            .map(|i| {
                let q = format!("{p}.layers.{i}");
                Ok(StepLayer {
                    self_ln: l.norm(&format!("{q}.self_attn_layer_norm"))?,
                    self_qkv: l.fused(&format!("{q}.self_attn"), &["q_proj", "k_proj", "v_proj"])?,
                    self_out: l.proj(&format!("{q}.self_attn.out_proj"))?,
                    cross_ln: l.norm(&format!("{q}.encoder_attn_layer_norm"))?,
                    cross_q: l.proj(&format!("{q}.encoder_attn.q_proj"))?,
                    cross_out: l.proj(&format!("{q}.encoder_attn.out_proj"))?,
                    mlp_ln: l.norm(&format!("{q}.final_layer_norm"))?,
                    fc1: l.proj(&format!("{q}.fc1"))?,
                    fc2: l.proj(&format!("{q}.fc2"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embedding = Matrix::from_tensor(&l.tensor(&format!("{p}.embed_tokens.weight"))?)?;
        ensure!(embedding.rows == cfg.vocab_size && embedding.cols == cfg.d_model, "embedding shape");
        let positions = l.tensor(&format!("{p}.embed_positions.weight"))?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(Self {
            layers,
            embedding,
            text_rows: None,
            positions,
            ln: l.norm(&format!("{p}.layer_norm"))?,
            d: cfg.d_model,
            heads: cfg.decoder_attention_heads,
            ffn: cfg.decoder_ffn(),
            max_positions: cfg.max_target_positions,
            vocab_size: cfg.vocab_size,
        })
    }

    /// Run one token at the state's position; fills `logits` (vocabulary size). With quantised
    /// text rows, the text tokens' logits are approximate until [`StepDecoder::refine`]; the
    /// other tokens' (end-of-text, control tokens, timestamps) are always exact.
    pub fn step(&self, token: u32, s: &mut StepState, logits: &mut [f32]) -> Result<()> {
        self.advance(token, s)?;
        let h = &s.scratch.h;
        match &self.text_rows {
            Some(q) => {
                let (text, rest) = logits.split_at_mut(q.rows);
                q.gemv(h, text);
                self.embedding.gemv_rows(q.rows, h, None, rest);
            }
            None => self.embedding.gemv(h, None, logits),
        }
        Ok(())
    }

    /// Project the first `rows` tokens of the vocabulary (the text tokens: every token before
    /// end-of-text) from 8-bit weights, a vocabulary pass reading half the bytes.
    pub fn quantize_text_rows(&mut self, rows: usize) {
        self.text_rows = Some(QuantizedRows::from_matrix(&self.embedding, rows.min(self.vocab_size)));
    }

    /// Whether [`StepDecoder::step`]'s text logits need [`StepDecoder::refine`] to be exact.
    pub fn is_approximate(&self) -> bool {
        self.text_rows.is_some()
    }

    /// After [`StepDecoder::step`] and the caller's masks (−∞ for tokens it rules out): every
    /// allowed text token whose approximate logit could be the largest allowed text logit,
    /// given the quantisation's error bound, gets its exact float16 logit. The largest text
    /// logit and its token are then exactly what the full float16 projection gives (so greedy
    /// decoding and the timestamp rule decide as it would); the others stay within the bound,
    /// so only log-sum-exps over them (average log-probability, no-speech probability) move.
    pub fn refine(&self, s: &StepState, logits: &mut [f32]) {
        self.refine_top(s, logits, 1);
    }

    /// [`StepDecoder::refine`] for the `top` largest allowed text logits (beam search ranks
    /// that many candidates per beam): every token that could be among them is made exact.
    pub fn refine_top(&self, s: &StepState, logits: &mut [f32], top: usize) {
        let Some(q) = &self.text_rows else { return };
        let h = &s.scratch.h;
        let l1: f32 = h.iter().map(|v| v.abs()).sum();
        let text = &mut logits[..q.rows];
        // No token whose upper bound is below the top-th largest lower bound can be among the
        // top largest.
        let top = top.max(1);
        let lower_bounds = text.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, v)| (v - q.error_bound(i, l1), i as u32));
        let floor = largest(lower_bounds, top).get(top - 1).map_or(f32::NEG_INFINITY, |&(v, _)| v);
        for (i, v) in text.iter_mut().enumerate() {
            if v.is_finite() && *v + q.error_bound(i, l1) >= floor {
                *v = self.embedding.dot_row(i, h);
            }
        }
    }

    /// Run one token at the state's position without the vocabulary projection (a prompt
    /// token whose prediction is not needed: that projection is most of a step's memory
    /// traffic). Leaves the final-normed hidden state in the scratch space.
    pub fn advance(&self, token: u32, s: &mut StepState) -> Result<()> {
        let (d, heads) = (self.d, self.heads);
        let dh = d / heads;
        let pos = s.position;
        ensure!(pos < self.max_positions, "decoder context of {} tokens exceeded", self.max_positions);
        ensure!((token as usize) < self.vocab_size, "token {token} outside the vocabulary");
        let sc = &mut s.scratch;
        // Embedding row + position.
        self.embedding.row_into(token as usize, &mut sc.x);
        for (x, p) in sc.x.iter_mut().zip(&self.positions[pos * d..(pos + 1) * d]) {
            *x += p;
        }
        let scale = 1.0 / (dh as f32).sqrt();
        for (li, layer) in self.layers.iter().enumerate() {
            // Self-attention over positions 0..=pos.
            layer.self_ln.apply(&sc.x, &mut sc.h);
            layer.self_qkv.apply(&sc.h, &mut sc.qkv);
            let (k_cache, v_cache) = (&mut s.self_k[li], &mut s.self_v[li]);
            for h in 0..heads {
                let at = (h * self.max_positions + pos) * dh;
                k_cache[at..at + dh].copy_from_slice(&sc.qkv[d + h * dh..d + (h + 1) * dh]);
                v_cache[at..at + dh].copy_from_slice(&sc.qkv[2 * d + h * dh..2 * d + (h + 1) * dh]);
            }
            attend(&sc.qkv[..d], k_cache, v_cache, self.max_positions, pos + 1, dh, scale, &mut sc.scores, &mut sc.attn);
            layer.self_out.apply(&sc.attn, &mut sc.h);
            add_into(&mut sc.x, &sc.h);
            // Cross-attention over the window's audio frames.
            layer.cross_ln.apply(&sc.x, &mut sc.h);
            layer.cross_q.apply(&sc.h, &mut sc.q);
            attend(&sc.q, &s.cross.k[li], &s.cross.v[li], s.cross.frames, s.cross.frames, dh, scale, &mut sc.scores, &mut sc.attn);
            layer.cross_out.apply(&sc.attn, &mut sc.h);
            add_into(&mut sc.x, &sc.h);
            // MLP.
            layer.mlp_ln.apply(&sc.x, &mut sc.h);
            layer.fc1.apply(&sc.h, &mut sc.ffn);
            gelu_slice(&mut sc.ffn);
            layer.fc2.apply(&sc.ffn, &mut sc.h);
            add_into(&mut sc.x, &sc.h);
        }
        self.ln.apply(&sc.x, &mut sc.h);
        s.position += 1;
        Ok(())
    }

    /// Scratch space for [`StepDecoder::step_batch`] of up to `capacity` sequences decoding
    /// the window `state` belongs to.
    pub fn batch_scratch(&self, capacity: usize, state: &StepState) -> BatchScratch {
        let (d, n) = (self.d, capacity.max(1));
        BatchScratch {
            capacity: n,
            x: vec![0.0; n * d],
            h: vec![0.0; n * d],
            q: vec![0.0; n * d],
            qkv: vec![0.0; n * 3 * d],
            attn: vec![0.0; n * d],
            ffn: vec![0.0; n * self.ffn],
            head_queries: vec![0.0; n * d],
            scores: vec![0.0; self.heads * n * state.cross.frames.max(self.max_positions)],
        }
    }

    /// [`StepDecoder::step`] for several sequences of one window at once (the beams of a beam
    /// search): each weight matrix, and each head's cross-attention keys, is read from memory
    /// once for all of them instead of once per sequence. Sequence b's token is `tokens[b]`,
    /// its logits `logits[b·vocab..(b + 1)·vocab]`; every state and logit comes out bit for
    /// bit as [`StepDecoder::step`] leaves it.
    pub fn step_batch(&self, tokens: &[u32], states: &mut [&mut StepState], sc: &mut BatchScratch, logits: &mut [f32]) -> Result<()> {
        let n = tokens.len();
        let (d, heads, ffn) = (self.d, self.heads, self.ffn);
        let dh = d / heads;
        ensure!(n > 0 && states.len() == n && n <= sc.capacity, "{n} tokens for {} states, scratch for {}", states.len(), sc.capacity);
        ensure!(logits.len() == n * self.vocab_size, "logits for {n} sequences need {} floats", n * self.vocab_size);
        let cross = states[0].cross.clone();
        ensure!(states.iter().all(|s| Arc::ptr_eq(&s.cross, &cross)), "sequences stepped together must decode one window");
        ensure!(sc.scores.len() >= heads * n * cross.frames, "batch scratch made for a window of fewer frames");
        for (b, (&token, s)) in tokens.iter().zip(states.iter()).enumerate() {
            let pos = s.position;
            ensure!(pos < self.max_positions, "decoder context of {} tokens exceeded", self.max_positions);
            ensure!((token as usize) < self.vocab_size, "token {token} outside the vocabulary");
            let x = &mut sc.x[b * d..(b + 1) * d];
            self.embedding.row_into(token as usize, x);
            add_into(x, &self.positions[pos * d..(pos + 1) * d]);
        }
        let scale = 1.0 / (dh as f32).sqrt();
        let per_sequence = |norm: &Norm, from: &[f32], to: &mut [f32]| {
            from.chunks(d).zip(to.chunks_mut(d)).take(n).for_each(|(x, h)| norm.apply(x, h));
        };
        for (li, layer) in self.layers.iter().enumerate() {
            // Self-attention: each sequence over its own cache.
            per_sequence(&layer.self_ln, &sc.x, &mut sc.h);
            layer.self_qkv.apply_batch(&sc.h[..n * d], &mut sc.qkv[..n * 3 * d], n);
            for (b, s) in states.iter_mut().enumerate() {
                let qkv = &sc.qkv[b * 3 * d..(b + 1) * 3 * d];
                let pos = s.position;
                let (k_cache, v_cache) = (&mut s.self_k[li], &mut s.self_v[li]);
                for h in 0..heads {
                    let at = (h * self.max_positions + pos) * dh;
                    k_cache[at..at + dh].copy_from_slice(&qkv[d + h * dh..d + (h + 1) * dh]);
                    v_cache[at..at + dh].copy_from_slice(&qkv[2 * d + h * dh..2 * d + (h + 1) * dh]);
                }
                let attn = &mut sc.attn[b * d..(b + 1) * d];
                attend(&qkv[..d], k_cache, v_cache, self.max_positions, pos + 1, dh, scale, &mut sc.scores, attn);
            }
            layer.self_out.apply_batch(&sc.attn[..n * d], &mut sc.h[..n * d], n);
            add_into(&mut sc.x[..n * d], &sc.h[..n * d]);
            // Cross-attention: every sequence over the window's shared keys and values.
            per_sequence(&layer.cross_ln, &sc.x, &mut sc.h);
            layer.cross_q.apply_batch(&sc.h[..n * d], &mut sc.q[..n * d], n);
            attend_batch(
                &sc.q[..n * d],
                &cross.k[li],
                &cross.v[li],
                cross.frames,
                dh,
                scale,
                n,
                &mut sc.head_queries[..n * d],
                &mut sc.scores,
                &mut sc.attn[..n * d],
            );
            layer.cross_out.apply_batch(&sc.attn[..n * d], &mut sc.h[..n * d], n);
            add_into(&mut sc.x[..n * d], &sc.h[..n * d]);
            // MLP.
            per_sequence(&layer.mlp_ln, &sc.x, &mut sc.h);
            layer.fc1.apply_batch(&sc.h[..n * d], &mut sc.ffn[..n * ffn], n);
            gelu_slice(&mut sc.ffn[..n * ffn]);
            layer.fc2.apply_batch(&sc.ffn[..n * ffn], &mut sc.h[..n * d], n);
            add_into(&mut sc.x[..n * d], &sc.h[..n * d]);
        }
        per_sequence(&self.ln, &sc.x, &mut sc.h);
        for (b, s) in states.iter_mut().enumerate() {
            // `refine` reads a sequence's final hidden state from its own scratch.
            s.scratch.h.copy_from_slice(&sc.h[b * d..(b + 1) * d]);
            s.position += 1;
        }
        let out = BatchOut::new(logits, n);
        let h = &sc.h[..n * d];
        match &self.text_rows {
            Some(q) => {
                q.gemv_batch(h, out.rows(0, q.rows));
                self.embedding.gemv_batch_rows(q.rows, h, None, out.rows(q.rows, self.vocab_size - q.rows));
            }
            None => self.embedding.gemv_batch_rows(0, h, None, out),
        }
        Ok(())
    }

    fn scratch(&self, frames: usize) -> Scratch {
        let d = self.d;
        Scratch {
            x: vec![0.0; d],
            h: vec![0.0; d],
            q: vec![0.0; d],
            qkv: vec![0.0; 3 * d],
            attn: vec![0.0; d],
            ffn: vec![0.0; self.ffn],
            scores: vec![0.0; self.heads * frames.max(self.max_positions)],
        }
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Multi-head attention of one query over `len` cached positions laid out
/// [heads][stride][dh]; heads run in parallel. `scores` holds at least heads × len floats.
#[allow(clippy::too_many_arguments)]
fn attend(q: &[f32], k: &[f32], v: &[f32], stride: usize, len: usize, dh: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    let one_head = |h: usize, out_h: &mut [f32], scores: &mut [f32]| {
        let qh = &q[h * dh..(h + 1) * dh];
        let base = h * stride * dh;
        let rows = base..base + scores.len() * dh;
        dot_rows_f32(&k[rows.clone()], dh, qh, scores);
        scores.iter_mut().for_each(|s| *s *= scale);
        softmax_row(scores);
        add_weighted_rows(scores, &v[rows], dh, out_h);
    };
    let heads = out.len() / dh;
    let scores = &mut scores[..heads * len];
    if len >= 256 {
        out.par_chunks_mut(dh).zip(scores.par_chunks_mut(len)).enumerate().for_each(|(h, (o, s))| one_head(h, o, s));
    } else {
        out.chunks_mut(dh).zip(scores.chunks_mut(len)).enumerate().for_each(|(h, (o, s))| one_head(h, o, s));
    }
}

/// [`attend`] for `n` queries (q: n × heads·dh) over the same keys and values (stride =
/// `len`): head by head, each head's keys read once for all the queries. `head_queries` holds
/// n × heads·dh floats, `scores` at least heads × n × len; out is n × heads·dh.
#[allow(clippy::too_many_arguments)]
fn attend_batch(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    len: usize,
    dh: usize,
    scale: f32,
    n: usize,
    head_queries: &mut [f32],
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = q.len() / n;
    let heads = d / dh;
    // Each head's n queries side by side: [heads][n][dh].
    for (b, qb) in q.chunks(d).enumerate() {
        for (h, qh) in qb.chunks(dh).enumerate() {
            head_queries[(h * n + b) * dh..(h * n + b + 1) * dh].copy_from_slice(qh);
        }
    }
    let out = BatchOut::new(out, n);
    let one_head = |h: usize, queries: &[f32], scores: &mut [f32]| {
        let rows = h * len * dh..(h + 1) * len * dh;
        dot_rows_batch_f32(&k[rows.clone()], dh, queries, BatchOut::new(scores, n));
        let mut out_h = out.rows(h * dh, dh);
        for (b, s) in scores.chunks_mut(len).enumerate() {
            s.iter_mut().for_each(|s| *s *= scale);
            softmax_row(s);
            add_weighted_rows(s, &v[rows.clone()], dh, out_h.output(b));
        }
    };
    let scores = &mut scores[..heads * n * len];
    if len >= 256 {
        head_queries.par_chunks(n * dh).zip(scores.par_chunks_mut(n * len)).enumerate().for_each(|(h, (qs, s))| one_head(h, qs, s));
    } else {
        head_queries.chunks(n * dh).zip(scores.chunks_mut(n * len)).enumerate().for_each(|(h, (qs, s))| one_head(h, qs, s));
    }
}

#[derive(Clone)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    ffn: Vec<f32>,
    scores: Vec<f32>,
}

/// Scratch space for stepping several sequences together ([`StepDecoder::step_batch`]): each
/// buffer holds one vector per sequence, one after another.
pub struct BatchScratch {
    capacity: usize,
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    ffn: Vec<f32>,
    head_queries: Vec<f32>,
    scores: Vec<f32>,
}

/// Cross-attention keys/values of one window, shared by every decode of that window.
pub struct CrossCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    frames: usize,
}

/// Decoding state of one sequence: shared cross K/V, this sequence's self-attention cache
/// (preallocated for the whole context) and scratch space.
#[derive(Clone)]
pub struct StepState {
    cross: Arc<CrossCache>,
    self_k: Vec<Vec<f32>>,
    self_v: Vec<Vec<f32>>,
    scratch: Scratch,
    pub position: usize,
}

impl StepState {
    /// A copy to decode another continuation from (beam search): only the cache positions
    /// filled so far are copied, not the whole preallocated context ([heads][context][dh]).
    pub fn fork(&self, dec: &StepDecoder) -> Self {
        let dh = dec.d / dec.heads;
        let (per_head, used) = (dec.max_positions * dh, self.position * dh);
        let filled = |cache: &Vec<Vec<f32>>| -> Vec<Vec<f32>> {
            cache
                .iter()
                .map(|layer| {
                    let mut copy = vec![0f32; layer.len()];
                    for (to, from) in copy.chunks_mut(per_head).zip(layer.chunks(per_head)) {
                        to[..used].copy_from_slice(&from[..used]);
                    }
                    copy
                })
                .collect()
        };
        Self {
            cross: self.cross.clone(),
            self_k: filled(&self.self_k),
            self_v: filled(&self.self_v),
            scratch: self.scratch.clone(),
            position: self.position,
        }
    }

    /// Take over the caches of a batched (candle) prompt pass.
    pub fn from_exported(dec: &StepDecoder, e: ExportedState) -> Result<Self> {
        let dh = dec.d / dec.heads;
        let (maxp, heads) = (dec.max_positions, dec.heads);
        let mut self_k = Vec::with_capacity(e.self_k.len());
        let mut self_v = Vec::with_capacity(e.self_v.len());
        for (k, v) in e.self_k.iter().zip(&e.self_v) {
            let mut kk = vec![0f32; heads * maxp * dh];
            let mut vv = vec![0f32; heads * maxp * dh];
            let t = e.position;
            ensure!(k.len() == heads * t * dh, "cache size {} does not match {t} positions", k.len());
            for h in 0..heads {
                kk[h * maxp * dh..h * maxp * dh + t * dh].copy_from_slice(&k[h * t * dh..(h + 1) * t * dh]);
                vv[h * maxp * dh..h * maxp * dh + t * dh].copy_from_slice(&v[h * t * dh..(h + 1) * t * dh]);
            }
            self_k.push(kk);
            self_v.push(vv);
        }
        Ok(Self {
            cross: Arc::new(CrossCache { k: e.cross_k, v: e.cross_v, frames: e.frames }),
            self_k,
            self_v,
            scratch: dec.scratch(e.frames),
            position: e.position,
        })
    }
}
