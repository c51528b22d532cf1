"""What every console script shares: one-line errors with their exit codes, never a traceback."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from .errors import EX_USAGE, FerEdgeError, OutputError


def run_main(prog: str, main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    try:
        return main(argv)
    except FerEdgeError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        if getattr(exc, "hard_exit", False):  # a thread stuck in a device call would block a normal exit
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fer-edge ... | head`
        return 0


class ArgumentParser(argparse.ArgumentParser):
    """argparse with sysexits: a usage error exits 64 (EX_USAGE), not argparse's 2. Its subcommand
    parsers are of this class too, and `commands` maps each name to its parser."""

    commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")

    def parse_args(self, args=None, namespace=None):
        args, extras = self.parse_known_args(args, namespace)
        if extras:  # said by the subcommand's parser, so its usage is the one printed
            command = self.commands.get(getattr(args, "command", None) or "", self)
            command.error(f"unrecognized arguments: {' '.join(extras)}")
        return args


def attach_negative_values(argv: Sequence[str], options: Sequence[str] = ("--input-range",)) -> list[str]:
    """argparse reads `--input-range -1,1` as a missing value plus an unknown option `-1,1`."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in options and arg.startswith("-") and arg[1:2].isdigit():
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def check_writable(path: Path, what: str, *, folder: bool = False, fix: str = "choose a writable place") -> None:
    """Raise OutputError (73) unless `path` (a file, or with `folder` a directory) can be created or
    written, by really creating something there and removing it: os.access says yes for root on a
    read-only mount and for /proc. Nothing is left behind, so it can run before the work starts."""
    path = Path(path)
    if path.is_dir() != folder and path.exists():
        raise OutputError(f"{what} {path} is {'a file' if folder else 'a folder'}; give "
                          f"{'a folder' if folder else 'a file name'} there")
    probe = path if folder and path.is_dir() else path.parent
    while not probe.exists() and probe != probe.parent:  # the folders to create are made from here
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{what} {path} cannot be created: {probe} is a file; {fix}")
    try:
        if path.is_file():
            with open(path, "ab"):  # appends nothing: the file stays as it is
                pass
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".fer-edge-probe-", dir=probe))
    except OSError as exc:
        raise OutputError(f"{what} {path} cannot be written ({exc.strerror or exc}); {fix}") from None
