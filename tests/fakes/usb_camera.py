"""A FAKE USB camera for tests and benchmarks: there is no camera on CI.

FakeVideoCapture keeps cv2.VideoCapture's shape (constructor (index, apiPreference), isOpened, set,
get, read -> (ok, image), grab, release) and OpenCV's V4L2 behaviour: an unplugged device does not
open, and read() returns (False, None) once it is gone; a hang blocks inside read(), where a real
driver would. The pixels come from a real video file, paced at the camera's frame rate.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2


class FakeUsbCamera:
    """The device: plugged in or not. `capture` is what fer-edge calls instead of cv2.VideoCapture;
    it counts opens, so a test can see the retries. `hang` blocks the reads of the captures open
    now (a fresh open works, as after a driver glitch; with `forever`, fresh ones hang too) until
    `let_go`, which lets the stuck reads return a frame, or fail."""

    def __init__(self, video: Path, fps: float = 15.0):
        self.video, self.fps = video, fps
        self.plugged = True
        self.opens = self.failed_opens = 0
        self.delivered: list[float] = []  # time.time() of every frame handed out
        self.lock = threading.Lock()
        self._captures: list["FakeVideoCapture"] = []
        self._unhung = threading.Event()
        self.stuck_read_fails = False
        self._hang_new = False  # hang(forever=True): captures opened later hang too

    def capture(self, index, api_preference=None) -> "FakeVideoCapture":
        with self.lock:
            self.opens += 1
            self.failed_opens += not self.plugged
            capture = FakeVideoCapture(self, index, api_preference)
            capture.hung = self._hang_new
            self._captures.append(capture)
            return capture

    def unplug(self) -> None:
        self.plugged = False

    def plug(self) -> None:
        self.plugged = True

    def hang(self, forever: bool = False) -> None:
        self._unhung.clear()
        with self.lock:
            self._hang_new = forever
            for capture in self._captures:
                capture.hung = True

    def let_go(self, fail: bool = False) -> None:
        self.stuck_read_fails = fail
        self._hang_new = False
        self._unhung.set()


class FakeVideoCapture:
    """cv2.VideoCapture's shape, on a FakeUsbCamera (see the module's docstring)."""

    def __init__(self, camera: FakeUsbCamera, index, api_preference=None):
        self._camera = camera
        self._opened = camera.plugged
        self._cap = cv2.VideoCapture(str(camera.video)) if self._opened else None
        self._props: dict[int, float] = {}
        self._due = 0.0
        self.hung = False

    def isOpened(self) -> bool:
        return self._opened

    def set(self, prop: int, value: float) -> bool:
        self._props[prop] = value
        return self._opened

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_FPS:
            return self._camera.fps
        return self._cap.get(prop) if self._cap is not None else 0.0

    def read(self):
        camera = self._camera
        if self.hung:
            camera._unhung.wait()
            self.hung = False
            if camera.stuck_read_fails:
                return False, None
        if not (self._opened and camera.plugged):
            return False, None
        self._due = max(self._due + 1.0 / camera.fps, time.monotonic())  # paced like a sensor
        time.sleep(max(0.0, self._due - time.monotonic()))
        ok, image = self._cap.read()
        if not ok:  # loop the clip: a camera does not end
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._cap.read()
        camera.delivered.append(time.time())
        return ok, image

    def grab(self) -> bool:
        return self.read()[0]

    def release(self) -> None:
        self._opened = False
        if self._cap is not None:
            self._cap.release()
        with self._camera.lock:
            if self in self._camera._captures:
                self._camera._captures.remove(self)
