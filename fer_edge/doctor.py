"""fer-edge doctor: check each thing the daemon needs and say what to fix."""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .cli_support import check_writable
from .errors import FerEdgeError

OK, WARN, FAIL = "ok", "warn", "FAIL"

# What NumPy and extension modules say when a module compiled for one NumPy major version meets the
# other: NumPy 2's guard prints the first; a NumPy 1.x build's import_array() raises the second.
_BUILT_FOR_NUMPY1 = ("compiled using NumPy 1.x", "numpy.core.multiarray failed to import",
                     "numpy.core.umath failed to import", "_ARRAY_API not found")
_BUILT_FOR_NUMPY2 = ("numpy._core.multiarray failed to import", "No module named 'numpy._core'",
                     "compiled against ABI version 0x2", "compiled against numpy ABI version 0x2")
# Module -> what to install when it is missing (the README's routes: apt on a Pi, wheels elsewhere).
_MISSING = {
    "cv2": "sudo apt install python3-opencv (venv made with --system-site-packages), "
           "or pip install 'opencv-python-headless>=4.8,<5'",
    "numpy": "pip install numpy",
    "ai_edge_litert": "pip install ai-edge-litert",
    "tflite_runtime": "pip install ai-edge-litert",
}


def import_fix(text: str, python: str = sys.executable,
               python_version: tuple[int, int] = sys.version_info[:2]) -> str | None:
    """The one-line fix for a failed import, from its error text and what it wrote to stderr.

    None when the text is not an import failure this knows. Pure, so it is tested on the real
    messages; `python` is the interpreter whose pip must run (the venv's)."""
    pip = f"{python} -m pip install"
    if any(marker in text for marker in _BUILT_FOR_NUMPY1):
        return (f"NumPy ABI clash: a module built for NumPy 1.x (apt's OpenCV on Pi OS bookworm) "
                f"sees NumPy 2; {pip} 'numpy<2' 'ml_dtypes<0.6'")
    if any(marker in text for marker in _BUILT_FOR_NUMPY2):
        fix = f"{pip} 'numpy<2' 'ml_dtypes<0.6'" if python_version < (3, 12) else f"{pip} --upgrade numpy"
        return f"NumPy ABI clash: a module built for NumPy 2 sees NumPy 1.x; {fix}"
    missing = re.search(r"No module named '([\w.]+)'", text)
    if missing:
        top = missing.group(1).split(".")[0]
        return f"{top} is not installed: " + _MISSING.get(top, f"{pip} {top}")
    if "no TFLite runtime could be imported" in text:
        return f"no TFLite runtime: {pip} ai-edge-litert"
    library = re.search(r"([\w.+-]+\.so[\w.]*): cannot open shared object file", text)
    if library:
        return (f"the system library {library.group(1)} is missing: install the package that provides "
                f"it (apt-file search {library.group(1)})")
    return None


@contextlib.contextmanager
def captured_stderr() -> Iterator[io.StringIO]:
    """Collect what a probe writes to stderr, from Python and from C (file descriptor 2).

    NumPy's ABI warning is 20 lines with a stack, and every check that imports cv2 would repeat
    it; doctor reads it for import_fix and prints one line instead."""
    text = io.StringIO()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as raw:
        os.dup2(raw.fileno(), 2)
        try:
            with contextlib.redirect_stderr(text):
                yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            raw.seek(0)
            text.write(raw.read().decode("utf-8", "replace"))


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def run_doctor(args: argparse.Namespace, config_from_args: Callable, model_path: Callable,
               log: Callable[[str], None]) -> int:
    results: list[tuple[str, str, str]] = []
    fixes: list[str] = []  # one line per distinct cause, in the order found

    def check(name: str, fn: Callable[[], tuple[str, str]]) -> object:
        with captured_stderr() as noise:
            try:
                status, detail = fn()
                failure = None
            except FerEdgeError as exc:
                status, detail, failure = FAIL, str(exc), exc
            except Exception as exc:  # doctor must report, never crash
                status, detail, failure = FAIL, _first_line(exc), exc
        if failure is not None:
            fix = import_fix(f"{failure}\n{noise.getvalue()}")
            if fix is not None:
                detail += " (fix below)"
                if fix not in fixes:
                    fixes.append(fix)
        results.append((status, name, detail))
        return status

    check("python", lambda: (OK if sys.version_info >= (3, 9) else FAIL,
                             f"{platform.python_version()} on {platform.machine()} ({sys.executable})"))
    cfg_holder: dict = {}

    def config():
        cfg_holder["cfg"] = config_from_args(args)
        return OK, f"{args.config or 'built-in defaults'}"
    check("config", config)

    def numpy_check():
        import numpy
        return OK, f"{numpy.__version__} from {Path(numpy.__file__).parent}"
    check("numpy", numpy_check)

    def opencv():
        import cv2
        major = int(cv2.__version__.split(".")[0])
        if major >= 5:
            return FAIL, (f"OpenCV {cv2.__version__} has no Haar cascades; "
                          "pip install 'opencv-python-headless>=4.8,<5'")
        return OK, f"{cv2.__version__} from {Path(cv2.__file__).parent}"
    check("opencv", opencv)

    def cascade():
        from .config import DetectionConfig
        from .detector import find_cascade
        cfg = cfg_holder.get("cfg")
        return OK, str(find_cascade(cfg.detection.cascade if cfg else DetectionConfig().cascade))
    check("haar cascade", cascade)

    def runtime():
        from .runtime import load_runtime
        cfg = cfg_holder.get("cfg")
        name, _ = load_runtime(cfg.model.runtime if cfg and cfg.model.runtime else None)
        note = " (deprecated: pip install ai-edge-litert)" if name == "tensorflow" else ""
        return (WARN if note else OK), f"{name}{note}"
    check("tflite runtime", runtime)

    def model():
        from .runtime import EmotionClassifier
        cfg = cfg_holder.get("cfg")
        if cfg is None:
            return FAIL, "configuration did not load"
        path = model_path(cfg)
        clf = EmotionClassifier(path, num_threads=1, runtime=cfg.model.runtime or None)
        import numpy as np
        probs = clf.predict([np.full((48, 48), 128, np.uint8)])
        return OK, (f"{path} ({path.stat().st_size / 1024:.0f} KiB, {clf.info.extra.get('quantization', '?')}, "
                    f"{len(clf.labels)} labels, sums to {probs.sum():.2f})")
    check("model", model)

    def cameras():
        from .sources import picamera2_cameras, v4l2_devices
        found = []
        pi_cameras = 0
        try:
            import picamera2  # noqa: F401
            pi_cameras = len(picamera2_cameras())
            found.append(f"picamera2: {pi_cameras} camera(s)")
        except ImportError:
            found.append("picamera2 not installed (Pi camera: sudo apt install python3-picamera2, "
                         "venv with --system-site-packages)")
        devices = v4l2_devices()
        unreadable = [d for d in devices if not os.access(d, os.R_OK | os.W_OK)]
        found.append(f"V4L2: {', '.join(devices) or 'none'}")
        if unreadable:
            found.append(f"no access to {', '.join(unreadable)}: add this user to the 'video' group")
        any_camera = pi_cameras > 0 or bool(devices)
        return (OK if any_camera and not unreadable else WARN), "; ".join(found)
    check("cameras", cameras)

    def output():
        cfg = cfg_holder.get("cfg")
        out = Path(getattr(args, "output", None) or (cfg.output.directory if cfg else "."))
        # really creates something there, as run will: os.access says yes to root on /proc or a read-only mount
        check_writable(out, "output directory", folder=True, fix="choose another with --output or fix permissions")
        probe = out
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        need = cfg.video.min_free_bytes if cfg else 0
        status = OK if free > max(need, 1) * 2 else WARN
        detail = f"{out}: {free / 1024 ** 3:.1f} GiB free (video keeps {need / 1024 ** 2:.0f} MiB free)"
        if out.is_dir() and out.stat().st_mode & 0o007:  # made by hand, or by a version before 0750
            status, detail = WARN, detail + (f"; readable by every user (faces are personal data): "
                                             f"chmod -R o= {out}")
        return status, detail
    check("output", output)

    def video():
        from .sinks import pyav_available
        if pyav_available():
            import av
            return OK, f"PyAV {av.__version__}: H.264 in fragmented MP4 (a crash loses about a second)"
        return WARN, ("PyAV not installed: video is OpenCV mp4v in 10 s segments (a crash loses the open one); "
                      "pip install 'fer-edge[video]'")
    check("video", video)

    def display():
        from .sinks import gui_available
        return OK, "OpenCV GUI available" if gui_available() else "headless OpenCV (fine for the service; " \
            "--display needs opencv-python or apt python3-opencv)"
    check("display", display)

    def preview():
        import socket

        from .config import parse_listen
        cfg = cfg_holder.get("cfg")
        if cfg is None or not cfg.preview.listen:
            return OK, "off (preview.listen = \":8080\" serves a live view to a browser)"
        host, port = parse_listen(cfg.preview.listen)
        with socket.socket() as probe:  # what the preview server will do at start
            try:
                probe.bind((host, port))
            except OSError as exc:
                return FAIL, (f"{cfg.preview.listen}: cannot listen ({exc.strerror or exc}); "
                              "choose another preview.listen port")
        from .preview import is_loopback, read_password, tls_context
        p = cfg.preview
        if p.password_file:
            read_password(p.password_file)  # what the run reads at start: a problem is a FAIL here
        if p.cert_file:
            tls_context(p.cert_file, p.key_file)
        scheme = "HTTPS" if p.cert_file else "HTTP, unencrypted"
        if p.password_file:
            return OK, f"{p.listen} is free; password from {p.password_file}; {scheme}"
        if is_loopback(host):
            return OK, f"{p.listen} is free; this machine only, no password"
        return WARN, (f"{p.listen} serves the camera to the network with no password: set preview.password_file "
                      "(README: Privacy), or listen on 127.0.0.1")
    check("preview", preview)

    def mqtt():
        cfg = cfg_holder.get("cfg")
        if cfg is None or not cfg.mqtt.host:
            return OK, "off (mqtt.host = \"broker\" publishes to MQTT and Home Assistant)"
        from .mqtt import check_broker
        return OK, f"connected to {check_broker(cfg.mqtt)}"
    check("mqtt broker", mqtt)

    width = max(len(name) for _, name, _ in results)
    for status, name, detail in results:
        print(f"[{status:>4}] {name:<{width}}  {detail}")
    failed = [name for status, name, _ in results if status == FAIL]
    # An ABI clash breaks every check that imports cv2; its fix comes first, as the one to do.
    fixes.sort(key=lambda fix: not fix.startswith("NumPy ABI clash"))
    for fix in fixes:
        print(f"\nfix: {fix}")
    if failed:
        print(f"\n{len(failed)} problem(s): {', '.join(failed)}. Fix them and run fer-edge doctor again.")
        return 1
    print("\nall checks passed" + (" (with warnings)" if any(s == WARN for s, _, _ in results) else ""))
    return 0
