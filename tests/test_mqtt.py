"""MQTT against a real broker: Debian's mosquitto, started here on a free localhost port (and killed
and restarted for real), with real paho subscribers, real `fer-edge run`s on the bundled real video
and `fer-edge summary` reading back the same runs' CSV. Home Assistant's value templates are
rendered with Jinja2, as Home Assistant renders them. Nothing here is faked.

Without the mosquitto binary (`apt-get install mosquitto mosquitto-clients`; .ci/run does) every
test here skips, saying so.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import one_line_error, REPO_ROOT as ROOT
from fer_edge.labels import EMOTIONS

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="the mosquitto broker is not installed "
                                "(apt-get install mosquitto mosquitto-clients; .ci/run installs it)")
mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt missing: pip install -e '.[dev]'")

SAMPLE = ROOT / "samples" / "sample_faces.mp4"  # 10 s at 15 fps; the face is away for about 2 s mid-way
GAP = "0.5"  # seconds: visit_gap_seconds and summary --gap, so the sample's 2 s away makes two visits
DEVICE = "test-pi"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Broker:
    """A real mosquitto on 127.0.0.1:port, with persistence so a restart keeps sessions and retained
    messages (as a broker on a Home Assistant box does)."""

    def __init__(self, directory: Path, port: int | None = None, settings: str = "allow_anonymous true"):
        self.directory, self.port = directory, port or free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.conf = directory / "mosquitto.conf"
        # Started as root, mosquitto would switch to its own user, which cannot read pytest's folders.
        me = pwd.getpwuid(os.geteuid()).pw_name
        self.conf.write_text(f"listener {self.port} 127.0.0.1\n{settings}\nuser {me}\npersistence true\n"
                             f"persistence_location {directory}/\nautosave_interval 1\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.directory / "broker.log", "ab"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.directory / 'broker.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening within 10 s")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def broker(tmp_path: Path):
    started: list[Broker] = []

    def make(**kwargs) -> Broker:
        b = Broker(tmp_path / f"broker{len(started)}", **kwargs)
        started.append(b)
        return b.start()

    yield make
    for b in started:
        b.stop()


class Subscriber:
    """A real paho subscriber to everything fer-edge and discovery publish. `persistent`: a session the
    broker keeps (and queues QoS 1 messages for) while this subscriber is cut off."""

    def __init__(self, port: int, persistent: bool = False, name: str = "test-sub"):
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name,
                                  clean_session=not persistent)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, *_: c.subscribe([("fer-edge/#", 1), ("homeassistant/#", 1)])
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the subscriber could not subscribe"

    def _on_message(self, _client, _userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [payload for t, payload, _ in self.messages if t == topic]

    def wait_for(self, predicate, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int) -> dict[str, bytes]:
    """What a newcomer (Home Assistant starting up) gets: the retained messages, by topic."""
    sub = Subscriber(port, name="test-newcomer")
    time.sleep(1.0)  # retained messages come right after the subscription
    sub.close()
    return {topic: payload for topic, payload, was_retained in sub.messages if was_retained}


def mqtt_args(port: int, *extra: str) -> list[str]:
    return ["--set", "mqtt.host=127.0.0.1", "--set", f"mqtt.port={port}", "--set", f"mqtt.device_id={DEVICE}",
            "--set", f"mqtt.visit_gap_seconds={GAP}", "--set", "mqtt.retry_max_seconds=1", *extra]


def fer_edge(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fer_edge", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def summary_visits(csv_dir: Path) -> list[dict]:
    done = fer_edge("summary", str(csv_dir), "--by", "visit", "--gap", GAP, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["periods"]




# -- one real run, read by a live subscriber and by a newcomer afterwards ----------------------------
@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A `fer-edge run` of the sample played as a camera, publishing to a real broker, with the
    preview's /status polled during the run."""
    tmp = tmp_path_factory.mktemp("mqtt-run")
    b = Broker(tmp / "broker").start()
    sub = Subscriber(b.port)
    preview = free_port()
    out = tmp / "out"
    proc = subprocess.Popen([sys.executable, "-m", "fer_edge", "run", "--source", str(SAMPLE), "--realtime",
                             "--no-video", "--output", str(out), "--json", "--preview", f"127.0.0.1:{preview}",
                             *mqtt_args(b.port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    status = None
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{preview}/status", timeout=2) as answer:
                status = json.loads(answer.read())
            if status["stats"].get("mqtt", {}).get("connected"):
                break
        except OSError:
            pass
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    time.sleep(0.5)  # the last messages reach the subscriber
    sub.close()
    after = retained(b.port)
    b.stop()
    return {"sub": sub, "retained": after, "out": out, "run": json.loads(stdout), "stderr": stderr,
            "status": status}


def test_availability_goes_online_then_offline_and_state_is_rate_limited(published) -> None:
    sub, run = published["sub"], published["run"]
    base = f"fer-edge/{DEVICE}"
    assert sub.on(f"{base}/availability")[0] == b"online"
    assert sub.on(f"{base}/availability")[-1] == b"offline"  # the clean stop says so, not only the will
    states = [json.loads(p) for p in sub.on(f"{base}/state")]
    assert states, "no state message"
    assert any(s["count"] > 0 for s in states)
    for s in states:
        assert set(s) == {"time", "count", "dominant", "probabilities", "faces"}
        assert s["count"] == len(s["faces"])
        assert list(s["probabilities"]) == list(EMOTIONS)
        if s["count"]:
            assert s["dominant"] in EMOTIONS and abs(sum(s["probabilities"].values()) - 1) < 0.01
            for face in s["faces"]:
                assert {"id", "emotion", "confidence", "probabilities"} <= set(face)
                assert face["emotion"] in EMOTIONS and len(face["probabilities"]) == 7
        else:
            assert s["dominant"] is None
    # At most one a second (state_interval), however many analyses: a 10 s clip analysed ~6 times a second.
    assert run["analysed"] > 30
    assert len(states) <= run["seconds"] / 1.0 + 2, len(states)
    assert [s["time"] for s in states] == sorted(s["time"] for s in states)
    # the preview's /status and the run's summary say the broker was there
    assert published["status"]["stats"]["mqtt"]["connected"] is True
    assert published["status"]["stats"]["mqtt"]["topics"] == base
    assert "Traceback" not in published["stderr"]


def test_discovery_configs_are_retained_and_read_as_home_assistant_reads_them(published) -> None:
    jinja2 = pytest.importorskip("jinja2", reason="jinja2 renders Home Assistant's templates: pip install -e '.[dev]'")
    kept = published["retained"]
    base = f"fer-edge/{DEVICE}"
    assert kept[f"{base}/availability"] == b"offline"
    state = json.loads(kept[f"{base}/state"])  # a dashboard starting up gets the last state at once
    configs = {topic: json.loads(payload) for topic, payload in kept.items() if topic.startswith("homeassistant/")}
    expected = {f"homeassistant/sensor/{DEVICE}/{o}/config" for o in ["dominant_emotion", "faces"]
                + [f"p_{e}" for e in EMOTIONS]} | {f"homeassistant/binary_sensor/{DEVICE}/face_in_view/config"}
    assert set(configs) == expected
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)  # HA needs them unique
    devices = {json.dumps(c["device"], sort_keys=True) for c in configs.values()}
    assert len(devices) == 1, "every entity belongs to the one device"
    device = configs[f"homeassistant/sensor/{DEVICE}/faces/config"]["device"]
    assert isinstance(device["identifiers"], list) and device["identifiers"] and device["name"]
    env = jinja2.Environment()
    values = {}
    for topic, c in configs.items():
        assert c["name"] and c["state_topic"] == f"{base}/state"
        assert c["availability_topic"] == f"{base}/availability"
        assert (c["payload_available"], c["payload_not_available"]) == ("online", "offline")
        values[topic.split("/")[-2]] = env.from_string(c["value_template"]).render(value_json=state)
    # what Home Assistant would show for the retained state
    assert values["faces"] == str(state["count"])
    assert values["face_in_view"] == ("ON" if state["count"] else "OFF")
    assert values["dominant_emotion"] == (state["dominant"] or "none")
    for e in EMOTIONS:
        assert float(values[f"p_{e}"]) == pytest.approx(round(state["probabilities"][e] * 100, 1))
    # and for a state with a face in it
    live = next(json.loads(p) for p in published["sub"].on(f"{base}/state") if json.loads(p)["count"])
    shown = env.from_string(configs[f"homeassistant/sensor/{DEVICE}/dominant_emotion/config"]["value_template"])
    assert shown.render(value_json=live) == live["dominant"]
    on = env.from_string(configs[f"homeassistant/binary_sensor/{DEVICE}/face_in_view/config"]["value_template"])
    assert on.render(value_json=live) == "ON"


def test_visit_messages_are_the_visits_summary_reports_each_once(published) -> None:
    visits = [json.loads(p) for p in published["sub"].on(f"fer-edge/{DEVICE}/visit")]
    reported = summary_visits(published["out"] / "csv")
    assert len(reported) >= 2, "the sample's face leaves for ~2 s: two visits at a 0.5 s gap"
    assert len(visits) == len(reported)
    assert len({v["id"] for v in visits}) == len(visits)  # exactly once by id
    for message, period in zip(visits, reported):
        assert (message["start"], message["end"]) == (period["first"], period["last"])
        assert message["analyses"] == period["analyses"] and message["seconds"] == period["seconds"]
        assert message["shares"] == period["share"] and message["dominant"] == period["dominant"]
        assert message["faces"] >= 1 and message["device_id"] == DEVICE
    run = published["run"]
    assert run["mqtt"]["visits_sent"] == len(visits) and run["mqtt"]["visits_waiting"] == 0
    assert list((published["out"] / "mqtt").glob("visit-*.json")) == []  # acknowledged: nothing left spooled


# -- the broker goes away mid-run and comes back ---------------------------------------------------
def test_a_broker_killed_mid_run_and_restarted_loses_no_visit_and_no_frame(broker, tmp_path: Path) -> None:
    b = broker()
    sub = Subscriber(b.port, persistent=True)  # the broker keeps its session across the restart
    time.sleep(1.5)  # ... once it has saved it (autosave_interval 1)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # a real notify socket, as systemd gives
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.1)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "fer_edge", "run", "--source", str(SAMPLE), "--realtime",
                             "--no-video", "--output", str(out), "--json", *mqtt_args(b.port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")})
    status: list[str] = []

    def read_status() -> None:
        try:
            status.append(notify.recv(4096).decode())
        except socket.timeout:
            pass

    try:
        assert sub.wait_for(lambda: b"online" in sub.on(f"fer-edge/{DEVICE}/availability"))
        b.kill()  # a real crash of the broker, while the first visit is still going on
        spooled = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            read_status()
            spooled = spooled or bool(list((out / "mqtt").glob("visit-*.json")))
            if spooled and any("mqtt broker away" in s for s in status):
                break
        if not spooled:
            proc.kill()
        assert spooled, ("a visit that finished while the broker was away was not kept on disk",
                         proc.communicate(timeout=30), status)
        b.start()  # the same port, the same persistent store
        while proc.poll() is None:
            read_status()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    run = json.loads(stdout)
    # Every frame of the clip was shown or, played as a camera, dropped: the run went on through the
    # crash and the restart. (Frame counts of paced runs vary with the machine's load; the exact
    # comparison with a run without MQTT is the unpaced one below.)
    assert run["frames"] + run["dropped"] == 150 and run["frames"] > 100
    away = [s for s in status if "mqtt broker away" in s]
    assert away and "visit(s) waiting" in away[0], status
    reported = summary_visits(out / "csv")
    assert len(reported) >= 2
    expected_ids = [f"{DEVICE}-{start}" for start in (visit_id_time(p["first"]) for p in reported)]
    assert sub.wait_for(lambda: len(set(visit_ids(sub))) >= len(reported), timeout=20), visit_ids(sub)
    sub.close()
    arrived = list(dict.fromkeys(visit_ids(sub)))  # in order of first arrival; QoS 1 may repeat one
    assert arrived == expected_ids
    assert run["mqtt"]["visits_sent"] == len(reported) and run["mqtt"]["visits_waiting"] == 0
    assert list((out / "mqtt").glob("visit-*.json")) == []


def visit_ids(sub: Subscriber) -> list[str]:
    return [json.loads(p)["id"] for p in sub.on(f"fer-edge/{DEVICE}/visit")]


def visit_id_time(first: str) -> str:
    from datetime import datetime, timezone
    start = datetime.fromisoformat(first).astimezone(timezone.utc)
    return f"{start.strftime('%Y%m%dT%H%M%S')}.{start.microsecond // 1000:03d}Z"


def test_visits_the_broker_never_got_wait_on_disk_for_the_next_run(broker, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there yet: the daemon must outlive a broker that is away
    reference = fer_edge("run", "--source", str(SAMPLE), "--no-video", "--output", str(tmp_path / "ref"), "--json")
    assert reference.returncode == 0, reference.stderr
    without_mqtt = json.loads(reference.stdout)
    out = tmp_path / "out"
    done = fer_edge("run", "--source", str(SAMPLE), "--no-video", "--output", str(out), "--json",
                    *mqtt_args(port, "--set", "mqtt.visit_gap_seconds=0.01"))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    warnings = [line for line in done.stderr.splitlines() if "refused" in line]
    assert len(warnings) == 1 and warnings[0].startswith("fer-edge: warning: mqtt:"), done.stderr
    run = json.loads(done.stdout)
    assert run["mqtt"]["visits_sent"] == 0
    # the same frames analysed and the same rows logged as without MQTT: nothing waited for the broker
    assert (run["frames"], run["analysed"], run["csv_rows"]) == \
        (without_mqtt["frames"], without_mqtt["analysed"], without_mqtt["csv_rows"]) and run["csv_rows"] > 0
    spooled = sorted((out / "mqtt").glob("visit-*.json"))
    assert len(spooled) == run["mqtt"]["visits_waiting"] >= 1
    ids = [json.loads(p.read_bytes())["id"] for p in spooled]
    # the broker comes up; the next run sends what waited first, in order
    b = broker(port=port)
    sub = Subscriber(b.port)
    again = fer_edge("run", "--source", str(SAMPLE), "--no-video", "--output", str(out), "--max-frames", "3",
                     *mqtt_args(port))
    assert again.returncode == 0, again.stderr
    assert sub.wait_for(lambda: len(visit_ids(sub)) >= len(ids))
    sub.close()
    assert visit_ids(sub)[:len(ids)] == ids
    assert list((out / "mqtt").glob("visit-*.json")) == []


# -- one-line errors -------------------------------------------------------------------------------
@pytest.mark.skipif(MOSQUITTO_PASSWD is None, reason="mosquitto_passwd missing (apt-get install mosquitto)")
def test_a_wrong_password_is_a_configuration_error(broker, tmp_path: Path) -> None:
    users = tmp_path / "passwd"
    subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(users), "alice", "right-one"], check=True,
                   capture_output=True)
    users.chmod(0o600)
    b = broker(settings=f"allow_anonymous false\npassword_file {users}")
    wrong, right = tmp_path / "wrong", tmp_path / "right"
    wrong.write_text("not-it\n")
    right.write_text("right-one\n")
    login = ["--set", "mqtt.username=alice", "--set"]
    done = fer_edge("run", "--source", str(SAMPLE), "--no-video", "--output", str(tmp_path / "out"),
                    *mqtt_args(b.port, *login, f"mqtt.password_file={wrong}"))
    line = one_line_error(done, 78, "refused user 'alice'", "mqtt.password_file")
    assert "not-it" not in line  # never the password itself
    assert not (tmp_path / "out" / "csv").exists() and not (tmp_path / "out" / "mqtt").exists()  # refused first
    doctor = fer_edge("doctor", *mqtt_args(b.port, *login, f"mqtt.password_file={wrong}"))
    assert doctor.returncode == 1 and "[FAIL] mqtt broker" in doctor.stdout and "refused user" in doctor.stdout
    doctor = fer_edge("doctor", *mqtt_args(b.port, *login, f"mqtt.password_file={right}"))
    assert "[  ok] mqtt broker" in doctor.stdout and "as alice" in doctor.stdout, doctor.stdout
    ok = fer_edge("run", "--source", str(SAMPLE), "--no-video", "--output", str(tmp_path / "ok"), "--max-frames", "5",
                  *mqtt_args(b.port, *login, f"mqtt.password_file={right}"))
    assert ok.returncode == 0, ok.stderr


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A real CA with openssl: (certificate, key)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", f"/CN={name}"], check=True, capture_output=True)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make the test certificates")
def test_tls_with_the_right_ca_connects_and_an_untrusted_certificate_is_a_configuration_error(
        broker, tmp_path: Path) -> None:
    ca, ca_key = make_ca(tmp_path, "test-ca")
    other, _ = make_ca(tmp_path, "other-ca")
    server_key, csr, server = tmp_path / "server.key", tmp_path / "server.csr", tmp_path / "server.pem"
    subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(server_key), "-out",
                    str(csr), "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                    "-CAcreateserial", "-out", str(server), "-days", "2", "-extfile", str(tmp_path / "san.ext")],
                   check=True, capture_output=True)
    b = broker(settings=f"allow_anonymous true\ncafile {ca}\ncertfile {server}\nkeyfile {server_key}")
    tls = ["--set", "mqtt.tls=true", "--set"]
    doctor = fer_edge("doctor", *mqtt_args(b.port, *tls, f"mqtt.ca_file={ca}"))
    assert "[  ok] mqtt broker" in doctor.stdout and "(TLS)" in doctor.stdout, doctor.stdout
    ok = fer_edge("run", "--source", str(SAMPLE), "--no-video", "--output", str(tmp_path / "ok"), "--max-frames", "5",
                  *mqtt_args(b.port, *tls, f"mqtt.ca_file={ca}"))
    assert ok.returncode == 0 and "Traceback" not in ok.stderr, ok.stderr
    untrusted = fer_edge("run", "--source", str(SAMPLE), "--no-video", "--output", str(tmp_path / "bad"),
                         *mqtt_args(b.port, *tls, f"mqtt.ca_file={other}"))
    one_line_error(untrusted, 78, "TLS", "not trusted", "mqtt.ca_file")
    doctor = fer_edge("doctor", *mqtt_args(b.port, *tls, f"mqtt.ca_file={other}"))
    assert "[FAIL] mqtt broker" in doctor.stdout and "not trusted" in doctor.stdout, doctor.stdout


def test_an_unreachable_broker_fails_doctor_but_not_the_daemon(tmp_path: Path) -> None:
    port = free_port()
    doctor = fer_edge("doctor", *mqtt_args(port))
    assert doctor.returncode == 1
    line, = [l for l in doctor.stdout.splitlines() if "mqtt broker" in l and "FAIL" in l]
    assert f"127.0.0.1:{port} refused" in line
    unknown = fer_edge("doctor", "--set", "mqtt.host=no-such-broker.invalid")
    assert "[FAIL] mqtt broker" in unknown.stdout and "not found" in unknown.stdout


def test_tls_without_its_ca_file_and_bad_mqtt_values_stop_at_config_load(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    one_line_error(fer_edge("run", "--source", str(SAMPLE), "--output", str(tmp_path / "out"),
                            *mqtt_args(1883, "--set", "mqtt.tls=true", "--set", f"mqtt.ca_file={missing}")),
                   78, "mqtt.ca_file", str(missing), "not found")
    assert not (tmp_path / "out").exists()
    for key, value, words in [("mqtt.qos", "3", "0, 1 or 2"), ("mqtt.topic_prefix", "a/#", "topic_prefix"),
                              ("mqtt.device_id", "kitchen pi", "device_id"), ("mqtt.port", "0", "mqtt.port"),
                              ("mqtt.password_file", str(missing), "mqtt.username"),
                              ("mqtt.ca_file", str(missing), "mqtt.tls = true")]:
        one_line_error(fer_edge("config", *mqtt_args(1883, "--set", f"{key}={value}")), 78, words)


def test_without_paho_mqtt_the_device_path_runs_and_mqtt_names_the_extra(tmp_path: Path) -> None:
    hide = "import sys; sys.modules['paho'] = None; from fer_edge.cli import entry; sys.exit(entry())"
    base = ["run", "--source", str(SAMPLE), "--no-video", "--max-frames", "5"]
    plain = subprocess.run([sys.executable, "-c", hide, *base, "--output", str(tmp_path / "a")], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    asked = subprocess.run([sys.executable, "-c", hide, *base, "--output", str(tmp_path / "b"),
                            "--set", "mqtt.host=127.0.0.1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    one_line_error(asked, 78, "paho-mqtt", "pip install 'fer-edge[mqtt]'")


# -- the spool on its own ----------------------------------------------------------------------------
def test_the_spool_is_bounded_drops_the_oldest_and_reads_back_in_order(tmp_path: Path) -> None:
    from fer_edge.mqtt import VisitSpool

    spool = VisitSpool(tmp_path / "mqtt", max_bytes=300)
    for i in range(5):
        spool.add(json.dumps({"id": i, "pad": "x" * 80}).encode(), in_flight=False)
    assert spool.dropped == 2 and len(spool) == 3 and spool.bytes <= 300
    on_disk = sorted((tmp_path / "mqtt").glob("visit-*.json"))
    assert [json.loads(p.read_bytes())["id"] for p in on_disk] == [2, 3, 4]
    (tmp_path / "mqtt" / "visit-0000000009.json.tmp").write_bytes(b'{"id": 9, "cut')  # a write a power cut ended
    again = VisitSpool(tmp_path / "mqtt", max_bytes=300)  # the next run
    assert [json.loads(again.head().payload)["id"]] == [2] and len(again) == 3
    again.add(json.dumps({"id": 5, "pad": "x" * 80}).encode(), in_flight=True)  # the head is being sent: kept
    assert json.loads(again.head().payload)["id"] == 2
    assert [json.loads(p.read_bytes())["id"] for p in sorted((tmp_path / "mqtt").glob("visit-*.json"))] == [2, 4, 5]
    assert not list((tmp_path / "mqtt").glob("*.tmp"))


def test_the_spool_never_takes_the_csv_logs_last_room(tmp_path: Path) -> None:
    from fer_edge.mqtt import VisitSpool
    from fer_edge.sinks import DiskBudget, free_bytes

    free = free_bytes(tmp_path)
    crowded = DiskBudget(csv_dir=tmp_path / "csv", csv_floor=free + 2 ** 30)  # this disk is under the floor
    spool = VisitSpool(tmp_path / "mqtt", max_bytes=10_000, budget=crowded)
    spool.add(b'{"id": 1}', in_flight=False)
    assert len(spool) == 1 and list((tmp_path / "mqtt").glob("visit-*.json")) == []  # held in memory, still sent
    roomy = DiskBudget(csv_dir=tmp_path / "csv", csv_floor=0)
    spool.budget = roomy
    spool.add(b'{"id": 2}', in_flight=False)
    assert len(spool) == 2 and len(list((tmp_path / "mqtt").glob("visit-*.json"))) == 1
