"""MQTT: the results where a house's other sensors are, with Home Assistant discovery.

A sink like the CSV log. The loop's one call per analysis (`write`) counts the visit in memory and
leaves the faces in view for the outbox thread; paho's own thread does the network and the outbox
thread the rest (JSON, the spool, publishing), so the loop never waits for the broker.

Topics, under `<topic_prefix>/<device_id>/`:
- `availability`: `online` (retained) once connected; `offline` as the will and on a clean stop;
- `state`: retained JSON, the faces in view, when it changes and at most every `state_interval`;
- `visit`: one message (QoS >= 1, not retained) per finished visit, the visit `fer-edge summary
  --by visit` reports (summary.VisitBuilder, fed the CSV rows' own timestamps).

Nothing is lost while the broker is away: every finished visit is written to the spool
(`<output>/mqtt/visit-*.json`) first, published one at a time in order, and deleted when the broker
acknowledges it (PUBACK). One in flight at a time keeps the order across reconnects: paho resends
an unacknowledged message itself when it reconnects. Delivery is at least once; the visit's `id`
lets a consumer drop a repeat (a crash between the broker's PUBACK and the deletion).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

from . import __version__
from .config import MqttConfig
from .errors import ConfigError
from .labels import EMOTIONS, canonical
from .records import FaceResult
from .summary import Period, VisitBuilder, stamp_seconds

log = logging.getLogger(__name__)

ONLINE, OFFLINE = "online", "offline"
INSTALL_HINT = "pip install 'fer-edge[mqtt]'"
CONNECT_TIMEOUT = 5.0  # seconds for a TCP connect, a TLS handshake, and the broker's answer
CLOSE_SECONDS = 3.0  # at a stop, waiting visits get this long to be delivered (the unit allows 20 s)
SPOOL_GLOB = "visit-*.json"
_AUTH_REFUSED = (134, 135, 4, 5)  # bad user name or password, not authorized (MQTT 5 and 3.1.1 codes)


def import_paho() -> Any:
    """paho.mqtt.client, imported only when MQTT is configured: the device path never needs it."""
    try:
        import paho.mqtt
        import paho.mqtt.client as client
    except ImportError:
        raise ConfigError(f"mqtt.host is set but paho-mqtt is not installed: {INSTALL_HINT} "
                          "(or leave mqtt.host empty)") from None
    version = getattr(paho.mqtt, "__version__", "0")
    if not hasattr(client, "CallbackAPIVersion"):  # Pi OS bookworm's python3-paho-mqtt is 1.6
        raise ConfigError(f"paho-mqtt {version} is too old for fer-edge (it needs 2.x): {INSTALL_HINT} "
                          "into the venv, where it comes before apt's")
    return client


def device_id(cfg: MqttConfig) -> str:
    """mqtt.device_id, or the host name made fit for topics and Home Assistant ids."""
    return cfg.device_id or re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "fer-edge"


@dataclass(frozen=True)
class Topics:
    base: str
    availability: str
    state: str
    visit: str

    @classmethod
    def of(cls, cfg: MqttConfig, dev: str) -> Topics:
        base = f"{cfg.topic_prefix}/{dev}"
        return cls(base, f"{base}/availability", f"{base}/state", f"{base}/visit")


def read_password(cfg: MqttConfig) -> Optional[str]:
    if not cfg.password_file:
        return None
    try:
        return Path(cfg.password_file).read_text().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"mqtt.password_file {cfg.password_file} cannot be read "
                          f"({getattr(exc, 'strerror', None) or exc}); check its path and permissions") from None


def make_client(cfg: MqttConfig, client_id: str, topics: Topics) -> Any:
    """A paho client with the credentials, TLS, the will and the reconnect back-off of `cfg`."""
    paho = import_paho()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.connect_timeout = CONNECT_TIMEOUT
    if cfg.username:
        client.username_pw_set(cfg.username, read_password(cfg))
    if cfg.tls:
        try:
            client.tls_set(ca_certs=cfg.ca_file or None, certfile=cfg.cert_file or None,
                           keyfile=cfg.key_file or None)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"mqtt TLS files cannot be used ({getattr(exc, 'strerror', None) or exc}); check "
                              "mqtt.ca_file, mqtt.cert_file and mqtt.key_file") from None
    client.will_set(topics.availability, OFFLINE, qos=cfg.qos, retain=True)
    client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(cfg.retry_max_seconds)))
    return client


def why_unreachable(exc: BaseException, cfg: MqttConfig) -> tuple[str, bool]:
    """(what went wrong, whether it is a configuration mistake) for a failed connect."""
    where = f"{cfg.host}:{cfg.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS: the broker's certificate at {where} is not trusted ({exc.verify_message}); "
                "set mqtt.ca_file to the CA that signed it"), True
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {where} failed ({exc.reason or exc}); is it a TLS port (8883)?", False
    if isinstance(exc, ConnectionRefusedError):
        return f"connection to {where} refused: no broker listens there (is mosquitto running?)", False
    if isinstance(exc, socket.gaierror):
        return f"broker host {cfg.host!r} not found ({exc.strerror}); check mqtt.host or DNS", False
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"{where} unreachable: no answer within {CONNECT_TIMEOUT:g} s", False
    return f"{where} unreachable ({getattr(exc, 'strerror', None) or exc})", False


def why_refused(reason: Any, cfg: MqttConfig) -> tuple[str, bool]:
    """(what the broker's CONNACK refusal means, whether it is a configuration mistake)."""
    if getattr(reason, "value", None) in _AUTH_REFUSED:
        who = f"user {cfg.username!r}" if cfg.username else "an anonymous client"
        return (f"broker {cfg.host}:{cfg.port} refused {who}: {str(reason).lower()}; check mqtt.username and "
                "the password in mqtt.password_file"), True
    return f"broker {cfg.host}:{cfg.port} refused the connection: {reason}", False


def check_broker(cfg: MqttConfig) -> str:
    """Connect, wait for the broker's answer, disconnect: `fer-edge doctor`. Raises ConfigError
    (or returns) with what failed: refused, auth, unreachable, TLS."""
    dev = device_id(cfg)
    client = make_client(cfg, f"fer-edge-{dev}-doctor", Topics.of(cfg, dev))  # not the daemon's id: no kick
    answer: dict[str, Any] = {}
    client.on_connect = lambda _c, _u, _f, reason, _p: answer.setdefault("reason", reason)
    try:
        client.connect(cfg.host, cfg.port, keepalive=10)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(why_unreachable(exc, cfg)[0]) from None
    deadline = time.monotonic() + CONNECT_TIMEOUT
    try:
        while "reason" not in answer and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    finally:
        client.disconnect()
    reason = answer.get("reason")
    if reason is None:
        raise ConfigError(f"{cfg.host}:{cfg.port} accepted the connection but gave no MQTT answer within "
                          f"{CONNECT_TIMEOUT:g} s; is it an MQTT port?")
    if reason.is_failure:
        raise ConfigError(why_refused(reason, cfg)[0])
    return f"{cfg.host}:{cfg.port}" + (" (TLS)" if cfg.tls else "") + \
        (f" as {cfg.username}" if cfg.username else "") + f"; topics {Topics.of(cfg, dev).base}/..."


# -- Home Assistant discovery ---------------------------------------------------------------------
def discovery_configs(cfg: MqttConfig, dev: str, topics: Topics) -> list[tuple[str, dict]]:
    """(topic, payload) of each retained discovery config: one device, sensors for the dominant
    emotion, the number of faces and each emotion's probability, a binary sensor for a face in view."""
    uid = f"fer-edge_{dev}"
    common = {
        "state_topic": topics.state,
        "availability_topic": topics.availability,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "qos": cfg.qos,
        "device": {"identifiers": [uid], "name": f"fer-edge {dev}", "manufacturer": "fer-edge",
                   "model": "fer-edge facial-expression recognition", "sw_version": __version__},
        "origin": {"name": "fer-edge", "sw_version": __version__},
    }

    def entity(component: str, object_id: str, name: str, template: str, **extra: Any) -> tuple[str, dict]:
        topic = f"{cfg.discovery_prefix}/{component}/{dev}/{object_id}/config"
        return topic, {"name": name, "unique_id": f"{uid}_{object_id}", "value_template": template,
                       **extra, **common}

    configs = [
        entity("sensor", "dominant_emotion", "Dominant emotion", "{{ value_json.dominant or 'none' }}",
               icon="mdi:emoticon-outline"),
        entity("sensor", "faces", "Faces", "{{ value_json.count }}", state_class="measurement",
               icon="mdi:account-multiple"),
        entity("binary_sensor", "face_in_view", "Face in view",
               "{{ 'ON' if value_json.count > 0 else 'OFF' }}", device_class="occupancy",
               payload_on="ON", payload_off="OFF"),
    ]
    for emotion in EMOTIONS:
        configs.append(entity("sensor", f"p_{emotion}", f"{emotion.capitalize()} probability",
                              f"{{{{ (value_json.probabilities.{emotion} * 100) | round(1) }}}}",
                              unit_of_measurement="%", state_class="measurement", icon="mdi:percent"))
    return configs


# -- payloads ---------------------------------------------------------------------------------------
def iso_stamp(unix_time: float) -> str:
    """The CSV log's timestamp text (local time with offset, milliseconds): visits count what it logs."""
    return datetime.fromtimestamp(unix_time).astimezone().isoformat(timespec="milliseconds")


def state_payload(unix_time: float, faces: Sequence[FaceResult], labels: Sequence[str]) -> dict:
    """What is in view: each face, the mean probability of each emotion and the dominant one."""
    names = [canonical(label) for label in labels]
    mean = dict.fromkeys(EMOTIONS, 0.0)
    listed = []
    for face in faces:
        probs = {name: round(float(p), 4) for name, p in zip(names, face.probabilities)}
        listed.append({"id": face.face_id, "emotion": canonical(face.label),
                       "confidence": round(float(face.confidence), 4), "probabilities": probs})
        for name, p in probs.items():
            mean[name] = mean.get(name, 0.0) + p / len(faces)
    dominant = max(mean, key=mean.get) if faces else None  # type: ignore[arg-type]
    return {"time": iso_stamp(unix_time), "count": len(faces), "dominant": dominant,
            "probabilities": {name: round(p, 4) for name, p in mean.items()}, "faces": listed}


def visit_payload(visit: Period, faces: int, dev: str, emotions: Sequence[str]) -> dict:
    """A finished visit as `fer-edge summary --by visit --json` reports it, with an id and its faces."""
    summary = visit.to_json(emotions)
    start = datetime.fromisoformat(visit.first).astimezone(timezone.utc)
    return {"id": f"{dev}-{start.strftime('%Y%m%dT%H%M%S')}.{start.microsecond // 1000:03d}Z", "device_id": dev,
            "start": visit.first, "end": visit.last, "seconds": summary["seconds"],
            "analyses": visit.analyses, "faces": faces, "minutes_with_faces": summary["minutes_with_faces"],
            "shares": summary["share"], "counts": summary["counts"], "dominant": summary["dominant"]}


def _state_key(payload: dict) -> tuple:
    """What a state message says, less its time: a new message only when this changes."""
    return (payload["count"], payload["dominant"], tuple(payload["probabilities"].values()),
            tuple((f["id"], f["emotion"]) for f in payload["faces"]))


# -- the spool: finished visits, on disk until the broker has them ----------------------------------
@dataclass
class _Spooled:
    payload: bytes
    path: Optional[Path]  # None: held in memory only (the disk had no room)


class VisitSpool:
    """Finished visits in order, one small file each in `directory`, bounded by `max_bytes` (the
    oldest go first, counted) and by the disk budget's lower floor (then held in memory)."""

    def __init__(self, directory: Path, max_bytes: int, budget: Any = None):
        self.directory, self.max_bytes, self.budget = directory, max_bytes, budget
        self.dropped = 0
        self.bytes = 0
        self._entries: deque[_Spooled] = deque()
        self._warned = 0.0
        # The folder is made by the first visit written: a run that fails at start leaves none behind.
        for tmp in directory.glob("*.tmp"):  # cut while being written: its visit is not lost, it was never there
            tmp.unlink(missing_ok=True)
        paths = sorted(directory.glob(SPOOL_GLOB))
        for path in paths:
            try:
                payload = path.read_bytes()
                json.loads(payload)
            except (OSError, ValueError) as exc:
                log.warning("mqtt: spooled visit %s is unreadable (%s); removed", path.name, exc)
                path.unlink(missing_ok=True)
                continue
            self._entries.append(_Spooled(payload, path))
            self.bytes += len(payload)
        self._seq = int(paths[-1].name[6:-5]) + 1 if paths else 0

    def __len__(self) -> int:
        return len(self._entries)

    def head(self) -> Optional[_Spooled]:
        return self._entries[0] if self._entries else None

    def add(self, payload: bytes, in_flight: bool) -> None:
        """Append a visit; `in_flight`: the head is being sent and must not be dropped."""
        while self._entries and self.bytes + len(payload) > self.max_bytes and len(self._entries) > int(in_flight):
            victim = self._entries[1] if in_flight else self._entries[0]
            self._entries.remove(victim)
            self._forget(victim)
            self.dropped += 1
            self._warn(f"mqtt: the spool is full (mqtt.spool_max_bytes {self.max_bytes}): dropped the oldest "
                       f"waiting visit, {self.dropped} in all (the CSV log still has them)")
        path = self.directory / f"visit-{self._seq:010d}.json"
        self._seq += 1
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # _write says why
        if self.budget is not None and not self.budget.room_for(self.directory, len(payload) + 4096):
            self._warn("mqtt: the disk is nearly full: visits waiting for the broker are held in memory only")
            path = None
        elif not self._write(path, payload):
            path = None
        self._entries.append(_Spooled(payload, path))
        self.bytes += len(payload)

    def pop_head(self) -> None:
        """The broker acknowledged the head."""
        self._forget(self._entries.popleft())

    def _forget(self, entry: _Spooled) -> None:
        self.bytes -= len(entry.payload)
        if entry.path is not None:
            entry.path.unlink(missing_ok=True)

    def _write(self, path: Path, payload: bytes) -> bool:
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())  # a spooled visit survives a power cut
            os.replace(tmp, path)
            return True
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            self._warn(f"mqtt: cannot spool a visit in {self.directory} "
                       f"({exc.strerror or errno.errorcode.get(exc.errno, exc)}); held in memory")
            return False

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned >= 60.0:  # a long outage must not flood the journal
            self._warned = now
            log.warning(message)


# -- the sink -----------------------------------------------------------------------------------------
class MqttSink:
    """Publishes state, visits, availability and discovery; see the module's docstring."""

    def __init__(self, cfg: MqttConfig, out: Path, labels: Sequence[str], budget: Any = None,
                 warn=log.warning):
        self.cfg = cfg
        self.dev = device_id(cfg)
        self.topics = Topics.of(cfg, self.dev)
        self.labels = tuple(labels)
        self.emotions = list(EMOTIONS) + [label for label in labels if label not in EMOTIONS]  # as summary lists them
        self.visit_qos = max(1, cfg.qos)
        self.spool = VisitSpool(out / "mqtt", cfg.spool_max_bytes, budget)
        self._builder = VisitBuilder(cfg.visit_gap_seconds)
        self._visit_faces: set[int] = set()
        self._latest: Optional[tuple[float, list[FaceResult]]] = None  # set by the loop, read by the outbox
        self._finished: deque[tuple[Period, int]] = deque()  # visits from the loop to the outbox
        self.visits_sent = self.states_sent = 0
        self.connected = False
        self.away_since: Optional[float] = time.time()  # wall time the broker was last lost (or never had)
        self.away_why = "not connected yet"
        self._cond = threading.Condition()
        self._connects = 0  # successful connections so far; the outbox re-announces on each
        self._refused: Optional[tuple[str, bool]] = None
        self._answered = threading.Event()  # the first connect attempt has an outcome
        self._visit_mid: Optional[int] = None
        self._publishing_visit = False
        self._acked: set[int] = set()
        self._stopping = False
        self._warned_away = 0.0
        self.client = make_client(cfg, f"fer-edge-{self.dev}", self.topics)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_publish = self._on_publish
        self._start(warn)
        self._thread = threading.Thread(target=self._run, name="mqtt-outbox", daemon=True)
        self._thread.start()

    def _start(self, warn) -> None:
        """The first connection: a refusal the broker gives (wrong password) or an untrusted TLS
        certificate is a configuration mistake (exit 78); a broker that is away is waited for."""
        try:
            self.client.connect(self.cfg.host, self.cfg.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            why, permanent = why_unreachable(exc, self.cfg)
            if permanent:
                raise ConfigError(f"mqtt: {why}") from None
            self.away_why = why
            warn(f"mqtt: {why}; retrying in the background, and visits wait in {self.spool.directory}")
            self._warned_away = time.monotonic()
            self.client.loop_start()
            return
        self.client.loop_start()
        self._answered.wait(CONNECT_TIMEOUT)
        if self._refused is not None and self._refused[1]:
            self.client.loop_stop()
            raise ConfigError(f"mqtt: {self._refused[0]}")
        if not self.connected:
            warn(f"mqtt: {self._refused[0] if self._refused else self.away_why}; retrying in the background")
            self._warned_away = time.monotonic()

    # -- the loop's side: no network, no disk -----------------------------------------------------------
    def write(self, timestamp: float, frame_index: int, detected: Sequence[FaceResult],
              shown: list[FaceResult]) -> None:
        """One analysis: `detected` are its CSV rows (at `timestamp`, the CSV's), `shown` the faces in view."""
        self._latest = (timestamp, shown)
        if not detected and self._builder.current is None:
            return
        stamp = iso_stamp(timestamp)
        seen = stamp_seconds(stamp)
        if not detected:
            finished = self._builder.pause(seen)
            if finished is not None:
                self._hand_over(finished)
            return
        for face in detected:
            finished = self._builder.add(stamp, seen, face.label)
            if finished is not None:
                self._hand_over(finished)
            self._visit_faces.add(face.face_id)

    def _hand_over(self, visit: Period) -> None:
        faces, self._visit_faces = len(self._visit_faces), set()
        with self._cond:
            self._finished.append((visit, faces))
            self._cond.notify()

    @property
    def visits_waiting(self) -> int:
        return len(self.spool) + len(self._finished)

    def status(self) -> str:
        """For STATUS: whether the broker is there and how many visits wait."""
        if self.connected:
            line = f"mqtt connected, {self.visits_waiting} visit(s) waiting"
        else:
            since = datetime.fromtimestamp(self.away_since or time.time()).strftime("%H:%M:%S")
            line = f"mqtt broker away since {since} ({self.away_why}), {self.visits_waiting} visit(s) waiting"
        return line + (f", {self.spool.dropped} visit(s) dropped" if self.spool.dropped else "")

    def counters(self) -> dict:
        """For the preview's /status."""
        return {"broker": f"{self.cfg.host}:{self.cfg.port}", "connected": self.connected,
                "away_since": (datetime.fromtimestamp(self.away_since).astimezone().isoformat(timespec="seconds")
                               if self.away_since is not None and not self.connected else None),
                "visits_waiting": self.visits_waiting, "visits_sent": self.visits_sent,
                "visits_dropped": self.spool.dropped, "states_sent": self.states_sent,
                "topics": self.topics.base}

    def close(self) -> None:
        """The open visit ends; waiting visits get CLOSE_SECONDS to be delivered (the rest stay spooled
        for the next run); then `offline` and a clean disconnect."""
        if self._stopping:
            return
        last = self._builder.finish()
        if last is not None:
            self._hand_over(last)
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(CLOSE_SECONDS + 2.0)
        if self.connected:
            info = self.client.publish(self.topics.availability, OFFLINE, qos=self.cfg.qos, retain=True)
            try:
                info.wait_for_publish(timeout=1.0)
            except (RuntimeError, ValueError):
                pass  # the connection went meanwhile: the will says offline instead
            self.client.disconnect()
        self.client.loop_stop()
        if len(self.spool):
            log.warning("mqtt: %d visit(s) not yet delivered wait in %s for the next run", len(self.spool),
                        self.spool.directory)

    # -- paho's thread ------------------------------------------------------------------------------
    def _on_connect(self, _client, _userdata, _flags, reason, _properties) -> None:
        with self._cond:
            if reason.is_failure:
                self._refused = why_refused(reason, self.cfg)
                if self._answered.is_set() and self.away_why != self._refused[0]:
                    log.warning("mqtt: %s; retrying", self._refused[0])  # at run time: once per new reason
                self.away_why = self._refused[0]
            else:
                self._refused = None
                self.connected = True
                self._connects += 1
                if self.away_since is not None and self._warned_away:
                    log.warning("mqtt: connected to %s:%d again", self.cfg.host, self.cfg.port)
                self.away_since = None
            self._cond.notify()
        self._answered.set()

    def _on_connect_fail(self, _client, _userdata) -> None:
        with self._cond:
            if self.away_why in ("not connected yet", "disconnected") or self.away_why.startswith("connection lost"):
                self.away_why = f"{self.cfg.host}:{self.cfg.port} unreachable"  # else: keep the more precise why
        self._answered.set()

    def _on_disconnect(self, _client, _userdata, _flags, reason, _properties) -> None:
        with self._cond:
            was = self.connected
            self.connected = False
            if was:
                self.away_since = time.time()
                self.away_why = f"connection lost: {reason}" if reason.is_failure else "disconnected"
            self._cond.notify()
        if was and not self._stopping:
            self._warned_away = time.monotonic()
            log.warning("mqtt: lost the broker %s:%d (%s); reconnecting, visits wait in %s", self.cfg.host,
                        self.cfg.port, reason, self.spool.directory)
        self._answered.set()

    def _on_publish(self, _client, _userdata, mid, _reason, _properties) -> None:
        with self._cond:
            if self._publishing_visit or mid == self._visit_mid:
                self._acked.add(mid)
                self._cond.notify()

    # -- the outbox thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        announced = 0  # connections announced (online, discovery, state)
        last_key: Optional[tuple] = None
        next_state = 0.0  # monotonic time the next state message may go
        close_by: Optional[float] = None
        while True:
            with self._cond:
                ready = (self._finished or self._stopping or self._connects != announced
                         or (self._visit_mid is not None and self._visit_mid in self._acked))
                if not ready:
                    self._cond.wait(timeout=min(self.cfg.state_interval, 1.0))
                finished = list(self._finished)
                self._finished.clear()
                stopping, connects, connected = self._stopping, self._connects, self.connected
                acked = self._visit_mid is not None and self._visit_mid in self._acked
                if acked:
                    self._acked.discard(self._visit_mid)
                    self._visit_mid = None
            try:
                for visit, faces in finished:  # to disk first: a crash or a broker away loses none
                    payload = json.dumps(visit_payload(visit, faces, self.dev, self.emotions)).encode()
                    self.spool.add(payload, in_flight=self._visit_mid is not None)
                if acked:
                    self.spool.pop_head()
                    self.visits_sent += 1
                now = time.monotonic()
                if connected and connects != announced:
                    announced = connects
                    self._announce()
                    last_key, next_state = None, 0.0  # the state again: it may have changed while away
                latest = self._latest
                if connected and latest is not None and now >= next_state:
                    payload = state_payload(latest[0], latest[1], self.labels)
                    key = _state_key(payload)
                    if key != last_key:
                        self.client.publish(self.topics.state, json.dumps(payload), qos=self.cfg.qos, retain=True)
                        self.states_sent += 1
                        last_key, next_state = key, now + self.cfg.state_interval
                if connected and self._visit_mid is None and len(self.spool):
                    self._send_head()
            except Exception:  # the outbox must outlive anything: the loop and the CSV go on regardless
                log.exception("mqtt: outbox error (carrying on)")
            if stopping:
                close_by = close_by or time.monotonic() + CLOSE_SECONDS
                if not len(self.spool) or not self.connected or time.monotonic() >= close_by:
                    return
                time.sleep(0.01)  # waiting for an acknowledgement: _cond.wait would see `stopping` at once
            elif not connected and self._warned_away and time.monotonic() - self._warned_away >= 300:
                self._warned_away = time.monotonic()  # a reminder while it lasts, at most every 5 min
                log.warning("mqtt: still no broker (%s); %d visit(s) waiting", self.away_why, self.visits_waiting)

    def _announce(self) -> None:
        self.client.publish(self.topics.availability, ONLINE, qos=self.cfg.qos, retain=True)
        if self.cfg.discovery:
            for topic, payload in discovery_configs(self.cfg, self.dev, self.topics):
                self.client.publish(topic, json.dumps(payload), qos=self.cfg.qos, retain=True)

    def _send_head(self) -> None:
        """Publish the oldest waiting visit; the next goes only once the broker has this one."""
        head = self.spool.head()
        assert head is not None
        with self._cond:
            self._publishing_visit = True
        info = None
        try:
            info = self.client.publish(self.topics.visit, head.payload, qos=self.visit_qos, retain=False)
        finally:
            with self._cond:
                self._publishing_visit = False
                self._visit_mid = info.mid if info is not None else None
                self._acked &= {self._visit_mid}  # kept: an acknowledgement that came before publish() returned
