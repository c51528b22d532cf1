"""Paired comparison of two fer-train models on the validation split and PublicTest (float Keras).

Counts the faces only one of the two gets right and gives McNemar's z, because two models that
share most of their answers differ by far less than their separate accuracies' noise suggests.

    .venv/bin/python models/trained/cycle5/paired_comparison.py A.keras B.keras [SHARED]
"""
import math
import sys

import keras
import numpy as np

from converter.train import TrainConfig, load_training_faces, predict_probs, split_train_val
from fer_edge.datasets import load_faces

path_a, path_b = sys.argv[1:3]
shared = sys.argv[3] if len(sys.argv) > 3 else "../shared"
cfg = TrainConfig(data=f"{shared}/data/fer2013/train", out="/tmp/unused", seed=0)
faces, _ = load_training_faces(cfg, print)
_, val = split_train_val(faces.labels, cfg.val_fraction, cfg.seed)  # fer-train's own split
test = load_faces(f"{shared}/data/fer2013/test")
models = {"A": keras.models.load_model(path_a), "B": keras.models.load_model(path_b)}
for name, images, labels in [("validation", faces.images[val], faces.labels[val]),
                             ("PublicTest", test.images, test.labels)]:
    predicted = {k: predict_probs(m, images).argmax(1) for k, m in models.items()}
    right = {k: p == labels for k, p in predicted.items()}
    only_b = int((right["B"] & ~right["A"]).sum())
    only_a = int((right["A"] & ~right["B"]).sum())
    z = (only_b - only_a) / math.sqrt(max(only_a + only_b, 1))
    print(f"{name} ({len(labels)} faces): A {right['A'].mean():.2%}, B {right['B'].mean():.2%}; "
          f"only B right {only_b}, only A right {only_a}, McNemar z = {z:.2f}; "
          f"same answer {np.mean(predicted['A'] == predicted['B']):.2%}")
