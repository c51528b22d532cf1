"""The programs fer-edge is compared with, each run as its own process by benchmarks/pipeline.py.

  tutorial   the loop the popular tutorials publish: Haar (1.3, 3) on every full frame, Keras
             model.predict per face, boxes drawn, every frame written (mp4v)
  fer        the `fer` package (PyPI fer==25.10.3): FER(use_tflite=True).detect_emotions per frame,
             its own draw_annotations, every frame written (mp4v)
  reference  not timed: full-resolution Haar on every frame and the float Keras model on its crops,
             the ground truth for the quality figures
  inference  per-face inference alone: int8 TFLite (fer-edge) vs the Keras model

    python benchmarks/contenders.py KIND VIDEO --output DIR --result FILE --t-spawn T
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the logs

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from fer_edge.bench import heavy_modules, peak_rss_mb  # noqa: E402

KERAS_MODEL = Path(__file__).resolve().parents[2] / "shared/data/models/mini_xception_fer2013.hdf5"
FER2013 = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # the Keras model's outputs
CASCADE = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
# The reference detector: full resolution, OpenCV's documented example settings.
REFERENCE = {"scaleFactor": 1.1, "minNeighbors": 5, "minSize": (30, 30)}


def keras_input(grey_crops: list[np.ndarray]) -> np.ndarray:
    """As the model was trained: 64x64 grey, x/255, then (x - 0.5) * 2."""
    x = np.stack([cv2.resize(c, (64, 64), interpolation=cv2.INTER_AREA) for c in grey_crops]).astype(np.float32)
    return ((x / 255.0 - 0.5) * 2.0)[..., None]


def open_writer(opts, cap) -> cv2.VideoWriter:
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    Path(opts.output).mkdir(parents=True, exist_ok=True)
    return cv2.VideoWriter(str(Path(opts.output) / "out.mp4"), cv2.VideoWriter_fourcc(*"mp4v"),
                           cap.get(cv2.CAP_PROP_FPS) or 25.0, size)


class Tally:
    """What every contender's loop counts, counted the same way for each."""

    def __init__(self, opts):
        self.t_spawn = opts.t_spawn
        self.frames = self.faces = self.with_faces = 0
        self.first: float | None = None
        self.records: list = []  # per frame: what it found and labelled, for the quality figures
        self.started, self.cpu = time.perf_counter(), time.process_time()

    def frame(self, found: list) -> None:
        """One analysed frame; `found` holds [x, y, w, h, label] per face."""
        self.records.append([self.frames, found, found, [f[4] for f in found]])
        if self.first is None:
            self.first = time.time() - self.t_spawn
        self.faces += len(found)
        self.with_faces += len(found) > 0
        self.frames += 1

    def result(self) -> dict:
        seconds, cpu = time.perf_counter() - self.started, time.process_time() - self.cpu
        return {"frames": self.frames, "seconds": seconds, "fps": self.frames / seconds,
                "first_frame_s": self.first, "cpu_ms_per_frame": 1000 * cpu / max(1, self.frames),
                "faces": self.faces, "frames_with_faces": self.with_faces, "records": self.records}


def tutorial(opts) -> dict:
    """Written the way the tutorials write it; the one liberty: predict(verbose=0), which spares
    it Keras 3's per-call progress bar (so this is slightly faster than the published loop)."""
    from keras.models import load_model

    face_classifier = cv2.CascadeClassifier(CASCADE)
    classifier = load_model(str(opts.keras_model), compile=False)
    cap = cv2.VideoCapture(opts.video)
    out = open_writer(opts, cap)
    tally = Tally(opts)
    while True:
        ret, frame = cap.read()
        if not ret:
            break
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        faces = face_classifier.detectMultiScale(gray, 1.3, 3)
        found = []
        for (x, y, w, h) in faces:
            cv2.rectangle(frame, (x, y), (x + w, y + h), (0, 255, 255), 2)
            roi_gray = cv2.resize(gray[y:y + h, x:x + w], (64, 64), interpolation=cv2.INTER_AREA)
            roi = (roi_gray.astype("float") / 255.0 - 0.5) * 2.0
            roi = np.expand_dims(np.expand_dims(roi, axis=-1), axis=0)
            prediction = classifier.predict(roi, verbose=0)[0]
            label = FER2013[prediction.argmax()]
            cv2.putText(frame, label, (x, y - 10), cv2.FONT_HERSHEY_SIMPLEX, 1, (0, 255, 0), 2)
            found.append([int(x), int(y), int(w), int(h), label])
        tally.frame(found)
        out.write(frame)
    out.release()
    return tally.result()


def fer_package(opts) -> dict:
    """`fer` 25.10.3's __init__ no longer exports FER (its README's `from fer import FER` fails), so
    import it from fer.fer. No shim is needed: facenet_pytorch is imported only for mtcnn=True."""
    from fer.fer import FER
    from fer.utils import draw_annotations

    detector = FER(use_tflite=True)
    cap = cv2.VideoCapture(opts.video)
    out = open_writer(opts, cap)
    tally = Tally(opts)
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        faces = detector.detect_emotions(frame)
        frame = draw_annotations(frame, faces)
        found = [[*map(int, f["box"]), max(f["emotions"], key=f["emotions"].get)] for f in faces]
        tally.frame(found)
        out.write(frame)
    out.release()
    return tally.result()


def reference_crops(video: str, keep_grey: bool = False):
    """Per frame: full-resolution Haar boxes and their grey crops (the reference detector);
    with keep_grey, (crops, the whole grey frame) instead of the crops."""
    cascade = cv2.CascadeClassifier(CASCADE)
    cap = cv2.VideoCapture(video)
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        boxes = cascade.detectMultiScale(grey, **REFERENCE)
        crops = [grey[y:y + h, x:x + w] for x, y, w, h in boxes]
        yield [tuple(int(v) for v in b) for b in boxes], ((crops, grey) if keep_grey else crops)
    cap.release()


def reference(opts) -> dict:
    """The reference labels, and what stands between them and fer-edge's, one cause at a time:
    - the float model's own stability: the share of its labels that stay the same when the
      reference box moves by one pixel (left, right, up or down);
    - quantization alone: fer-edge's int8 model on the very same reference crops;
    - box placement alone: the float model on the boxes each fer-edge mode found (`--probe`)."""
    import keras

    from fer_edge.resources import MINI_XCEPTION_MODEL, find_resource
    from fer_edge.runtime import EmotionClassifier

    model = keras.models.load_model(str(opts.keras_model), compile=False)
    probe = json.loads(Path(opts.probe).read_text()) if opts.probe else {}
    frames, crops, owner, shifted, greys = [], [], [], [], []
    for i, (boxes, face_crops) in enumerate(reference_crops(opts.video, keep_grey=True)):
        frames.append([list(b) for b in boxes])
        crops += face_crops[0]
        owner += [i] * len(face_crops[0])
        grey = face_crops[1]
        greys.append(grey if probe else None)
        for x, y, w, h in boxes:
            for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                x0, y0 = min(max(0, x + dx), grey.shape[1] - w), min(max(0, y + dy), grey.shape[0] - h)
                shifted.append(grey[y0:y0 + h, x0:x0 + w])
    labels = [[] for _ in frames]
    stable = int8_same = None
    if crops:
        best = np.asarray(model(keras_input(crops), training=False)).argmax(1)
        for i, b in zip(owner, best):
            labels[i].append(FER2013[int(b)])
        moved = np.asarray(model(keras_input(shifted), training=False)).argmax(1).reshape(-1, 4)
        stable = round(float(np.mean(moved == best[:, None])), 4)
        clf = EmotionClassifier(opts.model or find_resource(MINI_XCEPTION_MODEL), num_threads=1)
        int8 = [clf.labels[k] for k in clf.predict(crops).argmax(1)]
        int8_same = round(float(np.mean([a == FER2013[int(b)] for a, b in zip(int8, best)])), 4)
    # Per fer-edge mode, per record, the float model's label on each box that mode found.
    float_on_probe: dict[str, list[list[str]]] = {}
    for name, records in probe.items():
        probe_crops, where = [], []
        for r, (index, boxes) in enumerate(records):
            for x, y, w, h in boxes:
                probe_crops.append(greys[index][max(0, y):y + h, max(0, x):x + w])
                where.append(r)
        out: list[list[str]] = [[] for _ in records]
        if probe_crops:
            for r, b in zip(where, np.asarray(model(keras_input(probe_crops), training=False)).argmax(1)):
                out[r].append(FER2013[int(b)])
        float_on_probe[name] = out
    return {"frames": len(frames), "fps": 0.0, "settings": {**REFERENCE, "minSize": list(REFERENCE["minSize"])},
            "boxes": frames, "labels": labels, "keras_label_kept_under_1px_shift": stable,
            "int8_agrees_on_reference_crops": int8_same, "float_on_probe": float_on_probe}


def inference(opts) -> dict:
    """ms per face, one face per call, on the reference crops of the video: fer-edge's int8 TFLite
    model (EmotionClassifier.predict: resize, LUT, invoke, dequantise) against the Keras model
    called the tutorial way (predict) and the fastest Keras way (__call__), plus the `fer`
    package's dynamic-range TFLite model. Methods are interleaved; medians over rounds."""
    import keras

    from fer_edge.resources import MINI_XCEPTION_MODEL, find_resource
    from fer_edge.runtime import EmotionClassifier, load_runtime

    crops = [c for _, face_crops in reference_crops(opts.video) for c in face_crops][: opts.faces]
    if not crops:
        return {"fps": 0.0, "faces": 0}
    model = keras.models.load_model(str(opts.keras_model), compile=False)
    clf = EmotionClassifier(opts.model or find_resource(MINI_XCEPTION_MODEL), num_threads=1)
    _, interpreter_cls = load_runtime("litert")
    fer_tflite = Path(opts.keras_model).with_name("fer_pkg_dynamic_range.tflite")
    dyn = interpreter_cls(model_path=str(fer_tflite), num_threads=1)
    dyn.allocate_tensors()
    dyn_in, dyn_out = dyn.get_input_details()[0]["index"], dyn.get_output_details()[0]["index"]
    inputs = [keras_input([c]) for c in crops]

    def int8(i):
        return clf.predict([crops[i]])[0]

    def keras_predict(i):
        return model.predict(inputs[i], verbose=0)[0]

    def keras_call(i):
        return np.asarray(model(inputs[i], training=False))[0]

    def fer_dynamic(i):
        dyn.set_tensor(dyn_in, inputs[i])
        dyn.invoke()
        return dyn.get_tensor(dyn_out)[0]

    methods = {"fer-edge int8 tflite": int8, "keras predict()": keras_predict, "keras __call__": keras_call,
               "fer pkg dynamic-range tflite": fer_dynamic}
    for f in methods.values():  # warm-up: graph tracing, first-call allocations
        for i in range(3):
            f(i)
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(opts.rounds):
        for name, f in methods.items():
            t = time.perf_counter()
            for i in range(len(crops)):
                f(i)
            times[name].append(1000 * (time.perf_counter() - t) / len(crops))
    ms = {k: round(statistics.median(v), 4) for k, v in times.items()}
    keras_labels = np.asarray(model(np.concatenate(inputs), training=False)).argmax(1)
    int8_labels = clf.predict(crops).argmax(1)  # both models emit FER2013 order
    return {"fps": 0.0, "faces": len(crops), "ms_per_face": ms,
            "speedup_int8_vs_keras_predict": round(ms["keras predict()"] / ms["fer-edge int8 tflite"], 1),
            "speedup_int8_vs_keras_call": round(ms["keras __call__"] / ms["fer-edge int8 tflite"], 1),
            "int8_agrees_with_keras": round(float(np.mean(int8_labels == keras_labels)), 4),
            "model": str(clf.model_path)}


KINDS = {"tutorial": tutorial, "fer": fer_package, "reference": reference, "inference": inference}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(KINDS))
    p.add_argument("video")
    p.add_argument("--output", required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--t-spawn", type=float, default=None)
    p.add_argument("--keras-model", type=Path, default=KERAS_MODEL)
    p.add_argument("--model", help="fer-edge .tflite for the inference and reference sections "
                                   "(default: the bundled int8 mini-Xception, the network of --keras-model)")
    p.add_argument("--probe", help="reference: JSON {mode: [[frame index, boxes], ...]} to label with the float model")
    p.add_argument("--faces", type=int, default=200, help="inference: faces per round")
    p.add_argument("--rounds", type=int, default=5, help="inference: rounds")
    opts = p.parse_args(argv)
    if opts.t_spawn is None:
        opts.t_spawn = time.time()
    result = KINDS[opts.kind](opts)
    result["heavy_modules"] = [m for m in heavy_modules() if "." not in m]
    result["vm_hwm_mb"] = peak_rss_mb()
    Path(opts.result).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
