"""Frame sources: a video file, a V4L2/USB webcam, or picamera2 — one small interface.

Live sources run their capture on a thread that keeps only the newest frame and counts the
ones it replaced, so analysis never works on stale frames (Frigate's 'skipped' counter).
"""
from __future__ import annotations

import glob
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from .config import SourceConfig
from .errors import DataError, InputMissing, Unavailable


@dataclass
class Frame:
    image: np.ndarray  # BGR, full resolution: recorded and cropped for classification
    index: int  # position in the stream; gaps are frames the source dropped
    timestamp: float  # media time in seconds (file: index / fps; live: since start)
    wall_time: float  # time.time() at capture
    grey_small: Optional[np.ndarray] = None  # detection-size grey from the source (picamera2 lores Y)


class Source:
    name: str = "source"
    fps: float = 30.0
    frame_size: tuple[int, int] = (0, 0)  # width, height
    frame_count: int = 0  # 0 for live sources
    dropped: int = 0

    def read(self) -> Frame | None:  # None: end of stream
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
        self._cap = cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            raise DataError(f"video file {path} could not be opened by OpenCV; is it a video (mp4, avi, mkv)?")
        self.name = path.name
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 1 <= fps <= 240 else 25.0
        self.frame_size = (int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self.frame_count = max(0, int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)))
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
            return Frame(image, self._index, self._index / self.fps, time.time())
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
        return Frame(image, self._index, self._index / self.fps, time.time())

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


class LatestFrameReader:
    """Runs `grab` on its own thread; `read` returns the newest frame, never one twice."""

    def __init__(self, grab: Callable[[], Optional[tuple[np.ndarray, Optional[np.ndarray]]]], name: str,
                 stall_seconds: float = 10.0):
        self._grab = grab
        self._cond = threading.Condition()
        self._latest: Optional[tuple[np.ndarray, Optional[np.ndarray], float, float]] = None
        self._captured = 0
        self._delivered = -1
        self._running = True
        self._ended = False
        self._error: Optional[BaseException] = None
        self._t0 = time.monotonic()
        self.stall_seconds = stall_seconds
        self.dropped = 0
        self._thread = threading.Thread(target=self._loop, name=f"capture-{name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while self._running:
                got = self._grab()
                if got is None:
                    break
                with self._cond:
                    if self._latest is not None and self._delivered < self._captured - 1:
                        self.dropped += 1  # the previous frame was never read: replaced
                    self._latest = (got[0], got[1], time.monotonic() - self._t0, time.time())
                    self._captured += 1
                    self._cond.notify()
        except BaseException as exc:  # surfaced to the reader
            self._error = exc
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify()

    def read(self) -> Frame | None:
        with self._cond:
            deadline = time.monotonic() + self.stall_seconds
            while self._captured - 1 <= self._delivered and not self._ended:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Unavailable(f"camera delivered no frame for {self.stall_seconds:.0f} s; "
                                      "check the cable/USB connection (the service restarts on this)")
                self._cond.wait(left)
            if self._error is not None:
                raise Unavailable(f"camera capture failed: {self._error}")
            if self._captured - 1 <= self._delivered:
                return None
            self._delivered = self._captured - 1
            image, grey, ts, wall = self._latest  # type: ignore[misc]
            return Frame(image, self._delivered, ts, wall, grey)

    def stop(self) -> None:
        self._running = False
        self._thread.join(timeout=2.0)


class LiveSource(Source):
    """A camera: `_grab` runs on a LatestFrameReader thread; `read` takes the newest frame."""

    _reader: LatestFrameReader

    def _grab(self) -> Optional[tuple[np.ndarray, Optional[np.ndarray]]]:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def read(self) -> Frame | None:
        frame = self._reader.read()
        self.dropped = self._reader.dropped
        return frame

    def close(self) -> None:
        self._reader.stop()
        self._release()


def _v4l2_device(path: str) -> int | str:
    if path == "":
        return 0
    if path.isdigit():
        return int(path)
    return path


class V4L2Source(LiveSource):
    """USB/V4L2 webcam by index or /dev/videoN, asking for MJPG at the configured size and rate."""

    def __init__(self, cfg: SourceConfig):
        device = _v4l2_device(cfg.path)
        if isinstance(device, str) and not os.path.exists(device):
            raise Unavailable(f"camera {device} does not exist; list cameras with `ls /dev/video*` "
                              "or `fer-edge doctor`")
        backend = cv2.CAP_V4L2 if hasattr(cv2, "CAP_V4L2") else cv2.CAP_ANY
        self._cap = cv2.VideoCapture(device, backend)
        if not self._cap.isOpened():
            raise Unavailable(f"camera {device} could not be opened; check that it is plugged in, that this "
                              "user is in the 'video' group, and that no other program is using it")
        # MJPG first: at 640x480 and above most UVC cameras only reach full rate compressed.
        self._cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        self._cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self.name = f"v4l2:{device}"
        self.frame_size = (int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 1 <= fps <= 240 else cfg.fps
        ok, first = self._cap.read()
        if not ok:
            self._cap.release()
            raise Unavailable(f"camera {device} opened but returned no frame; is it a capture device "
                              "(some /dev/video nodes are metadata-only)?")
        self.frame_size = (first.shape[1], first.shape[0])
        self._reader = LatestFrameReader(self._grab, self.name)

    def _grab(self):
        ok, image = self._cap.read()
        return (image, None) if ok else None

    def _release(self) -> None:
        self._cap.release()


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


class Picamera2Source(LiveSource):
    """Raspberry Pi camera: a main RGB888 stream to record, and a lores YUV420 stream whose Y plane
    is the grey detection frame at no conversion cost (the Pi 4 ISP only gives YUV420 for lores)."""

    def __init__(self, cfg: SourceConfig, detection_width: int):
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise Unavailable("picamera2 is not installed; on Raspberry Pi OS run `sudo apt install "
                              "python3-picamera2` and create the venv with --system-site-packages") from None
        if not picamera2_cameras():
            raise Unavailable("picamera2 sees no camera; check the ribbon cable and `rpicam-hello --list-cameras`")
        width, height = cfg.width, cfg.height
        lores_w = min(detection_width, width) & ~1
        lores_h = round(height * lores_w / width) & ~1
        self._cam = Picamera2()
        config = self._cam.create_video_configuration(
            main={"size": (width, height), "format": "RGB888"},  # RGB888 is BGR in memory: OpenCV order
            lores={"size": (lores_w, lores_h), "format": "YUV420"},
            controls={"FrameRate": float(cfg.fps)},
            buffer_count=4)
        self._cam.align_configuration(config)
        self._cam.configure(config)
        self._lores_size = tuple(config["lores"]["size"])
        self.frame_size = tuple(config["main"]["size"])
        self.fps = float(cfg.fps)
        self.name = "picamera2"
        self._cam.start()
        self._reader = LatestFrameReader(self._grab, self.name)

    def _grab(self):
        request = self._cam.capture_request()
        try:
            image = request.make_array("main")
            lores = request.make_array("lores")
        finally:
            request.release()
        w, h = self._lores_size
        return image, lores[:h, :w]  # Y plane: the first h rows of the I420 buffer

    def _release(self) -> None:
        self._cam.stop()
        self._cam.close()


def v4l2_devices() -> list[str]:
    return sorted(glob.glob("/dev/video*"), key=lambda p: int(p[10:]) if p[10:].isdigit() else 999)


def open_source(cfg: SourceConfig, detection_width: int) -> Source:
    kind = cfg.kind
    if kind == "auto" and cfg.path and not cfg.path.startswith("/dev/") and not cfg.path.isdigit():
        kind = "file"  # `--source video.mp4`
    if kind == "file":
        return VideoFileSource(cfg.path, realtime=cfg.realtime)
    if kind == "picamera2":
        return Picamera2Source(cfg, detection_width)
    if kind == "v4l2":
        return V4L2Source(cfg)
    # auto: the Pi camera if libcamera sees one, else the first V4L2 device that gives frames
    if not cfg.path and picamera2_cameras():
        return Picamera2Source(cfg, detection_width)
    if cfg.path:
        return V4L2Source(cfg)
    for device in v4l2_devices():
        try:
            return V4L2Source(SourceConfig(kind="v4l2", path=device, width=cfg.width, height=cfg.height, fps=cfg.fps))
        except Unavailable:
            continue
    raise Unavailable("no camera found (no picamera2 camera, no working /dev/video*); connect one, "
                      "or pass --source VIDEO_FILE")
