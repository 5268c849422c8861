#!/usr/bin/env bash
# Prepare the GPU check (scripts/gpu_check.sh) for the `device` tool, whose calls carry at most
# 64 MiB: tiny.en's weights alone are 73 MB, so the files go in two loads.
#   .gpu/a: the first 56 MiB of model.safetensors                     (first call stages it)
#   .gpu/b: the rest of the weights, config, tokenizer, adapters, the CUDA binary (xz),
#           dev.tsv's audio as FLAC and scripts/gpu_check.sh's inputs  (second call runs the check)
# Then, with the device tool (both paths are ignored by git; .gpu/ is in .gitignore):
#   run(command="mkdir -p /tmp/stage && cp .gpu/a/* /tmp/stage/", carry=[".gpu/a"])
#   run(command="bash scripts/gpu_check.sh", carry=[".gpu/b"], timeout_s=540)
# BIN=path overrides the binary (default target-cuda/release/coda-asr from scripts/build_cuda.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target-cuda/release/coda-asr}
SPEECH=${CODA_ASR_SPEECH:-../shared/speech}
[ -x "$BIN" ] || { echo "no $BIN: run scripts/build_cuda.sh first" >&2; exit 1; }
rm -rf .gpu && mkdir -p .gpu/a .gpu/b/models/tiny.en .gpu/b/speech/audio
head -c $((56 * 1024 * 1024)) models/tiny.en/model.safetensors > .gpu/a/model.part1
tail -c +$((56 * 1024 * 1024 + 1)) models/tiny.en/model.safetensors > .gpu/b/model.part2
sha256sum models/tiny.en/model.safetensors | cut -d' ' -f1 > .gpu/b/model.sha256
cp models/tiny.en/config.json models/tiny.en/tokenizer.json .gpu/b/models/tiny.en/
cp -r models/coda-tiny.en .gpu/b/models/
xz -T2 -6 -c "$BIN" > .gpu/b/coda-asr.xz
# dev.tsv with its audio as FLAC (read through symphonia), paths relative to the manifest.
head -1 "$SPEECH/dev.tsv" > .gpu/b/speech/dev.tsv
tail -n +2 "$SPEECH/dev.tsv" | while IFS=$'\t' read -r id wav rest; do
  sox "$SPEECH/$wav" ".gpu/b/speech/audio/$id.flac"
  printf '%s\taudio/%s.flac\t%s\n' "$id" "$id" "$rest" >> .gpu/b/speech/dev.tsv
done
du -sh .gpu/a .gpu/b
