"""A live view for a headless device: the annotated feed as MJPEG and the latest results as JSON.

Why: a Pi on a wall has no screen, and aiming its camera by copying video files off it is slow.
The main loop hands over a reference to a frame it has already drawn, and only while someone is
watching; JPEG encoding runs on the server's threads, at most `preview.fps` times a second.

Routes: `/` (a page with the stream), `/stream.mjpg`, `/snapshot.jpg`, `/status` (JSON),
`/report.png` (the picture of the day, fer_edge/report.py, from the run's CSV log).
With `preview.password_file`, every request, whatever its route or method, needs that password
(HTTP Basic, any user name), checked before it is routed; `preview.cert_file`/`key_file` add TLS.
Without a password, bind it to 127.0.0.1 and use an SSH tunnel, or to a trusted network.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import socket
import ssl
import sys
import threading
import time
from collections import OrderedDict
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional, Sequence

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


REALM = "fer-edge"


def is_loopback(host: str) -> bool:
    """Whether `host` (from preview.listen) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def read_password(path: str) -> bytes:
    """The password in preview.password_file (its first line), as UTF-8 bytes."""
    try:
        with open(path, encoding="utf-8") as fh:
            password = fh.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"preview.password_file {path} cannot be read ({getattr(exc, 'strerror', None) or exc}); "
                          "put the password on its first line, readable by the service, or leave "
                          "preview.password_file empty") from None
    if not password:
        raise ConfigError(f"preview.password_file {path} is empty; put the password on its first line")
    return password.encode()


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for preview.cert_file / key_file (PEM); a passphrase is never asked for."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file, password=lambda: b"")  # not a prompt on the journal
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise ConfigError(f"preview.cert_file {cert_file} or key_file {key_file} cannot be read "
                          f"({exc.strerror}); check both paths and that the service may read them") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"preview.cert_file {cert_file} and key_file {key_file} are not a PEM certificate and "
                          f"its unencrypted key ({getattr(exc, 'reason', None) or exc})") from None
    return context


class FailedLogins:
    """Wrong passwords per client address, so guessing is slow while others are not held up.

    After FREE_TRIES wrong passwords (typos), an address must wait 1 s, then 2, 4 ... up to
    MAX_WAIT s between tries; one that tries sooner is refused (429) without its password being
    checked, so no thread sleeps and parallel connections gain nothing. A right password clears
    the count; an address is forgotten after FORGET_SECONDS, and at most MAX_ADDRESSES are kept.
    """

    FREE_TRIES = 5
    MAX_WAIT = 60.0
    FORGET_SECONDS = 900.0
    MAX_ADDRESSES = 4096

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address: (count, last)

    def wait(self, address: str) -> float:
        """Seconds before `address` may try again; 0: now."""
        with self._lock:
            count, last = self._failures.get(address, (0, 0.0))
            if not count:
                return 0.0
            now = self._clock()
            if now - last > self.FORGET_SECONDS:
                del self._failures[address]
                return 0.0
            return max(0.0, last + self.delay(count) - now)

    def failed(self, address: str) -> int:
        """Count a wrong password; returns the address's count."""
        with self._lock:
            count = self._failures.pop(address, (0, 0.0))[0] + 1
            self._failures[address] = (count, self._clock())  # last in order: the newest
            while len(self._failures) > self.MAX_ADDRESSES:
                self._failures.popitem(last=False)
            return count

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

    @classmethod
    def delay(cls, count: int) -> float:
        return 0.0 if count < cls.FREE_TRIES else min(cls.MAX_WAIT, 2.0 ** (count - cls.FREE_TRIES))


def _basic_password(header: str) -> Optional[bytes]:
    """The password of an `Authorization: Basic` header (the user name is not checked); None if absent."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except ValueError:
        return b""  # garbled credentials: a wrong password
    return decoded.partition(b":")[2]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    tls: Optional[ssl.SSLContext] = None

    def get_request(self):
        sock, address = super().get_request()
        if self.tls is not None:  # the handshake happens on the request's thread, not in accept()
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # a viewer gone, a failed TLS handshake, plain HTTP to HTTPS
            log.debug("preview %s: %s", client_address[0], error)
        else:
            log.exception("preview %s: request failed", client_address[0])


class PreviewServer:
    """Serves the latest published frame and results; `watched` says whether frames are wanted."""

    def __init__(self, listen: str, fps: float, labels: Sequence[str], source_name: str,
                 stats: Callable[[], dict] | None = None, jpeg_quality: int = 80,
                 password_file: str = "", cert_file: str = "", key_file: str = ""):
        host, port = parse_listen(listen)
        # read before listening: a missing file is a configuration error, and only a digest is kept
        self._password = hashlib.sha256(read_password(password_file)).digest() if password_file else None
        self._failed_logins = FailedLogins()
        tls = tls_context(cert_file, key_file) if cert_file else None
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
            self._server = _Server((host, port), self._handler_class())
        except OSError as exc:
            raise ConfigError(f"preview.listen {listen}: cannot listen there ({exc.strerror or exc}); choose "
                              "another port, or leave preview.listen empty to turn the preview off") from None
        self._server.tls = tls
        bound_host, self.port = self._server.server_address[:2]
        # every interface: name the machine, as a browser elsewhere on the network must reach it
        shown_host = socket.gethostname() if bound_host in ("0.0.0.0", "::") else bound_host
        self.url = f"{'https' if tls else 'http'}://{shown_host}:{self.port}/"
        if self._password is None and not is_loopback(host):
            log.warning("preview: %s serves the camera to anyone who can reach this machine, with no password; "
                        "set preview.password_file (README: Privacy), or listen on 127.0.0.1", listen)
        elif password_file and os.stat(password_file).st_mode & 0o004:
            log.warning("preview: preview.password_file %s is readable by every user; chmod o-r it", password_file)
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

            def setup(self) -> None:
                if isinstance(self.request, ssl.SSLSocket):  # on this thread: a slow client holds up no one
                    self.request.settimeout(10.0)
                    self.request.do_handshake()
                    self.request.settimeout(None)
                super().setup()

            def parse_request(self) -> bool:
                # Every request passes here before it is dispatched to a do_* method: checking the
                # password here covers each route and method, including ones added later.
                return super().parse_request() and self._admitted()

            def _admitted(self) -> bool:
                if server._password is None:
                    return True
                address = self.client_address[0]
                wait = server._failed_logins.wait(address)
                if wait > 0:
                    seconds = str(math.ceil(wait))
                    self._refuse(429, f"too many wrong passwords from {address}: try again in {seconds} s\n",
                                 "Retry-After", seconds)
                    return False
                given = _basic_password(self.headers.get("Authorization", ""))
                if given is not None:
                    if hmac.compare_digest(hashlib.sha256(given).digest(), server._password):
                        server._failed_logins.succeeded(address)
                        return True
                    if server._failed_logins.failed(address) == FailedLogins.FREE_TRIES:
                        log.warning("preview: %d wrong passwords from %s; its further tries are slowed down",
                                    FailedLogins.FREE_TRIES, address)
                self._refuse(401, "the live view needs its password (preview.password_file)\n",
                             "WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')
                return False

            def _refuse(self, code: int, text: str, header: str, value: str) -> None:
                body = text.encode()
                self.send_response(code)
                self.send_header(header, value)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

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
