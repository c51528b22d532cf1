"""What `video.record = "faces"` saves while nobody is in view: `fer-edge run` in both modes.

    python benchmarks/record_modes.py [VIDEO] [--rounds N] [--json]

Without VIDEO it builds an empty-room clip from the bundled sample: its stretch with no face
(the camera on the shuttle model), played forwards and backwards to 120 s. Each mode runs as its
own `fer-edge run --json` process, interleaved over rounds; the figures are medians. CPU seconds
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

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample_faces.mp4"
NO_FACE_FRAMES = range(55, 99)  # the sample's frames with no face (fer-edge run --every 1 finds none)
MODES = ("always", "faces")


def empty_room_clip(path: Path, seconds: float = 120.0) -> Path:
    cap = cv2.VideoCapture(str(SAMPLE))
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    index = 0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        if index in NO_FACE_FRAMES:
            frames.append(image)
        index += 1
    cap.release()
    loop = frames + frames[-2:0:-1]  # ping-pong: no jump cut for the encoder
    height, width = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for i in range(round(seconds * fps)):
        out.write(loop[i % len(loop)])
    out.release()
    return path


def fer_edge_run(video: Path, mode: str, out: Path, *extra: str) -> tuple[dict, float]:
    """The run's summary and the CPU seconds its process used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, "-m", "fer_edge", "run", "--source", str(video), "--output", str(out),
                             "--record", mode, "--json", *extra], capture_output=True, text=True, timeout=600,
                            cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout), after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def run_once(video: Path, mode: str, out: Path) -> dict:
    summary, cpu = fer_edge_run(video, mode, out)
    _, startup = fer_edge_run(video, mode, out.with_name(out.name + "-startup"), "--max-frames", "1")
    stages = summary["stage_ms_per_frame"]
    video_bytes = sum(p.stat().st_size for p in (out / "video").iterdir())
    cap = cv2.VideoCapture(str(video))
    media_hours = summary["frames"] / cap.get(cv2.CAP_PROP_FPS) / 3600
    cap.release()
    return {"fps": summary["fps"], "frames": summary["frames"], "video_frames": summary["video_frames"],
            "cpu_ms_per_frame": 1000 * (cpu - startup) / (summary["frames"] - 1),
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
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for r in range(args.rounds):
            for mode in MODES:
                runs[mode].append(run_once(video, mode, tmp_path / f"{mode}-{r}"))
    result = {"video": str(args.video or "empty-room clip from samples/sample_faces.mp4"), "rounds": args.rounds,
              "modes": {mode: {key: statistics.median(run[key] for run in rs) for key in rs[0]}
                        for mode, rs in runs.items()}}
    always, faces = result["modes"]["always"], result["modes"]["faces"]
    result["cpu_ratio_faces_to_always"] = statistics.median(
        f["cpu_ms_per_frame"] / a["cpu_ms_per_frame"] for a, f in zip(runs["always"], runs["faces"]))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['video']}, {always['frames']:.0f} frames, medians of {args.rounds} interleaved rounds")
    print(f"{'mode':8} {'fps':>8} {'CPU ms/frame':>13} {'draw+encode ms':>15} {'frames kept':>12} {'video MB/h':>11}")
    for mode in MODES:
        m = result["modes"][mode]
        print(f"{mode:8} {m['fps']:8.1f} {m['cpu_ms_per_frame']:13.2f} {m['draw_encode_ms_per_frame']:15.2f} "
              f"{m['video_frames']:12.0f} {m['video_mb_per_hour']:11.0f}")
    print(f"CPU time, faces / always: {result['cpu_ratio_faces_to_always']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
