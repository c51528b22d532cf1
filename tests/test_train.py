"""fer-train: split, class weights, FER+ alignment, CLI errors, and a short real training run that
saves a model fer-convert turns into int8 and the device classifier loads."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="fer-train needs TensorFlow (pip install -e .[convert])")
import keras  # noqa: E402

from converter import train_cli  # noqa: E402
from converter.train import (  # noqa: E402
    TrainConfig, WarmupCosine, WeightAverage, build_model, class_weights, load_training_faces, predict_probs,
    split_train_val, teacher_probs, train,
)
from fer_edge.cli_support import run_main  # noqa: E402
from fer_edge.errors import DataError, InputMissing, UsageError  # noqa: E402
from fer_edge.labels import FER2013_ORDER, KAGGLE_ORDER  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FER_TRAIN = SHARED / "data" / "fer2013" / "train"
needs_shared = pytest.mark.skipif(
    not FER_TRAIN.is_dir(),
    reason=f"real FER2013 data not present at {FER_TRAIN} (the shared/ folder beside the project)")


def test_validation_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(7), [400, 40, 400, 700, 500, 480, 320])
    train_idx, val_idx = split_train_val(labels, 0.1, seed=3)
    assert len(np.intersect1d(train_idx, val_idx)) == 0
    assert len(train_idx) + len(val_idx) == len(labels)
    assert abs(len(val_idx) - 284) <= 7
    assert set(labels[val_idx]) == set(range(7))  # the rare class too
    again = split_train_val(labels, 0.1, seed=3)[1]
    other = split_train_val(labels, 0.1, seed=4)[1]
    assert np.array_equal(val_idx, again) and not np.array_equal(val_idx, other)


def test_class_weights_lift_the_rare_class_with_mean_one():
    labels = np.repeat(np.arange(7), [3995, 436, 4097, 7215, 4965, 4830, 3171])
    for mode in ("sqrt", "balanced"):
        w = class_weights(labels, 7, mode)
        assert w[labels].mean() == pytest.approx(1.0, abs=1e-4)
        assert w.argmax() == KAGGLE_ORDER.index("disgust") and w.argmin() == KAGGLE_ORDER.index("happy")
    assert class_weights(labels, 7, "sqrt")[1] < class_weights(labels, 7, "balanced")[1]
    assert np.all(class_weights(labels, 7, "none") == 1)


def test_lr_schedule_warms_up_decays_to_its_floor_then_holds():
    schedule = WarmupCosine(peak=1e-3, warmup=10, total=100, floor=2e-4)
    lr = [float(schedule(step)) for step in range(0, 160)]
    assert lr[0] < lr[5] < lr[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lr[10:100], lr[11:101]))  # monotone decay
    assert lr[100] == pytest.approx(2e-4) and lr[159] == pytest.approx(2e-4)  # the averaging phase
    assert float(WarmupCosine(1e-3, 10, 100)(100)) == pytest.approx(0.0)  # no floor: to zero, as before


def test_weight_average_is_the_mean_of_the_epochs_it_covers(tmp_path):
    import keras

    model = build_model(width=0.25)
    path = tmp_path / "swa.keras"
    callback = WeightAverage(first_epoch=1, path=path)
    callback.set_model(model)
    snapshots = []
    for epoch, scale in enumerate((5.0, 1.0, 2.0, 4.0)):
        weights = [np.full_like(w, scale) for w in model.get_weights()]
        model.set_weights(weights)
        snapshots.append(weights)
        callback.on_epoch_end(epoch)
        assert np.array_equal(model.get_weights()[0], weights[0])  # training continues from its own weights
    averaged = keras.models.load_model(str(path), compile=False).get_weights()
    assert np.allclose(averaged[0], (1.0 + 2.0 + 4.0) / 3)  # epoch 0 (before first_epoch) left out


def test_teacher_targets_are_mirror_averaged_and_ensembled(tmp_path):
    model = build_model(width=0.25)
    path = tmp_path / "teacher.keras"
    model.save(str(path))
    faces = np.random.default_rng(0).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    mirrored = faces[:, :, ::-1].copy()
    assert not np.allclose(predict_probs(model, faces), predict_probs(model, mirrored), atol=1e-4)
    taught = teacher_probs([path], faces, log=lambda m: None)
    assert np.allclose(taught, teacher_probs([path], mirrored, log=lambda m: None), atol=1e-5)
    assert np.allclose(taught.sum(axis=1), 1.0, atol=1e-4)

    keras.utils.set_random_seed(1)  # a second, differently initialised teacher
    other = tmp_path / "other.keras"
    build_model(width=0.25).save(str(other))
    alone = teacher_probs([other], faces, log=lambda m: None)
    assert not np.allclose(alone, taught, atol=1e-4)
    assert np.allclose(teacher_probs([path, other], faces, log=lambda m: None), (taught + alone) / 2, atol=1e-5)
    with pytest.raises(DataError, match="--teacher .*missing"):
        teacher_probs([path, tmp_path / "missing.keras"], faces, log=lambda m: None)


def _write_fer_csv(path: Path, emotions: list[int], usage: str = "Training") -> None:
    rng = np.random.default_rng(0)
    rows = ["emotion,pixels,Usage"]
    for e in emotions:
        rows.append(f"{e}," + " ".join(map(str, rng.integers(0, 256, 48 * 48))) + f",{usage}")
    path.write_text("\n".join(rows) + "\n")


def _write_ferplus(path: Path, kaggle_labels: list[int], usage: str = "Training") -> None:
    cols = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF"]
    to_col = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness",
              "neutral": "neutral", "sad": "sadness", "surprise": "surprise"}
    rows = ["Usage,Image name," + ",".join(cols)]
    for i, k in enumerate(kaggle_labels):
        votes = dict.fromkeys(cols, 0)
        votes[to_col[KAGGLE_ORDER[k]]] = 8
        votes["neutral"] += 2
        rows.append(f"{usage},fer{i:07d}.png," + ",".join(str(votes[c]) for c in cols))
    path.write_text("\n".join(rows) + "\n")


def test_ferplus_soft_labels_align_by_row_order(tmp_path):
    emotions = [i % 7 for i in range(28)]  # FER2013 CSV order
    csv_path, fp_path = tmp_path / "fer2013.csv", tmp_path / "fer2013new.csv"
    _write_fer_csv(csv_path, emotions)
    kaggle = [KAGGLE_ORDER.index(FER2013_ORDER[e]) for e in emotions]
    _write_ferplus(fp_path, kaggle)
    cfg = TrainConfig(data=csv_path, out=tmp_path / "out", ferplus=fp_path, ferplus_weight=0.5)
    faces, targets = load_training_faces(cfg, log=lambda m: None)
    assert np.array_equal(faces.labels, kaggle)
    assert np.allclose(targets.sum(axis=1), 1.0)
    assert np.allclose(targets[np.arange(len(kaggle)), kaggle], [0.5 + 0.5 * (1.0 if k == 4 else 0.8) for k in kaggle])

    _write_ferplus(fp_path, kaggle[::-1])  # shuffled rows: refused, not silently misaligned
    with pytest.raises(DataError, match="agrees"):
        load_training_faces(cfg, log=lambda m: None)
    _write_ferplus(fp_path, kaggle[:-1])
    with pytest.raises(DataError, match="27 Training rows"):
        load_training_faces(cfg, log=lambda m: None)


def test_ferplus_with_a_folder_is_a_usage_error(tmp_path):
    (tmp_path / "happy").mkdir()
    fp = tmp_path / "fer2013new.csv"
    fp.write_text("Usage,Image name\n")
    with pytest.raises(UsageError, match="fer2013.csv"):
        load_training_faces(TrainConfig(data=tmp_path, out=tmp_path / "o", ferplus=fp), log=lambda m: None)


@pytest.mark.parametrize("argv, code, text", [
    (["/nonexistent/fer2013", "--out", "OUT"], 66, "not found"),
    (["DATA", "--out", "OUT", "--epochs", "0"], 64, "--epochs"),
    (["DATA", "--out", "OUT", "--val-fraction", "0.9"], 64, "--val-fraction"),
    (["DATA", "--out", "OUT", "--test", "/nonexistent/test"], 66, "--test"),
    (["DATA", "--out", "OUT", "--epochs", "5", "--swa-epochs", "5"], 64, "--swa-epochs"),
    (["DATA", "--out", "OUT", "--distill-weight", "0"], 64, "--distill-weight"),
    (["DATA", "--out", "OUT", "--swa-lr", "1e-4"], 64, "--swa-epochs"),
    (["DATA", "--out", "OUT", "--teacher", "/nonexistent/t.keras"], 66, "--teacher"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, argv, code, text):
    data = tmp_path / "data"
    (data / "happy").mkdir(parents=True)
    argv = [str(data) if a == "DATA" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert run_main("fer-train", train_cli.main, argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("fer-train: error:") and text in err and "\n" not in err


@needs_shared
def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    out = tmp_path / "run"
    settings = dict(data=FER_TRAIN, out=out, limit=700, epochs=3, steps_per_epoch=4, batch_size=32, width=0.25,
                    seed=0, bn_recalibration=0)

    def interrupt_in_epoch_two(message):
        if message.startswith("epoch 2/"):
            raise KeyboardInterrupt  # as Ctrl-C or a reboot would, before epoch 2 is checkpointed

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**settings), log=interrupt_in_epoch_two)
    assert (out / "checkpoint_last.keras").is_file()
    with pytest.raises(UsageError, match="--learning-rate 0.002 \\(now 0.001\\)"):
        train(TrainConfig(**settings, learning_rate=1e-3, resume=True), log=lambda m: None)

    s = train(TrainConfig(**settings, resume=True), log=lambda m: None).summary
    assert s["resumed_after_epoch"] == 1 and s["epochs_run"] == 3
    assert (out / "training_log.csv").read_text().count("\n") == 4  # header + 3 epochs, none twice
    # The optimizer's step count came back with it: the LR at each epoch's end follows one unbroken schedule.
    schedule = WarmupCosine(2e-3, warmup=4, total=12)
    assert np.allclose(s["history"]["lr"], [float(schedule(4 * e)) for e in (1, 2, 3)], rtol=1e-5)
    assert not (out / "checkpoint_last.keras").exists()  # finished: nothing left to resume
    with pytest.raises(InputMissing, match="--resume"):
        train(TrainConfig(**settings, resume=True), log=lambda m: None)


@needs_shared
def test_short_training_run_saves_a_model_that_converts_and_runs_on_device(tmp_path):
    from converter.convert import run_conversion
    from fer_edge.datasets import load_faces
    from fer_edge.runtime import EmotionClassifier

    out = tmp_path / "run"
    # 16 steps an epoch: over 8, whether the loss fell hung on which single face went to validation
    result = train(TrainConfig(data=FER_TRAIN, out=out, limit=700, epochs=2, steps_per_epoch=16, batch_size=32,
                               width=0.5, seed=0, learning_rate=3e-3), log=lambda m: None)
    s = result.summary
    losses = s["history"]["loss"]
    assert len(losses) == 2 and losses[1] < losses[0], losses  # it learns
    assert s["data"]["train"] + s["data"]["validation"] == s["data"]["faces"] == 700
    assert s["input_range"] == "0,1" and s["labels"] == "kaggle"
    for name in ("fer_edge_cnn.keras", "training_log.csv", "learning_curves.png", "confusion.png",
                 "classification_report.txt", "training_summary.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "training_summary.json").read_text())["epochs_run"] == 2
    assert (out / "training_log.csv").read_text().count("\n") == 3
    bn = s["bn_recalibration"]
    assert bn["faces"] == s["data"]["train"] and bn["applied"] == (bn["val_accuracy_after"] >= bn["val_accuracy_before"])

    # finishing a checkpoint again (no training) keeps the history and writes the same reports
    again = train(TrainConfig(data=FER_TRAIN, out=out, limit=700, width=0.5, seed=0,
                              from_checkpoint=result.model_path, bn_recalibration=0), log=lambda m: None)
    assert again.summary["epochs_run"] == 2 and again.summary["fit_seconds"] == s["fit_seconds"]

    # a warm start (another LR cycle) begins where the first run ended, not from random weights
    warm = train(TrainConfig(data=FER_TRAIN, out=tmp_path / "warm", limit=700, epochs=1, steps_per_epoch=8,
                             batch_size=32, width=0.5, seed=0, learning_rate=1e-3, init_from=result.model_path,
                             bn_recalibration=0), log=lambda m: None)
    assert warm.summary["history"]["loss"][0] < losses[0]
    with pytest.raises(UsageError, match="seed 0 \\(now 1\\)"):  # its validation faces would leak
        train(TrainConfig(data=FER_TRAIN, out=tmp_path / "leak", limit=700, width=0.5, seed=1,
                          init_from=result.model_path), log=lambda m: None)

    # distilling from a teacher with weight averaging: both recorded, the averaged file cleaned up
    taught = train(TrainConfig(data=FER_TRAIN, out=tmp_path / "taught", limit=700, epochs=2, steps_per_epoch=6,
                               batch_size=32, width=0.5, seed=0, init_from=result.model_path,
                               teacher=(result.model_path, result.model_path), swa_epochs=1, bn_recalibration=256), log=lambda m: None)
    t = taught.summary
    assert 0.0 < t["teacher"]["train_agreement_with_labels"] <= 1.0 and t["teacher"]["weight"] == 0.5
    assert t["teacher"]["models"] == [str(result.model_path)] * 2
    assert t["weight_average"]["epochs_averaged"] == 1
    assert t["chosen"].startswith("weight average") == t["weight_average"]["chosen"]
    assert not (tmp_path / "taught" / "fer_edge_cnn_swa.keras").exists()
    with pytest.raises(UsageError, match="--teacher .* seed 0 \\(now 1\\)"):  # a teacher that saw validation
        train(TrainConfig(data=FER_TRAIN, out=tmp_path / "leak", limit=700, width=0.5, seed=1,
                          teacher=(result.model_path,)), log=lambda m: None)

    tflite = tmp_path / "cnn_int8.tflite"
    report = run_conversion(result.model_path, tflite, quantize="int8", calibration=FER_TRAIN,
                            calibration_samples=40, labels=KAGGLE_ORDER, input_range=(0.0, 1.0),
                            evaluate_path=None, usage=None, strict=False, seed=0, progress=False,
                            log=lambda m: None)
    assert report["size_bytes"]["tflite"] < 1_000_000
    classifier = EmotionClassifier(tflite, num_threads=1)
    assert classifier.quantized and classifier.labels == KAGGLE_ORDER
    faces = load_faces(FER_TRAIN, limit=10, seed=1).images
    probs = classifier.predict(list(faces))
    assert probs.shape == (len(faces), 7)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-3) and (probs >= 0).all()


FERPLUS_CSV = SHARED / "data" / "fer2013_trainval.csv.gz"
FERPLUS_VOTES = SHARED / "data" / "ferplus_trainval.csv"


@pytest.mark.skipif(not FERPLUS_VOTES.is_file(), reason=f"FER+ votes not present at {FERPLUS_VOTES}")
def test_short_vote_training_run_learns_converts_and_scores_both_label_sets(tmp_path):
    """Vote training on the real gzipped fer2013.csv rows with FER+'s real votes, end to end."""
    from converter.convert import run_conversion
    from fer_edge.datasets import ferplus_majority, load_faces
    from fer_edge.runtime import EmotionClassifier

    out = tmp_path / "votes"
    result = train(TrainConfig(data=FERPLUS_CSV, out=out, ferplus=FERPLUS_VOTES, limit=600, epochs=3,
                               steps_per_epoch=8, batch_size=32, width=0.5, seed=0, learning_rate=3e-3,
                               label_smoothing=0.0, bn_recalibration=0, test=FERPLUS_CSV), log=lambda m: None)
    s = result.summary
    losses = s["history"]["loss"]
    assert losses[-1] < losses[0], losses  # it learns the vote distributions
    assert s["data"]["labels"] == "FER+ votes"
    # validation scores FER+ majorities only: no face with a tied top vote is in it
    faces, _ = load_training_faces(TrainConfig(data=FERPLUS_CSV, out=out, ferplus=FERPLUS_VOTES, limit=600, seed=0),
                                   log=lambda m: None)
    assert s["data"]["faces"] == len(faces) <= 600
    assert s["validation"]["samples"] == s["data"]["validation"] < 600 * 0.1 + 7
    test = s["test"]  # PublicTest, by both label sets
    assert test["samples"] == 3577 and test["ferplus"]["samples"] == 3370 and test["ferplus"]["not_scored"] == 207
    assert abs(test["ferplus"]["label_agreement"] - 0.654) < 0.001  # the ceiling the model card explains

    tflite = tmp_path / "votes_int8.tflite"
    report = run_conversion(result.model_path, tflite, quantize="int8", calibration=FERPLUS_CSV,
                            calibration_samples=60, labels=KAGGLE_ORDER, input_range=(0.0, 1.0),
                            evaluate_path=FERPLUS_CSV, usage="PublicTest", strict=False, seed=0, progress=False,
                            log=lambda m: None, ferplus=FERPLUS_VOTES)
    evaluation = report["evaluation"]
    plus = evaluation["tflite"]["ferplus"]
    assert plus["samples"] == 3370 and sum(map(sum, plus["confusion"])) == 3370
    assert evaluation["ferplus_accuracy_drop_points"] == round(
        100 * (evaluation["float"]["ferplus"]["accuracy"] - plus["accuracy"]), 2)
    # the device side (no TensorFlow) gives the converter's FER+ figure on the same faces
    classifier = EmotionClassifier(tflite, num_threads=1)
    test_faces = load_faces(FERPLUS_CSV, usage="PublicTest", ferplus=FERPLUS_VOTES)
    truth = ferplus_majority(test_faces.votes, classifier.labels)
    predicted = np.concatenate([classifier.predict(list(test_faces.images[i:i + 256]))
                                for i in range(0, len(test_faces), 256)]).argmax(1)
    assert float((predicted == truth)[truth >= 0].mean()) == pytest.approx(plus["accuracy"], abs=1e-9)


def test_ferplus_majority_drops_ties_contempt_unknown_and_not_a_face_and_shares_leave_contempt_out(tmp_path):
    from fer_edge.datasets import ferplus_majority, ferplus_shares
    # columns: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
    votes = np.array([
        [0, 7, 0, 0, 0, 0, 0, 3, 0, 0],   # happy, with contempt votes left out of its shares
        [4, 0, 0, 0, 0, 0, 0, 4, 2, 0],   # tied with contempt: not scored
        [0, 0, 0, 0, 0, 0, 0, 6, 4, 0],   # contempt majority
        [1, 0, 0, 0, 0, 0, 0, 0, 9, 0],   # unknown
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],  # not a face
        [0, 0, 5, 0, 0, 0, 5, 0, 0, 0],   # surprise/fear tie
        [0, 0, 0, 2, 6, 1, 1, 0, 0, 0],   # anger
    ], np.float32)
    assert ferplus_majority(votes, KAGGLE_ORDER).tolist() == [
        KAGGLE_ORDER.index("happy"), -1, -1, -1, -1, -1, KAGGLE_ORDER.index("angry")]
    assert ferplus_majority(votes, FER2013_ORDER)[6] == FER2013_ORDER.index("angry")  # any label order
    shares = ferplus_shares(votes, KAGGLE_ORDER)
    assert shares[0].tolist() == [0, 0, 0, 1, 0, 0, 0]
    assert np.allclose(shares[6], np.array([6, 1, 1, 0, 0, 2, 0]) / 10)
    assert shares[4].sum() == 0  # nothing of the seven: callers drop it
