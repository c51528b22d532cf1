"""Where results go: segmented video, rolling CSV logs, an optional window, and the one disk
budget both file sinks live within.

Both file sinks name files `{prefix}-YYYYmmddTHHMMSSZ-NNNN.ext` (UTC start + a sequence), so name
order is age order. The DiskBudget prunes them: limits by count, size and age, and two floors of
free space (under the first the oldest video goes; under the second, lower one, CSV files too).
A disk fault never stops the daemon: a video segment that cannot be written is ended cleanly and
recording resumes when there is room; CSV rows that cannot be written wait in a bounded buffer.
What a crash may lose: video since the last fragment (H.264 fragmented MP4, about a second) or
the open segment (OpenCV codecs); CSV rows since the last flush, or after a power cut since the
last fsync (csv.sync_seconds). A file under a final name always decodes.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import shutil
import sys
import threading
import time
from collections import deque
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import cv2
import numpy as np

from .errors import OutputError, Unavailable
from .labels import EMOTIONS, canonical
from .records import FaceResult

log = logging.getLogger(__name__)

_STAMP = "%Y%m%dT%H%M%SZ"
# A glob that matches our names (finished and partial) but not another prefix such as fer-cam2-.
_NAME_GLOB = "{prefix}-[0-9]*T[0-9]*Z-[0-9]*{ext}"
PARTIAL = ".partial"  # a segment being written: `{name}.partial{ext}`, renamed when complete


def _utc_stamp(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, timezone.utc).strftime(_STAMP)


def _free_name(directory: Path, prefix: str, unix_time: float, seq: int, suffix: str) -> tuple[Path, int]:
    """The first unused `{prefix}-{stamp}-{seq:04d}{suffix}` (nor its partial); a restart within the
    same second must not overwrite the previous run's file."""
    stamp = _utc_stamp(unix_time)
    while True:
        seq = seq % 10000  # only orders files within one second, so wrapping is harmless
        path = directory / f"{prefix}-{stamp}-{seq:04d}{suffix}"
        if not path.exists() and not _partial_of(path).exists():
            return path, seq + 1
        seq += 1


def _partial_of(final: Path) -> Path:
    # keep the real extension last: OpenCV and FFmpeg pick the container from it
    return final.with_name(final.stem + PARTIAL + final.suffix)


# Faces and feelings are personal data: what a run writes is readable by its owner and group only
# (the service's user and group), whatever the umask. `fer-edge run` also sets UMASK, for what
# FFmpeg, OpenCV or anything else creates on its own.
FILE_MODE, DIR_MODE, UMASK = 0o640, 0o750, 0o027


def private_umask() -> None:
    """For the whole process (`fer-edge run`): new folders 0750 and files 0640 at most, whoever makes them."""
    os.umask(UMASK)


def create_file(path: Path, append: bool = False) -> int:
    """Create a new output file (never an existing one) and return its descriptor, write-only.
    Every output file is created here, so its mode is decided in one place."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | (os.O_APPEND if append else 0)
    fd = os.open(path, flags, FILE_MODE)
    _set_mode(fd, FILE_MODE)  # exactly this, whatever bits the umask took away
    return fd


def make_dirs(directory: Path) -> None:
    """`mkdir -p` whose new folders are DIR_MODE whatever the umask; existing ones are left as they are."""
    missing = []
    while not directory.is_dir() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(DIR_MODE)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue  # made meanwhile by someone else: not ours to change
        _set_mode(folder, DIR_MODE)


def _set_mode(target: int | Path, mode: int) -> None:
    try:
        os.chmod(target, mode)
    except OSError:  # a file system without modes (FAT on a USB stick): nothing to set
        pass


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` survive a power cut."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the data itself was synced
    finally:
        os.close(fd)


def _make_dir(directory: Path, what: str) -> None:
    try:
        make_dirs(directory)
    except OSError as exc:
        raise OutputError(f"cannot create {what} directory {directory} ({exc.strerror or exc}); "
                          "choose a writable output.directory") from None


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class _Throttled:
    """A warning that repeats at most once a minute while a fault lasts (a full disk can last days)."""

    def __init__(self, every: float = 60.0):
        self.every = every
        self._last: dict[str, float] = {}

    def warn(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e18) >= self.every:
            self._last[key] = now
            log.warning(message, *args)

    def reset(self, key: str) -> bool:
        """Forget `key`; True if it had been warned about (so a recovery is worth a line)."""
        return self._last.pop(key, None) is not None


# -- retention and the disk budget ----------------------------------------------------------------
class Retention:
    """Keep at most max_files files and max_bytes bytes, none older than max_age_days, and at least
    min_free_bytes free on the file system; 0 disables a limit. The oldest files (by name) go first;
    partial files never count (they are recovered or removed at start-up)."""

    def __init__(self, max_files: int = 0, max_bytes: int = 0, min_free_bytes: int = 0, max_age_days: float = 0.0):
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.max_age_days = max_age_days

    def enforce(self, directory: Path, pattern: str, protect: Path | None = None,
                now: float | None = None) -> list[Path]:
        """Delete the oldest files matching `pattern` until every limit holds; `protect` (the open
        file) counts towards the limits but is never deleted. Returns the deleted paths."""
        if not (self.max_files or self.max_bytes or self.min_free_bytes or self.max_age_days):
            return []
        files: dict[Path, os.stat_result] = {}
        for path in sorted(directory.glob(pattern)):
            if PARTIAL + "." in path.name:
                continue
            try:
                files[path] = path.stat()
            except FileNotFoundError:  # removed meanwhile
                pass
        keep = protect.name if protect is not None else None
        oldest_kept = ((time.time() if now is None else now) - self.max_age_days * 86400) if self.max_age_days else None
        count, total = len(files), sum(st.st_size for st in files.values())
        deleted: list[Path] = []
        for path, st in files.items():
            if path.name == keep:
                continue
            too_old = oldest_kept is not None and st.st_mtime < oldest_kept
            over = ((self.max_files and count > self.max_files) or (self.max_bytes and total > self.max_bytes)
                    or (self.min_free_bytes and shutil.disk_usage(directory).free < self.min_free_bytes))
            if not (too_old or over):
                if oldest_kept is None:
                    break  # name order is age order: nothing younger is over a limit
                continue  # by age, look at every file: a recovered one may be older than its name
            if _unlink(path):
                count, total = count - 1, total - st.st_size
                deleted.append(path)
        return deleted


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:  # keep pruning the others; the disk must not fill up
        log.warning("retention: cannot delete %s (%s)", path, _why(exc))
        return False


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


class DiskBudget:
    """One budget for the output file system, shared by the video writer and the CSV log.

    - limits per kind (video.max_files/max_bytes/max_age_days, csv.max_files/max_total_bytes/
      max_age_days): at start-up, after each finished file, and at least hourly;
    - free space: checked at start-up, before each video segment and every `check_seconds` (one
      statvfs, from the main loop's `tick`). Under `video_floor` the oldest videos are deleted; under
      `csv_floor` (the lower one) every finished video goes first, then the oldest CSV files. When
      nothing is left to delete the open video segment is cut so it can go next: the log comes first.

    Called from the main loop and the video writer's thread, so it takes a lock.
    """

    LIMITS_SECONDS = 3600.0

    def __init__(self, *, video_dir: Path | None = None, video_limits: Retention | None = None,
                 video_prefix: str = "fer", csv_dir: Path | None = None, csv_limits: Retention | None = None,
                 csv_prefix: str = "emotions", video_floor: int = 0, csv_floor: int = 0,
                 check_seconds: float = 2.0):
        self.video_dir, self.csv_dir = video_dir, csv_dir
        self.video_limits = video_limits or Retention()
        self.csv_limits = csv_limits or Retention()
        self.video_pattern = _NAME_GLOB.format(prefix=video_prefix, ext=".*")
        self.csv_pattern = _NAME_GLOB.format(prefix=csv_prefix, ext=".csv")
        self.video_floor, self.csv_floor = video_floor, csv_floor
        self.check_seconds = check_seconds
        self.deleted_videos = 0
        self.deleted_csv = 0
        self.free: int | None = None  # at the last check
        self.csv_open: Optional[Path] = None  # set by the CSV log: never deleted
        self.cut_video: Optional[Callable[[], None]] = None  # set by the video writer
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._next_limits = 0.0
        self._warn = _Throttled()

    def tick(self) -> None:
        """Call every loop iteration: a clock read, and a real check every check_seconds."""
        now = time.monotonic()
        if now >= self._next_check:
            self.check(now, cut=True)

    def startup(self) -> None:
        """Before anything else writes (a codec probe, a new CSV file): partials of an earlier run
        are recovered or removed, then every limit and floor is enforced."""
        for directory in (self.video_dir, self.csv_dir):
            if directory is not None:
                _make_dir(directory, "video" if directory == self.video_dir else "CSV")
        if self.video_dir is not None:
            recover_partials(self.video_dir, self.video_pattern)
        self.check(time.monotonic())

    def make_room(self) -> int:
        """Check now (before a segment, after a failed write); returns the bytes free."""
        return self.check(time.monotonic())

    def finished_video(self, final: Path) -> int:
        """A segment was completed: apply the video limits (the newest segment is kept even when it
        alone exceeds max_bytes). Returns how many segments were deleted."""
        if self.video_dir is None:
            return 0
        with self._lock:
            gone = len(self.video_limits.enforce(self.video_dir, self.video_pattern, protect=final))
            self.deleted_videos += gone
        return gone

    def new_csv(self, path: Path) -> int:
        """The CSV log opened `path`: it is never deleted; the CSV limits are applied."""
        with self._lock:
            self.csv_open = path
            gone = len(self.csv_limits.enforce(path.parent, self.csv_pattern, protect=path))
            self.deleted_csv += gone
        return gone

    def room_for(self, directory: Path, nbytes: int) -> bool:
        """Whether writing `nbytes` more in `directory` (the MQTT spool) keeps free space above the
        lower floor: what waits for a broker never takes the CSV log's last room."""
        try:
            return free_bytes(directory) - nbytes >= self.csv_floor
        except OSError:
            return False

    def check(self, now: float, cut: bool = False) -> int:
        with self._lock:
            self._next_check = now + self.check_seconds
            if now >= self._next_limits:
                self._next_limits = now + self.LIMITS_SECONDS
                if self.video_dir is not None:
                    self.deleted_videos += len(self.video_limits.enforce(self.video_dir, self.video_pattern))
                if self.csv_dir is not None:
                    self.deleted_csv += len(self.csv_limits.enforce(self.csv_dir, self.csv_pattern,
                                                                    protect=self.csv_open))
            return self._floors(cut)

    def _floors(self, cut: bool) -> int:
        directory = self.video_dir or self.csv_dir
        assert directory is not None
        try:
            free = free_bytes(directory)
        except OSError as exc:  # the directory vanished: the sinks recreate theirs
            self._warn.warn("statvfs", "disk check: cannot read free space of %s (%s)", directory, _why(exc))
            return self.free or 0
        floor = max(self.video_floor, self.csv_floor)
        if free < floor and self.video_dir is not None:
            for path in self._oldest(self.video_dir, self.video_pattern, None):
                if free >= self.video_floor and free >= self.csv_floor:
                    break
                size = _size(path)
                if _unlink(path):
                    self.deleted_videos += 1
                    free += size
        if free < self.csv_floor and self.csv_dir is not None:
            if cut and self.cut_video is not None:
                self.cut_video()  # the open segment becomes deletable at the next check
            for path in self._oldest(self.csv_dir, self.csv_pattern, self.csv_open):
                if free >= self.csv_floor:
                    break
                size = _size(path)
                if _unlink(path):
                    self.deleted_csv += 1
                    free += size
                    self._warn.warn("csv-floor", "disk nearly full (%d MiB free, csv.min_free_bytes is %d MiB): "
                                    "deleted the oldest CSV log %s", free >> 20, self.csv_floor >> 20, path.name)
        if free < max(self.video_floor, self.csv_floor):
            self._warn.warn("floor", "disk nearly full: %d MiB free in %s, under the floor of %d MiB, and nothing "
                            "older left to delete", free >> 20, directory, max(self.video_floor, self.csv_floor) >> 20)
        self.free = free
        return free

    @staticmethod
    def _oldest(directory: Path, pattern: str, protect: Optional[Path]) -> list[Path]:
        keep = protect.name if protect is not None else None
        return [p for p in sorted(directory.glob(pattern)) if PARTIAL + "." not in p.name and p.name != keep]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# -- video -------------------------------------------------------------------------------------
_CONTAINERS = {"mp4v": ".mp4", "avc1": ".mp4", "h264": ".mp4", "x264": ".mp4", "hev1": ".mp4",
               "mjpg": ".avi", "xvid": ".avi", "divx": ".avi"}
CRASH_SAFE_SEGMENT_SECONDS = 10.0  # OpenCV's MP4 is unreadable until closed: a crash loses the open segment


def pyav_available() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_codec(codec: str) -> str:
    """`auto`: H.264 in fragmented MP4 through PyAV when installed (survives a crash, plays in
    browsers), else OpenCV's mp4v. `h264`: PyAV, required. Anything else: an OpenCV FourCC."""
    if codec == "auto":
        return "h264" if pyav_available() else "mp4v"
    if codec == "h264" and not pyav_available():
        raise Unavailable("video.codec = \"h264\" needs PyAV: pip install 'fer-edge[video]' (or av), "
                          "or set video.codec = \"auto\"")
    return codec


def video_extension(codec: str) -> str:
    return _CONTAINERS.get(codec.lower(), ".avi")  # AVI takes nearly any FourCC


def decodes(path: Path) -> bool:
    """Whether a video file yields at least one frame: the test before it gets a final name."""
    cap = cv2.VideoCapture(str(path))
    try:
        return bool(cap.isOpened() and cap.read()[0])
    finally:
        cap.release()


def recover_partials(directory: Path, pattern: str) -> tuple[list[Path], list[Path]]:
    """Partial segments left by a crash or power cut: named if they decode (fragmented MP4 and
    AVI do up to the cut), removed if not. Returns (recovered, removed)."""
    recovered, removed = [], []
    for partial in sorted(directory.glob(pattern)):
        stem = partial.stem
        if not stem.endswith(PARTIAL):
            continue
        if decodes(partial):
            final = partial.with_name(stem[:-len(PARTIAL)] + partial.suffix)
            if final.exists():  # never overwrite: take the next sequence number of that second
                prefix, stamp, seq = final.stem.rsplit("-", 2)
                final, _ = _free_name(directory, prefix, datetime.strptime(stamp, _STAMP).replace(
                    tzinfo=timezone.utc).timestamp(), int(seq) + 1, final.suffix)
            try:
                os.rename(partial, final)
                recovered.append(final)
            except OSError as exc:
                log.warning("video: cannot rename %s (%s)", partial, _why(exc))
        elif _unlink(partial):
            removed.append(partial)
    if recovered or removed:
        fsync_dir(directory)
        log.warning("video: %d segment(s) a crash left open were recovered%s%s", len(recovered),
                    f" ({', '.join(p.name for p in recovered)})" if recovered else "",
                    f"; {len(removed)} that did not decode were removed" if removed else "")
    return recovered, removed


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _PyAvSegment:
    """H.264 in fragmented MP4: a fragment per keyframe (one a second) reaches the disk as it is
    written, so a file cut by a crash or a full disk still decodes up to its last fragment."""

    def __init__(self, path: Path, fps: float, frame_size: tuple[int, int]):
        import av

        self._av, self._path = av, path
        os.close(create_file(path))  # reserve the name (and its mode); FFmpeg writes it in place
        self._container = av.open(str(path), "w", format="mp4", options={
            "movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"})
        try:
            stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = frame_size
            stream.pix_fmt = "yuv420p"
            # zerolatency: no lookahead, so each packet is written at once; veryfast: a Pi's CPU
            stream.options = {"tune": "zerolatency", "preset": "veryfast", "crf": "26",
                              "g": str(max(1, round(fps)))}
            self._stream = stream
        except BaseException:
            self.abandon()
            raise

    def write(self, frame: np.ndarray) -> None:
        for packet in self._stream.encode(self._av.VideoFrame.from_ndarray(frame, format="bgr24")):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        _fsync_path(self._path)

    def abandon(self) -> None:
        """Close after a write error, ignoring further errors: what reached the disk stays."""
        try:
            self._container.close()
        except Exception:
            pass


class _OpenCvSegment:
    """Any FourCC OpenCV writes. It reports no write errors: the file is checked when closed."""

    def __init__(self, path: Path, codec: str, fps: float, frame_size: tuple[int, int]):
        os.close(create_file(path))  # reserve the name (and its mode); OpenCV rewrites it in place
        self._path = path
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, frame_size, True)
        if not self._writer.isOpened():
            raise OSError(errno.EIO, f"OpenCV cannot open a {codec} writer")

    def write(self, frame: np.ndarray) -> None:
        self._writer.write(frame)

    def close(self) -> None:
        self._writer.release()
        _fsync_path(self._path)

    def abandon(self) -> None:
        self._writer.release()


RECENT_FILES = 1000  # file names a sink remembers for its run summary
RETRY_SECONDS = 2.0  # after a video write error, try a new segment this often (a statvfs and a create)


def _remember(names: list[Path], path: Path) -> None:
    names.append(path)
    del names[:-RECENT_FILES]  # a months-long run must not grow this without bound


_CUT = object()  # queued by new_segment(): the writer thread finishes the open segment there


class SegmentedVideoWriter:
    """Writes frames into segments of `segment_seconds` of recorded (media) time.

    Encoding runs on a background thread fed by a bounded queue (the encoder releases the GIL, so
    a second core encodes while the main loop detects); `write` blocks when the queue is full
    rather than dropping frames. A write error (a full disk, EIO) ends the open segment cleanly:
    it keeps its final name if it decodes and is removed if not; frames are then dropped (counted
    in frames_lost) until a new segment can be started, tried every RETRY_SECONDS after the
    disk budget made room. The daemon goes on analysing and logging meanwhile.

    Counters: frames_written (encoded), frames_lost, finished (segments completed), segments (the
    newest RECENT_FILES finished files in order, including ones retention deleted since; bounded,
    as a daemon runs for months), deleted (segments retention removed after one finished).
    """

    def __init__(self, directory: Path, frame_size: tuple[int, int], fps: float, *, segment_seconds: float,
                 codec: str = "auto", retention: Retention | None = None, budget: DiskBudget | None = None,
                 prefix: str = "fer", queue_size: int = 8):
        if fps <= 0 or segment_seconds <= 0:
            raise OutputError(f"video fps ({fps}) and segment_seconds ({segment_seconds}) must be positive")
        self.directory = Path(directory)
        self.codec = resolve_codec(codec)
        if len(self.codec) != 4:
            raise OutputError(f"video codec {codec!r} is not a FourCC; use auto, h264, mp4v or MJPG")
        self.pyav = self.codec == "h264" and pyav_available()
        if codec == "auto" and not self.pyav and segment_seconds > CRASH_SAFE_SEGMENT_SECONDS:
            log.warning("video: PyAV is not installed, so segments are OpenCV mp4v, which a crash leaves "
                        "unreadable: recording %g s segments instead of %g; pip install 'fer-edge[video]' for "
                        "H.264 that survives a crash", CRASH_SAFE_SEGMENT_SECONDS, segment_seconds)
            segment_seconds = CRASH_SAFE_SEGMENT_SECONDS
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.fps = float(fps)
        self.prefix = prefix
        self.extension = video_extension(self.codec)
        self.frames_per_segment = max(1, round(segment_seconds * fps))
        self.frames_written = 0
        self.frames_lost = 0
        self.finished = 0
        self.segments: list[Path] = []
        self.deleted = 0
        if budget is None:  # a writer on its own (tests, tools): a budget of its own directory
            budget = DiskBudget(video_dir=self.directory, video_limits=retention,
                                video_floor=retention.min_free_bytes if retention else 0)
            budget.startup()
        self.budget = budget
        _make_dir(self.directory, "video")
        self._probe()  # after the budget's start-up: retention has freed what it can
        self._shape = (self.frame_size[1], self.frame_size[0], 3)
        self._seq = 0
        self._error: BaseException | None = None
        self._closed = False
        self._warn = _Throttled()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self._thread = threading.Thread(target=self._run, name="fer-video-writer", daemon=True)
        self._thread.start()
        budget.cut_video = self.new_segment

    def _probe(self) -> None:
        """Fail now, in the caller, if this codec cannot be written here."""
        if self.pyav:
            import av
            try:
                av.codec.Codec("libx264", "w")
            except Exception:
                raise Unavailable("this PyAV has no libx264 encoder; set video.codec = \"mp4v\"") from None
            return
        probe = self.directory / f".{self.prefix}-probe-{os.getpid()}{self.extension}"
        try:
            writer = cv2.VideoWriter(str(probe), cv2.VideoWriter_fourcc(*self.codec), self.fps, self.frame_size, True)
            if not writer.isOpened():
                free = _free_or_none(self.directory)
                why = (f"only {free} bytes are free in {self.directory}" if free is not None and free < 1 << 20
                       else "set video.codec to auto, mp4v or MJPG")
                raise OutputError(f"OpenCV cannot write {self.codec!r} video to {self.directory}; {why}")
            writer.release()
        finally:
            probe.unlink(missing_ok=True)

    def write(self, frame: np.ndarray) -> None:
        """Queue one BGR frame. The frame is encoded later on another thread: the caller must not
        modify it after this call (pass a copy if the buffer is reused)."""
        self._raise_pending()
        if self._closed or not self._thread.is_alive():
            raise OutputError(f"video writer for {self.directory} is closed or stopped after an error")
        if frame.shape != self._shape or frame.dtype != np.uint8:
            raise OutputError(f"video frame is {frame.shape} {frame.dtype}, but the writer was opened for "
                              f"{self._shape} uint8; keep the source resolution fixed")
        self._put(frame)

    def new_segment(self) -> None:
        """End the open segment after the frames already queued (SIGHUP, the disk budget); the next
        frame starts a new file. Nothing happens when no segment is open."""
        if not self._closed and self._thread.is_alive():
            try:
                self._queue.put_nowait(_CUT)
            except queue.Full:  # the writer is busy: a cut asked for by the budget can wait a check
                pass

    def status(self) -> str:
        """For STATUS: what a disk fault cost, when it did."""
        return f"video frames lost {self.frames_lost}" if self.frames_lost else ""

    def _put(self, item: Any) -> None:
        while True:
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                # the writer thread may have died with the queue full: never block forever
                self._raise_pending()
                if not self._thread.is_alive():
                    raise OutputError(f"video writer for {self.directory} stopped after an error") from None

    def close(self) -> None:
        """Finish the open segment and stop the thread."""
        if not self._closed:
            self._closed = True
            while self._thread.is_alive():
                try:
                    self._queue.put(None, timeout=0.5)
                    break
                except queue.Full:
                    continue
            self._thread.join()
            if self.budget.cut_video == self.new_segment:
                self.budget.cut_video = None
        self._raise_pending()

    def __enter__(self) -> SegmentedVideoWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _raise_pending(self) -> None:
        error, self._error = self._error, None
        if error is not None:  # only a bug gets here: disk faults are handled on the thread
            raise OutputError(f"video writer for {self.directory} failed: {error}") from error

    # -- writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        segment: Any = None
        partial = final = Path()
        count = 0
        resume_at = 0.0  # after a write error: monotonic time of the next try
        try:
            while True:
                frame = self._queue.get()
                if frame is None:
                    break
                if frame is _CUT:
                    if segment is not None:
                        segment, done = None, segment
                        self._finish(done, partial, final, count)
                    continue
                if segment is None:
                    if time.monotonic() < resume_at:
                        self.frames_lost += 1
                        continue
                    try:
                        segment, partial, final = self._start()
                    except Exception as exc:
                        self._failed(None, Path(), Path(), 0, exc, "cannot start a segment")
                        resume_at = time.monotonic() + RETRY_SECONDS
                        self.frames_lost += 1
                        continue
                    count = 0
                try:
                    segment.write(frame)
                except Exception as exc:
                    self._failed(segment, partial, final, count, exc, f"writing {partial.name} failed")
                    segment = None
                    resume_at = time.monotonic() + RETRY_SECONDS
                    self.frames_lost += 1
                    continue
                count += 1
                self.frames_written += 1
                if count == self.frames_per_segment:
                    segment, done = None, segment
                    self._finish(done, partial, final, count)
            if segment is not None:
                segment, done = None, segment
                self._finish(done, partial, final, count)
        except BaseException as exc:  # a bug: surfaced by the next write()/close()
            if segment is not None:
                segment.abandon()
            self._error = exc

    def _start(self) -> tuple[Any, Path, Path]:
        free = self.budget.make_room()
        if self.budget.csv_floor and free < self.budget.csv_floor:
            raise OSError(errno.ENOSPC, f"only {free >> 20} MiB free, under csv.min_free_bytes: the CSV log "
                          "comes first")
        make_dirs(self.directory)  # an administrator may have removed it
        final, self._seq = _free_name(self.directory, self.prefix, time.time(), self._seq, self.extension)
        partial = _partial_of(final)
        try:
            if self.pyav:
                segment: Any = _PyAvSegment(partial, self.fps, self.frame_size)
            else:
                segment = _OpenCvSegment(partial, self.codec, self.fps, self.frame_size)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if self._warn.reset("video"):
            log.warning("video: recording again (%d frame(s) lost while the disk was failing)", self.frames_lost)
        return segment, partial, final

    def _finish(self, segment: Any, partial: Path, final: Path, count: int) -> None:
        """Close a segment and give it its final name if it decodes, then apply the video limits."""
        try:
            segment.close()
        except Exception as exc:
            self._failed(segment, partial, final, count, exc, f"closing {partial.name} failed")
            return
        self._name(partial, final, count)

    def _failed(self, segment: Any, partial: Path, final: Path, count: int, exc: BaseException, what: str) -> None:
        """End a segment after an error: keep what decodes, remove the rest, say so (once a minute)."""
        if segment is not None:
            segment.abandon()
        kept = self._name(partial, final, count) if partial.name else False
        self._warn.warn("video", "video: %s (%s)%s; analysis and the CSV log go on, recording is retried every "
                        "%g s", what, _why(exc), "" if not partial.name else
                        f"; kept {final.name}" if kept else f"; removed {partial.name}, which did not decode",
                        RETRY_SECONDS)

    def _name(self, partial: Path, final: Path, count: int) -> bool:
        if not partial.exists():
            return False
        if not decodes(partial):  # a file that does not decode never gets a final name
            _unlink(partial)
            self.frames_lost += count
            return False
        try:
            os.rename(partial, final)
        except OSError as exc:
            log.warning("video: cannot rename %s (%s)", partial, _why(exc))
            return False
        fsync_dir(self.directory)
        _remember(self.segments, final)
        self.finished += 1
        self.deleted += self.budget.finished_video(final)
        return True


def _free_or_none(directory: Path) -> int | None:
    try:
        return free_bytes(directory)
    except OSError:
        return None


# -- CSV -----------------------------------------------------------------------------------------
def _csv_field(text: str) -> str:
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def repair_csv_tails(directory: Path, pattern: str) -> list[Path]:
    """A crash or power cut can leave a CSV file ending in a cut row: cut it off (only the last
    line can be cut, since rows are appended whole). Returns the files repaired."""
    repaired = []
    for path in sorted(directory.glob(pattern)):
        try:
            with open(path, "rb+") as fh:
                size = fh.seek(0, os.SEEK_END)
                if size == 0:
                    continue
                fh.seek(size - 1)
                if fh.read(1) == b"\n":
                    continue
                tail_start = max(0, size - 64 * 1024)
                fh.seek(tail_start)
                tail = fh.read()
                cut = tail.rfind(b"\n")
                fh.truncate(tail_start + cut + 1 if cut >= 0 else 0)
                fh.flush()
                os.fsync(fh.fileno())
            repaired.append(path)
        except OSError as exc:
            log.warning("csv: cannot repair %s (%s)", path, _why(exc))
    if repaired:
        log.warning("csv: removed a row cut short by a crash or power cut at the end of %s",
                    ", ".join(p.name for p in repaired))
    return repaired


class _Syncer:
    """fsync on a thread of its own: on an SD card one can take a second, the loop must not wait."""

    def __init__(self, name: str):
        self.lock = threading.Lock()  # held while syncing; take it before closing the descriptor
        self.fd: Optional[int] = None
        self._wake = threading.Event()
        self._stop = False
        self._warn = _Throttled()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def request(self, fd: int) -> None:
        self.fd = fd
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            with self.lock:
                if self.fd is not None:
                    try:
                        os.fsync(self.fd)
                    except OSError as exc:
                        self._warn.warn("fsync", "csv: fsync failed (%s)", _why(exc))

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5.0)


_ROTATE = None  # in the row queue: the rows after it go into a new file


class RollingCsvLog:
    """One row per face, in files rotated by size and/or age and pruned by the disk budget.

    Rows are queued in memory and appended on `tick` at least every flush_seconds, and fsync'd at
    least every sync_seconds (on a thread, so the loop never waits for the card). A row is written
    whole or not at all: a failed write is truncated back and its rows stay queued and are retried.
    The queue holds at most max_pending_rows; beyond that the oldest rows are dropped, counted in
    rows_dropped, the log and STATUS. Write errors are never raised: the daemon keeps running.
    """

    def __init__(self, directory: Path, *, labels: Sequence[str], source: str, max_bytes: int,
                 rotate_seconds: float, retention: Retention | None = None, budget: DiskBudget | None = None,
                 flush_seconds: float = 1.0, sync_seconds: float = 5.0, max_pending_rows: int = 20000,
                 prefix: str = "emotions", clock: Callable[[], float] = time.time):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.rotate_seconds = rotate_seconds
        self.flush_seconds = flush_seconds
        self.sync_seconds = sync_seconds
        self.max_pending_rows = max_pending_rows
        self.prefix = prefix
        self.pattern = _NAME_GLOB.format(prefix=prefix, ext=".csv")
        self.rows_written = 0
        self.rows_dropped = 0
        self.opened = 0  # files started
        self.files: list[Path] = []  # the newest RECENT_FILES: bounded over months
        self._clock = clock
        # Columns in the fixed EMOTIONS order whatever the model's order, so files from different
        # models line up; -1: the model lacks that emotion (empty cell).
        names = [canonical(label) for label in labels]
        extras = [i for i, name in enumerate(names) if name not in EMOTIONS]
        self._take = [names.index(e) if e in names else -1 for e in EMOTIONS] + extras
        columns = ["timestamp", "frame", "source", "face_id", "x", "y", "w", "h", "emotion", "confidence"]
        columns += [f"p_{e}" for e in EMOTIONS] + [f"p_{names[i]}" for i in extras]
        columns.append("media_s")  # last, so readers of the older columns read on unchanged
        self._header = (",".join(_csv_field(c) for c in columns) + "\n").encode()
        self._source = _csv_field(source)
        self._label_fields = {label: _csv_field(label) for label in labels}
        self._pending: deque[Optional[bytes]] = deque()  # rows, and _ROTATE marks
        self._pending_rows = 0
        self._pending_bytes = 0
        self._seq = 0
        self._fd: Optional[int] = None
        self._path: Optional[Path] = None
        self._on_disk = 0  # bytes of the open file known written
        self._size = len(self._header)  # bytes of the current file once its queued rows are in: decides rotation
        self._opened_at = 0.0
        self._last_flush = 0.0
        self._last_sync = 0.0
        self._unsynced = False
        self._failing_since: Optional[float] = None
        self._warn = _Throttled()
        if budget is None:  # a log on its own (tests, tools): a budget of its own directory
            budget = DiskBudget(csv_dir=self.directory, csv_limits=retention,
                                csv_floor=retention.min_free_bytes if retention else 0)
            budget.startup()
        self.budget = budget
        _make_dir(self.directory, "CSV")
        repair_csv_tails(self.directory, self.pattern)
        self._syncer = _Syncer(f"sync-{prefix}")
        if not self._open():
            self._syncer.stop()
            raise OutputError(f"cannot create a CSV log in {self.directory} ({self._open_error}); check "
                              "permissions and free space of output.directory")

    @property
    def path(self) -> Path | None:
        """The open file."""
        return self._path

    @property
    def rows_waiting(self) -> int:
        return self._pending_rows

    def write(self, timestamp: float, frame_index: int, faces: Sequence[FaceResult],
              media_s: float | None = None) -> None:
        """One row per face. `timestamp`: epoch seconds the frame shows; `media_s`: its position in
        a video file (None, an empty cell, for a camera)."""
        if not faces:
            return
        if self._syncer is None:
            raise OutputError("CSV log is closed")
        if self.rotate_seconds and self._clock() - self._opened_at >= self.rotate_seconds:
            self._rotate()
        stamp = datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="milliseconds")
        head = f"{stamp},{frame_index},{self._source},"
        tail = f",{media_s:.3f}\n" if media_s is not None else ",\n"
        for face in faces:
            probs = face.probabilities
            x, y, w, h = face.box
            label = self._label_fields.get(face.label) or _csv_field(face.label)
            cells = ",".join(f"{probs[i]:.4f}" if i >= 0 else "" for i in self._take)
            row = f"{head}{face.face_id},{x},{y},{w},{h},{label},{face.confidence:.4f},{cells}{tail}".encode()
            # a row bigger than max_bytes still goes into a file of its own rather than looping
            if self.max_bytes and self._size + len(row) > self.max_bytes and self._size > len(self._header):
                self._rotate()
            self._pending.append(row)
            self._pending_rows += 1
            self._pending_bytes += len(row)
            self._size += len(row)
        if self._pending_rows > self.max_pending_rows:
            self._drop_oldest()
        if self._pending_bytes >= 64 * 1024 and self._failing_since is None:
            self._flush()

    def tick(self, now: float | None = None) -> None:
        """Call every loop iteration: appends queued rows once flush_seconds have passed, and has
        them synced once sync_seconds have."""
        if self._syncer is None:
            return
        if self._pending:
            now = self._clock() if now is None else now
            if now - self._last_flush >= self.flush_seconds:
                self._flush(now)
        if self._unsynced and self._fd is not None:
            now = self._clock() if now is None else now
            if now - self._last_sync >= self.sync_seconds:
                self._last_sync = now
                self._unsynced = False
                self._syncer.request(self._fd)

    def reopen(self) -> None:
        """SIGHUP: close the current file and start a new one."""
        if self._syncer is not None:
            self._rotate()

    def status(self) -> str:
        """For STATUS: rows waiting for the disk and rows dropped, when there are any."""
        parts = []
        if self._failing_since is not None:
            parts.append(f"csv failing since {datetime.fromtimestamp(self._failing_since).strftime('%H:%M:%S')}, "
                         f"{self._pending_rows} rows waiting")
        if self.rows_dropped:
            parts.append(f"csv rows dropped {self.rows_dropped}")
        return ", ".join(parts)

    def close(self) -> None:
        if self._syncer is None:
            return
        self._flush()
        if self._pending_rows:
            self.rows_dropped += self._pending_rows
            log.warning("csv: %d row(s) could not be written to %s and are lost (%d dropped in all)",
                        self._pending_rows, self.directory, self.rows_dropped)
            self._pending.clear()
            self._pending_rows = self._pending_bytes = 0
        self._close_file()
        self._syncer.stop()
        self._syncer = None

    def __enter__(self) -> RollingCsvLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------
    def _rotate(self) -> None:
        self._pending.append(_ROTATE)
        self._size = len(self._header)
        self._flush()

    def _drop_oldest(self) -> None:
        dropped = 0
        while self._pending_rows > self.max_pending_rows:
            row = self._pending.popleft()
            if row is not _ROTATE:
                self._pending_rows -= 1
                self._pending_bytes -= len(row)
                dropped += 1
        self.rows_dropped += dropped
        self._warn.warn("dropped", "csv: the disk has refused rows for too long: dropped the oldest %d queued "
                        "row(s), %d in all (at most %d wait in memory)", dropped, self.rows_dropped,
                        self.max_pending_rows)

    def _open(self) -> bool:
        now = self._clock()
        path, self._seq = _free_name(self.directory, self.prefix, now, self._seq, ".csv")
        try:
            make_dirs(self.directory)
            self._fd = create_file(path, append=True)  # a truncated-back write continues at the end
        except OSError as exc:
            self._open_error = _why(exc)
            return False
        self._path, self._opened_at, self._on_disk = path, now, 0
        self._last_flush = self._last_sync = now
        _remember(self.files, path)
        self.opened += 1
        self._append(b"")  # the header; if it cannot be written, it goes with the first rows
        fsync_dir(self.directory)
        self.budget.new_csv(path)
        return True

    def _close_file(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with self._syncer.lock:  # type: ignore[union-attr]
            self._syncer.fd = None  # type: ignore[union-attr]
            try:
                os.fsync(fd)  # the finished file survives a power cut
            except OSError as exc:
                log.warning("csv: fsync of %s failed (%s)", self._path, _why(exc))
            os.close(fd)
        self._path = None
        self._unsynced = False

    def _flush(self, now: float | None = None) -> None:
        """Append the queued rows, file by file; on the first failure, the rest stay queued."""
        self._last_flush = self._clock() if now is None else now
        while self._pending:
            if self._pending[0] is _ROTATE:
                self._close_file()
                self._pending.popleft()
                if not self._open():  # now, so a new file exists as soon as the old one ends
                    self._failed(OSError(errno.EIO, self._open_error))
                    return
                continue
            if self._fd is None and not self._open():
                self._failed(OSError(errno.EIO, self._open_error))
                return
            rows = []
            while self._pending and self._pending[0] is not _ROTATE:
                rows.append(self._pending.popleft())
            if not self._append(b"".join(rows)):  # type: ignore[arg-type]
                self._pending.extendleft(reversed(rows))
                return
            self._pending_rows -= len(rows)
            self._pending_bytes -= sum(map(len, rows))  # type: ignore[arg-type]
            self.rows_written += len(rows)

    def _append(self, data: bytes) -> bool:
        """Append whole rows (with the header first in a new file), or nothing: a short write is
        truncated back. On a failure the disk budget is asked for room and it is tried once more."""
        fd = self._fd
        assert fd is not None
        if self._on_disk == 0:
            data = self._header + data
        for attempt in (1, 2):
            done = 0
            try:
                while done < len(data):
                    done += os.write(fd, data[done:])
            except OSError as exc:
                if done:
                    try:
                        os.ftruncate(fd, self._on_disk)
                    except OSError:  # the cut row stays: start a new file, summary skips it
                        self._close_file()
                        self._failed(exc)
                        return False
                if attempt == 1:
                    self.budget.make_room()
                    continue
                self._failed(exc)
                return False
            self._on_disk += len(data)
            self._unsynced = True
            if self._failing_since is not None:
                lasted = time.time() - self._failing_since
                self._failing_since = None
                self._warn.reset("failing")
                log.warning("csv: writing again after %.0f s; %d row(s) were dropped", lasted, self.rows_dropped)
            return True
        return False

    def _failed(self, exc: BaseException) -> None:
        if self._failing_since is None:
            self._failing_since = time.time()
        self._warn.warn("failing", "csv: cannot write to %s (%s); %d row(s) wait in memory (at most %d) and are "
                        "retried every %g s", self.directory, _why(exc), self._pending_rows,
                        self.max_pending_rows, self.flush_seconds)


def open_file_sinks(cfg: Any, out: Path, source: Any, labels: Sequence[str], queue_size: int = 8
                    ) -> tuple[Optional[DiskBudget], Optional[SegmentedVideoWriter], Optional[RollingCsvLog]]:
    """The disk budget first (start-up retention frees space before any probe or new file needs
    it), then the video writer and the CSV log that live within it."""
    v, c = cfg.video, cfg.csv
    if not (v.enabled or c.enabled):
        return None, None, None
    budget = DiskBudget(
        video_dir=out / "video" if v.enabled else None, csv_dir=out / "csv" if c.enabled else None,
        video_limits=Retention(v.max_files, v.max_bytes, max_age_days=v.max_age_days),
        csv_limits=Retention(c.max_files, c.max_total_bytes, max_age_days=c.max_age_days),
        video_floor=v.min_free_bytes if v.enabled else 0, csv_floor=c.min_free_bytes if c.enabled else 0)
    budget.startup()
    video = csv = None
    try:
        if v.enabled:
            video = SegmentedVideoWriter(out / "video", source.frame_size, source.fps,
                                         segment_seconds=v.segment_seconds, codec=v.codec, budget=budget,
                                         queue_size=queue_size)
        if c.enabled:
            csv = RollingCsvLog(out / "csv", labels=labels, source=source.name, max_bytes=c.max_bytes,
                                rotate_seconds=c.rotate_seconds, flush_seconds=c.flush_seconds,
                                sync_seconds=c.sync_seconds, budget=budget)
    except BaseException:
        if video is not None:
            video.close()
        raise
    return budget, video, csv


def gui_available() -> bool:
    """False for the headless OpenCV wheel (no HighGUI backend compiled in)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            return line.split(":", 1)[1].strip().upper() != "NONE"
    return True


class Display:
    """An OpenCV window; 'q', Esc or closing the window ends the run."""

    def __init__(self, window_name: str = "fer-edge"):
        if not gui_available():
            raise Unavailable("this OpenCV has no GUI support (opencv-python-headless); for display.enabled "
                              "install opencv-python (pip install 'fer-edge[display]') or apt's python3-opencv")
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise Unavailable("display.enabled needs a screen, but $DISPLAY is unset; run on the desktop "
                              "or set display.enabled = false")
        self.window_name = window_name
        try:
            cv2.namedWindow(window_name, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise Unavailable(f"cannot open a window ({exc.err}); set display.enabled = false") from None
        self._open = True

    def show(self, frame: np.ndarray) -> bool:
        """Draw the frame; False once the user pressed q/Esc or closed the window."""
        if not self._open:
            return False
        cv2.imshow(self.window_name, frame)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27) or cv2.getWindowProperty(self.window_name, cv2.WND_PROP_VISIBLE) < 1:
            return False
        return True

    def close(self) -> None:
        if self._open:
            self._open = False
            cv2.destroyWindow(self.window_name)
            cv2.waitKey(1)  # let HighGUI process the close
