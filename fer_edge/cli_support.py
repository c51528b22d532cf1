"""What every console script shares: one-line errors with their exit codes, never a traceback."""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from .errors import FerEdgeError


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


def attach_negative_values(argv: Sequence[str], options: Sequence[str] = ("--input-range",)) -> list[str]:
    """argparse reads `--input-range -1,1` as a missing value plus an unknown option `-1,1`."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in options and arg.startswith("-") and arg[1:2].isdigit():
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out
