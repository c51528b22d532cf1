#!/usr/bin/env python3
"""Emulated Raspberry Pi OS check: the README's Pi route on an arm64 Debian root, compared with here.

    make pi-check [SUITE=bookworm|trixie]

Raspberry Pi OS 64-bit is Debian arm64 plus the Pi's own archive (kernel, libcamera, picamera2).
This builds a Debian arm64 root of the suite with debootstrap, runs it through qemu-user, installs
fer-edge there the way the README's "On a Raspberry Pi" section says (its apt packages, its venv
command, its pip command), on a copy of this checkout, and then compares `doctor`, `run` (adaptive
and every frame), `detect`, `evaluate`, `install-service --dry-run` (its steps carried out, the unit
verified by systemd-analyze, its command run as the service user) with the same commands in the
host's venv. Any difference fails it (exit 1) with the rows that differ.

Cached outside the clone (root: sudo), in $FER_EDGE_PI_CACHE or /var/cache/fer-edge-pi-check: the
qemu binary, the .debs, pip's cache and one root per suite, keyed by its package list. The venv is
made with the README's lines whenever setup.cfg, those lines or the root change, or it is a week
old (--fresh-venv: now), so the resolution checked is the one a new Pi owner gets; otherwise it is
reused and only this checkout reinstalled in it.

Not covered (hardware edges): the camera (python3-picamera2 is in the Pi's archive, not Debian's),
the Pi's kernel, and speed: emulated timings are not Pi timings.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
MIRROR = "http://deb.debian.org/debian"
SUITES = ("bookworm", "trixie")
# Bump when the way a root is made changes, so cached roots are rebuilt.
ROOT_RECIPE = 1
# Not in Debian, only in the Raspberry Pi archive: the camera stack is a hardware edge here.
PI_ONLY_PACKAGES = {"python3-picamera2"}
# What the check itself needs in the root besides the README's packages: systemd-analyze
# (Pi OS has systemd anyway) and the CA store pip uses.
CHECK_PACKAGES = ("systemd", "ca-certificates")
# In every Pi OS but not in minbase, added to a root (cached or new) when missing: procps gives
# /bin/kill, the unit's ExecReload.
PI_OS_BASE = ("procps",)
# qemu-user older than 10 (bookworm's 7.2) segfaults in LiteRT's Interpreter(); trixie's works.
QEMU_SUITE = "trixie"
BINFMT = "/proc/sys/fs/binfmt_misc"
BINFMT_NAME = "fer-edge-aarch64"
AARCH64_MAGIC = (r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00",
                 r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff")
# Haar's boxes on arm64 differ from x86's (the same with OpenCV 4.6 and 4.14 wheels on x86, so it is
# the build and the CPU, not the version): most by a few pixels, and where the detector settles on
# another scale for a few frames, by up to about a fifth of the face. A row may be off by the larger
# of these; the median over all rows must stay within the first.
BOX_TOLERANCE_PX = 4
BOX_TOLERANCE_SHARE = 0.2
# evaluate: counts (accuracy, per class, confusion) must be identical; the calibration figures come
# from the probabilities, which can move by an int8 step on another CPU's kernels.
CALIBRATION_TOLERANCE = 0.005
# A cached venv is made afresh after this, so new releases upstream (a NumPy 2 pulled in) show up.
VENV_MAX_AGE_DAYS = 7
FACES_PER_CLASS = 10
ROOT_PROJECT = "/home/pi/fer-edge"   # the README's `git clone <this repo> fer-edge && cd fer-edge`
ROOT_WORK = "/tmp/pi-check"
ROOT_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
            "USER=root", "LANG=C.UTF-8", "PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
            "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_ROOT_USER_ACTION=ignore", "PIP_DEFAULT_TIMEOUT=180"]


class CheckFailed(Exception):
    pass


class CannotEmulate(CheckFailed):
    """This machine cannot run the check (no root, no binfmt_misc, no Debian mirror): nothing was
    compared, so nothing differs. Exit 69 (EX_UNAVAILABLE), which CI reports as NOT RUN."""


def say(message: str) -> None:
    print(f"pi-check: {message}", flush=True)


# --- what the README says ------------------------------------------------------------------
def pi_section(readme: str) -> str:
    """The README's "## On a Raspberry Pi" section, up to the next level-2 heading."""
    match = re.search(r"^## On a Raspberry Pi\n(.*?)(?=^## )", readme, re.MULTILINE | re.DOTALL)
    if not match:
        raise CheckFailed("README.md has no '## On a Raspberry Pi' section")
    return match.group(1)


def readme_route(section: str) -> dict:
    """The Pi section's first shell block: apt packages, and the lines that make the venv and install."""
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    if not block:
        raise CheckFailed("the README's Pi section has no ```sh block")
    lines = [line.split(" #")[0].strip() for line in block.group(1).splitlines()]
    apt = next((line for line in lines if re.match(r"(sudo )?apt(-get)? install", line)), None)
    if apt is None:
        raise CheckFailed("the README's Pi block has no `apt install` line")
    packages = [word for word in shlex.split(apt)[2:] if not word.startswith("-") and word != "install"]
    setup = [re.sub(r"\bsudo ", "", line) for line in lines
             if line.startswith("sudo mkdir") or " -m venv " in f" {line} " or re.search(r"/pip install ", line)]
    if not any("-m venv" in line for line in setup) or not any("pip install" in line for line in setup):
        raise CheckFailed("the README's Pi block has no `python3 -m venv` or no `pip install` line")
    venv = next(shlex.split(line)[-1] for line in setup if "-m venv" in line)
    return {"packages": packages, "setup": setup, "venv": venv}


# --- qemu-user and binfmt_misc -------------------------------------------------------------
def apt_private(cache: Path) -> list[str]:
    """apt options for a private state with a trixie source: the host's apt is left as it is."""
    state = cache / "qemu-apt"
    for sub in ("state/lists/partial", "cache/archives/partial", "etc"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "etc/sources.list").write_text(f"deb {MIRROR} {QEMU_SUITE} main\n")
    return ["-o", f"Dir::State={state}/state", "-o", f"Dir::Cache={state}/cache",
            "-o", f"Dir::Etc::SourceList={state}/etc/sources.list", "-o", "Dir::Etc::SourceParts=/dev/null"]


def ensure_qemu(cache: Path) -> Path | None:
    """A qemu-aarch64 (static, v10) registered with binfmt_misc; None on an arm64 host."""
    if platform.machine() in ("aarch64", "arm64"):
        return None
    qemu = cache / "qemu-aarch64"
    if not qemu.exists():
        say(f"fetching qemu-user from Debian {QEMU_SUITE} (private apt state in {cache}/qemu-apt)")
        options = apt_private(cache)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                run(["apt-get", *options, "update"], quiet=True)
                run(["apt-get", *options, "download", "qemu-user"], cwd=tmp, quiet=True)
            except CheckFailed as exc:
                raise CannotEmulate(f"qemu-user could not be fetched from {MIRROR}: {exc}") from None
            deb = next(Path(tmp).glob("qemu-user_*.deb"))
            run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"])
            shutil.copy2(f"{tmp}/x/usr/bin/qemu-aarch64", qemu.with_suffix(".tmp"))
        os.replace(qemu.with_suffix(".tmp"), qemu)
    if not os.path.exists(f"{BINFMT}/register"):
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT], capture_output=True)
    if not os.path.exists(f"{BINFMT}/register"):
        raise CannotEmulate(f"binfmt_misc is not available ({BINFMT}); it is needed to run arm64 programs "
                          "through qemu-user (a privileged container or a VM has it)")
    entry = Path(BINFMT, BINFMT_NAME)
    if entry.exists() and f"interpreter {qemu}\n" not in entry.read_text():
        entry.write_text("-1")  # ours, from another cache directory
    # The newest entry wins; if another aarch64 handler (say bookworm's qemu 7.2) came later, re-add ours.
    others = [p for p in Path(BINFMT).iterdir() if p.name not in ("register", "status", BINFMT_NAME)
              and "magic 7f454c460201010000000000000000000200b700" in p.read_text()
              and p.read_text().startswith("enabled")]
    if entry.exists() and others:
        entry.write_text("-1")
    if not entry.exists():
        # F: the kernel opens qemu now, so it runs inside any chroot without being copied there.
        Path(BINFMT, "register").write_text(
            f":{BINFMT_NAME}:M::{AARCH64_MAGIC[0]}:{AARCH64_MAGIC[1]}:{qemu}:OCF")
    return qemu


# --- the root --------------------------------------------------------------------------------
def root_key(suite: str, packages: list[str]) -> str:
    text = json.dumps([ROOT_RECIPE, suite, sorted(set(packages))])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ensure_root(cache: Path, suite: str, packages: list[str]) -> tuple[Path, bool]:
    """The suite's arm64 root with `packages`, built once (debootstrap --variant=minbase)."""
    key = root_key(suite, packages)
    root = cache / suite / f"root-{key}"
    if (root / ".pi-check-complete").exists():
        return root, False
    if shutil.which("debootstrap") is None:
        raise CannotEmulate("debootstrap is not installed: apt-get install debootstrap")
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    debs = cache / "debs" / suite
    debs.mkdir(parents=True, exist_ok=True)
    say(f"building the {suite} arm64 root (once; cached as {root}): {' '.join(packages)}")
    try:
        run(["debootstrap", "--arch=arm64", "--variant=minbase", f"--cache-dir={debs}",
             f"--include={','.join(packages)}", suite, str(tmp), MIRROR], quiet=True)
    except CheckFailed as exc:  # a mirror out of reach, mostly; the tail says
        raise CannotEmulate(f"debootstrap {suite} failed: {exc}") from None
    finish_root(cache, suite, packages, tmp, root)
    return root, True


def finish_root(cache: Path, suite: str, packages: list[str], tmp: Path, root: Path) -> None:
    """After debootstrap: the host's extra CAs, no .debs left in the root, then it becomes the cache."""
    # pip in the root must trust what this machine trusts (a TLS-inspecting proxy's CA, say).
    extra = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    for crt in extra:
        shutil.copy2(crt, tmp / "usr/local/share/ca-certificates" / crt.name)
    with mounted(tmp, cache):
        if extra:
            in_root(tmp, "update-ca-certificates >/dev/null")
        in_root(tmp, "apt-get clean")
    (tmp / ".pi-check-complete").write_text(json.dumps({"suite": suite, "packages": packages}) + "\n")
    for old in (cache / suite).glob("root-*"):  # one root per suite: older keys go
        if old != tmp:
            shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, root)


@contextlib.contextmanager
def mounted(root: Path, cache: Path) -> Iterator[None]:
    """/proc, /dev and pip's cache in the root, for the time of the check."""
    pip_cache = cache / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    (root / "root/.cache/pip").mkdir(parents=True, exist_ok=True)
    resolv = root / "etc/resolv.conf"
    if not resolv.is_symlink():  # pip needs this machine's name servers
        shutil.copy2("/etc/resolv.conf", resolv)
    mounts = [(["-t", "proc", "proc"], root / "proc"), (["--rbind", "/dev"], root / "dev"),
              (["--bind", str(pip_cache)], root / "root/.cache/pip")]
    done: list[Path] = []
    try:
        for args, target in mounts:
            run(["mount", *args, str(target)])
            if "--rbind" in args:
                run(["mount", "--make-rslave", str(target)])
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            subprocess.run(["umount", "-R", "-l", str(target)], capture_output=True)


def in_root(root: Path, command: str, *, check: bool = True, timeout: float = 1800,
            user: str | None = None) -> subprocess.CompletedProcess:
    """`command` (sh) in the root with a clean environment, as root or `user`."""
    argv = ["chroot", str(root), "/usr/bin/env", "-i", *ROOT_ENV, "/bin/sh", "-c", command]
    if user:
        argv = ["chroot", str(root), "/usr/sbin/runuser", "-u", user, "--", "/usr/bin/env", "-i",
                *ROOT_ENV, "HOME=/tmp", "/bin/sh", "-c", command]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise CheckFailed(f"in the root: `{command}` exited {done.returncode}\n{done.stdout}{done.stderr}")
    return done


def run(argv: list[str], *, cwd: str | None = None, quiet: bool = False,
        timeout: float = 3600) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise CheckFailed(f"`{shlex.join(argv)}` exited {done.returncode}\n{tail}")
    return done


# --- inputs -------------------------------------------------------------------------------
def copy_checkout(dest: Path) -> int:
    """This checkout's files (tracked and new, not ignored), as they are now."""
    shutil.rmtree(dest, ignore_errors=True)
    listed = run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
    count = 0
    for name in filter(None, listed.stdout.split("\0")):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
            count += 1
    return count


def gather_inputs(shared: Path | None, dest: Path, host_bin: Path) -> dict:
    """Photos and a few real faces per class from ../shared; without it, what the repo bundles."""
    photos, faces = dest / "photos", dest / "faces"
    photos.mkdir(parents=True)
    note = ""
    if shared and (shared / "data/photos").is_dir() and (shared / "data/fer2013/test").is_dir():
        for photo in sorted((shared / "data/photos").glob("*.jpg")):
            shutil.copy2(photo, photos / photo.name)
        for klass in sorted(p for p in (shared / "data/fer2013/test").iterdir() if p.is_dir()):
            (faces / klass.name).mkdir(parents=True)
            for face in sorted(klass.glob("*.jpg"))[:FACES_PER_CLASS]:
                shutil.copy2(face, faces / klass.name / face.name)
        source = f"{shared}/data (photos; {FACES_PER_CLASS} FER2013 test faces per class)"
    else:
        # Frames of the bundled sample: a photo, and its detected faces labelled with the host's
        # prediction (a consistency check only, not an accuracy).
        script = (
            "import cv2, sys\n"
            f"cap = cv2.VideoCapture({str(REPO / 'samples/sample_faces.mp4')!r})\n"
            "for i in range(150):\n"
            "    ok, frame = cap.read()\n"
            "    if ok and i % 30 == 0: cv2.imwrite(f'{sys.argv[1]}/frame{i:03d}.jpg', frame)\n")
        run([str(host_bin / "python"), "-c", script, str(photos)])
        faces = None
        note = "no ../shared: photos are frames of the bundled sample, and evaluate is skipped"
        source = "the bundled sample"
    return {"photos": photos, "faces": faces, "source": source, "note": note}


# --- comparisons ---------------------------------------------------------------------------
def read_csv_rows(folder: Path) -> dict[tuple[int, int], dict]:
    import csv
    rows = {}
    for path in sorted(folder.glob("*.csv")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                rows[(int(row["frame"]), int(row["face_id"]))] = row
    return rows


def box_delta(a, b) -> int:
    return max(abs(int(x) - int(y)) for x, y in zip(a, b))


def compare_rows(name: str, host: dict, pi: dict, report: dict, problems: list[str]) -> None:
    only_host, only_pi = sorted(set(host) - set(pi)), sorted(set(pi) - set(host))
    common = sorted(set(host) & set(pi))
    same = [k for k in common if host[k]["emotion"] == pi[k]["emotion"]]
    deltas = [box_delta([host[k][c] for c in "xywh"], [pi[k][c] for c in "xywh"]) for k in common]
    conf = [abs(float(host[k]["confidence"]) - float(pi[k]["confidence"])) for k in common]
    report[name] = {"rows_host": len(host), "rows_pi": len(pi), "same_emotion": len(same),
                    "box_px_median": statistics.median(deltas) if deltas else None,
                    "box_px_max": max(deltas) if deltas else None,
                    "confidence_max_diff": round(max(conf), 4) if conf else None}
    if not host:
        problems.append(f"{name}: the host wrote no rows (nothing to compare)")
    for key in only_host[:10]:
        problems.append(f"{name}: frame {key[0]} face {key[1]} only on the host: {_row(host[key])}")
    for key in only_pi[:10]:
        problems.append(f"{name}: frame {key[0]} face {key[1]} only in the emulated Pi OS: {_row(pi[key])}")
    for key in common:
        if host[key]["emotion"] != pi[key]["emotion"]:
            problems.append(f"{name}: frame {key[0]} face {key[1]}: host {_row(host[key])} | pi {_row(pi[key])}")
        elif box_delta([host[key][c] for c in "xywh"], [pi[key][c] for c in "xywh"]) > box_tolerance(host[key]):
            problems.append(f"{name}: frame {key[0]} face {key[1]} box off by more than "
                            f"{box_tolerance(host[key]):.0f} px: host {_row(host[key])} | pi {_row(pi[key])}")
    if deltas and statistics.median(deltas) > BOX_TOLERANCE_PX:
        problems.append(f"{name}: boxes differ by {statistics.median(deltas)} px in the median "
                        f"(at most {BOX_TOLERANCE_PX})")


def box_tolerance(row: dict) -> float:
    return max(BOX_TOLERANCE_PX, BOX_TOLERANCE_SHARE * int(row["w"]))


def _row(row: dict) -> str:
    return f"{row['emotion']} {row['confidence']} at {row['x']},{row['y']} {row['w']}x{row['h']}"


def detect_rows(result: list) -> dict[tuple[str, int], dict]:
    """detect's JSON as rows keyed by (image, face in reading order), shaped like the CSV's."""
    rows = {}
    for image in result:
        faces = sorted(image["faces"], key=lambda f: (f["box"][1], f["box"][0]))
        for i, face in enumerate(faces):
            x, y, w, h = face["box"]
            rows[(Path(image["image"]).name, i)] = {"emotion": face["emotion"], "confidence": face["confidence"],
                                                   "x": x, "y": y, "w": w, "h": h}
    return rows


def json_differences(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.append(f"{path}.{key}: only in {'pi' if key not in a else 'host'}")
            else:
                out += json_differences(a[key], b[key], f"{path}.{key}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in json_differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: host {a!r} | pi {b!r}"]


# --- the check -----------------------------------------------------------------------------
class Timer:
    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        say(f"{name} ...")
        try:
            yield
        finally:
            self.steps.append((name, time.monotonic() - start))


def host_cmd(host_bin: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(host_bin / "fer-edge"), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)
    if check and done.returncode != 0:
        raise CheckFailed(f"on the host: fer-edge {shlex.join(args)} exited {done.returncode}\n{done.stderr}")
    return done


def check(suite: str, cache: Path, host_bin: Path, shared: Path | None, break_numpy: bool,
          fresh_venv: bool) -> int:
    started = time.monotonic()
    timer = Timer()
    route = readme_route(pi_section((REPO / "README.md").read_text()))
    packages = [p for p in route["packages"] if p not in PI_ONLY_PACKAGES] + list(CHECK_PACKAGES)
    skipped = [p for p in route["packages"] if p in PI_ONLY_PACKAGES]
    (cache / suite).mkdir(parents=True, exist_ok=True)
    lock = open(cache / suite / ".lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one check per suite at a time: they share the root
    with timer.step("qemu-user and binfmt_misc"):
        qemu = ensure_qemu(cache)
    with timer.step(f"{suite} arm64 root"):
        root, built = ensure_root(cache, suite, packages)
    venv = route["venv"]
    fer = f"{venv}/bin/fer-edge"
    work = root / ROOT_WORK.lstrip("/")
    host_work = Path(tempfile.mkdtemp(prefix="pi-check-host-"))
    report: dict = {"suite": suite, "root": str(root), "built_now": built, "qemu": str(qemu or "native")}
    problems: list[str] = []
    try:
        with mounted(root, cache):
            shutil.rmtree(work, ignore_errors=True)
            missing = [p for p in PI_OS_BASE if in_root(root, f"dpkg -s {p}", check=False).returncode != 0]
            if missing:
                with timer.step(f"add {' '.join(missing)} to the root (once)"):
                    in_root(root, f"apt-get install -y -q --no-install-recommends {' '.join(missing)} >/dev/null"
                                  " && apt-get clean")
            with timer.step("copy this checkout and the inputs"):
                files = copy_checkout(root / ROOT_PROJECT.lstrip("/"))
                inputs = gather_inputs(shared, work / "inputs", host_bin)
                report["checkout_files"], report["inputs"] = files, inputs["source"]
            stamp = root / venv.lstrip("/") / ".pi-check-venv"
            key = venv_key(route, root)
            reuse = (not fresh_venv and stamp.exists() and stamp.read_text().strip() == key
                     and time.time() - stamp.stat().st_mtime < VENV_MAX_AGE_DAYS * 86400)
            if reuse:
                with timer.step("cached venv (same setup.cfg and README lines): reinstall this checkout only"):
                    in_root(root, f"cd {ROOT_PROJECT} && {venv}/bin/pip install -q --no-deps --force-reinstall .")
            else:
                in_root(root, f"rm -rf {shlex.quote(venv)}")
                with timer.step("the README's venv and pip install (fresh venv)"):
                    for line in route["setup"]:
                        say(f"  (pi) {line}")
                        in_root(root, f"cd {ROOT_PROJECT} && {line}")
                stamp.write_text(key + "\n")
            report["venv"] = "cached, this checkout reinstalled" if reuse else "fresh, the README's lines"
            versions = in_root(root, f"{venv}/bin/python -c \"import sys, numpy, cv2, ml_dtypes, av; "
                                     "from importlib.metadata import version as v; "
                                     "print(sys.version.split()[0], numpy.__version__, numpy.__file__, "
                                     "cv2.__version__, ml_dtypes.__version__, av.__version__, v('ai-edge-litert'))\"")
            py, np_version, np_file, cv_version, mld, av_version, litert = versions.stdout.split()
            report["pi_versions"] = {"python": py, "numpy": f"{np_version} ({np_file})", "opencv": cv_version,
                                     "ml_dtypes": mld, "av": av_version, "ai-edge-litert": litert}
            if not np_file.startswith("/usr/lib/python3/"):
                say(f"  note: NumPy {np_version} comes from the venv ({np_file}), not from apt")
            with timer.step("doctor"):
                doctor = in_root(root, f"{fer} doctor --output {ROOT_WORK}/doctor", check=False)
                report["doctor"] = {"exit": doctor.returncode,
                                    "lines": [l for l in doctor.stdout.splitlines() if l.startswith("[")]}
                if doctor.returncode != 0 or "[FAIL]" in doctor.stdout:
                    problems.append(f"doctor failed in the emulated Pi OS:\n{doctor.stdout}{doctor.stderr}")
                for name in ("opencv", "haar cascade", "tflite runtime", "model", "video"):
                    if not re.search(rf"^\[  ok\] {name} ", doctor.stdout, re.MULTILINE):
                        problems.append(f"doctor: '{name}' is not ok in the emulated Pi OS")
            sample = f"{ROOT_PROJECT}/samples/sample_faces.mp4"
            for name, extra in (("run (adaptive, with video)", []), ("run --every 1 --no-video", ["--every", "1", "--no-video"])):
                tag = "every1" if extra else "adaptive"
                with timer.step(name):
                    in_root(root, f"{fer} run --source {sample} --output {ROOT_WORK}/{tag} {shlex.join(extra)}")
                    host_cmd(host_bin, "run", "--source", str(REPO / "samples/sample_faces.mp4"),
                             "--output", str(host_work / tag), *extra)
                    compare_rows(name, read_csv_rows(host_work / tag / "csv"),
                                 read_csv_rows(work / tag / "csv"), report, problems)
                    if not extra:
                        videos = [p for p in (work / tag / "video").glob("*") if p.stat().st_size > 0]
                        report[name]["pi_video_files"] = len(videos)
                        if not videos:
                            problems.append(f"{name}: no video written in the emulated Pi OS")
            with timer.step("detect"):
                photos = sorted(inputs["photos"].glob("*.jpg"))
                pi_detect = in_root(root, f"{fer} detect " + " ".join(
                    f"{ROOT_WORK}/inputs/photos/{p.name}" for p in photos))
                host_detect = host_cmd(host_bin, "detect", *map(str, photos))
                compare_rows("detect", detect_rows(json.loads(host_detect.stdout)),
                             detect_rows(json.loads(pi_detect.stdout)), report, problems)
            if inputs["faces"] is not None:
                with timer.step("evaluate"):
                    model = "models/fer_default.tflite"
                    pi_eval = json.loads(in_root(root, f"cd {ROOT_PROJECT} && {fer} evaluate {model} "
                                                       f"{ROOT_WORK}/inputs/faces --json").stdout)
                    host_eval = json.loads(host_cmd(host_bin, "evaluate", model,
                                                    str(inputs["faces"]), "--json").stdout)
                    for result in (pi_eval, host_eval):
                        result.pop("dataset", None)  # the folder's path, different by design
                    host_cal, pi_cal = host_eval.pop("calibration", {}), pi_eval.pop("calibration", {})
                    differences = json_differences(host_eval, pi_eval)
                    cal_diff = {k: round(abs(host_cal[k] - pi_cal.get(k, float("inf"))), 6)
                                for k in host_cal if isinstance(host_cal[k], float)}
                    report["evaluate"] = {"faces": host_eval.get("samples"), "accuracy": host_eval.get("accuracy"),
                                          "counts_identical": not differences,
                                          "confusion": host_eval.get("confusion"),
                                          "calibration_host": host_cal, "calibration_pi": pi_cal}
                    problems += [f"evaluate: {d}" for d in differences[:20]]
                    problems += [f"evaluate: calibration {k} differs by {d} (at most {CALIBRATION_TOLERANCE})"
                                 for k, d in cal_diff.items() if d > CALIBRATION_TOLERANCE]
            with timer.step("install-service --dry-run, its steps, systemd-analyze verify, the service's command"):
                service_check(root, fer, sample, report, problems)
            if break_numpy:
                with timer.step("a broken venv: NumPy 2 in front of apt's NumPy 1.x"):
                    broken_venv_check(root, venv, report, problems)
    finally:
        shutil.rmtree(host_work, ignore_errors=True)
        lock.close()
    print(json.dumps(report, indent=2))
    say(f"{suite}: times (emulated through qemu-user: NOT Raspberry Pi timings)")
    for name, seconds in timer.steps:
        print(f"  {seconds:7.1f} s  {name}")
    if skipped:
        say(f"not installed (the Raspberry Pi archive only, not Debian): {' '.join(skipped)}")
    if inputs.get("note"):
        say(inputs["note"])
    total = time.monotonic() - started
    if problems:
        say(f"{suite}: FAILED, {len(problems)} difference(s) or problem(s) ({total:.0f} s):")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    say(f"{suite}: passed in {total:.0f} s ({'cold: root built now' if built else 'warm: cached root'})")
    return 0


def service_check(root: Path, fer: str, sample: str, report: dict, problems: list[str]) -> None:
    """The dry run's steps, carried out as printed (but systemctl: no systemd runs in a chroot)."""
    in_root(root, "userdel fer-edge 2>/dev/null; rm -rf /etc/fer-edge /etc/systemd/system/fer-edge.service "
                  "/var/lib/fer-edge; true")
    dry = in_root(root, f"{fer} install-service --dry-run")
    steps = [line.strip() for line in dry.stdout.splitlines()[1:] if line.strip()]
    report["install-service"] = {"steps": steps}
    doable = [s for s in steps if not s.startswith(("systemctl", "#"))]
    if not any(s.startswith("useradd") for s in doable) or not any(s.startswith("sed") for s in doable):
        problems.append(f"install-service --dry-run: expected useradd and sed steps, got {steps}")
        return
    in_root(root, " && ".join(doable))
    verify = in_root(root, "systemd-analyze verify /etc/systemd/system/fer-edge.service", check=False)
    noise = [l for l in (verify.stdout + verify.stderr).splitlines() if "fer-edge.service" in l]
    report["systemd-analyze verify"] = {"exit": verify.returncode, "lines": noise}
    if verify.returncode != 0 or noise:
        problems.append(f"systemd-analyze verify: exit {verify.returncode}\n{verify.stdout}{verify.stderr}")
    unit = (root / "etc/systemd/system/fer-edge.service").read_text()
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.MULTILINE).group(1)
    # The unit's command as its user, on the sample; systemd's StateDirectory= would make this dir.
    in_root(root, "install -d -o fer-edge -g fer-edge /var/lib/fer-edge")
    ran = in_root(root, f"cd /var/lib/fer-edge && {exec_start} --source {sample} --max-frames 60 --no-video",
                  user="fer-edge", check=False)
    owners = in_root(root, "find /var/lib/fer-edge -name '*.csv' -user fer-edge | wc -l").stdout.strip()
    report["service command as fer-edge"] = {"exit": ran.returncode, "csv_files_owned_by_fer_edge": int(owners)}
    if ran.returncode != 0 or owners == "0":
        problems.append(f"the unit's ExecStart as user fer-edge: exit {ran.returncode}, "
                        f"{owners} CSV file(s) in /var/lib/fer-edge\n{ran.stderr[-2000:]}")


def broken_venv_check(root: Path, venv: str, report: dict, problems: list[str]) -> None:
    """What the issue met: NumPy 2 in the venv in front of apt's 1.x. doctor must say the fix in one
    line (NumPy's warning kept out), and the fix it says must repair the venv.

    On a copy of the venv (run through its own python, so sys.prefix is the copy), which keeps
    the venv itself as the README made it, for the next run to reuse."""
    broken_venv = f"{venv}-numpy2"
    fer = f"{broken_venv}/bin/python -m fer_edge"
    in_root(root, f"rm -rf {broken_venv} && cp -a {venv} {broken_venv}")
    try:
        _broken_venv_check(root, broken_venv, fer, report, problems)
    finally:
        in_root(root, f"rm -rf {broken_venv}")


def _broken_venv_check(root: Path, venv: str, fer: str, report: dict, problems: list[str]) -> None:
    in_root(root, f"{venv}/bin/python -m pip install -q 'numpy>=2'")
    broken = in_root(root, f"{fer} doctor", check=False)
    output = broken.stdout + broken.stderr
    fixes = [line for line in broken.stdout.splitlines() if line.startswith("fix: ")]
    report["broken venv doctor"] = {"exit": broken.returncode, "fix_lines": fixes,
                                    "numpy_warning_printed": "compiled using NumPy 1.x" in output,
                                    "output": output.splitlines()}
    if broken.returncode != 1 or len(fixes) != 1 or "'numpy<2'" not in fixes[0]:
        problems.append(f"broken venv: doctor should exit 1 with one fix line naming numpy<2:\n{output}")
        return
    if "compiled using NumPy 1.x" in output:
        problems.append("broken venv: doctor printed NumPy's long warning")
    command = fixes[0].split("; ", 1)[1]
    in_root(root, command.replace(" -m pip install ", " -m pip install -q ", 1))
    repaired = in_root(root, f"{fer} doctor", check=False)
    report["broken venv doctor"]["after_fix_exit"] = repaired.returncode
    if repaired.returncode != 0:
        problems.append(f"broken venv: doctor's fix `{command}` did not repair it:\n{repaired.stdout}")


def venv_key(route: dict, root: Path) -> str:
    """A venv is reused while the root, setup.cfg and the README's lines are the same."""
    text = json.dumps([root.name, route["setup"], (REPO / "setup.cfg").read_text()])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def changed_since(rev: str) -> bool | None:
    """Whether setup.cfg or the README's Pi section differ from `rev`; None if rev is unknown."""
    def at(path: str) -> str | None:
        done = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else None
    old_cfg, old_readme = at("setup.cfg"), at("README.md")
    if old_cfg is None or old_readme is None:
        return None
    new_readme = (REPO / "README.md").read_text()
    try:
        old_section = pi_section(old_readme)
    except CheckFailed:
        return True
    return old_cfg != (REPO / "setup.cfg").read_text() or old_section != pi_section(new_readme)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", choices=SUITES, default="bookworm")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("FER_EDGE_PI_CACHE", "/var/cache/fer-edge-pi-check")))
    p.add_argument("--host-bin", type=Path, default=REPO / ".venv/bin", help="the host venv's bin/")
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    p.add_argument("--no-broken-venv", action="store_true", help="skip the NumPy 2 repair check")
    p.add_argument("--fresh-venv", action="store_true",
                   help=f"make the venv afresh even if a cached one fits (it is anyway after {VENV_MAX_AGE_DAYS} days)")
    p.add_argument("--only-if-changed-since", metavar="REV",
                   help="skip (exit 0) unless setup.cfg or the README's Pi section differ from REV")
    args = p.parse_args(argv)
    try:
        if args.only_if_changed_since:
            changed = changed_since(args.only_if_changed_since)
            if changed is False:
                say(f"{args.suite} skipped: setup.cfg and the README's Pi section are as in {args.only_if_changed_since}")
                return 0
            say(f"{args.suite}: " + ("setup.cfg or the README's Pi section changed" if changed
                                      else f"{args.only_if_changed_since} unknown (shallow clone?): checking"))
        if os.geteuid() != 0:
            raise CannotEmulate("needs root (debootstrap, chroot, mount): sudo make pi-check")
        if not (args.host_bin / "fer-edge").exists():
            raise CheckFailed(f"{args.host_bin}/fer-edge not found: make .venv/.device-installed first")
        shared = args.shared if args.shared.is_dir() else None
        # The broken-venv case exists where apt's OpenCV is built for NumPy 1.x: bookworm.
        return check(args.suite, args.cache, args.host_bin, shared,
                     break_numpy=not args.no_broken_venv and args.suite == "bookworm",
                     fresh_venv=args.fresh_venv)
    except CannotEmulate as exc:
        say(f"NOT RUN: {exc}")
        return 69
    except CheckFailed as exc:
        say(f"FAILED: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
