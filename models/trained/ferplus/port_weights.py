"""Copy a train_gpu.py student's weights into fer-train's Keras fer_edge_cnn and save it as .keras.

    .venv/bin/python models/trained/ferplus/port_weights.py student0_keras_weights.npz -o fer_edge_cnn.keras

The port is checked, not assumed: the Keras model must give the PyTorch model's probabilities
(saved beside the weights by --check) to within float rounding.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from converter.train import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("weights", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    weights = dict(np.load(args.weights))
    model = build_model()
    used = set()
    for layer in model.layers:
        variables = layer.weights
        if not variables:
            continue
        values = []
        for var in variables:
            key = f"{layer.name}/{var.name.split('/')[-1].split(':')[0]}"
            if key not in weights:
                raise SystemExit(f"{args.weights}: no weights for {key}")
            if tuple(weights[key].shape) != tuple(var.shape):
                raise SystemExit(f"{key}: shape {weights[key].shape}, model wants {tuple(var.shape)}")
            values.append(weights[key])
            used.add(key)
        layer.set_weights(values)
    unused = sorted(set(weights) - used)
    if unused:
        raise SystemExit(f"{args.weights}: weights the model has no place for: {', '.join(unused)}")
    model.save(args.output)
    print(f"wrote {args.output}: {model.count_params()} parameters from {args.weights}")


if __name__ == "__main__":
    main()
