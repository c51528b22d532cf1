"""What `video.blur_faces` costs: drawing a frame with and without the faces hidden.

    python benchmarks/blur.py [--rounds N] [--json]

A 640x480 frame of the bundled sample with one face of 80, 150 or 250 pixels; each variant
(no blur, blur, pixelate) draws it 1000 times per round, the variants interleaved over rounds;
the figures are medians, in milliseconds a frame. The difference to "none" is the blur's cost.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from fer_edge.annotate import Annotator
from fer_edge.labels import EMOTIONS
from fer_edge.records import FaceResult

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample_faces.mp4"
STYLES = {"none": None, "blur": "blur", "pixelate": "pixelate"}
FACE_SIZES = (80, 150, 250)


def ms_per_frame(annotator: Annotator, frame: np.ndarray, faces: list[FaceResult], n: int = 1000) -> float:
    image = frame.copy()
    started = time.perf_counter()
    for _ in range(n):
        image[:] = frame  # a fresh frame each time, as the loop draws each frame once
        annotator.draw(image, faces, 15.0)
    spent = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(n):
        image[:] = frame
    return 1000 * (spent - (time.perf_counter() - started)) / n  # less the copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    ok, frame = cv2.VideoCapture(str(SAMPLE)).read()
    assert ok, SAMPLE
    frame = cv2.resize(frame, (640, 480))
    probs = np.full(len(EMOTIONS), 1 / len(EMOTIONS), np.float32)
    annotators = {name: Annotator(EMOTIONS, blur=style) for name, style in STYLES.items()}
    times: dict[tuple[int, str], list[float]] = {}
    for _ in range(opts.rounds):
        for size in FACE_SIZES:
            faces = [FaceResult(1, (200, 100, size, size), probs, "happy", 0.5)]
            for name, annotator in annotators.items():
                times.setdefault((size, name), []).append(ms_per_frame(annotator, frame, faces))
    table = {f"{size} px": {name: round(statistics.median(times[size, name]), 4) for name in STYLES}
             for size in FACE_SIZES}
    if opts.json:
        print(json.dumps(table, indent=2))
        return
    print("| face | none (ms) | blur (ms) | pixelate (ms) | blur costs (ms) |")
    print("|---|---:|---:|---:|---:|")
    for face, row in table.items():
        print(f"| {face} | {row['none']:.3f} | {row['blur']:.3f} | {row['pixelate']:.3f} | "
              f"{row['blur'] - row['none']:.3f} |")


if __name__ == "__main__":
    main()
