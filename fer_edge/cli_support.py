"""What every console script shares: one-line errors with their exit codes, never a traceback."""
from __future__ import annotations

import sys
from typing import Callable, Sequence

from .errors import FerEdgeError


def run_main(prog: str, main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    try:
        return main(argv)
    except FerEdgeError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fer-edge ... | head`
        return 0
