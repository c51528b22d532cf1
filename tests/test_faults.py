"""Real faults against the real daemon: a real small file system (tmpfs) filled during a run and
full at a restart, SIGKILL at random moments, files cut short. Nothing here is faked.

Mounting a tmpfs needs root (CI runs as root); elsewhere those tests skip, saying why.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO_ROOT as ROOT
from fer_edge.sinks import (DiskBudget, Retention, SegmentedVideoWriter, decodes, pyav_available,
                            recover_partials)
from fer_edge.summary import summarise

SAMPLE = ROOT / "samples" / "sample_faces.mp4"
SAMPLE_FPS = 15.0
MiB = 1024 ** 2


def fer_edge_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fer_edge", *args]


@pytest.fixture
def small_fs(tmp_path: Path):
    """mount(size) -> a real tmpfs of that size, unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs for a real full disk needs root (CI runs as root)")
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): no real small file system")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def fill(directory: Path, leave: int = 0) -> Path:
    """Another program's file taking every free byte but `leave`: a real ENOSPC for the next writes."""
    filler = directory / "someone-elses.bin"
    with open(filler, "wb") as fh:
        block = b"\0" * 65536
        while True:
            st = os.statvfs(directory)
            room = st.f_bavail * st.f_frsize - leave
            if room <= 0:
                break
            try:
                fh.write(block[:min(len(block), room)])
                fh.flush()
            except OSError:
                break
    return filler


def csv_rows(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*.csv")):
        with path.open(newline="") as fh:
            rows += list(csv.DictReader(fh))
    return rows


def assert_no_cut_row(folder: Path) -> None:
    """Every CSV file ends with a whole row and every row is readable by the strict reader."""
    files = sorted(folder.glob("*.csv"))
    for path in files:
        data = path.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"{path.name} ends in a cut row: {data[-60:]!r}"
    if files:
        assert summarise(files).skipped == {}


def assert_every_final_video_decodes(folder: Path) -> None:
    for path in folder.iterdir():
        assert ".partial" not in path.name, f"partial left behind: {path.name}"
        assert decodes(path), f"{path.name} has a final name but does not decode"


def decoded_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


# -- the disk budget on a real small file system ---------------------------------------------------
HEADER = ("timestamp,frame,source,face_id,x,y,w,h,emotion,confidence,"
          "p_angry,p_disgust,p_fear,p_happy,p_neutral,p_sad,p_surprise\n")


def make_files(directory: Path, prefix: str, ext: str, count: int, size: int) -> list[Path]:
    """Files of an earlier run, oldest first: whole rows for CSV; for video, the sample (0.8 MiB) at
    its real size, whatever `size` says."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = directory / f"{prefix}-2020010{i + 1}T000000Z-0000{ext}"
        if ext == ".csv":
            row = f"2020-01-0{i + 1}T00:00:00.000+00:00,1,cam,1,1,1,1,1,happy,0.9000" + ",0.0100" * 7 + "\n"
            path.write_text(HEADER + row * max(1, (size - len(HEADER)) // len(row)))
        else:
            shutil.copyfile(SAMPLE, path)
        paths.append(path)
    return paths


def test_under_the_floor_the_oldest_video_goes_first_and_csv_only_under_the_lower_floor(small_fs) -> None:
    fs = small_fs(8 * MiB)
    videos = make_files(fs / "video", "fer", ".mp4", 4, 1 * MiB)
    logs = make_files(fs / "csv", "emotions", ".csv", 3, 256 * 1024)
    fill(fs)
    budget = DiskBudget(video_dir=fs / "video", csv_dir=fs / "csv", video_floor=int(1.5 * MiB),
                        csv_floor=512 * 1024)
    budget.startup()
    assert [p.exists() for p in videos] == [False, False, True, True]  # the two oldest made 2 MiB free
    assert all(p.exists() for p in logs)
    assert budget.free is not None and budget.free >= 1.5 * MiB

    (fs / "someone-elses.bin").unlink()
    fill(fs, leave=256 * 1024)  # now under the lower floor too: every video, then the oldest log
    budget.make_room()
    assert not any(p.exists() for p in videos)
    assert [p.exists() for p in logs] == [True, True, True]  # 2 MiB from the videos were enough
    (fs / "someone-elses.bin").unlink()
    fill(fs, leave=128 * 1024)
    budget.make_room()
    assert [p.exists() for p in logs] == [False, False, True]
    assert budget.deleted_videos == 4 and budget.deleted_csv == 2


def test_retention_by_age_keeps_the_open_file_and_younger_ones(tmp_path: Path) -> None:
    now = time.time()
    old, young, open_one = make_files(tmp_path, "emotions", ".csv", 3, 10)
    for path, days in ((old, 40), (young, 5), (open_one, 60)):
        os.utime(path, (now - days * 86400, now - days * 86400))
    deleted = Retention(max_age_days=30).enforce(tmp_path, "emotions-*.csv", protect=open_one, now=now)
    assert deleted == [old]
    assert young.exists() and open_one.exists()


def test_partials_of_a_crash_are_named_if_they_decode_removed_if_not_and_overwrite_nothing(tmp_path: Path) -> None:
    # the crash's state: a copy of a segment while it is being written (as the guide's check did)
    writer = SegmentedVideoWriter(tmp_path / "made", (160, 120), 10.0, segment_seconds=60.0, retention=Retention())
    rng = np.random.default_rng(0)
    for i in range(25):
        writer.write(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    deadline = time.monotonic() + 60
    while writer.frames_written < 25 and time.monotonic() < deadline:
        time.sleep(0.01)
    (open_partial,) = (tmp_path / "made").glob("*.partial.*")
    crashed = open_partial.read_bytes()
    writer.close()
    (segment,) = writer.segments
    video = tmp_path / "video"
    video.mkdir()
    taken = video / f"fer-20260101T000000Z-0000{segment.suffix}"
    taken.write_bytes(segment.read_bytes())
    good = video / f"fer-20260101T000000Z-0000.partial{segment.suffix}"  # a finished file has its name
    good.write_bytes(crashed)
    bad = video / "fer-20260101T000100Z-0000.partial.mp4"
    bad.write_bytes(os.urandom(5000))
    before = taken.read_bytes()
    recovered, removed = recover_partials(video, "fer-[0-9]*T[0-9]*Z-[0-9]*.*")
    assert not bad.exists() and not good.exists()
    assert taken.read_bytes() == before
    if writer.pyav:  # fragmented MP4 decodes up to the cut: named, beside the file that had its name
        assert removed == [bad]
        assert recovered == [video / "fer-20260101T000000Z-0001.mp4"]
        assert 10 <= decoded_frames(recovered[0]) < 25  # whole fragments: a keyframe a second
    else:  # OpenCV's mp4v is unreadable until closed
        assert removed == [good, bad] and recovered == []


# -- a real run filling a real small disk --------------------------------------------------------
def run_json(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return json.loads(done.stdout)


def test_disk_filled_during_a_run_ends_the_segment_cleanly_and_logging_goes_on(small_fs) -> None:
    fs = small_fs(6 * MiB)
    out = fs / "out"
    proc = subprocess.Popen(
        fer_edge_cmd("run", "--source", str(SAMPLE), "--realtime", "--output", str(out), "--json",
                     "--segment-seconds", "3", "--set", "video.min_free_bytes=0", "--set", "csv.min_free_bytes=0",
                     "--set", "csv.flush_seconds=0.5"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any((out / "csv").glob("*.csv")) or len(csv_rows(out / "csv")) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before logging"
            time.sleep(0.05)
        filler = fill(fs)  # the disk is full from here on
        time.sleep(2.5)  # rows and frames keep coming meanwhile: they must wait or be counted
        filler.unlink()  # an administrator frees space
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = run_json(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    assert "No space left on device" in stderr  # said, not silent
    assert_no_cut_row(out / "csv")
    assert_every_final_video_decodes(out / "video")
    rows = csv_rows(out / "csv")
    assert summary["csv_rows_dropped"] == 0
    assert len(rows) == summary["csv_rows"]  # every row produced is on disk, whole
    assert int(rows[-1]["frame"]) >= 140  # logging went on to the end of the 150-frame video
    assert summary["video_frames_lost"] > 0  # the full disk cost video, and it was counted
    assert summary["video_segments"], "recording resumed after space came back"


def test_restart_on_a_full_disk_frees_space_with_retention_and_keeps_logging(small_fs) -> None:
    fs = small_fs(8 * MiB)
    out = fs / "out"
    old_videos = make_files(out / "video", "fer", ".mp4", 5, 1 * MiB)
    old_logs = make_files(out / "csv", "emotions", ".csv", 2, 64 * 1024)
    with open(old_logs[-1], "ab") as fh:
        fh.write(b"2020-01-02T00:00:00.000+00:00,5,x.mp4,1,1,1,1,1,happ")  # the crash's cut row
    fill(out)  # a full disk, as the crash left it
    done = subprocess.run(
        fer_edge_cmd("run", "--source", str(SAMPLE), "--output", str(out), "--json", "--segment-seconds", "4",
                     "--set", "video.min_free_bytes=2M", "--set", "csv.min_free_bytes=512K"),
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    summary = run_json(done)  # not a codec error: space was freed before anything needed it
    assert [p.exists() for p in old_videos][:2] == [False, False]  # the oldest went first
    assert all(p.exists() for p in old_logs)  # logs only go under the lower floor
    assert old_logs[-1].read_bytes().endswith(b"\n")  # the cut row was cut off
    assert summary["csv_rows"] > 0 and summary["csv_rows_dropped"] == 0
    assert_no_cut_row(out / "csv")
    assert_every_final_video_decodes(out / "video")


# -- kill -9 at random moments ---------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.iterdir() if ".partial" not in p.name}


def wall(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def test_sigkill_at_random_moments_loses_seconds_and_a_restart_recovers_and_overwrites_nothing(tmp_path: Path) -> None:
    if not pyav_available():
        pytest.skip("PyAV is not installed: without it a kill loses the open OpenCV segment (up to 10 s)")
    out = tmp_path / "out"
    sync_seconds = 2.0
    # the longest stretch of the sample without a logged face: rows cannot be lost where there are none
    reference = subprocess.run(fer_edge_cmd("run", "--source", str(SAMPLE), "--output", str(tmp_path / "ref"),
                                            "--no-video"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    frames = sorted({int(r["frame"]) for r in csv_rows(tmp_path / "ref" / "csv")})
    face_gap = max(b - a for a, b in zip([0] + frames, frames)) / SAMPLE_FPS
    rng = random.Random(16)
    losses = []
    for attempt in range(3):
        before = snapshot(out / "video") if (out / "video").exists() else {}
        rows_before = len(csv_rows(out / "csv")) if (out / "csv").exists() else 0
        proc = subprocess.Popen(fer_edge_cmd("run", "--source", str(SAMPLE), "--realtime", "--output", str(out),
                                             "--set", "csv.flush_seconds=1", "--set", f"csv.sync_seconds={sync_seconds}"),
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while len(csv_rows(out / "csv")) <= rows_before if (out / "csv").exists() else True:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.05)
            time.sleep(rng.uniform(0.2, 6.0))
            assert proc.poll() is None, "the run ended before the kill"
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = time.time()
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL
        stderr = proc.stderr.read() if proc.stderr else ""
        # this restart (or the last run below) recovered the previous run's partial ...
        assert before.items() <= snapshot(out / "video").items() or not before, "a restart overwrote a file"
        if attempt:
            assert "recovered" in stderr or "removed" in stderr, stderr
        rows = csv_rows(out / "csv")[rows_before:]
        assert rows, "rows logged before the kill are on disk"
        first = rows[0]
        start = wall(first["timestamp"]) - int(first["frame"]) / SAMPLE_FPS  # --realtime: frame i shows at start + i/fps
        row_loss = killed_at - wall(rows[-1]["timestamp"])
        losses.append((attempt, round(killed_at - start, 1), round(row_loss, 2)))
        # the bound: csv.sync_seconds, plus a stretch with no face to log, plus one loop iteration
        assert row_loss <= sync_seconds + face_gap + 1.0, losses
    final = subprocess.run(fer_edge_cmd("run", "--source", str(SAMPLE), "--output", str(out), "--max-frames", "5"),
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert "recovered" in final.stderr, final.stderr
    assert_every_final_video_decodes(out / "video")
    assert_no_cut_row(out / "csv")
    # video: every killed run left one segment that decodes, short of the kill by well under 10 s
    segments = sorted((out / "video").iterdir())
    assert len(segments) == 4  # three recovered, one finished by the last run
    for (attempt, ran, _), segment in zip(losses, segments):
        recorded = decoded_frames(segment) / SAMPLE_FPS
        assert ran - recorded <= 10.0, (attempt, ran, recorded)


# -- reading strictly --------------------------------------------------------------------------------
def test_summary_skips_a_cut_row_instead_of_inventing_an_emotion(tmp_path: Path) -> None:
    run = subprocess.run(fer_edge_cmd("run", "--source", str(SAMPLE), "--output", str(tmp_path), "--no-video"),
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (log,) = sorted((tmp_path / "csv").glob("*.csv"))
    with open(log, "a") as fh:
        fh.write("2026-12-04T17:23:30.111+00:00,5,x.mp4,1,1,1,1,1,happ\n")  # the cut row
        fh.write(",".join(["2026-12-04T17:23:31.000+00:00", "7", "x.mp4", "1", "1", "1", "1", "1", "joy", "0.9"]
                          + ["0.1"] * 7 + ["0.467"]) + "\n")  # whole, but an emotion the file has no column for
        fh.write(",".join(["2026-12-04T17:23:32.000+00:00", "seven", "x.mp4", "1", "1", "1", "1", "1", "sad",
                           "0.9"] + ["0.1"] * 7 + ["0.533"]) + "\n")
    done = subprocess.run(fer_edge_cmd("summary", str(tmp_path / "csv"), "--by", "all", "--json"),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["emotions"] == ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert report["skipped_rows"] == {str(log): 3}
    assert "skipped 3 unreadable row(s)" in done.stderr and "unknown emotion" in done.stderr


def test_a_video_file_cut_short_is_reported_as_short(tmp_path: Path) -> None:
    # an MJPG AVI whose header announces every frame; then cut in half, as a crash would
    cap = cv2.VideoCapture(str(SAMPLE))
    whole = tmp_path / "whole.avi"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), SAMPLE_FPS, (480, 360))
    for _ in range(60):
        ok, image = cap.read()
        assert ok
        writer.write(image)
    writer.release()
    cap.release()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    done = subprocess.run(fer_edge_cmd("run", "--source", str(cut), "--output", str(tmp_path / "out"), "--no-video"),
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 65, done.stderr
    assert "of the 60 frames its header announces" in done.stderr and "short" in done.stderr
    ok = subprocess.run(fer_edge_cmd("run", "--source", str(whole), "--output", str(tmp_path / "out2"), "--no-video"),
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "the file is short" not in ok.stderr, ok.stderr
