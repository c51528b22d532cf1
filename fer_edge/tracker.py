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


def match_scores(a: np.ndarray, b: np.ndarray, iou_threshold: float, max_shift: float,
                 max_scale: float) -> np.ndarray:
    """How well track boxes a (n, 4) match detections b (m, 4); 0: no match.

    Overlapping boxes (IoU at least `iou_threshold`) score 1 + IoU. Boxes that overlap less, as a
    face that moved quickly between two analyses does, still match when their centres are at most
    `max_shift` times the face's size apart and their sizes differ by at most `max_scale`: they
    score under 1, nearer higher, so overlap always wins first.
    """
    ious = iou_matrix(a, b)
    ca, cb = a[:, :2] + a[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2
    side_a, side_b = np.sqrt(a[:, 2] * a[:, 3]), np.sqrt(b[:, 2] * b[:, 3])
    size = (side_a[:, None] + side_b[None]) / 2
    shift = np.linalg.norm(ca[:, None] - cb[None], axis=2) / np.maximum(size, 1)
    scale = np.maximum(side_a[:, None], side_b[None]) / np.maximum(np.minimum(side_a[:, None], side_b[None]), 1)
    near = (shift <= max_shift) & (scale <= max_scale)
    return np.where(ious >= iou_threshold, 1 + ious, np.where(near, 1 - shift / (2 * max_shift), 0.0))


class FaceTracker:
    """Greedy matching between analyses (by overlap, else by nearness for a face that moved fast);
    exponential smoothing of each face's probabilities.

    A face that Haar misses on one analysis keeps its id (and its box on screen) for up to
    `max_missed` analyses, so one missed detection is neither a new person nor a blink on video.
    A held box is no longer shown once a face found now overlaps it: that face took its place,
    and two boxes over one face would be a ghost.
    """

    def __init__(self, labels: tuple[str, ...], smoothing: float = 0.5, iou_threshold: float = 0.25,
                 max_missed: int = 2, max_shift: float = 1.0, max_scale: float = 1.5):
        self.labels = labels
        self.smoothing = smoothing
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.max_shift, self.max_scale = max_shift, max_scale
        self._tracks: list[_Track] = []
        self._next_id = 1

    def update(self, boxes: np.ndarray, probs: np.ndarray) -> list[FaceResult]:
        """Results for the faces detected now (one per box, in box order)."""
        matched_track = np.full(len(boxes), -1)
        if self._tracks and len(boxes):
            scores = match_scores(np.stack([t.box for t in self._tracks]).astype(np.float32),
                                  boxes.astype(np.float32), self.iou_threshold, self.max_shift, self.max_scale)
            for _ in range(min(scores.shape)):
                t, b = np.unravel_index(np.argmax(scores), scores.shape)
                if scores[t, b] <= 0:
                    break
                matched_track[b] = t
                scores[t, :] = 0
                scores[:, b] = 0
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
        """What the video shows: every face found now, and the faces held through a short miss
        that no face found now overlaps."""
        found = [t for t in self._tracks if not t.missed]
        held = [t for t in self._tracks if t.missed]
        if found and held:
            overlap = iou_matrix(np.stack([t.box for t in held]).astype(np.float32),
                                 np.stack([t.box for t in found]).astype(np.float32)) > 0
            held = [t for t, hit in zip(held, overlap.any(axis=1)) if not hit]
        shown = {id(t) for t in held}
        return [self._result(t) for t in self._tracks if not t.missed or id(t) in shown]

    def _result(self, track: _Track) -> FaceResult:
        best = int(np.argmax(track.probs))
        x, y, w, h = (int(v) for v in track.box)
        return FaceResult(track.face_id, (x, y, w, h), track.probs, self.labels[best], float(track.probs[best]))
