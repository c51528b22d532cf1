"""`fer-edge bench`: the pipeline's speed on this device, next to the decode + encode floor.

Each contender runs in its own subprocess (`python -m fer_edge.bench child ...`), so its peak
RSS, its start-up time and the modules it loads are its own. Rounds interleave the contenders
(in a rotating order) and every figure is a median over rounds; a ratio is taken within a round,
between runs made back to back, so a machine that is busy with something else skews both sides.
No TensorFlow here: benchmarks/pipeline.py adds the TensorFlow contenders on a workstation.
Rounds: 3, or $FER_EDGE_BENCH_ROUNDS (e.g. 1 for a quick look, 7 for steadier medians).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .cli_support import run_main
from .errors import EX_SOFTWARE, DataError, FerEdgeError

# Modules whose presence in a fer-edge process would mean the device path pulled in a framework.
HEAVY_MODULES = ("tensorflow", "keras", "tf_keras", "torch", "jax")

FER_EDGE_MODES = {"fer-edge every frame": 1, "fer-edge default": None}  # None: the configured default
FLOOR = "decode+encode floor"
STAGE_ORDER = ("capture", "detect", "preprocess", "infer", "track", "annotate", "encode", "log")


# --- in the child process ----------------------------------------------------------------------
def peak_rss_mb() -> float:
    """VmHWM of this process (Linux); ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def heavy_modules() -> list[str]:
    return sorted(m for m in sys.modules if m.partition(".")[0] in HEAVY_MODULES)


def _boxes(faces) -> list[list]:
    return [[*map(int, f.box), f.label] for f in faces]


def child_fer_edge(opts: argparse.Namespace) -> dict[str, Any]:
    """One `fer-edge run` on the video, built as cmd_run builds it, plus a hook that records
    what each analysis found and what the video shows (for the quality figures)."""
    from .options import config_from_args, open_classifier
    from .detector import FaceDetector
    from .pipeline import Pipeline
    from .sinks import open_file_sinks
    from .sources import open_source

    out = Path(opts.output)
    ns = argparse.Namespace(source=opts.video, output=str(out), every=opts.every, model=opts.model,
                            threads=opts.threads, runtime=opts.runtime, labels=opts.labels,
                            input_range=opts.input_range, set=opts.set)
    cfg = config_from_args(ns)
    classifier = open_classifier(ns, cfg)
    detector = FaceDetector(cfg.detection)
    source = open_source(cfg.source, cfg.detection.width)
    cfg.video.enabled = cfg.csv.enabled = True  # the figures include encoding and logging
    if cfg.video.codec == "auto":  # the floor and the contenders write mp4v: compare like with like
        cfg.video.codec = "mp4v"
    budget, video, csv = open_file_sinks(cfg, out, source, classifier.labels)
    first: list[float] = []
    records: list[list] = []
    raw: list = []
    pipeline: Optional[Pipeline] = None
    if opts.record:  # the classifier's own output per face, before the tracker smooths it
        predict = classifier.predict

        def recording_predict(faces):
            raw.append(predict(faces))
            return raw[-1]
        classifier.predict = recording_predict

    def on_analysis(frame, detected) -> None:
        if not first:
            first.append(time.time() - opts.t_spawn)
        if opts.record:  # what the tracker shows from this frame on, until the next analysis
            unsmoothed = [classifier.labels[int(p.argmax())] for p in raw.pop()] if raw else []
            records.append([frame.index, _boxes(detected), _boxes(pipeline.tracker.visible()), unsmoothed])

    pipeline = Pipeline(cfg, source, classifier, detector, video=video, csv=csv, disk=budget,
                        on_analysis=on_analysis)
    cpu = time.process_time()
    stats = pipeline.run()
    cpu = time.process_time() - cpu
    short = source.shortfall()
    if short:  # figures over part of a file would pass for the whole one's
        raise DataError(f"{short}; benchmark a whole video file")
    result = {
        "frames": stats.frames, "analysed": stats.analysed, "faces": stats.faces,
        "frames_with_faces": stats.frames_with_faces, "seconds": stats.seconds, "fps": stats.fps,
        "cpu_ms_per_frame": 1000 * cpu / max(1, stats.frames),
        "first_frame_s": first[0] if first else None,
        "stage_ms_per_frame": {k: v for k, v in stats.stage_ms_per_frame().items() if k in STAGE_ORDER},
        "full_scans": detector.full_scans, "near_searches": detector.near_searches,
        "runtime": classifier.runtime_name, "video_frames_written": video.frames_written,
        "csv_rows": csv.rows_written,
        "settings": {"every": cfg.analysis.every, "target_fps": cfg.analysis.target_fps,
                     "idle_fps": cfg.analysis.idle_fps,
                     "detection": {k: getattr(cfg.detection, k) for k in vars(cfg.detection)}},
    }
    if opts.record:
        result["records"] = records
    return result


def child_floor(opts: argparse.Namespace) -> dict[str, Any]:
    """Decode every frame and encode it again (mp4v), nothing else: no pipeline can beat this."""
    import cv2

    cap = cv2.VideoCapture(opts.video)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    Path(opts.output).mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(Path(opts.output) / "floor.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    frames, first = 0, None
    started, cpu = time.perf_counter(), time.process_time()
    while True:
        ok, image = cap.read()
        if not ok:
            break
        if first is None:
            first = time.time() - opts.t_spawn
        writer.write(image)
        frames += 1
    writer.release()
    cap.release()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds if seconds else 0.0,
            "cpu_ms_per_frame": 1000 * cpu / max(1, frames), "first_frame_s": first, "faces": 0}


CHILDREN: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "fer-edge": child_fer_edge, "floor": child_floor}


CHILD_PROG = "fer-edge bench"


def child_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="fer_edge.bench child")
    p.add_argument("kind", choices=sorted(CHILDREN))
    p.add_argument("video")
    p.add_argument("--output", required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--t-spawn", type=float, required=True, help="parent's time.time() just before the spawn")
    p.add_argument("--every", type=int)
    p.add_argument("--record", action="store_true")
    p.add_argument("--model")
    p.add_argument("--threads", type=int)
    p.add_argument("--runtime")
    p.add_argument("--labels")
    p.add_argument("--input-range")
    p.add_argument("--set", action="append", default=[])
    opts = p.parse_args(argv)
    result = CHILDREN[opts.kind](opts)
    result["heavy_modules"] = heavy_modules()
    result["vm_hwm_mb"] = peak_rss_mb()
    Path(opts.result).write_text(json.dumps(result))
    return 0


# --- in the parent -----------------------------------------------------------------------------
@dataclass
class Contender:
    name: str
    argv: Callable[[Path, Path, float], list[str]]  # (output dir, result file, t_spawn) -> command
    analyses: bool = True  # False for the floor: no faces, no first analysed frame


@dataclass
class Run:
    """One contender's figures from one round."""
    fps: float
    peak_rss_mb: float
    first_frame_s: Optional[float]
    data: dict[str, Any] = field(default_factory=dict)


def run_child(contender: Contender, workdir: Path, timeout: float = 900.0) -> Run:
    """Spawn one contender, wait with wait4 for its own rusage (peak RSS), read its result file."""
    import subprocess

    out = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    result_file, log_file = out / "result.json", out / "stderr.log"
    t_spawn = time.time()
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(contender.argv(out, result_file, t_spawn), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen
    if proc.returncode != 0 or not result_file.is_file():
        lines = log_file.read_text(errors="replace").strip().splitlines()
        # a user mistake (bad model, bad video) is the child's one error line, with its exit code
        told = [line.partition(": error: ")[2] for line in lines if line.startswith(f"{CHILD_PROG}: error: ")]
        if told:
            raise FerEdgeError(told[-1], proc.returncode)
        raise FerEdgeError(f"{contender.name} failed (exit {proc.returncode})"
                           + (f": {lines[-1]}" if lines else ""), EX_SOFTWARE)
    data = json.loads(result_file.read_text())
    rss = max(usage.ru_maxrss / 1024, data.get("vm_hwm_mb", 0.0))  # ru_maxrss: KiB on Linux
    return Run(data["fps"], rss, data.get("first_frame_s"), data)


def run_rounds(contenders: Sequence[Contender], rounds: int, workdir: Path,
               progress: Callable[[str], None] = lambda m: None) -> dict[str, list[Run]]:
    """Every contender once per round, the order rotating so none always runs first or last."""
    runs: dict[str, list[Run]] = {c.name: [] for c in contenders}
    order = list(contenders)
    for r in range(rounds):
        for c in order:
            run = run_child(c, workdir)
            runs[c.name].append(run)
            progress(f"round {r + 1}/{rounds}: {c.name}: {run.fps:.1f} fps")
        order = order[1:] + order[:1]
    return runs


def _median(values: Sequence[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _r(value: Optional[float], digits: int = 2) -> Optional[float]:
    return None if value is None else round(value, digits)


def summarise(runs: dict[str, list[Run]], baselines: dict[str, str]) -> dict[str, Any]:
    """Medians per contender, and for each baseline the median over rounds of fps / baseline fps.

    `baselines` maps a ratio key (e.g. ratio_vs_floor) to the contender it divides by.
    """
    out: dict[str, Any] = {"fps": {}, "cpu_ms_per_frame": {}, "peak_rss_mb": {}, "first_frame_s": {}, "faces": {},
                           "frames": {}, "stage_ms_per_frame": {}, "tensorflow_loaded": {}, "fps_rounds": {}}
    for name, rs in runs.items():
        out["fps"][name] = _r(_median([r.fps for r in rs]), 1)
        out["fps_rounds"][name] = [round(r.fps, 1) for r in rs]
        out["cpu_ms_per_frame"][name] = _r(_median([r.data.get("cpu_ms_per_frame") for r in rs]), 3)
        out["peak_rss_mb"][name] = _r(_median([r.peak_rss_mb for r in rs]), 1)
        out["first_frame_s"][name] = _r(_median([r.first_frame_s for r in rs]), 3)
        out["faces"][name] = rs[0].data.get("faces")
        out["frames"][name] = rs[0].data.get("frames")
        out["tensorflow_loaded"][name] = any(m.partition(".")[0] in ("tensorflow", "keras")
                                             for m in rs[0].data.get("heavy_modules", []))
        stages = [r.data["stage_ms_per_frame"] for r in rs if "stage_ms_per_frame" in r.data]
        if stages:
            out["stage_ms_per_frame"][name] = {k: _r(_median([s[k] for s in stages]), 3) for k in stages[0]}
    for key, base in baselines.items():
        if base not in runs:
            continue
        out[key], out["cpu_" + key] = {}, {}
        for name, rs in runs.items():
            if name == base or not name.startswith("fer-edge"):
                continue
            pairs = [a.fps / b.fps for a, b in zip(rs, runs[base]) if b.fps > 0]
            out[key][name] = _r(_median(pairs), 2)
            # CPU time per frame, the other way round: a busy machine moves it far less than fps,
            # and it gives fer-edge no credit for keeping a second core busy
            mine, theirs = out["cpu_ms_per_frame"].get(name), out["cpu_ms_per_frame"].get(base)
            out["cpu_" + key][name] = _r(theirs / mine, 2) if mine and theirs else None
    return out


def fer_edge_contenders(video: str, model_args: list[str], record: bool = False,
                        extra: Sequence[str] = ()) -> list[Contender]:
    def command(kind: str, every: Optional[int]):
        def argv(out: Path, result: Path, t_spawn: float) -> list[str]:
            cmd = [sys.executable, "-m", "fer_edge.bench", "child", kind, video, "--output", str(out),
                   "--result", str(result), "--t-spawn", repr(t_spawn), *model_args, *extra]
            if every is not None:
                cmd += ["--every", str(every)]
            if record:
                cmd.append("--record")
            return cmd
        return argv

    contenders = [Contender(name, command("fer-edge", every)) for name, every in FER_EDGE_MODES.items()]
    contenders.append(Contender(FLOOR, command("floor", None), analyses=False))
    return contenders


def model_argv(args: argparse.Namespace) -> list[str]:
    out = []
    for opt in ("model", "threads", "runtime", "labels", "input_range"):
        value = getattr(args, opt, None)
        if value is not None:
            out.append(f"--{opt.replace('_', '-')}={value}")
    return out


def format_table(summary: dict[str, Any], ratio_keys: Sequence[str]) -> str:
    names = list(summary["fps"])
    head = ["contender", "fps", *[k.replace("ratio_vs_", "x ") for k in ratio_keys],
            "CPU ms/frame", "peak RSS MB", "first frame s", "faces", "TF loaded"]
    rows = []
    for n in names:
        ratios = [summary.get(k, {}).get(n) for k in ratio_keys]
        rows.append([n, summary["fps"][n], *ratios, summary["cpu_ms_per_frame"].get(n), summary["peak_rss_mb"][n],
                     summary["first_frame_s"][n], summary["faces"][n],
                     "yes" if summary["tensorflow_loaded"][n] else "no"])
    lines = [_row(head), _row(["---"] * len(head))] + [_row(r) for r in rows]
    stages = summary["stage_ms_per_frame"]
    if stages:
        keys = [k for k in STAGE_ORDER if any(k in s for s in stages.values())]
        lines += ["", _row(["ms per frame", *keys]), _row(["---"] * (len(keys) + 1))]
        lines += [_row([n, *[s.get(k) for k in keys]]) for n, s in stages.items()]
    return "\n".join(lines)


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join("-" if c is None else (f"{c:g}" if isinstance(c, float) else str(c))
                             for c in cells) + " |"


def machine() -> dict[str, Any]:
    import platform

    import cv2
    import numpy as np

    info: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                            "opencv": cv2.__version__, "numpy": np.__version__}
    try:
        with open("/proc/device-tree/model") as fh:  # "Raspberry Pi 4 Model B Rev 1.4"
            info["model"] = fh.read().strip("\0\n")
    except OSError:
        pass
    try:
        info["load_avg_before"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def video_info(path: str) -> dict[str, Any]:
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened() or cap.get(cv2.CAP_PROP_FRAME_COUNT) <= 0:
            raise DataError(f"video file {path} could not be opened by OpenCV; is it a video (mp4, avi, mkv)?")
        return {"path": path, "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), "fps": round(cap.get(cv2.CAP_PROP_FPS), 3),
                "frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT))}
    finally:
        cap.release()


def run_bench(args: argparse.Namespace) -> int:
    from .errors import InputMissing
    from .resources import SAMPLE_VIDEO, find_resource

    video = str(args.video) if args.video else str(find_resource(SAMPLE_VIDEO))
    if not Path(video).is_file():
        raise InputMissing(f"video {video} not found; give a video file or omit it for the bundled sample")
    rounds = max(1, int(getattr(args, "rounds", None) or os.environ.get("FER_EDGE_BENCH_ROUNDS") or 3))
    say = (lambda m: print(f"fer-edge bench: {m}", file=sys.stderr, flush=True))
    info = {"video": video_info(video), "machine": machine(), "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="fer-edge-bench-") as tmp:
        runs = run_rounds(fer_edge_contenders(video, model_argv(args)), rounds, Path(tmp), say)
    summary = summarise(runs, {"ratio_vs_floor": FLOOR})
    summary.update(info)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{Path(video).name}: {info['video']['width']}x{info['video']['height']}, "
              f"{info['video']['frames']} frames; median of {rounds} rounds")
        print(format_table(summary, ["ratio_vs_floor"]))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        sys.exit(run_main(CHILD_PROG, child_main, sys.argv[2:]))
    sys.exit("usage: fer-edge bench [VIDEO] [--json]  (this module's own entry is for its subprocesses)")
