"""Does memory stay flat over a long run? `fer-edge run` on a long clip, its RSS sampled from /proc.

    python benchmarks/soak.py [--minutes M] [--every-seconds S] [-- EXTRA fer-edge run ARGS]

Builds a clip of M minutes of media (default 60) by repeating the bundled sample, whose face
leaves for 3.5 s and comes back every 10 s, so that a `video.record = "faces"` run (post-roll
1 s) opens and closes an event every loop. It runs `fer-edge run` as the service would (record faces, short segments so
retention and file rotation work too) at full speed, reads VmRSS every S seconds (Linux), and
prints RSS at the start, at the end and the growth between the first and last quarters.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

from fer_edge.sources import decode_all

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample_faces.mp4"


def long_clip(path: Path, minutes: float) -> int:
    frames, fps = decode_all(SAMPLE)
    height, width = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    total = round(minutes * 60 * fps)
    for i in range(total):
        out.write(frames[i % len(frames)])
    out.release()
    return total


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0, help="media minutes of the clip (default 60)")
    p.add_argument("--every-seconds", type=float, default=1.0, help="RSS sampling period")
    p.add_argument("--json", action="store_true")
    p.add_argument("extra", nargs="*", help="more `fer-edge run` arguments, after --")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "long.avi"
        frames = long_clip(clip, args.minutes)
        cmd = [sys.executable, "-m", "fer_edge", "run", "--source", str(clip), "--output", str(Path(tmp) / "out"),
               "--record", "faces", "--set", "video.post_roll_seconds=1", "--segment-seconds", "30",
               "--set", "video.max_files=20",
               "--set", "csv.max_bytes=200k", "--set", "csv.max_files=5", "--json", *args.extra]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        samples: list[tuple[float, float]] = []
        started = time.monotonic()
        while proc.poll() is None:
            rss = rss_mb(proc.pid)
            if rss is not None:
                samples.append((time.monotonic() - started, rss))
            time.sleep(args.every_seconds)
        out, err = proc.communicate()
        if proc.returncode != 0:
            print(err[-2000:], file=sys.stderr)
            return proc.returncode
        summary = json.loads(out)
    quarter = max(1, len(samples) // 4)
    first = sorted(r for _, r in samples[:quarter])[quarter // 2]
    last = sorted(r for _, r in samples[-quarter:])[quarter // 2]
    result = {"media_minutes": args.minutes, "frames": frames, "seconds": summary["seconds"],
              "analysed": summary["analysed"], "video_events": summary["video_events"],
              "video_frames": summary["video_frames"], "csv_rows": summary["csv_rows"],
              "rss_mb_median_first_quarter": first, "rss_mb_median_last_quarter": last,
              "rss_mb_max": max(r for _, r in samples), "samples": len(samples)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:28} {value:.1f}" if isinstance(value, float) else f"{key:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
