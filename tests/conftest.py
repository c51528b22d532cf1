"""Fixtures every test file may use: the repository root and the real data beside it.

The real data (`../shared`, see its README) is never copied into the repository. CI always has
it; elsewhere the tests that need it skip, saying why.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
SHARED_MISSING = f"real data folder {SHARED_DIR} is absent (CI has it beside the repository)"

# Mark a test (or a module: pytestmark = requires_shared) that reads ../shared.
requires_shared = pytest.mark.skipif(not (SHARED_DIR / "data").is_dir(), reason=SHARED_MISSING)


@pytest.fixture(scope="session", autouse=True)
def no_output_left_in_the_repository():
    """Tests write into tmp_path: a default `fer-edge-output/` appearing in the checkout is a test
    that forgot --output."""
    stray = REPO_ROOT / "fer-edge-output"
    before = stray.exists()
    yield
    assert before or not stray.exists(), f"a test left {stray}; give its fer-edge run --output tmp_path"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared; skips the test when it is absent."""
    if not (SHARED_DIR / "data").is_dir():
        pytest.skip(SHARED_MISSING)
    return SHARED_DIR


@pytest.fixture(scope="session")
def shared_file(shared_dir):
    """shared_file("data/models/x.hdf5") → the path, or a skip naming the missing file."""
    def get(relative: str) -> Path:
        path = shared_dir / relative
        if not path.exists():
            pytest.skip(f"{path} is absent from the real data folder")
        return path
    return get


def frame_count(path: Path) -> int:
    """Frames of a video file that decode (without holding them all)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def one_line_error(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """A user mistake: exit `code`, no traceback, exactly one `fer-edge: error:` line naming `words`."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("fer-edge: error:")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]
