"""Sinks against real files: OpenCV encodes and decodes the segments, CSVs are read back."""
from __future__ import annotations

import csv
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_edge.errors import OutputError, Unavailable
from fer_edge.labels import EMOTIONS, FER2013_ORDER
from fer_edge.records import FaceResult
from fer_edge.sinks import Display, Retention, RollingCsvLog, SegmentedVideoWriter, gui_available

W, H = 160, 120
SEGMENT_NAME = re.compile(r"^fer-\d{8}T\d{6}Z-\d{4}\.mp4$")
CSV_NAME = re.compile(r"^emotions-\d{8}T\d{6}Z-\d{4}\.csv$")


def frames(n: int) -> list[np.ndarray]:
    """Distinct frames (a moving bar) so the encoder has something to do."""
    out = []
    for i in range(n):
        frame = np.full((H, W, 3), 40, np.uint8)
        frame[:, (i * 7) % (W - 10):(i * 7) % (W - 10) + 10] = (0, 200, 255)
        out.append(frame)
    return out


def decoded_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    return count


def record(directory: Path, n: int, retention: Retention | None = None, **kwargs) -> SegmentedVideoWriter:
    writer = SegmentedVideoWriter(directory, (W, H), 10.0, segment_seconds=2.0,
                                  retention=retention or Retention(), **kwargs)
    for frame in frames(n):
        writer.write(frame)
    writer.close()
    return writer


# -- Retention -----------------------------------------------------------------------------------
def make_files(directory: Path, sizes: list[int], prefix: str = "fer") -> list[Path]:
    paths = []
    for i, size in enumerate(sizes):
        path = directory / f"{prefix}-20000101T0000{i:02d}Z-{i:04d}.mp4"
        path.write_bytes(b"x" * size)
        paths.append(path)
    return paths


def test_retention_by_count_deletes_oldest_and_spares_other_files(tmp_path: Path) -> None:
    paths = make_files(tmp_path, [10] * 5)
    other = make_files(tmp_path, [10] * 2, prefix="other")
    deleted = Retention(max_files=2).enforce(tmp_path, "fer-*.mp4")
    assert deleted == paths[:3]
    assert sorted(tmp_path.glob("fer-*.mp4")) == paths[3:]
    assert all(p.exists() for p in other)


def test_retention_by_bytes_counts_but_never_deletes_the_protected_file(tmp_path: Path) -> None:
    paths = make_files(tmp_path, [100, 100, 100, 100])
    deleted = Retention(max_bytes=250).enforce(tmp_path, "fer-*.mp4", protect=paths[0])
    # 400 bytes: the oldest deletable files go until 200 <= 250; the protected oldest one stays
    assert deleted == paths[1:3]
    assert sorted(tmp_path.glob("fer-*.mp4")) == [paths[0], paths[3]]


def test_retention_min_free_bytes_deletes_all_but_protected_when_disk_cannot_satisfy(tmp_path: Path) -> None:
    paths = make_files(tmp_path, [10, 10, 10])
    huge = shutil.disk_usage(tmp_path).total * 2
    deleted = Retention(min_free_bytes=huge).enforce(tmp_path, "fer-*.mp4", protect=paths[2])
    assert deleted == paths[:2]
    assert paths[2].exists()


def test_retention_without_limits_keeps_everything(tmp_path: Path) -> None:
    paths = make_files(tmp_path, [10, 10])
    assert Retention().enforce(tmp_path, "fer-*.mp4") == []
    assert all(p.exists() for p in paths)


# -- SegmentedVideoWriter ------------------------------------------------------------------------
def test_segments_by_media_time_are_complete_decodable_files(tmp_path: Path) -> None:
    writer = record(tmp_path, 55)  # 2 s at 10 fps = 20 frames a segment
    assert writer.frames_written == 55
    assert len(writer.segments) == 3
    assert [p.name for p in writer.segments] == sorted(p.name for p in writer.segments)
    assert all(SEGMENT_NAME.match(p.name) for p in writer.segments)
    assert sorted(tmp_path.iterdir()) == sorted(writer.segments)  # no partial or probe file left
    assert [decoded_frames(p) for p in writer.segments] == [20, 20, 15]


def test_sinks_remember_only_the_newest_file_names_over_a_long_run(tmp_path: Path, monkeypatch) -> None:
    # A daemon runs for months: the names kept for the run summary must not grow without bound.
    import fer_edge.sinks as sinks
    monkeypatch.setattr(sinks, "RECENT_FILES", 2)
    writer = record(tmp_path / "video", 55)  # 3 segments
    assert writer.finished == 3 and len(writer.segments) == 2
    assert writer.segments == sorted((tmp_path / "video").iterdir())[1:]
    log = csv_log(tmp_path / "csv", Clock(), max_bytes=700)
    for i in range(40):
        log.write(1_800_000_000.0 + i, i, [face(i)])
    log.close()
    assert log.opened > 3 and log.files == sorted((tmp_path / "csv").iterdir())[-2:]


def test_new_segment_cuts_after_the_queued_frames(tmp_path: Path) -> None:
    """SIGHUP's video half: the open segment ends where it was asked to, the next frame opens a
    new one, and asking again with no segment open makes no empty file."""
    writer = SegmentedVideoWriter(tmp_path, (W, H), 10.0, segment_seconds=2.0, retention=Retention())
    clip = frames(12)
    for frame in clip[:7]:
        writer.write(frame)
    writer.new_segment()
    writer.new_segment()
    for frame in clip[7:]:
        writer.write(frame)
    writer.close()
    writer.new_segment()  # after close: nothing to cut, no error
    assert [decoded_frames(p) for p in writer.segments] == [7, 5]
    assert sorted(tmp_path.iterdir()) == sorted(writer.segments)


def test_without_pyav_auto_falls_back_to_mp4v_in_segments_a_crash_can_afford(tmp_path: Path, monkeypatch) -> None:
    import fer_edge.sinks as sinks
    monkeypatch.setattr(sinks, "pyav_available", lambda: False)
    writer = SegmentedVideoWriter(tmp_path, (W, H), 10.0, segment_seconds=300.0, retention=Retention())
    assert (writer.codec, writer.pyav, writer.frames_per_segment) == ("mp4v", False, 100)  # 10 s, not 300
    for frame in frames(105):
        writer.write(frame)
    writer.close()
    assert [decoded_frames(p) for p in writer.segments] == [100, 5]
    with pytest.raises(Unavailable, match="PyAV"):
        SegmentedVideoWriter(tmp_path, (W, H), 10.0, segment_seconds=2.0, codec="h264", retention=Retention())


def test_mjpg_segments_use_avi(tmp_path: Path) -> None:
    writer = record(tmp_path, 25, codec="MJPG")
    assert [p.suffix for p in writer.segments] == [".avi", ".avi"]
    assert sum(decoded_frames(p) for p in writer.segments) == 25


def test_video_retention_by_count(tmp_path: Path) -> None:
    writer = record(tmp_path, 55, Retention(max_files=2))
    assert writer.deleted == 1
    assert sorted(tmp_path.iterdir()) == writer.segments[1:]


def test_video_retention_by_bytes_keeps_the_newest_that_fit(tmp_path: Path) -> None:
    sizes = [p.stat().st_size for p in record(tmp_path / "free", 55).segments]
    writer = record(tmp_path / "capped", 55, Retention(max_bytes=sizes[1] + sizes[2]))
    assert sorted((tmp_path / "capped").iterdir()) == writer.segments[1:]
    assert writer.deleted == 1


def test_newest_segment_survives_a_byte_limit_it_alone_exceeds(tmp_path: Path) -> None:
    writer = record(tmp_path, 45, Retention(max_bytes=1))
    assert list(tmp_path.iterdir()) == [writer.segments[-1]]
    assert decoded_frames(writer.segments[-1]) == 5


def test_old_segments_from_an_earlier_run_are_pruned_too(tmp_path: Path) -> None:
    old = make_files(tmp_path, [10, 10, 10])  # names from 2000 sort before today's
    writer = record(tmp_path, 20, Retention(max_files=2))
    assert sorted(tmp_path.iterdir()) == [old[2], writer.segments[0]]


def test_video_directory_removed_mid_run_is_made_again_and_recording_goes_on(tmp_path: Path) -> None:
    directory = tmp_path / "video"
    writer = SegmentedVideoWriter(directory, (W, H), 10.0, segment_seconds=2.0, retention=Retention())
    clip = frames(45)
    for frame in clip[:20]:
        writer.write(frame)
    deadline = time.monotonic() + 60
    while not writer.segments and time.monotonic() < deadline:  # first segment finished
        time.sleep(0.01)
    assert len(writer.segments) == 1
    shutil.rmtree(directory)  # an administrator cleaning up
    for frame in clip[20:]:
        writer.write(frame)
    writer.close()
    assert writer.frames_lost == 0
    assert [decoded_frames(p) for p in writer.segments[1:]] == [20, 5]
    assert sorted(directory.iterdir()) == writer.segments[1:]


def test_unwritable_codec_names_the_codec_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"'ZZZZ'.*mp4v or MJPG"):
        SegmentedVideoWriter(tmp_path, (W, H), 10.0, segment_seconds=2.0, codec="ZZZZ", retention=Retention())
    assert list(tmp_path.iterdir()) == []  # the probe file is gone


def test_directory_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputError, match="cannot create video directory"):
        SegmentedVideoWriter(blocker / "video", (W, H), 10.0, segment_seconds=2.0, retention=Retention())


def test_wrong_frame_size_is_refused(tmp_path: Path) -> None:
    writer = SegmentedVideoWriter(tmp_path, (W, H), 10.0, segment_seconds=2.0, retention=Retention())
    with pytest.raises(OutputError, match="frame"):
        writer.write(np.zeros((H * 2, W * 2, 3), np.uint8))
    writer.close()
    assert writer.segments == []


# -- RollingCsvLog -------------------------------------------------------------------------------
class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


FER_PROBS = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.79], np.float32)  # FER2013 order: neutral last


def face(face_id: int = 1, probs: np.ndarray = FER_PROBS, label: str = "neutral") -> FaceResult:
    return FaceResult(face_id=face_id, box=(10, 20, 30, 40), probabilities=probs, label=label,
                      confidence=float(probs.max()))


def csv_log(directory: Path, clock: Clock, **kwargs) -> RollingCsvLog:
    options = dict(labels=FER2013_ORDER, source="/dev/video0", max_bytes=0, rotate_seconds=0,
                   retention=Retention(), clock=clock)
    options.update(kwargs)
    return RollingCsvLog(directory, **options)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_columns_follow_alphabetical_emotions_whatever_the_model_order(tmp_path: Path) -> None:
    clock = Clock()
    log = csv_log(tmp_path, clock, source="/videos/a,b.mp4")
    log.write(1_800_000_000.123, 7, [face(3)])
    log.close()
    with open(log.files[0], newline="") as fh:
        header = next(csv.reader(fh))
    assert header == ["timestamp", "frame", "source", "face_id", "x", "y", "w", "h", "emotion", "confidence"] + [
        f"p_{e}" for e in EMOTIONS] + ["media_s"]  # media_s came last, so older readers read on
    (row,) = read_rows(log.files[0])
    assert row["p_neutral"] == "0.7900" and row["p_sad"] == "0.0500" and row["p_surprise"] == "0.0600"
    assert row["p_angry"] == "0.0100" and row["p_happy"] == "0.0400"
    assert (row["frame"], row["face_id"], row["x"], row["h"]) == ("7", "3", "10", "40")
    assert row["emotion"] == "neutral" and row["confidence"] == "0.7900"
    assert row["source"] == "/videos/a,b.mp4"  # quoted, not split
    assert row["media_s"] == ""  # a camera's row: no position in a file


def test_a_file_row_carries_its_position_in_the_file(tmp_path: Path) -> None:
    log = csv_log(tmp_path, Clock(), source="clip.mp4")
    log.write(1_800_000_000.0 + 4.2, 63, [face(1), face(2)], media_s=4.2)
    log.close()
    rows = read_rows(log.files[0])
    assert [r["media_s"] for r in rows] == ["4.200", "4.200"] and rows[0]["frame"] == "63"


def test_timestamps_are_iso8601_with_offset_and_milliseconds(tmp_path: Path) -> None:
    log = csv_log(tmp_path, Clock())
    log.write(1_800_000_000.123, 0, [face()])
    log.close()
    (row,) = read_rows(log.files[0])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", row["timestamp"])
    stamp = datetime.fromisoformat(row["timestamp"])
    assert stamp.utcoffset() is not None
    assert stamp.timestamp() == pytest.approx(1_800_000_000.123, abs=1e-6)


def test_labels_outside_emotions_get_extra_columns_and_missing_ones_stay_empty(tmp_path: Path) -> None:
    log = csv_log(tmp_path, Clock(), labels=("sad", "contempt", "happy"))
    log.write(1_800_000_000.0, 0, [face(probs=np.array([0.2, 0.3, 0.5]), label="happy")])
    log.close()
    (row,) = read_rows(log.files[0])
    assert list(row)[-9:] == [f"p_{e}" for e in EMOTIONS] + ["p_contempt", "media_s"]
    assert (row["p_sad"], row["p_happy"], row["p_contempt"], row["p_angry"]) == ("0.2000", "0.5000", "0.3000", "")


def test_rows_reach_disk_within_flush_seconds_via_tick(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    log = csv_log(tmp_path, clock, flush_seconds=1.0)
    path = log.files[0]
    clock.now = 1000.2
    log.write(clock.now, 1, [face(1), face(2)])
    log.tick(1000.5)
    assert len(read_rows(path)) == 0  # header only, read through another handle
    assert path.read_text().startswith("timestamp,")
    log.tick(1001.0)
    assert [r["face_id"] for r in read_rows(path)] == ["1", "2"]
    assert log.rows_written == 2
    log.close()


def test_size_rotation_puts_a_header_in_every_file_and_loses_no_row(tmp_path: Path) -> None:
    log = csv_log(tmp_path, Clock(), max_bytes=700)
    for i in range(40):
        log.write(1_800_000_000.0 + i, i, [face(i)])
    log.close()
    assert len(log.files) > 3
    assert all(CSV_NAME.match(p.name) for p in log.files)
    assert [p.name for p in log.files] == sorted(p.name for p in log.files)
    for path in log.files:
        assert path.read_text().startswith("timestamp,frame,source,")
        assert path.stat().st_size <= 700
    rows = [r for p in log.files for r in read_rows(p)]
    assert [int(r["frame"]) for r in rows] == list(range(40))
    assert log.rows_written == 40


def test_time_rotation(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    log = csv_log(tmp_path, clock, rotate_seconds=60)
    for t in (1000.0, 1030.0, 1061.0, 1100.0, 1125.0):
        clock.now = t
        log.write(t, int(t), [face()])
    log.close()
    assert [[r["frame"] for r in read_rows(p)] for p in log.files] == [["1000", "1030"], ["1061", "1100"], ["1125"]]


def test_csv_retention_keeps_newest_files_including_the_open_one(tmp_path: Path) -> None:
    log = csv_log(tmp_path, Clock(), max_bytes=500, retention=Retention(max_files=3))
    for i in range(40):
        log.write(1_800_000_000.0, i, [face(i)])
        assert log.path is not None and log.path.exists()
    assert len(log.files) > 5
    assert sorted(tmp_path.glob("*.csv")) == log.files[-3:]
    log.close()


def test_reopen_starts_a_new_file(tmp_path: Path) -> None:
    log = csv_log(tmp_path, Clock())
    log.write(1_800_000_000.0, 1, [face()])
    log.reopen()
    log.write(1_800_000_001.0, 2, [face()])
    log.close()
    assert [[r["frame"] for r in read_rows(p)] for p in log.files] == [["1"], ["2"]]


def test_a_failed_write_leaves_no_cut_row_and_keeps_the_rows_until_they_can_be_written(tmp_path: Path) -> None:
    log = csv_log(tmp_path, Clock(1000.0))
    path = log.files[0]
    for i in range(5):
        log.write(1000.0, i, [face(i)])
    header_size = path.stat().st_size
    # A real write error: the kernel refuses to grow any file past RLIMIT_FSIZE (EFBIG), like a full
    # disk would, after a partial write (CPython ignores SIGXFSZ, so the write just fails).
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (header_size + 150, hard))
    try:
        log.tick(1002.0)  # never raises: the daemon goes on
        assert path.stat().st_size == header_size  # the rows that fitted were truncated back: no cut row
        assert log.rows_waiting == 5 and "csv failing since" in log.status()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    log.tick(1004.0)  # now the rows fit
    assert [r["frame"] for r in read_rows(path)] == ["0", "1", "2", "3", "4"]
    assert log.rows_waiting == 0 and log.rows_dropped == 0 and log.status() == ""
    log.close()


def test_rows_beyond_the_bound_are_dropped_oldest_first_and_counted(tmp_path: Path) -> None:
    log = csv_log(tmp_path, Clock(1000.0), max_pending_rows=3)
    path = log.files[0]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size, hard))
    try:
        for i in range(5):
            log.write(1000.0, i, [face(i)])
            log.tick(1000.0 + 2 * i)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert log.rows_dropped == 2 and "csv rows dropped 2" in log.status()
    log.close()
    assert [r["frame"] for r in read_rows(path)] == ["2", "3", "4"]


def test_directory_that_cannot_be_created_for_csv(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot create CSV directory"):
        csv_log(blocker / "csv", Clock())


# -- Display -------------------------------------------------------------------------------------
@pytest.mark.skipif(gui_available(), reason="this OpenCV has a GUI; the headless error cannot happen")
def test_display_on_headless_opencv_says_what_to_install() -> None:
    with pytest.raises(Unavailable, match=r"opencv-python.*python3-opencv") as info:
        Display()
    assert info.value.exit_code == 69


def test_sinks_import_does_not_need_a_display() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = subprocess.run([sys.executable, "-c", "import fer_edge.sinks"], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr


# -- reading the logs back: fer-edge summary -----------------------------------------------------
def local_hour(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time).astimezone().isoformat()[:13]


def test_summary_counts_per_hour_across_rotated_files_and_reports_a_cut_row(tmp_path: Path) -> None:
    from fer_edge.summary import csv_files, summarise

    start = 1_800_000_000.0 - 1_800_000_000.0 % 3600  # on the hour, so the hours are known
    clock = Clock(start)
    log = csv_log(tmp_path, clock, rotate_seconds=1500)
    happy = np.array([0.01, 0.01, 0.01, 0.9, 0.03, 0.02, 0.02], np.float32)  # FER2013 order
    writes = [(start + 10, "neutral", FER_PROBS), (start + 70, "happy", happy), (start + 130, "happy", happy),
              (start + 2000, "happy", happy), (start + 3700, "neutral", FER_PROBS)]
    for t, label, probs in writes:
        clock.now = t
        log.write(t, int(t), [face(1, probs, label), face(2, probs, label)])
    log.close()
    assert len(log.files) == 3  # rotated twice
    with open(log.files[-1], "a") as fh:  # the newest file, cut mid-row (power lost while writing)
        fh.write("2027-01-15T08:00:0")

    summary = summarise(csv_files([tmp_path]), by="hour")
    first, second = summary.periods
    assert [p.name for p in summary.periods] == [local_hour(start), local_hour(start + 3700)]
    assert (first.analyses, first.emotions["happy"], first.emotions["neutral"]) == (8, 6, 2)
    assert (second.analyses, second.emotions["neutral"]) == (2, 2)
    assert len(first.minutes) == 4 and first.share("happy") == 0.75
    assert summary.skipped == {str(log.files[-1]): 1}  # counted, not silently dropped
    assert summarise(csv_files([tmp_path]), by="all").periods[0].analyses == 10
    later = datetime.fromtimestamp(start + 3000).astimezone().isoformat()[:16]
    assert [p.analyses for p in summarise(csv_files([tmp_path]), by="day", since=later).periods] == [2]

    # Visits: faces logged at +10, +70 and +130 s are one (no pause over 60 s); +2000 and +3700 are two more.
    visits = summarise(csv_files([tmp_path]), by="visit")
    assert [(v.analyses, v.emotions["happy"]) for v in visits.periods] == [(6, 4), (2, 2), (2, 0)]
    assert visits.periods[0].first[:19] == datetime.fromtimestamp(start + 10).astimezone().isoformat()[:19]
    assert visits.periods[0].last[:19] == datetime.fromtimestamp(start + 130).astimezone().isoformat()[:19]
    assert visits.skipped == {str(log.files[-1]): 1}
    assert [v.analyses for v in summarise(csv_files([tmp_path]), by="visit", gap=30).periods] == [2, 2, 2, 2, 2]
    assert visits.table().splitlines()[0].startswith("visit start")


def test_visits_of_video_files_at_their_own_media_times_stay_apart_and_come_in_time_order() -> None:
    """Files are read in name order, but each video file's rows carry that file's media time: a
    later file may be years earlier. A jump back by more than the gap ends a visit, like a pause."""
    from fer_edge.summary import VisitBuilder, stamp_seconds

    def stamp(t: float) -> str:
        return datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")

    builder, visits = VisitBuilder(gap=10), []
    t2026, t2010 = 1_796_600_000.0, 1_293_000_000.0
    for t in [t2026, t2026 + 9, t2010, t2010 + 8, t2026 + 7, t2026 + 8]:  # third file overlaps the first
        finished = builder.add(stamp(t), t, "happy")
        visits += [finished] if finished else []
    visits.append(builder.finish())
    assert [(v.analyses, v.seconds) for v in visits] == [(2, 9.0), (2, 8.0), (2, 1.0)]
    assert stamp_seconds(visits[1].first) == t2010


def test_summary_reads_logs_from_before_media_s_beside_new_ones(tmp_path: Path) -> None:
    from fer_edge.summary import csv_files, summarise

    old = tmp_path / "emotions_20260101T000000Z_0000.csv"  # what fer-edge wrote before media_s was added
    old.write_text("timestamp,frame,source,face_id,x,y,w,h,emotion,confidence," + ",".join(f"p_{e}" for e in EMOTIONS)
                   + "\n2026-01-01T10:00:00.000+00:00,0,v.mp4,1,1,2,3,4,sad,0.9000," + ",".join(["0.1"] * 7) + "\n")
    log = csv_log(tmp_path, Clock())
    log.write(datetime(2026, 1, 1, 10, 0, 30, tzinfo=timezone.utc).timestamp(), 450, [face()], media_s=30.0)
    log.close()
    with open(log.files[0], "a") as fh:  # a new row whose media_s does not parse
        fh.write("2026-01-01T10:00:40.000+00:00,600,v.mp4,1,1,2,3,4,sad,0.9," + ",".join(["0.1"] * 7) + ",soon\n")
    visit, = summarise(csv_files([tmp_path]), by="visit").periods
    assert visit.analyses == 2 and visit.seconds == pytest.approx(30.0)
    assert (visit.emotions["sad"], visit.emotions["neutral"]) == (1, 1)
    assert summarise(csv_files([tmp_path]), by="visit").skipped == {str(log.files[0]): 1}


def test_summary_refuses_a_csv_that_is_not_an_emotion_log(tmp_path: Path) -> None:
    from fer_edge.errors import DataError
    from fer_edge.summary import summarise

    other = tmp_path / "prices.csv"
    other.write_text("date,price\n2026-01-01,3\n")
    with pytest.raises(DataError, match="not a fer-edge emotions CSV"):
        summarise([other])


def test_status_line_counts_rows_the_disk_refused(tmp_path: Path) -> None:
    """What systemd's STATUS shows: the pipeline's line plus the sinks' fault counters."""
    from types import SimpleNamespace

    from fer_edge.pipeline import Pipeline, RunStats

    log = csv_log(tmp_path, Clock(1000.0), max_pending_rows=1)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (log.files[0].stat().st_size, hard))
    try:
        for i in range(3):
            log.write(1000.0, i, [face(i)])
            log.tick(1001.0 + 2 * i)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    running = SimpleNamespace(stats=RunStats(frames=10), source=SimpleNamespace(dropped=0, problem=None), video=None, csv=log,
                              mqtt=None)
    line = Pipeline.status_line(running, 1.0)
    assert line.startswith("frames 10,") and "csv failing since" in line and "csv rows dropped 2" in line
    log.close()
