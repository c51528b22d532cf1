"""Classification figures shared by fer-convert (float vs int8) and fer-edge evaluate."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    matrix = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def calibration(truth: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Whether the top probability can be read as the chance of being right: mean confidence,
    expected calibration error (ECE: |accuracy - confidence| per confidence bin, weighted by the
    bin's share of faces) and log loss. Why: the CSV's confidence is what users threshold on."""
    confidence = probabilities.max(1)
    right = probabilities.argmax(1) == truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(right[in_bin].mean() - confidence[in_bin].mean())
    true_p = probabilities[np.arange(len(truth)), truth]
    return {"mean_confidence": round(float(confidence.mean()), 4), "ece": round(float(ece), 4), "bins": bins,
            "log_loss": round(float(-np.log(np.clip(true_p, 1e-7, 1.0)).mean()), 4)}


def classification_report(truth: np.ndarray, predicted: np.ndarray, classes: Sequence[str],
                          probabilities: np.ndarray | None = None) -> dict[str, Any]:
    """accuracy, per_class precision/recall/F1/support, confusion (rows: truth), samples, and
    with `probabilities` (n, classes) the calibration of their top value."""
    matrix = confusion_matrix(truth, predicted, len(classes))
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted_count = matrix.sum(axis=0)
    precision = np.divide(tp, predicted_count, out=np.zeros_like(tp), where=predicted_count > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    samples = int(len(truth))
    present = support > 0
    return {
        "samples": samples,
        "accuracy": float(tp.sum() / samples) if samples else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {"precision": round(float(precision[i]), 4), "recall": round(float(recall[i]), 4),
                   "f1": round(float(f1[i]), 4), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "classes": list(classes),
        "confusion": matrix.tolist(),
        **({"calibration": calibration(truth, probabilities)} if probabilities is not None and samples else {}),
    }


def report_by_label_sets(truth: np.ndarray, probabilities: np.ndarray, classes: Sequence[str],
                         ferplus_truth: np.ndarray | None = None) -> dict[str, Any]:
    """classification_report against the dataset's own labels and, given FER+ majority labels
    (-1: a face FER+ does not score), also against those on the faces FER+ scores, under
    "ferplus", with how often the two label sets agree there. Why both: FER+'s ten votes are the
    cleaner truth, but they agree with FER2013's single label on only about 65% of faces, so a
    model's two figures can move in opposite directions and each needs the other beside it."""
    report = classification_report(truth, probabilities.argmax(1), classes, probabilities)
    if ferplus_truth is not None:
        scored = ferplus_truth >= 0
        plus = classification_report(ferplus_truth[scored], probabilities[scored].argmax(1), classes,
                                     probabilities[scored])
        plus["not_scored"] = int((~scored).sum())
        plus["label_agreement"] = float((ferplus_truth[scored] == truth[scored]).mean()) if scored.any() else 0.0
        report["ferplus"] = plus
    return report


def paired_comparison(truth: np.ndarray, predicted: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """McNemar's test of two models on the same faces: only the faces exactly one gets right count.

    Why: two models that share most answers differ far less by chance than their separate
    accuracies' noise suggests, so a 0.5-point gap can be real or a coin flip; this says which.
    """
    right, other_right = predicted == truth, other == truth
    only_this, only_other = int((right & ~other_right).sum()), int((other_right & ~right).sum())
    n = only_this + only_other
    # exact two-sided binomial p under "either is as likely to be the one that is right"
    tail = sum(math.comb(n, k) for k in range(min(only_this, only_other) + 1)) / 2 ** n if n else 1.0
    return {
        "accuracy": float(right.mean()), "other_accuracy": float(other_right.mean()),
        "only_this_right": only_this, "only_other_right": only_other,
        "same_answer": float((predicted == other).mean()),
        "mcnemar_z": round((only_this - only_other) / math.sqrt(n), 3) if n else 0.0,
        "p_value": round(min(1.0, 2 * tail), 6),
    }


def format_paired(paired: dict[str, Any], this: str, other: str) -> str:
    verdict = ("a real difference (p < 0.05)" if paired["p_value"] < 0.05 else
               "no real difference (p >= 0.05): a coin could split them so")
    # p_value is rounded to 6 places: 0 there means "smaller than that", not impossible
    p_text = f"p = {paired['p_value']:.3g}" if paired["p_value"] > 0 else "p < 1e-6"
    return (f"against {other}: {paired['accuracy'] * 100:.2f}% vs {paired['other_accuracy'] * 100:.2f}%; "
            f"same answer on {paired['same_answer'] * 100:.1f}% of faces; only {this} right on "
            f"{paired['only_this_right']}, only {other} on {paired['only_other_right']}; McNemar z = "
            f"{paired['mcnemar_z']:.2f}, {p_text}: {verdict}")


def format_report(report: dict[str, Any], title: str = "") -> str:
    if "ferplus" in report:
        return format_label_sets(report, title)
    classes = report["classes"]
    lines = []
    if title:
        lines.append(title)
    lines.append(f"accuracy {report['accuracy'] * 100:.2f}% on {report['samples']} faces, "
                 f"macro F1 {report['macro_f1']:.3f}")
    if "calibration" in report:
        cal = report["calibration"]
        lines.append(f"confidence: mean {cal['mean_confidence'] * 100:.2f}% against that accuracy; calibration "
                     f"error (ECE, {cal['bins']} bins) {cal['ece'] * 100:.2f} points; log loss {cal['log_loss']:.3f}")
    lines.append(f"{'class':<10}{'precision':>10}{'recall':>8}{'f1':>7}{'support':>9}")
    for name in classes:
        c = report["per_class"][name]
        lines.append(f"{name:<10}{c['precision']:>10.3f}{c['recall']:>8.3f}{c['f1']:>7.3f}{c['support']:>9}")
    width = max(7, *(len(n) for n in classes))
    lines.append("confusion (rows: true, columns: predicted)")
    lines.append(" " * (width + 1) + " ".join(f"{n[:7]:>7}" for n in classes))
    for name, row in zip(classes, report["confusion"]):
        lines.append(f"{name:<{width}} " + " ".join(f"{v:>7}" for v in row))
    return "\n".join(lines)


def format_label_sets(report: dict[str, Any], title: str = "") -> str:
    """The FER2013-label and FER+-majority reports side by side, then both confusion matrices."""
    plus = report["ferplus"]
    classes = report["classes"]
    sets = (("FER2013 label", report), ("FER+ majority", plus))
    lines = [title] if title else []
    lines.append(f"{'':<22}" + "".join(f"{name:>16}" for name, _ in sets))
    lines.append(f"{'faces':<22}" + "".join(f"{r['samples']:>16}" for _, r in sets))
    lines.append(f"{'accuracy':<22}" + "".join(f"{r['accuracy'] * 100:>15.2f}%" for _, r in sets))
    lines.append(f"{'macro F1':<22}" + "".join(f"{r['macro_f1']:>16.3f}" for _, r in sets))
    if "calibration" in report:
        lines.append(f"{'mean confidence':<22}" + "".join(
            f"{r['calibration']['mean_confidence'] * 100:>15.2f}%" for _, r in sets))
        lines.append(f"{'ECE, points':<22}" + "".join(f"{r['calibration']['ece'] * 100:>16.2f}" for _, r in sets))
        lines.append(f"{'log loss':<22}" + "".join(f"{r['calibration']['log_loss']:>16.3f}" for _, r in sets))
    lines.append(f"FER+ scores {plus['samples']} of {report['samples']} faces ({plus['not_scored']} have a tied top "
                 "vote or a majority for contempt, unknown or not-a-face). On those the two label sets agree on "
                 f"{plus['label_agreement'] * 100:.1f}%: a model right by one set on every face would score about "
                 "that by the other.")
    lines.append(f"{'':<10}{'FER2013 label':>31}   {'FER+ majority':>31}")
    head = f"{'precision':>10}{'recall':>7}{'f1':>7}{'support':>8}"
    lines.append(f"{'class':<10}{head}   {head}")
    for name in classes:
        a, b = report["per_class"][name], plus["per_class"][name]
        lines.append(f"{name:<10}" + "   ".join(f"{c['precision']:>10.3f}{c['recall']:>7.3f}{c['f1']:>7.3f}"
                                                  f"{c['support']:>8}" for c in (a, b)))
    width = max(7, *(len(n) for n in classes))
    for name, r in sets:
        lines.append(f"confusion by {name} (rows: true, columns: predicted)")
        lines.append(" " * (width + 1) + " ".join(f"{n[:7]:>7}" for n in classes))
        for cls, row in zip(classes, r["confusion"]):
            lines.append(f"{cls:<{width}} " + " ".join(f"{v:>7}" for v in row))
    return "\n".join(lines)


def save_confusion_png(report: dict[str, Any], path: str, title: str) -> None:
    """Row-normalised confusion matrix image (needs matplotlib, a workstation/dev extra). A report
    scored by FER+ votes too gets two panels, FER+ majority first: the label set the model card
    leads with, beside FER2013's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(report["ferplus"], "by FER+ majority"), (report, "by FER2013 label")] if "ferplus" in report \
        else [(report, "")]
    classes = report["classes"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 5.6), dpi=110, squeeze=False)
    for ax, (scored, label_set) in zip(axes[0], panels):
        matrix = np.asarray(scored["confusion"], np.float64)
        norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, f"{norm[i, j]:.2f}\n{int(matrix[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set_title(f"{title} {label_set}".strip() +
                     f"\naccuracy {scored['accuracy'] * 100:.1f}% ({scored['samples']} faces)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
