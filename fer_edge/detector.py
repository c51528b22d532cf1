"""Haar-cascade face detection on a small grey frame; boxes come back in full-frame pixels."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .config import DetectionConfig
from .errors import ConfigError, Unavailable
from .tracker import iou_matrix

CASCADE_NAME = "haarcascade_frontalface_default.xml"
# pip wheels ship cv2.data; Raspberry Pi OS / Debian put the files here (opencv-data).
CASCADE_DIRS = ("/usr/share/opencv4/haarcascades", "/usr/share/opencv/haarcascades",
                "/usr/local/share/opencv4/haarcascades")


def find_cascade(explicit: str = "") -> Path:
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"detection.cascade {path} not found; give an existing Haar cascade XML "
                              "or leave it empty for the default")
        return path
    dirs = []
    data = getattr(cv2, "data", None)
    if data is not None and getattr(data, "haarcascades", None):
        dirs.append(data.haarcascades)
    dirs += CASCADE_DIRS
    for folder in dirs:
        candidate = Path(folder) / CASCADE_NAME
        if candidate.is_file():
            return candidate
    raise Unavailable(f"{CASCADE_NAME} not found in {', '.join(dirs)}; install opencv-python-headless<5 "
                      "(OpenCV 5 dropped Haar cascades) or apt install opencv-data")


class FaceDetector:
    """Haar faces, found two ways.

    A full scan runs on a small grey frame (`detection.width` wide): it finds faces anywhere.
    A search near a known face runs on the full-resolution pixels around it, with the window
    sizes limited to that face's size: two or three pyramid levels of a small region, 5-8x
    cheaper than a full scan, and its boxes are the ones a full-resolution detector draws (the
    crops the classifier sees do not depend on the detection width). `find` combines them: near
    the tracked faces while they keep being found, a full scan when one is lost or one is due.
    """

    # A tracked face is searched for in its box grown on each side by a fraction of its size that
    # grows with the media time since it was found (a head moving up to about one face width per
    # second stays inside), at sizes within NEAR_SIZE_RANGE of its own. A face that moved further
    # is not found there, and `find` falls back to a full scan: slower, never wrong.
    NEAR_MARGIN_MIN = 0.15
    NEAR_MARGIN_PER_S = 1.0
    NEAR_MARGIN_MAX = 0.5
    NEAR_SIZE_RANGE = 1.2
    REFINE_MARGIN = 0.2  # a full scan's box is from this very frame: only its coarse pixels to allow for

    def __init__(self, cfg: DetectionConfig):
        if not hasattr(cv2, "CascadeClassifier"):
            raise Unavailable(f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 removed it); "
                              "install opencv-python-headless>=4.8,<5")
        self.cascade_path = find_cascade(cfg.cascade)
        self._cascade = cv2.CascadeClassifier(str(self.cascade_path))
        if self._cascade.empty():
            raise ConfigError(f"detection.cascade {self.cascade_path} is not a valid Haar cascade XML")
        self.cfg = cfg
        self._min_size = (cfg.min_size, cfg.min_size)
        # Near a tracked face, one detection fewer is enough: with two or three pyramid levels
        # instead of all of them a face gathers fewer overlapping hits (woman2.mp4 lost it in 6
        # frames with the full scan's threshold), and a face was there a moment ago.
        self._near_neighbors = max(min(cfg.min_neighbors, 1), cfg.min_neighbors - 1)
        self._window = max(1, int(self._cascade.getOriginalWindowSize()[0]))  # 24 for the default cascade
        self._frame_shape: tuple[int, ...] = ()
        self._small = self._grey = self._near_grey = np.empty(0, np.uint8)
        self.scale = 1.0
        self.full_scans = self.near_searches = 0  # counters for `fer-edge bench`

    def _prepare(self, shape: tuple[int, ...]) -> None:
        height, width = shape[:2]
        det_width = min(self.cfg.width, width)
        det_height = max(1, round(height * det_width / width))
        self.scale = width / det_width
        self._small = np.empty((det_height, det_width, 3), np.uint8)
        self._grey = np.empty((det_height, det_width), np.uint8)
        self._near_grey = np.empty(height * width, np.uint8)  # flat: any region's grey is a view of it
        self._frame_shape = shape

    def grey_for_detection(self, frame_bgr: np.ndarray) -> np.ndarray:
        """Resize first, then convert: colour conversion on a quarter of the pixels."""
        if frame_bgr.shape != self._frame_shape:
            self._prepare(frame_bgr.shape)
        if self.scale == 1.0:
            return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY, dst=self._grey)
        cv2.resize(frame_bgr, (self._grey.shape[1], self._grey.shape[0]), dst=self._small,
                   interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(self._small, cv2.COLOR_BGR2GRAY, dst=self._grey)

    def detect_grey(self, grey: np.ndarray, scale: float) -> np.ndarray:
        """Boxes (n, 4) int32 x, y, w, h, multiplied by `scale` into full-frame pixels."""
        found = self._cascade.detectMultiScale(grey, scaleFactor=self.cfg.scale_factor,
                                               minNeighbors=self.cfg.min_neighbors, minSize=self._min_size)
        if len(found) == 0:
            return np.empty((0, 4), np.int32)
        return np.round(np.asarray(found, np.float32) * scale).astype(np.int32)

    def detect(self, frame_bgr: np.ndarray, grey_small: np.ndarray | None = None) -> np.ndarray:
        """Full scan: faces anywhere in a BGR frame; `grey_small` (e.g. picamera2's lores Y plane)
        skips the resize."""
        self.full_scans += 1
        if grey_small is not None:
            return self.detect_grey(grey_small, frame_bgr.shape[1] / grey_small.shape[1])
        return self.detect_grey(self.grey_for_detection(frame_bgr), self.scale)

    def detect_near(self, frame_bgr: np.ndarray, box, margin: float) -> np.ndarray | None:
        """The face near `box` (x, y, w, h, full-frame pixels), searched at full resolution in the
        box grown by `margin`, at sizes within NEAR_SIZE_RANGE of its own; None if none is there."""
        if frame_bgr.shape != self._frame_shape:
            self._prepare(frame_bgr.shape)
        self.near_searches += 1
        height, width = frame_bgr.shape[:2]
        x, y, w, h = (int(v) for v in box)
        dx, dy = int(w * margin), int(h * margin)
        x0, y0 = max(0, x - dx), max(0, y - dy)
        x1, y1 = min(width, x + w + dx), min(height, y + h + dy)
        if x1 - x0 < self._window or y1 - y0 < self._window:
            return None
        grey = self._near_grey[:(y1 - y0) * (x1 - x0)].reshape(y1 - y0, x1 - x0)
        cv2.cvtColor(frame_bgr[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY, dst=grey)
        side = max(w, h)
        smallest = max(self._window, int(side / self.NEAR_SIZE_RANGE))
        largest = max(smallest + 1, int(side * self.NEAR_SIZE_RANGE) + 1)
        found = self._cascade.detectMultiScale(grey, scaleFactor=self.cfg.scale_factor,
                                               minNeighbors=self._near_neighbors,
                                               minSize=(smallest, smallest), maxSize=(largest, largest))
        if len(found) == 0:
            return None
        found = np.asarray(found, np.int32).reshape(-1, 4)
        found[:, 0] += x0
        found[:, 1] += y0
        if len(found) > 1:  # more than one candidate: the one that overlaps the face we follow most
            found = found[int(iou_matrix(np.asarray([box], np.float32), found.astype(np.float32))[0].argmax())][None]
        return found[0]

    def find(self, frame_bgr: np.ndarray, grey_small: np.ndarray | None, tracked: Sequence,
             full_scan: bool, elapsed: float = 0.0) -> tuple[np.ndarray, bool]:
        """Faces in the frame, and whether the whole frame was scanned.

        Each `tracked` box (found `elapsed` seconds of media time ago) is searched for near where
        it was. If all are found and no `full_scan` is asked for, that is the answer. Otherwise
        (no tracks, a scan due, or a tracked face not found near its place: it moved fast,
        turned or left) the whole frame is scanned too, and each face the near search does not
        already have is searched again near itself at full resolution, so every box comes from
        the same full-resolution detector whichever way it was found.
        """
        found: list[np.ndarray] = []
        if tracked:
            margin = min(self.NEAR_MARGIN_MAX, self.NEAR_MARGIN_MIN + self.NEAR_MARGIN_PER_S * elapsed)
            found = [b for b in (self.detect_near(frame_bgr, box, margin) for box in tracked) if b is not None]
            if not full_scan and len(found) == len(tracked):
                return _distinct(np.stack(found)), False
        coarse = self.detect(frame_bgr, grey_small)
        if found and len(coarse):
            known = iou_matrix(coarse.astype(np.float32), np.stack(found).astype(np.float32)).max(1)
            coarse = coarse[known < 0.3]
        for box in coarse:
            fine = self.detect_near(frame_bgr, box, self.REFINE_MARGIN)
            found.append(box if fine is None else fine)
        return (_distinct(np.stack(found)) if found else np.empty((0, 4), np.int32)), True


def _distinct(boxes: np.ndarray, overlap: float = 0.5) -> np.ndarray:
    """Boxes with near-duplicates removed (two tracked faces' searches can find the same face)."""
    if len(boxes) < 2:
        return boxes
    ious = iou_matrix(boxes.astype(np.float32), boxes.astype(np.float32))
    keep = [i for i in range(len(boxes)) if not (ious[i, :i] > overlap).any()]
    return boxes[keep]
