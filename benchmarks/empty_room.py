"""What an empty room costs: `video.record` always or faces, `analysis.idle_fps` 6 or 2.

    python benchmarks/empty_room.py [VIDEO] [--rounds N] [--json]

Without VIDEO it builds an empty-room clip from the bundled sample: its stretch with no face
(the camera on the shuttle model), played forwards and backwards to 120 s. Each variant runs as
its own `fer-edge run --json` process, interleaved over rounds; the figures are medians. CPU seconds
are the child's user + system time, so the encoder and decoder threads count too (on a Pi that
is the headroom, the heat and the power), less a one-frame run's, so start-up does not count.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

from fer_edge.sources import decode_all

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample_faces.mp4"
NO_FACE_FRAMES = range(55, 99)  # the sample's frames with no face (fer-edge run --every 1 finds none)
# idle_fps 6 = target_fps: a full scan at every analysis while nobody is in view, as before idle_fps
VARIANTS = {
    "always, idle 6/s": ("always", "6"),
    "faces, idle 6/s": ("faces", "6"),
    "always, idle 2/s": ("always", "2"),
    "faces, idle 2/s": ("faces", "2"),
}


def empty_room_clip(path: Path, seconds: float = 120.0) -> Path:
    every, fps = decode_all(SAMPLE)
    frames = [every[i] for i in NO_FACE_FRAMES]
    loop = frames + frames[-2:0:-1]  # ping-pong: no jump cut for the encoder
    height, width = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for i in range(round(seconds * fps)):
        out.write(loop[i % len(loop)])
    out.release()
    return path


def fer_edge_run(video: Path, variant: str, out: Path, *extra: str) -> tuple[dict, float]:
    """The run's summary and the CPU seconds its process used."""
    record, idle_fps = VARIANTS[variant]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, "-m", "fer_edge", "run", "--source", str(video), "--output", str(out),
                             "--record", record, "--set", f"analysis.idle_fps={idle_fps}", "--json", *extra],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout), after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def run_once(video: Path, variant: str, out: Path) -> dict:
    summary, cpu = fer_edge_run(video, variant, out)
    _, startup = fer_edge_run(video, variant, out.with_name(out.name + "-startup"), "--max-frames", "1")
    stages = summary["stage_ms_per_frame"]
    video_bytes = sum(p.stat().st_size for p in (out / "video").iterdir())
    cap = cv2.VideoCapture(str(video))
    media_hours = summary["frames"] / cap.get(cv2.CAP_PROP_FPS) / 3600
    cap.release()
    return {"fps": summary["fps"], "frames": summary["frames"], "analysed": summary["analysed"],
            "video_frames": summary["video_frames"],
            "cpu_ms_per_frame": 1000 * (cpu - startup) / (summary["frames"] - 1),
            "detect_ms_per_frame": stages["detect"],
            "draw_encode_ms_per_frame": stages["annotate"] + stages["encode"],
            "video_mb_per_hour": video_bytes / 1e6 / media_hours}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", nargs="?", type=Path, help="video file (default: an empty-room clip from the sample)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        video = args.video or empty_room_clip(tmp_path / "empty_room.avi")
        runs: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
        for r in range(args.rounds):
            order = list(VARIANTS)[r % len(VARIANTS):] + list(VARIANTS)[:r % len(VARIANTS)]  # rotate the order
            for i, variant in enumerate(order):
                runs[variant].append(run_once(video, variant, tmp_path / f"{r}-{i}"))
    first = next(iter(VARIANTS))
    result = {"video": str(args.video or "empty-room clip from samples/sample_faces.mp4"), "rounds": args.rounds,
              "variants": {variant: {key: statistics.median(run[key] for run in rs) for key in rs[0]}
                           for variant, rs in runs.items()}}
    for variant, rs in runs.items():  # ratios within a round, then the median
        result["variants"][variant]["cpu_vs_first"] = statistics.median(
            run["cpu_ms_per_frame"] / base["cpu_ms_per_frame"] for run, base in zip(rs, runs[first]))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    frames = result["variants"][first]["frames"]
    print(f"{result['video']}, {frames:.0f} frames, medians of {args.rounds} interleaved rounds")
    print(f"{'variant':18} {'fps':>7} {'analysed':>9} {'CPU ms/frame':>13} {'x first':>8} {'detect ms':>10} "
          f"{'draw+queue ms':>14} {'recorded':>9} {'video MB/h':>11}")
    for variant, m in result["variants"].items():
        print(f"{variant:18} {m['fps']:7.1f} {m['analysed']:9.0f} {m['cpu_ms_per_frame']:13.2f} "
              f"{m['cpu_vs_first']:8.2f} {m['detect_ms_per_frame']:10.2f} {m['draw_encode_ms_per_frame']:14.2f} "
              f"{m['video_frames']:9.0f} {m['video_mb_per_hour']:11.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
