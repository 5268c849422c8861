#!/usr/bin/env bash
# The GPU check of coda-asr, in one call on a lent GPU machine (see scripts/gpu_pack.sh for the
# two loads and the device-tool calls). Writes $OUT/report.json and the raw reports beside it.
#   1. nvidia-smi
#   2. parity: transcripts of 10 dev clips on the CPU (float32) and the GPU must match;
#      the dense encoder's output, GPU vs CPU float32, max |difference|
#   3. encoder ms per 30 s window, dense and CoDA r = 2, 4, 8, batch 1 and 8 (float16)
#   4. all of dev.tsv on the GPU: WER and wall time, float16 and float32, dense and CoDA r = 2
# DEVICE=cpu DEV_CLIPS=5 runs the same flow on the CPU on 5 clips (to check the script itself).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
DEVICE=${DEVICE:-cuda}
STAGE=${STAGE:-/tmp/stage}
mkdir -p "$OUT" "$STAGE"
cp -r .gpu/b/. "$STAGE/"
cat "$STAGE/model.part1" "$STAGE/model.part2" > "$STAGE/models/tiny.en/model.safetensors"
if [ "$(sha256sum "$STAGE/models/tiny.en/model.safetensors" | cut -d' ' -f1)" != "$(cat "$STAGE/model.sha256")" ]; then
  echo "model.safetensors does not match its sha256: was .gpu/a staged in the same machine?" >&2; exit 1
fi
xz -dc "$STAGE/coda-asr.xz" > "$STAGE/coda-asr" && chmod +x "$STAGE/coda-asr"
BIN="$STAGE/coda-asr"
export CODA_ASR_MODELS="$STAGE/models"
# The CUDA 13 libraries (cuBLAS, cuRAND, NVRTC, runtime) that this machine's PyTorch ships.
SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || true)
for d in "$SITE"/nvidia/*/lib "$SITE"/nvidia/cu13/lib; do [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; done
export LD_LIBRARY_PATH
nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt"
M="$STAGE/speech"
head -11 "$M/dev.tsv" > "$M/dev10.tsv"
if [ -n "${DEV_CLIPS:-}" ]; then head -n $((DEV_CLIPS + 1)) "$M/dev.tsv" > "$M/dev_part.tsv"; mv "$M/dev_part.tsv" "$M/dev.tsv"; fi
run() { echo "+ $*"; /usr/bin/time -f '%e s wall' "$@"; }
run "$BIN" eval --device cpu --dense --manifest "$M/dev10.tsv" --json "$OUT/parity_cpu.json" > /dev/null
run "$BIN" eval --device "$DEVICE" --dtype f32 --dense --manifest "$M/dev10.tsv" --json "$OUT/parity_gpu.json" > /dev/null
run "$BIN" bench --device "$DEVICE" --audio "$M/audio/$(sed -n 2p "$M/dev.tsv" | cut -f1).flac" --reductions 2,4,8 --batch 8 --parity --json "$OUT/bench.json"
for cfg in "f16 --dense" "f32 --dense" "f16 --reduction 2"; do
  set -- $cfg
  name="dev_$1_$(echo "${*:2}" | tr -d ' -')"
  run "$BIN" eval --device "$DEVICE" --dtype "$@" --manifest "$M/dev.tsv" --json "$OUT/$name.json" > /dev/null
done
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
load = lambda n: json.load(open(os.path.join(out, n))) if os.path.exists(os.path.join(out, n)) else None
cpu, gpu = load("parity_cpu.json"), load("parity_gpu.json")
clips = lambda r: {c["id"]: c.get("hypothesis", c.get("text")) for c in r["clips"]} if r else {}
a, b = clips(cpu), clips(gpu)
report = {
    "gpu": open(os.path.join(out, "nvidia-smi.txt")).read().splitlines()[:12],
    "parity_transcripts_equal": sum(a[k] == b.get(k) for k in a), "parity_clips": len(a),
    "parity_differences": {k: [a[k], b.get(k)] for k in a if a[k] != b.get(k)},
    "bench": load("bench.json"),
    "dev": {n[4:-5]: {k: load(n)["summary"].get(k) for k in ("wer", "wall_s", "rtf", "encoder_ms_per_window", "decoder_ms_per_token")}
            for n in sorted(os.listdir(out)) if n.startswith("dev_") and n.endswith(".json")},
}
json.dump(report, open(os.path.join(out, "report.json"), "w"), indent=1)
print(json.dumps(report, indent=1)[:6000])
PY
