"""The loop: Frame → faces → predictions → sinks. Read it top to bottom in `Pipeline.run`.

Analysis (detect + classify) runs on every Nth frame, or adaptively at a target rate of
media time; the frames in between are annotated with the latest results and recorded. Video is
recorded always, or only while a face is in view (`video.record = "faces"`). Each stage's time is
accumulated so `fer-edge bench` and the systemd STATUS can say where it goes. While a camera is
away (see sources.LiveSource) the loop idles: no rows, the segment finished, the watchdog still fed.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import cv2
import numpy as np

from .annotate import Annotator
from .config import Config
from .detector import FaceDetector
from .records import FaceResult
from .runtime import EmotionClassifier
from .sources import Frame, Source
from .tracker import FaceTracker

STAGES = ("capture", "detect", "preprocess", "infer", "track", "annotate", "encode", "log", "display")


@dataclass
class RunStats:
    frames: int = 0
    analysed: int = 0
    faces: int = 0  # face detections over analysed frames
    frames_with_faces: int = 0  # frames whose shown results include a face
    recorded: int = 0  # frames sent to the video writer
    events: int = 0  # video.record = "faces": times recording started because a face came into view
    seconds: float = 0.0
    first_analysis_s: Optional[float] = None  # from Pipeline construction to the first analysed frame
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def stage_ms_per_frame(self) -> dict[str, float]:
        return {k: round(1000 * v / max(1, self.frames), 3) for k, v in self.stage_s.items()}


def crop_face(image: np.ndarray, box: np.ndarray, margin: float, grey: bool) -> np.ndarray:
    """The face's pixels in the model's colour space; converting only the crop, not the frame."""
    x, y, w, h = (int(v) for v in box)
    if margin:
        dx, dy = int(w * margin / 2), int(h * margin / 2)
        x, y, w, h = x - dx, y - dy, w + 2 * dx, h + 2 * dy
    crop = image[max(0, y):y + h, max(0, x):x + w]
    return cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY if grey else cv2.COLOR_BGR2RGB)


class Scheduler:
    """Which frames to analyse: every Nth, or adaptively `target_fps` times per second of media,
    and `idle_fps` times while no face is in view.

    Why idle: with nobody there, every analysis is a full-frame Haar scan, the largest cost left
    in an empty room; scanning less often delays noticing a newcomer by at most 1 / idle_fps.
    """

    def __init__(self, every: int, target_fps: float, idle_fps: float | None = None):
        self.every = every
        self.interval = 1.0 / target_fps
        self.idle_interval = max(self.interval, 1.0 / idle_fps) if idle_fps else self.interval
        self._due_ts = -math.inf  # when the last analysis was due (media time)

    def due(self, frame: Frame, idle: bool = False) -> bool:
        if self.every > 0:
            return frame.index % self.every == 0
        interval = self.idle_interval if idle else self.interval
        next_ts = self._due_ts + interval
        if frame.timestamp + 1e-6 < next_ts:
            return False
        # Step from the due time so the rate holds; after a gap (dropped frames, a stall) step
        # from now instead, so the scheduler does not burst to catch up.
        self._due_ts = frame.timestamp if frame.timestamp - next_ts >= interval else next_ts
        return True


def pre_roll_frames(record: str, fps: float, pre_roll_seconds: float) -> int:
    """How many frames the pre-roll holds; the video writer's queue takes them all at once."""
    return 0 if record == "always" else round(pre_roll_seconds * fps)


class RecordGate:
    """Which frames to record: all (`always`), or (`faces`) only while a face is in view, from
    `pre_roll_seconds` before it was first shown until `post_roll_seconds` after the last one left.

    Why: on a months-long install an empty room would cost drawing, encoding and card space, and
    retention would then delete footage of people to keep footage of nobody.
    """

    def __init__(self, record: str, fps: float, pre_roll_seconds: float, post_roll_seconds: float):
        self.always = record == "always"
        self.post_roll_seconds = post_roll_seconds
        # Sources hand out a new array per frame, so holding frames costs memory, never a copy. Each
        # is held undrawn (with the fps to print on it) unless it was drawn for a viewer anyway: most
        # pre-roll frames are never recorded, so they are drawn only when they are.
        self.pre_roll: deque[tuple[np.ndarray, Optional[float], bool]] = deque(
            maxlen=pre_roll_frames(record, fps, pre_roll_seconds))
        self.recording = self.always
        self._until = -math.inf  # media time up to which the current event records

    def update(self, timestamp: float, faces_in_view: bool) -> tuple[bool, bool]:
        """Move to this frame; returns (an event starts at it, the event ended just before it)."""
        if self.always:
            return False, False
        if faces_in_view:
            self._until = timestamp + self.post_roll_seconds
        was, self.recording = self.recording, timestamp <= self._until
        return self.recording and not was, was and not self.recording

    def interrupt(self) -> None:
        """The picture went away: an event in progress ends, and the pre-roll no longer leads up to now."""
        if not self.always:
            self.recording, self._until = False, -math.inf
        self.pre_roll.clear()

    @property
    def keeps_frame(self) -> bool:
        """Whether the current frame is recorded or held as pre-roll."""
        return self.recording or bool(self.pre_roll.maxlen)


class Pipeline:
    def __init__(self, cfg: Config, source: Source, classifier: EmotionClassifier, detector: FaceDetector,
                 *, video=None, csv=None, display=None, preview=None, notifier=None, disk=None, mqtt=None,
                 on_analysis: Optional[Callable[[Frame, list[FaceResult]], None]] = None):
        self.t_created = time.perf_counter()
        self.cfg = cfg
        self.source, self.classifier, self.detector = source, classifier, detector
        self.video, self.csv, self.display, self.notifier = video, csv, display, notifier
        self.preview = preview
        self.mqtt = mqtt  # mqtt.MqttSink: gets what the CSV gets, and the faces in view; never blocks
        self.disk = disk  # the sinks' DiskBudget: free space is checked every few seconds
        self.on_analysis = on_analysis
        self.scheduler = Scheduler(cfg.analysis.every, cfg.analysis.target_fps, cfg.analysis.idle_fps)
        self.full_scan_interval = cfg.detection.full_scan_seconds
        self._next_full_scan = -math.inf  # media time of the next full-frame scan
        self._last_analysis = -math.inf
        self.tracker = FaceTracker(classifier.labels, smoothing=cfg.analysis.smoothing)
        self.annotator = Annotator(classifier.labels, bars=cfg.video.bars,
                                   blur=cfg.video.blur if cfg.video.blur_faces else None)
        v = cfg.video
        self.gate = RecordGate(v.record, source.fps, v.pre_roll_seconds, v.post_roll_seconds)
        self.grey_faces = classifier.info.input_channels == 1
        self.margin = cfg.analysis.face_margin
        self.stats = RunStats()
        self.stop_event = threading.Event()
        self.reopen_event = threading.Event()
        self._started = self._last_status = 0.0  # perf_counter times, set by run

    # --- signals -------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT end the loop cleanly (segment closed, CSV flushed); SIGHUP starts a new
        CSV file and a new video segment (logrotate's convention)."""
        def stop(signum, _frame):
            self.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: self.reopen_event.set())

    # --- the loop ------------------------------------------------------------------------------
    def run(self, max_frames: int | None = None) -> RunStats:
        st, clock = self.stats, time.perf_counter
        stage = st.stage_s
        started = self._started = self._last_status = clock()
        shown: list[FaceResult] = []
        away = False  # the camera is lost and what was in progress has been ended
        live = self.source.live
        # a file's video shows its own rate until the processing rate is measured: a short clip is
        # processed in less than the second a camera's counter waits for
        fps_window = _RateMeter(None if live else self.source.fps)
        if self.notifier is not None:
            self.notifier.ready(self.source.problem or f"running on {self.source.name}")
        try:
            while not self.stop_event.is_set():
                t0 = clock()
                frame = self.source.read()  # 1. capture
                t1 = clock()
                stage["capture"] += t1 - t0
                if frame is None:
                    if not self.source.live:
                        break  # the end of a file; a camera only pauses
                    if not away and self.source.problem:
                        away, shown = True, self._camera_lost()
                    self._housekeeping(t1)
                    continue
                away = False
                if self.scheduler.due(frame, idle=not shown):  # 2. analyse: faces → predictions
                    detected = self._analyse(frame, shown)
                    shown = self.tracker.visible()
                    st.analysed += 1
                    st.faces += len(detected)
                    if st.first_analysis_s is None:
                        st.first_analysis_s = clock() - self.t_created
                    t2 = clock()
                    logged_at = frame.wall_time  # the rows' time, for the CSV and MQTT alike: the same visits
                    if self.csv is not None:  # a file's rows also say where in it they are
                        self.csv.write(logged_at, frame.index, detected, None if live else frame.timestamp)
                    if self.mqtt is not None:
                        self.mqtt.write(logged_at, frame.index, detected, shown)
                    if self.on_analysis is not None:
                        self.on_analysis(frame, detected)
                    if self.preview is not None:
                        self.preview.publish_results(frame.wall_time, shown)
                    stage["log"] += clock() - t2
                st.frames_with_faces += bool(shown)
                # 3. sinks; pixels are touched only for a frame that is recorded or watched
                t3 = clock()
                keep = self.video is not None and self._gate_recording(frame, bool(shown))
                stage["encode"] += clock() - t3  # a pre-roll flush is drawn and queued here
                record = keep and self.gate.recording
                watched = self.preview is not None and self.preview.watched
                drawn = record or watched or self.display is not None
                if keep and not record:  # pre-roll: held, drawn only if it is ever recorded
                    self.gate.pre_roll.append((frame.image, fps_window.rate, drawn))
                if drawn:
                    t3 = clock()
                    self.annotator.draw(frame.image, shown, fps_window.rate)
                    t4 = clock()
                    stage["annotate"] += t4 - t3
                    if record:
                        self.video.write(frame.image)
                        st.recorded += 1
                    if watched:
                        self.preview.publish_frame(frame.image)  # encoded on the preview's thread
                    t5 = clock()
                    stage["encode"] += t5 - t4
                    if self.display is not None and not self.display.show(frame.image):
                        self.stop_event.set()
                    stage["display"] += clock() - t5
                st.frames += 1
                now = clock()
                fps_window.tick(now)
                self._housekeeping(now)
                if max_frames is not None and st.frames >= max_frames:
                    break
        finally:
            st.seconds = clock() - started
            self.close()
        return st

    def _housekeeping(self, now: float) -> None:
        """Once a frame, and while a camera is away: CSV flushing, the disk budget, SIGHUP, watchdog
        and STATUS."""
        if self.csv is not None:
            self.csv.tick()
        if self.disk is not None:
            self.disk.tick()
        if self.reopen_event.is_set():
            self.reopen_event.clear()
            if self.csv is not None:
                self.csv.reopen()
            if self.video is not None:
                self.video.new_segment()
        if self.notifier is not None:
            self.notifier.maybe_watchdog(now)
            if now - self._last_status >= 5.0:
                self._last_status = now
                self.notifier.status(self.status_line(now - self._started))

    def _camera_lost(self) -> list[FaceResult]:
        """End what spans the gap: the video segment (finished, not left open while the camera is
        away), a recording event and the face tracks. Returns the faces shown now: none."""
        if self.video is not None:
            self.video.new_segment()
        self.gate.interrupt()
        self.tracker = FaceTracker(self.classifier.labels, smoothing=self.cfg.analysis.smoothing)
        if self.notifier is not None:
            self._last_status = time.perf_counter()
            self.notifier.status(self.status_line(self._last_status - self._started))
        return []

    def _analyse(self, frame: Frame, shown: list[FaceResult]) -> list[FaceResult]:
        stage, clock = self.stats.stage_s, time.perf_counter
        t0 = clock()
        # Near the faces on screen while they are found there; the whole frame now and then, for
        # faces that just came in (and at once when a tracked face is lost).
        boxes, scanned = self.detector.find(frame.image, frame.grey_small, [f.box for f in shown],
                                            full_scan=frame.timestamp >= self._next_full_scan,
                                            elapsed=frame.timestamp - self._last_analysis)
        self._last_analysis = frame.timestamp
        if scanned:
            self._next_full_scan = frame.timestamp + self.full_scan_interval
        t1 = clock()
        crops = [crop_face(frame.image, box, self.margin, self.grey_faces) for box in boxes]
        t2 = clock()
        probs = self.classifier.predict(crops)  # every face of the frame in one invoke
        t3 = clock()
        detected = self.tracker.update(boxes, probs)
        stage["detect"] += t1 - t0
        stage["preprocess"] += t2 - t1
        stage["infer"] += t3 - t2
        stage["track"] += clock() - t3
        return detected

    def _gate_recording(self, frame: Frame, faces_in_view: bool) -> bool:
        """Start or end a recording event at this frame; returns whether to keep the frame."""
        started, ended = self.gate.update(frame.timestamp, faces_in_view)
        if ended:
            self.video.new_segment()  # the event's file is finished now, not when the next one begins
        if started:
            self.stats.events += 1
            while self.gate.pre_roll:
                image, held_fps, drawn = self.gate.pre_roll.popleft()
                if not drawn:  # no face was in view then: only the fps counter to draw
                    self.annotator.draw(image, (), held_fps)
                self.video.write(image)
                self.stats.recorded += 1
        return self.gate.keeps_frame

    def counters(self) -> dict:
        """The run so far, for the preview's /status (read from another thread: plain ints)."""
        st = self.stats
        return {"frames": st.frames, "analysed": st.analysed, "faces": st.faces, "recorded": st.recorded,
                "events": st.events, "dropped": self.source.dropped,
                "video_frames_lost": self.video.frames_lost if self.video is not None else 0,
                "csv_rows_dropped": self.csv.rows_dropped if self.csv is not None else 0,
                **({"mqtt": self.mqtt.counters()} if self.mqtt is not None else {})}

    def status_line(self, elapsed: float) -> str:
        st = self.stats
        problem = self.source.problem
        line = ((f"{problem}; " if problem else "")
                + f"frames {st.frames}, {st.frames / max(elapsed, 1e-9):.1f} fps, analysed {st.analysed}, "
                f"faces {st.faces}, dropped {self.source.dropped}"
                + (f", recorded {st.recorded}" if self.video is not None else ""))
        # what disk faults cost: rows and frames that could not be written
        faults = [sink.status() for sink in (self.csv, self.video, self.mqtt) if sink is not None]
        return ", ".join([line] + [f for f in faults if f])

    def close(self) -> None:
        """Close every sink even if one fails, so a segment is finalised and the CSV flushed."""
        if self.notifier is not None:
            self.notifier.stopping()
        errors = []
        for sink in (self.video, self.csv, self.mqtt, self.display, self.preview, self.source):
            if sink is None:
                continue
            try:
                sink.close()
            except Exception as exc:  # keep closing the others
                errors.append(exc)
        if errors:
            raise errors[0]


class _RateMeter:
    """Frames per second over the last second or WINDOW_FRAMES frames, whichever is first, for the
    on-frame counter; `initial` until the first measurement."""

    WINDOW_FRAMES = 30

    def __init__(self, initial: float | None = None) -> None:
        self.rate: float | None = initial
        self._t0: float | None = None
        self._n = 0

    def tick(self, now: float) -> None:
        if self._t0 is None:
            self._t0 = now
            return  # the window starts at the first frame's end
        self._n += 1
        if now - self._t0 >= 1.0 or (self._n >= self.WINDOW_FRAMES and now > self._t0):
            self.rate = self._n / (now - self._t0)
            self._t0, self._n = now, 0
