"""A FAKE picamera2 for tests: libcamera and a camera do not exist on CI machines.

It keeps the real API's shape (Picamera2.global_camera_info, create_video_configuration,
align_configuration, configure, start, capture_request → CompletedRequest.make_array/release,
stop, close) and the real buffer layouts: "RGB888" main frames are BGR-ordered HxWx3 arrays
and "YUV420" lores frames are I420 buffers of shape (h*3/2, w). The pixels come from a real
video file (FAKE_PICAMERA2_VIDEO), so the pipeline sees real faces.

Faults, for tests of a camera that goes and comes back: FAKE_PICAMERA2_STATE names a file whose
content is read at every call: "present" (or no file), "absent" (libcamera lists no camera and a
running capture fails, as after the camera went away), or "hang" (capture_request, and stop() after
it, block for ever, as picamera2 does after "Camera frontend has timed out").
"""
from __future__ import annotations

import os
import threading
import time

import cv2

CAMERAS = [{"Model": "fake-imx708", "Location": 2, "Rotation": 0, "Id": "/base/fake", "Num": 0}]
# Record what the code under test asked for, so tests can check the configuration it chose.
configured: list = []


def _state() -> str:
    path = os.environ.get("FAKE_PICAMERA2_STATE")
    try:
        return open(path).read().strip() if path else "present"
    except FileNotFoundError:
        return "present"


def _hang() -> None:
    threading.Event().wait()  # never set: the call does not return


class CompletedRequest:
    def __init__(self, arrays: dict):
        self._arrays = arrays
        self.released = False

    def make_array(self, name: str):
        return self._arrays[name]

    def get_metadata(self) -> dict:
        return {"SensorTimestamp": 0}

    def release(self) -> None:
        self.released = True


class Picamera2:
    @staticmethod
    def global_camera_info() -> list:
        return [] if os.environ.get("FAKE_PICAMERA2_NONE") or _state() == "absent" else list(CAMERAS)

    def __init__(self, camera_num: int = 0):
        self._cap = cv2.VideoCapture(os.environ["FAKE_PICAMERA2_VIDEO"])
        self._config = None
        self.started = False
        self._hung = False
        self._due = 0.0  # monotonic time of the next frame

    def create_video_configuration(self, main=None, lores=None, controls=None, buffer_count=6, **_):
        return {"main": dict(main or {}), "lores": dict(lores) if lores else None,
                "controls": dict(controls or {}), "buffer_count": buffer_count}

    def align_configuration(self, config) -> None:
        for stream in ("main", "lores"):
            if config.get(stream):
                w, h = config[stream]["size"]
                config[stream]["size"] = (w - w % 32 if w % 32 else w, h - h % 2)

    def configure(self, config) -> None:
        if config["lores"] and config["lores"]["format"] != "YUV420":
            raise RuntimeError("lores must be YUV420 on Pi 4")  # as libcamera refuses on the VC4 ISP
        self._config = config
        configured.append(config)

    def start(self) -> None:
        self.started = True

    def capture_request(self) -> CompletedRequest:
        state = _state()
        if state == "hang":
            self._hung = True
            _hang()
        if state == "absent":
            raise RuntimeError("Failed to queue buffer: No such device")
        # a frame every 1/FrameRate seconds, as a sensor delivers them
        period = 1.0 / float(self._config["controls"].get("FrameRate", 30.0))
        self._due = max(self._due + period, time.monotonic())
        time.sleep(max(0.0, self._due - time.monotonic()))
        ok, frame = self._cap.read()
        if not ok:  # loop the clip, like a camera that never ends
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._cap.read()
        main_w, main_h = self._config["main"]["size"]
        main = cv2.resize(frame, (main_w, main_h))
        arrays = {"main": main}
        if self._config["lores"]:
            lw, lh = self._config["lores"]["size"]
            arrays["lores"] = cv2.cvtColor(cv2.resize(frame, (lw, lh)), cv2.COLOR_BGR2YUV_I420)
        return CompletedRequest(arrays)

    def stop(self) -> None:
        if self._hung:
            _hang()
        self.started = False

    def close(self) -> None:
        self._cap.release()
