"""What a model means, stored inside the .tflite file itself.

fer-convert writes a JSON document into the TFLite flatbuffer's `metadata` table under the name
`fer_edge` (the schema's own slot for producer metadata, so every TFLite runtime ignores it and
the file stays one file). The device reads it with the small flatbuffer walker below: no
TensorFlow, no schema package, no side file that could drift from the weights.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError, InputMissing, UsageError
from .labels import canonical

METADATA_NAME = "fer_edge"
SCHEMA = "fer-edge.model/1"
COLORS = ("grey", "rgb", "bgr")


@dataclass(frozen=True)
class ModelInfo:
    """Labels in output order and how a uint8 face becomes the model's input."""

    labels: tuple[str, ...]
    input_height: int
    input_width: int
    input_channels: int
    # A pixel p in 0..255 is fed as lo + p / 255 * (hi - lo): (0, 1) or (-1, 1) for FER models.
    input_range: tuple[float, float] = (0.0, 1.0)
    color: str = "grey"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.color not in COLORS:
            raise DataError(f"model metadata: color {self.color!r} is not one of {', '.join(COLORS)}")
        if (self.color == "grey") != (self.input_channels == 1):
            raise DataError(f"model metadata: color {self.color!r} does not fit {self.input_channels} input channels")
        lo, hi = self.input_range
        if not hi > lo:
            raise DataError(f"model metadata: input_range {self.input_range} must be increasing")

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height), the order OpenCV takes."""
        return self.input_width, self.input_height

    def describe_preprocessing(self) -> str:
        lo, hi = self.input_range
        return (f"{self.input_width}x{self.input_height} {self.color}, "
                f"pixels/255 scaled to [{lo:g}, {hi:g}]")

    def to_json(self) -> dict[str, Any]:
        doc = {
            "schema": SCHEMA,
            "labels": list(self.labels),
            "input": {
                "height": self.input_height,
                "width": self.input_width,
                "channels": self.input_channels,
                "color": self.color,
                "range": list(self.input_range),
            },
        }
        doc.update(self.extra)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any], where: str = "model metadata") -> "ModelInfo":
        try:
            if doc.get("schema") != SCHEMA:
                raise DataError(f"{where}: schema {doc.get('schema')!r} is not {SCHEMA!r}; "
                                "re-convert the model with this version of fer-convert")
            inp = doc["input"]
            extra = {k: v for k, v in doc.items() if k not in ("schema", "labels", "input")}
            return cls(
                labels=tuple(canonical(x) for x in doc["labels"]),
                input_height=int(inp["height"]),
                input_width=int(inp["width"]),
                input_channels=int(inp["channels"]),
                input_range=(float(inp["range"][0]), float(inp["range"][1])),
                color=str(inp["color"]),
                extra=extra,
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(f"{where}: malformed fer-edge metadata ({exc!r})") from None


def parse_input_range(text: str) -> tuple[float, float]:
    """`--input-range` value: 0,1 or -1,1 (brackets allowed), or any increasing LO,HI."""
    try:
        lo, hi = (float(x) for x in text.replace(" ", "").strip("[]()").split(","))
    except ValueError:
        raise UsageError(f"--input-range {text!r}: write it as 0,1 or -1,1 (or LO,HI)") from None
    if not hi > lo:
        raise UsageError(f"--input-range {text!r}: LO must be below HI")
    return lo, hi


# --- a minimal read-only flatbuffer walker for the TFLite schema --------------------------------
# Field numbers from tensorflow/lite/schema/schema.fbs (stable since schema v3).
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


class _Table:
    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vtable_size = struct.unpack_from("<H", buf, self.vtable)[0]

    def _field(self, index: int) -> int | None:
        slot = 4 + 2 * index
        if slot >= self.vtable_size:
            return None
        offset = struct.unpack_from("<H", self.buf, self.vtable + slot)[0]
        return self.pos + offset if offset else None

    def _deref(self, pos: int) -> int:
        return pos + struct.unpack_from("<I", self.buf, pos)[0]

    def scalar(self, index: int, fmt: str, default: int = 0) -> int:
        pos = self._field(index)
        return default if pos is None else struct.unpack_from("<" + fmt, self.buf, pos)[0]

    def string(self, index: int) -> str | None:
        data = self.bytes(index)
        return None if data is None else data.decode("utf-8", "replace")

    def bytes(self, index: int) -> bytes | None:
        pos = self._field(index)
        if pos is None:
            return None
        start = self._deref(pos)
        length = struct.unpack_from("<I", self.buf, start)[0]
        return self.buf[start + 4:start + 4 + length]

    def tables(self, index: int) -> list["_Table"]:
        pos = self._field(index)
        if pos is None:
            return []
        start = self._deref(pos)
        count = struct.unpack_from("<I", self.buf, start)[0]
        return [_Table(self.buf, self._deref(start + 4 + 4 * i)) for i in range(count)]


def _check_tflite(buf: bytes, where: str) -> None:
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise DataError(f"{where} is not a TFLite model (no TFL3 identifier); "
                        "convert a Keras model with fer-convert first")


def read_metadata_blobs(buf: bytes, where: str = "model") -> dict[str, bytes]:
    """All (name → bytes) entries of a TFLite model's metadata table."""
    _check_tflite(buf, where)
    try:
        model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
        buffers = model.tables(_MODEL_BUFFERS)
        blobs: dict[str, bytes] = {}
        for meta in model.tables(_MODEL_METADATA):
            name = meta.string(_METADATA_NAME) or ""
            buffer = buffers[meta.scalar(_METADATA_BUFFER, "I")]
            data = buffer.bytes(_BUFFER_DATA)
            if not data:  # models over 2 GB keep buffers after the flatbuffer
                offset, size = buffer.scalar(_BUFFER_OFFSET, "Q"), buffer.scalar(_BUFFER_SIZE, "Q")
                data = buf[offset:offset + size] if offset > 1 else b""
            blobs[name] = bytes(data)
        return blobs
    except (struct.error, IndexError) as exc:
        raise DataError(f"{where} is a damaged TFLite file ({exc}); re-convert or re-copy it") from None


def read_model_info(path: str | Path) -> ModelInfo | None:
    """The fer-edge metadata of a .tflite file, or None for a plain TFLite model without it."""
    path = Path(path)
    if not path.is_file():
        raise InputMissing(f"model {path} not found; give a .tflite file made by fer-convert")
    buf = path.read_bytes()
    blob = read_metadata_blobs(buf, str(path)).get(METADATA_NAME)
    if blob is None:
        return None
    try:
        doc = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: fer-edge metadata is not valid JSON ({exc})") from None
    return ModelInfo.from_json(doc, where=str(path))
