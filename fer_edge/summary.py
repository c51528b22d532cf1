"""What months of emotion logs say, in one table: `fer-edge summary`.

Reads the rolling CSV files `fer-edge run` writes (any number, in name order, which is time
order), streams them row by row (memory grows with the number of periods, not rows) and counts,
per hour, day, visit, bin of minutes or the whole span, how many analyses logged each emotion.
A visit is a run of logged faces with no pause longer than `gap` seconds: when someone was there,
and how they looked. Rows that cannot be read are counted and reported, never silently dropped.
`fer-edge report` draws what these same functions count (fer_edge/report.py).
"""
from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterable, Sequence

from .errors import DataError, InputMissing
from .labels import EMOTIONS, canonical

PERIODS = {"hour": 13, "day": 10, "all": 0, "visit": 19,  # characters of the ISO timestamp naming a period
           "minutes": 16}  # bins of `minutes` each, named by their first minute (local, as logged)
VISIT_GAP_SECONDS = 60.0
REQUIRED = ("timestamp", "emotion")


@dataclass
class Period:
    name: str
    analyses: int = 0
    emotions: Counter = field(default_factory=Counter)
    minutes: set = field(default_factory=set)  # minutes with a face logged: how long faces were there
    first: str = ""
    last: str = ""

    def count(self, stamp: str, emotion: str) -> None:
        """One logged face: its ISO timestamp and emotion."""
        self.analyses += 1
        self.emotions[emotion] += 1
        self.minutes.add(stamp[:16])
        if stamp < self.first:  # files of two runs can overlap in time
            self.first = stamp
        if stamp > self.last:
            self.last = stamp

    def share(self, emotion: str) -> float:
        return self.emotions[emotion] / self.analyses if self.analyses else 0.0

    @property
    def seconds(self) -> float:
        """From the first logged face to the last."""
        return (datetime.fromisoformat(self.last) - datetime.fromisoformat(self.first)).total_seconds()

    def to_json(self, emotions: Sequence[str]) -> dict:
        return {"period": self.name, "first": self.first, "last": self.last, "seconds": round(self.seconds, 3),
                "analyses": self.analyses,
                "minutes_with_faces": len(self.minutes), "counts": {e: self.emotions[e] for e in emotions},
                "share": {e: round(self.share(e), 4) for e in emotions},
                "dominant": self.emotions.most_common(1)[0][0] if self.analyses else None}


class VisitBuilder:
    """Visits from logged faces in time order: a pause longer than `gap` seconds ends one.

    The one definition of a visit, shared by `fer-edge summary --by visit` (reading the CSV back)
    and the MQTT sink (as rows are logged), so the two always report the same visits. `seen` is the
    row's timestamp as epoch seconds, parsed back from its ISO text (the CSV's millisecond
    precision), so both sides compare the same numbers.
    """

    def __init__(self, gap: float = VISIT_GAP_SECONDS):
        self.gap = gap
        self.current: Period | None = None
        self.last_seen = -math.inf

    def add(self, stamp: str, seen: float, emotion: str) -> Period | None:
        """Count one logged face; returns the visit it ended by coming after a pause, if any."""
        finished = None
        # A pause ends a visit; so does a jump back by more than the gap: rows of another video
        # file, stamped with that file's own media time, or a clock set back.
        if self.current is None or abs(seen - self.last_seen) > self.gap:
            finished = self.current
            self.current = Period(stamp[:PERIODS["visit"]], first=stamp, last=stamp)
            self.last_seen = seen
        self.last_seen = max(self.last_seen, seen)
        self.current.count(stamp, emotion)  # type: ignore[union-attr]
        return finished

    def pause(self, seen: float) -> Period | None:
        """Nobody logged at `seen`: returns the open visit once the pause has outlasted `gap`."""
        if self.current is not None and seen - self.last_seen > self.gap:
            finished, self.current = self.current, None
            return finished
        return None

    def finish(self) -> Period | None:
        """The open visit, ended now (the end of the logs, or of a run)."""
        finished, self.current = self.current, None
        return finished


def stamp_seconds(stamp: str) -> float:
    """A logged ISO timestamp as epoch seconds."""
    return datetime.fromisoformat(stamp).timestamp()


@dataclass
class Summary:
    by: str
    periods: list[Period]
    files: list[Path]
    emotions: list[str]
    skipped: dict[str, int]  # file -> rows that could not be read
    skip_reasons: dict[str, dict[str, int]] = field(default_factory=dict)  # file -> {why: rows}

    def to_json(self) -> dict:
        return {"by": self.by, "files": [str(f) for f in self.files], "emotions": self.emotions,
                "skipped_rows": self.skipped,
                "skip_reasons": self.skip_reasons, "periods": [p.to_json(self.emotions) for p in self.periods]}

    def table(self) -> str:
        short = [e[:4] for e in self.emotions]
        visits = self.by == "visit"  # a visit's length says more than its count of minutes
        first, span = ("visit start", "seconds") if visits else ("period", "minutes")
        width = 19 if visits else 16
        head = (f"{first:<{width}} {'analyses':>9} {span:>7} " + " ".join(f"{s:>6}" for s in short)
                + "  dominant")
        lines = [head]
        for p in self.periods:
            shares = " ".join(f"{p.share(e) * 100:5.1f}%" for e in self.emotions)
            dominant = p.emotions.most_common(1)[0][0] if p.analyses else "-"
            length = f"{p.seconds:7.0f}" if visits else f"{len(p.minutes):>7}"
            lines.append(f"{p.name:<{width}} {p.analyses:>9} {length} {shares}  {dominant}")
        return "\n".join(lines)


_INTEGER_COLUMNS = ("frame", "face_id", "x", "y", "w", "h")


class _RowCheck:
    """Every row is checked against its file's header: the column count, a timestamp that parses,
    whole numbers, an emotion the file has a probability column for, probabilities that parse.
    Calling it returns why a row is unreadable, or "" (and sets `seen`, the row's epoch seconds)."""

    def __init__(self, header: list[str]):
        self.width = len(header)
        self.stamp, self.emotion = header.index("timestamp"), header.index("emotion")
        self.integers = [header.index(c) for c in _INTEGER_COLUMNS if c in header]
        self.numbers = [i for i, c in enumerate(header) if c in ("confidence", "media_s") or c.startswith("p_")]
        known = [c[2:] for c in header if c.startswith("p_")]
        self.emotions = set(known or EMOTIONS)
        self.seen = 0.0

    def __call__(self, fields: list[str]) -> str:
        if len(fields) != self.width:
            return "wrong number of columns (a cut row?)"
        emotion = fields[self.emotion]
        if canonical(emotion) not in self.emotions:
            return "unknown emotion"
        stamp = fields[self.stamp]
        try:
            if len(stamp) < 19 or stamp[4] != "-":
                raise ValueError
            self.seen = stamp_seconds(stamp)
        except ValueError:
            return "bad timestamp"
        try:
            for i in self.integers:
                int(fields[i])
            for i in self.numbers:
                if fields[i]:  # empty: the model lacks that emotion; media_s of a camera's row
                    float(fields[i])
        except ValueError:
            return "a number that does not parse"
        return ""


def csv_files(paths: Sequence[Path]) -> list[Path]:
    """The CSV files named or inside the folders named, each folder's in name (= time) order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(path.glob("*.csv"))
        elif path.is_file():
            found.append(path)
        else:
            raise InputMissing(f"{path} not found; give the csv/ folder of a fer-edge output directory "
                               "or CSV files it wrote")
    return found


def bin_name(stamp: str, minutes: int) -> str:
    """The bin of `minutes` (a divisor of a day's 1440) a timestamp falls in, named by its first
    minute in the timestamp's own (local) time: bins restart at midnight, as the clock on the wall."""
    of_day = int(stamp[11:13]) * 60 + int(stamp[14:16])
    start = of_day - of_day % minutes
    return f"{stamp[:11]}{start // 60:02d}:{start % 60:02d}"


def summarise(files: Iterable[Path], by: str = "day", since: str = "",
              gap: float = VISIT_GAP_SECONDS, minutes: int = 0) -> Summary:
    """Counts per period of the emotion each logged analysis gave. `since`: an ISO date or time
    prefix; earlier rows are left out (ISO timestamps compare as strings). `gap`: with by="visit",
    a pause longer than this many seconds starts a new visit. `minutes`: with by="minutes", the
    length of a bin, a divisor of 1440."""
    if by not in PERIODS:
        raise ValueError(f"by must be one of {', '.join(PERIODS)}")
    if by == "minutes" and not (0 < minutes <= 1440 and 1440 % minutes == 0):
        raise ValueError("minutes must divide a day (1440), e.g. 5, 15, 60")
    cut = PERIODS[by]
    files = list(files)
    periods: dict[str, Period] = {}
    visits: list[Period] = []
    builder = VisitBuilder(gap)
    extra: list[str] = []  # emotions beyond the seven (a custom model's labels), in order of appearance
    skipped: dict[str, int] = {}
    reasons: dict[str, dict[str, int]] = {}
    for path in files:
        try:
            handle = path.open(newline="", encoding="utf-8", errors="replace")  # bad bytes: a bad row
        except OSError as exc:
            raise InputMissing(f"cannot read {path} ({exc.strerror})") from None
        with handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise DataError(f"{path} is not a fer-edge emotions CSV (no {', '.join(missing)} column); "
                                "give the csv/ folder `fer-edge run` writes")
            check = _RowCheck(header)
            bad: Counter = Counter()
            for fields in reader:
                why = check(fields)
                if why:  # a row cut short by a crash, or not ours: counted, never guessed at
                    bad[why] += 1
                    continue
                stamp, emotion = fields[check.stamp], fields[check.emotion]
                if since and stamp < since:
                    continue
                if by == "visit":
                    finished = builder.add(stamp, check.seen, emotion)
                    if finished is not None:
                        visits.append(finished)
                else:
                    key = bin_name(stamp, minutes) if by == "minutes" else stamp[:cut] if cut else "all"
                    period = periods.get(key)
                    if period is None:
                        period = periods[key] = Period(key, first=stamp, last=stamp)
                    period.count(stamp, emotion)
                if emotion not in EMOTIONS and emotion not in extra:
                    extra.append(emotion)
            if bad:
                skipped[str(path)] = sum(bad.values())
                reasons[str(path)] = dict(bad)
    last = builder.finish()
    if last is not None:
        visits.append(last)
    # files are read in name order, but a video file's rows carry its own media time
    found = sorted(visits, key=lambda v: stamp_seconds(v.first)) if by == "visit" else [periods[k] for k in sorted(periods)]
    return Summary(by, found, files, list(EMOTIONS) + extra, skipped, reasons)


def newest_stamp(files: Sequence[Path], tail_bytes: int = 65536) -> str:
    """The timestamp of the last readable row of the newest file that has one ("" if none), read
    from the end of the file: where the last day of months of logs begins, without reading them."""
    for path in reversed(list(files)):
        try:
            with path.open(newline="", encoding="utf-8", errors="replace") as handle:
                header = next(csv.reader(handle), [])
            if any(c not in header for c in REQUIRED):
                continue  # not ours: summarise() names it
            with path.open("rb") as raw:
                size = raw.seek(0, 2)
                raw.seek(max(0, size - tail_bytes))
                lines = raw.read().decode("utf-8", errors="replace").splitlines()
        except OSError:
            continue  # summarise() names a file it cannot read
        check = _RowCheck(header)
        for fields in csv.reader(reversed(lines[1:])):  # the first line: the header, or a row cut by the seek
            if not check(fields):
                return fields[check.stamp]
    return ""
