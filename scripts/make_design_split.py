#!/usr/bin/env python3
"""Split train.tsv into a training manifest and a held-out design set for CoDA experiments.

Every 8th clip of train.tsv is held out (32 clips). The design set is those clips as they are
plus a copy of each with pink noise mixed in at 5-15 dB SNR: clean LibriSpeech train clips are
so easy for the dense model (5 % WER) that encoder changes barely show on them. Choices are
made on the design set; dev.tsv is only measured, never tuned on.

Usage: scripts/make_design_split.py OUT_DIR   (writes train.tsv, design.tsv and noisy/*.wav)
"""
import os
import sys
import wave

import numpy as np

SPEECH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "speech")


def read_manifest(path):
    rows = [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8")]
    return rows[0], rows[1:]


def with_pink_noise(samples, rng):
    white = rng.standard_normal(len(samples))
    spectrum = np.fft.rfft(white)
    freq = np.arange(len(spectrum), dtype=np.float64)
    freq[0] = 1.0
    pink = np.fft.irfft(spectrum / np.sqrt(freq), len(samples))
    snr_db = rng.uniform(5.0, 15.0)
    speech_rms = np.sqrt(np.mean(samples**2))
    pink *= speech_rms / np.sqrt(np.mean(pink**2)) / 10 ** (snr_db / 20)
    return np.clip(samples + pink, -32768, 32767).astype(np.int16)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = os.path.abspath(sys.argv[1])
    speech = os.path.abspath(SPEECH)
    os.makedirs(os.path.join(out, "noisy"), exist_ok=True)
    header, rows = read_manifest(os.path.join(speech, "train.tsv"))
    for row in rows:
        row[1] = os.path.join(speech, row[1])
    held_out = rows[::8]
    kept = [r for i, r in enumerate(rows) if i % 8 != 0]
    rng = np.random.default_rng(11)
    noisy = []
    for row in held_out:
        with wave.open(row[1]) as w:
            rate = w.getframerate()
            samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float64)
        path = os.path.join(out, "noisy", row[0] + ".wav")
        with wave.open(path, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(with_pink_noise(samples, rng).tobytes())
        noisy.append([row[0] + "-noisy", path] + row[2:])
    for name, table in (("train.tsv", kept), ("design.tsv", held_out + noisy)):
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write("\t".join(header) + "\n")
            f.writelines("\t".join(r) + "\n" for r in table)
    print(f"{out}: train.tsv {len(kept)} clips, design.tsv {len(held_out)} clean + {len(noisy)} noisy")


if __name__ == "__main__":
    main()
