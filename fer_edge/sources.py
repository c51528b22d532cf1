"""Frame sources: a video file, a V4L2/USB webcam, or picamera2 — one small interface.

A camera is a LiveSource: captured on a thread that keeps only the newest frame and counts the
ones it replaced, so analysis never works on stale frames (Frigate's 'skipped' counter), and
supervised: lost, failing or hung, it is reopened with backoff while the loop goes on.
"""
from __future__ import annotations

import glob
import importlib.util
import math
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import cv2
import numpy as np

from .config import SourceConfig
from .errors import CameraAbsent, CameraHung, DataError, InputMissing, Unavailable


@dataclass
class Frame:
    image: np.ndarray  # BGR, full resolution: recorded and cropped for classification
    index: int  # position in the stream; gaps are frames the source dropped
    timestamp: float  # media time in seconds (file: index / fps; live: since start)
    wall_time: float  # epoch seconds the picture shows: time.time() at capture; a file: its start + timestamp
    grey_small: Optional[np.ndarray] = None  # detection-size grey from the source (picamera2 lores Y)


class Source:
    name: str = "source"
    fps: float = 30.0
    frame_size: tuple[int, int] = (0, 0)  # width, height
    frame_count: int = 0  # 0 for live sources
    dropped: int = 0
    live = False  # a file ends; a live source (a camera) only pauses
    problem: Optional[str] = None  # why there is no picture just now (a live source), else None

    def read(self) -> Frame | None:
        """The next frame; None at the end of a file, or (live) when no frame came just now."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoFileSource(Source):
    """Every frame, as fast as processing goes; `realtime` paces at the file's fps like a camera,
    grabbing (without converting) the frames that processing fell behind on.

    Not paced, frames are decoded on a thread `prefetch` frames ahead: OpenCV releases the GIL
    while it decodes, so decoding the next frame overlaps detection on a second core.
    """

    def __init__(self, path: str | Path, realtime: bool = False, prefetch: int = 4):
        path = Path(path)
        if not path.is_file():
            raise InputMissing(f"video file {path} not found; check source.path / --source")
        if cv2.haveImageReader(str(path)):  # by its content: FFmpeg would play a JPEG as a one-frame video
            raise DataError(f"{path} is a still image, not a video; for the faces and emotions in an image "
                            f"run `fer-edge detect {path}`")
        self._cap = cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            raise DataError(f"video file {path} could not be opened by OpenCV; is it a video (mp4, avi, mkv)?")
        self.name = path.name
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 1 <= fps <= 240 else 25.0
        self.frame_size = (int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self.frame_count = max(0, int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        self.start_time, self.start_basis = media_start(path, self.frame_count / self.fps)
        self.realtime = realtime
        self.ended = False  # the stream ran out (not stopped early)
        self._index = -1
        self._start = 0.0
        self._queue: Optional[queue.Queue] = None
        if not realtime and prefetch > 0:
            self._queue = queue.Queue(maxsize=prefetch)
            self._stopping = threading.Event()
            self._error: Optional[BaseException] = None
            self._ended = False
            self._thread = threading.Thread(target=self._decode, name=f"decode-{self.name}", daemon=True)
            self._thread.start()

    def _decode(self) -> None:
        """Decoder thread: frames into the queue in order, then None (end of file, or an error)."""
        try:
            while not self._stopping.is_set():
                ok, image = self._cap.read()
                if not ok:
                    break
                self._put(image)
        except BaseException as exc:  # surfaced by read()
            self._error = exc
        finally:
            self._put(None)

    def _put(self, item: Optional[np.ndarray]) -> None:
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.2)  # type: ignore[union-attr]
                return
            except queue.Full:
                continue

    def read(self) -> Frame | None:
        if self._queue is not None:
            if self._ended:
                return None
            image = self._queue.get()
            if image is None:
                self._ended = self.ended = True
                if self._error is not None:
                    raise DataError(f"decoding {self.name} failed: {self._error}")
                return None
            self._index += 1
            return self._frame(image)
        if self.realtime:
            now = time.monotonic()
            if self._index < 0:
                self._start = now
            due = int((now - self._start) * self.fps)  # the frame a camera would be showing now
            while self._index + 1 < due:
                if not self._cap.grab():
                    self.ended = True
                    return None
                self._index += 1
                self.dropped += 1
            wait = self._start + (self._index + 1) / self.fps - now
            if wait > 0:
                time.sleep(wait)
        ok, image = self._cap.read()
        if not ok:
            self.ended = True
            return None
        self._index += 1
        return self._frame(image)

    def _frame(self, image: np.ndarray) -> Frame:
        """A frame at its place in the file: its position, and the time it shows (the log's): the
        file's start plus the position, or with `realtime`, played as a camera would, now."""
        position = self._index / self.fps
        return Frame(image, self._index, position, time.time() if self.realtime else self.start_time + position)

    def shortfall(self) -> str:
        """After the stream ended: why the file looks short (fewer frames than its header
        announces: a file cut by a crash or a full disk), or "" when it is whole."""
        got, expected = self._index + 1, self.frame_count
        # containers estimate their count from the duration: allow a frame or two, or 1 %
        if not self.ended or expected <= 0 or got >= expected - max(2, expected // 100):
            return ""
        return (f"video file {self.name} ended after {got} of the {expected} frames its header announces "
                f"({got / self.fps:.1f} of {expected / self.fps:.1f} s): the file is short (cut by a crash or "
                "a full disk?); the rows logged cover only what was there")

    def close(self) -> None:
        if self._queue is not None:
            self._stopping.set()
            self._thread.join()  # before release: the thread may be inside read()
        self._cap.release()


def media_start(path: Path, duration: float) -> tuple[float, str]:
    """When a video file began (epoch seconds), and how that is known: its container's
    creation_time where PyAV can read one, else its modification time minus its duration (a
    recorder writes a file until it stops, so that is when it started)."""
    try:
        import av  # the video extra; OpenCV does not expose the container's metadata

        with av.open(str(path)) as container:
            created = container.metadata.get("creation_time", "")
        when = datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None
        if when is not None and when.year > 1970:  # muxers that know no time write 0 (1904 or 1970)
            if when.tzinfo is None:
                when = when.astimezone()
            return when.timestamp(), "its creation_time"
    except Exception:  # no PyAV, a container it cannot read, a date it cannot parse
        pass
    return path.stat().st_mtime - duration, "its modification time minus its duration"


def decode_all(path: str | Path) -> tuple[list[np.ndarray], float]:
    """Every frame of a video file in memory, and its fps (for tests and benchmarks, not the daemon)."""
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    return frames, fps


class Camera:
    """One open camera. `grab` returns (BGR image, detection-size grey or None), or None when the
    camera gave no frame (unplugged, a failed read); it may also raise, or never return (a hang)."""

    name = "camera"
    fps = 30.0
    frame_size: tuple[int, int] = (0, 0)
    # True where a hung call leaves the device unusable until the process exits (picamera2)
    hang_needs_restart = False

    def grab(self) -> Optional[tuple[np.ndarray, Optional[np.ndarray]]]:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError


def _log(message: str) -> None:
    print(f"fer-edge: {message}", file=sys.stderr, flush=True)


def _local_time(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time).astimezone().isoformat(timespec="seconds")


class LiveSource(Source):
    """A camera, supervised, so that months unattended survive a loose cable or an unplugged webcam.

    Capture runs on its own thread, which keeps only the newest frame and counts the ones it
    replaced (Frigate's 'skipped'). A camera that fails, gives no frame, or is absent (at start
    too, with `wait`) is reopened with backoff, 1 s doubling to `retry_max_seconds`, for as long as
    it takes. Meanwhile `read` returns None every `poll_seconds`, so the loop still feeds the
    watchdog, and `problem` says what is wrong. No frame is ever made up.

    A camera call that does not return within `stall_seconds` is a hang. Python cannot interrupt
    it: the stuck thread is abandoned (it releases its camera if the call ever returns) and a new
    one reopens the camera; where the device stays unusable until the process exits (picamera2
    after "Camera frontend has timed out"), `read` raises CameraHung instead, so systemd restarts us.
    """

    live = True
    MAX_ABANDONED = 3  # hung threads still stuck: past this, a fresh process is the only cure

    def __init__(self, open_camera: Callable[[], Camera], *, name: str, frame_size: tuple[int, int], fps: float,
                 wait: bool = True, stall_seconds: float = 10.0, retry_max_seconds: float = 60.0,
                 hang_needs_restart: bool = False, poll_seconds: float = 0.5, log: Callable[[str], None] = _log):
        self._open_camera = open_camera
        self.stall_seconds, self.retry_max_seconds = stall_seconds, retry_max_seconds
        self.poll_seconds = poll_seconds
        self._log = log
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._latest: Optional[tuple[np.ndarray, Optional[np.ndarray], float, float]] = None
        self._captured = 0
        self._delivered = -1
        self._t0 = time.monotonic()
        self._generation = 0  # a new capture thread after a hang takes the next one
        self._busy_since: Optional[float] = None  # monotonic start of the capture thread's camera call
        self._busy_with = ""
        self._hang_needs_restart = hang_needs_restart
        self._abandoned: list[threading.Thread] = []
        self._lost_since: Optional[float] = None  # wall time the picture went away
        self._lost_reason = ""
        self._next_try = 0.0  # monotonic
        self._last_log = -math.inf
        self.reconnects = 0
        self.name, self.frame_size, self.fps = name, frame_size, fps
        camera: Optional[Camera] = None
        delay = 1.0
        try:
            camera = open_camera()
        except CameraAbsent as exc:
            if not wait:
                raise
            delay = self._lose(str(exc), delay, start=f"no camera yet ({exc}); waiting for one "
                                                      "(source.wait = false or --no-wait exits instead)")
        else:
            self.name, self.frame_size, self.fps = camera.name, camera.frame_size, camera.fps
            self._hang_needs_restart = camera.hang_needs_restart
        self._thread = self._start_capture(camera, delay)

    # -- the main loop's side ------------------------------------------------------------------
    def read(self) -> Frame | None:
        """The newest frame not read yet; None when none came within poll_seconds."""
        with self._cond:
            if self._captured - 1 <= self._delivered:
                self._cond.wait(self.poll_seconds)
            if self._captured - 1 > self._delivered:
                self._delivered = self._captured - 1
                image, grey, ts, wall = self._latest  # type: ignore[misc]
                return Frame(image, self._delivered, ts, wall, grey)
        busy = self._busy_since
        if busy is not None and time.monotonic() - busy > self.stall_seconds:
            self._hung(self._busy_with)
        return None

    @property
    def problem(self) -> Optional[str]:
        """While there is no picture: since when, why, and when the next try is; else None."""
        since = self._lost_since
        if since is None:
            return None
        wait = self._next_try - time.monotonic()
        return (f"camera lost since {_local_time(since)} ({self._lost_reason}), "
                + (f"next try in {math.ceil(wait)} s" if wait > 0 else "trying now"))

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._generation += 1  # any capture thread, abandoned or not, ends after its current call
        busy = self._busy_since
        hung = busy is not None and time.monotonic() - busy > self.stall_seconds
        # a thread stuck in a camera call is left behind, never waited for
        self._thread.join(timeout=0.0 if hung else 2.0)

    def _hung(self, doing: str) -> None:
        message = f"camera {self.name} hung ({doing} took over {self.stall_seconds:g} s)"
        self._abandoned = [t for t in self._abandoned if t.is_alive()] + [self._thread]
        if self._hang_needs_restart or len(self._abandoned) > self.MAX_ABANDONED:
            raise CameraHung(f"{message}; it cannot be used again by this process, so fer-edge exits "
                             "and systemd restarts it; check the camera cable if this repeats")
        with self._cond:
            self._generation += 1
            self._busy_since = None
        self._thread = self._start_capture(None, self._lose(f"hung {doing}", 1.0))

    # -- the capture thread --------------------------------------------------------------------
    def _start_capture(self, camera: Optional[Camera], delay: float) -> threading.Thread:
        thread = threading.Thread(target=self._capture, args=(self._generation, camera, delay),
                                  name=f"capture-{self.name}", daemon=True)
        thread.start()
        return thread

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self._stop.is_set()

    def _call(self, generation: int, doing: str, call: Callable[[], Any]) -> Any:
        """A camera call, timed so `read` can tell a hang; only the current thread's calls count."""
        if generation == self._generation:
            self._busy_with, self._busy_since = doing, time.monotonic()
        try:
            return call()
        finally:
            if generation == self._generation:
                self._busy_since = None

    def _capture(self, generation: int, camera: Optional[Camera], delay: float) -> None:
        """Open, read until the camera fails, release, wait, open again; ends when stopped, or when
        abandoned after a hang (a newer generation took over). `delay`: the wait after the next failure."""
        while self._current(generation):
            if camera is None:
                if self._lost_since is not None:  # absent, failed or hung before: wait as scheduled
                    if self._stop.wait(max(0.0, self._next_try - time.monotonic())):
                        break
                try:
                    camera = self._call(generation, "opening it", self._open_camera)
                except Exception as exc:  # CameraAbsent while unplugged; anything else is worth retrying too
                    if not self._current(generation):
                        break  # abandoned: the state is the newer thread's now
                    delay = self._lose(str(exc) if isinstance(exc, CameraAbsent) else f"opening failed: {exc}",
                                       delay)
                    continue
                if not self._current(generation):
                    break
                self._connected(camera)
            opened = time.monotonic()
            reason = self._read_until_failure(generation, camera)
            try:
                self._call(generation, "releasing it", camera.release)
            except Exception:
                pass  # it is going away anyway
            camera = None
            if reason is None or not self._current(generation):
                return  # stopped, or abandoned while it hung
            if time.monotonic() - opened >= self.retry_max_seconds:
                delay = 1.0  # it worked for a while: start the backoff again (a flapping one keeps backing off)
            delay = self._lose(reason, delay)
        if camera is not None:
            camera.release()

    def _read_until_failure(self, generation: int, camera: Camera) -> Optional[str]:
        """Frames into _latest until the camera fails (returns why) or the thread is done (None)."""
        width, height = self.frame_size
        while self._current(generation):
            try:
                got = self._call(generation, "reading a frame", camera.grab)
            except Exception as exc:
                return f"read failed: {exc}"
            if got is None:
                return "it returned no frame"
            if not self._current(generation):
                return None
            image, grey = got
            if image.shape[1] != width or image.shape[0] != height:  # the video was opened at frame_size
                image = cv2.resize(image, (width, height))
            with self._cond:
                if self._latest is not None and self._delivered < self._captured - 1:
                    self.dropped += 1  # the previous frame was never read: replaced
                self._latest = (image, grey, time.monotonic() - self._t0, time.time())
                self._captured += 1
                self._cond.notify()
        return None

    def _lose(self, reason: str, delay: float, start: str = "") -> float:
        """Note the picture as gone (once) and schedule the next try; returns the delay after that."""
        now = time.monotonic()
        with self._cond:
            first = self._lost_since is None
            if first:
                self._lost_since = time.time()
            self._lost_reason = reason
            self._next_try = now + delay
        if start or first:
            self._log(start or f"camera {self.name} lost ({reason}); reopening it, next try in {delay:g} s")
            self._last_log = now
        elif delay < self.retry_max_seconds or now - self._last_log >= 3600:  # then once an hour
            self._log(f"camera {self.name} still away ({reason}); next try in {delay:g} s")
            self._last_log = now
        return min(2 * delay, self.retry_max_seconds)

    def _connected(self, camera: Camera) -> None:
        with self._cond:
            since, self._lost_since = self._lost_since, None
            self._hang_needs_restart = camera.hang_needs_restart
        if since is not None:
            self.reconnects += 1
            size = camera.frame_size
            scaled = (f"; its {size[0]}x{size[1]} frames are scaled to {self.frame_size[0]}x{self.frame_size[1]}"
                      if tuple(size) != tuple(self.frame_size) else "")
            self._log(f"camera {camera.name} back after {time.time() - since:.0f} s without a picture{scaled}")


def _v4l2_device(path: str) -> int | str:
    if path == "":
        return 0
    if path.isdigit():
        return int(path)
    return path


class V4L2Camera(Camera):
    """USB/V4L2 webcam by index or /dev/videoN, asking for MJPG at the configured size and rate.

    `video_capture` is cv2.VideoCapture (tests hand in a fake of the same shape: no camera on CI)."""

    def __init__(self, cfg: SourceConfig, video_capture: Callable[..., Any] = cv2.VideoCapture):
        device = _v4l2_device(cfg.path)
        if isinstance(device, str) and not os.path.exists(device):
            raise CameraAbsent(f"camera {device} does not exist; list cameras with `ls /dev/video*` "
                               "or `fer-edge doctor`")
        backend = cv2.CAP_V4L2 if hasattr(cv2, "CAP_V4L2") else cv2.CAP_ANY
        self._cap = video_capture(device, backend)
        if not self._cap.isOpened():
            raise CameraAbsent(f"camera {device} could not be opened; check that it is plugged in, that this "
                               "user is in the 'video' group, and that no other program is using it")
        # MJPG first: at 640x480 and above most UVC cameras only reach full rate compressed.
        self._cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        self._cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self.name = f"v4l2:{device}"
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 1 <= fps <= 240 else cfg.fps
        ok, first = self._cap.read()
        if not ok:
            self._cap.release()
            raise CameraAbsent(f"camera {device} opened but returned no frame; is it a capture device "
                               "(some /dev/video nodes are metadata-only)?")
        self.frame_size = (first.shape[1], first.shape[0])
        self._first: Optional[np.ndarray] = first  # the probe frame is the first one handed out

    def grab(self):
        if self._first is not None:
            image, self._first = self._first, None
            return image, None
        ok, image = self._cap.read()
        return (image, None) if ok else None

    def release(self) -> None:
        self._cap.release()


def picamera2_installed() -> bool:
    return importlib.util.find_spec("picamera2") is not None


def picamera2_cameras() -> list:
    """Cameras libcamera sees, or [] where picamera2 is not installed."""
    try:
        from picamera2 import Picamera2
    except ImportError:
        return []
    try:
        return list(Picamera2.global_camera_info())
    except Exception:
        return []


class Picamera2Camera(Camera):
    """Raspberry Pi camera: a main RGB888 stream to record, and a lores YUV420 stream whose Y plane
    is the grey detection frame at no conversion cost (the Pi 4 ISP only gives YUV420 for lores)."""

    hang_needs_restart = True  # after "Camera frontend has timed out" even stop() may block forever

    def __init__(self, cfg: SourceConfig, detection_width: int):
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise Unavailable("picamera2 is not installed; on Raspberry Pi OS run `sudo apt install "
                              "python3-picamera2` and create the venv with --system-site-packages") from None
        if not picamera2_cameras():
            raise CameraAbsent("picamera2 sees no camera; check the ribbon cable and `rpicam-hello --list-cameras`")
        width, height = cfg.width, cfg.height
        lores_w = min(detection_width, width) & ~1
        lores_h = round(height * lores_w / width) & ~1
        try:
            self._cam = Picamera2()
        except Exception as exc:  # busy (another process, or one that crashed holding it), or just gone
            raise CameraAbsent(f"picamera2 camera could not be opened ({exc}); is another program using it?") from None
        try:
            config = self._cam.create_video_configuration(
                main={"size": (width, height), "format": "RGB888"},  # RGB888 is BGR in memory: OpenCV order
                lores={"size": (lores_w, lores_h), "format": "YUV420"},
                controls={"FrameRate": float(cfg.fps)},
                buffer_count=4)
            self._cam.align_configuration(config)
            self._cam.configure(config)
            self._cam.start()
        except Exception as exc:  # e.g. busy: another process has it
            self._cam.close()
            raise CameraAbsent(f"picamera2 camera could not be started ({exc}); is another program using it?") from None
        self._lores_size = tuple(config["lores"]["size"])
        self.frame_size = tuple(config["main"]["size"])
        self.fps = float(cfg.fps)
        self.name = "picamera2"

    def grab(self):
        request = self._cam.capture_request()
        try:
            image = request.make_array("main")
            lores = request.make_array("lores")
        finally:
            request.release()
        w, h = self._lores_size
        return image, lores[:h, :w]  # Y plane: the first h rows of the I420 buffer

    def release(self) -> None:
        try:
            self._cam.stop()
        finally:
            self._cam.close()


def v4l2_devices() -> list[str]:
    return sorted(glob.glob("/dev/video*"), key=lambda p: int(p[10:]) if p[10:].isdigit() else 999)


def _first_camera(cfg: SourceConfig, detection_width: int, video_capture: Callable[..., Any]) -> Camera:
    """auto: the Pi camera if libcamera sees one, else the first V4L2 device that gives frames."""
    if picamera2_cameras():
        return Picamera2Camera(cfg, detection_width)
    for device in v4l2_devices():
        try:
            return V4L2Camera(replace(cfg, kind="v4l2", path=device), video_capture)
        except CameraAbsent:
            continue
    raise CameraAbsent("no camera found (no picamera2 camera, no working /dev/video*); connect one, "
                       "or pass --source VIDEO_FILE")


def open_source(cfg: SourceConfig, detection_width: int, *, log: Callable[[str], None] = _log,
                video_capture: Callable[..., Any] = cv2.VideoCapture) -> Source:
    """A video file, or a supervised camera (see LiveSource). `video_capture`: cv2.VideoCapture, or
    a fake of its shape in tests."""
    kind = cfg.kind
    if kind == "auto" and cfg.path and not cfg.path.startswith("/dev/") and not cfg.path.isdigit():
        kind = "file"  # `--source video.mp4`
    if kind == "file":
        return VideoFileSource(cfg.path, realtime=cfg.realtime)
    open_camera: Callable[[], Camera]
    if kind == "picamera2":
        open_camera, name = (lambda: Picamera2Camera(cfg, detection_width)), "picamera2"
    elif kind == "v4l2" or cfg.path:
        open_camera, name = (lambda: V4L2Camera(cfg, video_capture)), f"v4l2:{_v4l2_device(cfg.path)}"
    else:
        open_camera, name = (lambda: _first_camera(cfg, detection_width, video_capture)), "camera"
    # Until a camera is seen, recording is set up for the size asked for.
    return LiveSource(open_camera, name=name, frame_size=(cfg.width, cfg.height), fps=cfg.fps, wait=cfg.wait,
                      stall_seconds=cfg.stall_seconds, retry_max_seconds=cfg.retry_max_seconds,
                      hang_needs_restart=kind == "picamera2" or (kind == "auto" and picamera2_installed()),
                      log=log)
