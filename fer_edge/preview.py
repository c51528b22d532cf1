"""A live view for a headless device: the annotated feed as MJPEG and the latest results as JSON.

Why: a Pi on a wall has no screen, and aiming its camera by copying video files off it is slow.
The main loop hands over a reference to a frame it has already drawn, and only while someone is
watching; JPEG encoding runs on the server's threads, at most `preview.fps` times a second.

Routes: `/` (a page with the stream), `/stream.mjpg`, `/snapshot.jpg`, `/status` (JSON),
`/report.png` (the picture of the day, fer_edge/report.py, from the run's CSV log).
No authentication: bind it to a trusted network, or to 127.0.0.1 and use an SSH tunnel.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Sequence

import cv2
import numpy as np

from .config import parse_listen
from .errors import ConfigError, FerEdgeError
from .labels import canonical
from .records import FaceResult

log = logging.getLogger(__name__)

BOUNDARY = "fer-edge-frame"
PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>fer-edge</title></head>
<body style="margin:0;background:#111;color:#ddd;font-family:sans-serif">
<img src="/stream.mjpg" style="max-width:100%;display:block;margin:auto" alt="live view">
<p style="text-align:center"><a style="color:#8cf" href="/status">/status</a> (JSON)
 &middot; <a style="color:#8cf" href="/report.png">/report.png</a> (the day)</p></body></html>
"""


class PreviewServer:
    """Serves the latest published frame and results; `watched` says whether frames are wanted."""

    def __init__(self, listen: str, fps: float, labels: Sequence[str], source_name: str,
                 stats: Callable[[], dict] | None = None, jpeg_quality: int = 80):
        host, port = parse_listen(listen)
        self.period = 1.0 / fps
        self.labels = tuple(canonical(name) for name in labels)
        self.source_name = source_name
        self.stats = stats  # the run's counters, for /status; set once the pipeline exists
        self.report = None  # a report.CachedReport of the run's CSV folder, for /report.png; None: no CSV log
        self._jpeg_params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._frame_seq = 0
        self._faces: list[FaceResult] = []
        self._analysed_at: float | None = None
        self._watchers = 0
        self._encode_lock = threading.Lock()
        self._encoded: tuple[int, bytes] = (0, b"")  # (frame seq, JPEG) of the last encoded frame
        self._closing = False
        try:
            self._server = ThreadingHTTPServer((host, port), self._handler_class())
        except OSError as exc:
            raise ConfigError(f"preview.listen {listen}: cannot listen there ({exc.strerror or exc}); choose "
                              "another port, or leave preview.listen empty to turn the preview off") from None
        self._server.daemon_threads = True
        bound_host, self.port = self._server.server_address[:2]
        # every interface: name the machine, as a browser elsewhere on the network must reach it
        shown_host = socket.gethostname() if bound_host in ("0.0.0.0", "::") else bound_host
        self.url = f"http://{shown_host}:{self.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="fer-preview", daemon=True)
        self._thread.start()

    # --- the main loop's side: cheap, no encoding ---------------------------------------------
    @property
    def watched(self) -> bool:
        """Whether anyone wants frames now; the loop skips drawing for the preview otherwise."""
        return self._watchers > 0

    def publish_frame(self, image: np.ndarray) -> None:
        """The drawn frame; it must not be modified afterwards (the loop draws on each frame once)."""
        with self._cond:
            self._frame = image
            self._frame_seq += 1
            self._cond.notify_all()

    def publish_results(self, wall_time: float, faces: list[FaceResult]) -> None:
        self._analysed_at, self._faces = wall_time, faces  # read whole by the server threads

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2.0)

    # --- the server's side ----------------------------------------------------------------------
    def _next_frame(self, after_seq: int, timeout: float) -> tuple[np.ndarray | None, int]:
        """A frame newer than `after_seq`, waiting up to `timeout` s; (None, seq) if none came."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame_seq > after_seq or self._closing, timeout)
            if self._frame_seq > after_seq and not self._closing:
                return self._frame, self._frame_seq
            return None, after_seq

    def _jpeg(self, image: np.ndarray, seq: int) -> bytes:
        """The frame as JPEG, encoded once however many viewers want it."""
        with self._encode_lock:
            if self._encoded[0] != seq:
                ok, data = cv2.imencode(".jpg", image, self._jpeg_params)
                if not ok:
                    raise RuntimeError("JPEG encoding failed")
                self._encoded = (seq, data.tobytes())
            return self._encoded[1]

    def status(self) -> dict:
        faces, analysed_at = self._faces, self._analysed_at
        return {
            "source": self.source_name,
            "analysed_at": (datetime.fromtimestamp(analysed_at).astimezone().isoformat(timespec="milliseconds")
                            if analysed_at is not None else None),
            "faces": [{"face_id": f.face_id, "emotion": f.label, "confidence": round(f.confidence, 4),
                       "box": list(f.box),
                       "probabilities": {name: round(float(p), 4) for name, p in zip(self.labels, f.probabilities)}}
                      for f in faces],
            "stats": self.stats() if self.stats is not None else {},
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "fer-edge"

            def log_message(self, fmt: str, *args) -> None:  # not on stderr: the journal is for the loop
                log.debug("preview %s: " + fmt, self.client_address[0], *args)

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                path = self.path.split("?", 1)[0]
                if path == "/":
                    self._send(200, PAGE, "text/html; charset=utf-8")
                elif path == "/status":
                    self._send(200, json.dumps(server.status()).encode(), "application/json")
                elif path == "/snapshot.jpg":
                    self._snapshot()
                elif path == "/stream.mjpg":
                    self._stream()
                elif path == "/report.png":
                    self._report()
                else:
                    self._send(404, b"not found: try / /stream.mjpg /snapshot.jpg /status /report.png\n",
                               "text/plain")

            def _report(self) -> None:
                if server.report is None:
                    self._send(404, b"no CSV log in this run (csv.enabled = false): nothing to draw\n", "text/plain")
                    return
                try:
                    body = server.report.png()  # drawn here, on this request's thread
                except FerEdgeError as exc:  # e.g. a CSV in the folder that is not ours
                    self._send(500, f"{exc}\n".encode(), "text/plain")
                    return
                self._send(200, body, "image/png")

            def _watch(self, delta: int) -> None:
                with server._cond:
                    server._watchers += delta

            def _snapshot(self) -> None:
                self._watch(+1)
                try:
                    image, seq = server._next_frame(server._frame_seq, timeout=3.0)
                finally:
                    self._watch(-1)
                if image is None:
                    self._send(503, b"no frame within 3 s: is the source delivering?\n", "text/plain")
                else:
                    self._send(200, server._jpeg(image, seq), "image/jpeg")

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self._watch(+1)
                seq, next_at = 0, 0.0
                try:
                    while not server._closing:
                        wait = next_at - time.monotonic()
                        if wait > 0:
                            time.sleep(wait)  # at most preview.fps frames a second
                        image, seq = server._next_frame(seq, timeout=1.0)
                        if image is None:
                            continue
                        next_at = time.monotonic() + server.period
                        data = server._jpeg(image, seq)
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(data)}\r\n\r\n".encode() + data + b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the viewer went away
                finally:
                    self._watch(-1)

        return Handler
