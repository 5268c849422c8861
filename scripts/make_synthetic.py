#!/usr/bin/env python3
"""Synthesise English speech with espeak-ng for adapter training (distillation needs audio,
not transcripts, so synthetic speech can widen the 52 minutes of real training speech).

Sentences come from the Debian `fortunes` collection (prose entries of 6-60 words, nothing
from the dev or long-form references). Each clip gets a random English accent, voice variant,
rate, pitch and word gap, is resampled to 16 kHz mono 16-bit with sox, and is listed in
OUT/synthetic.tsv (the manifest layout of ../shared/speech, reference = the sentence).

Needs the Debian packages espeak-ng, sox and fortunes (`.ci/run` does not: this is for
training only).

Usage: scripts/make_synthetic.py --out .cache/synthetic --clips 600 --seed 1
"""

import argparse
import glob
import os
import random
import re
import subprocess
import wave

ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "Alex", "Andy", "david", "edward", "linda", "max", "Michael"]
FORTUNE_FILES = ["fortunes", "wisdom", "literature", "people", "humorists", "education", "science",
                 "work", "men-women", "love", "politics", "pets", "food", "sports", "miscellaneous",
                 "platitudes", "medicine", "law", "magic", "kids", "goedel", "startrek", "paradoxum"]


def sentences(fortune_dir):
    """Prose fortunes as single lines: attributions, dialogue layouts and code are dropped."""
    out = []
    for name in FORTUNE_FILES:
        path = os.path.join(fortune_dir, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            entries = f.read().split("\n%\n")
        for entry in entries:
            lines = [l.strip() for l in entry.strip().splitlines()]
            lines = [l for l in lines if l and not l.startswith("--") and not l.startswith("-- ")]
            text = " ".join(lines)
            text = re.sub(r"\s+", " ", text).strip()
            if not re.fullmatch(r"[A-Za-z0-9 ,.;:!?'\"()\-]+", text):
                continue
            if ":" in text[:20]:  # "Q: ... A: ...", "Name: ..." layouts
                continue
            words = len(text.split())
            if 6 <= words <= 60:
                out.append(text)
    return sorted(set(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--clips", type=int, default=600)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fortunes", default="/usr/share/games/fortunes")
    args = ap.parse_args()

    pool = sentences(args.fortunes)
    if len(pool) < args.clips:
        raise SystemExit(f"{args.fortunes}: only {len(pool)} usable sentences for {args.clips} clips (apt-get install fortunes)")
    rng = random.Random(args.seed)
    chosen = rng.sample(pool, args.clips)
    os.makedirs(os.path.join(args.out, "audio"), exist_ok=True)
    rows = []
    total = 0.0
    for i, text in enumerate(chosen):
        accent, variant = rng.choice(ACCENTS), rng.choice(VARIANTS)
        voice = f"{accent}+{variant}" if variant else accent
        rate, pitch, gap = rng.randint(130, 200), rng.randint(25, 75), rng.choice([0, 0, 0, 1, 2])
        raw = os.path.join(args.out, "audio", f"syn{i:04d}.raw.wav")
        wav = os.path.join(args.out, "audio", f"syn{i:04d}.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "-g", str(gap), "-w", raw, text], check=True)
        subprocess.run(["sox", raw, "-r", "16000", "-c", "1", "-b", "16", wav, "gain", "-n", "-3"], check=True)
        os.remove(raw)
        with wave.open(wav) as w:
            duration = w.getnframes() / w.getframerate()
        total += duration
        rows.append((f"syn{i:04d}", os.path.relpath(wav, args.out), f"{duration:.2f}", text, f"espeak-ng {voice} -s {rate} -p {pitch} -g {gap}"))
    with open(os.path.join(args.out, "synthetic.tsv"), "w") as f:
        f.write("id\twav\tduration_s\treference\tsource\n")
        for row in rows:
            f.write("\t".join(row) + "\n")
    print(f"{len(rows)} clips, {total / 60:.1f} min -> {os.path.join(args.out, 'synthetic.tsv')}")


if __name__ == "__main__":
    main()
