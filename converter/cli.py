"""fer-convert: a trained Keras FER model in, a quantized TFLite model that knows its labels out."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from fer_edge.cli_support import ArgumentParser, attach_negative_values, check_writable, run_main
from fer_edge.errors import FerEdgeError, OutputError, UsageError
from fer_edge.labels import parse_labels
from fer_edge.modelmeta import parse_input_range
from fer_edge.metrics import format_report, save_confusion_png

from .convert import QUANTIZATIONS


def parse_range(text: str) -> tuple[float, float] | None:
    return None if text == "auto" else parse_input_range(text)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="fer-convert",
        description="Convert a trained Keras FER model (.h5/.hdf5/.keras or SavedModel folder) to a "
                    "quantized .tflite that carries its labels and preprocessing.",
        epilog="example: fer-convert model.hdf5 -o model.tflite --calibration fer2013/train "
               "--evaluate fer2013/test --report report.json")
    p.add_argument("model", type=Path, help="trained Keras model: .h5/.hdf5/.keras file or SavedModel folder")
    p.add_argument("-o", "--output", type=Path, help="output .tflite (default: MODEL_<quantize>.tflite beside it)")
    p.add_argument("--quantize", choices=QUANTIZATIONS, default="int8",
                   help="int8: full-integer, int8 in and out (default); float16; dynamic range; none")
    p.add_argument("--calibration", type=Path, metavar="PATH",
                   help="real labelled faces to calibrate int8 on: a FER2013 folder (<class>/*.jpg) or fer2013.csv")
    p.add_argument("--calibration-samples", type=int, default=500, metavar="N",
                   help="faces drawn from --calibration, stratified by class (default 500)")
    p.add_argument("--int8-calibration", choices=("robust", "tflite"), default="robust",
                   help="robust (default): averaged ranges, channel equalization, bias correction and a "
                        "softmax-aware logit range; tflite: TFLite's plain min/max calibration")
    p.add_argument("--labels", default="auto",
                   help="class names in output order: auto (measured on --calibration faces), kaggle "
                        "(alphabetical folder order), fer2013 (CSV order), or a comma-separated list")
    p.add_argument("--input-range", default="auto", metavar="auto|0,1|-1,1",
                   help="what pixels 0..255 are scaled to before the model (auto: measured)")
    p.add_argument("--evaluate", type=Path, metavar="PATH",
                   help="labelled faces to compare the float and converted models on (folder or CSV)")
    p.add_argument("--ferplus", type=Path, metavar="VOTES.csv",
                   help="FER+'s fer2013new.csv for the --evaluate CSV's rows: also score both models by FER+ "
                        "majority vote, side by side with the FER2013 labels")
    p.add_argument("--usage", metavar="NAME", help="with a fer2013.csv: use only rows with this Usage "
                   "(calibration defaults to Training rows, evaluation to all rows)")
    p.add_argument("--strict", action="store_true", help="refuse a CSV with bad rows instead of skipping them")
    p.add_argument("--report", type=Path, metavar="FILE.json", help="write the full report as JSON")
    p.add_argument("--confusion-png", type=Path, metavar="FILE.png",
                   help="confusion matrix image of the converted model (default: beside --report)")
    p.add_argument("--seed", type=int, default=0, help="seed for the calibration sample (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and the summary")
    return p


@contextmanager
def framework_output(quiet: bool) -> Iterator[None]:
    """TensorFlow, Keras and the TFLite converter print from Python and C++ alike (Keras' export
    alone lists every captured tensor: ~80 lines). stdout is for the summary, so their output goes
    to stderr; with -q into a file instead, shown only if the conversion fails unexpectedly (a
    user mistake is our one error line)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    captured = tempfile.TemporaryFile() if quiet else None
    unexpected = False
    try:
        os.dup2(captured.fileno() if captured else 2, 1)
        if captured:
            os.dup2(captured.fileno(), 2)
        yield
    except FerEdgeError:
        raise
    except BaseException:
        unexpected = True
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        if captured:
            if unexpected:
                captured.seek(0)
                sys.stderr.write(captured.read().decode(errors="replace")[-4000:])
            captured.close()


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(attach_negative_values(argv))
    if args.calibration_samples < 1:
        raise UsageError("--calibration-samples must be at least 1")
    if args.ferplus is not None and args.evaluate is None:
        raise UsageError("--ferplus scores the --evaluate faces by FER+ votes; give --evaluate CSV too")
    labels = None if args.labels == "auto" else parse_labels(args.labels)
    input_range = parse_range(args.input_range)
    output = args.output or args.model.with_name(f"{args.model.stem}_{args.quantize}.tflite")
    png = args.confusion_png or (args.report.with_suffix(".png") if args.report and args.evaluate else None)
    # every file this run will write, checked before TensorFlow loads and the model converts
    check_writable(output, "output")
    if args.report:
        check_writable(args.report, "--report")
    if png:
        check_writable(png, "--confusion-png")
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))

    if args.quiet:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads

    from .convert import run_conversion  # imports TensorFlow: after argument errors are out of the way

    with framework_output(args.quiet):
        report = run_conversion(
            args.model, output, quantize=args.quantize, calibration=args.calibration,
            calibration_samples=args.calibration_samples, labels=labels, input_range=input_range,
            evaluate_path=args.evaluate, usage=args.usage, strict=args.strict, seed=args.seed,
            progress=sys.stderr.isatty() and not args.quiet, log=log, int8_calibration=args.int8_calibration,
            ferplus=args.ferplus)
    evaluation = report.get("evaluation")
    if evaluation:
        print(format_report(evaluation["float"], "float model"))
        print()
        print(format_report(evaluation["tflite"], f"{report['quantization']} TFLite model"))
        print()
        lat = evaluation["latency"]
        print(f"accuracy: float {evaluation['float']['accuracy'] * 100:.2f}%  "
              f"{report['quantization']} {evaluation['tflite']['accuracy'] * 100:.2f}%  "
              f"(drop {evaluation['accuracy_drop_points']:+.2f} points); top-1 agreement "
              f"{evaluation['agreement'] * 100:.2f}% on {evaluation['samples']} faces")
        if "ferplus" in evaluation["tflite"]:
            plus_float, plus = evaluation["float"]["ferplus"], evaluation["tflite"]["ferplus"]
            print(f"by FER+ majority: float {plus_float['accuracy'] * 100:.2f}%  {report['quantization']} "
                  f"{plus['accuracy'] * 100:.2f}%  (drop {evaluation['ferplus_accuracy_drop_points']:+.2f} points) "
                  f"on the {plus['samples']} faces FER+ scores")
        print(f"size: float {report['size_bytes']['float_model'] / 1024:.1f} KiB -> tflite "
              f"{report['size_bytes']['tflite'] / 1024:.1f} KiB; per-face latency (1 thread): "
              f"tflite {lat['tflite_one_face_ms']:.3f} ms ({lat['tflite_runtime']}), "
              f"keras model.predict {lat['keras_predict_one_face_ms']:.1f} ms")
        if png:
            save_confusion_png(evaluation["tflite"], str(png), f"{output.name} ({report['quantization']})")
            report["confusion_png"] = str(png)
            print(f"confusion matrix: {png}")
    else:
        print(f"wrote {output}")
    if args.report:
        try:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as exc:  # e.g. the disk filled during the conversion
            raise OutputError(f"cannot write --report {args.report} ({exc.strerror or exc})") from None
        print(f"report: {args.report}")
    return 0


def entry() -> int:
    return run_main("fer-convert", main)


if __name__ == "__main__":
    sys.exit(entry())
