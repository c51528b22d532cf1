"""Where bundled files live: the checkout (editable install) or <prefix>/share/fer-edge."""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import InputMissing

DEFAULT_MODEL = "models/fer_default.tflite"
SAMPLE_VIDEO = "samples/sample_faces.mp4"
UNIT_FILE = "systemd/fer-edge.service"
EXAMPLE_CONFIG = "systemd/config.example.toml"


def resource_roots() -> list[Path]:
    return [Path(__file__).resolve().parents[1], Path(sys.prefix) / "share" / "fer-edge",
            Path("/usr/local/share/fer-edge"), Path("/usr/share/fer-edge")]


def find_resource(relative: str) -> Path:
    for root in resource_roots():
        candidate = root / relative
        if candidate.is_file():
            return candidate
    raise InputMissing(f"bundled file {relative} not found under {', '.join(map(str, resource_roots()))}; "
                       "reinstall fer-edge")
