"""Cameras come back: a camera that is unplugged, hangs or is absent at start never ends the run.

There is no camera on CI, so the camera itself is a FAKE, and only the camera: each fake keeps the
real API's shape (cv2.VideoCapture: tests/fakes/usb_camera.py; picamera2: tests/fakes/picamera2) and
hands out real video frames with real faces. Everything behind it is real: the pipeline, Haar, the TFLite model,
the CSV and video sinks, and sd_notify over a real unix datagram socket standing in for systemd's
$NOTIFY_SOCKET. The one timing bound checked is the one systemd enforces: the watchdog pings never
stop for longer than the watchdog interval (WATCHDOG_USEC).
"""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import pytest

from conftest import REPO_ROOT as ROOT, SHARED_DIR, frame_count, requires_shared
from fakes.usb_camera import FakeUsbCamera
from fer_edge.config import load_config
from fer_edge.detector import FaceDetector
from fer_edge.errors import CameraAbsent, CameraHung
from fer_edge.pipeline import Pipeline
from fer_edge.resources import DEFAULT_MODEL, find_resource
from fer_edge.runtime import EmotionClassifier
from fer_edge.sinks import open_file_sinks
from fer_edge.sources import LiveSource, open_source
from fer_edge.systemd import Notifier

pytestmark = requires_shared
VIDEO = SHARED_DIR / "data" / "videos" / "all_emo.mp4"  # a face in nearly every frame
WATCHDOG_USEC = 3_000_000  # systemd's timeout; fer-edge pings at half of it
DEADLINE = 90.0  # for a condition to come about on a loaded machine; not a timing claim


# -- systemd's side: the notify socket -----------------------------------------------------------
class NotifySocket:
    """A real unix datagram socket as $NOTIFY_SOCKET; every message with its arrival time."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._running = True
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while self._running:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._running = False
        self._thread.join()
        self.sock.close()

    def statuses(self) -> list[str]:
        return [line[7:] for _, m in self.messages for line in m.splitlines() if line.startswith("STATUS=")]

    def longest_watchdog_gap(self) -> float:
        """Seconds of the longest stretch from READY to STOPPING without a WATCHDOG ping."""
        times = [t for t, m in self.messages if "READY=1" in m.splitlines() or "WATCHDOG=1" in m.splitlines()
                 or "STOPPING=1" in m.splitlines()]
        assert len(times) >= 3, self.messages
        return max(b - a for a, b in zip(times, times[1:]))


@pytest.fixture
def notify(tmp_path: Path):
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.close()


def wait_for(what: str, condition: Callable[[], bool], thread: threading.Thread | None = None) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if thread is not None and not thread.is_alive():
            pytest.fail(f"the run ended while waiting for: {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE:g} s: {what}")
        time.sleep(0.05)


def csv_rows(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*.csv")):
        with path.open(newline="") as fh:
            rows += list(csv.DictReader(fh))
    return rows


def row_time(row: dict) -> float:
    return datetime.fromisoformat(row["timestamp"]).timestamp()


def capture_threads() -> int:
    return sum(t.name.startswith("capture-") for t in threading.enumerate())


class InProcessRun:
    """`fer-edge run` at the Python API level, on a fake USB camera, with the real rest."""

    def __init__(self, tmp_path: Path, camera: FakeUsbCamera, notify: NotifySocket):
        self.out = tmp_path / "out"
        self.cfg = load_config(overrides={"source.kind": "v4l2", "source.path": "0", "source.fps": 15,
                                          "source.width": 640, "source.height": 360,
                                          "source.stall_seconds": 2, "source.retry_max_seconds": 2,
                                          # the disk budget stays out of it, however full this disk is
                                          "video.min_free_bytes": 0, "csv.min_free_bytes": 0})
        self.logs: list[str] = []
        self.source = open_source(self.cfg.source, self.cfg.detection.width, log=self.logs.append,
                                  video_capture=camera.capture)
        classifier = EmotionClassifier(find_resource(DEFAULT_MODEL))
        budget, self.video, self.csv = open_file_sinks(self.cfg, self.out, self.source, classifier.labels)
        self.analysed: list[tuple[float, int]] = []  # (frame capture time, faces found)
        notifier = Notifier({"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
        self.pipeline = Pipeline(self.cfg, self.source, classifier, FaceDetector(self.cfg.detection),
                                 video=self.video, csv=self.csv, notifier=notifier, disk=budget,
                                 on_analysis=lambda frame, faces: self.analysed.append((frame.wall_time, len(faces))))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.pipeline.run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def faces_since(self, t: float) -> int:
        return sum(n for when, n in list(self.analysed) if when >= t)

    def stop(self) -> None:
        self.pipeline.stop_event.set()
        self.thread.join(timeout=DEADLINE)
        assert not self.thread.is_alive(), "the run did not stop on request"
        assert self.error is None, repr(self.error)


def test_usb_camera_unplugged_hung_and_back(tmp_path: Path, notify: NotifySocket) -> None:
    camera = FakeUsbCamera(VIDEO)
    run = InProcessRun(tmp_path, camera, notify)
    assert isinstance(run.source, LiveSource) and run.source.problem is None
    run.thread.start()
    try:
        wait_for("faces analysed", lambda: run.faces_since(0) >= 10, run.thread)

        camera.unplug()  # read() now returns False: no longer taken as the end of the stream
        wait_for("the loss noticed", lambda: run.source.problem is not None, run.thread)
        last_before = camera.delivered[-1]
        wait_for("two failed reopens while unplugged", lambda: camera.failed_opens >= 2, run.thread)
        wait_for("the open video segment finished while the camera is away",
                 lambda: [p for p in (run.out / "video").glob("*.mp4") if ".partial" not in p.name], run.thread)
        assert run.thread.is_alive()
        camera.plug()
        wait_for("a frame after the camera came back", lambda: camera.delivered[-1] > last_before, run.thread)
        first_after = min(t for t in camera.delivered if t > last_before)
        wait_for("faces analysed after the camera came back", lambda: run.faces_since(first_after) >= 10, run.thread)

        camera.hang()  # the open capture's read() blocks: the stall check abandons it and reopens
        hung_at = time.time()
        wait_for("faces analysed after the hang", lambda: run.faces_since(hung_at + 0.5) >= 10, run.thread)
        # The stuck read returns at last, with an error: the abandoned thread releases its capture
        # and ends, without touching the state of the one that took over.
        camera.let_go(fail=True)
        wait_for("the abandoned thread gone", lambda: capture_threads() == 1, run.thread)
        assert run.source.problem is None
        seen = len(run.analysed)
        wait_for("analysis going on", lambda: len(run.analysed) > seen + 5, run.thread)
    finally:
        camera.let_go()
        run.stop()

    assert run.source.reconnects == 2
    statuses = notify.statuses()
    assert any(s.startswith("camera lost since ") and "next try in" in s for s in statuses), statuses
    assert any("lost (it returned no frame)" in line for line in run.logs), run.logs
    assert any("lost (hung reading a frame)" in line for line in run.logs), run.logs
    assert sum("back after" in line for line in run.logs) == 2, run.logs
    assert notify.longest_watchdog_gap() <= WATCHDOG_USEC / 1e6

    # No row was made up while there was no picture, and rows resumed after it came back.
    rows = csv_rows(run.out / "csv")
    times = [row_time(r) for r in rows]
    # (CSV times are to the millisecond)
    assert not [t for t in times if last_before + 0.5 < t < first_after - 0.002], "rows while the camera was unplugged"
    assert sum(t >= first_after for t in times) >= 10
    # The loss ended the open segment: every file under a final name decodes, none is left partial.
    segments = sorted((run.out / "video").glob("*.mp4"))
    assert len(segments) >= 3 and not [p for p in segments if ".partial" in p.name]
    assert all(frame_count(p) > 0 for p in segments)


def test_usb_camera_absent_at_start_is_waited_for(tmp_path: Path, notify: NotifySocket) -> None:
    camera = FakeUsbCamera(VIDEO)
    camera.unplug()
    run = InProcessRun(tmp_path, camera, notify)
    assert run.source.problem is not None and "camera 0 could not be opened" in run.source.problem
    run.thread.start()
    try:
        wait_for("retries while absent", lambda: camera.failed_opens >= 3, run.thread)
        assert run.analysed == []
        camera.plug()
        wait_for("faces analysed once plugged in", lambda: run.faces_since(0) >= 10, run.thread)
    finally:
        run.stop()
    assert notify.statuses()[0].startswith("camera lost since "), notify.statuses()
    assert "no camera yet" in run.logs[0] and "source.wait = false" in run.logs[0]
    assert notify.longest_watchdog_gap() <= WATCHDOG_USEC / 1e6


def test_usb_camera_that_hangs_every_time_ends_the_run_for_a_restart(tmp_path: Path, notify: NotifySocket) -> None:
    """Hung threads cannot be ended: after a few, a fresh process is the remaining cure (exit 69,
    files closed first; the CLI then exits without waiting for the stuck threads)."""
    camera = FakeUsbCamera(VIDEO)
    run = InProcessRun(tmp_path, camera, notify)
    run.thread.start()
    try:
        wait_for("faces analysed", lambda: run.faces_since(0) >= 10, run.thread)
        camera.hang(forever=True)
        run.thread.join(timeout=DEADLINE)
        assert not run.thread.is_alive(), "the run did not end"
    finally:
        camera.let_go()
    assert isinstance(run.error, CameraHung) and run.error.exit_code == 69, repr(run.error)
    assert "cannot be used again by this process" in str(run.error)
    assert camera.opens == 1 + LiveSource.MAX_ABANDONED  # reopened after each of the first hangs
    assert len(csv_rows(run.out / "csv")) >= 10  # the CSV was closed, its rows on disk
    assert notify.longest_watchdog_gap() <= WATCHDOG_USEC / 1e6


def test_no_wait_keeps_the_old_exit() -> None:
    camera = FakeUsbCamera(VIDEO)
    camera.unplug()
    cfg = load_config(overrides={"source.kind": "v4l2", "source.path": "0", "source.wait": False})
    with pytest.raises(CameraAbsent, match="camera 0 could not be opened") as info:
        open_source(cfg.source, cfg.detection.width, video_capture=camera.capture)
    assert info.value.exit_code == 69 and camera.opens == 1


# -- picamera2 in a real `fer-edge run` process ----------------------------------------------------
def test_pi_camera_absent_present_lost_back_then_hung_exits_for_a_restart(tmp_path: Path, notify: NotifySocket) -> None:
    """The Pi camera through the fake picamera2 module (tests/fakes, found on PYTHONPATH the way
    apt's python3-picamera2 is found on a Pi). A hung picamera2 cannot be used again by the
    process, so fer-edge exits 69 at once, with its files closed, and systemd restarts it."""
    state = tmp_path / "camera-state"
    state.write_text("absent")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "fakes"), str(ROOT)]),
           "FAKE_PICAMERA2_VIDEO": str(VIDEO), "FAKE_PICAMERA2_STATE": str(state),
           "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    command = [sys.executable, "-m", "fer_edge", "run", "--source", "picamera2", "--output", str(out),
               "--set", "source.width=640", "--set", "source.height=360", "--set", "source.fps=15",
               "--set", "source.stall_seconds=2", "--set", "source.retry_max_seconds=2"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("READY while the camera is absent", lambda: any("READY=1" in m for _, m in notify.messages))
        wait_for("watchdog pings while absent", lambda: sum("WATCHDOG=1" in m for _, m in notify.messages) >= 3)
        assert proc.poll() is None
        state.write_text("present")
        wait_for("rows logged once the camera is there", lambda: len(csv_rows(out / "csv")) >= 10)
        lost = lambda: sum(s.startswith("camera lost since ") for s in notify.statuses())  # noqa: E731
        before = lost()
        state.write_text("absent")  # capture_request fails, and libcamera lists no camera
        wait_for("the loss in STATUS", lambda: lost() > before)
        rows = len(csv_rows(out / "csv"))
        state.write_text("present")
        wait_for("rows logged once the camera is back", lambda: len(csv_rows(out / "csv")) >= rows + 10)
        state.write_text("hang")
        stdout, stderr = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 69, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("fer-edge: error:")]
    assert len(errors) == 1 and "hung" in errors[0] and "systemd restarts it" in errors[0], stderr
    assert "Traceback" not in stderr
    assert "no camera yet" in stderr and stderr.count("back after") == 2 and "lost (read failed" in stderr, stderr
    assert notify.statuses()[0].startswith("camera lost since ")
    assert notify.longest_watchdog_gap() <= WATCHDOG_USEC / 1e6
    # closed before exiting: the rows are on disk, the segment is finished and decodes
    assert len(csv_rows(out / "csv")) >= 10
    segments = list((out / "video").glob("*.mp4"))
    assert segments and not [p for p in segments if ".partial" in p.name]
    assert sum(frame_count(p) for p in segments) > 0

    # What systemd does next: start it again. The camera is back, so the run goes on.
    state.write_text("present")
    again = subprocess.run(command + ["--max-frames", "30", "--json"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=DEADLINE)
    assert again.returncode == 0, again.stderr
    assert '"faces": ' in again.stdout and '"faces": 0,' not in again.stdout
