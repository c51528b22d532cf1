"""Per-face latency of two or more .tflite models, interleaved in one process so they share the
machine's state: each round times every model back to back, and the ratio to the first model is
taken per round (a busy or drifting machine moves both sides of a ratio alike).

    python benchmarks/model_latency.py NEW.tflite OLD.tflite [--rounds 7] [--calls 300] [--threads 1]

Prints, per model, the median of per-round medians (ms per face) and the median per-round ratio
to the first model. The numbers are this machine's, not a Pi's: run it on the device to know.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fer_edge.runtime import EmotionClassifier  # noqa: E402


def one_round_ms(classifier: EmotionClassifier, face: np.ndarray, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        classifier.predict([face])
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    classifiers = [EmotionClassifier(m, num_threads=args.threads) for m in args.models]
    face = np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)  # resized per model
    for c in classifiers:  # warm-up: XNNPACK packs weights on the first invoke
        one_round_ms(c, face, 20)
    per_model: list[list[float]] = [[] for _ in classifiers]
    for _ in range(args.rounds):
        for i, c in enumerate(classifiers):
            per_model[i].append(one_round_ms(c, face, args.calls))
    first = per_model[0]
    print(f"{args.rounds} rounds x {args.calls} calls, {args.threads} thread(s), runtime {classifiers[0].runtime_name}")
    for path, times in zip(args.models, per_model):
        ratio = statistics.median(t / f for t, f in zip(times, first))
        print(f"{path.name:32s} {statistics.median(times):7.3f} ms/face  (min {min(times):.3f}, max {max(times):.3f})"
              f"  ratio to {args.models[0].name}: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
