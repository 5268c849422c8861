#!/usr/bin/env python3
"""Build long-form test files from a clip manifest, for tuning the streaming recogniser on
training data (never on the long-form files it is judged on).

Concatenates randomly chosen clips of MANIFEST, each with its own leading and trailing
silence, into files of about --seconds, and writes OUT/longform.tsv and OUT/segments.json in
the layout of ../shared/speech/longform.tsv and segments.json, so that
`coda-asr stream-bench --manifest OUT/longform.tsv --segments OUT/segments.json` runs on them.

Usage: scripts/make_longform.py --manifest ../shared/speech/train.tsv --out .cache/train-longform
"""

import argparse
import csv
import json
import os
import random
import wave


def read_manifest(path):
    base = os.path.dirname(os.path.abspath(path))
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for row in rows:
        row["path"] = row["wav"] if os.path.isabs(row["wav"]) else os.path.join(base, row["wav"])
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    rows = read_manifest(args.manifest)
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    os.makedirs(args.out, exist_ok=True)
    manifest_lines = ["id\twav\tduration_s\treference"]
    segments = {}
    cursor = 0
    for n in range(args.files):
        file_id = f"train_longform_{n}"
        wav_path = os.path.join(args.out, f"{file_id}.wav")
        frames, utterances, t = [], [], 0.0
        while t < args.seconds and cursor < len(rows):
            row = rows[cursor]
            cursor += 1
            with wave.open(row["path"], "rb") as w:
                if w.getframerate() != 16000 or w.getnchannels() != 1 or w.getsampwidth() != 2:
                    continue
                data = w.readframes(w.getnframes())
            duration = len(data) / 2 / 16000
            utterances.append({"id": row["id"], "start_s": round(t, 3), "end_s": round(t + duration, 3), "reference": row["reference"]})
            frames.append(data)
            t += duration
        with wave.open(wav_path, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(b"".join(frames))
        reference = " ".join(u["reference"] for u in utterances)
        manifest_lines.append(f"{file_id}\t{os.path.abspath(wav_path)}\t{t:.3f}\t{reference}")
        segments[file_id] = utterances
    with open(os.path.join(args.out, "longform.tsv"), "w") as f:
        f.write("\n".join(manifest_lines) + "\n")
    with open(os.path.join(args.out, "segments.json"), "w") as f:
        json.dump(segments, f, indent=1)
    print(f"wrote {args.files} files and their segments to {args.out}")


if __name__ == "__main__":
    main()
