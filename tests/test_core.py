"""Units of the device core: metadata in the .tflite, the classifier, tracker, scheduler, loaders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fer_edge.datasets import load_faces, stratified_indices
from fer_edge.errors import DataError
from fer_edge.labels import FER2013_ORDER, KAGGLE_ORDER, parse_labels
from fer_edge.metrics import classification_report
from fer_edge.modelmeta import ModelInfo, read_metadata_blobs, read_model_info
from fer_edge.metrics import calibration, paired_comparison
from fer_edge.pipeline import Scheduler
from fer_edge.resources import DEFAULT_MODEL, MINI_XCEPTION_MODEL, resolve_model
from fer_edge.runtime import EmotionClassifier, quantization_lut
from fer_edge.sources import Frame
from fer_edge.tracker import FaceTracker

from conftest import REPO_ROOT as ROOT, SHARED_DIR as SHARED, requires_shared
MODEL = ROOT / "models" / "fer_default.tflite"


def test_bundled_model_names_resolve_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as after a non-editable install: the file is not under the cwd
    other = resolve_model(MINI_XCEPTION_MODEL)
    assert other.is_file() and other.samefile(ROOT / MINI_XCEPTION_MODEL)
    assert resolve_model(None).samefile(ROOT / DEFAULT_MODEL)
    own = tmp_path / MINI_XCEPTION_MODEL
    own.parent.mkdir(parents=True)
    own.write_bytes(b"mine")
    assert resolve_model(MINI_XCEPTION_MODEL) == Path(MINI_XCEPTION_MODEL)
    assert resolve_model("models/nope.tflite") == Path("models/nope.tflite")  # left for the classifier to report


def test_bundled_model_carries_its_labels_and_preprocessing():
    info = read_model_info(MODEL)
    assert info is not None
    assert info.labels == KAGGLE_ORDER  # fer-train trains on the folders' alphabetical order
    assert (info.input_height, info.input_width, info.input_channels) == (48, 48, 1)
    assert info.input_range == (0.0, 1.0)
    assert info.extra["quantization"] == "int8"
    assert info.extra["source"]["file"] == "fer_edge_cnn.keras"
    other = read_model_info(ROOT / MINI_XCEPTION_MODEL)
    assert other is not None and other.labels == FER2013_ORDER  # mini-Xception was trained on the CSV order
    assert (other.input_height, other.input_width, other.input_range) == (64, 64, (-1.0, 1.0))
    assert other.extra["source"]["file"] == "mini_xception_fer2013.hdf5"


def test_metadata_reader_rejects_non_models_and_damage(tmp_path):
    with pytest.raises(DataError, match="not a TFLite model"):
        read_metadata_blobs(b"PK\x03\x04 a zip file, not a model", "x.tflite")
    truncated = MODEL.read_bytes()[:200]
    with pytest.raises(DataError):
        read_metadata_blobs(truncated, "truncated.tflite")


@requires_shared
def test_plain_tflite_model_has_no_fer_edge_metadata():
    assert read_model_info(SHARED / "data" / "models" / "fer_pkg_dynamic_range.tflite") is None


def test_int8_lookup_table_matches_float_scaling_then_quantization():
    info = ModelInfo(FER2013_ORDER, 64, 64, 1, (-1.0, 1.0))
    scale, zero = 2 / 255, -1
    lut = quantization_lut(info, np.dtype(np.int8), scale, zero)
    pixels = np.arange(256)
    expected = np.clip(np.round((pixels / 127.5 - 1) / scale + zero), -128, 127)
    assert np.array_equal(lut, expected)
    floats = quantization_lut(ModelInfo(KAGGLE_ORDER, 48, 48, 1, (0.0, 1.0)), np.dtype(np.float32), 1.0, 0)
    assert floats[0] == 0 and floats[255] == pytest.approx(1.0)


def test_classifier_batches_any_number_of_faces_and_matches_one_by_one():
    clf = EmotionClassifier(MODEL, num_threads=1)
    rng = np.random.default_rng(0)
    # Faces of different sizes, as Haar gives them; predictions must not depend on batch company.
    faces = [rng.integers(0, 256, (s, s), dtype=np.uint8) for s in (40, 64, 97, 150, 212)]
    together = clf.predict(faces)
    alone = np.concatenate([clf.predict([f]) for f in faces])
    assert together.shape == (5, 7)
    np.testing.assert_allclose(together, alone, atol=1e-6)
    np.testing.assert_allclose(together.sum(axis=1), 1.0, atol=1e-5)
    assert clf.predict([]).shape == (0, 7)
    assert clf.predict(faces[:2]).shape == (2, 7)  # shrinking the batch again works


def sample_face_crops() -> list[np.ndarray]:
    """Grey face crops of real frames of the bundled sample video, where Haar puts them."""
    import cv2

    from fer_edge.config import Config
    from fer_edge.detector import FaceDetector

    detector = FaceDetector(Config().detection)
    cap = cv2.VideoCapture(str(ROOT / "samples" / "sample_faces.mp4"))
    crops, index = [], 0
    while len(crops) < 4:
        ok, frame = cap.read()
        assert ok, "the sample video ended before 4 faces were found"
        if index % 10 == 0:
            grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            crops += [grey[y:y + h, x:x + w].copy() for x, y, w, h in detector.detect(frame)]
        index += 1
    cap.release()
    return crops


def test_mirror_average_is_the_mean_of_a_face_and_its_mirror_image():
    plain = EmotionClassifier(MODEL, num_threads=1)
    mirrored = EmotionClassifier(MODEL, num_threads=1, mirror_average=True)
    # The sample's smiling faces are certain (happy at 1.0, mirrored or not), so add an uncertain
    # one: seeded noise, which is not symmetric, so its mirror image gets another answer.
    faces = sample_face_crops() + [np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)]
    alone = plain.predict(faces)
    expected = (alone + plain.predict([np.ascontiguousarray(f[:, ::-1]) for f in faces])) / 2
    got = mirrored.predict(faces)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.abs(got - alone).max() > 1e-3  # the mirror image did change the answer somewhere
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    assert mirrored.predict([]).shape == (0, 7) and mirrored.predict(faces[:1]).shape == (1, 7)


def test_tracker_keeps_ids_and_smooths():
    tracker = FaceTracker(FER2013_ORDER, smoothing=0.5)
    happy, sad = np.eye(7, dtype=np.float32)[3], np.eye(7, dtype=np.float32)[4]
    a = tracker.update(np.array([[100, 100, 50, 50], [300, 100, 50, 50]]), np.stack([happy, sad]))
    assert [f.face_id for f in a] == [1, 2]
    b = tracker.update(np.array([[305, 104, 50, 50], [104, 98, 52, 52]]), np.stack([sad, sad]))
    assert [f.face_id for f in b] == [2, 1]  # matched by overlap, not by order
    assert b[1].probabilities[3] == pytest.approx(0.5) and b[1].probabilities[4] == pytest.approx(0.5)
    tracker.update(np.empty((0, 4), np.int32), np.empty((0, 7), np.float32))  # Haar missed both once
    assert {f.face_id for f in tracker.visible()} == {1, 2}  # held through a short miss
    for _ in range(3):
        tracker.update(np.empty((0, 4), np.int32), np.empty((0, 7), np.float32))
    assert tracker.visible() == []
    c = tracker.update(np.array([[100, 100, 50, 50]]), happy[None])
    assert c[0].face_id == 3  # a face after a long absence is a new track


def test_tracker_follows_a_fast_face_and_hides_a_held_box_a_new_face_overlaps():
    happy = np.eye(7, dtype=np.float32)[3]
    tracker = FaceTracker(FER2013_ORDER)
    first, = tracker.update(np.array([[159, 22, 98, 98]]), happy[None])
    # the demo's astronaut between two analyses: 55 px right, a little larger (IoU 0.24)
    moved, = tracker.update(np.array([[214, 19, 110, 110]]), happy[None])
    assert moved.face_id == first.face_id
    assert [f.face_id for f in tracker.visible()] == [first.face_id]
    far, = tracker.update(np.array([[400, 200, 100, 100]]), happy[None])  # two sizes away: someone else
    assert far.face_id != first.face_id
    # the first face is held through this miss, but is not drawn where the new face now is
    assert [f.face_id for f in tracker.visible()] == [first.face_id, far.face_id]
    other = FaceTracker(FER2013_ORDER)
    other.update(np.array([[100, 100, 50, 50]]), happy[None])
    newcomer, = other.update(np.array([[100, 100, 150, 150]]), happy[None])  # 3x the size: not the same face
    assert newcomer.face_id == 2 and [f.face_id for f in other.visible()] == [2]  # the held #1 overlaps it


def frames(n: int, fps: float) -> list[Frame]:
    return [Frame(np.empty(0), i, i / fps, 0.0) for i in range(n)]


def test_scheduler_every_n_and_adaptive_rate():
    every3 = Scheduler(every=3, target_fps=5)
    assert [f.index for f in frames(10, 25) if every3.due(f)] == [0, 3, 6, 9]
    adaptive = Scheduler(every=0, target_fps=5)
    due = [f.index for f in frames(250, 25) if adaptive.due(f)]  # 10 s of 25 fps video
    assert len(due) == 50  # 5 analyses per second of media time
    assert set(np.diff(due)) == {5}
    live = Scheduler(every=0, target_fps=5)  # a live source with a gap (dropped frames)
    stamps = [0.0, 0.1, 0.2, 1.5, 1.6, 1.7, 1.8]
    picked = [t for t in stamps if live.due(Frame(np.empty(0), 0, t, 0.0))]
    assert picked == [0.0, 0.2, 1.5, 1.7]  # resynchronises after the gap, no burst


def test_scheduler_slows_to_idle_fps_while_nobody_is_in_view_and_resumes_at_once():
    clip = frames(300, 30)  # 10 s at 30 fps: a face in view from 4 s to 6 s
    in_view = lambda f: 4.0 <= f.timestamp < 6.0
    scheduler = Scheduler(every=0, target_fps=6, idle_fps=2)
    due = [f.timestamp for f in clip if scheduler.due(f, idle=not in_view(f))]
    idle_before = [t for t in due if t < 4.0]
    assert len(idle_before) == 8 and set(np.round(np.diff(idle_before), 3)) == {0.5}  # 2 a second
    busy = [t for t in due if 4.0 <= t < 6.0]
    assert busy[0] - 4.0 < 0.5  # the newcomer is analysed within 1 / idle_fps
    assert len(busy) >= 11 and max(np.diff(busy)) < 0.2  # then 6 a second
    assert len([t for t in due if t >= 6.0]) == 8
    assert Scheduler(every=3, target_fps=6, idle_fps=2).due(clip[3], idle=True)  # every N stays literal
    eager = Scheduler(every=0, target_fps=6, idle_fps=60)  # capped at target_fps
    assert len([f for f in clip if eager.due(f, idle=True)]) == 60


def test_paired_comparison_counts_only_the_faces_one_model_alone_gets_right():
    truth = np.array([0, 1, 2, 3, 4, 5, 6, 0])
    a = np.array([0, 1, 2, 3, 0, 0, 0, 1])  # right on the first 4
    b = np.array([0, 1, 2, 0, 0, 0, 0, 1])  # right on the first 3
    same = paired_comparison(truth, a, a)
    assert (same["only_this_right"], same["only_other_right"], same["p_value"], same["same_answer"]) == (0, 0, 1.0, 1.0)
    one = paired_comparison(truth, a, b)
    assert (one["only_this_right"], one["only_other_right"]) == (1, 0)
    assert one["accuracy"] == 0.5 and one["other_accuracy"] == 0.375 and one["p_value"] == 1.0  # 1 vs 0: chance
    c = np.array([1, 2, 3, 4, 0, 0, 0, 1])  # right on none of the faces a gets right
    four = paired_comparison(truth, a, c)
    assert (four["only_this_right"], four["only_other_right"]) == (4, 0)
    assert four["p_value"] == 0.125 and four["mcnemar_z"] == 2.0  # 2 x (1/2)^4; 4 / sqrt(4)
    assert paired_comparison(truth, c, a)["mcnemar_z"] == -2.0


def test_calibration_error_is_zero_when_confidence_matches_accuracy_and_grows_with_overconfidence():
    truth = np.zeros(10, int)
    honest = np.tile([0.8, 0.2], (10, 1))  # 80% sure of class 0 ...
    honest[:2] = [0.2, 0.8]  # ... and wrong twice in ten where it says so: 80% of its top answers are right
    assert calibration(truth, np.array(honest)[:, :2])["ece"] == 0.0
    proud = np.tile([0.99, 0.01], (10, 1))
    proud[5:] = [0.01, 0.99]  # 99% sure, right half the time
    result = calibration(truth, proud)
    assert result["ece"] == 0.49 and result["mean_confidence"] == 0.99
    assert result["log_loss"] == round(float(-(np.log(0.99) + np.log(0.01)) / 2), 4)


def test_labels_parsing():
    assert parse_labels("kaggle") == KAGGLE_ORDER
    assert parse_labels("fer2013") == FER2013_ORDER
    assert parse_labels("Happiness, sadness") == ("happy", "sad")
    with pytest.raises(DataError):
        parse_labels("happy,happy")


def test_metrics_confusion_and_per_class():
    truth = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    report = classification_report(truth, pred, ("a", "b", "c"))
    assert report["accuracy"] == pytest.approx(0.6)
    assert report["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report["per_class"]["b"]["precision"] == pytest.approx(2 / 3, abs=1e-4)  # rounded to 4 places
    assert report["per_class"]["c"]["recall"] == 0


def test_stratified_sample_keeps_every_class():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    picked = stratified_indices(labels, 100, seed=1)
    counts = np.bincount(labels[picked])
    assert list(counts) == [90, 9, 1]


@requires_shared
def test_a_stratified_sample_has_exactly_the_size_asked_for_on_fer2013():
    # FER2013 PublicTest's seven classes round up together: 300 asked used to give 301
    faces = load_faces(SHARED / "data" / "fer2013_publictest.csv")
    for n in (7, 10, 200, 300, 301, 1000):
        picked = stratified_indices(faces.labels, n, seed=0)
        assert len(picked) == n == len(set(picked.tolist())), n
        assert len(np.unique(faces.labels[picked])) == 7
    assert len(stratified_indices(faces.labels, 3, seed=0)) == 7  # every class once: more than 3
    assert len(load_faces(SHARED / "data" / "fer2013" / "train", limit=200)) == 200


def test_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="no emotion class folders"):
        load_faces(tmp_path)
    (tmp_path / "happy").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_faces(tmp_path)
    bad = tmp_path / "faces.csv"
    bad.write_text("label,data\n1,2 3\n")
    with pytest.raises(DataError, match="emotion"):
        load_faces(bad)


def test_csv_loader_skips_bad_rows_by_line_number_and_strict_refuses(tmp_path):
    good = " ".join(["128"] * 2304)
    path = tmp_path / "fer2013.csv"
    path.write_text(f"emotion,pixels,Usage\n3,{good},PublicTest\n4,1 2 3,PublicTest\n6,{good},Training\n")
    warnings = []
    faces = load_faces(path, warn=warnings.append)
    assert faces.names() == ["happy", "neutral"]  # CSV 3 = happy, 6 = neutral (FER2013 order)
    assert "line 3" in warnings[0] and "3 pixels" in warnings[0]
    assert load_faces(path, usage="Training", warn=warnings.append).names() == ["neutral"]
    with pytest.raises(DataError, match="line 3"):
        load_faces(path, strict=True)


def test_report_by_label_sets_scores_ferplus_on_its_faces_and_measures_the_label_agreement():
    from fer_edge.metrics import format_report, report_by_label_sets
    classes = ("a", "b")
    truth = np.array([0, 0, 1, 1, 1])
    plus = np.array([0, 1, -1, 1, 0])  # face 2 not scored by FER+
    probs = np.array([[.9, .1], [.2, .8], [.6, .4], [.3, .7], [.4, .6]])
    report = report_by_label_sets(truth, probs, classes, plus)
    assert report["accuracy"] == pytest.approx(3 / 5)  # predicted 0,1,0,1,1
    assert report["ferplus"]["samples"] == 4 and report["ferplus"]["not_scored"] == 1
    assert report["ferplus"]["accuracy"] == pytest.approx(3 / 4)  # faces 0, 1, 3 right; face 4 wrong
    assert report["ferplus"]["label_agreement"] == pytest.approx(2 / 4)  # faces 0 and 3
    text = format_report(report)
    assert "FER+ majority" in text and "agree on 50.0%" in text
    assert "ferplus" not in report_by_label_sets(truth, probs, classes)
