"""Declarative configuration: dataclasses with defaults, a TOML file, then CLI overrides.

Every key is checked: an unknown key or a bad value is a ConfigError (exit 78), so systemd's
RestartPreventExitStatus=78 stops a misconfigured service instead of restart-looping it.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Raspberry Pi OS bullseye
    import tomli as tomllib

from .errors import ConfigError

SERVICE_CONFIG = Path("/etc/fer-edge/config.toml")
SOURCE_KINDS = ("auto", "picamera2", "v4l2", "file")
RECORD_MODES = ("always", "faces")
BLUR_STYLES = ("blur", "pixelate")
MAX_PRE_ROLL_SECONDS = 10.0  # pre-roll frames are held in memory: about 28 MB a second at 640x480, 30 fps


@dataclass
class SourceConfig:
    kind: str = "auto"  # auto | picamera2 | v4l2 | file
    path: str = ""  # video file, /dev/videoN or a camera index; empty: the first camera
    width: int = 640
    height: int = 480
    fps: float = 30.0
    realtime: bool = False  # video files: pace at the file's own fps, dropping frames like a camera
    wait: bool = True  # cameras: wait for one that is absent at start (false: exit 69 at once)
    stall_seconds: float = 10.0  # cameras: a call that takes longer is a hang (reopen, or exit for picamera2)
    retry_max_seconds: float = 60.0  # cameras: reopening backs off from 1 s, doubling up to this


@dataclass
class DetectionConfig:
    width: int = 320  # Haar runs on a grey frame this wide; boxes are scaled back
    scale_factor: float = 1.2  # benchmarks/README.md: 40% cheaper than 1.1, the same faces found
    min_neighbors: int = 5
    min_size: int = 24  # smallest face, pixels of the detection frame
    full_scan_seconds: float = 1.0  # between tracked faces, scan the whole frame this often (media time)
    cascade: str = ""  # empty: haarcascade_frontalface_default.xml from OpenCV or apt


@dataclass
class ModelConfig:
    path: str = ""  # empty: the bundled default model
    num_threads: int = 1  # a face is ~0.2 ms of work: thread hand-off costs more than it saves
    runtime: str = ""  # empty: best present (litert, tflite-runtime, tensorflow)
    mirror_average: bool = False  # average each face with its mirror image: ~1 point accuracy, 2x inference


@dataclass
class AnalysisConfig:
    every: int = 0  # analyse every Nth frame; 0: adaptive, holding target_fps analyses per second
    target_fps: float = 6.0
    idle_fps: float = 2.0  # adaptive mode, while no face is in view: analyses per second (at most target_fps)
    smoothing: float = 0.5  # weight of a face's history in its probabilities (0: none)
    face_margin: float = 0.0  # grow each box by this fraction before classifying


@dataclass
class VideoConfig:
    enabled: bool = True
    record: str = "always"  # always | faces: only while a face is in view, plus pre- and post-roll
    pre_roll_seconds: float = 1.0  # faces: also keep this much before a face is first found (the arrival)
    post_roll_seconds: float = 5.0  # faces: keep recording this long after the last face left
    segment_seconds: float = 300.0  # recorded seconds per file
    codec: str = "auto"  # auto: H.264 fragmented MP4 with PyAV (a crash loses ~1 s), else OpenCV mp4v; or a FourCC
    max_files: int = 0  # retention; 0: no limit
    max_bytes: int = 0  # retention for all segments together; 0: no limit
    max_age_days: float = 0.0  # retention: delete segments older than this; 0: no limit
    min_free_bytes: int = 512 * 1024 ** 2  # delete the oldest segments to keep this much disk free
    bars: bool = True  # per-emotion bars beside each face
    blur_faces: bool = False  # blur every tracked face (with a margin) in the video and the live view
    blur: str = "blur"  # blur_faces: blur | pixelate


@dataclass
class CsvConfig:
    enabled: bool = True
    max_bytes: int = 10 * 1024 ** 2  # rotate a file at this size; 0: no size rotation
    rotate_seconds: float = 86400.0  # rotate at least this often; 0: no time rotation
    max_files: int = 60
    max_total_bytes: int = 0
    max_age_days: float = 0.0  # delete files older than this; 0: no limit
    min_free_bytes: int = 32 * 1024 ** 2  # the second, lower floor: under it every video goes, then old CSV files
    flush_seconds: float = 1.0  # rows reach the file (a kill -9 loses at most this much)
    sync_seconds: float = 5.0  # rows reach the card (a power cut loses at most this much)


@dataclass
class OutputConfig:
    directory: str = "fer-edge-output"  # the service uses /var/lib/fer-edge


@dataclass
class DisplayConfig:
    enabled: bool = False


@dataclass
class PreviewConfig:
    listen: str = ""  # HOST:PORT serving the live view and /status; ":8080": every interface; empty: off
    fps: float = 5.0  # at most this many frames a second to each viewer
    password_file: str = ""  # a file holding the password every route asks for (HTTP Basic); empty: none
    cert_file: str = ""  # with key_file: serve HTTPS with this PEM certificate (chain)
    key_file: str = ""  # the certificate's PEM private key


@dataclass
class MqttConfig:
    host: str = ""  # the broker; empty: MQTT off
    port: int = 1883  # 8883 is the usual port for TLS
    username: str = ""
    password_file: str = ""  # a file holding the password (never the password in this file)
    tls: bool = False
    ca_file: str = ""  # tls: the CA that signed the broker's certificate; empty: the system's CAs
    cert_file: str = ""  # tls: a client certificate, for brokers that ask for one
    key_file: str = ""  # tls: its private key
    device_id: str = ""  # the device's name in topics and in Home Assistant; empty: the host name
    topic_prefix: str = "fer-edge"  # topics are <topic_prefix>/<device_id>/...
    qos: int = 1  # for availability, state and discovery; visits are always at least 1 (acknowledged)
    state_interval: float = 1.0  # state messages at most this often (seconds)
    visit_gap_seconds: float = 60.0  # a pause longer than this ends a visit (summary --by visit --gap)
    discovery: bool = True  # publish Home Assistant discovery configs
    discovery_prefix: str = "homeassistant"
    spool_max_bytes: int = 8 * 1024 ** 2  # visits waiting for the broker, on disk in <output>/mqtt
    retry_max_seconds: float = 60.0  # reconnecting backs off from 1 s, doubling up to this


@dataclass
class Config:
    source: SourceConfig = field(default_factory=SourceConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    csv: CsvConfig = field(default_factory=CsvConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_SIZE_KEYS = {"max_bytes", "min_free_bytes", "max_total_bytes", "spool_max_bytes"}


def parse_size(text: str) -> int:
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size like 500M or 2G")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " kmgt".index(unit.lower() or " "))


def _check_type(where: str, key: str, value: Any, kind: type) -> None:
    """A TOML file's value must have its key's type (a number for a float; a size key also takes
    text such as "500M"): `enabled = "no"` would otherwise pass for a setting it is not."""
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is int:
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (key in _SIZE_KEYS and isinstance(value, str))
    else:
        ok = type(value) is kind
    if ok:
        return
    got = {bool: "a boolean", int: "a number", float: "a number", str: "text"}.get(type(value), type(value).__name__)
    fix = {bool: f"write {key} = true or {key} = false, without quotes",
           int: f"write a whole number without quotes, e.g. {key} = 60",
           float: f"write a number without quotes, e.g. {key} = 1.5",
           str: f'write it in quotes, e.g. {key} = "{value}"'}[kind]
    wanted = {bool: "a boolean", int: "a whole number", float: "a number", str: "text"}[kind]
    raise ConfigError(f"{where} is {value!r}, {got}, but it takes {wanted}; {fix}")


def _coerce(where: str, key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
    elif kind is int:
        if key in _SIZE_KEYS and isinstance(value, str):
            try:
                return parse_size(value)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{where}: {value!r} is not a valid {kind.__name__}")


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port`; `:port` listens on every interface; port 0 takes any free port."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"preview.listen is {listen!r}; write HOST:PORT, e.g. 127.0.0.1:8080, or :8080 for "
                          "every interface")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def _check(cfg: Config, origins: dict[str, str]) -> None:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            origin = origins.get(key)
            raise ConfigError(f"{origin + ': ' if origin else ''}{key} {what}")

    def at_least_zero(section: str, *keys: str) -> None:
        for key in keys:
            value = getattr(getattr(cfg, section), key)
            need(value >= 0, f"{section}.{key}", f"is {value:g}; use 0 (no limit) or more")

    s, d, m, a, v, c = cfg.source, cfg.detection, cfg.model, cfg.analysis, cfg.video, cfg.csv
    need(s.kind in SOURCE_KINDS, "source.kind", f"is {s.kind!r}; choose one of {', '.join(SOURCE_KINDS)}")
    need(s.kind != "file" or bool(s.path), "source.path", "must name a video file when source.kind is 'file'")
    need(s.width > 0, "source.width", "must be positive")
    need(s.height > 0, "source.height", "must be positive")
    need(s.fps > 0, "source.fps", "must be positive")
    need(s.stall_seconds >= 1, "source.stall_seconds", f"is {s.stall_seconds:g}; use at least 1 (10 is a good start)")
    need(s.retry_max_seconds >= 1, "source.retry_max_seconds", f"is {s.retry_max_seconds:g}; use at least 1")
    need(d.width >= 64, "detection.width", f"is {d.width}; use at least 64 (320 is a good start)")
    need(d.scale_factor > 1.0, "detection.scale_factor", f"is {d.scale_factor}; it must be above 1.0 (e.g. 1.1)")
    need(d.min_neighbors >= 0, "detection.min_neighbors", "must be 0 or more")
    need(d.min_size >= 8, "detection.min_size", "must be at least 8 pixels")
    need(d.full_scan_seconds >= 0, "detection.full_scan_seconds", "must be 0 (every analysis) or more")
    need(m.num_threads >= 1, "model.num_threads", "must be at least 1")
    need(m.runtime in ("", "litert", "tflite-runtime", "tensorflow"), "model.runtime",
         f"is {m.runtime!r}; choose litert, tflite-runtime, tensorflow or leave it empty")
    need(a.every >= 0, "analysis.every", "must be 0 (adaptive) or a positive frame count")
    need(a.target_fps > 0, "analysis.target_fps", "must be positive")
    need(a.idle_fps > 0, "analysis.idle_fps", "must be positive (it is capped at analysis.target_fps)")
    need(0 <= a.smoothing < 1, "analysis.smoothing", "must be in [0, 1)")
    need(0 <= a.face_margin <= 1, "analysis.face_margin", "must be in [0, 1]")
    need(v.segment_seconds >= 1, "video.segment_seconds", "must be at least 1")
    need(v.record in RECORD_MODES, "video.record", f"is {v.record!r}; choose always or faces")
    need(v.blur in BLUR_STYLES, "video.blur", f"is {v.blur!r}; choose blur or pixelate")
    need(0 <= v.pre_roll_seconds <= MAX_PRE_ROLL_SECONDS, "video.pre_roll_seconds",
         f"is {v.pre_roll_seconds:g}; use 0 to {MAX_PRE_ROLL_SECONDS:g} (its frames are held in memory)")
    need(v.post_roll_seconds >= 0, "video.post_roll_seconds", "must be 0 or more")
    need(v.codec == "auto" or len(v.codec) == 4, "video.codec",
         f"is {v.codec!r}; use auto, h264 (PyAV) or an OpenCV FourCC such as mp4v or MJPG")
    at_least_zero("video", "max_files", "max_bytes", "min_free_bytes", "max_age_days")
    at_least_zero("csv", "max_bytes", "rotate_seconds", "max_files", "max_total_bytes", "max_age_days",
                  "min_free_bytes")
    need(c.flush_seconds > 0, "csv.flush_seconds", "must be positive")
    need(c.sync_seconds > 0, "csv.sync_seconds", "must be positive")
    need(bool(cfg.output.directory), "output.directory", "must not be empty")
    if cfg.preview.listen:
        parse_listen(cfg.preview.listen)
    need(cfg.preview.fps > 0, "preview.fps", "must be positive")
    p = cfg.preview
    need(bool(p.cert_file) == bool(p.key_file), "preview.key_file" if p.cert_file else "preview.cert_file",
         "must be set too: HTTPS needs both preview.cert_file and preview.key_file (or leave both empty)")
    _check_mqtt(cfg.mqtt, need)


_TOPIC_LEVELS = re.compile(r"^[^#+/\s]+(/[^#+/\s]+)*$")  # no wildcards, no empty levels


def _check_mqtt(q: MqttConfig, need) -> None:
    need(0 < q.port <= 65535, "mqtt.port", f"is {q.port}; use 1883 (or 8883 for TLS)")
    need(q.qos in (0, 1, 2), "mqtt.qos", f"is {q.qos}; choose 0, 1 or 2")
    need(q.state_interval > 0, "mqtt.state_interval", "must be positive (seconds between state messages)")
    need(q.visit_gap_seconds > 0, "mqtt.visit_gap_seconds", "must be positive")
    need(q.spool_max_bytes > 0, "mqtt.spool_max_bytes", "must be positive (visits wait there for the broker)")
    need(q.retry_max_seconds >= 1, "mqtt.retry_max_seconds", f"is {q.retry_max_seconds:g}; use at least 1")
    need(not q.device_id or re.fullmatch(r"[A-Za-z0-9_-]+", q.device_id) is not None, "mqtt.device_id",
         f"is {q.device_id!r}; use letters, digits, - and _ (it names topics and Home Assistant ids)")
    for key in ("topic_prefix", "discovery_prefix"):
        value = getattr(q, key)
        need(_TOPIC_LEVELS.match(value) is not None, f"mqtt.{key}",
             f"is {value!r}; give topic levels without + # spaces or empty levels, e.g. fer-edge")
    need(not q.password_file or bool(q.username), "mqtt.password_file", "needs mqtt.username as well")
    if not q.host:
        return  # MQTT off: the files need not be there
    files = [("password_file", q.password_file)]
    if q.tls:
        files += [("ca_file", q.ca_file), ("cert_file", q.cert_file), ("key_file", q.key_file)]
    else:
        stray = [k for k in ("ca_file", "cert_file", "key_file") if getattr(q, k)]
        need(not stray, f"mqtt.{stray[0] if stray else ''}", "is set but mqtt.tls is false; set mqtt.tls = true")
    need(bool(q.cert_file) == bool(q.key_file), "mqtt.cert_file/key_file", "go together: give both or neither")
    for key, name in files:
        if name:
            need(Path(name).is_file(), f"mqtt.{key}", f"{name} not found; check the path")


def _apply(cfg: Config, section: str, key: str, value: Any, origin: str, origins: dict[str, str],
           from_file: bool = False) -> None:
    sections = {f.name: f for f in fields(Config)}
    if section not in sections:
        hint = difflib.get_close_matches(section, sections, n=1)
        raise ConfigError(f"{origin}: unknown section [{section}]"
                          + (f"; did you mean [{hint[0]}]?" if hint else f"; known: {', '.join(sections)}"))
    target = getattr(cfg, section)
    hints = get_type_hints(type(target))
    if key not in hints:
        hint = difflib.get_close_matches(key, hints, n=1)
        raise ConfigError(f"{origin}: unknown key {section}.{key}"
                          + (f"; did you mean {section}.{hint[0]}?" if hint else
                             f"; known: {', '.join(hints)}"))
    if from_file:  # --set values are text by nature; a file's have types of their own
        _check_type(f"{origin}: {section}.{key}", key, value, hints[key])
    setattr(target, key, _coerce(f"{origin}: {section}.{key}", key, value, hints[key]))
    origins[f"{section}.{key}"] = origin


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the TOML file, then `overrides` ({"section.key": value})."""
    cfg = Config()
    origins: dict[str, str] = {}  # "section.key" -> the file (or "command line") that set it
    if path is not None:
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found; create it (see systemd/config.example.toml) "
                              "or drop --config") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read ({exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        for section, table in doc.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: top-level key {section!r} must be a [section]")
            for key, value in table.items():
                _apply(cfg, section, key, value, str(path), origins, from_file=True)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        _apply(cfg, section, key, value, "command line", origins)
    _check(cfg, origins)
    return cfg


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(cfg: Config) -> str:
    """The effective configuration, as a TOML file that load_config reads back unchanged."""
    out = []
    for section in fields(Config):
        out.append(f"[{section.name}]")
        for key, value in dataclasses.asdict(getattr(cfg, section.name)).items():
            out.append(f"{key} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)
