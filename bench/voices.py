"""Synthesis speed of the data.voices engines (a benchmark, not a test): real-time factor per engine, one thread.

Speaks ``--sentences`` corpus sentences (synth's sentence generator) with a few voices of each installed engine and
prints seconds of speech made, seconds taken and the real-time factor (taken / made; < 1 is faster than real time).
The first call of an engine (model load) is timed apart. An engine that is not installed is reported and skipped.

    OMP_NUM_THREADS=1 python bench/voices.py [--sentences 6]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from ghostvlad.data import voices
from ghostvlad.data.synth import SAMPLE_RATE
from ghostvlad.data.synth.words import sentence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=6)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    texts = [sentence(rng) for _ in range(args.sentences)]
    engines = {
        "mbrola": (voices.speak_mbrola, [voices.MbrolaVoice(n) for n in ("mb-us1", "mb-us2", "mb-en1", "mb-de4-en")]),
        "pico": (voices.speak_pico, [voices.PicoVoice(lang) for lang in ("en-US", "en-GB", "de-DE")]),
        "rhvoice": (voices.speak_rhvoice, [voices.RhvoiceVoice(n) for n in ("magda", "natan")]),
        "kokoro": (voices.speak_kokoro, [voices.KokoroVoice(((n, 1.0),)) for n in ("jf_alpha", "jm_kumo")]),
        "piper": (voices.speak_piper, [voices.PiperVoice(1.0), voices.PiperVoice(1.2)]),
    }
    for name, (speak, specs) in engines.items():
        try:
            start = time.perf_counter()
            speak(texts[0], specs[0])
            first = time.perf_counter() - start
        except voices.EngineUnavailable as e:
            print(f"{name:7s} unavailable: {e}")
            continue
        made, start = 0.0, time.perf_counter()
        for i, text in enumerate(texts):
            made += len(speak(text, specs[i % len(specs)])) / SAMPLE_RATE
        taken = time.perf_counter() - start
        print(f"{name:7s} first call {first:6.2f} s | {made:6.1f} s of speech in {taken:6.2f} s "
              f"| RTF {taken / made:.3f}")


if __name__ == "__main__":
    main()
