"""Install fer-edge as a systemd service: user, config, unit, enable.

Every step is also returned as a shell line, so `--dry-run` shows exactly what would be done and
an administrator can do it by hand instead.
"""
from __future__ import annotations

import os
import pwd
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from .config import SERVICE_CONFIG
from .errors import ConfigError, FerEdgeError, InputMissing, OutputError, Unavailable
from .resources import EXAMPLE_CONFIG, UNIT_FILE, find_resource

UNIT_NAME = "fer-edge.service"
STATE_DIR = "/var/lib/fer-edge"


def _user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
        return True
    except KeyError:
        return False


def _systemd_quote(text: str) -> str:
    return f'"{text}"' if re.search(r'[\s"\\]', text) else text


# Unit keys newer than bookworm's systemd 252, shipped commented out: (key, first systemd version).
NEWER_KEYS = (("RestartSteps", 254), ("RestartMaxDelaySec", 254))


def systemd_version() -> int:
    """The running systemd's version (252 on bookworm, 257 on trixie); 0 when unknown."""
    try:
        done = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    match = re.match(r"systemd (\d+)", done.stdout)
    return int(match.group(1)) if match else 0


def newer_keys(version: int) -> list[str]:
    """The commented-out keys this systemd knows, to be switched on."""
    return [key for key, since in NEWER_KEYS if version >= since]


def render_unit(template: str, *, executable: Path, config_path: Path, user: str, version: int = 0) -> str:
    """The unit text with ExecStart (and User/Group) rewritten for this install, and the keys this
    systemd `version` knows uncommented."""
    exec_start = f"ExecStart={_systemd_quote(str(executable))} run --config {_systemd_quote(str(config_path))}"
    text = re.sub(r"^ExecStart=.*$", lambda _: exec_start, template, count=1, flags=re.MULTILINE)
    text = re.sub(r"^User=.*$", f"User={user}", text, flags=re.MULTILINE)
    for key in newer_keys(version):
        text = re.sub(rf"^#({key}=)", r"\1", text, flags=re.MULTILINE)
    return re.sub(r"^Group=.*$", f"Group={user}", text, flags=re.MULTILINE)


def install_service(*, dry_run: bool, executable: Path | None = None, user: str = "fer-edge",
                    config_path: Path = SERVICE_CONFIG, unit_dir: Path = Path("/etc/systemd/system"),
                    runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                    version: int | None = None) -> list[str]:
    """The install steps as shell lines; performs them unless dry_run.

    Steps: create the system user (or add an existing one to `video`), copy the example config to
    `config_path` unless one exists (never overwritten; 0640, root and the user's group), write the
    unit, create the output folder (0750, the user's), daemon-reload, enable --now.
    `runner` runs the commands (subprocess.run); the root check applies only to that default, since
    another runner (tests) runs nothing on the system. `version`: systemd's (default: the running one),
    which decides whether the restart back-off keys (254+) are switched on.
    """
    version = systemd_version() if version is None else version
    executable = Path(executable) if executable else Path(sys.executable).parent / "fer-edge"
    unit_src, example = find_resource(UNIT_FILE), find_resource(EXAMPLE_CONFIG)
    unit_path = Path(unit_dir) / UNIT_NAME
    config_path = Path(config_path)

    wrote_config = []

    def write_config() -> None:
        if not config_path.exists():  # checked again: never overwrite an administrator's config
            # 0640, group the service's: it may name a password file; root keeps it, the service reads it
            _write(config_path, example.read_text(), 0o640)
            wrote_config.append(config_path)
            _run(runner, ["chgrp", user, str(config_path)])

    def remove_config() -> None:
        for path in wrote_config:  # only the one this install wrote
            path.unlink()

    def write_unit() -> None:
        unit = render_unit(unit_src.read_text(), executable=executable, config_path=config_path, user=user,
                           version=version)
        _write(unit_path, unit, 0o644)

    # (shell line, what does it or None, how to undo it or None, what it leaves if not undone or "")
    steps: list[tuple[str, Callable[[], None] | None, Callable[[], None] | None, str]] = []
    if _user_exists(user):  # make sure an existing user can open the camera
        line, action = _command(["usermod", "--append", "--groups", "video", user], runner)
        steps.append((line, action, None, f"user {user} added to the group video (gpasswd -d {user} video)"))
    else:
        line, action = _command(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", STATE_DIR,
                                 "--shell", "/usr/sbin/nologin", "--groups", "video", user], runner)
        steps.append((line, action, lambda: _run(runner, ["userdel", user]), f"user {user} (userdel {user})"))
    if config_path.exists():
        steps.append((f"# keep {shlex.quote(str(config_path))} (exists; never overwritten)", None, None, ""))
    else:
        steps.append((shlex.join(["install", "-D", "-m", "0640", "-g", user, str(example), str(config_path)]),
                      write_config, remove_config, f"config {config_path}"))
    sed = [f"s|^ExecStart=.*|ExecStart={executable} run --config {config_path}|"]
    if user != "fer-edge":
        sed += [f"s|^User=.*|User={user}|", f"s|^Group=.*|Group={user}|"]
    sed += [f"s|^#{key}=|{key}=|" for key in newer_keys(version)]
    sed_argv = ["sed"] + [arg for expr in sed for arg in ("-e", expr)] + [str(unit_src)]

    def remove_unit() -> None:
        unit_path.unlink()
        _run(runner, ["systemctl", "daemon-reload"])
    steps.append((f"{shlex.join(sed_argv)} > {shlex.quote(str(unit_path))}", write_unit, remove_unit,
                  f"unit {unit_path}"))
    # the output folder, private to the service (StateDirectoryMode=0750 keeps it so); undone only
    # if this install made it, and only while empty: an earlier install's data stays
    made_state_dir = not Path(STATE_DIR).exists()
    steps.append((*_command(["install", "-d", "-m", "0750", "-o", user, "-g", user, STATE_DIR], runner),
                  (lambda: _run(runner, ["rmdir", "--ignore-fail-on-non-empty", STATE_DIR])) if made_state_dir else None,
                  f"{STATE_DIR} (0750, {user})"))
    steps.append((*_command(["systemctl", "daemon-reload"], runner), None, ""))  # undone with the unit
    disable = ["systemctl", "disable", "--now", UNIT_NAME]

    def enable_now() -> None:
        try:
            _run(runner, ["systemctl", "enable", "--now", UNIT_NAME])
        except FerEdgeError:  # enabled but not started, perhaps: undone with the rest
            try:
                _run(runner, disable)
            except FerEdgeError:
                pass
            raise
    steps.append((shlex.join(["systemctl", "enable", "--now", UNIT_NAME]), enable_now,
                  lambda: _run(runner, disable), f"{UNIT_NAME} enabled"))
    check_executable(executable, unit_src.read_text())
    if not dry_run:
        if runner is subprocess.run and os.geteuid() != 0:
            raise Unavailable("installing the service needs root: run with sudo (or use --dry-run to see the steps)")
        _perform(steps)
    return [line for line, *_ in steps]


def _perform(steps) -> None:
    """Each step in turn; when one fails, undo the ones done, newest first, and say in the error
    what was undone and what is left."""
    done = []
    try:
        for line, action, undo, leaves in steps:
            if action is not None:
                action()
                done.append((undo, leaves))
    except FerEdgeError as exc:
        undone, left = [], []
        for undo, leaves in reversed(done):
            if not leaves:
                continue
            try:
                if undo is None:
                    raise OSError
                undo()
                undone.append(leaves.split(" (")[0])
            except (FerEdgeError, OSError):
                left.append(leaves)
        told = str(exc) + (f"; undone: {', '.join(undone)}" if undone else "") + \
            (f"; left in place: {', '.join(left)}" if left else "; nothing is left in place")
        raise type(exc)(told, exc.exit_code) from None


# Where the unit's ProtectHome= hides files from the service: an ExecStart there cannot even start.
PROTECTED_HOME = ("/home", "/root", "/run/user")


def check_executable(executable: Path, unit_text: str) -> None:
    """The ExecStart executable exists, can be run, and the unit does not hide it (or the Python
    its first line names: a venv's own) from the service."""
    if not executable.is_file():
        raise InputMissing(f"fer-edge executable {executable} not found; pass the path of the installed "
                           "fer-edge script with --executable (e.g. /opt/fer-edge/venv/bin/fer-edge)")
    if not os.access(executable, os.X_OK):
        raise InputMissing(f"{executable} is not executable; pass the installed fer-edge script with --executable")
    match = re.search(r"^ProtectHome=(\S+)", unit_text, re.MULTILINE)
    if not match or match.group(1) not in ("yes", "true", "tmpfs"):
        return
    try:
        with executable.open("rb") as fh:
            first = fh.readline(512)
        interpreter = first[2:].decode(errors="replace").split()[0] if first.startswith(b"#!") else ""
    except (OSError, IndexError):
        interpreter = ""
    for path in filter(None, (str(executable), str(executable.resolve()), interpreter)):
        if any(path == home or path.startswith(home + "/") for home in PROTECTED_HOME):
            raise ConfigError(f"{path} is under {', '.join(PROTECTED_HOME)}, which the unit's ProtectHome="
                              f"{match.group(1)} hides from the service, so it could not start; install fer-edge "
                              "outside them (e.g. python3 -m venv /opt/fer-edge/venv) and pass its fer-edge "
                              "with --executable")


def _command(argv: Sequence[str], runner: Callable[..., subprocess.CompletedProcess]
             ) -> tuple[str, Callable[[], None]]:
    return shlex.join(argv), lambda: _run(runner, argv)


def _run(runner: Callable[..., subprocess.CompletedProcess], argv: Sequence[str]) -> None:
    try:
        done = runner(list(argv), check=False, capture_output=True, text=True)
    except FileNotFoundError:
        raise Unavailable(f"{argv[0]} not found; is this a systemd Linux system?") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout or "").strip().splitlines()
        raise Unavailable(f"`{shlex.join(argv)}` failed (exit {done.returncode})"
                          + (f": {detail[-1]}" if detail else ""))


def _write(path: Path, text: str, mode: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        os.replace(tmp, path)  # never a half-written unit or config
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc}); run with sudo") from None
