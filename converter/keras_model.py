"""Loading a trained Keras model from any of the formats people have, behind one small interface."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep oneDNN/CUDA start-up chatter off the console

import numpy as np

from fer_edge.errors import DataError, InputMissing

KERAS_SUFFIXES = {".h5", ".hdf5", ".keras"}


class FloatModel:
    """A trained float model: its input shape, a batched predict, and a TFLite converter."""

    def __init__(self, path: str | Path):
        import tensorflow as tf

        self.path = Path(path)
        if not self.path.exists():
            raise InputMissing(f"model {self.path} not found; give a .h5/.hdf5/.keras file or a SavedModel folder")
        self._tf = tf
        self._keras = None
        self._signature = None
        if self.path.is_dir():
            if not (self.path / "saved_model.pb").is_file():
                raise DataError(f"model folder {self.path} has no saved_model.pb; give a SavedModel folder "
                                "or a .h5/.hdf5/.keras file")
            try:
                loaded = tf.saved_model.load(str(self.path))
                self._signature = loaded.signatures["serving_default"]
            except Exception as exc:
                raise DataError(f"SavedModel {self.path} could not be loaded ({_first_line(exc)})") from None
            self._loaded = loaded  # keeps the signature's variables alive
            spec = list(self._signature.structured_input_signature[1].values())[0]
            self._input_name = list(self._signature.structured_input_signature[1].keys())[0]
            shape = spec.shape.as_list()
            out_spec = list(self._signature.structured_outputs.values())[0]
            self.n_outputs = int(out_spec.shape[-1])
        else:
            if self.path.suffix.lower() not in KERAS_SUFFIXES:
                raise DataError(f"model {self.path} is not a Keras model file (.h5/.hdf5/.keras) "
                                "or a SavedModel folder")
            try:
                self._keras = tf.keras.models.load_model(str(self.path), compile=False)
            except Exception as exc:
                raise DataError(f"model {self.path} could not be loaded as a Keras model "
                                f"({_first_line(exc)}); is it a trained .h5/.keras file?") from None
            shape = list(self._keras.inputs[0].shape)
            self.n_outputs = int(self._keras.outputs[0].shape[-1])
        if len(shape) != 4 or shape[3] not in (1, 3) or not shape[1] or not shape[2]:
            raise DataError(f"model {self.path}: input shape {shape} is not an image (batch, height, width, 1 or 3)")
        self.height, self.width, self.channels = int(shape[1]), int(shape[2]), int(shape[3])

    @property
    def parameters(self) -> int | None:
        return int(self._keras.count_params()) if self._keras is not None else None

    def predict(self, batch: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Float32 model input (n, h, w, c) → outputs (n, classes)."""
        outs = []
        for i in range(0, len(batch), batch_size):
            chunk = self._tf.constant(batch[i:i + batch_size])
            if self._keras is not None:
                out = self._keras(chunk, training=False)
            else:
                out = list(self._signature(**{self._input_name: chunk}).values())[0]
            outs.append(np.asarray(out, np.float32))
        return np.concatenate(outs) if outs else np.empty((0, self.n_outputs), np.float32)

    def predict_one_keras(self, face: np.ndarray) -> np.ndarray:
        """What tutorials run per face (`model.predict`); used only to measure its latency."""
        if self._keras is None:
            return self.predict(face)
        return self._keras.predict(face, verbose=0)

    def tflite_converter(self):
        tf = self._tf
        if self._keras is not None:
            return tf.lite.TFLiteConverter.from_keras_model(self._keras)
        return tf.lite.TFLiteConverter.from_saved_model(str(self.path))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
