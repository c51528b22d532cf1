"""Where results go: segmented video, rolling CSV logs, an optional window.

Both file sinks name files `{prefix}-YYYYmmddTHHMMSSZ-NNNN.ext` (UTC start + a sequence), so name
order is age order, and both prune the oldest files with one Retention policy. A finished file is
always complete: a crash or a power cut loses at most the open video segment or the last CSV flush.
"""
from __future__ import annotations

import logging
import os
import queue
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

import cv2
import numpy as np

from .errors import OutputError, Unavailable
from .labels import EMOTIONS, canonical
from .records import FaceResult

log = logging.getLogger(__name__)

_STAMP = "%Y%m%dT%H%M%SZ"
# A glob that matches our names (finished and partial) but not another prefix such as fer-cam2-.
_NAME_GLOB = "{prefix}-[0-9]*T[0-9]*Z-[0-9]*{ext}"


def _utc_stamp(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, timezone.utc).strftime(_STAMP)


def _free_name(directory: Path, prefix: str, unix_time: float, seq: int, suffix: str) -> tuple[Path, int]:
    """The first unused `{prefix}-{stamp}-{seq:04d}{suffix}`; a restart within the same second
    must not overwrite the previous run's file."""
    stamp = _utc_stamp(unix_time)
    while True:
        seq = seq % 10000  # only orders files within one second, so wrapping is harmless
        path = directory / f"{prefix}-{stamp}-{seq:04d}{suffix}"
        if not path.exists():
            return path, seq + 1
        seq += 1


def _make_dir(directory: Path, what: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {what} directory {directory} ({exc.strerror or exc}); "
                          "choose a writable output.directory") from None


class Retention:
    """Keep at most max_files files and max_bytes bytes, and at least min_free_bytes free on the
    file system; 0 disables a limit. The oldest files (by name) go first."""

    def __init__(self, max_files: int = 0, max_bytes: int = 0, min_free_bytes: int = 0):
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes

    def enforce(self, directory: Path, pattern: str, protect: Path | None = None) -> list[Path]:
        """Delete the oldest files matching `pattern` until every limit holds; `protect` (the open
        file) counts towards the limits but is never deleted. Returns the deleted paths."""
        if not (self.max_files or self.max_bytes or self.min_free_bytes):
            return []
        sizes: dict[Path, int] = {}
        for path in sorted(directory.glob(pattern)):
            try:
                sizes[path] = path.stat().st_size
            except FileNotFoundError:  # removed meanwhile
                pass
        keep = protect.name if protect is not None else None
        candidates = [path for path in sizes if path.name != keep]
        count, total = len(sizes), sum(sizes.values())
        deleted: list[Path] = []
        for path in candidates:
            if not ((self.max_files and count > self.max_files)
                    or (self.max_bytes and total > self.max_bytes)
                    or (self.min_free_bytes and shutil.disk_usage(directory).free < self.min_free_bytes)):
                break
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:  # keep pruning the others; the disk must not fill up
                log.warning("retention: cannot delete %s (%s)", path, exc.strerror or exc)
                continue
            count, total = count - 1, total - sizes[path]
            deleted.append(path)
        return deleted


_CONTAINERS = {"mp4v": ".mp4", "avc1": ".mp4", "h264": ".mp4", "x264": ".mp4", "hev1": ".mp4",
               "mjpg": ".avi", "xvid": ".avi", "divx": ".avi"}


def video_extension(codec: str) -> str:
    return _CONTAINERS.get(codec.lower(), ".avi")  # AVI takes nearly any FourCC


def _open_writer(path: Path, codec: str, fps: float, frame_size: tuple[int, int], fix: str) -> cv2.VideoWriter:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, frame_size, True)
    if not writer.isOpened():
        raise OutputError(f"OpenCV cannot write {codec!r} video to {path}; {fix}")
    return writer


RECENT_FILES = 1000  # file names a sink remembers for its run summary


def _remember(names: list[Path], path: Path) -> None:
    names.append(path)
    del names[:-RECENT_FILES]  # a months-long run must not grow this without bound


_CUT = object()  # queued by new_segment(): the writer thread finishes the open segment there


class SegmentedVideoWriter:
    """Writes frames into segments of `segment_seconds` of recorded (media) time.

    Encoding runs on a background thread fed by a bounded queue (OpenCV releases the GIL while
    encoding, so a second core encodes while the main loop detects); `write` blocks when the queue
    is full rather than dropping frames. A writer-thread error is raised (as OutputError) by the
    next `write` or `close`, and every later `write` fails too.

    Counters: frames_written (encoded), finished (segments completed), segments (the newest
    RECENT_FILES finished files in order, including ones retention deleted since; bounded, as a
    daemon runs for months), deleted (segments retention removed).
    """

    def __init__(self, directory: Path, frame_size: tuple[int, int], fps: float, *, segment_seconds: float,
                 codec: str = "mp4v", retention: Retention, prefix: str = "fer", queue_size: int = 8):
        if len(codec) != 4:
            raise OutputError(f"video codec {codec!r} is not a FourCC; use mp4v or MJPG")
        if fps <= 0 or segment_seconds <= 0:
            raise OutputError(f"video fps ({fps}) and segment_seconds ({segment_seconds}) must be positive")
        self.directory = Path(directory)
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.fps = float(fps)
        self.codec = codec
        self.retention = retention
        self.prefix = prefix
        self.extension = video_extension(codec)
        self.frames_per_segment = max(1, round(segment_seconds * fps))
        self.pattern = _NAME_GLOB.format(prefix=prefix, ext=self.extension)
        self.frames_written = 0
        self.finished = 0
        self.segments: list[Path] = []
        self.deleted = 0
        _make_dir(self.directory, "video")
        self._probe()
        self.deleted += len(retention.enforce(self.directory, self.pattern))  # a disk filled before a restart
        self._shape = (self.frame_size[1], self.frame_size[0], 3)
        self._seq = 0
        self._error: BaseException | None = None
        self._closed = False
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self._thread = threading.Thread(target=self._run, name="fer-video-writer", daemon=True)
        self._thread.start()

    def _probe(self) -> None:
        """Fail now, in the caller, if OpenCV cannot write this codec here."""
        probe = self.directory / f".{self.prefix}-probe-{os.getpid()}{self.extension}"
        try:
            _open_writer(probe, self.codec, self.fps, self.frame_size, "set video.codec to mp4v or MJPG").release()
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
        """End the open segment after the frames already queued (SIGHUP); the next frame starts
        a new file. Nothing happens when no segment is open."""
        self._raise_pending()
        if not self._closed and self._thread.is_alive():
            self._put(_CUT)

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
        """Finish the open segment and stop the thread; raises a pending writer error."""
        if not self._closed:
            self._closed = True
            while self._thread.is_alive():
                try:
                    self._queue.put(None, timeout=0.5)
                    break
                except queue.Full:
                    continue
            self._thread.join()
        self._raise_pending()

    def __enter__(self) -> SegmentedVideoWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _raise_pending(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            if isinstance(error, OutputError):
                raise error
            raise OutputError(f"video writer for {self.directory} failed: {error}") from error

    # -- writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        writer: cv2.VideoWriter | None = None
        partial = final = Path()
        count = 0
        try:
            while True:
                frame = self._queue.get()
                if frame is None:
                    break
                if frame is _CUT:
                    if writer is not None:
                        writer, done = None, writer
                        self._finish(done, partial, final, count)
                    continue
                if writer is None:
                    final, self._seq = _free_name(self.directory, self.prefix, time.time(), self._seq,
                                                  self.extension)
                    # keep the real extension last: OpenCV picks the container from it
                    partial = final.with_name(final.stem + ".partial" + self.extension)
                    # the codec worked at start, so the disk or the directory is the problem
                    writer = _open_writer(partial, self.codec, self.fps, self.frame_size,
                                          f"check free space and that {self.directory} still exists")
                    count = 0
                writer.write(frame)
                count += 1
                self.frames_written += 1
                if count == self.frames_per_segment:
                    writer, done = None, writer
                    self._finish(done, partial, final, count)
            if writer is not None:
                writer, done = None, writer
                self._finish(done, partial, final, count)
        except BaseException as exc:  # surfaced by the next write()/close()
            if writer is not None:
                writer.release()
            self._error = exc if isinstance(exc, OutputError) else OutputError(
                f"video writer in {self.directory} failed ({getattr(exc, 'strerror', None) or exc}); "
                "check free space and permissions")

    def _finish(self, writer: cv2.VideoWriter, partial: Path, final: Path, count: int) -> None:
        """Close a segment, give it its final name, then prune old segments."""
        writer.release()
        # VideoWriter reports no write errors: an empty file after frames is the one sign of a full disk
        if partial.stat().st_size == 0:
            raise OutputError(f"video segment {partial} is empty after {count} frames; is the disk full?")
        os.replace(partial, final)
        _remember(self.segments, final)
        self.finished += 1
        # the newest segment stays even when it alone exceeds max_bytes
        self.deleted += len(self.retention.enforce(self.directory, self.pattern, protect=final))


def _csv_field(text: str) -> str:
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


class RollingCsvLog:
    """One row per face, in files rotated by size and/or age and pruned by a Retention.

    Rows are buffered in memory and reach the disk on `tick` at least every flush_seconds; bytes
    that could not be written stay buffered (and an OutputError is raised), never silently dropped.
    """

    def __init__(self, directory: Path, *, labels: Sequence[str], source: str, max_bytes: int,
                 rotate_seconds: float, retention: Retention, flush_seconds: float = 1.0,
                 prefix: str = "emotions", clock: Callable[[], float] = time.time):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.rotate_seconds = rotate_seconds
        self.retention = retention
        self.flush_seconds = flush_seconds
        self.prefix = prefix
        self.pattern = _NAME_GLOB.format(prefix=prefix, ext=".csv")
        self.rows_written = 0
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
        self._header = (",".join(_csv_field(c) for c in columns) + "\n").encode()
        self._source = _csv_field(source)
        self._label_fields = {label: _csv_field(label) for label in labels}
        self._pending: list[str] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self._unwritten = b""  # encoded bytes a failed write left behind
        self._seq = 0
        self._fh: BinaryIO | None = None
        self._path: Path | None = None
        self._size = 0
        self._opened_at = 0.0
        self._last_flush = 0.0
        _make_dir(self.directory, "CSV")
        self._open()

    @property
    def path(self) -> Path | None:
        """The open file."""
        return self._path

    def write(self, timestamp: float, frame_index: int, faces: Sequence[FaceResult]) -> None:
        if not faces:
            return
        if self._fh is None:
            raise OutputError("CSV log is closed")
        if self.rotate_seconds and self._clock() - self._opened_at >= self.rotate_seconds:
            self._rotate()
        stamp = datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="milliseconds")
        head = f"{stamp},{frame_index},{self._source},"
        for face in faces:
            probs = face.probabilities
            x, y, w, h = face.box
            label = self._label_fields.get(face.label) or _csv_field(face.label)
            cells = ",".join(f"{probs[i]:.4f}" if i >= 0 else "" for i in self._take)
            row = f"{head}{face.face_id},{x},{y},{w},{h},{label},{face.confidence:.4f},{cells}\n"
            size = len(row.encode())
            # a row bigger than max_bytes still goes into a file of its own rather than looping
            if self.max_bytes and self._size + size > self.max_bytes and self._size > len(self._header):
                self._rotate()
            self._pending.append(row)
            self._pending_rows += 1
            self._pending_bytes += size
            self._size += size
        if self._pending_bytes >= 64 * 1024:
            self._flush()

    def tick(self, now: float | None = None) -> None:
        """Call every loop iteration: flushes buffered rows once flush_seconds have passed."""
        if (self._pending or self._unwritten) and self._fh is not None:
            now = self._clock() if now is None else now
            if now - self._last_flush >= self.flush_seconds:
                self._flush(now)

    def reopen(self) -> None:
        """SIGHUP: close the current file and start a new one."""
        if self._fh is not None:
            self._rotate()

    def close(self) -> None:
        if self._fh is None:
            return
        fh = self._fh
        try:
            self._flush()
            os.fsync(fh.fileno())
        finally:
            if not (self._pending or self._unwritten):  # else a later close() retries the write
                fh.close()
                self._fh = None

    def __enter__(self) -> RollingCsvLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------
    def _open(self) -> None:
        now = self._clock()
        path, self._seq = _free_name(self.directory, self.prefix, now, self._seq, ".csv")
        try:
            self._fh = open(path, "xb", buffering=0)  # we buffer rows ourselves
        except OSError as exc:
            raise OutputError(f"cannot create CSV log {path} ({exc.strerror or exc}); "
                              "check permissions and free space of output.directory") from None
        self._path, self._opened_at, self._last_flush = path, now, now
        _remember(self.files, path)
        self.opened += 1
        self._unwritten = self._header
        self._size = len(self._header)
        self._write_out()
        self.retention.enforce(self.directory, self.pattern, protect=path)

    def _rotate(self) -> None:
        fh = self._fh
        assert fh is not None
        self._flush()
        os.fsync(fh.fileno())  # the finished file survives a power cut
        fh.close()
        self._fh = None
        self._open()

    def _flush(self, now: float | None = None) -> None:
        if self._pending:
            self._unwritten += "".join(self._pending).encode()
            rows, self._pending, self._pending_rows, self._pending_bytes = self._pending_rows, [], 0, 0
        else:
            rows = 0
        self._write_out()
        self.rows_written += rows
        self._last_flush = self._clock() if now is None else now

    def _write_out(self) -> None:
        """Write self._unwritten; on a full disk prune with the retention policy and retry once."""
        fh = self._fh
        assert fh is not None
        for attempt in (1, 2):
            try:
                while self._unwritten:
                    # a raw file may write only part (e.g. up to a full disk): keep the rest
                    self._unwritten = self._unwritten[fh.write(self._unwritten):]
                return
            except OSError as exc:
                if attempt == 1:
                    self.retention.enforce(self.directory, self.pattern, protect=self._path)
                    continue
                raise OutputError(f"cannot write CSV log in {self.directory} ({exc.strerror or exc}); "
                                  f"{len(self._unwritten)} bytes are kept in memory: free disk space or lower "
                                  "csv.max_files/csv.max_total_bytes") from None


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
