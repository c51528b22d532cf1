"""fer-edge report and /report.png: the picture of the day, on real logs from real runs.

The logs come from `fer-edge run --realtime` on real clips (the bundled sample, and the real
videos of ../shared when present). To make one day of several visits hours apart, each run's rows
are moved, unchanged but for the timestamp, so that the run begins at a chosen time of one day:
the spacing inside a run is the real one.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import one_line_error, REPO_ROOT as ROOT, SHARED_DIR
from fer_edge import report as rep
from fer_edge.annotate import COLOURS
from fer_edge.summary import csv_files, newest_stamp, summarise

SAMPLE = ROOT / "samples" / "sample_faces.mp4"
VIDEOS = SHARED_DIR / "data" / "videos"
DAY = datetime(2026, 11, 20, 8, 0).astimezone()  # the runs are moved to this local day
STARTS = [timedelta(0), timedelta(minutes=35), timedelta(hours=5, minutes=20)]  # three visits


def fer_edge(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fer_edge", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)




def read_rows(files) -> list[dict]:
    rows = []
    for path in files:
        with open(path, newline="") as handle:
            rows += list(csv.DictReader(handle))
    return rows


def shifted_copy(files: list[Path], to: datetime, folder: Path) -> Path:
    """The rows of one run's CSV files, each moved by the same amount so the first lands at `to`."""
    header, rows = None, []
    for path in files:
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            rows += list(reader)
    stamp = header.index("timestamp")
    delta = to - datetime.fromisoformat(rows[0][stamp])
    for row in rows:
        row[stamp] = (datetime.fromisoformat(row[stamp]) + delta).isoformat(timespec="milliseconds")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"emotions-{to.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-0000.csv"  # as the log names them
    with open(target, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return target


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Output folders of real runs, played as a camera would (--realtime), side by side."""
    clips = [VIDEOS / "all_emo.mp4", VIDEOS / "woman2.mp4"]
    clips = [SAMPLE] + (clips if all(c.is_file() for c in clips) else [SAMPLE, SAMPLE])
    base = tmp_path_factory.mktemp("runs")
    outs = [base / f"run{i}" for i in range(len(clips))]
    procs = [subprocess.Popen([sys.executable, "-m", "fer_edge", "run", "--source", str(clip), "--realtime",
                               "--no-video", "--output", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for clip, out in zip(clips, outs)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    return outs


@pytest.fixture(scope="module")
def day(runs, tmp_path_factory) -> Path:
    """One day's csv/ folder: the runs at 08:00, 08:35 and 13:20 local time."""
    folder = tmp_path_factory.mktemp("day") / "csv"
    for out, start in zip(runs, STARTS):
        shifted_copy(sorted((out / "csv").glob("*.csv")), DAY + start, folder)
    return folder


def stack_counts(image: np.ndarray, x: int, top: int, bottom: int, emotions) -> dict[str, int]:
    column = image[top:bottom, x]
    return {e: int(np.all(column == COLOURS[e], axis=1).sum()) for e in emotions}


def test_report_draws_the_numbers_summary_gives(day: Path, tmp_path: Path) -> None:
    png = tmp_path / "day.png"
    drawn = fer_edge("report", str(day), "-o", str(png), "--json")
    assert drawn.returncode == 0, drawn.stderr
    data = json.loads(drawn.stdout)
    files = csv_files([day])
    rows = read_rows(files)

    # The visits: the same as `fer-edge summary --by visit`, one per run, every row in one of them.
    table = fer_edge("summary", str(day), "--by", "visit", "--json")
    assert table.returncode == 0, table.stderr
    assert data["visits"] == json.loads(table.stdout)["periods"]
    assert len(data["visits"]) == len(STARTS)
    assert [v["analyses"] for v in data["visits"]] == [len(read_rows([f])) for f in files]
    assert sum(b["analyses"] for b in data["bins"]) == len(rows) == sum(v["analyses"] for v in data["visits"])
    assert data["since"] < min(r["timestamp"] for r in rows)  # the last 24 h logged: all of this day
    # --gap 50 minutes joins the first two (35 minutes apart), in both.
    joined = json.loads(fer_edge("report", str(day), "-o", str(tmp_path / "g.png"), "--gap", "3000", "--json").stdout)
    table = json.loads(fer_edge("summary", str(day), "--by", "visit", "--gap", "3000", "--json").stdout)
    assert joined["visits"] == table["periods"] and len(table["periods"]) == len(STARTS) - 1
    # The bins: 5 h 20 min in at most 96 bins gives 5 minutes; at 60 minutes they are summary's hours.
    assert data["bin_minutes"] == 5
    with pytest.raises(ValueError, match="divide a day"):
        summarise(files, by="minutes", minutes=7)  # bins restart at midnight: they must tile a day
    assert data["bins"] == [p.to_json(data["emotions"]) for p in summarise(files, by="minutes", minutes=5).periods]
    hourly = json.loads(fer_edge("report", str(day), "-o", str(tmp_path / "h.png"), "--by-minutes", "60",
                                 "--json").stdout)["bins"]
    hours = json.loads(fer_edge("summary", str(day), "--by", "hour", "--json").stdout)["periods"]
    assert [b.pop("period")[:13] for b in hourly] == [h.pop("period") for h in hours]
    assert hourly == hours

    # The picture: the documented size, exactly what render() draws from build_report()'s numbers.
    image = cv2.imdecode(np.frombuffer(png.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (720, 1280, 3) and (image.shape[1], image.shape[0]) == rep.IMAGE_SIZE
    report = rep.build_report(files)
    assert report.to_json() == data
    assert np.array_equal(image, rep.render(report))
    # Each bar's colours stand for its shares (its counts), within a pixel of rounding.
    emotions = data["emotions"]
    _, top, _, bottom = rep.VISIT_BARS
    for (x0, x1), visit in zip(rep.visit_columns(len(data["visits"])), data["visits"]):
        counts = stack_counts(image, (x0 + x1) // 2, top, bottom, emotions)
        for e in emotions:
            share = visit["counts"][e] / visit["analyses"]
            assert abs(counts[e] - share * (bottom - top)) <= 1, (e, counts, visit)
    _, top, _, bottom = rep.TIMELINE
    # The timeline's columns too, away from the panel's frame and the lines where visits begin.
    lines = {rep.TIMELINE[0]} | {rep._x(datetime.fromisoformat(v["first"]).timestamp(), rep.time_span(report))
                                 for v in data["visits"]}
    for (x0, x1), period in zip(rep.bin_columns(report), data["bins"]):
        x = next(x for x in range(x0, x1) if x not in lines)
        counts = stack_counts(image, x, top, bottom, emotions)
        for e in emotions:
            share = period["counts"][e] / period["analyses"]
            assert abs(counts[e] - share * (bottom - top)) <= 1, (e, counts, period)
    gaps = [x for x in range(rep.TIMELINE[0] + 1, rep.TIMELINE[2]) if x not in lines
            and not any(x0 <= x < x1 for x0, x1 in rep.bin_columns(report))]
    assert gaps and all(sum(stack_counts(image, x, top, bottom, emotions).values()) == 0 for x in gaps)  # no faces


def test_without_since_the_report_is_the_last_day_logged(runs, day: Path, tmp_path: Path) -> None:
    week = tmp_path / "csv"
    week.mkdir()
    for path in csv_files([day]):
        (week / path.name).write_bytes(path.read_bytes())
    two_days_on = shifted_copy(sorted((runs[0] / "csv").glob("*.csv")), DAY + timedelta(days=2, hours=3), week)
    files = csv_files([week])
    assert newest_stamp(files) == max(r["timestamp"] for r in read_rows([two_days_on]))
    latest = rep.build_report(files)
    assert [v.analyses for v in latest.visits.periods] == [len(read_rows([two_days_on]))]
    everything = rep.build_report(files, since="")
    assert len(everything.visits.periods) == len(STARTS) + 1
    assert everything.bin_minutes == 60  # two days and more in at most 96 bins
    image = rep.render(everything)
    assert image.shape == (720, 1280, 3)


def test_report_png_from_a_running_preview(tmp_path: Path) -> None:
    """/report.png of a running `fer-edge run`, fetched by a real HTTP client: its own CSV log drawn."""
    proc = subprocess.Popen([sys.executable, "-m", "fer_edge", "run", "--source", str(SAMPLE), "--realtime",
                             "--output", str(tmp_path), "--no-video", "--preview", "127.0.0.1:0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stderr:
            if line.startswith("fer-edge: preview: "):
                url = line.split()[2]
                break
        assert url, "no preview URL logged"
        deadline = time.monotonic() + 30
        while len(read_rows(sorted((tmp_path / "csv").glob("*.csv")))) < 3:  # the smile logged (first 4 s)
            assert time.monotonic() < deadline and proc.poll() is None, "no rows logged"
            time.sleep(0.2)
        with urllib.request.urlopen(url + "report.png", timeout=30) as response:
            assert response.headers["Content-Type"] == "image/png"
            first = response.read()
        image = cv2.imdecode(np.frombuffer(first, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (720, 1280, 3)
        left, top, right, bottom = rep.TIMELINE
        happy = np.all(image[top:bottom, left:right] == COLOURS["happy"], axis=2)
        assert happy.mean() > 0.5  # the smile, drawn: not the "no faces logged" picture
        with urllib.request.urlopen(url + "report.png", timeout=30) as response:
            assert response.read() == first  # cached: drawn once for many requests
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_preview_report_with_no_rows_no_log_or_a_foreign_csv(tmp_path: Path) -> None:
    from fer_edge.labels import EMOTIONS
    from fer_edge.preview import PreviewServer

    server = PreviewServer("127.0.0.1:0", 5.0, EMOTIONS, "test")
    url = f"http://127.0.0.1:{server.port}/report.png"
    try:
        with pytest.raises(urllib.error.HTTPError) as no_log:  # --no-csv: nothing to draw from
            urllib.request.urlopen(url, timeout=10)
        assert no_log.value.code == 404 and b"csv.enabled" in no_log.value.read()
        folder = tmp_path / "csv"
        server.report = rep.CachedReport(folder, ttl=0)
        with urllib.request.urlopen(url, timeout=30) as response:
            empty = response.read()
        assert empty == rep.encode_png(rep.render(rep.build_report([])))  # the "no faces logged" picture
        folder.mkdir()
        (folder / "prices.csv").write_text("date,price\n2026-01-01,3\n")
        with pytest.raises(urllib.error.HTTPError) as foreign:
            urllib.request.urlopen(url, timeout=30)
        assert foreign.value.code == 500 and b"not a fer-edge emotions CSV" in foreign.value.read()
    finally:
        server.close()


def test_report_errors_are_one_line_and_leave_no_file(runs, day: Path, tmp_path: Path) -> None:
    png = tmp_path / "day.png"
    png.write_bytes(b"yesterday's picture")
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    one_line_error(fer_edge("report", str(nothing), "-o", str(png)), 66, "no CSV files")
    header_only = tmp_path / "empty" / "emotions-20261120T080000Z-0000.csv"
    header_only.parent.mkdir()
    with open(sorted((runs[0] / "csv").glob("*.csv"))[0]) as handle:
        header_only.write_text(handle.readline())
    one_line_error(fer_edge("report", str(header_only.parent), "-o", str(png)), 65, "no faces logged", "not written")
    one_line_error(fer_edge("report", str(day), "--since", "2027-01-01", "-o", str(png)), 65,
                   "no faces logged since 2027-01-01", "--since")
    assert png.read_bytes() == b"yesterday's picture"  # a failed report replaces nothing
    (tmp_path / "folder.png").mkdir()
    for bad in ("/proc/day.png", str(tmp_path / "missing" / "day.png"), str(tmp_path), str(tmp_path / "folder.png")):
        one_line_error(fer_edge("report", str(day), "-o", bad), 73, bad)
    one_line_error(fer_edge("report", str(nothing), "-o", "/proc/day.png"), 73, "/proc/day.png")  # checked first
    one_line_error(fer_edge("report", str(day), "-o", str(tmp_path / "day.jpg")), 64, ".png")
    one_line_error(fer_edge("report", str(day), "--by-minutes", "7", "-o", str(png)), 64, "--by-minutes 7", "divides")
    one_line_error(fer_edge("report", str(day), "--since", "yesterday", "-o", str(png)), 64, "--since")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day.png", "empty", "folder.png", "nothing"]  # no partial
    # --output DIR reads DIR/csv, as for run
    done = fer_edge("report", "--output", str(runs[0]), "-o", str(png))
    assert done.returncode == 0, done.stderr
    assert cv2.imdecode(np.frombuffer(png.read_bytes(), np.uint8), cv2.IMREAD_COLOR).shape == (720, 1280, 3)


# --- what the README tells a Pi owner ----------------------------------------------------------
def test_run_logs_which_codec_its_video_is_in(tmp_path: Path) -> None:
    """The README's "which players open the video": the start line names the codec the files have."""
    av = pytest.importorskip("av", reason="PyAV writes the H.264 segments")
    for setting, said, codec in (("auto", "video H.264 (PyAV)", "h264"), ("mp4v", "video mp4v (OpenCV)", "mpeg4")):
        out = tmp_path / setting
        done = fer_edge("run", "--source", str(SAMPLE), "--output", str(out), "--max-frames", "30",
                        "--set", f"video.codec={setting}")
        assert done.returncode == 0, done.stderr
        start, = [line for line in done.stderr.splitlines() if line.startswith("fer-edge: source ")]
        assert start.endswith(said), start
        segment, = (out / "video").glob("*.mp4")
        with av.open(str(segment)) as container:
            assert container.streams.video[0].codec_context.name == codec
