"""What flows from analysis to the sinks."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FaceResult:
    face_id: int  # stable across frames (tracker)
    box: tuple[int, int, int, int]  # x, y, w, h in full-frame pixels
    probabilities: np.ndarray  # smoothed, in the model's label order
    label: str
    confidence: float
