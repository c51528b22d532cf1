"""What faults cost: real faults against a real `fer-edge run`, and what each one lost.

    python benchmarks/faults.py [--kills N] [--seed S] [--only disk,camera] [--json]

Disk and process faults: runs the bundled sample (10 s at 15 fps, `--realtime`, so media time is
wall time) and injects:

- `kill -9` at a random moment (N runs, fixed seed), then a restart into the same folder;
- a full disk during a run: a real tmpfs (needs root) filled by another file for 2.5 s, then freed;
- a restart on a disk left full: old segments and another program's file take every byte.

Camera faults (camera_faults.py, needs ../shared): a USB camera unplugged for 5 s and 30 s, hung,
and absent at start; a Pi camera hung.

For each: frames lost (video that does not decode or was never written), rows lost (rows the
daemon produced that are not on disk; for a kill, the span since the last row on disk, an upper
bound), time to recover (until rows are logged again) and the exit code. Prints a table.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample_faces.mp4"
FPS = 15.0
MiB = 1024 ** 2


def cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fer_edge", "run", "--source", str(SAMPLE), *args]


def rows(folder: Path) -> list[dict]:
    out = []
    for path in sorted(folder.glob("*.csv")) if folder.exists() else []:
        with path.open(newline="", errors="replace") as fh:
            out += list(csv.DictReader(fh))
    return out


def wall(row: dict) -> float:
    return datetime.fromisoformat(row["timestamp"]).timestamp()


def frames_in(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def wait_rows(folder: Path, more_than: int, proc: subprocess.Popen, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while len(rows(folder)) <= more_than:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"fer-edge exited {proc.returncode} before logging a row")
        time.sleep(0.02)
    return time.monotonic()


def kill_runs(count: int, seed: int, work: Path) -> list[dict]:
    out, rng, results = work / "kill", random.Random(seed), []
    for i in range(count):
        before = len(rows(out / "csv"))
        segments = set((out / "video").iterdir()) if (out / "video").exists() else set()
        spawned = time.monotonic()
        proc = subprocess.Popen(cmd("--realtime", "--output", str(out)), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        logging_at = wait_rows(out / "csv", before, proc)
        if i:  # this start recovered the previous kill's partial: how long until rows flowed again
            results[-1]["recover_s"] = round(logging_at - spawned, 2)
        time.sleep(rng.uniform(0.5, 6.0))
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.time()
        proc.wait()
        new = rows(out / "csv")[before:]
        start = wall(new[0]) - int(new[0]["frame"]) / FPS
        results.append({"fault": "kill -9 mid-run", "ran_s": killed - start, "row_gap_s": killed - wall(new[-1]),
                        "rows_dropped": 0, "exit": proc.returncode, "segments_before": segments})
    spawned = time.monotonic()
    last = subprocess.Popen(cmd("--output", str(out), "--max-frames", "30"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results[-1]["recover_s"] = round(wait_rows(out / "csv", len(rows(out / "csv")), last) - spawned, 2)
    last.wait()
    # each killed run's segment, recovered by the next start: what it holds against how long it ran
    finals = sorted((out / "video").iterdir())
    for result, segment in zip(results, finals):
        recorded = frames_in(segment)
        ran_frames = round(result.pop("ran_s") * FPS)
        result.pop("segments_before")
        result.update(frames_lost=max(0, ran_frames - recorded), video_lost_s=round(max(0, ran_frames - recorded) / FPS, 2),
                      rows_lost_s=round(result.pop("row_gap_s"), 2))
    return results


def mount_tmpfs(point: Path, size: int) -> str:
    point.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                          capture_output=True, text=True)
    return done.stderr.strip() if done.returncode else ""


def fill(directory: Path) -> Path:
    filler = directory / "someone-elses.bin"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return filler


def disk_full_run(work: Path) -> dict:
    fs = work / "fs1"
    why = mount_tmpfs(fs, 6 * MiB)
    if why:
        return {"fault": "disk full mid-run", "skipped": why}
    try:
        out = fs / "out"
        proc = subprocess.Popen(cmd("--realtime", "--output", str(out), "--json", "--segment-seconds", "3",
                                    "--set", "video.min_free_bytes=0", "--set", "csv.min_free_bytes=0"),
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        wait_rows(out / "csv", 2, proc)
        filler = fill(fs)
        stuck = len(rows(out / "csv"))
        time.sleep(2.5)
        filler.unlink()
        freed = time.monotonic()
        recovered = wait_rows(out / "csv", stuck, proc)
        summary = json.loads(proc.communicate(timeout=120)[0])
        return {"fault": "disk full mid-run (2.5 s)", "frames_lost": summary["video_frames_lost"],
                "video_lost_s": round(summary["video_frames_lost"] / FPS, 2),
                "rows_dropped": summary["csv_rows_dropped"], "rows_lost_s": 0.0 if not summary["csv_rows_dropped"] else None,
                "recover_s": round(recovered - freed, 2), "exit": proc.returncode}
    finally:
        subprocess.run(["umount", "-l", str(fs)], capture_output=True)


def full_disk_restart(work: Path) -> dict:
    fs = work / "fs2"
    why = mount_tmpfs(fs, 8 * MiB)
    if why:
        return {"fault": "restart on a full disk", "skipped": why}
    try:
        out = fs / "out"
        (out / "video").mkdir(parents=True)
        for i in range(5):
            shutil.copyfile(SAMPLE, out / "video" / f"fer-2020010{i + 1}T000000Z-0000.mp4")
        fill(out)
        spawned = time.monotonic()
        proc = subprocess.Popen(cmd("--output", str(out), "--json", "--set", "video.min_free_bytes=2M",
                                    "--set", "csv.min_free_bytes=512K"),
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        logging_at = wait_rows(out / "csv", 0, proc)
        summary = json.loads(proc.communicate(timeout=120)[0])
        return {"fault": "restart on a full disk", "frames_lost": summary["video_frames_lost"],
                "video_lost_s": round(summary["video_frames_lost"] / FPS, 2), "rows_dropped": summary["csv_rows_dropped"],
                "rows_lost_s": 0.0, "recover_s": round(logging_at - spawned, 2), "exit": proc.returncode}
    finally:
        subprocess.run(["umount", "-l", str(fs)], capture_output=True)


def table(results: list[dict]) -> str:
    head = "| fault | frames lost | rows dropped | video lost (s) | rows lost (s) | time to recover (s) | exit code |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['fault']} | skipped: {r['skipped']} | | | | | |")
            continue
        lost = "-" if r.get("rows_lost_s") is None else f"{r['rows_lost_s']:.2f}"
        exit_code = "-" if r["exit"] is None else "-9 (SIGKILL)" if r["exit"] == -signal.SIGKILL else str(r["exit"])
        cell = {k: "-" if r[k] is None else r[k] for k in ("frames_lost", "rows_dropped")}  # not counted
        lines.append(f"| {r['fault']} | {cell['frames_lost']} | {cell['rows_dropped']} | {r['video_lost_s']:.2f} | "
                     f"{lost} | {r.get('recover_s', '-')} | {exit_code} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=3, help="kill -9 runs (default 3)")
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--only", default="disk,camera", metavar="KINDS", help="disk, camera or both (default)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    kinds = set(args.only.split(","))
    if not kinds or kinds - {"disk", "camera"}:
        p.error(f"--only {args.only!r}: give disk, camera or disk,camera")
    with tempfile.TemporaryDirectory(prefix="fer-faults-") as tmp:
        work = Path(tmp)
        results = []
        if "disk" in kinds:
            results += kill_runs(args.kills, args.seed, work) + [disk_full_run(work), full_disk_restart(work)]
        if "camera" in kinds:
            from camera_faults import camera_rows  # this folder: the script's own
            results += camera_rows(work)
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
