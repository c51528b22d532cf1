"""Labelled face sets: FER2013 as Kaggle folders (`<class>/*.jpg`) or as `fer2013.csv`.

Both loaders give the same thing: uint8 grey images and labels as class *names*, so a folder
set and a CSV set of the same faces agree whatever order each file lists its classes in.
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import DataError, InputMissing
from .labels import EMOTIONS, FER2013_ORDER, canonical

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm"}
FER2013_SIDE = 48


@dataclass
class FaceSet:
    images: np.ndarray  # (n, h, w) uint8 grey
    labels: np.ndarray  # (n,) int: index into `classes`
    classes: tuple[str, ...]
    source: str
    skipped: list[str] = field(default_factory=list)  # "line 12: 2303 pixels, expected 2304"

    def __len__(self) -> int:
        return len(self.labels)

    def names(self) -> list[str]:
        return [self.classes[i] for i in self.labels]

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(self.classes)}


def stratified_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """About n indices, each class in proportion to its share, every present class at least once."""
    rng = np.random.default_rng(seed)
    total = len(labels)
    if n >= total:
        return np.arange(total)
    picked = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        take = max(1, round(n * len(members) / total))
        picked.append(rng.choice(members, size=min(take, len(members)), replace=False))
    return np.sort(np.concatenate(picked))


def load_faces(path: str | Path, *, usage: str | None = None, limit: int | None = None,
               seed: int = 0, strict: bool = False, warn=None) -> FaceSet:
    """Load a folder or CSV set; `limit` draws a stratified sample (before decoding images)."""
    path = Path(path)
    if not path.exists():
        raise InputMissing(f"dataset {path} not found; give a folder of <class>/*.jpg or a fer2013.csv file")
    if path.is_dir():
        faces = _load_folder(path, limit, seed)
    elif path.suffix.lower() == ".csv":
        faces = _load_csv(path, usage, strict)
        if limit is not None and limit < len(faces):
            keep = stratified_indices(faces.labels, limit, seed)
            faces = FaceSet(faces.images[keep], faces.labels[keep], faces.classes, faces.source, faces.skipped)
    else:
        raise DataError(f"dataset {path} is neither a folder nor a .csv file")
    if faces.skipped:
        message = (f"{path}: skipped {len(faces.skipped)} bad row(s): "
                   + "; ".join(faces.skipped[:5]) + (" ..." if len(faces.skipped) > 5 else ""))
        (warn or (lambda m: print(f"warning: {m}", file=sys.stderr)))(message)
    return faces


def _load_folder(root: Path, limit: int | None, seed: int) -> FaceSet:
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    known = [d for d in class_dirs if canonical(d.name) in EMOTIONS]
    if not known:
        names = ", ".join(d.name for d in class_dirs[:8]) or "no subfolders"
        raise DataError(f"dataset {root} has no emotion class folders ({names}); expected "
                        f"<class>/*.jpg with classes {', '.join(EMOTIONS)}")
    unknown = [d.name for d in class_dirs if d not in known]
    if unknown:
        raise DataError(f"dataset {root}: folder(s) {', '.join(unknown)} are not emotion classes "
                        f"({', '.join(EMOTIONS)}); rename or move them")
    classes = EMOTIONS
    files: list[Path] = []
    labels: list[int] = []
    for d in known:
        members = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += members
        labels += [classes.index(canonical(d.name))] * len(members)
    if not files:
        raise DataError(f"dataset {root}: the class folders hold no images (.png/.jpg)")
    label_array = np.asarray(labels, np.int64)
    keep = stratified_indices(label_array, limit, seed) if limit is not None else np.arange(len(files))
    images = np.empty((len(keep), FER2013_SIDE, FER2013_SIDE), np.uint8)
    for row, i in enumerate(keep):
        img = cv2.imread(str(files[i]), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise DataError(f"dataset image {files[i]} could not be decoded; remove or replace it")
        if img.shape != images.shape[1:]:
            img = cv2.resize(img, images.shape[1:][::-1], interpolation=cv2.INTER_AREA)
        images[row] = img
    return FaceSet(images, label_array[keep], classes, str(root))


def _load_csv(path: Path, usage: str | None, strict: bool) -> FaceSet:
    expected = FER2013_SIDE * FER2013_SIDE
    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[str] = []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, [])]
        if "emotion" not in header or "pixels" not in header:
            raise DataError(f"dataset {path}: header {','.join(header) or '(empty)'} lacks "
                            "'emotion' and 'pixels'; expected the fer2013.csv columns emotion,pixels,Usage")
        col_emotion, col_pixels = header.index("emotion"), header.index("pixels")
        col_usage = header.index("usage") if "usage" in header else None
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if usage is not None and col_usage is not None and row[col_usage].strip() != usage:
                continue
            try:
                emotion = int(row[col_emotion])
                if not 0 <= emotion < len(FER2013_ORDER):
                    raise ValueError(f"emotion {emotion} is outside 0..6")
                pixels = np.array(row[col_pixels].split(), dtype=np.int32)
                if pixels.size != expected:
                    raise ValueError(f"{pixels.size} pixels, expected {expected}")
                if pixels.min() < 0 or pixels.max() > 255:
                    raise ValueError("pixel values outside 0..255")
            except (ValueError, IndexError) as exc:
                skipped.append(f"line {line}: {exc}")
                continue
            images.append(pixels.astype(np.uint8).reshape(FER2013_SIDE, FER2013_SIDE))
            labels.append(EMOTIONS.index(FER2013_ORDER[emotion]))
    if skipped and strict:
        raise DataError(f"dataset {path}: {len(skipped)} bad row(s) ({'; '.join(skipped[:3])}); "
                        "fix them or drop --strict to skip them")
    if not images:
        what = f" with Usage={usage}" if usage else ""
        raise DataError(f"dataset {path} has no usable rows{what}")
    return FaceSet(np.stack(images), np.asarray(labels, np.int64), EMOTIONS, str(path), skipped)
