"""Where bundled files live: the checkout (editable install) or <prefix>/share/fer-edge."""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import InputMissing

DEFAULT_MODEL = "models/fer_default.tflite"
# The bundled alternative: the `fer` package's network, which the workstation benchmark compares against.
MINI_XCEPTION_MODEL = "models/mini_xception_int8.tflite"
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


def resolve_model(path: str | None) -> Path:
    """A model path as the user wrote it, else the bundled file of that relative name, else the default.

    So `--model models/mini_xception_int8.tflite` works from any folder after a
    non-editable install too, where the file lives under <prefix>/share/fer-edge.
    """
    if not path:
        return find_resource(DEFAULT_MODEL)
    given = Path(path)
    if given.exists() or given.is_absolute():
        return given
    try:
        return find_resource(path)
    except InputMissing:
        return given  # missing: the classifier names it in its error
