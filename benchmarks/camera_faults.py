"""The camera half of benchmarks/faults.py: a camera unplugged, hung or absent at start, against
the real pipeline. Run it through `python benchmarks/faults.py --only camera`.

There is no camera here, so the camera is a fake with the real API's shape and real frames from
`../shared/data/videos/all_emo.mp4` (a face in nearly every frame), at 15 fps: FakeVideoCapture
(tests/fakes/usb_camera.py) for a USB camera, run in-process with the real pipeline, model, CSV
and video; the fake picamera2 module (tests/fakes/picamera2) in a real `fer-edge run` process for
the Pi camera. Settings are the defaults (source.stall_seconds 10, retry_max_seconds 60).

Each row has faults.py's columns: frames lost (frames the camera delivered that were neither
processed nor counted as replaced by a newer one), rows dropped (analysed faces missing from the
CSV), video/rows lost (s): from the moment the camera was back, or could have been (for a hang:
at once), until frames were analysed again: the backoff's or the stall check's cost, as while a
camera is away there is no picture to lose; time to recover: from the same moment to the first
CSV row; and the exit code (None: it kept running).
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout, and its fakes
from fakes.usb_camera import FakeUsbCamera  # noqa: E402

from fer_edge.config import load_config  # noqa: E402
from fer_edge.detector import FaceDetector  # noqa: E402
from fer_edge.pipeline import Pipeline  # noqa: E402
from fer_edge.resources import DEFAULT_MODEL, find_resource  # noqa: E402
from fer_edge.runtime import EmotionClassifier  # noqa: E402
from fer_edge.sinks import open_file_sinks  # noqa: E402
from fer_edge.sources import open_source  # noqa: E402

VIDEO = ROOT.parent / "shared" / "data" / "videos" / "all_emo.mp4"
FPS = 15.0
RESTART_SEC = 10  # systemd/fer-edge.service: the wait before systemd restarts an exited fer-edge


def csv_times(folder: Path) -> list[float]:
    out = []
    for path in sorted(folder.glob("*.csv")) if folder.exists() else []:
        with path.open(newline="") as fh:
            out += [datetime.fromisoformat(r["timestamp"]).timestamp() for r in csv.DictReader(fh)]
    return out


def wait_until(condition, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.02)


def usb_fault(kind: str, seconds: float, work: Path) -> dict:
    """kind: unplug (for `seconds`), hang (read blocks), absent (at start, plugged in after `seconds`)."""
    out = work / f"usb-{kind}-{seconds:g}"
    cfg = load_config(overrides={"source.kind": "v4l2", "source.path": "0", "source.fps": FPS,
                                 "source.width": 640, "source.height": 360,
                                 "video.min_free_bytes": 0, "csv.min_free_bytes": 0})  # disk faults are not measured here
    camera = FakeUsbCamera(VIDEO, FPS)
    if kind == "absent":
        camera.unplug()
    source = open_source(cfg.source, cfg.detection.width, log=lambda _: None, video_capture=camera.capture)
    classifier = EmotionClassifier(find_resource(DEFAULT_MODEL))
    budget, video, csv_log = open_file_sinks(cfg, out, source, classifier.labels)
    faces, seen = [0], []  # faces analysed; capture times of the frames analysed

    def count(frame, detected) -> None:
        faces[0] += len(detected)
        seen.append(frame.wall_time)
    pipeline = Pipeline(cfg, source, classifier, FaceDetector(cfg.detection), video=video, csv=csv_log,
                        disk=budget, on_analysis=count)
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    if kind != "absent":
        wait_until(lambda: faces[0] >= 20)
    if kind == "unplug":
        camera.unplug()
        time.sleep(seconds)
        camera.plug()
        ended = after = time.time()
    elif kind == "hang":
        camera.hang()
        ended = time.time()  # a fresh open would work at once: the rest is the stall check's cost
        after = ended + 0.2  # a frame already on its way when read() hung still arrives
        wait_until(lambda: camera.opens > 1)
    else:
        time.sleep(seconds)
        camera.plug()
        ended = after = time.time()
    wait_until(lambda: [t for t in seen if t > after] and [t for t in csv_times(out / "csv") if t > after])
    first_frame = min(t for t in seen if t > after)
    first_row = min(t for t in csv_times(out / "csv") if t > after)
    camera.let_go()  # the abandoned read, if any, returns its frame
    camera.unplug()  # no frame after this one, so each delivered frame can be accounted for
    time.sleep(1.0)
    pipeline.stop_event.set()
    runner.join()
    st = pipeline.stats
    rows = len(csv_times(out / "csv"))
    name = {"unplug": f"USB camera unplugged {seconds:g} s", "hang": "USB camera hung (read() blocks)",
            "absent": f"USB camera absent at start, plugged in after {seconds:g} s"}[kind]
    lost = round(max(0.0, first_frame - ended), 2)
    return {"fault": name, "frames_lost": len(camera.delivered) - st.frames - source.dropped,
            "rows_dropped": faces[0] - rows, "video_lost_s": lost, "rows_lost_s": lost,
            "recover_s": round(first_row - ended, 2), "exit": None}


def pi_camera_hang(work: Path) -> dict:
    """The fake picamera2 hangs (capture_request and stop() block, as after "Camera frontend has
    timed out"): fer-edge must exit for systemd to restart it. Recovery = time to exit + RestartSec
    (added, not waited here) + the restarted process's time to its first row."""
    out, state = work / "pi-hang", work / "pi-state"
    state.write_text("present")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "fakes"), str(ROOT)]),
           "FAKE_PICAMERA2_VIDEO": str(VIDEO), "FAKE_PICAMERA2_STATE": str(state)}
    command = [sys.executable, "-m", "fer_edge", "run", "--source", "picamera2", "--output", str(out),
               "--set", "source.width=640", "--set", "source.height=360", "--set", f"source.fps={FPS:g}"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: len(csv_times(out / "csv")) >= 20)
    state.write_text("hang")
    hung = time.time()
    code = proc.wait(timeout=120)
    exited = time.time()
    last_row_gap = hung - max(csv_times(out / "csv"))  # rows up to the hang reached the disk before the exit
    state.write_text("present")
    before = len(csv_times(out / "csv"))
    restarted = time.time()
    again = subprocess.Popen(command + ["--max-frames", "60"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: len(csv_times(out / "csv")) > before)
    first_row = sorted(csv_times(out / "csv"))[before]
    again.wait(timeout=120)
    to_first_row = first_row - restarted
    # frames and rows inside the process are not counted from outside it: "-" in the table
    return {"fault": "Pi camera hung (picamera2 blocks)", "frames_lost": None, "rows_dropped": None,
            "video_lost_s": round(exited - hung + RESTART_SEC + to_first_row, 2),
            "rows_lost_s": round(exited - hung + RESTART_SEC + to_first_row, 2),
            "recover_s": round(exited - hung + RESTART_SEC + to_first_row, 2), "exit": code,
            "note": f"exit after {exited - hung:.1f} s, + RestartSec {RESTART_SEC} s, + {to_first_row:.1f} s "
                    f"to the restarted process's first row; the last row on disk was {last_row_gap:.2f} s "
                    "before the hang"}


def camera_rows(work: Path) -> list[dict]:
    return [usb_fault("unplug", 5, work), usb_fault("unplug", 30, work), usb_fault("hang", 0, work),
            usb_fault("absent", 5, work), pi_camera_hang(work)]
