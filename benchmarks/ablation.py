"""What each hot-path change bought: `fer-edge run` before and after, one change at a time.

    python benchmarks/ablation.py VIDEO --before REV [--rounds N] [--json]

Variants (each `fer-edge run --json`, video + CSV written, in its own process, interleaved over
rounds; medians of fps and of the ratio to `before` taken within each round):
  before            the code at git REV (exported with git archive into a temporary folder)
  + near search     this code, detection.scale_factor=1.1 (as before), decoding on the main thread
  + decode thread   the same, decoding ahead on its own thread
  now               + detection.scale_factor=1.2 (the current defaults)
each in both modes: every frame (--every 1) and the default skipping.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from fer_edge.resources import MINI_XCEPTION_MODEL, find_resource

ROOT = Path(__file__).resolve().parents[1]
# Decoding on the caller's thread, as before: VideoFileSource(path, realtime=False, prefetch=0).
NO_DECODE_THREAD = ("import sys, fer_edge.sources as s; s.VideoFileSource.__init__.__defaults__ = (False, 0); "
                    "from fer_edge.cli import entry; sys.exit(entry())")
RUN = "from fer_edge.cli import entry; import sys; sys.exit(entry())"
# One model for every variant, so only the code differs (older revisions bundled mini-Xception as the default).
SAME_MODEL = find_resource(MINI_XCEPTION_MODEL)


def variants(before_tree: Path | None) -> dict[str, tuple[list[str], dict[str, str]]]:
    out = {}
    if before_tree is not None:
        out["before"] = ([sys.executable, "-c", RUN], {"PYTHONPATH": str(before_tree)})
    out["+ near search"] = ([sys.executable, "-c", NO_DECODE_THREAD, "--set", "detection.scale_factor=1.1"], {})
    out["+ decode thread"] = ([sys.executable, "-c", RUN, "--set", "detection.scale_factor=1.1"], {})
    out["now"] = ([sys.executable, "-c", RUN], {})
    return out


def run_once(cmd: list[str], env: dict[str, str], video: str, every: int | None, out: Path) -> dict:
    """One `fer-edge run`; from a neutral directory, so `python -c` does not import ./fer_edge."""
    # the entry point reads sys.argv[1:]: "-c CODE" leaves argv[0] = "-c", so the subcommand follows
    args = [*cmd[:3], "run", "--source", video, "--output", str(out), "--json", "--model", str(SAME_MODEL),
            *cmd[3:]]
    if every is not None:
        args += ["--every", str(every)]
    result = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **env}, cwd=out.parent,
                            timeout=600)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video")
    p.add_argument("--before", metavar="REV", help="git revision of the code before the changes")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    video = str(Path(args.video).resolve())
    with tempfile.TemporaryDirectory(prefix="fer-edge-ablation-") as tmp:
        tree = None
        if args.before:
            tree = Path(tmp) / "before"
            tree.mkdir()
            archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        table = variants(tree)
        fps: dict[tuple[str, str], list[float]] = {}
        stages: dict[tuple[str, str], dict] = {}
        names = list(table)
        for r in range(args.rounds):
            for mode, every in (("every frame", 1), ("default", None)):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    cmd, env = table[name]
                    s = run_once(cmd, env, video, every, Path(tmp) / f"o{r}{name}{mode}")
                    fps.setdefault((name, mode), []).append(s["fps"])
                    stages[(name, mode)] = s["stage_ms_per_frame"]
                    print(f"ablation: round {r + 1}: {mode}: {name}: {s['fps']} fps", file=sys.stderr, flush=True)
    rows = []
    for (name, mode), values in fps.items():
        base = fps.get(("before", mode))
        ratio = statistics.median([a / b for a, b in zip(values, base)]) if base else None
        rows.append({"variant": name, "mode": mode, "fps": statistics.median(values), "fps_rounds": values,
                     "x_before": None if ratio is None else round(ratio, 2),
                     "detect_ms": stages[(name, mode)]["detect"], "capture_ms": stages[(name, mode)]["capture"]})
    rows.sort(key=lambda r: (r["mode"] != "every frame", names.index(r["variant"])))
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print("| mode | variant | fps | x before | detect ms/frame | capture ms/frame |\n| --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['mode']} | {r['variant']} | {r['fps']:.1f} | {r['x_before'] or '-'} | "
                  f"{r['detect_ms']} | {r['capture_ms']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
