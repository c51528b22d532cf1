"""Labelled face sets: FER2013 as Kaggle folders (`<class>/*.jpg`) or as `fer2013.csv` (or .csv.gz),
optionally with FER+'s ten votes per face (`fer2013new.csv`, aligned with the CSV row for row).

Both loaders give the same thing: uint8 grey images and labels as class *names*, so a folder
set and a CSV set of the same faces agree whatever order each file lists its classes in.
"""
from __future__ import annotations

import csv
import gzip
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import DataError, InputMissing, UsageError
from .labels import EMOTIONS, FER2013_ORDER, canonical

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm"}
FER2013_SIDE = 48
# fer2013new.csv's vote columns, in its order; the first seven are our emotions under other names.
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                   "contempt", "unknown", "nf")
FERPLUS_EMOTION_COLUMN = {canonical(name): i for i, name in enumerate(FERPLUS_COLUMNS[:7])}


@dataclass
class FaceSet:
    images: np.ndarray  # (n, h, w) uint8 grey
    labels: np.ndarray  # (n,) int: index into `classes`
    classes: tuple[str, ...]
    source: str
    skipped: list[str] = field(default_factory=list)  # "line 12: 2303 pixels, expected 2304"
    votes: np.ndarray | None = None  # (n, 10) FER+ votes in FERPLUS_COLUMNS order, when loaded

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: np.ndarray) -> "FaceSet":
        return FaceSet(self.images[keep], self.labels[keep], self.classes, self.source, self.skipped,
                       None if self.votes is None else self.votes[keep])

    def names(self) -> list[str]:
        return [self.classes[i] for i in self.labels]

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(self.classes)}


def stratified_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n indices, each class in proportion to its share, every present class at least once (so
    more than n only when n is below the number of classes).

    Shares are whole faces by largest remainder: rounding each class on its own gave n + 1 or
    n - 1 (`--calibration-samples 200` drew 201)."""
    rng = np.random.default_rng(seed)
    total = len(labels)
    if n >= total:
        return np.arange(total)
    classes, sizes = np.unique(labels, return_counts=True)
    quotas = n * sizes / total
    take = np.clip(np.floor(quotas).astype(int), 1, sizes)
    order = np.argsort(-(quotas - np.floor(quotas)), kind="stable")  # largest remainder first
    while take.sum() < n:
        room = [i for i in order if take[i] < sizes[i]]  # never empty: n < total
        for i in room[: n - take.sum()]:
            take[i] += 1
    while take.sum() > n and (take > 1).any():  # the minimum of one pushed it over: take from the largest
        take[int(np.argmax(np.where(take > 1, take - quotas, -np.inf)))] -= 1
    picked = [rng.choice(np.flatnonzero(labels == cls), size=k, replace=False) for cls, k in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def is_csv(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and (name.endswith(".csv") or name.endswith(".csv.gz"))


def load_faces(path: str | Path, *, usage: str | None = None, limit: int | None = None,
               seed: int = 0, strict: bool = False, warn=None, ferplus: str | Path | None = None) -> FaceSet:
    """Load a folder or CSV set; `limit` draws a stratified sample (before decoding images).

    `ferplus`: FER+'s fer2013new.csv for the same fer2013.csv rows; its votes come along in
    `votes`, matched row for row (and checked, see load_ferplus_votes)."""
    path = Path(path)
    if not path.exists():
        raise InputMissing(f"dataset {path} not found; give a folder of <class>/*.jpg or a fer2013.csv file")
    if ferplus is not None and not is_csv(path):
        raise UsageError(f"FER+ votes follow fer2013.csv's rows, so they need the dataset as fer2013.csv "
                         f"(or .csv.gz), not {path}: Kaggle folders carry no row numbers to match them by")
    if path.is_dir():
        faces = _load_folder(path, limit, seed)
    elif is_csv(path):
        faces = _load_csv(path, usage, strict)
        if ferplus is not None:
            faces.votes = load_ferplus_votes(Path(ferplus), usage, faces)
        if limit is not None and limit < len(faces):
            faces = faces.subset(stratified_indices(faces.labels, limit, seed))
    else:
        raise DataError(f"dataset {path} is neither a folder nor a .csv (.csv.gz) file")
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
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
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


def load_ferplus_votes(path: Path, usage: str | None, faces: FaceSet) -> np.ndarray:
    """FER+ votes (n, 10, FERPLUS_COLUMNS order) for the same rows as `faces`, matched by order.

    The match is checked, not assumed: no CSV row may have been skipped, the counts must agree,
    and FER+'s majority must agree with the FER2013 label far above chance (about 65% does).
    """
    if not path.is_file():
        raise InputMissing(f"FER+ vote file {path} not found; give fer2013new.csv from microsoft/FERPlus")
    if faces.skipped:
        raise DataError(f"{len(faces.skipped)} row(s) of {faces.source} were skipped as bad, so FER+ rows "
                        "can no longer be matched by order; fix the CSV first")
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, [])]
        missing = [c for c in ("usage", *FERPLUS_COLUMNS) if c not in header]
        if missing:
            raise DataError(f"FER+ vote file {path}: header lacks {', '.join(missing)}; expected fer2013new.csv "
                            "(Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,"
                            "unknown,NF)")
        cols = [header.index(c) for c in FERPLUS_COLUMNS]
        col_usage = header.index("usage")
        rows = []
        for line in reader:
            if not line or (usage is not None and line[col_usage].strip() != usage):
                continue
            try:
                rows.append([float(line[c]) for c in cols])
            except (ValueError, IndexError):
                raise DataError(f"FER+ vote file {path}: line {reader.line_num} has non-numeric votes") from None
    votes = np.asarray(rows, np.float32).reshape(-1, len(FERPLUS_COLUMNS))
    which = f" {usage}" if usage else ""
    if len(votes) != len(faces):
        raise DataError(f"FER+ vote file {path} has {len(votes)}{which} rows but {faces.source} has {len(faces)}; "
                        "they must be the same fer2013.csv rows in the same order")
    majority = ferplus_majority(votes, faces.classes)
    scored = majority >= 0
    agreement = float((majority[scored] == faces.labels[scored]).mean()) if scored.any() else 0.0
    if agreement < 0.4:
        raise DataError(f"FER+ majority agrees with the FER2013 label on only {agreement:.0%} of rows (about "
                        f"65% is normal); {path} does not line up with {faces.source} row for row")
    return votes


def ferplus_majority(votes: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """Each face's FER+ majority as an index into `classes`, or -1 where FER+'s top vote is
    contempt, unknown or not-a-face, or tied: the faces FER+ results are not scored on."""
    top = votes.max(axis=1, keepdims=True)
    tied = (votes == top).sum(axis=1) > 1
    winner = votes.argmax(axis=1)
    to_class = np.full(len(FERPLUS_COLUMNS), -1)
    for name, column in FERPLUS_EMOTION_COLUMN.items():
        if name in classes:
            to_class[column] = classes.index(name)
    return np.where(tied | (top[:, 0] <= 0), -1, to_class[winner])


def ferplus_shares(votes: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """(n, len(classes)) each face's votes for the seven emotions as shares: FER+'s probabilistic
    labels. Contempt, unknown and not-a-face votes are left out (no output can say them); a face
    with none of the seven gets all zeros (callers drop it)."""
    emotion_votes = votes[:, [FERPLUS_EMOTION_COLUMN[name] for name in classes]]
    total = emotion_votes.sum(axis=1, keepdims=True)
    return np.divide(emotion_votes, total, out=np.zeros_like(emotion_votes), where=total > 0).astype(np.float32)
