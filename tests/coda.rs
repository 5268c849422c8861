//! CoDA building blocks: the soft top-k operator, routing that keeps time order, exactness at
//! r = 1 with fresh adapters, save/load, and a short training run whose loss falls.

mod common;
use candle_core::{Device, Tensor, Var};
use coda_asr::model::coda::{
    budget_weights, content_stretches, grid_frames, grid_stretches, pool_over, pool_stretches, soft_top_k, top_k_in_time_order, CodaConfig,
    CodaWeights, Interpolation, Routing, SEGMENT_BLOCK,
};
use coda_asr::model::encoder::{attending_layer_flops, layer_flops};
use coda_asr::model::{EncodeOptions, EncoderBlock};
use std::sync::Arc;

fn scores(values: &[f32]) -> Tensor {
    Tensor::from_slice(values, (1, values.len()), &Device::Cpu).unwrap()
}

#[test]
fn soft_top_k_sums_to_k_within_bounds_and_is_monotone() {
    let values: Vec<f32> = (0..300).map(|i| ((i * 37 % 101) as f32 / 10.0).sin() * 3.0).collect();
    for k in [1usize, 10, 75, 150, 200, 299] {
        let lambda: Vec<f32> = soft_top_k(&scores(&values), k, 1.0, 50).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
        let sum: f32 = lambda.iter().sum();
        assert!((sum - k as f32).abs() < 1e-3, "k = {k}: Σλ = {sum}");
        assert!(lambda.iter().all(|&l| (0.0..=1.0 + 1e-6).contains(&l)), "k = {k}: λ outside [0, 1]");
        let all = soft_top_k(&scores(&values), 300, 1.0, 50).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(all, 300.0);
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
        for w in order.windows(2) {
            assert!(lambda[w[0]] <= lambda[w[1]] + 1e-6, "k = {k}: λ not monotone in s");
        }
    }
}

#[test]
fn soft_top_k_gradients_are_finite_and_match_finite_differences() {
    let values: Vec<f32> = (0..40).map(|i| ((i * 13 % 17) as f32 - 8.0) / 4.0).collect();
    // A loss that depends on λ unevenly, so the gradient is not trivially zero.
    let weights: Vec<f32> = (0..40).map(|i| (i as f32 / 7.0).cos()).collect();
    let w = Tensor::from_slice(&weights, (1, 40), &Device::Cpu).unwrap();
    let loss_of = |s: &Tensor| -> Tensor { (soft_top_k(s, 10, 1.0, 50).unwrap() * &w).unwrap().sum_all().unwrap() };
    let u = Var::from_tensor(&scores(&values)).unwrap();
    let grads = loss_of(u.as_tensor()).backward().unwrap();
    let g: Vec<f32> = grads.get(u.as_tensor()).expect("gradient reaches the scores").squeeze(0).unwrap().to_vec1().unwrap();
    assert!(g.iter().all(|v| v.is_finite()));
    assert!(g.iter().any(|v| v.abs() > 1e-4), "gradient is zero everywhere");
    for i in [0usize, 7, 19, 33] {
        let h = 1e-2f32;
        let mut plus = values.clone();
        plus[i] += h;
        let mut minus = values.clone();
        minus[i] -= h;
        let fd = (loss_of(&scores(&plus)).to_scalar::<f32>().unwrap() - loss_of(&scores(&minus)).to_scalar::<f32>().unwrap()) / (2.0 * h);
        assert!((fd - g[i]).abs() < 2e-2 + 0.05 * fd.abs(), "score {i}: autograd {} vs finite difference {fd}", g[i]);
    }
}

#[test]
fn top_k_keeps_time_order() {
    let row = [0.5f32, 9.0, -1.0, 7.0, 3.0, 8.0, 0.0];
    assert_eq!(top_k_in_time_order(&row, 3), vec![1, 3, 5]);
    assert_eq!(top_k_in_time_order(&row, 7), (0..7).collect::<Vec<u32>>());
}

#[test]
fn grid_frames_are_evenly_spaced_in_time_order() {
    assert_eq!(grid_frames(8, 2.0), vec![1, 3, 5, 7]);
    assert_eq!(grid_frames(10, 4.0), vec![2, 6, 9]);
    assert_eq!(grid_frames(5, 1.0), vec![0, 1, 2, 3, 4]);
    for (n, r) in [(750usize, 2.0), (751, 4.0), (1500, 8.0), (3, 4.0), (533, 3.0), (20, 1.5)] {
        let g = grid_frames(n, r);
        assert_eq!(g.len(), EncodeOptions { reduction: r }.heavy_frames(n), "k = ceil(n / r)");
        assert!(g.windows(2).all(|w| w[0] < w[1]) && (*g.last().unwrap() as usize) < n, "n = {n}, r = {r}");
        // No stretch without a heavy frame is longer than the grid step.
        assert!(g.windows(2).all(|w| (w[1] - w[0]) as f64 <= r.ceil()));
    }
}

#[test]
fn a_frame_keeps_its_place_on_the_grid_as_the_sequence_grows() {
    // A streaming buffer grows by 50 frames a pass; a frame's routing must not change with it,
    // or consecutive passes read the same audio differently.
    for r in [2.0, 3.0, 4.0, 6.0, 8.0] {
        for n in [300usize, 533, 1001] {
            let (short, long) = (grid_frames(n, r), grid_frames(n + 50, r));
            let inside = |g: &[u32]| g.iter().copied().filter(|&i| (i as f64) < n as f64 - r).collect::<Vec<_>>();
            assert_eq!(inside(&short), inside(&long), "r = {r}, n = {n}");
        }
    }
}

#[test]
fn pooled_grid_stretches_cover_every_frame_once_around_their_grid_frame() {
    for (n, r) in [(750usize, 2.0), (751, 4.0), (1500, 8.0), (3, 4.0), (533, 3.0), (20, 1.5), (7, 1.0)] {
        let (stretches, grid) = (grid_stretches(n, r), grid_frames(n, r));
        assert_eq!(stretches.len(), grid.len(), "one stretch per grid frame");
        assert_eq!(stretches[0].0, 0);
        assert_eq!(stretches.last().unwrap().1, n, "n = {n}, r = {r}");
        for (j, &(start, end)) in stretches.iter().enumerate() {
            assert!(start < end && (start..end).contains(&(grid[j] as usize)), "n = {n}, r = {r}, j = {j}");
            if j > 0 {
                assert_eq!(stretches[j - 1].1, start, "disjoint and gap-free");
            }
        }
    }
    // Positions stay put as a streaming buffer grows (only the cut last stretch may change).
    let (short, long) = (grid_stretches(533, 4.0), grid_stretches(583, 4.0));
    assert_eq!(short[..short.len() - 1], long[..short.len() - 1]);
}

#[test]
fn pooling_takes_the_mean_of_each_stretch() {
    // Frame t holds (t, 2t + 1): stretch means are easy to write down.
    let n = 10;
    let x: Vec<f32> = (0..n).flat_map(|t| [t as f32, 2.0 * t as f32 + 1.0]).collect();
    let x = Tensor::from_vec(x, (1, n, 2), &Device::Cpu).unwrap();
    // r = 4: stretches [0, 4), [4, 8), [8, 10).
    let pooled: Vec<Vec<f32>> = pool_stretches(&x, 4.0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
    assert_eq!(pooled, vec![vec![1.5, 4.0], vec![5.5, 12.0], vec![8.5, 18.0]]);
    // r = 1 is the sequence itself.
    let same: Vec<Vec<f32>> = pool_stretches(&x, 1.0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
    assert_eq!(same, x.squeeze(0).unwrap().to_vec2::<f32>().unwrap());
}

#[test]
fn interpolation_gives_selected_frames_their_own_update_and_is_linear_between() {
    let selected = [2u32, 5, 9];
    let plan = Interpolation::new(&selected, 12);
    // Updates of the selected frames: a linear function of time per channel, so the frames
    // between them must get exactly that function; the ends copy the nearest.
    let line = |t: f32| [10.0 + 2.0 * t, -t];
    let delta: Vec<f32> = selected.iter().flat_map(|&t| line(t as f32)).collect();
    let delta = Tensor::from_vec(delta, (1, 3, 2), &Device::Cpu).unwrap();
    let full: Vec<Vec<f32>> = plan.apply(&delta).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
    for (i, row) in full.iter().enumerate() {
        let t = (i as f32).clamp(2.0, 9.0);
        let want = line(t);
        assert!((row[0] - want[0]).abs() < 1e-5 && (row[1] - want[1]).abs() < 1e-5, "frame {i}: {row:?} vs {want:?}");
    }
    assert_eq!((plan.left[5], plan.right[5], plan.left_weight[5]), (1, 1, 1.0));
}

/// Inference pools and interpolates with loops over host memory, training with tensor ops that
/// autograd can follow (a `Var` input takes that path): both must give the same bits.
#[test]
fn host_loops_for_pooling_and_interpolation_match_the_tensor_ops_exactly() {
    let (b, n, d) = (2, 37, 5);
    let values: Vec<f32> = (0..b * n * d).map(|i| ((i * 7919 % 1013) as f32 / 97.0).sin()).collect();
    let x = Tensor::from_vec(values, (b, n, d), &Device::Cpu).unwrap();
    let tracked = Var::from_tensor(&x).unwrap();
    let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    for r in [1.0, 2.0, 3.0, 3.5, 4.0, 8.0] {
        let pooled = pool_stretches(&x, r).unwrap();
        assert_eq!(bits(&pooled), bits(&pool_stretches(tracked.as_tensor(), r).unwrap()), "pooling at r = {r}");
        let plan = Interpolation::new(&grid_frames(n, r), n);
        let delta = (&pooled * 0.5).unwrap();
        let tracked_delta = Var::from_tensor(&delta).unwrap();
        let want = (tracked.as_tensor() + plan.apply(tracked_delta.as_tensor()).unwrap()).unwrap();
        assert_eq!(bits(&plan.add_to(&x, &delta).unwrap()), bits(&want), "interpolation at r = {r}");
    }
}

/// Frames from a fixed pseudo-random stream, values in [-1, 1].
fn noise_frames(n: usize, d: usize, seed: usize) -> Vec<f32> {
    (0..n * d).map(|i| (((i + 1) * 7919 + seed * 104_729) % 1013) as f32 / 506.5 - 1.0).collect()
}

/// Sum over stretches of the squared distances of their frames from the stretch mean.
fn within_stretch_squares(x: &[f32], d: usize, stretches: &[(usize, usize)]) -> f64 {
    stretches
        .iter()
        .map(|&(a, b)| {
            (0..d)
                .map(|c| {
                    let values: Vec<f64> = (a..b).map(|i| x[i * d + c] as f64).collect();
                    let mean = values.iter().sum::<f64>() / values.len() as f64;
                    values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>()
                })
                .sum::<f64>()
        })
        .sum()
}

#[test]
fn content_stretches_are_as_many_as_the_grids_cover_every_frame_once_and_stay_put_as_a_buffer_grows() {
    let d = 4;
    for (n, r) in [(750usize, 2.0), (751, 4.0), (1500, 8.0), (3, 4.0), (533, 3.0), (20, 1.5), (7, 1.0), (29, 3.5)] {
        let x = noise_frames(n, d, n);
        let stretches = content_stretches(&x, d, r);
        assert_eq!(stretches.len(), grid_stretches(n, r).len(), "n = {n}, r = {r}");
        assert_eq!((stretches[0].0, stretches.last().unwrap().1), (0, n), "n = {n}, r = {r}");
        for pair in stretches.windows(2) {
            assert!(pair[0].0 < pair[0].1 && pair[0].1 == pair[1].0, "n = {n}, r = {r}: {pair:?}");
        }
    }
    // A buffer 50 frames longer (one streaming step) keeps the cuts of every block it had whole.
    let r = 4.0;
    let long = noise_frames(583, d, 1);
    let (short, longer) = (content_stretches(&long[..533 * d], d, r), content_stretches(&long, d, r));
    let whole_blocks = 533 / (SEGMENT_BLOCK * 4) * SEGMENT_BLOCK;
    assert!(whole_blocks > 0);
    assert_eq!(short[..whole_blocks], longer[..whole_blocks]);
}

#[test]
fn content_stretches_cut_where_the_frames_change_with_the_least_squares_within() {
    // Runs of equal frames, 8 per block of 32 frames at r = 4, with a little noise: the cut
    // is the runs, however unequal their lengths.
    let (d, runs) = (3, [1usize, 7, 2, 6, 3, 5, 4, 4, 9, 1, 1, 5, 2, 2, 8, 4]);
    let noise = noise_frames(64, d, 3);
    let mut x = Vec::new();
    let mut want = Vec::new();
    for (j, &len) in runs.iter().enumerate() {
        want.push((x.len() / d, x.len() / d + len));
        for _ in 0..len {
            let at = x.len();
            x.extend((0..d).map(|c| ((j * 5 + c * 3) % 7) as f32 * 2.0 + 0.01 * noise[at + c]));
        }
    }
    assert_eq!(content_stretches(&x, d, 4.0), want);
    // On random frames the cut is the best of all cuts into that many stretches (one block of
    // 12 frames in 8 stretches at r = 1.5: all 330 of them tried).
    let (n, x) = (12, noise_frames(12, 2, 9));
    let got = content_stretches(&x, 2, 1.5);
    assert_eq!(got.len(), 8);
    let mut best = f64::INFINITY;
    for cuts in 0u32..1 << (n - 1) {
        if cuts.count_ones() != 7 {
            continue;
        }
        let mut stretches = Vec::new();
        let mut start = 0;
        for i in 1..n {
            if cuts >> (i - 1) & 1 == 1 {
                stretches.push((start, i));
                start = i;
            }
        }
        stretches.push((start, n));
        best = best.min(within_stretch_squares(&x, 2, &stretches));
    }
    assert!((within_stretch_squares(&x, 2, &got) - best).abs() < 1e-9, "{got:?}");
}

#[test]
fn interpolation_between_stretch_centres_is_linear() {
    // Centres of stretches [0, 4) and [4, 12): 1.5 and 7.5.
    let plan = Interpolation::at(&[1.5, 7.5], 12);
    let delta = Tensor::from_vec(vec![0f32, 6.0], (1, 2, 1), &Device::Cpu).unwrap();
    let full: Vec<f32> = plan.apply(&delta).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let want: Vec<f32> = (0..12).map(|i| (i as f32 - 1.5).clamp(0.0, 6.0)).collect();
    assert_eq!(full, want);
    // Integer positions are the grid's interpolation.
    let grid = Interpolation::new(&[2, 5, 9], 12);
    let same = Interpolation::at(&[2.0, 5.0, 9.0], 12);
    assert_eq!((grid.left, grid.right, grid.left_weight, grid.right_weight), (same.left, same.right, same.left_weight, same.right_weight));
}

#[test]
fn a_pooled_frame_weighed_by_its_length_attends_as_its_repeated_frames_would() {
    // Proportional attention: keys that stand for L equal frames get ln L on their logits, so a
    // sequence of distinct frames with those weights is the layer on the sequence with each
    // frame repeated L times (at each repeated frame).
    let model = common::tiny_en();
    let dense = &model.encoder.dense_layers[2];
    let distinct = model.encoder.stem(&real_mel().narrow(2, 0, 40).unwrap()).unwrap(); // 20 frames
    let lengths: Vec<usize> = (0..20).map(|j| 1 + j % 4).collect();
    let repeated_idx: Vec<u32> = lengths.iter().enumerate().flat_map(|(j, &l)| std::iter::repeat(j as u32).take(l)).collect();
    let repeated = distinct.index_select(&Tensor::new(repeated_idx.as_slice(), &Device::Cpu).unwrap(), 1).unwrap();
    let bias: Vec<f32> = lengths.iter().map(|&l| (l as f32).ln()).collect();
    let bias = Tensor::from_vec(bias, (1, 1, 1, 20), &Device::Cpu).unwrap();
    let weighed = dense.run_with_key_bias(&distinct, Some(&bias)).unwrap();
    let first_of_each: Vec<u32> = lengths.iter().scan(0u32, |at, &l| Some(std::mem::replace(at, *at + l as u32))).collect();
    let full = dense.run(&repeated).unwrap().index_select(&Tensor::new(first_of_each.as_slice(), &Device::Cpu).unwrap(), 1).unwrap();
    let diff = (&weighed - full).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "{diff}");
    // Inference adds the bias inside its softmax pass; training (a tracked input) broadcasts
    // it as a tensor op. Both compute the same layer.
    let tracked = Var::from_tensor(&distinct).unwrap();
    let trained = dense.run_with_key_bias(tracked.as_tensor(), Some(&bias)).unwrap();
    let diff = (&weighed - trained).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn pooled_segment_layers_run_the_heavy_layer_on_stretch_means_and_interpolate_from_their_centres() {
    let model = common::tiny_en();
    let dense = &model.encoder.dense_layers[1];
    let x = model.encoder.stem(&real_mel().narrow(2, 0, 1200).unwrap()).unwrap();
    let n = x.dim(1).unwrap();
    let mut config = CodaConfig::new(vec![1, 2, 3], "tiny.en", "test");
    config.routing = Routing::PooledSegments;
    let weights = CodaWeights::fresh(config, 384, &Device::Cpu).unwrap();
    let layers = weights.layers(&model.encoder.dense_layers, false).unwrap();
    let frames: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    for r in [2.0, 4.0] {
        let (y, stats) = layers[0].1.forward(&x, &EncodeOptions { reduction: r }).unwrap();
        let stretches = content_stretches(&frames, 384, r);
        assert_ne!(stretches, grid_stretches(n, r), "r = {r}: real speech is not cut evenly");
        let pooled = pool_over(&x, &stretches).unwrap();
        let bias: Vec<f32> = stretches.iter().map(|&(a, b)| ((b - a) as f32).ln()).collect();
        let bias = Tensor::from_vec(bias, (1, 1, 1, stretches.len()), &Device::Cpu).unwrap();
        let delta = (dense.run_with_key_bias(&pooled, Some(&bias)).unwrap() - &pooled).unwrap();
        let centres: Vec<f32> = stretches.iter().map(|&(a, b)| (a + b - 1) as f32 / 2.0).collect();
        let want = (&x + Interpolation::at(&centres, n).apply(&delta).unwrap()).unwrap();
        let diff = (&y - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "r = {r}: {diff}");
        // The pooled grid's heavy work, plus the cut's.
        let k = stats.heavy_frames;
        assert_eq!(k, (n as f64 / r).ceil() as usize);
        assert!(stats.flops > layer_flops(k, 384, 1536) && stats.flops < layer_flops(n, 384, 1536), "r = {r}: {}", stats.flops);
    }
    // Segments up to r = 2 only: r = 4 is the pooled grid.
    let mut config = CodaConfig::new(vec![1, 2, 3], "tiny.en", "test");
    config.routing = Routing::PooledSegments;
    config.segments_up_to = Some(2.0);
    let limited = CodaWeights::fresh(config.clone(), 384, &Device::Cpu).unwrap().layers(&model.encoder.dense_layers, false).unwrap();
    config.routing = Routing::PooledGrid;
    let grid = CodaWeights::fresh(config, 384, &Device::Cpu).unwrap().layers(&model.encoder.dense_layers, false).unwrap();
    let at =
        |layers: &[(usize, coda_asr::model::coda::CodaLayer)], r: f64| layers[0].1.forward(&x, &EncodeOptions { reduction: r }).unwrap().0;
    let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    assert_eq!(bits(&at(&limited, 4.0)), bits(&at(&grid, 4.0)));
    assert_ne!(bits(&at(&limited, 2.0)), bits(&at(&grid, 2.0)));
}

fn real_mel() -> Tensor {
    let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let audio = coda_asr::audio::load_mono_16k(&wav).unwrap();
    let mel = coda_asr::mel::MelFrontend::new(80).compute(&audio, coda_asr::mel::CHUNK_SAMPLES);
    Tensor::from_vec(mel.window(0, 3000, 0.0), (1, 80, 3000), &Device::Cpu).unwrap()
}

#[test]
fn fresh_adapters_at_r1_reproduce_the_dense_encoder_and_route_at_r4() {
    let model = common::tiny_en();
    let config = CodaConfig::new(vec![0, 1, 2, 3], "tiny.en", "test");
    let weights = CodaWeights::fresh(config, 384, &Device::Cpu).unwrap();
    let layers: Vec<Arc<dyn EncoderBlock>> = {
        let mut all: Vec<Arc<dyn EncoderBlock>> = model.encoder.dense_layers.iter().map(|l| l.clone() as Arc<dyn EncoderBlock>).collect();
        for (i, l) in weights.layers(&model.encoder.dense_layers, false).unwrap() {
            all[i] = Arc::new(l);
        }
        all
    };
    let mel = real_mel();
    let (dense, _) = model.encoder.forward_dense(&mel).unwrap();
    let (coda, stats) = model.encoder.forward_with(&layers, &mel, &EncodeOptions { reduction: 1.0 }).unwrap();
    let diff = (dense - coda).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff, 0.0, "r = 1 with zero-initialised adapters must equal the dense encoder");
    assert_eq!(stats.heavy_frames, vec![1500; 4]);

    let (out, stats) = model.encoder.forward_with(&layers, &mel, &EncodeOptions { reduction: 4.0 }).unwrap();
    assert_eq!(out.dims(), &[1, 1500, 384]);
    assert_eq!(stats.heavy_frames, vec![375; 4]);
    assert!(stats.flops < 0.35 * stats.dense_flops, "{} vs {}", stats.flops, stats.dense_flops);
}

#[test]
fn routing_with_tensor_ops_matches_the_host_routing() {
    // What a GPU runs (no host copies between layers), checked on the CPU against the host path.
    // Top-k routing needs both paths; grid routing has only one (it routes without data).
    let model = common::tiny_en();
    let mut config = CodaConfig::new(vec![0, 1, 2, 3], "tiny.en", "test");
    config.routing = Routing::TopK;
    let weights = CodaWeights::fresh(config, 384, &Device::Cpu).unwrap();
    let layers = weights.layers(&model.encoder.dense_layers, false).unwrap();
    let x = model.encoder.stem(&real_mel().narrow(2, 0, 1200).unwrap()).unwrap();
    for r in [2.0, 4.0, 8.0] {
        let opts = EncodeOptions { reduction: r };
        let (_, layer) = &layers[1];
        let (host, host_stats) = layer.forward_routed(&x, &opts, false).unwrap();
        let (device, device_stats) = layer.forward_routed(&x, &opts, true).unwrap();
        assert_eq!(host_stats.heavy_frames, device_stats.heavy_frames);
        let diff = (&host - &device).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 2e-3, "r = {r}: host and device routing differ by {diff}");

        let k = host_stats.heavy_frames;
        let scores = layer.adapter.scores(&x).unwrap();
        let row: Vec<f32> = scores.squeeze(0).unwrap().to_vec1().unwrap();
        let (select, lambda) = coda_asr::model::coda::route_on_device(&scores, k, 1.0, 30).unwrap();
        let picked: Vec<u32> = select.squeeze(0).unwrap().argmax(1).unwrap().to_vec1().unwrap();
        assert_eq!(picked, top_k_in_time_order(&row, k), "r = {r}: selected frames or their order differ");
        let host_lambda: Vec<f32> = soft_top_k(&scores, k, 1.0, 0).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
        let lambda: Vec<f32> = lambda.flatten_all().unwrap().to_vec1().unwrap();
        for (j, &i) in picked.iter().enumerate() {
            assert!(
                (lambda[j] - host_lambda[i as usize]).abs() < 2e-3,
                "r = {r}: λ of frame {i}: {} vs {}",
                lambda[j],
                host_lambda[i as usize]
            );
        }
    }
}

#[test]
fn grid_routing_with_fresh_adapters_is_the_grid_baseline() {
    let model = common::tiny_en();
    let weights = CodaWeights::fresh(CodaConfig::new(vec![0, 1, 2, 3], "tiny.en", "test"), 384, &Device::Cpu).unwrap();
    let layers = weights.layers(&model.encoder.dense_layers, false).unwrap();
    let baseline = coda_asr::model::baselines::grid_layers(&model.encoder.dense_layers);
    let x = model.encoder.stem(&real_mel().narrow(2, 0, 1200).unwrap()).unwrap();
    let opts = EncodeOptions { reduction: 3.0 };
    let (coda, stats) = layers[2].1.forward(&x, &opts).unwrap();
    assert_eq!(baseline[1].0, 2, "the grid baseline adapts layers 1.., as CoDA's grid default");
    let (grid, _) = baseline[1].1.forward(&x, &opts).unwrap();
    assert_eq!(stats.heavy_frames, 200);
    let diff = (&coda - &grid).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "zero adapters with grid routing differ from the grid baseline by {diff}");
    // Every frame moved, not only the heavy ones: the skipped ones got interpolated updates.
    let moved: Vec<f32> = (&coda - &x).unwrap().abs().unwrap().max(2).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
    assert!(moved.iter().all(|&m| m > 1e-3), "a frame kept its input unchanged");
}

#[test]
fn the_norm_baseline_runs_the_layer_on_the_loudest_frames_and_passes_the_rest_unchanged() {
    let model = common::tiny_en();
    let dense = &model.encoder.dense_layers[1];
    let layer = &coda_asr::model::baselines::top_k_norm_layers(&model.encoder.dense_layers)[1].1;
    let x = model.encoder.stem(&real_mel().narrow(2, 0, 1200).unwrap()).unwrap();
    let n = x.dim(1).unwrap();
    let max_diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();

    let (y, stats) = layer.forward(&x, &EncodeOptions { reduction: 1.0 }).unwrap();
    assert_eq!(stats.heavy_frames, n);
    assert_eq!(max_diff(&y, &dense.run(&x).unwrap()), 0.0, "r = 1 is the pretrained layer");

    let (y, stats) = layer.forward(&x, &EncodeOptions { reduction: 3.0 }).unwrap();
    let k = n.div_ceil(3);
    assert_eq!((stats.heavy_frames, stats.flops), (k, layer_flops(k, 384, 1536)));
    let norms: Vec<f32> = x.sqr().unwrap().sum(2).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
    let heavy = top_k_in_time_order(&norms, k);
    let skipped: Vec<u32> = (0..n as u32).filter(|i| !heavy.contains(i)).collect();
    let quietest_heavy = heavy.iter().map(|&i| norms[i as usize]).fold(f32::INFINITY, f32::min);
    assert!(skipped.iter().all(|&i| norms[i as usize] <= quietest_heavy), "a louder frame was skipped");
    let at = |t: &Tensor, frames: &[u32]| t.index_select(&Tensor::new(frames, &Device::Cpu).unwrap(), 1).unwrap();
    // The heavy frames attend only to each other; the others pass through as they came.
    let alone = dense.run(&at(&x, &heavy)).unwrap();
    assert!(max_diff(&at(&y, &heavy), &alone) < 1e-4);
    assert_eq!(max_diff(&at(&y, &skipped), &at(&x, &skipped)), 0.0);
}

#[test]
fn fine_context_layers_attend_to_keys_and_values_pooled_over_half_stretches() {
    let model = common::tiny_en();
    let dense = &model.encoder.dense_layers[1];
    let x = model.encoder.stem(&real_mel().narrow(2, 0, 1200).unwrap()).unwrap();
    let max_diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    // Attending to its own frames is the pretrained layer (its q and k/v projections split).
    assert!(max_diff(&dense.run_attending(&x, &x).unwrap(), &dense.run(&x).unwrap()) < 1e-4);

    let mut config = CodaConfig::new(vec![1, 2, 3], "tiny.en", "test");
    config.routing = Routing::PooledGridFineContext;
    let weights = CodaWeights::fresh(config, 384, &Device::Cpu).unwrap();
    let layers = weights.layers(&model.encoder.dense_layers, false).unwrap();
    let n = x.dim(1).unwrap();
    for (r, context) in [(4.0, 300), (2.0, 600)] {
        // Fresh adapters add nothing: the layer is x plus the interpolated update of queries
        // pooled over r frames attending to keys and values pooled over r / 2 (every frame at 2).
        let (y, stats) = layers[0].1.forward(&x, &EncodeOptions { reduction: r }).unwrap();
        let queries = pool_stretches(&x, r).unwrap();
        let keys = if r > 2.0 { pool_stretches(&x, r / 2.0).unwrap() } else { x.clone() };
        assert_eq!(keys.dim(1).unwrap(), context);
        let delta = (dense.run_attending(&queries, &keys).unwrap() - &queries).unwrap();
        let want = (&x + Interpolation::new(&grid_frames(n, r), n).apply(&delta).unwrap()).unwrap();
        assert!(max_diff(&y, &want) < 1e-4, "r = {r}");
        let k = stats.heavy_frames;
        assert_eq!(k, (n as f64 / r).ceil() as usize);
        // More work than the pooled grid's heavy layer at the same r, less than a dense layer.
        assert!(stats.flops > layer_flops(k, 384, 1536) && stats.flops < layer_flops(n, 384, 1536), "r = {r}: {}", stats.flops);
    }
    assert_eq!(attending_layer_flops(n, n, 384, 1536), layer_flops(n, 384, 1536));
}

#[test]
fn budget_gates_are_picked_by_r_and_interpolated_in_1_over_r_between() {
    let trained = [2.0, 3.0, 4.0, 6.0, 8.0];
    assert_eq!(budget_weights(&trained, 3.0), vec![0.0, 1.0, 0.0, 0.0, 0.0]);
    assert_eq!(budget_weights(&trained, 1.5), vec![1.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(budget_weights(&trained, 16.0), vec![0.0, 0.0, 0.0, 0.0, 1.0]);
    // r = 4.8: 1/r is half way from 1/4 to 1/6 (r = 5 would be nearer 1/6).
    let w = budget_weights(&trained, 4.8);
    assert!((w[2] - 0.5).abs() < 1e-6 && (w[3] - 0.5).abs() < 1e-6 && w[0] == 0.0 && w[1] == 0.0 && w[4] == 0.0, "{w:?}");
    // The order in coda.json does not matter.
    assert_eq!(budget_weights(&[4.0, 2.0], 2.0), vec![0.0, 1.0]);
}

#[test]
fn a_closed_budget_gate_turns_the_adapter_off_at_its_r_only() {
    let model = common::tiny_en();
    let weights = CodaWeights::fresh(CodaConfig::new(vec![1, 2, 3], "tiny.en", "test"), 384, &Device::Cpu).unwrap();
    {
        let data = weights.vars.data().lock().unwrap();
        let up = &data["layers.2.up.weight"];
        up.set(&Tensor::randn(0f32, 0.1, up.shape(), &Device::Cpu).unwrap()).unwrap();
        // Trained r are 2, 3, 4, 6, 8: close the gate of r = 2.
        let gates = &data["layers.2.gates"];
        let mut rows: Vec<Vec<f32>> = gates.as_tensor().to_vec2().unwrap();
        rows[0].iter_mut().for_each(|g| *g = 0.0);
        gates.set(&Tensor::new(rows, &Device::Cpu).unwrap()).unwrap();
    }
    let layers = weights.layers(&model.encoder.dense_layers, false).unwrap();
    let baseline = coda_asr::model::baselines::grid_layers(&model.encoder.dense_layers);
    let x = model.encoder.stem(&real_mel().narrow(2, 0, 1200).unwrap()).unwrap();
    let differs = |r: f64| {
        let opts = EncodeOptions { reduction: r };
        let (coda, _) = layers[1].1.forward(&x, &opts).unwrap();
        let (grid, _) = baseline[1].1.forward(&x, &opts).unwrap();
        (&coda - &grid).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    };
    assert!(differs(2.0) < 1e-5, "the closed gate still lets the adapter through at r = 2");
    assert!(differs(3.0) > 1e-2, "the adapter does nothing at r = 3, where its gate is open");
}

#[test]
fn a_layer_with_a_reduction_scale_routes_at_its_own_r() {
    let model = common::tiny_en();
    let mut config = CodaConfig::new(vec![0, 1, 2, 3], "tiny.en", "test");
    config.routing = Routing::PooledGrid;
    config.reduction_scale.insert(0, 0.5);
    let weights = CodaWeights::fresh(config, 384, &Device::Cpu).unwrap();
    let layers = weights.layers(&model.encoder.dense_layers, false).unwrap();
    let x = model.encoder.stem(&real_mel().narrow(2, 0, 1200).unwrap()).unwrap();
    // r = 4: layer 0 at r = 2, the others at 4.
    let (_, first) = layers[0].1.forward(&x, &EncodeOptions { reduction: 4.0 }).unwrap();
    let (_, second) = layers[1].1.forward(&x, &EncodeOptions { reduction: 4.0 }).unwrap();
    assert_eq!((first.heavy_frames, second.heavy_frames), (300, 150));
    // r = 2: layer 0 at r = 1 is the pretrained layer itself, adapter off.
    let (y, stats) = layers[0].1.forward(&x, &EncodeOptions { reduction: 2.0 }).unwrap();
    assert_eq!(stats.heavy_frames, 600);
    let dense = model.encoder.dense_layers[0].run(&x).unwrap();
    assert_eq!((y - dense).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    // The scale survives save and load.
    let dir = tempfile::tempdir().unwrap();
    weights.save(dir.path()).unwrap();
    assert_eq!(CodaWeights::load(dir.path(), &Device::Cpu).unwrap().config.reduction_scale.get(&0), Some(&0.5));
}

#[test]
fn adapters_for_more_layers_keep_the_trained_ones() {
    // What `train --resume --layers` does when it adds layers: here trained adapters for layers
    // 1–3 (the shipped ones without layer 0's) grow one for layer 0.
    let shipped = CodaWeights::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/coda-tiny.en"), &Device::Cpu).unwrap();
    let mut config = shipped.config.clone();
    config.layers = vec![1, 2, 3];
    let trained = CodaWeights::fresh(config.clone(), 384, &Device::Cpu).unwrap();
    for (name, var) in trained.vars.data().lock().unwrap().iter() {
        var.set(shipped.vars.data().lock().unwrap()[name].as_tensor()).unwrap();
    }
    config.layers = vec![0, 1, 2, 3];
    let grown = CodaWeights::fresh(config, 384, &Device::Cpu).unwrap();
    grown.copy_from(&trained).unwrap();
    let (old, new) = (trained.vars.data().lock().unwrap(), grown.vars.data().lock().unwrap());
    for (name, var) in old.iter() {
        let diff = (var.as_tensor() - new[name].as_tensor()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "{name}");
    }
    // The new layer's adapter starts switched off (zero up projection).
    let up = new["layers.0.up.weight"].as_tensor().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(up, 0.0);
}

#[test]
fn adapters_save_and_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let config = CodaConfig::new(vec![1, 3], "tiny.en", "abc");
    let weights = CodaWeights::fresh(config, 384, &Device::Cpu).unwrap();
    weights.save(dir.path()).unwrap();
    let loaded = CodaWeights::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(loaded.config.layers, vec![1, 3]);
    let gates = loaded.vars.data().lock().unwrap()["layers.3.gates"].as_tensor().dims().to_vec();
    assert_eq!(gates, vec![5, 64], "one budget gate per trained r");
    let a = weights.vars.data().lock().unwrap();
    let b = loaded.vars.data().lock().unwrap();
    assert_eq!(a.len(), b.len());
    for (name, var) in a.iter() {
        let diff = (var.as_tensor() - b[name].as_tensor()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "{name}");
    }
}

#[test]
fn widened_adapters_compute_what_the_narrow_ones_did() {
    let model = common::tiny_en();
    let narrow = CodaWeights::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/coda-tiny.en"), &Device::Cpu).unwrap();
    let b = narrow.config.bottleneck;
    let wide = narrow.widen(b + 32, &mut |rows, cols| vec![0.05; rows * cols]).unwrap();
    assert_eq!(wide.config.bottleneck, b + 32);
    assert!(narrow.widen(b - 1, &mut |rows, cols| vec![0.0; rows * cols]).is_err(), "narrowing must be refused");
    let x = model.encoder.stem(&real_mel().narrow(2, 0, 1200).unwrap()).unwrap();
    let (narrow_layers, wide_layers) =
        (narrow.layers(&model.encoder.dense_layers, false).unwrap(), wide.layers(&model.encoder.dense_layers, false).unwrap());
    for ((layer, narrow_layer), (_, wide_layer)) in narrow_layers.iter().zip(&wide_layers) {
        for r in [2.0, 3.0, 4.0] {
            let opts = EncodeOptions { reduction: r };
            let (a, _) = narrow_layer.forward(&x, &opts).unwrap();
            let (w, _) = wide_layer.forward(&x, &opts).unwrap();
            let diff = (&a - &w).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "layer {layer}, r = {r}: widened adapters differ by {diff}");
        }
    }
    // The new channels are live: a step on their up projection changes the output.
    let data = wide.vars.data().lock().unwrap();
    let up = &data["layers.1.up.weight"];
    let mut cols: Vec<Vec<f32>> = up.as_tensor().to_vec2().unwrap();
    cols.iter_mut().for_each(|row| row[b] = 0.01);
    up.set(&Tensor::new(cols, &Device::Cpu).unwrap()).unwrap();
    drop(data);
    let layer_1 = |layers: &[(usize, coda_asr::model::coda::CodaLayer)]| layers.iter().position(|(l, _)| *l == 1).unwrap();
    let wide_layers = wide.layers(&model.encoder.dense_layers, false).unwrap();
    let (w, _) = wide_layers[layer_1(&wide_layers)].1.forward(&x, &EncodeOptions { reduction: 4.0 }).unwrap();
    let (a, _) = narrow_layers[layer_1(&narrow_layers)].1.forward(&x, &EncodeOptions { reduction: 4.0 }).unwrap();
    assert!((&a - &w).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 1e-3);
}

#[test]
fn a_short_training_run_lowers_the_loss() {
    // Load a private copy: training installs adapters into the model it is given.
    let dir = coda_asr::model::resolve_model_dir("tiny.en").unwrap();
    let mut model = coda_asr::model::WhisperModel::load(&dir, &Device::Cpu).unwrap();
    let out = tempfile::tempdir().unwrap();
    // A five-clip manifest of short real clips so the test stays short.
    let (header, train) = common::speech_manifest_rows("train.tsv");
    let mut rows = vec![train[0].clone()];
    rows.extend(train[1..].iter().filter(|row| common::row_seconds(row) < 6.0).take(4).cloned());
    let manifest = out.path().join("tiny.tsv");
    common::write_manifest(&manifest, &header, &rows);
    let opts = coda_asr::train::TrainOptions {
        manifest,
        out_dir: out.path().join("adapters"),
        max_minutes: 10.0,
        max_steps: 12,
        seed: 3,
        lr: 3e-3,
        lr_schedule: coda_asr::train::LrSchedule::Constant,
        warmup_steps: 0,
        kl_weight: 1.0,
        mse_weight: 1.0,
        pad_weight: 0.1,
        checkpoint_minutes: 100.0,
        resume: false,
        layers: Some(vec![2, 3]),
        bottleneck: Some(16),
        reductions: vec![4.0],
        // Top-k: fresh top-k adapters start far from the dense model, so twelve steps show the
        // loss falling; grid routing starts close to it, and over twelve different random
        // examples its small gain is inside their spread.
        routing: Some(Routing::TopK),
        reduction_scale: Vec::new(),
        segments_up_to: None,
        // The default: the teacher transcript with timestamps, as transcription decodes.
        timestamp_share: 1.0,
        synthetic_manifest: None,
        synthetic_share: 0.0,
        prompt_share: 0.0,
        min_seconds: 2.0,
        max_seconds: 4.0,
    };
    let history = coda_asr::train::train(&mut model, &opts, &mut |_, _| {}).unwrap();
    assert_eq!(history.len(), 12);
    let first: f64 = history[..3].iter().map(|h| h.loss).sum::<f64>() / 3.0;
    let last: f64 = history[9..].iter().map(|h| h.loss).sum::<f64>() / 3.0;
    assert!(history.iter().all(|h| h.loss.is_finite()));
    assert!(last < first, "loss did not fall: first {first:.4}, last {last:.4}");
    assert!(out.path().join("adapters/adapters.safetensors").is_file());
    assert!(out.path().join("adapters/train_log.csv").is_file());
}

#[test]
fn held_out_losses_vanish_at_r1_and_show_what_the_shipped_adapters_learned_at_r4() {
    let model = common::tiny_en();
    let dir = tempfile::tempdir().unwrap();
    // Three short dev clips: the adapters never trained on them.
    let (header, dev) = common::speech_manifest_rows("dev.tsv");
    let rows: Vec<String> = dev.into_iter().filter(|row| common::row_seconds(row) < 5.0).take(3).collect();
    let manifest = dir.path().join("held_out.tsv");
    common::write_manifest(&manifest, &header, &rows);
    let shipped = CodaWeights::load(&model.default_coda_dir().unwrap(), &Device::Cpu).unwrap();
    // The same layers, routing and reduction scales with fresh adapters: zero updates, so this
    // is the pooled grid without training.
    let untrained = CodaWeights::fresh(shipped.config.clone(), model.config.d_model, &Device::Cpu).unwrap();
    let losses = |weights| coda_asr::train::held_out_losses(model, weights, &manifest, &[1.0, 4.0]).unwrap();
    let (shipped, untrained) = (losses(&shipped), losses(&untrained));
    for rows in [&shipped, &untrained] {
        assert_eq!(rows[0].clips, 3);
        assert!(rows[0].predicted_tokens > 10);
        // r = 1 runs the dense layers: the student is the teacher.
        assert!(rows[0].kl_per_token < 1e-4 && rows[0].encoder_mse < 1e-6, "{:?}", rows[0]);
    }
    // Pooled-grid routing at r = 4 without adapters loses much of the teacher (KL 0.34 per
    // token on these 50 tokens, encoder MSE 0.41); the shipped adapters recover most of it
    // (session 36's 0.070, 0.27; session 18's 0.080, 0.27).
    assert!(untrained[1].kl_per_token > 0.2, "{:?}", untrained[1]);
    assert!(shipped[1].kl_per_token < 0.5 * untrained[1].kl_per_token, "{:?} against {:?}", shipped[1], untrained[1]);
    assert!(shipped[1].encoder_mse < untrained[1].encoder_mse);
}

/// On these 18 clips (180 words) the dense encoder scores 14.4 % (silence caching, 0.119 of the
/// GFLOP of dense whole windows). The adapters since session 16 run layer 0 at r / 2 as well,
/// so each r costs less than it did: r = 3 runs 0.055 of dense whole windows and scores 15.0 %
/// with the shipped ones (session 36; session 18's 16.7 %, session 16's 14.4 %), r = 4 0.044
/// and 25.0 % (25.6 %, 24.4 %).
/// The adapters shipped before them ran layer 0 dense: r = 4 ran 0.058 and scored 19.4 % (r = 3
/// 0.064, 13.9 %); before them the pooled-grid adapters 18.9 % at
/// r = 4, the grid-routed adapters with budget gates 19.4 % (their first 55 minutes of training
/// alone 22.2 %; the ungated grid adapters 20.6 %; learned top-k adapters 32.2 %; fresh top-k
/// adapters over 90 %). So the 22 % bound on what r = 4 cost until session 16 stays, checked at
/// r = 3, which now costs no more; r = 4, cheaper, gets a bound of its own.
const SHIPPED_WER_BOUND_AT_THE_OLD_R4_COST: f64 = 22.0;
const OLD_R4_GFLOP_SHARE: f64 = 0.06;
const SHIPPED_R4_WER_BOUND: f64 = 27.0;
const SHIPPED_R4_GFLOP_SHARE: f64 = 0.05;

#[test]
fn shipped_adapters_load_and_keep_wer_at_r3_and_r4_on_short_clips() {
    let dir = coda_asr::model::resolve_model_dir("tiny.en").unwrap();
    let mut model = coda_asr::model::WhisperModel::load(&dir, &Device::Cpu).unwrap();
    let coda_dir = model.default_coda_dir().expect("models/coda-tiny.en is shipped with the repository");
    model.attach_coda(&coda_dir).unwrap();
    let scales = model.coda.as_ref().unwrap().config.layer_reduction_scales(model.config.encoder_layers);
    let speech = common::speech_dir();
    let entries = coda_asr::eval::read_manifest(&speech.join("dev.tsv")).unwrap();
    // Short clips (under 8 s), every third one, across all sources.
    let short: Vec<_> = entries.into_iter().filter(|e| e.duration_s < 8.0).step_by(3).collect();
    assert!(short.len() >= 10);
    let t = coda_asr::transcribe::Transcriber::new(&model);
    let at_each_r = [(3.0, OLD_R4_GFLOP_SHARE, SHIPPED_WER_BOUND_AT_THE_OLD_R4_COST), (4.0, SHIPPED_R4_GFLOP_SHARE, SHIPPED_R4_WER_BOUND)];
    for (r, gflop_share, bound) in at_each_r {
        let opts = coda_asr::transcribe::TranscribeOptions { encode: EncodeOptions { reduction: r }, ..Default::default() };
        let coda = coda_asr::eval::run(&t, &short, &opts, "coda", "dev", &mut |_, _| {}).unwrap().summary;
        assert_eq!(coda.heavy_fraction.len(), 4);
        // Each layer sends 1 / its own r of the audio block (under 9 s of a 30 s window) heavy:
        // layer l runs at max(1, r × its scale in coda.json). A window that fails a no-speech
        // test is re-encoded dense (and whole, if still in doubt), which only raises the
        // reduced layers' shares.
        let f = &coda.heavy_fraction;
        let layer_r: Vec<f64> = scales.iter().map(|&s| (r * s).max(1.0)).collect();
        let audio_share: Vec<f64> = f.iter().zip(&layer_r).map(|(x, lr)| x * lr).collect();
        let lowest = audio_share.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(f.iter().all(|&x| x > 0.02 && x < 0.27), "r = {r}: {f:?}");
        assert!(audio_share.iter().all(|&a| a / lowest < 1.15), "r = {r}: {f:?} at {layer_r:?}");
        assert!(
            coda.encoder_gflop < gflop_share * coda.encoder_dense_gflop,
            "r = {r}: {} of {} GFLOP",
            coda.encoder_gflop,
            coda.encoder_dense_gflop
        );
        assert!(coda.wer <= bound, "CoDA r = {r} WER {:.2} on {} short dev clips", coda.wer, coda.clips);
    }
}

#[test]
fn a_doubtful_window_at_r4_is_decided_as_the_dense_default_would_decide_it() {
    // "Thou also, thou also" (3.0 s of dev.tsv), with the no-speech threshold at 0.45, between
    // the dense reading's no-speech probability (0.39) and r = 4's (0.47). Session 38's
    // adapters leave no single-window dev.tsv clip in doubt at r = 4 under Whisper's default
    // 0.6 (sessions 31–37 had one, tested here). In doubt, the window is decoded again from
    // the dense encoder with silence caching, which is sure, and no whole window is encoded:
    // the reading is the dense default's.
    const NO_SPEECH_THRESHOLD: f32 = 0.45;
    let dir = coda_asr::model::resolve_model_dir("tiny.en").unwrap();
    let mut model = coda_asr::model::WhisperModel::load(&dir, &Device::Cpu).unwrap();
    model.attach_coda(&model.default_coda_dir().expect("models/coda-tiny.en is shipped")).unwrap();
    let t = coda_asr::transcribe::Transcriber::new(&model);
    let audio = coda_asr::audio::load_mono_16k(&common::speech_dir().join("audio/librispeech_test_other/2414-128291-0008.wav")).unwrap();
    let at = |reduction: f64, rescue: bool| {
        let opts = coda_asr::transcribe::TranscribeOptions {
            encode: EncodeOptions { reduction },
            dense_rescue: rescue,
            whole_window_recheck: rescue,
            no_speech_threshold: Some(NO_SPEECH_THRESHOLD),
            ..Default::default()
        };
        t.transcribe(&audio, &opts, &mut |_| {}).unwrap()
    };
    let no_speech = |r: &coda_asr::transcribe::Transcript| r.segments.iter().map(|s| s.no_speech_prob).fold(0.0, f64::max);
    let dense = at(1.0, true);
    assert_eq!((dense.timings.dense_rechecks, dense.timings.whole_window_rechecks), (0, 0));
    assert!(no_speech(&dense) < NO_SPEECH_THRESHOLD as f64, "the dense reading is sure: {}", no_speech(&dense));
    // What the rescue is there for: r = 4 alone is in doubt (no-speech probability 0.47) and
    // takes the window for silence, so the words are lost.
    let alone = at(4.0, false);
    assert_eq!(alone.text, "");
    let rescued = at(4.0, true);
    assert_eq!((rescued.timings.dense_rechecks, rescued.timings.whole_window_rechecks), (1, 0));
    assert_eq!(rescued.text, dense.text);
    assert!(!rescued.text.is_empty());
    // The rescue costs one silence-cached dense encode on top of r = 4's (a whole window
    // would cost twelve times that one here).
    let extra = rescued.encoder.flops - alone.encoder.flops;
    assert!((extra / dense.encoder.flops - 1.0).abs() < 1e-6, "{extra} against {}", dense.encoder.flops);
}

#[test]
fn bench_times_every_stage_of_each_encode_it_compares() {
    let dir = coda_asr::model::resolve_model_dir("tiny.en").unwrap();
    let mut model = coda_asr::model::WhisperModel::load(&dir, &Device::Cpu).unwrap();
    model.attach_coda(&model.default_coda_dir().expect("models/coda-tiny.en is shipped")).unwrap();
    let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/LJ001-0001.wav");
    let audio = coda_asr::audio::load_mono_16k(&wav).unwrap();
    let opts = coda_asr::encoder_bench::BenchOptions { reductions: vec![4.0], repeats: 1, batch: 1 };
    let rows = coda_asr::encoder_bench::run(&model, "CoDA", common::tiny_en(), &audio, &opts).unwrap();
    let layers = model.config.encoder_layers;
    // Dense and CoDA r = 4, the padding encoded and cached.
    assert_eq!(rows.len(), 4);
    for row in &rows {
        // The stem, then each layer: parts of the one timed encode, so they fit inside it.
        assert_eq!(row.stage_ms.len(), 1 + layers, "{row:?}");
        assert!(row.stage_ms.iter().all(|&ms| ms > 0.0), "{row:?}");
        assert!(row.stage_ms.iter().sum::<f64>() <= row.ms_per_window, "{row:?}");
    }
    let cached = |encoder: &str| rows.iter().find(|r| r.encoder == encoder && r.padding == "cached").unwrap();
    assert!(cached("CoDA").gflop < cached("dense").gflop / 2.0);
    assert_eq!(cached("CoDA").heavy_frames, vec![267, 134, 134, 134]);
}
