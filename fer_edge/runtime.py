"""The TFLite interpreter, whichever runtime is installed, and the batched emotion classifier.

Runtime preference: LiteRT (`ai-edge-litert`, current) → `tflite-runtime` (frozen at 2.14) →
`tensorflow.lite` (deprecated, and only on a workstation that has TensorFlow anyway).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from .errors import DataError, InputMissing, Unavailable, UsageError
from .modelmeta import ModelInfo, read_model_info

RUNTIMES = (
    ("litert", "ai_edge_litert.interpreter"),
    ("tflite-runtime", "tflite_runtime.interpreter"),
    ("tensorflow", "tensorflow.lite"),  # last resort: imports all of TensorFlow
)


def load_runtime(prefer: str | None = None) -> tuple[str, Any]:
    """(name, Interpreter class) of the best TFLite runtime present.

    `prefer` (or $FER_EDGE_RUNTIME) names one runtime to use; the device never falls back to
    TensorFlow unless asked, because importing it costs seconds and hundreds of MB.
    """
    prefer = prefer or os.environ.get("FER_EDGE_RUNTIME") or None
    names = [name for name, _ in RUNTIMES]
    if prefer is not None and prefer not in names:
        raise Unavailable(f"runtime {prefer!r} is unknown; choose one of {', '.join(names)}")
    tried = []
    for name, module in RUNTIMES:
        if prefer is not None and name != prefer:
            continue
        try:
            mod = importlib.import_module(module)
        except Exception as exc:  # a broken wheel (NumPy ABI) fails with more than ImportError
            tried.append(f"{name}: {type(exc).__name__}")
            continue
        return name, mod.Interpreter
    raise Unavailable("no TFLite runtime could be imported (" + "; ".join(tried) + "); "
                      "install one: pip install ai-edge-litert (or tflite-runtime on Python <= 3.11)")


def quantization_lut(info: ModelInfo, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """Pixel value (0..255) → model input value, quantized for int8/uint8 inputs.

    Folding scaling and quantization into one 256-entry table makes preprocessing a single
    lookup per pixel, and keeps the float and int8 paths on the same arithmetic.
    """
    lo, hi = info.input_range
    real = (lo + np.arange(256, dtype=np.float64) / 255.0 * (hi - lo))
    if np.issubdtype(dtype, np.integer):
        limits = np.iinfo(dtype)
        q = np.round(real / scale + zero_point)
        return np.clip(q, limits.min, limits.max).astype(dtype)
    return real.astype(dtype)


def scale_pixels(images: np.ndarray, info: ModelInfo) -> np.ndarray:
    """uint8 images → float32 model input (the float reference path: Keras, evaluation)."""
    return quantization_lut(info, np.dtype(np.float32), 1.0, 0)[images]


class EmotionClassifier:
    """One interpreter; all faces of a frame go through one invoke when the model allows it."""

    def __init__(self, model_path: str | Path, *, num_threads: int | None = None,
                 runtime: str | None = None, info: ModelInfo | None = None,
                 labels: tuple[str, ...] | None = None, input_range: tuple[float, float] | None = None,
                 mirror_average: bool = False):
        """`info` replaces the stored metadata; `labels`/`input_range` override parts of it, which is
        how a plain TFLite model without fer-edge metadata is used (--labels, --input-range).
        `mirror_average`: each face's probabilities are the mean over the face and its mirror
        image, in the same invoke (twice the inference for about a point more accuracy)."""
        model_path = Path(model_path)
        if not model_path.is_file():
            raise InputMissing(f"model {model_path} not found; pass --model PATH.tflite "
                               "or omit it to use the bundled default")
        try:
            stored = read_model_info(model_path)
        except OSError as exc:  # e.g. not readable by the service user
            raise InputMissing(f"model {model_path} cannot be read ({exc.strerror or exc}); check that it is "
                               "readable by the user fer-edge runs as") from None
        self.runtime_name, interpreter_cls = load_runtime(runtime)
        try:
            self._interp = interpreter_cls(model_path=str(model_path), num_threads=num_threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise DataError(f"model {model_path} could not be loaded by {self.runtime_name} "
                            f"({str(exc).splitlines()[0]}); re-convert it with fer-convert") from None
        self.model_path = model_path
        self.mirror_average = mirror_average
        inp = self._interp.get_input_details()[0]
        out = self._interp.get_output_details()[0]
        self._in_index, self._out_index = inp["index"], out["index"]
        shape = [int(x) for x in inp["shape"]]
        if len(shape) != 4 and len(shape) != 3:
            raise DataError(f"model {model_path}: input shape {shape} is not an image batch (N, H, W[, C])")
        height, width = shape[1], shape[2]
        channels = shape[3] if len(shape) == 4 else 1
        if info is None:
            info = stored
        if labels is not None or input_range is not None:
            labels = labels or (info.labels if info else None)
            input_range = input_range or (info.input_range if info else None)
            if labels is None or input_range is None:
                raise UsageError(f"model {model_path} has no metadata: pass both --labels and --input-range")
            info = ModelInfo(labels, height, width, channels, input_range, "grey" if channels == 1 else "rgb",
                             extra=info.extra if info else {})
        if info is None:
            raise DataError(f"model {model_path} carries no fer-edge metadata (labels, preprocessing); "
                            "convert it with fer-convert, or pass --labels and --input-range")
        if (info.input_height, info.input_width, info.input_channels) != (height, width, channels):
            raise DataError(f"model {model_path}: metadata says {info.input_height}x{info.input_width}"
                            f"x{info.input_channels} but the tensor is {height}x{width}x{channels}")
        n_out = int(out["shape"][-1])
        if n_out != len(info.labels):
            raise DataError(f"model {model_path} has {n_out} outputs but {len(info.labels)} labels")
        self.info = info
        self._in_dtype = np.dtype(inp["dtype"])
        self._in_shape = tuple(int(x) for x in inp["shape"])  # rank 3 or 4
        in_scale, in_zero = inp["quantization"]
        self._lut = quantization_lut(info, self._in_dtype, in_scale or 1.0, in_zero)
        self._out_scale, self._out_zero = out["quantization"]
        self.quantized = self._in_dtype != np.float32
        dims = inp.get("shape_signature", inp["shape"])
        self._batchable = len(dims) > 0 and int(dims[0]) == -1
        self._capacity = 0
        self._batch = np.empty((0,), self._in_dtype)
        self._resized = np.empty((height, width) if channels == 1 else (height, width, channels), np.uint8)
        self._ensure_capacity(1)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.info.labels

    def _ensure_capacity(self, n: int) -> None:
        """Size the input to exactly n faces: a resize costs ~10 us, padding costs a whole face each."""
        if n == self._capacity:
            return
        if self._batchable:
            self._interp.resize_tensor_input(self._in_index, [n, *self._in_shape[1:]])
            self._interp.allocate_tensors()
            self._capacity = n
        elif self._capacity == 0:
            self._capacity = 1
        if len(self._batch) < n:  # the host-side buffer only grows; views serve smaller batches
            self._batch = np.zeros((n, *self._in_shape[1:]), self._in_dtype)

    def predict(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities (n, len(labels)) for uint8 face crops of any size.

        Crops must already be in the model's colour space: 2-D grey for grey models, HxWx3 in
        the model's channel order otherwise.
        """
        n = len(faces)
        if n == 0:
            return np.empty((0, len(self.labels)), np.float32)
        total = 2 * n if self.mirror_average else n
        self._ensure_capacity(total)
        size = self.info.input_size
        for i, face in enumerate(faces):
            if face.shape[:2] == self._resized.shape[:2]:
                resized = face
            else:
                # Shrinking: INTER_AREA does not alias. Enlarging (48 px data → 64 px model):
                # INTER_LINEAR, as mini-Xception was trained.
                interp = cv2.INTER_AREA if face.shape[0] > size[1] else cv2.INTER_LINEAR
                resized = cv2.resize(face, size, dst=self._resized, interpolation=interp)
            np.take(self._lut, resized, out=self._batch[i].reshape(resized.shape))
        if not self.mirror_average:
            return self._invoke(n)
        np.copyto(self._batch[n:total], self._batch[:n, :, ::-1])  # axis 2 is width, with or without channels
        probs = self._invoke(total)
        probs[:n] += probs[n:]  # rows already sum to 1: their mean does too
        probs[:n] *= 0.5
        return probs[:n]

    def _invoke(self, n: int) -> np.ndarray:
        if self._batchable:
            self._interp.set_tensor(self._in_index, self._batch[:n])
            self._interp.invoke()
            raw = self._interp.get_tensor(self._out_index)[:n]
        else:
            rows = []
            for i in range(n):
                self._interp.set_tensor(self._in_index, self._batch[i:i + 1])
                self._interp.invoke()
                rows.append(self._interp.get_tensor(self._out_index)[0])
            raw = np.stack(rows)
        probs = raw.astype(np.float32)
        if self._out_scale:
            probs = (probs - self._out_zero) * self._out_scale
        np.clip(probs, 0.0, None, out=probs)
        probs /= np.maximum(probs.sum(axis=1, keepdims=True), 1e-9)
        return probs


def fit_faces(images: np.ndarray, info: ModelInfo) -> np.ndarray:
    """uint8 grey faces (n, h, w) → uint8 model-size faces in the model's colour space.

    The evaluation and calibration path; the live path does the same per crop in `predict`.
    """
    width, height = info.input_size
    out = np.empty((len(images), height, width, info.input_channels), np.uint8)
    for i, face in enumerate(images):
        if face.shape[:2] != (height, width):
            interp = cv2.INTER_AREA if face.shape[0] > height else cv2.INTER_LINEAR
            face = cv2.resize(face, (width, height), interpolation=interp)
        out[i] = face[..., None] if face.ndim == 2 else face  # grey into 1 or 3 channels
    return out
