"""fer-train: train fer-edge's own edge-sized expression CNN on FER2013 (optionally with FER+ votes).

The model it writes is the *inference* model only: input 48x48x1 grey scaled to [0, 1]
(`pixels / 255`), softmax outputs in the Kaggle folder (alphabetical) order. Augmentation runs in
the tf.data pipeline, so nothing of it is saved into the model fer-convert turns into int8:

    fer-convert OUT/fer_edge_cnn.keras -o fer_edge_cnn_int8.tflite --labels kaggle --input-range 0,1 \
        --calibration fer2013/train --evaluate fer2013/test --report report.json

The validation split is carved from the *training* data (stratified, seeded); the test split is
only ever evaluated once, at the end, with the best checkpoint.
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from fer_edge import __version__
from fer_edge.datasets import FaceSet, ferplus_majority, ferplus_shares, is_csv, load_faces, stratified_indices
from fer_edge.errors import DataError, InputMissing, OutputError, UsageError
from fer_edge.labels import KAGGLE_ORDER
from fer_edge.metrics import classification_report, format_report, report_by_label_sets, save_confusion_png

Log = Callable[[str], None]

MODEL_NAME = "fer_edge_cnn"
INPUT_SIDE = 48
INPUT_RANGE = "0,1"  # the model takes pixels / 255; fer-convert --input-range 0,1
LABELS = "kaggle"  # outputs in KAGGLE_ORDER; fer-convert --labels kaggle
# Channels per stage (two 3x3 conv + BN + ReLU each, 2x2 max-pool between stages): 48→24→12→6.
STAGES = (32, 64, 128, 192)
CLASS_WEIGHTINGS = ("sqrt", "balanced", "none")
PRECISIONS = ("auto", "float32", "bfloat16")
BN_FACES = 4096  # clean training faces BatchNorm statistics are re-estimated on
FERPLUS_TARGETS = ("votes", "majority")


@dataclass
class TrainConfig:
    data: Path
    out: Path
    epochs: int = 40
    batch_size: int = 64
    seed: int = 0
    val_fraction: float = 0.1
    limit: int | None = None
    test: Path | None = None
    ferplus: Path | None = None  # FER+ votes for DATA's rows: train on them (labels, split, validation)
    ferplus_target: str = "votes"  # votes: each face's vote shares (FER+'s PLD); majority: one-hot majority
    ferplus_weight: float = 1.0  # target = (1-w) * FER2013 one-hot + w * FER+ target
    allow_overlap: bool = False  # --init-from/--teacher may come from a run on other data (see check_same_split)
    learning_rate: float = 2e-3  # AdamW peak, after a linear warm-up, then cosine to zero
    weight_decay: float = 1e-2  # decoupled (AdamW); not on BatchNorm parameters or biases
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    patience: int = 10  # early stopping on validation accuracy
    class_weighting: str = "sqrt"
    width: float = 1.0  # scales every stage's channels (smoke tests use less)
    dropout: float = 0.4
    steps_per_epoch: int | None = None  # cap (smoke tests); default: one pass over the training split
    usage: str = "Training"  # rows of a fer2013.csv to train on
    bn_recalibration: int = BN_FACES  # clean training faces to re-estimate BatchNorm statistics on; 0: off
    from_checkpoint: Path | None = None  # skip fitting: finish (recalibrate, evaluate, report) this model
    init_from: Path | None = None  # start fitting from this fer-train model's weights (another LR cycle)
    teacher: tuple[Path, ...] = ()  # fer-train models whose mirror-averaged outputs, averaged, are blended in
    distill_weight: float = 0.5  # soft target = (1-w) * label + w * teacher probabilities
    swa_epochs: int = 0  # average the weights at the end of the last K epochs, run at a constant LR
    swa_lr: float | None = None  # that constant LR (default: learning_rate / 5)
    resume: bool = False  # continue an interrupted run in `out` from its last finished epoch
    precision: str = "auto"  # bfloat16 mixed precision where the CPU has native bf16 (about 2x faster)
    progress: bool = False
    stages: tuple[int, ...] = STAGES

    def check(self) -> None:
        if self.epochs < 1:
            raise UsageError("--epochs must be at least 1")
        if self.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        if not 0.0 < self.val_fraction < 0.5:
            raise UsageError("--val-fraction must be between 0 and 0.5 (e.g. 0.1)")
        if self.limit is not None and self.limit < 50:
            raise UsageError("--limit must be at least 50 faces (a few per class for training and validation)")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise UsageError("--steps-per-epoch must be at least 1")
        if self.learning_rate <= 0:
            raise UsageError("--learning-rate must be positive")
        if self.class_weighting not in CLASS_WEIGHTINGS:
            raise UsageError(f"--class-weighting must be one of {', '.join(CLASS_WEIGHTINGS)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UsageError("--label-smoothing must be in [0, 1)")
        if not 0.0 < self.width <= 2.0:
            raise UsageError("--width must be in (0, 2]")
        if not 0.0 <= self.ferplus_weight <= 1.0:
            raise UsageError("--ferplus-weight must be in [0, 1]")
        if self.ferplus_target not in FERPLUS_TARGETS:
            raise UsageError(f"--ferplus-target must be one of {', '.join(FERPLUS_TARGETS)}")
        if self.patience < 1:
            raise UsageError("--patience must be at least 1")
        if self.bn_recalibration < 0:
            raise UsageError("--bn-recalibration must be 0 (off) or a number of faces")
        if self.resume and self.from_checkpoint is not None:
            raise UsageError("--resume trains and --from-checkpoint does not; give one of them")
        if self.init_from is not None and self.from_checkpoint is not None:
            raise UsageError("--init-from trains and --from-checkpoint does not; give one of them")
        if not 0.0 < self.distill_weight <= 1.0:
            raise UsageError("--distill-weight must be in (0, 1]")
        if not 0 <= self.swa_epochs < self.epochs:
            raise UsageError("--swa-epochs must be at least 0 and less than --epochs (the LR must first decay)")
        if self.swa_lr is not None and not self.swa_epochs:
            raise UsageError("--swa-lr sets the LR of the averaging epochs; give --swa-epochs too")
        if self.swa_lr is not None and not 0.0 < self.swa_lr <= self.learning_rate:
            raise UsageError("--swa-lr must be positive and at most --learning-rate")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}")


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic (AVX512_BF16 / AMX): where mixed_bfloat16 training pays off on a CPU."""
    if tf.config.list_physical_devices("GPU"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    if precision == "auto":
        return "bfloat16" if cpu_has_bf16() else "float32"
    return precision


# --------------------------------------------------------------------------- data

def split_train_val(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded (train, val) index arrays over the training data."""
    n_val = max(1, int(round(len(labels) * fraction)))
    val = stratified_indices(labels, n_val, seed=seed + 1)
    mask = np.ones(len(labels), bool)
    mask[val] = False
    return np.flatnonzero(mask), val


def class_weights(labels: np.ndarray, n_classes: int, mode: str) -> np.ndarray:
    """Per-class loss weights with mean 1 over the samples.

    `balanced` is N / (K n_c) (every class counts equally); `sqrt` is its square root, which lifts
    the rare `disgust` class (436 of 28,709 faces) about 4x over `happy` without letting its noisy
    few faces dominate the gradient.
    """
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    if mode == "none":
        return np.ones(n_classes, np.float32)
    raw = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    weights = np.sqrt(raw) if mode == "sqrt" else raw
    weights /= (weights[labels]).mean()
    return weights.astype(np.float32)


def load_training_faces(cfg: TrainConfig, log: Log) -> tuple[FaceSet, np.ndarray]:
    """The training faces and their targets (n, 7): one-hot FER2013 labels, or FER+ targets.

    With --ferplus the faces' labels become FER+'s (the majority; the top share where the top
    vote is tied), so the split, the class weights and validation all follow the cleaner label
    set, and faces FER+ mostly calls contempt, unknown or not-a-face are dropped (with
    --ferplus-target majority, tied faces too). Contempt votes are left out of the vote shares:
    none of the seven outputs can say contempt."""
    data = Path(cfg.data)
    csv_data = is_csv(data)
    if cfg.ferplus is not None and not csv_data:
        if not data.exists():
            raise InputMissing(f"dataset {data} not found; give a folder of <class>/*.jpg or a fer2013.csv file")
        raise UsageError("--ferplus needs DATA as fer2013.csv: FER+ rows follow fer2013.csv row order, and "
                         "Kaggle folder names (Training_<id>.jpg) carry no row number to match them by")
    # A CSV is loaded whole and subset here, so FER+ rows can be aligned first.
    faces = load_faces(data, usage=cfg.usage if csv_data else None, limit=None if csv_data else cfg.limit,
                       seed=cfg.seed, warn=log, ferplus=cfg.ferplus)
    if tuple(faces.classes) != KAGGLE_ORDER:
        raise DataError(f"dataset {data}: classes {faces.classes} are not the seven FER2013 emotions")
    eye = np.eye(len(KAGGLE_ORDER), dtype=np.float32)
    targets = eye[faces.labels]
    if faces.votes is not None:
        majority = ferplus_majority(faces.votes, KAGGLE_ORDER)
        shares = ferplus_shares(faces.votes, KAGGLE_ORDER)
        if cfg.ferplus_target == "majority":
            keep, plus = majority >= 0, eye[np.maximum(majority, 0)]
        else:
            emotion_votes = faces.votes[:, :len(KAGGLE_ORDER)]
            keep, plus = emotion_votes.max(1) > faces.votes[:, len(KAGGLE_ORDER):].max(1), shares
        agreement = float((majority == faces.labels)[majority >= 0].mean())
        log(f"FER+ {cfg.ferplus_target} targets (weight {cfg.ferplus_weight:g}): {int(keep.sum())} of {len(faces)} "
            f"faces kept, {int((~keep).sum())} dropped (contempt, unknown or not-a-face"
            + (", or a tied top vote" if cfg.ferplus_target == "majority" else "")
            + f"); the FER+ majority agrees with the FER2013 label on {agreement:.1%}")
        targets = ((1 - cfg.ferplus_weight) * targets + cfg.ferplus_weight * plus).astype(np.float32)
        faces = FaceSet(faces.images, np.where(majority >= 0, majority, shares.argmax(1)), faces.classes,
                        faces.source, faces.skipped, faces.votes).subset(keep)
        targets = targets[keep]
    if csv_data and cfg.limit is not None and cfg.limit < len(faces):
        keep = stratified_indices(faces.labels, cfg.limit, cfg.seed)
        faces, targets = faces.subset(keep), targets[keep]
    return faces, targets


# --------------------------------------------------------------------------- model

def build_model(stages: tuple[int, ...] = STAGES, width: float = 1.0, dropout: float = 0.4,
                n_classes: int = len(KAGGLE_ORDER)):
    """fer_edge_cnn: a VGG-style stack of 3x3 conv-BN-ReLU pairs, global average pooling, softmax.

    Plain 3x3 convolutions (no depthwise) because they are what int8 XNNPACK/oneDNN run fastest
    per useful parameter at this size, and they quantize with almost no loss.
    """
    from keras import layers

    inputs = keras.Input((INPUT_SIDE, INPUT_SIDE, 1), name="face")
    x = inputs
    for s, channels in enumerate(stages):
        f = max(8, int(round(channels * width)))
        for j in range(2):
            x = layers.Conv2D(f, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                              name=f"s{s + 1}_conv{j + 1}")(x)
            x = layers.BatchNormalization(name=f"s{s + 1}_bn{j + 1}")(x)
            x = layers.ReLU(name=f"s{s + 1}_relu{j + 1}")(x)
        if s < len(stages) - 1:
            x = layers.MaxPooling2D(name=f"s{s + 1}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    # float32 softmax even when training in mixed precision
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="emotion")(x)
    return keras.Model(inputs, outputs, name=MODEL_NAME)


def augmenter(seed: int):
    """Train-time only: flips, shifts, rotation, zoom, brightness, contrast (inputs in [0, 1])."""
    from keras import layers

    return keras.Sequential([
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomRotation(12 / 360, fill_mode="reflect", seed=seed + 1),
        layers.RandomZoom((-0.15, 0.15), fill_mode="reflect", seed=seed + 2),
        layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 3),
        layers.RandomBrightness(0.2, value_range=(0.0, 1.0), seed=seed + 4),
        layers.RandomContrast(0.3, seed=seed + 5),
    ], name="augment")


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then cosine decay to `floor` at `total` steps, constant after.

    A floor above zero is the weight-averaging phase (--swa-epochs): its snapshots must still
    move, or averaging them would give back the last one.
    """

    def __init__(self, peak: float, warmup: int, total: int, floor: float = 0.0):
        self.peak, self.warmup, self.total = float(peak), int(warmup), int(max(total, 1))
        self.floor = float(floor)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        warm = self.peak * (step + 1.0) / float(max(self.warmup, 1))
        progress = ops.clip((step - self.warmup) / float(max(self.total - self.warmup, 1)), 0.0, 1.0)
        cosine = self.floor + 0.5 * (self.peak - self.floor) * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.warmup, warm, cosine)

    def get_config(self):
        return {"peak": self.peak, "warmup": self.warmup, "total": self.total, "floor": self.floor}


def make_dataset(images: np.ndarray, targets: np.ndarray, weights: np.ndarray | None, batch_size: int,
                 seed: int, augment: bool, shuffle: bool):
    x = images[..., None]  # uint8 (n, 48, 48, 1): scaled in the graph, 4x less memory than float
    items = (x, targets) if weights is None else (x, targets, weights)
    ds = tf.data.Dataset.from_tensor_slices(items)
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=shuffle)
    aug = augmenter(seed) if augment else None

    def prepare(x, *rest):
        x = tf.cast(x, tf.float32) / 255.0
        if aug is not None:
            x = tf.clip_by_value(aug(x, training=True), 0.0, 1.0)
        return (x, *rest)

    # One map call at a time keeps the augmentation random stream (and so the run) reproducible.
    return ds.map(prepare, num_parallel_calls=1 if augment else tf.data.AUTOTUNE).prefetch(2)


# --------------------------------------------------------------------------- training

@dataclass
class TrainResult:
    out: Path
    model_path: Path
    summary: dict[str, Any] = field(default_factory=dict)


def export_float32(trained, cfg: TrainConfig):
    """The same weights in a plain float32 model (no mixed-precision casts for the converter)."""
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        model = build_model(cfg.stages, cfg.width, cfg.dropout, len(KAGGLE_ORDER))
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    try:
        model.set_weights([np.asarray(w, np.float32) for w in trained.get_weights()])
    except ValueError:
        raise DataError(f"the trained model does not match {MODEL_NAME} with stages {list(cfg.stages)} x width "
                        f"{cfg.width:g}; pass the --width it was trained with") from None
    return model


def recalibrate_batchnorm(model, images: np.ndarray, chunk: int = 512) -> int:
    """Re-estimate every BatchNorm layer's moving mean/variance on un-augmented faces ("precise BN").

    During training the moving statistics follow *augmented* batches (contrast, brightness,
    reflect-padded zoom and shifts) under a moving learning rate; inference sees clean faces. The
    early layers' variances differ by 20-40% between the two, which costs accuracy. One pass in
    training mode over clean training faces, averaging the batch statistics with momentum
    k/(k+1), replaces them with the statistics of what the model will actually see.
    """
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns or len(images) == 0:
        return 0
    saved = [layer.momentum for layer in bns]
    try:
        for k, start in enumerate(range(0, len(images), chunk)):
            for layer in bns:
                layer.momentum = k / (k + 1.0)
            batch = images[start:start + chunk, ..., None].astype(np.float32) / 255.0
            model(batch, training=True)  # only BN statistics change; no optimizer step
    finally:
        for layer, momentum in zip(bns, saved):
            layer.momentum = momentum
    return len(images)


def read_training_log(path: Path) -> dict[str, list[float]]:
    """CSVLogger's file back into a Keras-style history dict (for --from-checkpoint)."""
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    keys = [k for k in (rows[0].keys() if rows else []) if k != "epoch"]
    return {k: [float(r[k]) for r in rows if r.get(k) not in (None, "")] for k in keys}


def predict_probs(model, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    outs = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size, ..., None].astype(np.float32) / 255.0
        outs.append(np.asarray(model(batch, training=False)))
    return np.concatenate(outs) if outs else np.empty((0, len(KAGGLE_ORDER)), np.float32)


def teacher_probs(teacher_paths: Sequence[Path], images: np.ndarray, log: Log) -> np.ndarray:
    """The teachers' class probabilities, each face averaged with its mirror image, then over teachers.

    Mirror averaging is worth 1-2 points for these models but doubles inference on the device, and an
    ensemble of two runs adds about one more; distilling both into the targets lets a single pass of
    one network learn part of it.
    """
    probs = np.zeros((len(images), len(KAGGLE_ORDER)), np.float64)
    for path in teacher_paths:
        try:
            teacher = keras.models.load_model(str(path), compile=False)
        except Exception as exc:
            raise DataError(f"--teacher {path} could not be loaded as a Keras model "
                            f"({str(exc).strip().splitlines()[0][:200]})") from None
        shape = tuple(teacher.input_shape[1:])
        if shape != (INPUT_SIDE, INPUT_SIDE, 1) or teacher.output_shape[-1] != len(KAGGLE_ORDER):
            raise DataError(f"--teacher {path} takes {shape} and gives {teacher.output_shape[-1]} classes; "
                            f"it must be a fer-train model (48x48x1 in, 7 classes out)")
        probs += (predict_probs(teacher, images) + predict_probs(teacher, images[:, :, ::-1])) / 2
        log(f"teacher {path}: mirror-averaged probabilities for {len(images)} training faces")
    return (probs / len(teacher_paths)).astype(np.float32)


def train(cfg: TrainConfig, log: Log = lambda m: print(m, file=sys.stderr)) -> TrainResult:
    cfg.check()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; give a folder for the model and reports")
    test_path = Path(cfg.test) if cfg.test is not None else None
    if test_path is not None and not test_path.exists():
        raise InputMissing(f"--test {test_path} not found; give a FER2013 test folder or CSV")
    if cfg.init_from is not None:
        check_same_split(Path(cfg.init_from), cfg, "--init-from")
    for teacher in cfg.teacher:  # a teacher that saw the validation faces would leak their labels
        check_same_split(Path(teacher), cfg, "--teacher")
    if cfg.resume:
        check_resumable(out, cfg)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create --out {out} ({exc.strerror}); choose a writable folder") from None
    if cfg.from_checkpoint is None and not cfg.resume:  # what --resume checks a later call against
        (out / RUN_CONFIG).write_text(json.dumps(config_record(cfg), indent=2) + "\n")

    started = time.time()
    faces, targets = load_training_faces(cfg, log)
    n_classes = len(KAGGLE_ORDER)
    counts = np.bincount(faces.labels, minlength=n_classes)
    if (counts < 2).any():
        thin = [KAGGLE_ORDER[i] for i in np.flatnonzero(counts < 2)]
        raise DataError(f"dataset {cfg.data}: class(es) {', '.join(thin)} have fewer than 2 faces; "
                        "cannot split off validation faces (raise --limit?)")
    train_idx, val_idx = split_train_val(faces.labels, cfg.val_fraction, cfg.seed)
    if faces.votes is not None:  # validation scores FER+ majorities: a face with a tied top vote has none
        val_idx = val_idx[ferplus_majority(faces.votes, KAGGLE_ORDER)[val_idx] >= 0]
    log(f"data: {len(faces)} faces from {faces.source}: {len(train_idx)} train / {len(val_idx)} validation "
        f"(stratified, seed {cfg.seed}); " + ", ".join(f"{k} {v}" for k, v in faces.counts().items()))

    keras.utils.set_random_seed(cfg.seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # older TF: best effort
        pass

    teacher_info: dict[str, Any] | None = None
    if cfg.teacher and cfg.from_checkpoint is None:
        taught = teacher_probs([Path(t) for t in cfg.teacher], faces.images[train_idx], log)
        agree = float((taught.argmax(1) == faces.labels[train_idx]).mean())
        targets = targets.copy()
        targets[train_idx] = (1 - cfg.distill_weight) * targets[train_idx] + cfg.distill_weight * taught
        teacher_info = {"models": [str(t) for t in cfg.teacher], "weight": cfg.distill_weight,
                        "mirror_averaged": True, "train_agreement_with_labels": round(agree, 4)}
        log(f"distilling: targets = {1 - cfg.distill_weight:g} x label + {cfg.distill_weight:g} x teacher "
            f"(the teacher agrees with {agree:.1%} of the training labels)")

    weights = class_weights(faces.labels[train_idx], n_classes, cfg.class_weighting)
    log("class weights (" + cfg.class_weighting + "): "
        + ", ".join(f"{name} {w:.2f}" for name, w in zip(KAGGLE_ORDER, weights)))
    train_ds = make_dataset(faces.images[train_idx], targets[train_idx], weights[faces.labels[train_idx]],
                            cfg.batch_size, cfg.seed, augment=True, shuffle=True)
    val_targets = np.eye(n_classes, dtype=np.float32)[faces.labels[val_idx]]  # the labels we report (FER+ with --ferplus)
    val_ds = make_dataset(faces.images[val_idx], val_targets, None, 256, cfg.seed, augment=False, shuffle=False)
    full_steps = max(1, len(train_idx) // cfg.batch_size)
    steps = min(full_steps, cfg.steps_per_epoch) if cfg.steps_per_epoch else full_steps
    if steps < full_steps:
        train_ds = train_ds.repeat()
    total_steps = steps * cfg.epochs
    decay_steps = steps * (cfg.epochs - cfg.swa_epochs)  # the SWA epochs run at a constant LR after these
    warmup = int(round(min(cfg.warmup_epochs * steps, 0.3 * decay_steps)))
    swa_lr = (cfg.swa_lr if cfg.swa_lr is not None else cfg.learning_rate / 5) if cfg.swa_epochs else 0.0

    precision = resolve_precision(cfg.precision)
    model_path = out / f"{MODEL_NAME}.keras"
    log_path = out / "training_log.csv"
    batch_losses: list[float] = []
    swa_path = out / f"{MODEL_NAME}_swa.keras"
    schedule_info: dict[str, Any] = {"steps_per_epoch": steps, "warmup_steps": warmup, "total_steps": total_steps,
                                     "decay_steps": decay_steps, "peak_lr": cfg.learning_rate, "swa_lr": swa_lr,
                                     "swa_epochs": cfg.swa_epochs, "optimizer": "AdamW",
                                     "weight_decay": cfg.weight_decay}
    if cfg.from_checkpoint is None:
        schedule = WarmupCosine(cfg.learning_rate, warmup, decay_steps, floor=swa_lr)
        history, fit_seconds, resumed_after = fit(cfg, precision, train_ds, val_ds, steps, schedule, model_path,
                                                  swa_path, log_path, batch_losses, started, log)
        trained = keras.models.load_model(str(model_path), compile=False)
        (out / LAST_CHECKPOINT).unlink(missing_ok=True)  # finished: nothing left to resume
    else:
        checkpoint = Path(cfg.from_checkpoint)
        if not checkpoint.is_file():
            raise InputMissing(f"--from-checkpoint {checkpoint} not found; give a .keras file fer-train wrote")
        try:
            trained = keras.models.load_model(str(checkpoint), compile=False)
        except Exception as exc:
            raise DataError(f"--from-checkpoint {checkpoint} could not be loaded as a Keras model "
                            f"({str(exc).strip().splitlines()[0][:200]})") from None
        history, fit_seconds, resumed_after = read_training_log(log_path), None, None
        log(f"finishing {checkpoint} without training (history from {log_path if history else 'nowhere'})")
    epochs_run = len(history.get("loss", []))
    best_epoch = int(np.argmax(history["val_accuracy"])) + 1 if history.get("val_accuracy") else None

    best = export_float32(trained, cfg)
    params = int(best.count_params())
    val_images, val_labels = faces.images[val_idx], faces.labels[val_idx]

    def val_accuracy(model) -> float:
        return float((predict_probs(model, val_images).argmax(1) == val_labels).mean())

    rng = np.random.default_rng(cfg.seed + 2)
    n_bn = min(cfg.bn_recalibration or BN_FACES, len(train_idx))  # SWA needs them even with --bn-recalibration 0
    bn_faces = faces.images[np.sort(rng.choice(train_idx, size=n_bn, replace=False))]
    val_before = val_accuracy(best)
    bn_info: dict[str, Any] = {"faces": 0, "val_accuracy_before": round(val_before, 4), "applied": False}
    if cfg.bn_recalibration:
        recalibrated = export_float32(best, cfg)
        bn_info["faces"] = recalibrate_batchnorm(recalibrated, bn_faces)
        val_after = val_accuracy(recalibrated)
        bn_info["val_accuracy_after"] = round(val_after, 4)
        if val_after >= val_before:  # chosen on the validation split, never on test
            best, bn_info["applied"] = recalibrated, True
        log(f"BatchNorm statistics re-estimated on {bn_info['faces']} clean training faces: validation "
            f"{val_before * 100:.2f}% -> {val_after * 100:.2f}% ({'kept' if bn_info['applied'] else 'discarded'})")
    what = f"best checkpoint, epoch {best_epoch}" if best_epoch else "checkpoint"
    swa_info: dict[str, Any] | None = None
    if cfg.swa_epochs and cfg.from_checkpoint is None and swa_path.is_file():
        # Averaged weights come with averaged BatchNorm statistics that belong to no model: always re-estimate.
        averaged = export_float32(keras.models.load_model(str(swa_path), compile=False), cfg)
        recalibrate_batchnorm(averaged, bn_faces)
        swa_val, best_val = val_accuracy(averaged), max(val_before, bn_info.get("val_accuracy_after", 0.0))
        swa_info = {"epochs_averaged": cfg.swa_epochs, "val_accuracy": round(swa_val, 4),
                    "best_checkpoint_val_accuracy": round(best_val, 4), "chosen": swa_val > best_val}
        log(f"weight average of the last {cfg.swa_epochs} epochs: validation {swa_val * 100:.2f}% against the "
            f"best checkpoint's {best_val * 100:.2f}% ({'chosen' if swa_info['chosen'] else 'not chosen'})")
        if swa_info["chosen"]:  # on validation, like every other choice here
            best, what = averaged, f"weight average of epochs {cfg.epochs - cfg.swa_epochs + 1}-{cfg.epochs}"
        swa_path.unlink()
    best.save(str(model_path))  # float32, without the optimizer state: what fer-convert takes
    val_report = classification_report(val_labels, predict_probs(best, val_images).argmax(1), KAGGLE_ORDER)
    log(format_report(val_report, f"validation ({what})"))

    summary: dict[str, Any] = {
        "model": model_path.name,
        "architecture": {"name": MODEL_NAME, "stages": [max(8, int(round(c * cfg.width))) for c in cfg.stages],
                         "convs_per_stage": 2, "head": "global average pool, dropout, dense softmax",
                         "parameters": params, "input": [INPUT_SIDE, INPUT_SIDE, 1]},
        "input_range": INPUT_RANGE,
        "labels": LABELS,
        "classes": list(KAGGLE_ORDER),
        "convert_command": (f"fer-convert {model_path.name} -o {MODEL_NAME}_int8.tflite --labels {LABELS} "
                            f"--input-range {INPUT_RANGE} --calibration TRAIN_DATA --evaluate TEST_DATA "
                            "--report report.json"),
        "config": config_record(cfg),
        "resumed_after_epoch": resumed_after,
        "data": {"source": faces.source, "faces": len(faces), "train": int(len(train_idx)),
                 "validation": int(len(val_idx)), "counts": faces.counts(),
                 "ferplus": str(cfg.ferplus) if cfg.ferplus else None,
                 "labels": f"FER+ {cfg.ferplus_target}" if cfg.ferplus else "FER2013"},
        "class_weights": {name: round(float(w), 4) for name, w in zip(KAGGLE_ORDER, weights)},
        "precision": precision,
        "schedule": schedule_info,
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "stopped_early": epochs_run < cfg.epochs,
        "fit_seconds": round(fit_seconds, 1) if fit_seconds is not None else None,
        "seconds_per_epoch": (round(fit_seconds / max(epochs_run - (resumed_after or 0), 1), 1)
                              if fit_seconds is not None else None),
        "bn_recalibration": bn_info,
        "weight_average": swa_info,
        "teacher": teacher_info,
        "chosen": what,
        # per-step running loss of short runs (smoke tests); the epoch means are in "history"
        "batch_losses": [round(v, 5) for v in batch_losses] if len(batch_losses) <= 1000 else None,
        "history": {k: [float(v) for v in vals] for k, vals in history.items()},
        "validation": val_report,
        "environment": {"fer_edge": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
                        "python": platform.python_version(), "machine": platform.machine(),
                        "cpus": os.cpu_count()},
    }
    if cfg.from_checkpoint is not None:
        previous = out / "training_summary.json"
        if previous.is_file():  # keep what the training run measured about itself
            try:
                old = json.loads(previous.read_text())
                for key in ("fit_seconds", "seconds_per_epoch", "precision", "schedule"):
                    if old.get(key) is not None:
                        summary[key] = old[key]
                summary["training_run"] = {k: old.get(k) for k in ("config", "wall_seconds", "validation")}
            except (OSError, ValueError):
                pass
    confusion_source, confusion_title = val_report, f"{MODEL_NAME} float, validation split"
    text = [format_report(val_report, f"validation split ({len(val_idx)} faces from the training data), {what}")]
    if test_path is not None:
        csv_test = is_csv(test_path)
        test_faces = load_faces(test_path, usage="PublicTest" if csv_test else None, warn=log,
                                ferplus=cfg.ferplus if csv_test else None)
        test_probs = predict_probs(best, test_faces.images)
        test_report = report_by_label_sets(
            test_faces.labels, test_probs, KAGGLE_ORDER,
            None if test_faces.votes is None else ferplus_majority(test_faces.votes, KAGGLE_ORDER))
        summary["test"] = {"source": test_faces.source, **test_report}
        text.append(format_report(test_report, f"test {test_faces.source} ({len(test_faces)} faces), float model"))
        confusion_source, confusion_title = test_report, f"{MODEL_NAME} float, {Path(test_faces.source).name}"
        log(text[-1])
    summary["wall_seconds"] = round(time.time() - started, 1)

    save_confusion_png(confusion_source, str(out / "confusion.png"), confusion_title)
    if history:
        save_learning_curves(history, out / "learning_curves.png", best_epoch or epochs_run)
    (out / "classification_report.txt").write_text("\n\n".join(text) + "\n")
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return TrainResult(out, model_path, summary)


RUN_CONFIG = "run_config.json"
LAST_CHECKPOINT = "checkpoint_last.keras"  # weights and optimizer state after the last finished epoch


def config_record(cfg: TrainConfig) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        return str(v) if isinstance(v, Path) else [plain(x) for x in v] if isinstance(v, (tuple, list)) else v
    return {k: plain(v) for k, v in asdict(cfg).items() if k not in ("progress", "resume")}


def check_resumable(out: Path, cfg: TrainConfig) -> None:
    """--resume continues only the run that was interrupted: its checkpoint, with the same settings."""
    if not (out / LAST_CHECKPOINT).is_file():
        raise InputMissing(f"--resume: no {LAST_CHECKPOINT} in {out}, so there is no interrupted run to continue "
                           "(a finished run removes it); drop --resume to start a new run")
    try:
        theirs = json.loads((out / RUN_CONFIG).read_text())
    except (OSError, ValueError):
        raise DataError(f"--resume: {out / RUN_CONFIG} is missing or unreadable, so the interrupted run's "
                        "settings are unknown; start a new run without --resume") from None
    ours = json.loads(json.dumps(config_record(cfg)))  # the same JSON round trip (tuples become lists)
    diff = [f"--{k.replace('_', '-')} {theirs.get(k)} (now {ours.get(k)})"
            for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    if diff:
        raise UsageError(f"--resume: the interrupted run in {out} used {', '.join(diff)}; "
                         "give the same arguments as that run")


def truncate_training_log(path: Path, epochs: int) -> None:
    """Keep the header and the first `epochs` rows: an epoch logged after the last checkpoint is redone."""
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:1 + epochs]))


def check_same_split(model_path: Path, cfg: TrainConfig, flag: str) -> None:
    """A warm start or teacher must not have seen the validation faces: same data, seed and split."""
    if not model_path.is_file():
        raise InputMissing(f"{flag} {model_path} not found; give a .keras file fer-train wrote")
    summary_path = model_path.parent / "training_summary.json"
    try:
        made_by = json.loads(summary_path.read_text())["config"]
    except (OSError, ValueError, KeyError):
        raise DataError(f"{flag} {model_path}: no training_summary.json beside it to check its validation "
                        "split against; keep the model in the folder fer-train wrote it to") from None
    ours = {"seed": cfg.seed, "val_fraction": cfg.val_fraction, "limit": cfg.limit,
            "data": str(Path(cfg.data).resolve())}
    theirs = {k: made_by.get(k) for k in ours}
    theirs["data"] = str(Path(str(theirs["data"])).resolve())
    if ours != theirs and cfg.allow_overlap:
        return  # the user's call, recorded in run_config.json: validation may hold faces that model trained on
    if ours != theirs:
        diff = ", ".join(f"{k} {theirs[k]} (now {ours[k]})" for k in ours if ours[k] != theirs[k])
        raise UsageError(f"{flag} {model_path} was trained with {diff}; use the same data, --seed, "
                         "--val-fraction and --limit so its training faces stay out of validation "
                         "(or --allow-overlap, accepting an optimistic validation figure)")


def load_initial_weights(model, init_from: Path, log: Log) -> None:
    try:
        source = keras.models.load_model(str(init_from), compile=False)
        model.set_weights(source.get_weights())
    except Exception as exc:
        raise DataError(f"--init-from {init_from} does not fit this architecture (same --width?): "
                        f"{str(exc).strip().splitlines()[0][:200]}") from None
    log(f"starting from the weights of {init_from}")


class WeightAverage(keras.callbacks.Callback):
    """Stochastic weight averaging: the running mean of the end-of-epoch weights from `first_epoch`
    (0-based) on, saved to `path` after each of those epochs so a stopped run keeps its average."""

    def __init__(self, first_epoch: int, path: Path):
        super().__init__()
        self.first_epoch, self.path = first_epoch, Path(path)
        self.mean: list[np.ndarray] | None = None
        self.count = 0

    def restore(self, completed_epochs: int) -> None:
        """After --resume: take up the running mean the interrupted run saved."""
        done = completed_epochs - self.first_epoch
        if done > 0 and self.path.is_file():
            saved = keras.models.load_model(str(self.path), compile=False)
            self.mean, self.count = [np.asarray(w, np.float64) for w in saved.get_weights()], done

    def on_epoch_end(self, epoch, logs=None):
        if epoch < self.first_epoch:
            return
        current = self.model.get_weights()
        self.count += 1
        if self.mean is None:
            self.mean = [np.asarray(w, np.float64) for w in current]
        else:
            for mean, w in zip(self.mean, current):
                mean += (np.asarray(w, np.float64) - mean) / self.count
        self.model.set_weights([m.astype(w.dtype) for m, w in zip(self.mean, current)])
        try:
            self.model.save(str(self.path))
        finally:
            self.model.set_weights(current)  # training goes on from its own weights, not the average


def fit(cfg: TrainConfig, precision: str, train_ds, val_ds, steps: int, schedule: WarmupCosine,
        model_path: Path, swa_path: Path, log_path: Path, batch_losses: list[float], started: float,
        log: Log) -> tuple[dict[str, list[float]], float, int | None]:
    """Build, compile and fit; the best epoch (validation accuracy) is checkpointed to `model_path`, and
    with --swa-epochs the running average of the last epochs' weights to `swa_path`. Every epoch also
    leaves weights and optimizer state in LAST_CHECKPOINT, which --resume continues from.

    Returns the whole run's history, the seconds this call fitted, and the epoch it resumed after."""
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        model = build_model(cfg.stages, cfg.width, cfg.dropout, len(KAGGLE_ORDER))
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    if cfg.init_from is not None and not cfg.resume:
        load_initial_weights(model, Path(cfg.init_from), log)
    log(f"model {MODEL_NAME}: {model.count_params():,} parameters; {cfg.epochs} epoch(s) x {steps} steps of "
        f"{cfg.batch_size}; {precision} training")
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    last_path = model_path.parent / LAST_CHECKPOINT
    initial_epoch, best_so_far = 0, None
    if cfg.resume:
        optimizer.build(model.trainable_variables)
        model.load_weights(str(last_path))  # weights and optimizer state: its step count places the LR schedule
        initial_epoch = int(optimizer.iterations) // steps
        truncate_training_log(log_path, initial_epoch)
        best_so_far = max(read_training_log(log_path).get("val_accuracy", []), default=None)
        log(f"resuming after epoch {initial_epoch} of {cfg.epochs} from {last_path}")

    class Recorder(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if logs and "loss" in logs:
                batch_losses.append(float(logs["loss"]))  # running mean over the epoch so far

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["lr"] = float(keras.ops.convert_to_numpy(schedule(self.model.optimizer.iterations)))
                logs["elapsed_s"] = round(time.time() - started, 1)
            if not cfg.progress and logs:
                log(f"epoch {epoch + 1}/{cfg.epochs}: loss {logs.get('loss', 0):.4f} acc {logs.get('accuracy', 0):.4f} "
                    f"val_loss {logs.get('val_loss', 0):.4f} val_acc {logs.get('val_accuracy', 0):.4f} "
                    f"lr {logs['lr']:.2e} ({logs['elapsed_s']:.0f} s)")

    callbacks = [Recorder(),
                 keras.callbacks.ModelCheckpoint(str(model_path), monitor="val_accuracy", mode="max",
                                                 save_best_only=True, initial_value_threshold=best_so_far)]
    if cfg.swa_epochs:  # early stopping would cut the averaging phase short
        averager = WeightAverage(first_epoch=cfg.epochs - cfg.swa_epochs, path=swa_path)
        averager.restore(initial_epoch)
        callbacks.append(averager)
    else:  # after --resume its patience starts afresh
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=cfg.patience,
                                                       restore_best_weights=False))
    # Last, so that an epoch is only counted as done (by --resume) once everything above recorded it.
    callbacks += [keras.callbacks.CSVLogger(str(log_path), append=initial_epoch > 0),
                  keras.callbacks.ModelCheckpoint(str(last_path), save_best_only=False)]
    fit_start = time.time()
    history = model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, initial_epoch=initial_epoch,
                        steps_per_epoch=steps, callbacks=callbacks, shuffle=False,  # shuffled in tf.data
                        verbose=1 if cfg.progress else 0)
    whole = read_training_log(log_path) if initial_epoch else history.history
    return whole, time.time() - fit_start, initial_epoch or None


def save_learning_curves(history: dict[str, list[float]], path: Path, best_epoch: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100)
    for ax, key, title in ((axes[0], "loss", "loss (train: smoothed, weighted)"),
                           (axes[1], "accuracy", "accuracy")):
        ax.plot(epochs, history.get(key, []), label="train (augmented)")
        ax.plot(epochs, history.get(f"val_{key}", []), label="validation")
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    axes[2].plot(epochs, history.get("lr", []))
    axes[2].set_title("learning rate (end of epoch)")
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
