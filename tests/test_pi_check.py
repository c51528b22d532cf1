"""tools/pi_check.py's own logic: what it reads from the README and how it compares outputs.

The check itself (an emulated Pi OS root) is `make pi-check`; it needs root and minutes."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("pi_check", REPO / "tools/pi_check.py")
pi_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pi_check)


def test_the_route_is_read_from_the_readme_as_written():
    route = pi_check.readme_route(pi_check.pi_section((REPO / "README.md").read_text()))
    assert {"python3-opencv", "python3-venv"} <= set(route["packages"])
    assert any("-m venv --system-site-packages" in line for line in route["setup"])
    assert any(line.startswith(route["venv"] + "/bin/pip install ") for line in route["setup"])
    assert not any("sudo" in line for line in route["setup"])  # the root has no sudo; it runs as root


def row(emotion="happy", x=10, y=20, w=100, h=100, confidence="0.8"):
    return {"emotion": emotion, "confidence": confidence, "x": x, "y": y, "w": w, "h": h}


def compare(host, pi):
    report, problems = {}, []
    pi_check.compare_rows("run", host, pi, report, problems)
    return report["run"], problems


def test_same_rows_pass_and_the_figures_are_reported():
    host = {(0, 1): row(), (3, 1): row(x=12)}
    summary, problems = compare(host, {(0, 1): row(x=11), (3, 1): row(x=12)})
    assert problems == []
    assert summary["same_emotion"] == 2 and summary["box_px_max"] == 1 and summary["box_px_median"] == 0.5


def test_each_kind_of_difference_fails():
    host = {(0, 1): row(), (3, 1): row(), (6, 1): row()}
    _, problems = compare(host, {(0, 1): row(emotion="sad"), (3, 1): row(w=100 + 21)})
    text = "\n".join(problems)
    assert "frame 0 face 1: host happy" in text
    assert "frame 3 face 1 box off by more than" in text
    assert "frame 6 face 1 only on the host" in text
    _, nothing = compare({}, {})
    assert nothing  # no rows at all is not a pass


def test_json_differences_name_the_path():
    assert pi_check.json_differences({"a": [1, {"b": 2}]}, {"a": [1, {"b": 2}]}) == []
    assert pi_check.json_differences({"a": [1, {"b": 2}]}, {"a": [1, {"b": 3}]}) == [".a[1].b: host 2 | pi 3"]
