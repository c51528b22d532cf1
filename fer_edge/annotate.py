"""Drawing results onto frames: faces blurred (video.blur_faces), then box, label + confidence,
per-emotion bars, frame rate."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .records import FaceResult

FONT = cv2.FONT_HERSHEY_SIMPLEX
# BGR; one fixed colour per emotion so a glance at a recording reads the same every day.
COLOURS = {
    "angry": (40, 40, 230), "disgust": (40, 140, 40), "fear": (160, 60, 160), "happy": (40, 200, 240),
    "neutral": (190, 190, 190), "sad": (200, 120, 40), "surprise": (40, 160, 255),
}
OTHER = (255, 255, 255)
# video.blur_faces: each box grows by this fraction of its size on every side (hair, ears, chin),
# and that region is reduced to BLUR_CELLS x BLUR_CELLS colours, whatever its size: too little to
# recognise anyone, and it costs resizing the region only, never the frame.
BLUR_MARGIN = 0.2
BLUR_CELLS = 8
_UPSCALING = {"blur": cv2.INTER_LINEAR, "pixelate": cv2.INTER_NEAREST}  # video.blur: cells back to full size


def _outlined_text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float, colour) -> None:
    """Text with a dark outline that stays readable on any background. The outline is drawn
    without anti-aliasing: a thick anti-aliased stroke costs 4x more (about 0.1 ms of every
    frame's 0.25 ms of drawing) and the anti-aliased text on top hides the difference."""
    cv2.putText(image, text, origin, FONT, scale, (0, 0, 0), 3, cv2.LINE_8)
    cv2.putText(image, text, origin, FONT, scale, colour, 1, cv2.LINE_AA)


class Annotator:
    def __init__(self, labels: Sequence[str], bars: bool = True, blur: str | None = None):
        self.labels = tuple(labels)
        self.bars = bars
        self._blur_up = _UPSCALING[blur] if blur else None  # None: faces are shown
        # every blurred face passes through these: sampled to 4x4 points a cell, then averaged
        self._samples = np.empty((4 * BLUR_CELLS, 4 * BLUR_CELLS, 3), np.uint8)
        self._cells = np.empty((BLUR_CELLS, BLUR_CELLS, 3), np.uint8)
        self._colours = [COLOURS.get(name, OTHER) for name in self.labels]
        self._short = [name[:3] for name in self.labels]  # bar captions, prepared once

    def draw(self, image: np.ndarray, faces: Sequence[FaceResult], fps: float | None = None) -> None:
        if self._blur_up is not None:  # first, so boxes, labels and bars stay sharp
            for face in faces:
                self._hide(image, face.box)
        for face in faces:
            x, y, w, h = face.box
            colour = COLOURS.get(face.label, OTHER)
            cv2.rectangle(image, (x, y), (x + w, y + h), colour, 2)
            text = f"#{face.face_id} {face.label} {face.confidence * 100:.0f}%"
            _outlined_text(image, text, (x, max(12, y - 6)), 0.5, colour)
            if self.bars:
                self._bars(image, face)
        if fps is not None:
            _outlined_text(image, f"{fps:.1f} fps", (8, 20), 0.55, (255, 255, 255))

    def _hide(self, image: np.ndarray, box: tuple[int, int, int, int]) -> None:
        """Blur or pixelate the face and its margin in place."""
        x, y, w, h = box
        dx, dy = int(w * BLUR_MARGIN), int(h * BLUR_MARGIN)
        region = image[max(0, y - dy):max(0, y + h + dy), max(0, x - dx):max(0, x + w + dx)]
        if region.size:
            # Averaging every pixel (INTER_AREA on the region) costs 35x more than these 16 bilinear
            # samples a cell, for the same picture: writing the region back is most of the cost.
            cv2.resize(region, self._samples.shape[1::-1], dst=self._samples, interpolation=cv2.INTER_LINEAR)
            cv2.resize(self._samples, (BLUR_CELLS, BLUR_CELLS), dst=self._cells, interpolation=cv2.INTER_AREA)
            cv2.resize(self._cells, (region.shape[1], region.shape[0]), dst=region, interpolation=self._blur_up)

    def _bars(self, image: np.ndarray, face: FaceResult) -> None:
        x, y, w, h = face.box
        bar_w, row = 60, 12
        left = x + w + 6 if x + w + 6 + 28 + bar_w < image.shape[1] else max(0, x - 34 - bar_w)
        for i, p in enumerate(face.probabilities):
            top = y + i * row
            if top + row > image.shape[0]:
                break
            cv2.putText(image, self._short[i], (left, top + 9), FONT, 0.33, (255, 255, 255), 1, cv2.LINE_AA)
            cv2.rectangle(image, (left + 26, top + 2), (left + 26 + int(bar_w * float(p)), top + row - 2),
                          self._colours[i], -1)
