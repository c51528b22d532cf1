"""fer-edge: the one entry point on the device.

  fer-edge run        camera/video → faces → emotions → annotated video + CSV (the daemon)
  fer-edge detect     faces and emotions in images, as JSON
  fer-edge evaluate   accuracy and calibration of a .tflite model on a labelled face set (--against: vs another)
  fer-edge summary    what the CSV logs say, per hour, day or visit
  fer-edge report     a picture of the day from the CSV logs: emotion timeline and visits, one PNG
  fer-edge doctor     check runtime, OpenCV, cascade, cameras, model, disk, preview; say what to fix
  fer-edge config     print the effective configuration
  fer-edge install-service   install the systemd unit (--dry-run prints the steps)
  fer-edge bench      measure the pipeline on this device
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Sequence

from . import __version__
from .cli_support import ArgumentParser, attach_negative_values, check_writable, run_main
from .config import OutputConfig, to_toml
from .errors import EX_DATAERR, DataError, InputMissing, OutputError, UsageError
from .options import (add_config_options, add_model_options, config_from_args, log, model_overrides, model_path,
                      open_classifier)
from .resources import resolve_model


# --- commands --------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from .detector import FaceDetector
    from .pipeline import Pipeline, pre_roll_frames
    from .sinks import Display, open_file_sinks, private_umask
    from .sources import open_source
    from .systemd import Notifier

    private_umask()
    cfg = config_from_args(args)
    out = Path(cfg.output.directory)
    # Checked now, created only by the sinks: a run that fails before them (no camera, a bad
    # model) leaves no empty output folder behind.
    check_writable(out, "output directory", folder=True, fix="choose another with --output")
    new_folder = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)
    classifier = open_classifier(args, cfg)
    detector = FaceDetector(cfg.detection)
    source = open_source(cfg.source, cfg.detection.width)
    budget = video = csv = display = preview = mqtt = None
    try:
        if cfg.preview.listen:  # before the files: a port in use must not leave empty output files behind
            from .preview import PreviewServer
            p = cfg.preview
            preview = PreviewServer(p.listen, p.fps, classifier.labels, source.name, password_file=p.password_file,
                                    cert_file=p.cert_file, key_file=p.key_file)
        if cfg.display.enabled:
            display = Display()
        v = cfg.video
        # room for a whole pre-roll, so flushing it when a face appears does not stall capture
        queue_size = 8 + pre_roll_frames(v.record, source.fps, v.pre_roll_seconds)
        if cfg.mqtt.host:  # before the files too: a wrong password must not leave empty ones behind
            from .mqtt import MqttSink
            mqtt = MqttSink(cfg.mqtt, out, classifier.labels, warn=lambda m: log(f"warning: {m}"))
            log(f"mqtt: {cfg.mqtt.host}:{cfg.mqtt.port}, topics {mqtt.topics.base}/..."
                + ("; Home Assistant discovery on" if cfg.mqtt.discovery else ""))
        budget, video, csv = open_file_sinks(cfg, out, source, classifier.labels, queue_size)
        if mqtt is not None:
            mqtt.spool.budget = budget  # what waits for the broker lives within the disk budget
    except BaseException:
        for sink in (preview, video, csv, mqtt, display, source):
            if sink is not None:
                sink.close()
        if new_folder is not None and new_folder.is_dir() and not any(p.is_file() for p in new_folder.rglob("*")):
            shutil.rmtree(new_folder, ignore_errors=True)  # only folders this run made, and only if empty
        raise
    every = f"every {cfg.analysis.every} frame(s)" if cfg.analysis.every else \
        f"adaptive, {cfg.analysis.target_fps:g} analyses/s"
    codec = "" if video is None else f"; video {'H.264 (PyAV)' if video.pyav else video.codec + ' (OpenCV)'}"
    log(f"source {source.name} {source.frame_size[0]}x{source.frame_size[1]} @ {source.fps:.2f} fps; "
        f"analysis {every}; detection width {cfg.detection.width}; output {out}{codec}")
    if csv is not None and not source.live and not cfg.source.realtime:
        started = datetime.fromtimestamp(source.start_time).astimezone().isoformat(timespec="seconds")
        log(f"csv: rows are stamped with media time: the file's start, {started} ({source.start_basis}), "
            "plus each frame's position (column media_s)")
    pipeline = Pipeline(cfg, source, classifier, detector, video=video, csv=csv, display=display,
                        preview=preview, notifier=Notifier(), disk=budget, mqtt=mqtt)
    if preview is not None:
        preview.stats = pipeline.counters
        if csv is not None:
            from .report import CachedReport
            preview.report = CachedReport(csv.directory)
        log(f"preview: {preview.url} (live view), {preview.url}status (JSON), {preview.url}report.png (the day)")
    pipeline.install_signal_handlers()
    stats = pipeline.run(max_frames=args.max_frames)
    summary = {
        "frames": stats.frames, "analysed": stats.analysed, "faces": stats.faces,
        "frames_with_faces": stats.frames_with_faces,
        "seconds": round(stats.seconds, 2), "fps": round(stats.fps, 1), "dropped": source.dropped,
        "video_segments": [str(p) for p in video.segments] if video else [],
        "video_frames": stats.recorded, "video_frames_lost": video.frames_lost if video else 0,
        "video_events": stats.events if cfg.video.record == "faces" else None,
        "csv_files": [str(p) for p in csv.files] if csv else [], "csv_rows": csv.rows_written if csv else 0,
        "csv_rows_dropped": csv.rows_dropped if csv else 0,
        "stage_ms_per_frame": stats.stage_ms_per_frame(),
    }
    if mqtt is not None:
        summary["mqtt"] = mqtt.counters()
    short = source.shortfall() if hasattr(source, "shortfall") else ""
    if short:
        summary["source_short"] = short
        log(f"warning: {short}")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        log(f"done: {stats.frames} frames in {stats.seconds:.1f} s ({stats.fps:.1f} fps), "
            f"{stats.analysed} analysed, {stats.faces} face detections, {source.dropped} dropped")
        if video:
            events = (f"; {stats.recorded} of {stats.frames} frames recorded, in {stats.events} event(s) "
                      "with a face in view" if cfg.video.record == "faces" else "")
            lost = f"; {video.frames_lost} frame(s) lost to disk errors" if video.frames_lost else ""
            log(f"video: {video.finished} segment(s) in {out / 'video'}{events}{lost}")
        if csv:
            dropped = f"; {csv.rows_dropped} row(s) dropped (disk errors)" if csv.rows_dropped else ""
            log(f"csv: {csv.rows_written} row(s) in {csv.opened} file(s) in {out / 'csv'}{dropped}")
    return EX_DATAERR if short else 0  # everything there was analysed, but a script should notice


def cmd_detect(args: argparse.Namespace) -> int:
    import cv2

    from .annotate import Annotator
    from .detector import FaceDetector
    from .pipeline import crop_face
    from .records import FaceResult

    cfg = config_from_args(args)
    classifier = open_classifier(args, cfg)
    detector = FaceDetector(cfg.detection)
    annotator = Annotator(classifier.labels, blur=cfg.video.blur if cfg.video.blur_faces else None) \
        if args.annotate else None
    if args.annotate:
        try:
            args.annotate.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"--annotate {args.annotate} cannot be created ({exc.strerror}); "
                              "choose a writable folder") from None
    results = []
    for name in args.images:
        path = Path(name)
        if not path.is_file():
            raise InputMissing(f"image {path} not found")
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f"image {path} could not be decoded; give a JPEG/PNG/BMP file")
        boxes, _ = detector.find(image, None, [], full_scan=True)  # the same boxes `run` would give
        crops = [crop_face(image, box, cfg.analysis.face_margin, classifier.info.input_channels == 1)
                 for box in boxes]
        probs = classifier.predict(crops)
        faces, drawn = [], []
        for i, (box, p) in enumerate(zip(boxes, probs)):
            best = int(p.argmax())
            faces.append({"box": [int(v) for v in box], "emotion": classifier.labels[best],
                          "confidence": round(float(p[best]), 4),
                          "probabilities": {k: round(float(v), 4) for k, v in zip(classifier.labels, p)}})
            drawn.append(FaceResult(i + 1, tuple(int(v) for v in box), p, classifier.labels[best], float(p[best])))
        result = {"image": str(path), "width": image.shape[1], "height": image.shape[0], "faces": faces}
        if annotator is not None:
            annotator.draw(image, drawn)
            target = args.annotate / f"{path.stem}.annotated{path.suffix if path.suffix else '.png'}"
            if not cv2.imwrite(str(target), image):
                raise OutputError(f"could not write {target}; check free space and permissions of --annotate")
            result["annotated"] = str(target)
        results.append(result)
    print(json.dumps(results, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from .datasets import ferplus_majority, load_faces
    from .metrics import format_paired, format_report, paired_comparison, report_by_label_sets
    from .runtime import EmotionClassifier, fit_faces

    def open_model(path: Path, overrides: dict) -> EmotionClassifier:
        return EmotionClassifier(path, num_threads=args.threads, runtime=args.runtime,
                                 mirror_average=args.mirror_average, **overrides)

    def probabilities(classifier: EmotionClassifier) -> np.ndarray:
        """(faces, labels) in the classifier's own label order."""
        fitted = fit_faces(faces.images, classifier.info)
        return np.concatenate([classifier.predict(fitted[i:i + 256]) for i in range(0, len(fitted), 256)])

    path = resolve_model(args.model)
    for given, what in ((path, "MODEL.tflite, evaluate's first argument"),
                        (resolve_model(args.against) if args.against else None, "--against OTHER.tflite")):
        if given is not None and not given.is_file():
            raise InputMissing(f"model {given} not found; give the path of a .tflite file as {what} "
                               "(or a bundled one: models/fer_default.tflite, models/mini_xception_int8.tflite)")
    classifier = open_model(path, model_overrides(args))
    other = None
    if args.against:
        other_path = resolve_model(args.against)
        other = open_model(other_path, {})  # --labels / --input-range describe MODEL only
        if set(other.labels) != set(classifier.labels):
            raise DataError(f"--against {other_path.name} has labels {', '.join(other.labels)}, but {path.name} has "
                            f"{', '.join(classifier.labels)}; compare models of the same emotions")
    faces = load_faces(args.dataset, usage=args.usage, limit=args.limit, strict=args.strict,
                       warn=lambda m: log(f"warning: {m}"), ferplus=args.ferplus)
    labels = classifier.labels
    unknown = sorted({n for n in faces.names() if n not in labels})
    if unknown:
        raise DataError(f"{args.dataset} has classes the model does not know: {', '.join(unknown)}")
    index = {name: i for i, name in enumerate(labels)}
    truth = np.asarray([index[n] for n in faces.names()])
    ferplus_truth = None if faces.votes is None else ferplus_majority(faces.votes, labels)
    probs = probabilities(classifier)
    predicted = probs.argmax(1)
    report = report_by_label_sets(truth, probs, labels, ferplus_truth)
    report.update({"model": str(path), "dataset": str(args.dataset), "runtime": classifier.runtime_name,
                   "mirror_average": classifier.mirror_average})
    if other is not None:
        # two models may order their labels differently: compare by name
        other_names = np.asarray(other.labels)[probabilities(other).argmax(1)]
        other_predicted = np.asarray([index[n] for n in other_names])
        report["against"] = {"model": str(other_path), **paired_comparison(truth, predicted, other_predicted)}
        if ferplus_truth is not None:
            scored = ferplus_truth >= 0
            report["against"]["ferplus"] = paired_comparison(ferplus_truth[scored], predicted[scored],
                                                             other_predicted[scored])
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report, f"{path.name} on {args.dataset} ({classifier.runtime_name})"))
        if other is not None:
            by = " by FER2013 label" if ferplus_truth is not None else ""
            print(format_paired(report["against"], path.name, other_path.name) + by)
            if ferplus_truth is not None:
                print(format_paired(report["against"]["ferplus"], path.name, other_path.name) + " by FER+ majority")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(to_toml(config_from_args(args)), end="")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_doctor
    return run_doctor(args, config_from_args, model_path, log)


def cmd_install_service(args: argparse.Namespace) -> int:
    from .service import install_service

    steps = install_service(dry_run=args.dry_run, executable=args.executable, user=args.user)
    print(("would run:\n" if args.dry_run else "done:\n") + "\n".join(f"  {s}" for s in steps))
    return 0


def log_inputs(args: argparse.Namespace) -> list[Path]:
    """summary's and report's CSV files: PATH... or output.directory's csv/; --since and --gap checked."""
    import re

    from .summary import csv_files

    if args.since and not re.fullmatch(r"\d{4}-\d{2}(-\d{2}(T\d{2}(:\d{2}(:\d{2})?)?)?)?", args.since):
        raise UsageError(f"--since {args.since!r} is not an ISO date or time; use e.g. 2026-11-01 or 2026-11-01T08:00")
    paths = args.paths or [Path(config_from_args(args).output.directory) / "csv"]
    files = csv_files(paths)
    if not files:
        raise InputMissing(f"no CSV files in {', '.join(map(str, paths))}; `fer-edge run` writes them to "
                           "OUTPUT/csv (the service: /var/lib/fer-edge/csv)")
    if args.gap <= 0:
        raise UsageError(f"--gap {args.gap:g}: give a positive number of seconds, e.g. 60")
    return files


def warn_skipped(summary) -> None:
    for name, count in summary.skipped.items():
        why = "; ".join(f"{n} {reason}" for reason, n in summary.skip_reasons.get(name, {}).items())
        log(f"warning: skipped {count} unreadable row(s) in {name}" + (f" ({why})" if why else ""))


def cmd_summary(args: argparse.Namespace) -> int:
    from .summary import summarise

    files = log_inputs(args)
    summary = summarise(files, by=args.by, since=args.since or "", gap=args.gap)
    warn_skipped(summary)
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    elif not summary.periods:
        print(f"no rows{' since ' + args.since if args.since else ''} in {len(files)} file(s)")
    else:
        print(summary.table())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import PngTarget, build_report, encode_png, render

    if args.by_minutes is not None and 1440 % args.by_minutes:
        raise UsageError(f"--by-minutes {args.by_minutes}: give a length that divides a day, e.g. 5, 15, 60")
    target = PngTarget(args.png)  # before the work: a bad -o fails at once
    try:
        files = log_inputs(args)
        report = build_report(files, since=args.since, gap=args.gap, minutes=args.by_minutes or 0)
        warn_skipped(report.visits)
        if report.empty:
            since = f" since {report.since}" if report.since else ""
            raise DataError(f"no faces logged{since} in {len(files)} CSV file(s): nothing to draw, "
                            f"{args.png} not written; try an earlier --since")
        target.write(encode_png(render(report)))
    except BaseException:
        target.discard()
        raise
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    log(f"report: {len(report.visits.periods)} visit(s), {report.analyses} analyses, bins of "
        f"{report.bin_minutes} min -> {args.png}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench
    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    from .summary import VISIT_GAP_SECONDS  # stdlib only: cheap at start-up

    p = ArgumentParser(prog="fer-edge", description=__doc__.split("\n\n")[0] if __doc__ else None,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run 'fer-edge COMMAND --help' for a command's options.")
    p.add_argument("--version", action="version", version=f"fer-edge {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="camera/video → annotated video + CSV log (the daemon)")
    run.add_argument("--source", metavar="SRC",
                     help="auto, picamera2, v4l2, a camera index or /dev/videoN, or a video file")
    run.add_argument("--no-wait", action="store_true",
                     help="exit (69) if the camera is absent at start instead of waiting for it (source.wait)")
    run.add_argument("--output", metavar="DIR", help=f"where video/ and csv/ go (output.directory; default "
                                                      f"./{OutputConfig().directory}, the service's /var/lib/fer-edge)")
    run.add_argument("--display", action="store_true", help="show the annotated feed on a screen ('q' quits)")
    run.add_argument("--no-video", action="store_true", help="write the CSV log only")
    run.add_argument("--no-csv", action="store_true", help="write the video only")
    run.add_argument("--every", type=int, metavar="N", help="analyse every Nth frame (0: adaptive)")
    run.add_argument("--realtime", action="store_true", help="pace a video file at its own fps, like a camera")
    run.add_argument("--detection-width", type=int, metavar="PX", help="width of the frame Haar runs on")
    run.add_argument("--segment-seconds", type=float, metavar="S", help="video segment length")
    run.add_argument("--record", metavar="WHEN", help="always (default), or faces: video only while a face is in "
                                                       "view, plus video.pre_roll_seconds / post_roll_seconds")
    run.add_argument("--preview", metavar="HOST:PORT",
                     help="serve a live view (MJPEG) and /status JSON, e.g. :8080 (every interface: "
                          "set preview.password_file)")
    run.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    run.add_argument("--json", action="store_true", help="print the run summary as JSON")
    add_model_options(run)
    add_config_options(run)
    run.set_defaults(func=cmd_run)

    det = sub.add_parser("detect", help="faces and emotions in images, as JSON")
    det.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, BMP): one JSON entry each")
    det.add_argument("--annotate", type=Path, metavar="DIR",
                     help="also write each image with its faces drawn, as DIR/<name>.annotated.<ext>")
    add_model_options(det)
    add_config_options(det)
    det.set_defaults(func=cmd_detect)

    ev = sub.add_parser("evaluate", help="accuracy and calibration of a .tflite model on labelled faces (no TensorFlow)")
    ev.add_argument("model", metavar="MODEL.tflite", help="the .tflite model to score (a path or a bundled name)")
    ev.add_argument("dataset", type=Path, metavar="PATH",
                    help="FER2013 folder (<class>/*.jpg) or fer2013.csv (.csv.gz)")
    ev.add_argument("--ferplus", type=Path, metavar="VOTES.csv",
                    help="FER+'s fer2013new.csv for the same rows as the CSV: also score by FER+ majority vote, "
                         "side by side with the FER2013 labels")
    ev.add_argument("--json", action="store_true", help="one JSON object: accuracy, per_class, confusion, samples")
    ev.add_argument("--against", metavar="OTHER.tflite",
                    help="also run OTHER (with fer-edge metadata) on the same faces and test whether the two "
                         "really differ (McNemar)")
    ev.add_argument("--usage", metavar="NAME", help="with a fer2013.csv: only rows with this Usage")
    ev.add_argument("--limit", type=int, metavar="N", help="a stratified sample of N faces")
    ev.add_argument("--strict", action="store_true", help="refuse a CSV with bad rows instead of skipping them")
    ev.add_argument("--threads", type=int, default=None, metavar="N",
                    help="interpreter threads (default: the runtime's own choice)")
    ev.add_argument("--runtime", choices=("litert", "tflite-runtime", "tensorflow"),
                    help="TFLite runtime to use (default: the best installed)")
    ev.add_argument("--mirror-average", action="store_true",
                    help="average each face with its mirror image, as model.mirror_average = true does in run")
    ev.add_argument("--labels", help="for a .tflite without fer-edge metadata: kaggle, fer2013 or a list")
    ev.add_argument("--input-range", metavar="LO,HI", help="for a .tflite without metadata: 0,1 or -1,1")
    ev.set_defaults(func=cmd_evaluate)

    doc = sub.add_parser("doctor", help="check this machine and say what to fix")
    add_model_options(doc)
    add_config_options(doc)
    doc.add_argument("--output", metavar="DIR", help="output directory to check")
    doc.set_defaults(func=cmd_doctor)

    conf = sub.add_parser("config", help="print the effective configuration as TOML")
    add_config_options(conf)
    conf.set_defaults(func=cmd_config)

    svc = sub.add_parser("install-service", help="install and start the systemd service (needs sudo)")
    svc.add_argument("--dry-run", action="store_true", help="print what it would do, change nothing")
    svc.add_argument("--executable", type=Path, help="fer-edge executable for ExecStart (default: this one)")
    svc.add_argument("--user", default="fer-edge", help="service user (default fer-edge)")
    svc.set_defaults(func=cmd_install_service)
    summ = sub.add_parser("summary", help="emotions logged per hour, day or visit, from the CSV files")
    summ.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                      help="CSV files or folders (default: the csv/ folder of output.directory)")
    summ.add_argument("--by", choices=("hour", "day", "visit", "all"), default="day",
                      help="period to count by (default day); visit: each stretch of faces with no pause over --gap")
    summ.add_argument("--gap", type=float, default=VISIT_GAP_SECONDS, metavar="S",
                      help=f"--by visit: a pause longer than this many seconds starts a new visit "
                           f"(default {VISIT_GAP_SECONDS:g})")
    summ.add_argument("--since", metavar="ISO", help="leave out rows before this date or time, e.g. 2026-11-01")
    summ.add_argument("--json", action="store_true", help="one JSON object")
    summ.add_argument("--output", metavar="DIR", help="the output directory whose csv/ to read (output.directory)")
    add_config_options(summ)
    summ.set_defaults(func=cmd_summary)

    rep = sub.add_parser("report", help="a picture of the day: emotion timeline and shares per visit, one PNG")
    rep.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                     help="CSV files or folders (default: the csv/ folder of output.directory)")
    rep.add_argument("-o", "--png", type=Path, default=Path("report.png"), metavar="FILE.png",
                     help="the picture to write, 1280x720 (default report.png)")
    rep.add_argument("--output", metavar="DIR", help="read DIR/csv, as `run --output DIR` wrote (output.directory)")
    rep.add_argument("--since", metavar="ISO",
                     help="draw rows from this date or time on, e.g. 2026-11-01 (default: the last 24 hours logged)")
    rep.add_argument("--by-minutes", type=int, metavar="N",
                     help="timeline bins of N minutes, a divisor of 1440 (default: the shortest of 1, 2, 5, 10, 15, "
                          "30, 60... minutes that gives fewer than 96 bins)")
    rep.add_argument("--gap", type=float, default=VISIT_GAP_SECONDS, metavar="S",
                     help=f"a pause longer than this many seconds starts a new visit (default {VISIT_GAP_SECONDS:g})")
    rep.add_argument("--json", action="store_true", help="also print the numbers drawn, as summary's JSON periods")
    add_config_options(rep)
    rep.set_defaults(func=cmd_report)

    bench = sub.add_parser("bench", help="measure the pipeline on this device (fps, per-stage ms, RSS)")
    bench.add_argument("video", nargs="?", metavar="VIDEO", help="video file (default: the bundled sample)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--rounds", type=int, metavar="N", help="interleaved rounds; figures are medians (default 3)")
    add_model_options(bench)
    bench.set_defaults(func=cmd_bench)
    p.commands = dict(sub.choices)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(attach_negative_values(argv))
    if not args.command:
        parser.print_help()
        return 64
    for name in ("threads", "every", "max_frames", "detection_width", "limit", "rounds", "by_minutes"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name == "every" else 1):
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be {'0 or more' if name == 'every' else 'positive'}")
    return args.func(args)


def entry() -> int:
    return run_main("fer-edge", main)


if __name__ == "__main__":
    sys.exit(entry())
