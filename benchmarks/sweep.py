"""How detection settings trade speed for quality: the evidence behind the detection defaults.

    python benchmarks/sweep.py VIDEO [VIDEO ...] [--grid SECTION.KEY=V1,V2 ...] [--json]

For every combination of the --grid values and for both analysis modes (every frame, default
skipping), the real Pipeline runs in this process on the video's frames, decoded beforehand and
with no sinks, so only analysis is measured. Detection cost is CPU time of the main thread in
FaceDetector.find with OpenCV on one thread: work done, which a busy machine barely changes
(wall time on a shared 2-core machine does). Quality is measured as in benchmarks/pipeline.py,
against full-resolution Haar + the float Keras model (computed once per video by
benchmarks/contenders.py in a TensorFlow subprocess and cached).
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from fer_edge.config import load_config
from fer_edge.detector import FaceDetector
from fer_edge.pipeline import Pipeline
from fer_edge.resources import MINI_XCEPTION_MODEL, find_resource
from fer_edge.runtime import EmotionClassifier
from fer_edge.sources import Frame, Source, decode_all

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import quality  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_GRID = ["detection.scale_factor=1.1,1.2", "detection.min_neighbors=4,5"]


class ListSource(Source):
    """Frames decoded beforehand, handed out as a file source would (no sinks: nothing draws on them)."""

    def __init__(self, frames: list[np.ndarray], fps: float, name: str):
        self.frames, self.fps, self.name = frames, fps, name
        self.frame_size = (frames[0].shape[1], frames[0].shape[0])
        self._i = 0

    def read(self) -> Frame | None:
        if self._i >= len(self.frames):
            return None
        i, self._i = self._i, self._i + 1
        return Frame(self.frames[i], i, i / self.fps, time.time())


def reference_for(video: Path, cache: Path) -> dict:
    key = hashlib.sha1(f"{video.resolve()}:{video.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    path = cache / f"reference-{key}.json"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"sweep: reference for {video.name} (TensorFlow subprocess)", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, str(HERE / "contenders.py"), "reference", str(video), "--output", tmp,
                            "--result", str(path)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(path.read_text())


def run_once(frames, fps, name, overrides: dict, classifier: EmotionClassifier) -> dict:
    cfg = load_config(None, {**overrides, "video.enabled": False, "csv.enabled": False})
    detector = FaceDetector(cfg.detection)
    find, cpu = detector.find, [0.0]

    def timed_find(*a, **k):
        t = time.thread_time()
        try:
            return find(*a, **k)
        finally:
            cpu[0] += time.thread_time() - t
    detector.find = timed_find
    records, raw = [], []
    predict = classifier.predict

    def recording_predict(faces):
        raw.append(predict(faces))
        return raw[-1]
    classifier.predict = recording_predict
    pipeline = None

    def on_analysis(frame, detected):
        labels = [classifier.labels[int(p.argmax())] for p in raw.pop()]
        records.append([frame.index, [[*map(int, f.box), f.label] for f in detected],
                        [[*map(int, f.box), f.label] for f in pipeline.tracker.visible()], labels])
    try:
        pipeline = Pipeline(cfg, ListSource(frames, fps, name), classifier, detector, on_analysis=on_analysis)
        stats = pipeline.run()
    finally:
        classifier.predict = predict
    return {"detect_cpu_ms_per_frame": round(1000 * cpu[0] / stats.frames, 3),
            "detect_cpu_ms_per_analysis": round(1000 * cpu[0] / max(1, stats.analysed), 3),
            "analysed": stats.analysed, "full_scans": detector.full_scans, "near_searches": detector.near_searches,
            "records": records}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="+", type=Path)
    p.add_argument("--grid", action="append", metavar="SECTION.KEY=V1,V2",
                   help=f"values to combine (default: {' '.join(DEFAULT_GRID)})")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "fer-edge-sweep")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    cv2.setNumThreads(1)  # CPU time of one thread = the work; see the module docstring
    grid = [(k, v.split(",")) for k, _, v in (g.partition("=") for g in (args.grid or DEFAULT_GRID))]
    classifier = EmotionClassifier(find_resource(MINI_XCEPTION_MODEL), num_threads=1)
    rows = []
    for video in args.videos:
        ref = reference_for(video, args.cache)
        frames, fps = decode_all(video)
        for values in itertools.product(*[vals for _, vals in grid]):
            setting = dict(zip([k for k, _ in grid], values))
            for mode, every in (("every frame", 1), ("default", None)):
                overrides = dict(setting)
                if every is not None:
                    overrides["analysis.every"] = every
                r = run_once(frames, fps, video.name, overrides, classifier)
                q = quality(r.pop("records"), ref)
                row = {"video": video.name, "mode": mode, **setting, **r,
                       "frame_recall": q["frame_recall"], "emotion_agreement": q["emotion_agreement"],
                       "logged_emotion_agreement": q["logged_emotion_agreement"]}
                rows.append(row)
                if not args.json:
                    print(" | ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
