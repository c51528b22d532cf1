"""User-facing errors and the exit codes they map to (BSD sysexits, as systemd expects).

Anything a user can cause (a wrong path, a bad config value, a camera that is not there) is
raised as a FerEdgeError subclass and printed as one line by the CLI, never as a traceback.
"""
from __future__ import annotations

EX_USAGE = 64  # wrong command-line use
EX_DATAERR = 65  # input data malformed (bad CSV rows, not a model)
EX_NOINPUT = 66  # input file or folder missing
EX_UNAVAILABLE = 69  # a needed service/device/runtime is not there (camera, TFLite runtime)
EX_SOFTWARE = 70  # internal error
EX_CANTCREAT = 73  # cannot create an output file
EX_IOERR = 74  # read/write failed mid-run
EX_CONFIG = 78  # configuration error: systemd's RestartPreventExitStatus=78 stops restart loops


class FerEdgeError(Exception):
    """An error with a one-line message that names the thing and the fix."""

    exit_code = EX_SOFTWARE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(FerEdgeError):
    exit_code = EX_USAGE


class DataError(FerEdgeError):
    exit_code = EX_DATAERR


class InputMissing(FerEdgeError):
    exit_code = EX_NOINPUT


class Unavailable(FerEdgeError):
    exit_code = EX_UNAVAILABLE


class CameraAbsent(Unavailable):
    """No camera just now (unplugged, not yet connected, busy): a live source waits for it."""


class CameraHung(Unavailable):
    """A camera call that never returned, on a device this process cannot use again (picamera2).
    The stuck thread cannot be joined, so the process exits without waiting for it (run_main) and
    systemd starts a fresh one."""

    hard_exit = True


class OutputError(FerEdgeError):
    exit_code = EX_CANTCREAT


class ConfigError(FerEdgeError):
    exit_code = EX_CONFIG
