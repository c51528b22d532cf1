"""The hot path: searching near tracked faces instead of the whole frame, and decoding ahead.

Searching near a face is only allowed to be cheaper, never to lose a face a full scan finds;
these tests fail if it does. Real videos from ../shared; the bundled sample where enough.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fer_edge.config import Config, DetectionConfig
from fer_edge.detector import FaceDetector
from fer_edge.pipeline import Pipeline
from fer_edge.sources import Frame, Source, VideoFileSource, decode_all
from fer_edge.tracker import iou_matrix

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
SAMPLE = ROOT / "samples" / "sample_faces.mp4"
needs_shared = pytest.mark.skipif(not VIDEOS.is_dir(), reason="../shared videos are not present")


class ListSource(Source):
    def __init__(self, frames: list[np.ndarray], fps: float):
        self.frames, self.fps, self.name = frames, fps, "list"
        self.frame_size = (frames[0].shape[1], frames[0].shape[0])
        self._i = 0

    def read(self) -> Frame | None:
        if self._i >= len(self.frames):
            return None
        self._i += 1
        return Frame(self.frames[self._i - 1], self._i - 1, (self._i - 1) / self.fps, 0.0)


class FakeClassifier:
    """Stands in for the TFLite model: these tests are about boxes."""
    labels = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

    class info:
        input_channels = 1

    def predict(self, faces):
        return np.full((len(faces), 7), 1 / 7, np.float32)


def run_pipeline(frames, fps, every=1, **detection):
    cfg = Config()
    cfg.analysis.every = every
    for key, value in detection.items():
        setattr(cfg.detection, key, value)
    detector = FaceDetector(cfg.detection)
    found: dict[int, np.ndarray] = {}
    pipeline = Pipeline(cfg, ListSource(frames, fps), FakeClassifier(), detector,
                        on_analysis=lambda frame, faces: found.__setitem__(
                            frame.index, np.array([f.box for f in faces]).reshape(-1, 4)))
    pipeline.run()
    return found, detector


@needs_shared
@pytest.mark.parametrize("name", ["all_emo.mp4", "woman2.mp4", "ckplus_S501_001_anger.avi"])
def test_search_near_the_tracked_face_finds_it_in_every_frame_a_full_scan_does(name):
    frames, fps = decode_all(VIDEOS / name)
    detector = FaceDetector(DetectionConfig())
    # the margin the pipeline uses when it analyses every frame
    margin = min(detector.NEAR_MARGIN_MAX, detector.NEAR_MARGIN_MIN + detector.NEAR_MARGIN_PER_S / fps)
    tracked, compared, lost = None, 0, []
    for i, frame in enumerate(frames):
        full = detector.detect(frame)
        near = detector.detect_near(frame, tracked, margin) if tracked is not None else None
        if tracked is not None and len(full):
            compared += 1
            best = 0.0 if near is None else iou_matrix(near[None].astype(np.float32), full.astype(np.float32)).max()
            if best < 0.5:
                lost.append(i)
        tracked = near if near is not None else (full[0] if len(full) else None)
    assert compared >= 0.95 * len(frames)
    assert lost == [], f"the search near the tracked face lost it in frames {lost}"


@needs_shared
def test_pipeline_follows_the_face_with_few_full_scans_and_finds_it_in_every_frame():
    frames, fps = decode_all(VIDEOS / "all_emo.mp4")  # one face in every frame
    found, detector = run_pipeline(frames, fps, every=1)
    assert all(len(found[i]) == 1 for i in range(len(frames)))
    # one full scan per second of media (plus the first): the near search is what runs
    seconds = len(frames) / fps
    assert detector.full_scans <= math.ceil(seconds) + 2
    assert detector.near_searches >= len(frames) - detector.full_scans


@needs_shared
def test_a_face_that_comes_in_beside_a_tracked_one_is_found_at_the_next_full_scan():
    frames, fps = decode_all(VIDEOS / "all_emo.mp4")
    frames = frames[:100]
    arrives = 30
    # the same clip side by side; the right half shows its face only from frame `arrives` on
    wide = [np.hstack([f, f if i >= arrives else np.zeros_like(f)]) for i, f in enumerate(frames)]
    found, _ = run_pipeline(wide, fps, every=1, full_scan_seconds=1.0)
    right = [i for i in range(len(wide)) if any(x >= frames[0].shape[1] for x, *_ in found[i])]
    assert right, "the second face was never found"
    assert arrives <= right[0] <= arrives + math.ceil(fps)  # within one full-scan interval
    assert all(i in right for i in range(right[0], len(wide)))  # then followed in every frame
    assert all(len(found[i]) >= 1 for i in range(len(wide)))  # the first face all along


def test_a_face_that_leaves_is_dropped_not_held_by_the_near_search():
    frames, fps = decode_all(SAMPLE)  # the face is out of view from about frame 66 to 93
    found, detector = run_pipeline(frames, fps, every=1)
    assert not any(len(found[i]) for i in range(70, 90))
    assert any(len(found[i]) for i in range(0, 60)) and any(len(found[i]) for i in range(100, len(frames)))


def test_full_scan_every_analysis_when_asked():
    frames, fps = decode_all(SAMPLE)
    _, detector = run_pipeline(frames[:30], fps, every=1, full_scan_seconds=0.0)
    assert detector.full_scans == 30


def test_find_uses_no_full_scan_while_tracked_faces_are_found_and_drops_duplicates():
    frames, _ = decode_all(SAMPLE)
    detector = FaceDetector(DetectionConfig())
    first, scanned = detector.find(frames[0], None, [], full_scan=False)
    assert scanned and len(first) == 1 and detector.full_scans == 1
    # two tracks on the same face (e.g. one held through a miss): one face comes back
    again, scanned = detector.find(frames[1], None, [first[0], first[0] + [3, 2, 0, 0]], full_scan=False,
                                   elapsed=1 / 15)
    assert not scanned and detector.full_scans == 1 and len(again) == 1
    assert iou_matrix(again.astype(np.float32), first.astype(np.float32))[0, 0] > 0.6
    # a track where nothing is: a full scan instead, which finds the real face
    empty_corner = np.array([0, 0, 40, 40])
    boxes, scanned = detector.find(frames[1], None, [empty_corner], full_scan=False, elapsed=1 / 15)
    assert scanned and detector.full_scans == 2 and len(boxes) == 1


# --- decoding ahead ---------------------------------------------------------------------------
def test_file_source_decoding_ahead_gives_every_frame_in_order():
    expected, fps = decode_all(SAMPLE)
    with VideoFileSource(SAMPLE) as source:
        got = []
        while (frame := source.read()) is not None:
            got.append(frame)
        assert source.read() is None  # and stays at the end
    assert [f.index for f in got] == list(range(len(expected)))
    assert all(np.array_equal(f.image, e) for f, e in zip(got, expected))
    assert got[-1].timestamp == pytest.approx((len(expected) - 1) / fps)


def test_file_source_closes_mid_stream_without_hanging():
    source = VideoFileSource(SAMPLE, prefetch=2)
    assert source.read().index == 0
    source.close()  # the decoder thread is blocked on a full queue here
    assert not source._thread.is_alive()


def test_realtime_file_source_reads_on_the_caller_thread():
    with VideoFileSource(SAMPLE, realtime=True) as source:
        assert source._queue is None
        assert source.read().index == 0
