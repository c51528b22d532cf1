"""fer-convert on real data with real TensorFlow and real LiteRT.

The real mini-Xception (../shared/data/models) is converted to int8 once per module and measured
on FER2013 PublicTest through the device's own classifier; tiny Keras models built here (real
models, just small) cover the other input layouts and formats; the CLI runs as a subprocess
for every bad input, which must end in one `fer-convert: error:` line, never a traceback.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_edge.datasets import load_faces
from fer_edge.errors import DataError
from fer_edge.labels import EMOTIONS, FER2013_ORDER, KAGGLE_ORDER
from fer_edge.modelmeta import read_model_info
from fer_edge.runtime import EmotionClassifier, fit_faces, scale_pixels

from conftest import requires_shared

MODEL = "data/models/mini_xception_fer2013.hdf5"
TRAIN = "data/fer2013/train"
TEST = "data/fer2013/test"
CSV = "data/fer2013_publictest.csv"
ERROR = "fer-convert: error:"


def quiet(_message: str) -> None:
    pass


def convert(model, output, **overrides):
    """run_conversion with the CLI's defaults, in this process (TensorFlow loads once)."""
    from converter.convert import run_conversion

    args = dict(quantize="int8", calibration=None, calibration_samples=500, labels=None,
                input_range=None, evaluate_path=None, usage=None, strict=False, seed=0,
                progress=False, log=quiet)
    args.update(overrides)
    return run_conversion(Path(model), Path(output), **args)


def cli(repo_root: Path, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "converter.cli", *map(str, args)], cwd=repo_root,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_error(proc: subprocess.CompletedProcess, *fragments: str, only_line: bool = True) -> str:
    """Non-zero exit, exactly one `fer-convert: error:` line naming `fragments`, no traceback."""
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith(ERROR)]
    assert len(errors) == 1, proc.stderr
    if only_line:  # failed before TensorFlow loaded: nothing else on stderr at all
        assert proc.stderr.strip() == errors[0], proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def tiny_model(path: Path, shape: tuple[int, int, int], classes: int, *, seed: int = 0) -> Path:
    """A small real Keras CNN (untrained; a large last layer makes its answers decisive)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.SeparableConv2D(16, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax",
                                 kernel_initializer=keras.initializers.RandomNormal(stddev=3.0))(x)
    model = keras.Model(inputs, outputs)
    if path.suffix:
        model.save(path)
    else:
        model.export(str(path))  # SavedModel folder
    return path


# --- the real mini-Xception, converted once -------------------------------------------------------

@pytest.fixture(scope="module")
def int8_model(shared_file, tmp_path_factory):
    """(report, tflite path, log lines) of the default int8 conversion with labels/range auto."""
    out = tmp_path_factory.mktemp("int8") / "mini_xception_int8.tflite"
    lines: list[str] = []
    report = convert(shared_file(MODEL), out, calibration=shared_file(TRAIN),
                     evaluate_path=shared_file(TEST), log=lines.append)
    return report, out, lines


@pytest.fixture(scope="module")
def publictest(shared_file):
    return load_faces(shared_file(TEST))


@pytest.fixture(scope="module")
def float_model(shared_file):
    from converter.keras_model import FloatModel

    return FloatModel(shared_file(MODEL))


@requires_shared
def test_int8_keeps_the_float_models_accuracy_and_answers(int8_model):
    evaluation = int8_model[0]["evaluation"]
    assert evaluation["samples"] == 3589  # all of PublicTest
    float_acc, int8_acc = evaluation["float"]["accuracy"], evaluation["tflite"]["accuracy"]
    assert float_acc == pytest.approx(0.652, abs=0.01)  # the model's published ~65-66%
    assert abs(float_acc - int8_acc) * 100 <= 1.0, (float_acc, int8_acc)
    assert evaluation["agreement"] >= 0.97, evaluation["agreement"]


@requires_shared
def test_int8_is_full_integer_with_int8_input_and_output(int8_model):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(int8_model[1]))
    interp.allocate_tensors()
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert interp.get_output_details()[0]["dtype"] == np.int8
    # no float tensor anywhere: every op runs in integer arithmetic
    dtypes = {np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    assert dtypes <= {"int8", "int32"}, dtypes
    scale, zero = interp.get_input_details()[0]["quantization"]
    assert scale == pytest.approx(2 / 255, rel=1e-6)  # the whole [-1, 1] input range, no more


@requires_shared
def test_metadata_round_trips_without_tensorflow(int8_model):
    report, path, _ = int8_model
    info = read_model_info(path)
    assert info.labels == FER2013_ORDER == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert (info.input_height, info.input_width, info.input_channels) == (64, 64, 1)
    assert info.color == "grey" and info.input_range == (-1.0, 1.0)
    assert info.extra["quantization"] == "int8"
    calibration = info.extra["calibration"]
    assert calibration == report["calibration"]
    assert calibration["dataset"] == "train" and calibration["seed"] == 0
    assert 490 <= calibration["samples"] <= 510  # stratified: each class rounded
    assert calibration["method"] == "average" and calibration["batch"] == 10
    assert calibration["equalization"] is calibration["bias_correction"] is calibration["softmax_input_range"] is True
    assert info.extra["source"]["file"] == "mini_xception_fer2013.hdf5"


@requires_shared
def test_auto_picks_fer2013_order_and_minus_one_to_one(int8_model):
    report, _, lines = int8_model
    assert tuple(report["labels"]) == FER2013_ORDER
    assert report["preprocessing"]["range"] == [-1.0, 1.0]
    evidence = report["auto_detection"]
    assert len(evidence) == 4  # 2 label orders x 2 input ranges, all measured
    best, runner_up = evidence[0], evidence[1]
    assert best["labels"] == list(FER2013_ORDER) and best["input_range"] == [-1.0, 1.0]
    assert best["accuracy"] - runner_up["accuracy"] > 0.1  # a clear choice, not a coin toss
    assert any("<- chosen" in line for line in lines)
    assert any("channel-equalized" in line for line in lines)


@requires_shared
def test_device_classifier_reads_its_labels_from_the_model(int8_model, publictest):
    classifier = EmotionClassifier(int8_model[1], num_threads=1)  # metadata only, no info passed
    assert classifier.quantized and classifier.labels == FER2013_ORDER
    faces = publictest.images[::12]
    probs = classifier.predict(list(faces))  # 48 px crops, resized by the classifier
    assert probs.shape == (len(faces), 7) and np.allclose(probs.sum(axis=1), 1, atol=1e-3)
    predicted = np.asarray(classifier.labels)[probs.argmax(axis=1)]
    truth = np.asarray(publictest.names())[::12]
    assert (predicted == truth).mean() > 0.58


@requires_shared
@pytest.mark.parametrize("quantize, min_agreement", [("float16", 0.995), ("dynamic", 0.95)])
def test_float16_and_dynamic_convert_and_classify(quantize, min_agreement, shared_file, float_model,
                                                  publictest, tmp_path):
    out = tmp_path / f"m_{quantize}.tflite"
    report = convert(shared_file(MODEL), out, quantize=quantize, labels=FER2013_ORDER, input_range=(-1.0, 1.0))
    assert report["quantization"] == quantize
    info = read_model_info(out)
    assert info.labels == FER2013_ORDER and info.extra["quantization"] == quantize
    assert "calibration" not in info.extra
    classifier = EmotionClassifier(out, num_threads=1)
    assert not classifier.quantized  # float input; weights are what shrank
    faces = fit_faces(publictest.images[::6], info)
    tflite = classifier.predict(list(faces[..., 0])).argmax(axis=1)
    reference = float_model.predict(scale_pixels(faces, info)).argmax(axis=1)
    assert (tflite == reference).mean() >= min_agreement


# --- equalization is exact; the old TFLite calibration is still one option away -----------------

@requires_shared
def test_channel_equalization_leaves_the_float_model_unchanged(float_model, shared_file, publictest):
    from ai_edge_litert.interpreter import Interpreter
    from converter.calibration import CalibrationConfig, equalize

    float_tflite = bytes(float_model.tflite_converter().convert())
    calib = load_faces(shared_file(TRAIN), limit=100, seed=0)
    from converter.convert import model_info

    meta = model_info(float_model, FER2013_ORDER, (-1.0, 1.0))
    samples = scale_pixels(fit_faces(calib.images, meta), meta)
    equalized, tensors = equalize(float_tflite, samples, CalibrationConfig())
    assert tensors >= 20  # separable-conv middles, relus and the residual adds of mini-Xception

    def run(model: bytes, x: np.ndarray) -> np.ndarray:
        interp = Interpreter(model_content=model)
        interp.allocate_tensors()
        inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
        rows = []
        for face in x:
            interp.set_tensor(inp, face[None])
            interp.invoke()
            rows.append(interp.get_tensor(out)[0].copy())
        return np.stack(rows)

    unseen = scale_pixels(fit_faces(publictest.images[:40], meta), meta)
    np.testing.assert_allclose(run(equalized, unseen), run(float_tflite, unseen), atol=2e-5)


def test_tflite_minmax_option_reproduces_the_stock_converter(tmp_path):
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter
    from converter.calibration import CalibrationConfig, quantize_int8

    keras_path = tiny_model(tmp_path / "tiny.keras", (24, 24, 1), 7)
    model = tf.keras.models.load_model(keras_path, compile=False)
    samples = np.random.default_rng(0).uniform(0, 1, (30, 24, 24, 1)).astype(np.float32)
    samples[0, 0, :2, 0] = 0.0, 1.0  # the stock calibrator then sees exactly the [0, 1] input range
    stock = tf.lite.TFLiteConverter.from_keras_model(model)
    stock.optimizations = [tf.lite.Optimize.DEFAULT]
    stock.representative_dataset = lambda: ([s[None]] for s in samples)
    stock.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    stock.inference_input_type = stock.inference_output_type = tf.int8
    reference = stock.convert()
    plain = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    old = CalibrationConfig(method="minmax", equalize=False, bias_correction=False, softmax_input=False)
    ours = quantize_int8(plain, samples, (0.0, 1.0), old).tflite

    def outputs(content: bytes) -> np.ndarray:
        interp = Interpreter(model_content=content)
        interp.allocate_tensors()
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        scale, zero = inp["quantization"]
        rows = []
        for s in samples:
            interp.set_tensor(inp["index"], np.clip(np.round(s / scale + zero), -128, 127).astype(np.int8)[None])
            interp.invoke()
            rows.append(interp.get_tensor(out["index"])[0].copy())
        return np.stack(rows)

    np.testing.assert_array_equal(outputs(ours), outputs(reference))


# --- other models and formats -------------------------------------------------------------------

@requires_shared
def test_a_model_without_seven_outputs_needs_labels(shared_file, tmp_path):
    model = tiny_model(tmp_path / "three.keras", (48, 48, 1), 3)
    with pytest.raises(DataError, match=r"3 outputs.*--labels"):
        convert(model, tmp_path / "x.tflite", calibration=shared_file(TRAIN), calibration_samples=30)
    with pytest.raises(DataError, match=r"--labels has 2 names but .* has 3 outputs"):
        convert(model, tmp_path / "x.tflite", quantize="float16", labels=("happy", "sad"),
                input_range=(0.0, 1.0))
    out = tmp_path / "three_int8.tflite"
    convert(model, out, calibration=shared_file(TRAIN), calibration_samples=40,
            labels=("happy", "sad", "neutral"), input_range=(0.0, 1.0))
    classifier = EmotionClassifier(out, num_threads=1)
    assert classifier.labels == ("happy", "sad", "neutral") and classifier.quantized
    faces = load_faces(shared_file(TEST), limit=20, seed=0).images
    probs = classifier.predict(list(faces))
    assert probs.shape == (len(faces), 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-3)


@requires_shared
def test_rgb_model_converts_and_classifies_colour_crops(shared_file, tmp_path):
    model = tiny_model(tmp_path / "rgb.keras", (32, 32, 3), 7)
    out = tmp_path / "rgb_int8.tflite"
    convert(model, out, calibration=shared_file(TRAIN), calibration_samples=60,
            labels=KAGGLE_ORDER, input_range=(0.0, 1.0))
    info = read_model_info(out)
    assert (info.input_height, info.input_width, info.input_channels, info.color) == (32, 32, 3, "rgb")
    classifier = EmotionClassifier(out, num_threads=1)
    faces = load_faces(shared_file(TEST), limit=60, seed=1).images
    crops = [cv2.cvtColor(face, cv2.COLOR_GRAY2RGB) for face in faces]  # 48x48x3 colour crops
    int8 = classifier.predict(crops)
    from converter.keras_model import FloatModel

    reference = FloatModel(model).predict(scale_pixels(fit_faces(faces, info), info))
    assert int8.shape == reference.shape == (len(faces), 7)
    assert np.abs(int8 - reference).mean() < 0.03
    assert (int8.argmax(axis=1) == reference.argmax(axis=1)).mean() >= 0.9


@requires_shared
def test_savedmodel_folder_converts(shared_file, tmp_path):
    folder = tiny_model(tmp_path / "saved", (48, 48, 1), 7)
    assert (folder / "saved_model.pb").is_file()
    out = tmp_path / "saved_int8.tflite"
    report = convert(folder, out, calibration=shared_file(TRAIN), calibration_samples=40,
                     labels=FER2013_ORDER, input_range=(0.0, 1.0))
    assert report["parameters"] is None  # a SavedModel has no Keras object to count
    classifier = EmotionClassifier(out, num_threads=1)
    assert classifier.labels == FER2013_ORDER and classifier.quantized
    faces = load_faces(shared_file(TEST), limit=20, seed=2).images
    assert classifier.predict(list(faces)).shape == (len(faces), 7)


@requires_shared
def test_int8_refuses_an_op_without_an_int8_kernel(shared_file, tmp_path):
    import keras

    inputs = keras.Input((24, 24, 1))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.Lambda(lambda t: keras.ops.sin(t))(x)  # TFLite has SIN only in float
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(x)).export(str(tmp_path / "sin"))
    with pytest.raises(DataError, match=r"op\(s\) SIN have no int8 kernel.*float16 or dynamic"):
        convert(tmp_path / "sin", tmp_path / "sin.tflite", calibration=shared_file(TRAIN), calibration_samples=20,
                labels=FER2013_ORDER, input_range=(0.0, 1.0))
    assert not (tmp_path / "sin.tflite").exists()


# --- datasets ------------------------------------------------------------------------------------

@requires_shared
def test_folder_and_csv_loaders_name_the_same_classes_alike(publictest, shared_file):
    table = load_faces(shared_file(CSV))
    assert len(publictest) == 3589 and len(table) == 3579  # the CSV lacks ten of the folder's faces
    assert publictest.classes == table.classes == EMOTIONS
    folder_counts, csv_counts = publictest.counts(), table.counts()
    assert set(folder_counts) == set(csv_counts)
    for name in EMOTIONS:  # CSV order (4 = sad, 6 = neutral) mapped to names, not indices
        assert 0 <= folder_counts[name] - csv_counts[name] <= 10, (name, folder_counts, csv_counts)
    # The same face in both forms (JPEG re-encoding moves pixels by ~1 level) gets the same name.
    pixels = publictest.images.reshape(len(publictest), -1).astype(np.int16)
    folder_names, csv_names = publictest.names(), table.names()
    matched = 0
    for row in np.linspace(0, len(table) - 1, 25).astype(int):
        distance = np.abs(pixels - table.images[row].reshape(-1).astype(np.int16)).mean(axis=1)
        best = int(distance.argmin())
        if distance[best] < 3:
            twins = np.flatnonzero(distance < 3)  # FER2013 holds a few duplicated faces
            assert csv_names[row] in {folder_names[i] for i in twins}, row
            matched += 1
    assert matched >= 20


# --- the CLI: one error line, never a traceback ---------------------------------------------------

@pytest.fixture(scope="module")
def bad_csv(shared_file, tmp_path_factory) -> tuple[Path, list[int]]:
    """60 real PublicTest rows relabelled Training, two of them with the wrong pixel count."""
    lines = shared_file(CSV).read_text().splitlines()
    header, rows = lines[0], lines[1:61]
    rows = [row.replace(",PublicTest", ",Training") for row in rows]
    emotion, pixels, usage = rows[3].split(",")
    rows[3] = f"{emotion},{pixels.rsplit(' ', 1)[0]},{usage}"  # 2303 pixels
    emotion, pixels, usage = rows[10].split(",")
    rows[10] = f"{emotion},{pixels} 7,{usage}"  # 2305 pixels
    path = tmp_path_factory.mktemp("csv") / "fer2013_bad.csv"
    path.write_text("\n".join([header] + rows) + "\n")
    return path, [5, 12]  # file line numbers: the header is line 1


def test_cli_missing_model(repo_root, tmp_path):
    proc = cli(repo_root, tmp_path / "nope.h5", "-o", tmp_path / "m.tflite")
    assert proc.returncode == 66
    assert_one_error(proc, "nope.h5 not found")


def test_cli_text_file_named_h5(repo_root, tmp_path):
    fake = tmp_path / "model.h5"
    fake.write_text("this is not a model\n")
    proc = cli(repo_root, fake, "-o", tmp_path / "m.tflite", "--labels", "fer2013", "--input-range", "0,1",
               "--quantize", "float16")
    assert proc.returncode == 65
    assert_one_error(proc, "model.h5", "not an HDF5 file")


@requires_shared
@pytest.mark.parametrize("option", ["-o", "--report", "--confusion-png"])
def test_cli_refuses_an_unwritable_output_before_converting(repo_root, shared_file, tmp_path, option):
    # /proc takes no new files, even from root; each output is checked before TensorFlow loads
    paths = {"-o": tmp_path / "m.tflite", "--report": tmp_path / "r.json", "--confusion-png": tmp_path / "c.png"}
    paths[option] = Path("/proc") / paths[option].name
    proc = cli(repo_root, shared_file(MODEL), *[a for kv in paths.items() for a in kv], "--quantize", "float16",
               "--labels", "fer2013", "--input-range=-1,1", "--evaluate", shared_file(CSV), timeout=60)
    assert proc.returncode == 73, proc.stderr
    assert_one_error(proc, option if option != "-o" else "output", str(paths[option]))
    assert not list(tmp_path.iterdir())  # nothing was converted or written


@requires_shared
def test_cli_quiet_prints_only_the_summary_and_calibrates_on_exactly_the_faces_asked_for(repo_root, shared_file,
                                                                                      tmp_path):
    report = tmp_path / "r.json"
    proc = cli(repo_root, shared_file(MODEL), "-o", tmp_path / "m.tflite", "-q", "--calibration", shared_file(CSV),
               "--usage", "PublicTest", "--calibration-samples", "200", "--labels", "fer2013", "--input-range=-1,1",
               "--report", report)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no TensorFlow, Keras, converter or delegate chatter
    assert proc.stdout.splitlines() == [f"wrote {tmp_path / 'm.tflite'}", f"report: {report}"]
    assert json.loads(report.read_text())["calibration"]["samples"] == 200


@requires_shared
def test_cli_empty_calibration_folder(repo_root, shared_file, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = cli(repo_root, shared_file(MODEL), "-o", tmp_path / "m.tflite", "--calibration", empty)
    assert_one_error(proc, "no emotion class folders", "no subfolders")


@requires_shared
def test_cli_calibration_folder_without_class_subfolders(repo_root, shared_file, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for source in sorted((shared_file(TRAIN) / "happy").iterdir())[:3]:
        (flat / source.name).write_bytes(source.read_bytes())
    proc = cli(repo_root, shared_file(MODEL), "-o", tmp_path / "m.tflite", "--calibration", flat)
    assert_one_error(proc, "no emotion class folders", "<class>/*.jpg")


@requires_shared
def test_cli_calibration_folder_with_an_unknown_class(repo_root, shared_file, tmp_path):
    root = tmp_path / "mixed"
    for name in ("happy", "cats"):
        (root / name).mkdir(parents=True)
        source = sorted((shared_file(TRAIN) / "happy").iterdir())[0]
        (root / name / source.name).write_bytes(source.read_bytes())
    proc = cli(repo_root, shared_file(MODEL), "-o", tmp_path / "m.tflite", "--calibration", root)
    assert_one_error(proc, "cats", "not emotion classes")


@requires_shared
def test_cli_strict_refuses_a_csv_with_bad_rows(repo_root, shared_file, bad_csv, tmp_path):
    path, bad_lines = bad_csv
    proc = cli(repo_root, shared_file(MODEL), "-o", tmp_path / "m.tflite", "--calibration", path, "--strict")
    assert proc.returncode == 65
    line = assert_one_error(proc, "2 bad row(s)", "--strict")
    for number in bad_lines:
        assert f"line {number}:" in line


@requires_shared
def test_cli_skips_bad_csv_rows_by_default_and_parses_negative_range(repo_root, shared_file, bad_csv, tmp_path):
    """The rest of the CSV still calibrates; `--input-range -1,1` is a value, not an option."""
    path, bad_lines = bad_csv
    model = tiny_model(tmp_path / "tiny.keras", (48, 48, 1), 7)
    out, report = tmp_path / "tiny_int8.tflite", tmp_path / "report.json"
    proc = cli(repo_root, model, "-o", out, "--calibration", path, "--labels", "fer2013",
               "--input-range", "-1,1", "--report", report)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and ERROR not in proc.stderr
    warning = next(line for line in proc.stderr.splitlines() if "bad row" in line)
    assert "skipped 2 bad row(s)" in warning
    assert f"line {bad_lines[0]}: 2303 pixels, expected 2304" in warning
    assert f"line {bad_lines[1]}: 2305 pixels, expected 2304" in warning
    doc = json.loads(report.read_text())
    assert doc["calibration"]["samples"] == 58  # the 58 good rows
    info = read_model_info(out)
    assert info.input_range == (-1.0, 1.0) and info.labels == FER2013_ORDER


def test_cli_rejects_a_malformed_range_before_loading_anything(repo_root, tmp_path):
    proc = cli(repo_root, tmp_path / "m.h5", "--input-range", "1,-1")
    assert proc.returncode == 64
    assert_one_error(proc, "LO must be below HI")
