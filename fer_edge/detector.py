"""Haar-cascade face detection on a small grey frame; boxes come back in full-frame pixels."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .config import DetectionConfig
from .errors import ConfigError, Unavailable

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
    """Downscale → grey → detectMultiScale, into buffers reused frame after frame."""

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
        self._frame_shape: tuple[int, ...] = ()
        self._small = self._grey = np.empty(0, np.uint8)
        self.scale = 1.0

    def _prepare(self, shape: tuple[int, ...]) -> None:
        height, width = shape[:2]
        det_width = min(self.cfg.width, width)
        det_height = max(1, round(height * det_width / width))
        self.scale = width / det_width
        self._small = np.empty((det_height, det_width, 3), np.uint8)
        self._grey = np.empty((det_height, det_width), np.uint8)
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
        """Faces in a BGR frame; `grey_small` (e.g. picamera2's lores Y plane) skips the resize."""
        if grey_small is not None:
            return self.detect_grey(grey_small, frame_bgr.shape[1] / grey_small.shape[1])
        return self.detect_grey(self.grey_for_detection(frame_bgr), self.scale)
