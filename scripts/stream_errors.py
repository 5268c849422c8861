#!/usr/bin/env python3
"""Where streaming lost words that batch transcription got right.

`coda-asr stream-bench --json REPORT` stores, per replay, the streamed finals and the batch
transcript of the same file at the same offset. This aligns both with the reference (after the
project's own scoring normaliser, `examples/normalize.rs`) and prints every stretch of reference
words that streaming got wrong and batch got right, with both readings under it. A stretch of
`_` (deleted words) is a policy loss (a skipped phrase, a bad cut); single changed words are
misreadings of a pass.

Usage:
  cargo build --release --example normalize
  scripts/stream_errors.py REPORT.json MANIFEST.tsv
"""

import csv
import json
import os
import subprocess
import sys

NORMALIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "examples", "normalize")


def normalized_words(lines):
    if not os.path.exists(NORMALIZER):
        sys.exit(f"{NORMALIZER} is missing: run `cargo build --release --example normalize` first")
    out = subprocess.run([NORMALIZER], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True).stdout
    return [line.split() for line in out.split("\n")[: len(lines)]]


def align(ref, hyp):
    """Levenshtein alignment. Returns, per reference word, whether the hypothesis has it right
    (no insertion before it either) and the hypothesis words aligned to it (insertions marked
    `+`, deletions `_`), and the edit distance."""
    n, m = len(ref), len(hyp)
    dist = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        dist[i][0] = i
    for j in range(m + 1):
        dist[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            dist[i][j] = min(dist[i - 1][j] + 1, dist[i][j - 1] + 1, dist[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]))
    right, inserted, shown = [False] * n, [False] * (n + 1), [""] * (n + 1)
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and dist[i][j] == dist[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            right[i - 1] = ref[i - 1] == hyp[j - 1]
            shown[i - 1] = hyp[j - 1] + " " + shown[i - 1]
            i, j = i - 1, j - 1
        elif i > 0 and dist[i][j] == dist[i - 1][j] + 1:
            shown[i - 1] = "_ " + shown[i - 1]
            i -= 1
        else:
            inserted[i] = True
            shown[max(i - 1, 0)] += "+" + hyp[j - 1] + " "
            j -= 1
    ok = [right[i] and not inserted[i] for i in range(n)]
    return ok, shown, dist[n][m]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    report = json.load(open(sys.argv[1]))
    with open(sys.argv[2], newline="") as f:
        references = {row["id"]: row["reference"] for row in csv.DictReader(f, delimiter="\t")}
    batch = {(b["id"], b["offset_ms"]): b["text"] for b in report["batch"]}
    total_stream = total_batch = total_words = stretches = 0
    for replay in report["replays"]:
        key = (replay["file"], replay["offset_ms"])
        ref, streamed, batched = normalized_words([references[key[0]], replay["finals"], batch[key]])
        stream_ok, stream_shown, stream_errors = align(ref, streamed)
        batch_ok, batch_shown, batch_errors = align(ref, batched)
        total_stream, total_batch, total_words = total_stream + stream_errors, total_batch + batch_errors, total_words + len(ref)
        print(f"== {key[0]} at {key[1]:g} ms: streaming {stream_errors} errors, batch {batch_errors}, {len(ref)} reference words")
        i = 0
        while i < len(ref):
            if stream_ok[i] or not batch_ok[i]:
                i += 1
                continue
            end = i
            while end < len(ref) and not stream_ok[end]:
                end += 1
            lo, hi = max(0, i - 3), min(len(ref), end + 2)
            print(f"  at word {i}: reference  {' '.join(ref[lo:hi])}")
            print(f"              streaming  {''.join(stream_shown[lo:hi])}")
            print(f"              batch      {''.join(batch_shown[lo:hi])}")
            stretches += 1
            i = end
    print(
        f"total: streaming {total_stream} errors, batch {total_batch}, of {total_words} reference words; "
        f"{stretches} stretches streaming got wrong and batch right"
    )


if __name__ == "__main__":
    main()
