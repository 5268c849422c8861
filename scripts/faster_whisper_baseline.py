#!/usr/bin/env python3
"""Baseline for the speed and accuracy targets: faster-whisper on the same tiny.en weights.

Transcribes every clip of a manifest with faster-whisper (CTranslate2), greedy, no VAD, on
the CPU, and prints WER (Whisper's English normaliser) and wall time as JSON. Outside the test
suite; scripts/compare_faster_whisper.sh runs it next to `coda-asr eval` in the same run.

usage: faster_whisper_baseline.py MODEL_DIR MANIFEST [--compute-type int8] [--threads 2]
"""
import argparse, json, os, sys, time

def word_errors(ref, hyp):
    n, m = len(ref), len(hyp)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i][j] = min(d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]), d[i - 1][j] + 1, d[i][j - 1] + 1)
    return d[n][m]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("manifest")
    ap.add_argument("--compute-type", default="int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--beam-size", type=int, default=1)
    ap.add_argument("--normalizer-dir", required=True, help="openai-whisper's whisper/ folder (for its normaliser)")
    a = ap.parse_args()
    sys.path.insert(0, a.normalizer_dir)
    from normalizers import EnglishTextNormalizer
    from faster_whisper import WhisperModel
    norm = EnglishTextNormalizer()
    t_load = time.time()
    model = WhisperModel(a.model_dir, device="cpu", compute_type=a.compute_type, cpu_threads=a.threads)
    load_s = time.time() - t_load
    base = os.path.dirname(os.path.abspath(a.manifest))
    rows = [l.rstrip("\n").split("\t") for l in open(a.manifest)][1:]
    errors = words = 0
    audio_s = 0.0
    t0 = time.time()
    for row in rows:
        wav, ref = os.path.join(base, row[1]), row[3]
        segments, info = model.transcribe(wav, beam_size=a.beam_size, vad_filter=False, language="en")
        hyp = "".join(s.text for s in segments)
        audio_s += info.duration
        r, h = norm(ref).split(), norm(hyp).split()
        errors += word_errors(r, h)
        words += len(r)
    wall = time.time() - t0
    print(json.dumps({"engine": "faster-whisper", "compute_type": a.compute_type, "threads": a.threads,
                      "clips": len(rows), "wer": 100.0 * errors / words, "reference_words": words,
                      "wall_s": wall, "load_s": load_s, "audio_s": audio_s, "rtf": wall / audio_s}))

if __name__ == "__main__":
    main()
