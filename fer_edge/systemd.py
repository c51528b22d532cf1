"""sd_notify(3) without libsystemd: readiness, status and watchdog pings over $NOTIFY_SOCKET.

Best-effort by design: with no $NOTIFY_SOCKET (not under systemd) every call is a no-op, and a
vanished socket never raises, so the service never dies because of a notification.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Mapping


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ):
        address = environ.get("NOTIFY_SOCKET", "")
        # '@name' is Linux's abstract namespace: a leading NUL byte instead of a path
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())  # the watchdog may be meant for a parent process
        # ping at half the timeout, as sd_watchdog_enabled(3) advises
        self.watchdog_interval: float | None = int(usec) / 2e6 if usec.isdigit() and int(usec) and mine else None
        self._last_ping = float("-inf")

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, text: str) -> bool:
        """Send one raw notification; False when not under systemd or the socket is gone."""
        if not self._address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode(), self._address)
            return True
        except OSError:
            return False

    def notify(self, **fields: object) -> bool:
        # one field per line: a newline inside a value would start a bogus field
        return self.send("\n".join(f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()))

    def ready(self, status: str = "") -> bool:
        return self.notify(READY=1, STATUS=status) if status else self.notify(READY=1)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def stopping(self) -> bool:
        return self.notify(STOPPING=1)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def maybe_watchdog(self, now: float | None = None) -> bool:
        """Ping when watchdog_interval has passed since the last ping (`now`: time.monotonic())."""
        now = time.monotonic() if now is None else now
        if self.watchdog_interval is None or now - self._last_ping < self.watchdog_interval:
            return False
        self._last_ping = now
        return self.watchdog()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
