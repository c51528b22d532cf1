"""What the commands share below the command line itself: the model and configuration options,
the Config and the classifier they build, and the one-line log. `cli` and `bench` both import it,
so neither imports the other.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .config import Config, SERVICE_CONFIG, load_config
from .errors import ConfigError, DataError, InputMissing, UsageError
from .modelmeta import parse_input_range
from .resources import resolve_model

LIVE_KINDS = ("auto", "picamera2", "v4l2")


def log(message: str) -> None:
    print(f"fer-edge: {message}", file=sys.stderr, flush=True)


# --- shared options --------------------------------------------------------------------------
def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="PATH.tflite", help="TFLite model (default: the bundled model)")
    p.add_argument("--threads", type=int, metavar="N", help="interpreter threads (model.num_threads)")
    p.add_argument("--runtime", choices=("litert", "tflite-runtime", "tensorflow"),
                   help="TFLite runtime to use (default: the best installed)")
    p.add_argument("--labels", help="for a .tflite without fer-edge metadata: kaggle, fer2013 or a list")
    p.add_argument("--input-range", metavar="LO,HI", help="for a .tflite without metadata: 0,1 or -1,1")


def add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, metavar="FILE",
                   help=f"TOML configuration (the service uses {SERVICE_CONFIG})")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any configuration key, e.g. --set video.segment_seconds=60")


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    source = getattr(args, "source", None)
    if source is not None:
        if source in LIVE_KINDS:
            overrides["source.kind"] = source
        else:
            overrides["source.path"] = source
            if not (source.startswith("/dev/") or source.isdigit()):
                overrides["source.kind"] = "file"
    simple = {"output": "output.directory", "every": "analysis.every", "model": "model.path",
              "threads": "model.num_threads", "detection_width": "detection.width",
              "segment_seconds": "video.segment_seconds", "record": "video.record", "preview": "preview.listen"}
    for attr, key in simple.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides[key] = str(value) if attr == "output" else value
    if getattr(args, "display", False):
        overrides["display.enabled"] = True
    if getattr(args, "no_video", False):
        overrides["video.enabled"] = False
    if getattr(args, "no_csv", False):
        overrides["csv.enabled"] = False
    if getattr(args, "realtime", False):
        overrides["source.realtime"] = True
    if getattr(args, "no_wait", False):
        overrides["source.wait"] = False
    if getattr(args, "runtime", None):
        overrides["model.runtime"] = args.runtime
    for item in getattr(args, "set", []) or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise UsageError(f"--set {item!r}: write it as SECTION.KEY=VALUE, e.g. video.enabled=false")
        overrides[key.strip()] = value.strip()
    return load_config(getattr(args, "config", None), overrides)


def model_path(cfg: Config) -> Path:
    return resolve_model(cfg.model.path)


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--labels / --input-range, for a plain TFLite model that carries no fer-edge metadata."""
    from .labels import parse_labels

    labels, input_range = getattr(args, "labels", None), getattr(args, "input_range", None)
    return {"labels": parse_labels(labels) if labels else None,
            "input_range": parse_input_range(input_range) if input_range else None}


def open_classifier(args: argparse.Namespace, cfg: Config):
    from .runtime import EmotionClassifier

    path = model_path(cfg)
    try:
        classifier = EmotionClassifier(path, num_threads=cfg.model.num_threads, runtime=cfg.model.runtime or None,
                                       mirror_average=cfg.model.mirror_average, **model_overrides(args))
    except (InputMissing, DataError) as exc:
        # The model file is part of the configuration: restarting cannot fix a missing or bad one
        # (exit 78, which the service does not restart).
        raise ConfigError(str(exc)) from None
    info = classifier.info
    log(f"model {path.name}: {info.extra.get('quantization', 'tflite')}, labels {', '.join(info.labels)}; "
        f"input {info.describe_preprocessing()}; runtime {classifier.runtime_name}, "
        f"{cfg.model.num_threads} thread(s)" + ("; mirror-averaged" if cfg.model.mirror_average else ""))
    return classifier
