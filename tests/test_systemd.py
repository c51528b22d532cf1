"""sd_notify over real unix sockets, the unit file under systemd-analyze, the example config and
the installer."""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from fer_edge.config import Config, load_config
from fer_edge.errors import ConfigError, InputMissing, Unavailable
from fer_edge.resources import EXAMPLE_CONFIG, UNIT_FILE, find_resource
from fer_edge.service import install_service, render_unit
from fer_edge.systemd import Notifier

# -- Notifier ------------------------------------------------------------------------------------
@pytest.fixture
def listener(tmp_path: Path):
    """A datagram socket standing in for systemd's notify socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.setblocking(False)  # local datagrams are queued by sendto(): nothing to wait for
    yield sock, str(path)
    sock.close()


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_ready_status_stopping_watchdog(listener) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("camera open")
    assert notifier.status("12.5 fps, 2 faces")
    assert notifier.watchdog()
    assert notifier.stopping()
    assert notifier.notify(STATUS="two\nlines", ERRNO=5)
    assert notifier.send("EXTEND_TIMEOUT_USEC=5000000")
    assert received(sock) == ["READY=1\nSTATUS=camera open", "STATUS=12.5 fps, 2 faces", "WATCHDOG=1",
                              "STOPPING=1", "STATUS=two lines\nERRNO=5", "EXTEND_TIMEOUT_USEC=5000000"]
    notifier.close()


def test_abstract_namespace_socket() -> None:
    name = f"fer-edge-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert received(sock) == ["READY=1"]
    finally:
        sock.close()


def test_watchdog_pings_at_half_the_timeout(listener) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())})
    assert notifier.watchdog_interval == 15.0
    sent = [notifier.maybe_watchdog(t) for t in (100.0, 110.0, 115.0, 120.0, 130.1)]
    assert sent == [True, False, True, False, True]
    assert received(sock) == ["WATCHDOG=1"] * 3


def test_watchdog_meant_for_another_process_is_ignored(listener) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert notifier.watchdog_interval is None
    assert not notifier.maybe_watchdog(100.0)
    assert received(sock) == []


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.maybe_watchdog(100.0)


def test_vanished_socket_never_raises(tmp_path: Path) -> None:
    path = tmp_path / "gone"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    sock.close()
    path.unlink()
    assert notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()


# -- unit file -----------------------------------------------------------------------------------
def unit_directives(text: str) -> list[tuple[str, str, str]]:
    section, out = "", []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.append((section, key, value))
    return out


def verify(unit: Path) -> list[str]:
    """systemd-analyze verify's complaints. It exits 0 even for unknown keys or unparsable values
    (it only warns on stderr), so any output counts as a failure."""
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                          env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    lines = (done.stdout + done.stderr).splitlines()
    # the service user only exists once the installer has run; some systemd versions say so
    lines = [ln for ln in lines if not re.search(r"(user|group).*fer-edge.*(not found|unknown|No such)", ln, re.I)]
    return lines + ([f"exit status {done.returncode}"] if done.returncode else [])


needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def unit_copy(tmp_path: Path, text: str) -> Path:
    """The unit with ExecStart pointing at an executable that exists here (/opt/fer-edge does not)."""
    path = tmp_path / "fer-edge.service"
    path.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={shutil.which('true')}", text, flags=re.M))
    return path


@needs_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    assert verify(unit_copy(tmp_path, find_resource(UNIT_FILE).read_text())) == []


@needs_analyze
def test_verify_does_catch_a_broken_unit(tmp_path: Path) -> None:
    broken = find_resource(UNIT_FILE).read_text().replace("WatchdogSec=30", "WatchdogSec=thirty")
    assert any("thirty" in line or "WatchdogSec" in line or "sec value" in line
               for line in verify(unit_copy(tmp_path, broken)))


def test_unit_runs_hardened_but_with_the_camera() -> None:
    directives = unit_directives(find_resource(UNIT_FILE).read_text())
    service = {(key, value) for section, key, value in directives if section == "Service"}
    for pair in [("Type", "notify"), ("NotifyAccess", "main"), ("WatchdogSec", "30"), ("Restart", "on-failure"),
                 ("RestartSec", "10"), ("RestartPreventExitStatus", "78"), ("User", "fer-edge"),
                 ("Group", "fer-edge"), ("SupplementaryGroups", "video"), ("StateDirectory", "fer-edge"),
                 ("LogsDirectory", "fer-edge"), ("StateDirectoryMode", "0750"), ("LogsDirectoryMode", "0750"),
                 ("UMask", "0027"), ("ExecReload", "/bin/kill -HUP $MAINPID"),
                 ("KillSignal", "SIGTERM"), ("TimeoutStopSec", "20"), ("NoNewPrivileges", "yes"),
                 ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                 ("ProtectKernelTunables", "yes"), ("ProtectKernelModules", "yes"),
                 ("ProtectControlGroups", "yes"), ("RestrictSUIDSGID", "yes"), ("LockPersonality", "yes"),
                 ("DevicePolicy", "closed"), ("DeviceAllow", "char-video4linux rw"),
                 ("DeviceAllow", "char-media rw"), ("DeviceAllow", "char-dma_heap rw"),
                 ("DeviceAllow", "/dev/vchiq rw"),
                 ("ExecStart", "/opt/fer-edge/venv/bin/fer-edge run --config /etc/fer-edge/config.toml")]:
        assert pair in service, pair
    assert not any(key == "PrivateDevices" for _, key, _ in directives)  # it would hide /dev/video*
    # never ends dead from a transient fault: no start limit (in [Unit] since systemd 230)
    assert ("Unit", "StartLimitIntervalSec", "0") in directives
    assert not any(key == "StartLimitBurst" for _, key, _ in directives)


def analyze_version() -> int:
    done = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True)
    match = re.match(r"systemd (\d+)", done.stdout)
    return int(match.group(1)) if match else 0


@needs_analyze
def test_restart_back_off_only_where_systemd_has_it(tmp_path: Path) -> None:
    """RestartSteps/RestartMaxDelaySec need systemd 254+ (trixie 257); bookworm's 252 warns about
    unknown keys. The installer switches them on by the running systemd's version."""
    template = find_resource(UNIT_FILE).read_text()
    old = render_unit(template, executable=Path("/x/fer-edge"), config_path=Path("/c.toml"), user="fer-edge",
                      version=252)
    new = render_unit(template, executable=Path("/x/fer-edge"), config_path=Path("/c.toml"), user="fer-edge",
                      version=257)
    service = lambda text: {key: value for section, key, value in unit_directives(text) if section == "Service"}
    assert "RestartSteps" not in service(old) and "RestartMaxDelaySec" not in service(old)
    assert service(new)["RestartSteps"] == "4" and service(new)["RestartMaxDelaySec"] == "160"
    assert service(old)["RestartSec"] == service(new)["RestartSec"] == "10"
    for text in (old, new):
        assert set(service(text)) - {"RestartSteps", "RestartMaxDelaySec"} == set(service(old))
    here = analyze_version()
    assert verify(unit_copy(tmp_path, render_unit(template, executable=Path("/x"), config_path=Path("/c"),
                                                  user="fer-edge", version=here))) == []
    complaints = verify(unit_copy(tmp_path, new))
    if here >= 254:
        assert complaints == []
    else:  # what an older systemd does with them: a warning each, and the unit still loads
        assert len(complaints) == 2 and all("Unknown key" in c and "ignoring" in c for c in complaints), \
            complaints


def test_installer_switches_the_back_off_on_by_version(tmp_path: Path) -> None:
    exe = executable(tmp_path)
    for version, on in ((252, False), (257, True)):
        steps = install_service(dry_run=True, executable=exe, user="fer-edge",
                                config_path=tmp_path / "c.toml", unit_dir=tmp_path, version=version)
        assert ("s|^#RestartSteps=|RestartSteps=|" in steps[2]) is on, steps[2]
        assert ("s|^#RestartMaxDelaySec=|RestartMaxDelaySec=|" in steps[2]) is on, steps[2]


# -- example config ------------------------------------------------------------------------------
SET_FOR_THE_SERVICE = {("output", "directory"), ("video", "record")}  # the file's header names both


def test_example_config_lists_every_key_with_its_default() -> None:
    path = find_resource(EXAMPLE_CONFIG)
    text = path.read_text()
    doc = tomllib.loads(text)
    defaults = Config()
    assert list(doc) == [f.name for f in dataclasses.fields(Config)]
    for section in dataclasses.fields(Config):
        expected = dataclasses.asdict(getattr(defaults, section.name))
        assert list(doc[section.name]) == list(expected), section.name
        for key, value in expected.items():
            if (section.name, key) not in SET_FOR_THE_SERVICE:
                assert doc[section.name][key] == value, f"{section.name}.{key}"
    for line in text.splitlines():
        if re.match(r"^\w+ = ", line):
            assert re.search(r"\s#\s\S", line), f"no comment: {line}"
    cfg = load_config(path)
    assert cfg.output.directory == "/var/lib/fer-edge"
    assert cfg.video.record == "faces"
    assert cfg.source.kind == "auto"


# -- installer -----------------------------------------------------------------------------------
def executable(folder: Path, shebang: str = "#!/bin/sh") -> Path:
    exe = folder / "venv" / "bin" / "fer-edge"
    exe.parent.mkdir(parents=True)
    exe.write_text(f"{shebang}\n")
    exe.chmod(0o755)
    return exe


def test_dry_run_names_each_step_and_touches_nothing(tmp_path: Path) -> None:
    config, units = tmp_path / "etc" / "config.toml", tmp_path / "units"
    exe = executable(tmp_path)
    steps = install_service(dry_run=True, executable=exe, user="fer-edge-test-nobody",
                            config_path=config, unit_dir=units)
    assert steps[0].startswith("useradd --system") and "--groups video" in steps[0]
    assert steps[0].endswith(" fer-edge-test-nobody")
    assert steps[1].startswith("install ") and steps[1].endswith(str(config))
    assert steps[2].startswith("sed ") and steps[2].endswith(f"> {units / 'fer-edge.service'}")
    assert f"ExecStart={exe} run --config {config}" in steps[2]
    assert steps[1].startswith("install -D -m 0640 -g fer-edge-test-nobody ")
    assert steps[3] == "install -d -m 0750 -o fer-edge-test-nobody -g fer-edge-test-nobody /var/lib/fer-edge"
    assert steps[4:] == ["systemctl daemon-reload", "systemctl enable --now fer-edge.service"]
    assert [p.name for p in tmp_path.iterdir()] == ["venv"]


class Recorder:
    """Stands in for subprocess.run: installing for real would create a user and start a service on
    this machine (a hardware/OS edge tests cannot cross), so the commands are recorded instead."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.commands: list[list[str]] = []
        self.failing = failing  # commands (as shell lines starting so) that fail, as systemctl might

    def __call__(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        self.commands.append(argv)
        failed = any(" ".join(argv).startswith(f) for f in self.failing)
        return subprocess.CompletedProcess(argv, 1 if failed else 0, "", "Job failed." if failed else "")


def test_install_writes_config_and_unit_and_runs_the_commands(tmp_path: Path) -> None:
    exe = executable(tmp_path)
    config, units, runner = tmp_path / "etc" / "config.toml", tmp_path / "units", Recorder()
    steps = install_service(dry_run=False, executable=exe, config_path=config, unit_dir=units, runner=runner)

    assert config.read_text() == find_resource(EXAMPLE_CONFIG).read_text()
    assert config.stat().st_mode & 0o777 == 0o640  # it may name the preview's password file
    unit = (units / "fer-edge.service").read_text()
    assert f"ExecStart={exe} run --config {config}\n" in unit
    assert "/opt/fer-edge" not in unit
    # the group is the service user's, who exists only once useradd really ran: recorded here
    assert [" ".join(c) for c in runner.commands] == [steps[0], f"chgrp fer-edge {config}", steps[3],
                                                      "systemctl daemon-reload",
                                                      "systemctl enable --now fer-edge.service"]
    assert runner.commands[0][0] in ("useradd", "usermod")
    if shutil.which("systemd-analyze"):
        assert verify(units / "fer-edge.service") == []

    # a second run keeps the administrator's edited config
    config.write_text('[output]\ndirectory = "/srv/fer"\n')
    steps = install_service(dry_run=False, executable=exe, config_path=config, unit_dir=units, runner=Recorder())
    assert steps[1].startswith("# keep")
    assert config.read_text() == '[output]\ndirectory = "/srv/fer"\n'


def test_a_failed_install_undoes_what_it_did_or_says_what_is_left(tmp_path: Path) -> None:
    exe = executable(tmp_path)
    config, units = tmp_path / "etc" / "config.toml", tmp_path / "units"
    runner = Recorder(failing=("systemctl enable",))
    state_dir_there = Path("/var/lib/fer-edge").exists()  # then the install keeps it: it may hold data
    with pytest.raises(Unavailable) as info:
        install_service(dry_run=False, executable=exe, user="fer-edge-test-nobody", config_path=config,
                        unit_dir=units, runner=runner)
    assert not config.exists() and not (units / "fer-edge.service").exists()
    # undone newest first: the failed enable disabled, the output folder it made removed (if empty),
    # the unit removed and systemd reloaded, the user deleted
    undone = [] if state_dir_there else ["rmdir --ignore-fail-on-non-empty /var/lib/fer-edge"]
    assert [" ".join(c) for c in runner.commands[-4 - len(undone):]] == [
        "systemctl enable --now fer-edge.service", "systemctl disable --now fer-edge.service", *undone,
        "systemctl daemon-reload", "userdel fer-edge-test-nobody"]
    message = str(info.value)
    assert "systemctl enable --now fer-edge.service` failed" in message and "undone: " in message
    assert ("left in place: /var/lib/fer-edge" in message) if state_dir_there else ("nothing is left in place" in message)
    # the user cannot be removed again: the error says it is still there, and how to remove it
    stuck = Recorder(failing=("systemctl enable", "userdel"))
    with pytest.raises(Unavailable) as info:
        install_service(dry_run=False, executable=exe, user="fer-edge-test-nobody", config_path=config,
                        unit_dir=units, runner=stuck)
    assert "left in place: user fer-edge-test-nobody (userdel fer-edge-test-nobody)" in str(info.value)
    assert not config.exists()
    # an administrator's config is never removed by the undo
    config.write_text("[video]\nenabled = false\n")
    with pytest.raises(Unavailable):
        install_service(dry_run=False, executable=exe, user="fer-edge-test-nobody", config_path=config,
                        unit_dir=units, runner=Recorder(failing=("systemctl enable",)))
    assert config.read_text() == "[video]\nenabled = false\n"


def test_install_refuses_a_missing_executable_or_one_the_unit_hides(tmp_path: Path) -> None:
    with pytest.raises(InputMissing, match="not found") as info:
        install_service(dry_run=True, executable=Path("/nonexistent"), config_path=tmp_path / "c.toml",
                        unit_dir=tmp_path)
    assert info.value.exit_code == 66
    home_venv = executable(tmp_path, shebang="#!/home/pi/fer/venv/bin/python3")  # a venv in a home folder
    with pytest.raises(ConfigError, match="ProtectHome=yes") as info:
        install_service(dry_run=True, executable=home_venv, config_path=tmp_path / "c.toml", unit_dir=tmp_path)
    assert "/home/pi/fer/venv/bin/python3" in str(info.value) and "/opt/fer-edge" in str(info.value)
    cli = subprocess.run([sys.executable, "-m", "fer_edge", "install-service", "--dry-run", "--executable",
                          "/nonexistent"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 66 and cli.stderr.count("\n") == 1 and "/nonexistent" in cli.stderr, cli.stderr


def test_install_for_an_existing_user_adds_it_to_video(tmp_path: Path) -> None:
    steps = install_service(dry_run=True, executable=executable(tmp_path), user="root",
                            config_path=tmp_path / "c.toml", unit_dir=tmp_path)
    assert steps[0] == "usermod --append --groups video root"
    assert "User=root" in steps[2] and "Group=root" in steps[2]


def test_install_without_root_says_run_with_sudo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:
        # Tests here run as root, and an unprivileged user cannot reach this interpreter: pretend to
        # be uid 1000 for the one check that reads it.
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(Unavailable, match="run with sudo") as info:
        install_service(dry_run=False, config_path=tmp_path / "c.toml", unit_dir=tmp_path)
    assert info.value.exit_code == 69
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
