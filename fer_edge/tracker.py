"""Stable face ids across frames and smoothed probabilities, so labels do not flicker."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .records import FaceResult


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between boxes a (n, 4) and b (m, 4), as x, y, w, h."""
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, 0, None], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, 1, None], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return inter / np.maximum(union, 1)


@dataclass
class _Track:
    face_id: int
    box: np.ndarray
    probs: np.ndarray
    missed: int = 0


class FaceTracker:
    """Greedy IoU matching between analyses; exponential smoothing of each face's probabilities.

    A face that Haar misses on one analysis keeps its id (and its box on screen) for up to
    `max_missed` analyses, so one missed detection is neither a new person nor a blink on video.
    """

    def __init__(self, labels: tuple[str, ...], smoothing: float = 0.5, iou_threshold: float = 0.25,
                 max_missed: int = 2):
        self.labels = labels
        self.smoothing = smoothing
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self._tracks: list[_Track] = []
        self._next_id = 1

    def update(self, boxes: np.ndarray, probs: np.ndarray) -> list[FaceResult]:
        """Results for the faces detected now (one per box, in box order)."""
        matched_track = np.full(len(boxes), -1)
        if self._tracks and len(boxes):
            ious = iou_matrix(np.stack([t.box for t in self._tracks]).astype(np.float32), boxes.astype(np.float32))
            for _ in range(min(ious.shape)):
                t, b = np.unravel_index(np.argmax(ious), ious.shape)
                if ious[t, b] < self.iou_threshold:
                    break
                matched_track[b] = t
                ious[t, :] = -1
                ious[:, b] = -1
        seen = set()
        results = []
        for b, box in enumerate(boxes):
            t = matched_track[b]
            if t >= 0:
                track = self._tracks[t]
                track.probs = self.smoothing * track.probs + (1 - self.smoothing) * probs[b]
                track.box, track.missed = box, 0
            else:
                track = _Track(self._next_id, box, probs[b].astype(np.float32))
                self._next_id += 1
                self._tracks.append(track)
            seen.add(id(track))
            results.append(self._result(track))
        for track in self._tracks:
            if id(track) not in seen:
                track.missed += 1
        self._tracks = [t for t in self._tracks if t.missed <= self.max_missed]
        return results

    def visible(self) -> list[FaceResult]:
        """Every live track, detected now or held through a short miss: what the video shows."""
        return [self._result(t) for t in self._tracks]

    def _result(self, track: _Track) -> FaceResult:
        best = int(np.argmax(track.probs))
        x, y, w, h = (int(v) for v in track.box)
        return FaceResult(track.face_id, (x, y, w, h), track.probs, self.labels[best], float(track.probs[best]))
