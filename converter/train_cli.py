"""fer-train: train fer-edge's own edge-sized expression CNN; fer-convert then makes it int8."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from fer_edge.cli_support import ArgumentParser, run_main
from fer_edge.errors import InputMissing, UsageError

CLASS_WEIGHTINGS = ("sqrt", "balanced", "none")  # mirrors converter.train (imported lazily: TensorFlow)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="fer-train",
        description="Train fer_edge_cnn (48x48 grey in, 7 emotions out in Kaggle alphabetical order, "
                    "input pixels/255 in [0,1]) on FER2013, with augmentation, class weighting, label "
                    "smoothing, warm-up + cosine LR, early stopping and best-checkpoint saving.",
        epilog="example: fer-train fer2013/train --out runs/cnn --epochs 40 --test fer2013/test; then "
               "fer-convert runs/cnn/fer_edge_cnn.keras -o cnn_int8.tflite --labels kaggle --input-range 0,1 "
               "--calibration fer2013/train --evaluate fer2013/test --report report.json")
    p.add_argument("data", type=Path, help="training faces: a FER2013 folder (<class>/*.jpg) or fer2013.csv "
                   "(its Training rows); the validation split is carved from these")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder for the model (fer_edge_cnn.keras), training_log.csv, learning_curves.png, "
                        "confusion.png, classification_report.txt and training_summary.json")
    p.add_argument("--epochs", type=int, default=40, help="maximum epochs (default 40; early stopping may end sooner)")
    p.add_argument("--batch-size", type=int, default=64, help="default 64")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, initialisation, shuffling and "
                   "augmentation (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the training data held out for validation, stratified (default 0.1)")
    p.add_argument("--limit", type=int, metavar="N", help="use a stratified subset of N faces (smoke tests)")
    p.add_argument("--test", type=Path, metavar="PATH",
                   help="labelled test faces (folder, or CSV: its PublicTest rows) to evaluate the best "
                        "checkpoint on once, at the end")
    p.add_argument("--ferplus", type=Path, metavar="VOTES.csv",
                   help="FER+ fer2013new.csv for DATA's rows: train and validate on its ten votes per face "
                        "instead of FER2013's one label (needs DATA as fer2013.csv or .csv.gz; Kaggle folder "
                        "file names cannot be matched to FER+ rows); --test is then scored by both label sets")
    p.add_argument("--ferplus-target", choices=("votes", "majority"), default="votes",
                   help="votes: each face's vote shares, FER+'s probabilistic labels (default); majority: "
                        "the majority vote, dropping tied faces")
    p.add_argument("--ferplus-weight", type=float, default=1.0,
                   help="target = (1-w) * FER2013 label + w * FER+ target (default 1: FER+ alone)")
    p.add_argument("--allow-overlap", action="store_true",
                   help="let --init-from/--teacher come from a run on other data or another split; their "
                        "training faces may then be in this run's validation split, which reads optimistic")
    p.add_argument("--learning-rate", type=float, default=2e-3, help="AdamW peak learning rate (default 2e-3)")
    p.add_argument("--weight-decay", type=float, default=1e-2,
                   help="AdamW decoupled weight decay, not on BatchNorm or biases (default 1e-2)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="default 0.1")
    p.add_argument("--class-weighting", choices=CLASS_WEIGHTINGS, default="sqrt",
                   help="loss weight per class: sqrt of inverse frequency (default), balanced, or none")
    p.add_argument("--patience", type=int, default=10,
                   help="early stopping: epochs without a better validation accuracy (default 10)")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0)")
    p.add_argument("--bn-recalibration", type=int, default=4096, metavar="N",
                   help="after training, re-estimate BatchNorm statistics on N un-augmented training faces; kept "
                        "only if validation accuracy does not drop (default 4096; 0: off)")
    p.add_argument("--from-checkpoint", type=Path, metavar="MODEL.keras",
                   help="do not train: finish this fer-train checkpoint (BN re-estimation, validation/test "
                        "reports, curves from DIR/training_log.csv) into --out")
    p.add_argument("--init-from", type=Path, metavar="MODEL.keras",
                   help="start from this fer-train model's weights instead of random ones, e.g. to give a "
                        "finished run another learning-rate cycle; needs the same data, --seed, --val-fraction "
                        "and --width, so its validation faces stay unseen")
    p.add_argument("--teacher", type=Path, action="append", default=[], metavar="MODEL.keras",
                   help="distil from this fer-train model (any --width); repeat it to distil an ensemble: the "
                        "mirror-averaged probabilities, averaged over the teachers, are blended into the training "
                        "targets; each teacher needs the same data, --seed and --val-fraction as this run")
    p.add_argument("--distill-weight", type=float, default=0.5, metavar="W",
                   help="target = (1-w) * label + w * teacher probabilities (default 0.5)")
    p.add_argument("--swa-epochs", type=int, default=0, metavar="K",
                   help="stochastic weight averaging: run the last K epochs at a constant --swa-lr and average "
                        "their weights; the average is kept if it beats the best checkpoint on validation "
                        "(turns early stopping off; default 0: off)")
    p.add_argument("--swa-lr", type=float, metavar="LR", help="learning rate of the averaging epochs "
                   "(default: --learning-rate / 5)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out from its last finished epoch (weights, optimizer "
                        "state and place in the LR schedule); give the same arguments as that run")
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="training arithmetic: auto = bfloat16 mixed precision where the CPU has native bf16 "
                        "(AVX512_BF16/AMX, about 2x faster), else float32; the saved model is float32 either way")
    p.add_argument("--steps-per-epoch", type=int, metavar="N", help="cap steps per epoch (smoke tests)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and the final summary")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.data.exists():
        raise InputMissing(f"dataset {args.data} not found; give a FER2013 folder (<class>/*.jpg) or fer2013.csv")
    for name in ("epochs", "batch_size", "patience"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))

    from .train import TrainConfig, train  # imports TensorFlow: after argument errors are out of the way

    cfg = TrainConfig(
        data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
        val_fraction=args.val_fraction, limit=args.limit, test=args.test, ferplus=args.ferplus,
        ferplus_target=args.ferplus_target, ferplus_weight=args.ferplus_weight, allow_overlap=args.allow_overlap, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, patience=args.patience, class_weighting=args.class_weighting,
        width=args.width, precision=args.precision, bn_recalibration=args.bn_recalibration,
        from_checkpoint=args.from_checkpoint, init_from=args.init_from, teacher=tuple(args.teacher),
        distill_weight=args.distill_weight, swa_epochs=args.swa_epochs, swa_lr=args.swa_lr, resume=args.resume,
        steps_per_epoch=args.steps_per_epoch,
        progress=sys.stderr.isatty() and not args.quiet)
    result = train(cfg, log)
    s = result.summary
    val = s["validation"]
    took = f" in {s['fit_seconds']:.0f} s" if s.get("fit_seconds") is not None else ""
    print(f"model: {result.model_path} ({s['architecture']['parameters']:,} parameters); "
          f"{s['epochs_run']} epoch(s){took}; kept: {s['chosen']}")
    print(f"validation accuracy {val['accuracy'] * 100:.2f}% (macro F1 {val['macro_f1']:.3f}) "
          f"on {val['samples']} faces held out of the training data")
    if "test" in s:
        print(f"test accuracy {s['test']['accuracy'] * 100:.2f}% (macro F1 {s['test']['macro_f1']:.3f}) "
              f"on {s['test']['samples']} faces, float model" + (" (FER2013 labels)" if "ferplus" in s["test"] else ""))
        if "ferplus" in s["test"]:
            plus = s["test"]["ferplus"]
            print(f"test accuracy by FER+ majority {plus['accuracy'] * 100:.2f}% (macro F1 {plus['macro_f1']:.3f}) "
                  f"on the {plus['samples']} faces FER+ scores, float model")
    print(f"convert: fer-convert {result.model_path} -o {result.out / 'fer_edge_cnn_int8.tflite'} "
          f"--labels {s['labels']} --input-range {s['input_range']} --calibration {args.data} "
          + (f"--evaluate {args.test} " if args.test else "") + f"--report {result.out / 'report.json'}")
    return 0


def entry() -> int:
    return run_main("fer-train", main)


if __name__ == "__main__":
    sys.exit(entry())
