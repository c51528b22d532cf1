"""A picture of the day: `fer-edge report` and the preview's `/report.png`.

People would rather look than read. One PNG of IMAGE_SIZE (1280x720) shows, from the rolling CSV
logs, an emotion timeline (each time bin's emotion shares, stacked; the visits marked beneath it)
and each visit's emotion shares as a stacked bar. Every number drawn comes from summary.py's
summarise(), the code behind `fer-edge summary --by visit` and `--by hour`, so the picture and the
table never disagree. Drawn with OpenCV and NumPy, which the device already has: no TensorFlow,
no plotting library. Times are the logs' own: the device's local time, with its UTC offset shown.
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .annotate import COLOURS
from .errors import OutputError, UsageError
from .summary import VISIT_GAP_SECONDS, Period, Summary, csv_files, newest_stamp, summarise

IMAGE_SIZE = (1280, 720)  # width, height: fixed, so a page or a dashboard can lay it out once
WINDOW_HOURS = 24.0  # without --since: the last day logged, up to the newest row
BIN_MINUTES = (1, 2, 5, 10, 15, 30, 60, 120, 180, 240, 360, 720, 1440)  # auto: the first giving under MAX_BINS
MAX_BINS = 96  # a full day: 30-minute bins, 24 px each; a morning: 5-minute bins
MAX_VISIT_BARS = 40  # the newest visits, when there are more: a bar must stay wide enough to read
# Panels: (left, top, right, bottom), pixels.
TIMELINE = (80, 110, 1250, 370)
VISIT_STRIP = (80, 378, 1250, 392)  # each visit as a span under the timeline, coloured by its dominant emotion
VISIT_BARS = (80, 470, 1250, 650)
FONT = cv2.FONT_HERSHEY_SIMPLEX
INK, FAINT, GRID, PAPER = (40, 40, 40), (110, 110, 110), (225, 225, 225), (255, 255, 255)
_SPARE = [(120, 60, 20), (20, 100, 160), (130, 0, 90), (0, 90, 0)]  # a custom model's extra labels


@dataclass
class DayReport:
    """What the picture shows: summary.py's visits and time bins of the same rows."""
    visits: Summary  # by="visit"
    bins: Summary  # by="minutes"
    bin_minutes: int
    since: str  # rows before this were left out ("" none)
    gap: float

    @property
    def empty(self) -> bool:
        return not self.visits.periods

    @property
    def analyses(self) -> int:
        return sum(v.analyses for v in self.visits.periods)

    def to_json(self) -> dict:
        emotions = self.visits.emotions
        return {"since": self.since, "gap_seconds": self.gap, "bin_minutes": self.bin_minutes,
                "files": [str(f) for f in self.visits.files], "emotions": emotions,
                "skipped_rows": self.visits.skipped, "skip_reasons": self.visits.skip_reasons,
                "bins": [p.to_json(emotions) for p in self.bins.periods],
                "visits": [p.to_json(emotions) for p in self.visits.periods]}


def last_day_since(files: Sequence[Path], hours: float = WINDOW_HOURS) -> str:
    """The `since` that keeps the last `hours` logged, up to the newest row ("" if none)."""
    newest = newest_stamp(files)
    if not newest:
        return ""
    return (datetime.fromisoformat(newest) - timedelta(hours=hours)).isoformat(timespec="milliseconds")[:23]


def auto_minutes(visits: Summary) -> int:
    """The shortest bin from BIN_MINUTES that covers the rows' span in fewer than MAX_BINS bins."""
    if not visits.periods:
        return BIN_MINUTES[0]
    seconds = _epoch(max(v.last for v in visits.periods)) - _epoch(min(v.first for v in visits.periods))
    return next((m for m in BIN_MINUTES if seconds / (m * 60) < MAX_BINS), BIN_MINUTES[-1])


def build_report(files: Sequence[Path], since: str | None = None, gap: float = VISIT_GAP_SECONDS,
                 minutes: int = 0) -> DayReport:
    """The numbers of the picture. `since` None: the last day logged; `minutes` 0: auto bins."""
    files = list(files)
    if since is None:
        since = last_day_since(files)
    visits = summarise(files, by="visit", since=since, gap=gap)
    minutes = minutes or auto_minutes(visits)
    bins = summarise(files, by="minutes", since=since, minutes=minutes)
    return DayReport(visits, bins, minutes, since, gap)


# --- drawing -------------------------------------------------------------------------------------
def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _bin_start(period: Period) -> float:
    """A bin's name is its first minute in the log's local time; its rows carry the UTC offset."""
    return datetime.fromisoformat(period.name).replace(tzinfo=datetime.fromisoformat(period.first).tzinfo).timestamp()


def colours(emotions: Sequence[str]) -> list[tuple[int, int, int]]:
    """BGR per emotion: the annotated video's colours, so the picture reads like the recordings."""
    spare = iter(_SPARE * (1 + len(emotions) // len(_SPARE)))
    return [COLOURS.get(e) or next(spare) for e in emotions]


def time_span(report: DayReport) -> tuple[float, float]:
    """Epoch seconds at the timeline's left and right edges: the first bin's start, the last's end."""
    periods = report.bins.periods
    return _bin_start(periods[0]), _bin_start(periods[-1]) + report.bin_minutes * 60


def _x(t: float, span: tuple[float, float]) -> int:
    left, _, right, _ = TIMELINE
    return left + round((t - span[0]) / (span[1] - span[0]) * (right - left))


def bin_columns(report: DayReport) -> list[tuple[int, int]]:
    """Pixel columns [x0, x1) of each time bin on the timeline, at least one pixel wide."""
    span = time_span(report)
    out = []
    for p in report.bins.periods:
        start = _bin_start(p)
        x0 = _x(start, span)
        out.append((x0, max(x0 + 1, _x(start + report.bin_minutes * 60, span))))
    return out


def drawn_visits(report: DayReport) -> list[Period]:
    return report.visits.periods[-MAX_VISIT_BARS:]


def visit_columns(count: int) -> list[tuple[int, int]]:
    """Pixel columns [x0, x1) of `count` visit bars, left to right, at most 60 px wide."""
    left, _, right, _ = VISIT_BARS
    slot = (right - left) / max(count, 1)
    width = max(2, min(60, round(slot * 0.7)))
    return [(round(left + slot * (i + 0.5) - width / 2), round(left + slot * (i + 0.5) - width / 2) + width)
            for i in range(count)]


def _text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.5, colour=INK,
          thickness: int = 1, centre: bool = False) -> int:
    """Draws text (centred on x if asked); returns its width."""
    (w, _), _ = cv2.getTextSize(text, FONT, scale, thickness)
    x = origin[0] - w // 2 if centre else origin[0]
    cv2.putText(image, text, (x, origin[1]), FONT, scale, colour, thickness, cv2.LINE_AA)
    return w


def _stack(image: np.ndarray, x0: int, x1: int, top: int, bottom: int, period: Period, emotions: Sequence[str],
           palette: Sequence[tuple[int, int, int]]) -> None:
    """One column of shares, bottom to top in `emotions` order; boundaries rounded from the running
    total, so the segments fill the column exactly and each is within a pixel of its share."""
    height, total, lower = bottom - top, 0, bottom
    for emotion, colour in zip(emotions, palette):
        total += period.emotions[emotion]
        upper = bottom - round(height * total / period.analyses)
        if upper < lower:
            cv2.rectangle(image, (x0, upper), (x1 - 1, lower - 1), colour, -1)
        lower = upper


def _axes(image: np.ndarray, panel: tuple[int, int, int, int]) -> None:
    left, top, right, bottom = panel
    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = bottom - round((bottom - top) * share)
        cv2.line(image, (left, y), (right, y), GRID, 1)
        _text(image, f"{share * 100:.0f}%", (left - 48, y + 5), 0.42, FAINT)


def _clock(t: float, tz, with_date: bool) -> str:
    moment = datetime.fromtimestamp(t, tz)
    return moment.strftime("%m-%d %H:%M" if with_date else "%H:%M")


def _time_ticks(image: np.ndarray, span: tuple[float, float], tz) -> None:
    _, _, _, bottom = VISIT_STRIP
    seconds = span[1] - span[0]
    step = next((m * 60 for m in BIN_MINUTES if seconds / (m * 60) <= 12), 1440 * 60)
    if seconds > 1440 * 60 * 12:
        step = math.ceil(seconds / (1440 * 60 * 12)) * 1440 * 60
    offset = datetime.fromtimestamp(span[0], tz).utcoffset().total_seconds()
    t = math.ceil((span[0] + offset) / step) * step - offset  # on the local clock's round times
    with_date = seconds > 1440 * 60 or datetime.fromtimestamp(span[0], tz).date() != \
        datetime.fromtimestamp(span[1], tz).date()
    while t <= span[1] + 1e-6:
        x = _x(t, span)
        cv2.line(image, (x, bottom + 18), (x, bottom + 24), FAINT, 1)
        label = _clock(t, tz, with_date)
        (w, _), _ = cv2.getTextSize(label, FONT, 0.42, 1)
        _text(image, label, (min(x, image.shape[1] - 4 - w // 2), bottom + 40), 0.42, FAINT, centre=True)
        t += step


def _legend(image: np.ndarray, emotions: Sequence[str], palette) -> None:
    x = TIMELINE[0]
    for emotion, colour in zip(emotions, palette):
        cv2.rectangle(image, (x, 74), (x + 16, 90), colour, -1)
        x += 24 + _text(image, emotion, (x + 22, 88), 0.5) + 16


def _minutes_text(minutes: int) -> str:
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render(report: DayReport) -> np.ndarray:
    """The picture, BGR, IMAGE_SIZE; with no rows, a picture that says so."""
    width, height = IMAGE_SIZE
    image = np.full((height, width, 3), PAPER, np.uint8)
    if report.empty:
        since = f" since {report.since.replace('T', ' ')}" if report.since else ""
        _text(image, "fer-edge report", (40, 50), 0.8, INK, 2)
        _text(image, "no faces logged" + since, (width // 2, height // 2), 1.2, INK, 2, centre=True)
        _text(image, f"{len(report.visits.files)} CSV file(s) read", (width // 2, height // 2 + 44), 0.6, FAINT,
              centre=True)
        return image
    emotions, visits = report.visits.emotions, report.visits.periods
    palette = colours(emotions)
    span = time_span(report)
    tz = datetime.fromisoformat(visits[0].first).tzinfo
    first, last = min(v.first for v in visits), max(v.last for v in visits)
    offset = datetime.fromisoformat(first).strftime("%z")
    cut = 19 if _epoch(last) - _epoch(first) < 3600 else 16  # seconds too, for a short log
    title = (f"fer-edge report  {first[:cut].replace('T', ' ')} to {last[:cut].replace('T', ' ')}"
             f"  (local time, UTC{offset[:3]}:{offset[3:]})")
    _text(image, title, (40, 36), 0.75, INK, 2)
    _text(image, f"{len(visits)} visit(s), {report.analyses} analyses; timeline in bins of "
                 f"{_minutes_text(report.bin_minutes)}; a visit ends after a pause over {report.gap:g} s",
          (40, 60), 0.5, FAINT)
    _legend(image, emotions, palette)

    # The timeline: each bin's shares; time without faces stays blank.
    _axes(image, TIMELINE)
    cv2.rectangle(image, TIMELINE[:2], TIMELINE[2:], FAINT, 1)
    for (x0, x1), period in zip(bin_columns(report), report.bins.periods):
        _stack(image, x0, x1, TIMELINE[1], TIMELINE[3], period, emotions, palette)
    _text(image, "emotion shares per time bin", (TIMELINE[0], TIMELINE[1] - 6), 0.45, FAINT)
    left, top, right, bottom = VISIT_STRIP
    cv2.rectangle(image, (left, top), (right, bottom), GRID, -1)
    shown = drawn_visits(report)
    number = {id(v): i + 1 for i, v in enumerate(visits)}
    label_end = -1
    for visit in visits:
        x0 = _x(_epoch(visit.first), span)
        x1 = max(x0 + 2, _x(_epoch(visit.last), span))
        dominant = visit.emotions.most_common(1)[0][0]
        cv2.rectangle(image, (x0, top), (x1 - 1, bottom - 1), palette[emotions.index(dominant)], -1)
        cv2.line(image, (x0, TIMELINE[1]), (x0, top), FAINT, 1)  # where a visit began, across the timeline
        if x0 > label_end:
            label_end = x0 + _text(image, f"#{number[id(visit)]}", (x0, bottom + 13), 0.38, INK) + 4
    _time_ticks(image, span, tz)

    # One bar per visit.
    _axes(image, VISIT_BARS)
    left, top, right, bottom = VISIT_BARS
    more = f" (the newest {len(shown)} of {len(visits)})" if len(shown) < len(visits) else ""
    _text(image, f"emotion shares per visit{more}: visit, start, length, analyses", (left, top - 8), 0.45, FAINT)
    columns = visit_columns(len(shown))
    slot = (right - left) / max(len(shown), 1)
    days = first[:10] != last[:10]  # then a visit's start needs its date
    every = max(1, math.ceil((70 if days else 44) / slot))  # the pixels a caption needs
    for i, ((x0, x1), visit) in enumerate(zip(columns, shown)):
        _stack(image, x0, x1, top, bottom, visit, emotions, palette)
        if i % every == 0:
            centre = (x0 + x1) // 2
            _text(image, f"#{number[id(visit)]}", (centre, bottom + 16), 0.42, INK, centre=True)
            start = visit.first[5:16].replace("T", " ") if days else visit.first[11:16]
            _text(image, start, (centre, bottom + 32), 0.38, FAINT, centre=True)
            _text(image, _duration(visit.seconds), (centre, bottom + 47), 0.38, FAINT, centre=True)
            _text(image, str(visit.analyses), (centre, bottom + 62), 0.38, FAINT, centre=True)
    skipped = sum(report.visits.skipped.values())
    footer = f"{len(report.visits.files)} CSV file(s)" + (f"; {skipped} unreadable row(s) skipped" if skipped else "")
    (footer_width, _), _ = cv2.getTextSize(footer, FONT, 0.45, 1)
    _text(image, footer, (width - 30 - footer_width, 60), 0.45, FAINT)
    return image


def encode_png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OutputError("PNG encoding failed")
    return data.tobytes()


class PngTarget:
    """`-o FILE.png`, opened before any work (a bad path fails at once, exit 73) and given its name
    only once the picture is whole: a half-written PNG never replaces yesterday's."""

    def __init__(self, path: Path):
        if path.is_dir():
            raise OutputError(f"-o {path} is a folder; give a file name, e.g. {path / 'day.png'}")
        if path.suffix.lower() != ".png":
            raise UsageError(f"-o {path}: the report is a PNG; give a name ending in .png, e.g. day.png")
        self.path = path
        self._partial = path.with_name(f".{path.name}.partial")
        try:
            self._handle = open(self._partial, "wb")
        except OSError as exc:
            raise OutputError(f"-o {path}: cannot write there ({exc.strerror}); choose a writable folder") from None

    def write(self, data: bytes) -> None:
        try:
            with self._handle:
                self._handle.write(data)
            os.replace(self._partial, self.path)
        except OSError as exc:
            self.discard()
            raise OutputError(f"could not write {self.path} ({exc.strerror}); check free space and permissions") \
                from None

    def discard(self) -> None:
        self._handle.close()
        try:
            self._partial.unlink()
        except FileNotFoundError:
            pass


class CachedReport:
    """The preview's /report.png: the last day of a run's CSV folder, rendered on the server
    thread that asks (never the frame loop), at most once every `ttl` seconds however many ask."""

    def __init__(self, folder: Path, ttl: float = 30.0):
        self.folder = Path(folder)
        self.ttl = ttl
        self._lock = threading.Lock()
        self._made = -math.inf
        self._png = b""

    def png(self) -> bytes:
        with self._lock:  # a second request waits for the first's picture rather than drawing its own
            if time.monotonic() - self._made >= self.ttl:
                files = csv_files([self.folder]) if self.folder.is_dir() else []
                self._png = encode_png(render(build_report(files)))
                self._made = time.monotonic()
            return self._png
