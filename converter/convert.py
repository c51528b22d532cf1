"""Keras model → quantized TFLite model with its labels and preprocessing inside, and a report
of what quantization cost.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fer_edge import __version__
from fer_edge.datasets import FaceSet, ferplus_majority, load_faces
from fer_edge.errors import DataError, InputMissing, OutputError
from fer_edge.labels import LABEL_ORDERS
from fer_edge.metrics import report_by_label_sets
from fer_edge.modelmeta import METADATA_NAME, ModelInfo
from fer_edge.runtime import EmotionClassifier, fit_faces, scale_pixels

from .calibration import CalibrationConfig, calibration_config, quantize_int8
from .keras_model import KERAS_SUFFIXES, FloatModel

QUANTIZATIONS = ("int8", "float16", "dynamic", "none")
INPUT_RANGES = {"0,1": (0.0, 1.0), "-1,1": (-1.0, 1.0)}
Log = Callable[[str], None]


@dataclass
class Preprocessing:
    labels: tuple[str, ...]
    input_range: tuple[float, float]
    evidence: list[dict[str, Any]]  # what auto-detection measured, for the report


def model_info(model: FloatModel, labels: tuple[str, ...], input_range: tuple[float, float],
               extra: dict[str, Any] | None = None) -> ModelInfo:
    return ModelInfo(labels=labels, input_height=model.height, input_width=model.width,
                     input_channels=model.channels, input_range=input_range,
                     color="grey" if model.channels == 1 else "rgb", extra=extra or {})


def float_predict(model: FloatModel, faces: FaceSet, info: ModelInfo) -> np.ndarray:
    return model.predict(scale_pixels(fit_faces(faces.images, info), info))


def resolve_preprocessing(model: FloatModel, labels: tuple[str, ...] | None,
                          input_range: tuple[float, float] | None, faces: FaceSet | None,
                          log: Log) -> Preprocessing:
    """Fill in `auto` label order / input range by accuracy on labelled faces.

    A wrong label order or scale does not crash: it silently mislabels. Trying each candidate
    on real labelled faces and keeping the clear winner turns that into a measured choice.
    """
    if labels is not None and len(labels) != model.n_outputs:
        raise DataError(f"--labels has {len(labels)} names but {model.path} has {model.n_outputs} outputs")
    if labels is None and model.n_outputs != 7:
        raise DataError(f"{model.path} has {model.n_outputs} outputs, not the 7 FER2013 emotions; "
                        "pass --labels with one name per output, in output order")
    label_options = [labels] if labels else [LABEL_ORDERS["fer2013"], LABEL_ORDERS["kaggle"]]
    range_options = [input_range] if input_range else list(INPUT_RANGES.values())
    if len(label_options) == 1 and len(range_options) == 1:
        return Preprocessing(label_options[0], range_options[0], [])
    if faces is None:
        raise DataError("cannot tell the label order and input range without labelled faces; "
                        "pass --calibration PATH, or --labels and --input-range")
    truth = np.asarray(faces.names())
    evidence = []
    for rng in range_options:
        info = model_info(model, label_options[0], rng)
        predicted = float_predict(model, faces, info).argmax(axis=1)
        for order in label_options:
            accuracy = float((np.asarray(order)[predicted] == truth).mean())
            evidence.append({"labels": list(order), "input_range": list(rng), "accuracy": round(accuracy, 4)})
    evidence.sort(key=lambda e: -e["accuracy"])
    best = evidence[0]
    log("auto-detected preprocessing on {} labelled faces:".format(len(faces)))
    for e in evidence:
        name = next((k for k, v in LABEL_ORDERS.items() if list(v) == e["labels"]), "given")
        log(f"  labels {name:<8} input range [{e['input_range'][0]:g}, {e['input_range'][1]:g}]"
            f"  accuracy {e['accuracy'] * 100:5.1f}%{'  <- chosen' if e is best else ''}")
    if len(evidence) > 1 and best["accuracy"] - evidence[1]["accuracy"] < 0.02:
        raise DataError("label order / input range is ambiguous on these faces "
                        f"(top two within {100 * (best['accuracy'] - evidence[1]['accuracy']):.1f} points); "
                        "pass --labels and --input-range explicitly")
    if best["accuracy"] < 2.0 / model.n_outputs:
        log(f"warning: best accuracy {best['accuracy'] * 100:.1f}% is near chance: "
            "is this an emotion model, and are these faces?")
    return Preprocessing(tuple(best["labels"]), tuple(best["input_range"]), evidence)


def convert(model: FloatModel, info: ModelInfo, quantize: str, calibration: FaceSet | None,
            calibration_config: CalibrationConfig | None = None, *, log: Log | None = None) -> bytes:
    """The TFLite flatbuffer, before metadata.

    int8 is full-integer with int8 input and output, quantized by `converter.calibration`
    (default: channel equalization, bias correction, per-batch ranges averaged over the
    calibration faces, a softmax-aware logit range); PRESETS["tflite"] reproduces TFLite's own
    calibration.
    """
    import tensorflow as tf

    if quantize not in QUANTIZATIONS:
        raise DataError(f"--quantize {quantize!r}: choose one of {', '.join(QUANTIZATIONS)}")
    converter = model.tflite_converter()
    if quantize == "int8":
        if calibration is None:
            raise DataError("int8 needs real faces to calibrate on: pass --calibration PATH "
                            "(a FER2013 folder or fer2013.csv)")
        samples = scale_pixels(fit_faces(calibration.images, info), info)
        config = calibration_config or CalibrationConfig()
        float_tflite = _run_converter(model, converter)
        try:
            result = quantize_int8(float_tflite, samples, info.input_range, config)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"int8 quantization of {model.path} failed: "
                            f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}; "
                            "try --quantize float16 or dynamic") from None
        if log is not None:
            log(f"int8 calibration: {config.method} ranges"
                + (f" over batches of {config.batch} faces" if config.method == "average" else "")
                + f", {result.equalized_tensors} tensor(s) channel-equalized, "
                f"{result.corrected_biases} bias(es) corrected")
        return result.tflite
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return _run_converter(model, converter)


def _run_converter(model: FloatModel, converter) -> bytes:
    try:
        return bytes(converter.convert())
    except Exception as exc:
        raise DataError(f"TFLite conversion of {model.path} failed: {str(exc).strip().splitlines()[0][:300]}") from None


def with_metadata(tflite: bytes, info: ModelInfo) -> bytes:
    """Store `info` in the flatbuffer's metadata table (replacing an older fer_edge entry)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(info.to_json(), sort_keys=True).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    def name(entry) -> str:  # the object API gives bytes for strings
        return entry.name.decode() if isinstance(entry.name, bytes) else (entry.name or "")

    model.metadata = [m for m in (model.metadata or []) if name(m) != METADATA_NAME] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()


def size_on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: first calls build graphs / allocate
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def evaluate(model: FloatModel, tflite_path: Path, info: ModelInfo, faces: FaceSet,
             progress: bool) -> dict[str, Any]:
    """Float vs converted on the same labelled faces, through the device's own classifier."""
    classes = info.labels
    truth = np.asarray([classes.index(name) if name in classes else -1 for name in faces.names()])
    if (truth < 0).any():
        missing = sorted({n for n in faces.names() if n not in classes})
        raise DataError(f"evaluation faces have classes the model does not know: {', '.join(missing)}")
    fitted = fit_faces(faces.images, info)
    float_probs = model.predict(scale_pixels(fitted, info))
    classifier = EmotionClassifier(tflite_path, num_threads=1, info=info)
    chunks = range(0, len(fitted), 128)
    if progress:
        from tqdm import tqdm
        chunks = tqdm(chunks, desc="evaluating tflite", unit="batch", file=sys.stderr, leave=False)
    tflite_probs = np.concatenate([classifier.predict(fitted[i:i + 128]) for i in chunks])
    float_pred, tflite_pred = float_probs.argmax(1), tflite_probs.argmax(1)
    ferplus_truth = None if faces.votes is None else ferplus_majority(faces.votes, classes)
    float_report = report_by_label_sets(truth, float_probs, classes, ferplus_truth)
    tflite_report = report_by_label_sets(truth, tflite_probs, classes, ferplus_truth)
    one = fitted[:1]
    latency = {
        "tflite_one_face_ms": round(median_ms(lambda: classifier.predict(one), 300), 4),
        "tflite_runtime": classifier.runtime_name,
        "keras_predict_one_face_ms": round(median_ms(
            lambda: model.predict_one_keras(scale_pixels(one, info)), 30), 3),
    }
    return {
        "dataset": faces.source,
        "samples": len(faces),
        "float": float_report,
        "tflite": tflite_report,
        "agreement": round(float((float_pred == tflite_pred).mean()), 4),
        "accuracy_drop_points": round(100 * (float_report["accuracy"] - tflite_report["accuracy"]), 2),
        **({"ferplus_accuracy_drop_points": round(
            100 * (float_report["ferplus"]["accuracy"] - tflite_report["ferplus"]["accuracy"]), 2)}
           if ferplus_truth is not None else {}),
        "latency": latency,
    }


def run_conversion(model_path: Path, output: Path, *, quantize: str, calibration: Path | None,
                   calibration_samples: int, labels: tuple[str, ...] | None,
                   input_range: tuple[float, float] | None, evaluate_path: Path | None,
                   usage: str | None, strict: bool, seed: int, progress: bool, log: Log,
                   int8_calibration: CalibrationConfig | str | None = None,
                   ferplus: Path | None = None) -> dict[str, Any]:
    """Convert, write, and (with evaluate_path) measure. `int8_calibration` is a preset name of
    converter.calibration.PRESETS ("robust", the default; "tflite", TFLite's stock min/max) or
    a CalibrationConfig; `seed` draws the calibration faces and orders them into batches."""
    calib_config = calibration_config(int8_calibration, seed)
    if quantize not in QUANTIZATIONS:
        raise DataError(f"--quantize {quantize!r}: choose one of {', '.join(QUANTIZATIONS)}")
    if output.exists() and output.is_dir():
        raise OutputError(f"output {output} is a folder; give a file name ending in .tflite")
    # Everything that can be checked without TensorFlow is checked first: a wrong path or a bad
    # dataset fails in a second, not after TensorFlow has loaded and the model converted.
    check_model_path(model_path)
    if quantize == "int8" and calibration is None:
        raise DataError("int8 needs real faces to calibrate on: pass --calibration PATH "
                        "(a FER2013 folder or fer2013.csv)")
    calib = None
    if calibration is not None:
        calib = load_faces(calibration, usage=usage or ("Training" if calibration.suffix == ".csv" else None),
                           limit=calibration_samples, seed=seed, strict=strict, warn=log)
        log(f"calibration: {len(calib)} real faces from {calibration}, stratified "
            + ", ".join(f"{k} {v}" for k, v in calib.counts().items()))
    eval_faces = None
    if evaluate_path is not None:
        eval_faces = load_faces(evaluate_path, usage=usage, strict=strict, warn=log, ferplus=ferplus)
    model = FloatModel(model_path)
    log(f"loaded {model_path} ({model.height}x{model.width}x{model.channels} in, {model.n_outputs} out"
        + (f", {model.parameters:,} parameters)" if model.parameters else ")"))
    prep = resolve_preprocessing(model, labels, input_range, calib, log)
    extra = {
        "quantization": quantize,
        "source": {"file": model_path.name, "sha256": sha256_of(model_path)},
        "converter": {"fer_edge": __version__, "tensorflow": _tf_version()},
    }
    if calib is not None and quantize == "int8":
        extra["calibration"] = {"dataset": Path(calibration).name, "samples": len(calib), "seed": seed,
                                **calib_config.describe()}
    info = model_info(model, prep.labels, prep.input_range, extra)
    log(f"labels (output order): {', '.join(info.labels)}; preprocessing: {info.describe_preprocessing()}")
    tflite = with_metadata(convert(model, info, quantize, calib, calib_config, log=log), info)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        output.write_bytes(tflite)
    except OSError as exc:
        raise OutputError(f"cannot write {output} ({exc.strerror}); choose a writable path") from None
    report: dict[str, Any] = {
        "model": str(model_path), "output": str(output), "quantization": quantize,
        "labels": list(info.labels), "preprocessing": info.to_json()["input"],
        "auto_detection": prep.evidence,
        "calibration": extra.get("calibration"),
        "size_bytes": {"float_model": size_on_disk(model_path), "tflite": len(tflite)},
        "parameters": model.parameters,
    }
    log(f"wrote {output} ({len(tflite) / 1024:.1f} KiB, {quantize}; float model "
        f"{report['size_bytes']['float_model'] / 1024:.1f} KiB)")
    if eval_faces is not None:
        log(f"evaluating float and {quantize} models on {len(eval_faces)} faces from {evaluate_path} ...")
        report["evaluation"] = evaluate(model, output, info, eval_faces, progress)
    return report


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"


def check_model_path(path: Path) -> None:
    """The checks FloatModel makes before TensorFlow loads anything, plus the file's signature.

    A text file named model.h5 is otherwise reported by Keras only after TensorFlow has loaded.
    """
    if not path.exists():
        raise InputMissing(f"model {path} not found; give a .h5/.hdf5/.keras file or a SavedModel folder")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise DataError(f"model folder {path} has no saved_model.pb; give a SavedModel folder "
                            "or a .h5/.hdf5/.keras file")
        return
    suffix = path.suffix.lower()
    if suffix not in KERAS_SUFFIXES:
        raise DataError(f"model {path} is not a Keras model file (.h5/.hdf5/.keras) or a SavedModel folder")
    try:
        with path.open("rb") as fh:
            if suffix == ".keras":
                valid = fh.read(4) == ZIP_SIGNATURE
            else:  # HDF5 allows a user block before the signature: at 0, 512, 1024, 2048, ... bytes
                valid = False
                for offset in [0] + [512 << i for i in range(12)]:
                    fh.seek(offset)
                    if fh.read(8) == HDF5_SIGNATURE:
                        valid = True
                        break
    except OSError as exc:
        raise InputMissing(f"model {path} cannot be read ({exc.strerror})") from None
    if not valid and suffix == ".keras":
        raise DataError(f"model {path} is not a Keras .keras archive (no zip signature); "
                        "is it a trained .keras model?")
    if not valid:
        raise DataError(f"model {path} is not an HDF5 file (no HDF5 signature); "
                        "is it a trained .h5/.hdf5 Keras model?")


def _tf_version() -> str:
    import tensorflow as tf
    return tf.__version__
