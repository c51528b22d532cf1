"""Temperature-scale a vote-trained fer_edge_cnn so its confidence reads as a chance of being right.

A model trained on FER+'s vote shares learns how annotators split, so its top probability is
about the expected top vote share (73% on PublicTest), while the majority it is scored against
is right far more often (84%): by correctness it is underconfident, ECE about 10 points. One
temperature T on the logits fixes that without changing any argmax: softmax(z / T). It is baked
into the last Dense layer (W / T, b / T), so the converter, the .tflite and the device need
nothing new.

T is fitted on the run's validation split (drawn from Training by fer-train with the run's own
seed), by the negative log-likelihood of the FER+ majority: never on PublicTest.

    python models/trained/ferplus/calibrate_temperature.py models/trained/ferplus/cycle1 \\
        ../shared/data/fer2013_trainval.csv.gz ../shared/data/ferplus_trainval.csv \\
        -o models/trained/ferplus/cycle1t
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))


def nll(logp: np.ndarray, truth: np.ndarray, t: float) -> float:
    z = logp / t
    z = z - z.max(1, keepdims=True)
    return float(-(z[np.arange(len(truth)), truth] - np.log(np.exp(z).sum(1))).mean())


def fit_temperature(logp: np.ndarray, truth: np.ndarray) -> float:
    """Golden-section search of T in [0.2, 5] (the NLL is convex in 1/T)."""
    lo, hi = 0.2, 5.0
    g = (5 ** 0.5 - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    for _ in range(60):
        if nll(logp, truth, a) < nll(logp, truth, b):
            hi, b = b, a
            a = hi - g * (hi - lo)
        else:
            lo, a = a, b
            b = lo + g * (hi - lo)
    return (lo + hi) / 2


def ece(probs: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs((pred[m] == truth[m]).mean() - conf[m].mean())
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a fer-train output folder (fer_edge_cnn.keras, training_summary.json)")
    parser.add_argument("data", type=Path)
    parser.add_argument("votes", type=Path)
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()

    import keras

    from converter.train import TrainConfig, load_training_faces, split_train_val
    from fer_edge.datasets import ferplus_majority
    from fer_edge.labels import KAGGLE_ORDER

    summary = json.loads((args.run / "training_summary.json").read_text())
    cfg = summary["config"]
    tc = TrainConfig(data=args.data, out=args.out, ferplus=args.votes, seed=cfg["seed"],
                     val_fraction=cfg["val_fraction"], limit=cfg["limit"], usage=cfg["usage"],
                     ferplus_target=cfg["ferplus_target"])
    faces, _ = load_training_faces(tc, log=lambda m: None)
    _, val_idx = split_train_val(faces.labels, tc.val_fraction, tc.seed)
    truth = ferplus_majority(faces.votes, KAGGLE_ORDER)[val_idx]
    keep = truth >= 0
    val_idx, truth = val_idx[keep], truth[keep]

    model = keras.models.load_model(args.run / "fer_edge_cnn.keras", compile=False)
    x = faces.images[val_idx].astype(np.float32)[..., None] / 255.0
    probs = model.predict(x, batch_size=256, verbose=0)
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    t = fit_temperature(logp, truth)
    scaled = np.exp(logp / t)
    scaled /= scaled.sum(1, keepdims=True)

    dense = model.layers[-1]
    if not isinstance(dense, keras.layers.Dense):
        raise SystemExit(f"{args.run}: the last layer is {type(dense).__name__}, not the Dense softmax head")
    w, b = dense.get_weights()
    dense.set_weights([w / t, b / t])
    check = model.predict(x[:512], batch_size=256, verbose=0)
    if not np.allclose(check, scaled[:512], atol=1e-4):
        raise SystemExit("baked temperature does not reproduce the scaled probabilities")

    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "fer_edge_cnn.keras")
    summary["temperature"] = {
        "T": round(t, 4), "fitted_on": f"validation split, {len(val_idx)} faces with a FER+ majority",
        "validation_accuracy": round(float((probs.argmax(1) == truth).mean()), 4),
        "validation_ece_before": round(ece(probs, truth), 4), "validation_ece_after": round(ece(scaled, truth), 4),
        "validation_nll_before": round(nll(logp, truth, 1.0), 4), "validation_nll_after": round(nll(logp, truth, t), 4),
        "from": str(args.run / "fer_edge_cnn.keras"),
    }
    (args.out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["temperature"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
