#!/usr/bin/env bash
# CoDA benchmark in one run on one machine: dense (whole padded windows, as openai/whisper),
# dense with silence caching (the default), CoDA at r = 2, 3, 4, 8 (silence caching), and the
# training-free baselines (grid routing without adapters at r = 2 and 4, top-k by norm at r = 4,
# audio_ctx), each scored by `coda-asr eval`
# on the same manifest; then the side-by-side table and the encoder micro-benchmark.
# usage: scripts/bench_coda.sh [MANIFEST]   (reports in .cache/bench/)
set -euo pipefail
cd "$(dirname "$0")/.."
MANIFEST=${1:-../shared/speech/dev.tsv}
OUT=${OUT_DIR:-$(pwd)/.cache/bench}
mkdir -p "$OUT"
cargo build --release --quiet
BIN=./target/release/coda-asr
$BIN eval --manifest "$MANIFEST" --dense --full-window --json "$OUT/dense-full.json" --label "dense, full windows" >/dev/null
$BIN eval --manifest "$MANIFEST" --dense --json "$OUT/dense.json" --label "dense, silence cache" >/dev/null
for r in 2 3 4 8; do
  $BIN eval --manifest "$MANIFEST" --reduction $r --json "$OUT/coda-r$r.json" --label "CoDA r=$r" >/dev/null
done
for r in 2 4; do
  $BIN eval --manifest "$MANIFEST" --baseline grid --reduction $r --json "$OUT/grid-r$r.json" --label "grid, no adapters r=$r" >/dev/null
done
# Training-free top-k collapses: greedy decoding loops to the token limit at every fallback
# temperature, so a full run takes over 15 minutes here; it is scored greedy-only on the
# first 20 clips.
$BIN eval --manifest "$MANIFEST" --baseline topk-norm --reduction 4 --no-fallback --limit 20 --json "$OUT/topk-norm-r4.json" --label "top-k norm r=4 (20 clips, greedy)" >/dev/null || true
$BIN eval --manifest "$MANIFEST" --baseline audio-ctx --json "$OUT/audio-ctx.json" --label "audio_ctx" >/dev/null
$BIN eval --compare "$OUT/dense-full.json" "$OUT/dense.json" "$OUT/coda-r2.json" "$OUT/coda-r3.json" "$OUT/coda-r4.json" "$OUT/coda-r8.json" "$OUT/grid-r2.json" "$OUT/grid-r4.json" "$OUT/topk-norm-r4.json" "$OUT/audio-ctx.json"
echo
$BIN bench --reductions 2,3,4,8
