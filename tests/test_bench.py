"""`fer-edge bench`: it runs, it says what it measured, and the device process stays TensorFlow-free.

Functional only: timing thresholds belong in benchmarks/, never in tests.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVERY, DEFAULT, FLOOR = "fer-edge every frame", "fer-edge default", "decode+encode floor"


def test_bench_json_on_the_bundled_sample():
    result = subprocess.run([sys.executable, "-m", "fer_edge", "bench", "--json"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "FER_EDGE_BENCH_ROUNDS": "1"})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    for key in ("fps", "ratio_vs_floor", "cpu_ms_per_frame", "peak_rss_mb", "first_frame_s", "faces",
                "stage_ms_per_frame", "tensorflow_loaded", "video", "machine", "rounds"):
        assert key in out, key
    assert out["video"]["path"].endswith("sample_faces.mp4") and out["rounds"] == 1
    assert set(out["fps"]) == {EVERY, DEFAULT, FLOOR}
    assert all(fps > 0 for fps in out["fps"].values())
    assert all(out["peak_rss_mb"][name] > 0 for name in out["fps"])
    assert set(out["ratio_vs_floor"]) == {EVERY, DEFAULT}
    for name in (EVERY, DEFAULT):
        ratio = out["fps"][name] / out["fps"][FLOOR]  # one round: the ratio is exactly this
        assert abs(out["ratio_vs_floor"][name] - ratio) < 0.01 + 0.01 * ratio
        assert out["first_frame_s"][name] > 0
        assert out["faces"][name] > 0  # the astronaut is found
        stages = out["stage_ms_per_frame"][name]
        assert {"capture", "detect", "preprocess", "infer", "annotate", "encode", "log"} <= set(stages)
        assert stages["detect"] > 0 and stages["infer"] > 0
        assert out["tensorflow_loaded"][name] is False  # the device process never loads TensorFlow
    assert out["first_frame_s"][FLOOR] > 0 and out["faces"][FLOOR] == 0
    # the table form reads the same numbers
    table = subprocess.run([sys.executable, "-m", "fer_edge", "bench"], cwd=ROOT, capture_output=True, text=True,
                           timeout=600, env={**os.environ, "FER_EDGE_BENCH_ROUNDS": "1"})
    assert table.returncode == 0, table.stderr
    assert "| fer-edge every frame |" in table.stdout and "x floor" in table.stdout


def test_bench_missing_video_is_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fer_edge", "bench", str(tmp_path / "nope.mp4")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 66, result.stderr
    assert "Traceback" not in result.stderr and "nope.mp4" in result.stderr


def one_line_error(result: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("fer-edge: error: "), result.stderr
    for word in words:
        assert word in errors[0], errors[0]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fer_edge", "bench", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "FER_EDGE_BENCH_ROUNDS": "1"})


def test_bench_bad_or_missing_model_is_one_line_config_error(tmp_path):
    damaged = tmp_path / "damaged.tflite"
    damaged.write_bytes((ROOT / "models" / "fer_default.tflite").read_bytes()[:20000])  # a cut copy
    one_line_error(bench("--model", str(damaged)), 78, "damaged.tflite")
    one_line_error(bench("--model", str(tmp_path / "none.tflite")), 78, "none.tflite", "not found")


def test_bench_on_a_video_cut_short_or_not_a_video_says_so(tmp_path):
    import cv2

    cap = cv2.VideoCapture(str(ROOT / "samples" / "sample_faces.mp4"))
    whole = tmp_path / "whole.avi"  # MJPG AVI: its header announces all 60 frames
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), 15, (480, 360))
    for _ in range(60):
        writer.write(cap.read()[1])
    writer.release()
    cap.release()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # as a crash would leave it
    one_line_error(bench(str(cut)), 65, "cut.avi", "of the 60 frames")
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video\n")
    one_line_error(bench(str(notes)), 65, "notes.mp4")
