"""Issue 20, faces are personal data: a password on the live view, retention by age, blurred
recordings, private file modes. Real runs of `fer-edge run`, a real HTTP client, real videos."""
from __future__ import annotations

import base64
import csv
import http.client
import json
import os
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import one_line_error, REPO_ROOT as ROOT
from fer_edge.annotate import BLUR_MARGIN, BLUR_CELLS
from fer_edge.errors import OutputError
from fer_edge.labels import EMOTIONS
from fer_edge.preview import FailedLogins
from fer_edge.records import FaceResult
from fer_edge.sinks import DiskBudget, Retention, RollingCsvLog, SegmentedVideoWriter
from fer_edge.sources import decode_all
from fer_edge.tracker import iou_matrix

SAMPLE = ROOT / "samples" / "sample_faces.mp4"
PASSWORD = "correct horse 42 battery"
ROUTES = ("/", "/status", "/snapshot.jpg", "/stream.mjpg")


def fer_edge(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fer_edge", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **kwargs)




def password_file(folder: Path, password: str = PASSWORD) -> Path:
    path = folder / "preview-password"
    path.write_text(password + "\n")  # as `echo ... > file` leaves it: the newline is no part of it
    path.chmod(0o600)
    return path


class LiveRun:
    """A `fer-edge run --realtime --preview 127.0.0.1:0` in the background, and its log."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "fer_edge", "run", "--source", str(SAMPLE), "--realtime",
                                      "--preview", "127.0.0.1:0", *args],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self.url = ""
        for line in self.proc.stderr:  # the bound port (0: any free one) is in the log
            self.log.append(line)
            if line.startswith("fer-edge: preview: "):
                self.url = line.split()[2]
                break
        assert self.url, "".join(self.log)
        self.port = int(self.url.rstrip("/").rsplit(":", 1)[1])

    def stop(self) -> str:
        """SIGTERM (a clean stop, exit 0); returns the whole log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, rest = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, "".join(self.log) + rest
        return "".join(self.log) + rest

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def request(port: int, path: str, password: str | None = None, *, source: str = "127.0.0.1",
            method: str = "GET", tls: ssl.SSLContext | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) from a real HTTP client, from the loopback address `source`
    (127.0.0.0/8 is all this machine's: each address is a different client to the server)."""
    if tls is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, source_address=(source, 0), context=tls)
    headers = {}
    if password is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"anyone:{password}".encode()).decode()
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        stream = response.status == 200 and path == "/stream.mjpg"
        body = response.read(64) if stream else response.read()  # a stream never ends: its first bytes
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def laplacian_variance(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


# --- access to the live view ---------------------------------------------------------------------
def test_every_route_needs_the_password_and_failures_are_slowed(tmp_path):
    secret = password_file(tmp_path)
    run = LiveRun("--output", str(tmp_path / "out"), "--no-video", "--set", f"preview.password_file={secret}",
                  "--set", "video.blur_faces=true")
    try:
        port = run.port
        # the right password, any user name: every route works
        for path in ROUTES:
            code, headers, body = request(port, path, PASSWORD)
            assert code == 200, (path, code, body)
        code, _, body = request(port, "/stream.mjpg", PASSWORD)
        assert body.startswith(b"--fer-edge-frame")
        for _ in range(50):  # until the first analysis found the astronaut (in view for 4 s)
            code, _, body = request(port, "/status", PASSWORD)
            status = json.loads(body)
            if status["faces"]:
                break
            time.sleep(0.1)
        assert status["source"] == "sample_faces.mp4" and status["stats"]["analysed"] > 0
        assert PASSWORD not in body.decode() and str(secret) not in body.decode()
        # The live view is drawn like the recording: the face in the snapshot is blurred.
        code, _, jpeg = request(port, "/snapshot.jpg", PASSWORD)
        code, _, body = request(port, "/status", PASSWORD)
        (x, y, w, h), = [face["box"] for face in json.loads(body)["faces"]]  # the astronaut, first 4 s
        shot = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        inner = shot[y + h // 5:y + h - h // 5, x + w // 5:x + w - w // 5]
        original = cv2.VideoCapture(str(SAMPLE)).read()[1][y + h // 5:y + h - h // 5, x + w // 5:x + w - w // 5]
        assert laplacian_variance(inner) < 0.2 * laplacian_variance(original)

        # no credentials: 401 and the challenge, on every route, an unknown one and any method
        for path in ROUTES + ("/a-route-added-later",):
            code, headers, body = request(port, path)
            assert code == 401 and headers["www-authenticate"].startswith('Basic realm="fer-edge"'), (path, code)
        assert request(port, "/status", method="POST")[0] == 401
        assert request(port, "/a-route-added-later", PASSWORD)[0] == 404  # routed only once admitted

        # wrong passwords, from another address (another client): 401 for the first FREE_TRIES...
        for path in (ROUTES * FailedLogins.FREE_TRIES)[:FailedLogins.FREE_TRIES]:
            code, headers, body = request(port, path, "wrong", source="127.0.0.2")
            assert code == 401 and headers["www-authenticate"].startswith("Basic "), (path, code)
        # ...then that address must wait before its next try, which is refused unchecked, even right
        code, headers, body = request(port, "/status", PASSWORD, source="127.0.0.2")
        assert code == 429 and int(headers["retry-after"]) >= 1, (code, body)
        # while every other client is served at once
        assert request(port, "/status", PASSWORD, source="127.0.0.3")[0] == 200
        time.sleep(int(headers["retry-after"]))
        assert request(port, "/status", PASSWORD, source="127.0.0.2")[0] == 200
        assert request(port, "/status", "wrong", source="127.0.0.2")[0] == 401  # a success cleared the count
        log = run.stop()
    finally:
        run.kill()
    assert "Traceback" not in log and "wrong passwords from 127.0.0.2" in log
    assert PASSWORD not in log and "correct horse" not in log

    # nor in the effective configuration, nor in what doctor says
    shown = fer_edge("config", "--set", f"preview.password_file={secret}", "--set", "preview.listen=127.0.0.1:0")
    assert shown.returncode == 0 and f'password_file = "{secret}"' in shown.stdout
    assert PASSWORD not in shown.stdout + shown.stderr
    doctor = fer_edge("doctor", "--set", f"preview.password_file={secret}", "--set", "preview.listen=0.0.0.0:0")
    assert "[  ok] preview" in doctor.stdout and f"password from {secret}" in doctor.stdout, doctor.stdout
    assert PASSWORD not in doctor.stdout + doctor.stderr


def test_the_live_view_over_tls(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl (the command) is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                           "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                           "-out", str(cert)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    run = LiveRun("--output", str(tmp_path / "out"), "--no-video", "--no-csv",
                  "--set", f"preview.password_file={password_file(tmp_path)}",
                  "--set", f"preview.cert_file={cert}", "--set", f"preview.key_file={key}")
    try:
        assert run.url.startswith("https://127.0.0.1:")
        tls = ssl.create_default_context(cafile=str(cert))  # verifies the certificate and its address
        assert request(run.port, "/status", tls=tls)[0] == 401
        code, _, body = request(run.port, "/status", PASSWORD, tls=tls)
        assert code == 200 and json.loads(body)["source"] == "sample_faces.mp4"
        with pytest.raises((http.client.HTTPException, OSError)):  # plain HTTP gets nothing
            request(run.port, "/status", PASSWORD)
        assert request(run.port, "/status", PASSWORD, tls=tls)[0] == 200  # and the server goes on
        log = run.stop()
    finally:
        run.kill()
    assert "Traceback" not in log and PASSWORD not in log


def test_password_and_certificate_mistakes_are_config_errors(tmp_path):
    base = ("run", "--source", str(SAMPLE), "--output", str(tmp_path / "out"), "--preview", "127.0.0.1:0")
    one_line_error(fer_edge(*base, "--set", f"preview.password_file={tmp_path / 'absent'}"), 78,
                   "preview.password_file", "absent", "cannot be read")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    one_line_error(fer_edge(*base, "--set", f"preview.password_file={empty}"), 78, "preview.password_file", "empty")
    one_line_error(fer_edge(*base, "--set", f"preview.cert_file={empty}"), 78, "preview.key_file", "both")
    one_line_error(fer_edge(*base, "--set", f"preview.cert_file={empty}", "--set", f"preview.key_file={empty}"),
                   78, "preview.cert_file", "PEM")
    one_line_error(fer_edge(*base, "--set", f"preview.cert_file={tmp_path / 'nocert'}",
                            "--set", f"preview.key_file={empty}"), 78, "preview.cert_file", "cannot be read")
    assert not list((tmp_path / "out").rglob("*.*"))  # refused before any output file was opened
    doctor = fer_edge("doctor", "--set", f"preview.password_file={tmp_path / 'absent'}",
                      "--set", "preview.listen=127.0.0.1:0")
    assert doctor.returncode == 1 and "[FAIL] preview" in doctor.stdout and "absent" in doctor.stdout


def test_listening_beyond_loopback_without_a_password_works_but_warns(tmp_path):
    opened = fer_edge("run", "--source", str(SAMPLE), "--output", str(tmp_path), "--no-video", "--no-csv",
                      "--max-frames", "2", "--preview", "0.0.0.0:0")
    assert opened.returncode == 0, opened.stderr
    warning, = [line for line in opened.stderr.splitlines() if "no password" in line]
    assert "preview.password_file" in warning
    secret = password_file(tmp_path)
    closed = fer_edge("run", "--source", str(SAMPLE), "--output", str(tmp_path), "--no-video", "--no-csv",
                      "--max-frames", "2", "--preview", "0.0.0.0:0", "--set", f"preview.password_file={secret}")
    assert closed.returncode == 0 and "no password" not in closed.stderr, closed.stderr
    assert "readable by every user" not in closed.stderr
    secret.chmod(0o644)
    shared = fer_edge("run", "--source", str(SAMPLE), "--output", str(tmp_path), "--no-video", "--no-csv",
                      "--max-frames", "2", "--preview", "0.0.0.0:0", "--set", f"preview.password_file={secret}")
    assert shared.returncode == 0 and "readable by every user" in shared.stderr, shared.stderr
    local = fer_edge("run", "--source", str(SAMPLE), "--output", str(tmp_path), "--no-video", "--no-csv",
                     "--max-frames", "2", "--preview", "127.0.0.1:0")
    assert local.returncode == 0 and "no password" not in local.stderr, local.stderr
    doctor = fer_edge("doctor", "--set", "preview.listen=0.0.0.0:0")
    assert "[warn] preview" in doctor.stdout and "no password" in doctor.stdout, doctor.stdout
    assert "[  ok] preview" in fer_edge("doctor", "--set", "preview.listen=127.0.0.1:0").stdout


def test_failed_logins_stay_bounded_and_back_off():
    logins = FailedLogins()
    assert [logins.delay(n) for n in range(1, 13)] == [0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60]
    for i in range(FailedLogins.MAX_ADDRESSES + 10):  # addresses an attacker may cycle through
        for _ in range(FailedLogins.FREE_TRIES):
            logins.failed(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
    assert len(logins._failures) == FailedLogins.MAX_ADDRESSES
    assert logins.wait("10.0.0.0") == 0 and logins.wait(f"10.0.{(i >> 8) & 255}.{i & 255}") > 0
    logins.succeeded(f"10.0.{(i >> 8) & 255}.{i & 255}")
    assert logins.wait(f"10.0.{(i >> 8) & 255}.{i & 255}") == 0


def test_doctor_flags_an_output_folder_everyone_can_read(tmp_path):
    out = tmp_path / "out"
    out.mkdir(mode=0o755)
    out.chmod(0o755)
    assert "readable by every user" in fer_edge("doctor", "--output", str(out)).stdout
    out.chmod(0o750)
    assert "readable by every user" not in fer_edge("doctor", "--output", str(out)).stdout


# --- retention by age ----------------------------------------------------------------------------
def aged(path: Path, days: float, text: str = "x\n") -> Path:
    path.write_text(text)
    when = time.time() - days * 86400
    os.utime(path, (when, when))
    return path


def test_files_older_than_max_age_days_are_deleted_at_start(tmp_path):
    video, logs = tmp_path / "video", tmp_path / "csv"
    video.mkdir()
    logs.mkdir()
    header = "timestamp,frame,source,face_id,x,y,w,h,emotion,confidence\n"
    old = [aged(video / "fer-20261001T000000Z-0000.mp4", 40), aged(logs / "emotions-20261001T000000Z-0000.csv", 40,
                                                                     header),
           # recovered after a crash: a young name, but old by its time, which is what counts
           aged(video / "fer-20261201T000000Z-0000.mp4", 31)]
    young = [aged(video / "fer-20261002T000000Z-0000.mp4", 29), aged(logs / "emotions-20261102T000000Z-0000.csv", 2,
                                                                       header),
             aged(video / "notes.txt", 400), aged(logs / "emotions-mine.csv", 400)]  # not names it writes
    done = fer_edge("run", "--source", str(SAMPLE), "--output", str(tmp_path), "--max-frames", "3",
                    "--set", "video.max_age_days=30", "--set", "csv.max_age_days=30")
    assert done.returncode == 0, done.stderr
    assert [p.name for p in old if p.exists()] == []
    assert [p.name for p in young if not p.exists()] == []

    # 0 (the default) keeps every age
    kept = aged(video / "fer-20250101T000000Z-0000.mp4", 700)
    done = fer_edge("run", "--source", str(SAMPLE), "--output", str(tmp_path), "--max-frames", "3")
    assert done.returncode == 0 and kept.exists(), done.stderr


def test_age_limits_are_applied_again_within_the_hour(tmp_path):
    video, logs = tmp_path / "video", tmp_path / "csv"
    budget = DiskBudget(video_dir=video, csv_dir=logs, video_limits=Retention(max_age_days=7),
                        csv_limits=Retention(max_age_days=7))
    budget.startup()
    start = time.monotonic()
    # files that grew old during the run (or arrived): the free-space checks leave them...
    stale = [aged(video / "fer-20261101T000000Z-0000.mp4", 8), aged(logs / "emotions-20261101T000000Z-0000.csv", 8)]
    fresh = aged(video / "fer-20261130T000000Z-0000.mp4", 6)
    budget.check(start + 5 * budget.check_seconds)
    assert all(p.exists() for p in stale)
    # ...and the limits' next round, an hour after the last, deletes them
    assert budget.LIMITS_SECONDS <= 3600
    budget.check(start + budget.LIMITS_SECONDS)
    assert not any(p.exists() for p in stale) and fresh.exists()
    assert (budget.deleted_videos, budget.deleted_csv) == (1, 1)


# --- blurred recordings --------------------------------------------------------------------------
def lossless_run(out: Path, *extra: str) -> tuple[list[np.ndarray], list[dict]]:
    """`fer-edge run` on the sample, every frame analysed, recorded losslessly (FFV1): its frames
    and its CSV rows."""
    done = fer_edge("run", "--source", str(SAMPLE), "--output", str(out), "--every", "1",
                    "--set", "video.codec=FFV1", "--set", "video.segment_seconds=3600", *extra)
    assert done.returncode == 0, done.stderr
    frames = [image for segment in sorted((out / "video").glob("*.avi")) for image in decode_all(segment)[0]]
    rows = []
    for path in sorted((out / "csv").glob("*.csv")):
        with path.open(newline="") as fh:
            rows += list(csv.DictReader(fh))
    return frames, rows


def inside(x: int, y: int, w: int, h: int) -> tuple[slice, slice]:
    """A face box less what is drawn on it: its lines, and its label, which stays in the frame
    (at the top of the box for a face at the top edge)."""
    return slice(max(y + 4, 24), y + h - 4), slice(x + 4, x + w - 4)


def test_blurred_faces_lose_their_detail_and_nothing_else_changes(tmp_path):
    plain, plain_rows = lossless_run(tmp_path / "plain")
    blurred, blurred_rows = lossless_run(tmp_path / "blurred", "--set", "video.blur_faces=true")
    assert len(plain) == len(blurred) == 150 and len(plain_rows) > 50

    # the CSV is the same, but for the wall-clock timestamps
    def strip(rows):
        return [{k: v for k, v in row.items() if k != "timestamp"} for row in rows]
    assert strip(blurred_rows) == strip(plain_rows)

    boxes: dict[int, list[tuple[int, int, int, int]]] = {}
    for row in plain_rows:
        boxes.setdefault(int(row["frame"]), []).append(tuple(int(row[k]) for k in "xywh"))
    ratios, alone = [], []
    height, width = plain[0].shape[:2]
    for i, (a, b) in enumerate(zip(plain, blurred)):
        recent = [box for j in range(i - 2, i + 1) for box in boxes.get(j, [])]
        for box in boxes.get(i, []):
            inner = inside(*box)
            ratios.append(laplacian_variance(b[inner]) / laplacian_variance(a[inner]))
            # no other face's label or bars drawn over it (one held through a miss, say)
            if iou_matrix(np.array([box], float), np.array(recent, float)).min() > 0.25:
                alone.append(ratios[-1])
        # Outside the blurred regions the frames are identical. A face held through a missed
        # detection keeps its box of up to two analyses before, so those regions count too.
        hidden = np.zeros((height, width), bool)
        for x, y, w, h in recent:
            dx, dy = int(w * BLUR_MARGIN) + 1, int(h * BLUR_MARGIN) + 1
            hidden[max(0, y - dy):y + h + dy, max(0, x - dx):x + w + dx] = True
        hidden[:30, :120] = True  # the frame rate printed there is measured anew by each run
        assert np.array_equal(a[~hidden], b[~hidden]), f"frame {i} differs outside the faces"
    assert len(ratios) == len(plain_rows) and len(alone) > 0.8 * len(ratios)
    assert np.median(ratios) < 0.05 and max(alone) < 0.2, (np.median(ratios), max(alone))

    # pixelate: the face is BLUR_CELLS x BLUR_CELLS flat colours
    pixelated, _ = lossless_run(tmp_path / "pixelated", "--set", "video.blur_faces=true",
                                "--set", "video.blur=pixelate", "--max-frames", "30")
    for i, image in enumerate(pixelated):
        for x, y, w, h in boxes.get(i, []):
            inner = inside(x, y, w, h)
            assert len(np.unique(image[inner].reshape(-1, 3), axis=0)) <= BLUR_CELLS ** 2
            assert len(np.unique(plain[i][inner].reshape(-1, 3), axis=0)) > 1000


def test_blur_is_a_checked_setting():
    one_line_error(fer_edge("config", "--set", "video.blur=smudge"), 78, "video.blur", "pixelate")


# --- private files -------------------------------------------------------------------------------
def modes(root: Path) -> dict[str, int]:
    """Every folder and file under root (root included), as relative path: permission bits."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_everything_a_run_creates_is_private(tmp_path, umask):
    out = tmp_path / "new" / "output"  # two folders the run creates
    for codec, extra in (("h264", ()), ("mp4v", ("--set", "video.segment_seconds=1"))):
        done = fer_edge("run", "--source", str(SAMPLE), "--output", str(out / codec), "--max-frames", "40",
                        "--set", f"video.codec={codec}", *extra, preexec_fn=lambda: os.umask(umask))
        assert done.returncode == 0, done.stderr
    found = modes(tmp_path / "new")
    files = {name: mode for name, mode in found.items() if (tmp_path / "new" / name).is_file()}
    folders = {name: mode for name, mode in found.items() if name not in files}
    assert {n.rsplit(".", 1)[-1] for n in files} == {"mp4", "csv"}
    assert sum(n.endswith(".mp4") for n in files) >= 4  # mp4v: 1 s segments
    assert set(folders) == {".", "output", "output/h264", "output/mp4v"} | {
        f"output/{c}/{kind}" for c in ("h264", "mp4v") for kind in ("video", "csv")}
    assert {n: oct(m) for n, m in folders.items() if m != 0o750} == {}
    assert {n: oct(m) for n, m in files.items() if m != 0o640} == {}


def test_sinks_create_private_files_whatever_the_umask(tmp_path):
    """The library path (no `fer-edge run` to set the umask): modes are set where files are made,
    including a segment while it is still a partial file."""
    previous = os.umask(0)
    try:
        for codec in ("h264", "mp4v"):
            writer = SegmentedVideoWriter(tmp_path / codec / "video", (64, 48), 10.0, segment_seconds=60,
                                          codec=codec)
            for _ in range(5):
                writer.write(np.zeros((48, 64, 3), np.uint8))
            deadline = time.monotonic() + 10
            while not list((tmp_path / codec / "video").glob("*.partial.*")) and time.monotonic() < deadline:
                time.sleep(0.05)
            partial, = (tmp_path / codec / "video").glob("*.partial.*")
            assert stat.S_IMODE(partial.stat().st_mode) == 0o640
            writer.close()
            final, = writer.segments
            assert stat.S_IMODE(final.stat().st_mode) == 0o640
        log = RollingCsvLog(tmp_path / "a" / "csv", labels=EMOTIONS, source="test", max_bytes=0, rotate_seconds=0)
        log.write(time.time(), 0, [FaceResult(1, (1, 2, 3, 4), np.full(7, 1 / 7, np.float32), "happy", 0.2)])
        log.close()
    finally:
        os.umask(previous)
    found = modes(tmp_path)
    assert {n: oct(m) for n, m in found.items() if n != "." and (tmp_path / n).is_dir() and m != 0o750} == {}
    assert {n: oct(m) for n, m in found.items() if (tmp_path / n).is_file() and m != 0o640} == {}
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(OutputError):  # a folder that cannot be made is still one clear error
        RollingCsvLog(blocked / "csv", labels=EMOTIONS, source="test", max_bytes=0, rotate_seconds=0)
