"""fer-edge against what people run today, on one video, in one run.

    python benchmarks/pipeline.py VIDEO [--json] [--rounds N]

Contenders, each in its own process, interleaved over rounds (medians; ratios taken within a round):
  1. fer-edge every frame   (--every 1), annotated video + CSV written
  2. fer-edge default       (its default frame skipping), video + CSV written
  3. tutorial               Haar 1.3/3 on every full frame, Keras predict per face, mp4v (benchmarks/contenders.py)
  4. fer                    the `fer` package, FER(use_tflite=True).detect_emotions per frame, mp4v
  5. decode+encode floor    read every frame, write it again (mp4v), nothing else
Then, untimed: quality of each fer-edge mode against full-resolution Haar on every frame with the
float Keras model on its crops, and per-face inference alone (int8 TFLite vs Keras).
All run mini-Xception: fer-edge its bundled int8 conversion (models/mini_xception_int8.tflite), not
its default model, so the figures compare pipelines on one network.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fer_edge.bench import (FLOOR, Contender, format_table, fer_edge_contenders, machine, run_child,
                            run_rounds, summarise, video_info)
from fer_edge.resources import MINI_XCEPTION_MODEL, find_resource
from fer_edge.tracker import iou_matrix

HERE = Path(__file__).resolve().parent
TUTORIAL, FER = "tutorial loop (Keras)", "fer package"
EVERY, DEFAULT = "fer-edge every frame", "fer-edge default"
BASELINES = {"ratio_vs_fer": FER, "ratio_vs_tutorial": TUTORIAL, "ratio_vs_floor": FLOOR}
OVERLAP_IOU = 0.3  # a shown face "overlaps" the reference face at this IoU or more
INSTALL = {"keras": "pip install -e '.[dev]' (TensorFlow + Keras)",
           "fer": "pip install --no-deps fer==25.10.3 pillow pandas matplotlib 'moviepy<2'"}


def contender_script(name: str, kind: str, video: str, extra: tuple[str, ...] = ()) -> Contender:
    def argv(out: Path, result: Path, t_spawn: float) -> list[str]:
        return [sys.executable, str(HERE / "contenders.py"), kind, video, "--output", str(out),
                "--result", str(result), "--t-spawn", repr(t_spawn), *extra]
    return Contender(name, argv)


def shown_per_frame(records: list, frames: int) -> list[list]:
    """What the video shows on each frame: the tracker's faces after the latest analysis."""
    shown: list[list] = [[] for _ in range(frames)]
    records = sorted(records, key=lambda r: r[0])
    for k, (index, _detected, visible, _raw) in enumerate(records):
        end = records[k + 1][0] if k + 1 < len(records) else frames
        for i in range(index, min(end, frames)):
            shown[i] = visible
    return shown


def _best_match(box: list, ref_boxes: np.ndarray) -> tuple[int, float]:
    if not len(ref_boxes):
        return -1, 0.0
    ious = iou_matrix(np.asarray([box[:4]], np.float32), ref_boxes)[0]
    j = int(ious.argmax())
    return j, float(ious[j])


def quality(records: list, reference: dict, float_on_own_boxes: list | None = None) -> dict[str, Any]:
    """Detection: frames with a reference face whose shown results overlap one; reference faces
    covered. Emotion: for each face fer-edge detected, the int8 model's label on fer-edge's crop
    vs the Keras label on the reference crop it overlaps (emotion_agreement); the same for the
    label fer-edge logs, which the tracker smooths over analyses (logged_), and for what is
    shown on every frame (shown_). With `float_on_own_boxes` (the float model's labels on
    fer-edge's crops, per record), the same comparison without quantization: what box placement
    alone costs (float_model_on_own_boxes_agreement)."""
    ref_boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b in reference["boxes"]]
    ref_labels = reference["labels"]
    shown = shown_per_frame(records, len(ref_boxes))
    frames_with_ref = frames_found = ref_faces = ref_covered = 0
    shown_agree = shown_compared = 0
    for i, refs in enumerate(ref_boxes):
        if not len(refs):
            continue
        frames_with_ref += 1
        ref_faces += len(refs)
        faces = np.asarray([f[:4] for f in shown[i]], np.float32).reshape(-1, 4)
        if len(faces):
            ious = iou_matrix(refs, faces)
            ref_covered += int((ious.max(1) >= OVERLAP_IOU).sum())
            frames_found += bool((ious >= OVERLAP_IOU).any())
            for f in shown[i]:
                j, iou = _best_match(f, refs)
                if iou >= OVERLAP_IOU:
                    shown_compared += 1
                    shown_agree += f[4] == ref_labels[i][j]
    detected = matched = agree = agree_logged = agree_float = 0
    for r, (index, found, _visible, unsmoothed) in enumerate(records):
        floats = float_on_own_boxes[r] if float_on_own_boxes else [None] * len(found)
        for f, label, float_label in zip(found, unsmoothed, floats):
            detected += 1
            if index >= len(ref_boxes):
                continue
            j, iou = _best_match(f, ref_boxes[index])
            if iou >= OVERLAP_IOU:
                matched += 1
                agree += label == ref_labels[index][j]
                agree_logged += f[4] == ref_labels[index][j]
                agree_float += float_label == ref_labels[index][j]
    return {
        "frames_with_reference_face": frames_with_ref,
        "frames_found": frames_found,
        "frame_recall": round(frames_found / max(1, frames_with_ref), 4),
        "reference_faces_covered": round(ref_covered / max(1, ref_faces), 4),
        "detected_faces": detected,
        "detected_matching_reference": matched,
        "emotion_agreement": round(agree / max(1, matched), 4),
        "logged_emotion_agreement": round(agree_logged / max(1, matched), 4),
        "shown_emotion_agreement": round(shown_agree / max(1, shown_compared), 4),
        "float_model_on_own_boxes_agreement": (round(agree_float / max(1, matched), 4)
                                               if float_on_own_boxes else None),
    }


def targets(s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    def t(value: Optional[float], goal: float, higher: bool = True) -> dict[str, Any]:
        met = value is not None and (value >= goal if higher else value <= goal)
        return {"value": value, "target": (">= " if higher else "<= ") + f"{goal:g}", "met": met}

    q = s.get("quality", {}).get(DEFAULT, {})
    out = {
        "every frame vs fer": t(s["ratio_vs_fer"].get(EVERY), 3),
        "every frame vs tutorial": t(s["ratio_vs_tutorial"].get(EVERY), 8),
        "default vs fer": t(s["ratio_vs_fer"].get(DEFAULT), 8),
        "default vs floor": t(s["ratio_vs_floor"].get(DEFAULT), 0.5),
        "default peak RSS MB": t(s["peak_rss_mb"].get(DEFAULT), 150, higher=False),
        "every frame peak RSS MB": t(s["peak_rss_mb"].get(EVERY), 150, higher=False),
        "default first frame s": t(s["first_frame_s"].get(DEFAULT), 1.5, higher=False),
        "default frame recall": t(q.get("frame_recall"), 0.95),
        "default emotion agreement": t(q.get("emotion_agreement"), 0.95),
    }
    ref = s.get("quality", {}).get("reference", {})
    if ref.get("int8_agrees_on_reference_crops") is not None:  # the part of that figure speed choices own
        out["int8 vs float on the reference crops"] = t(ref["int8_agrees_on_reference_crops"], 0.95)
    clean = not any(s["tensorflow_loaded"].get(n) for n in (EVERY, DEFAULT))
    out["no TensorFlow in fer-edge"] = {"value": clean, "target": "True", "met": clean}
    return out


def report(summary: dict[str, Any]) -> str:
    """The human-readable form of the JSON summary."""
    v, m = summary["video"], summary["machine"]
    lines = [f"{Path(v['path']).name}: {v['width']}x{v['height']} @ {v['fps']} fps, {v['frames']} frames; "
             f"median of {summary['rounds']} rounds; {m.get('cpus')} CPUs; load average "
             f"{m.get('load_avg_before')} before, {summary.get('load_avg_after')} after", "",
             format_table(summary, list(BASELINES))]
    cpu = [f"{name}: " + ", ".join(f"{k.replace('ratio_vs_', 'x ')} {summary['cpu_' + k].get(name)}"
                                   for k in BASELINES if "cpu_" + k in summary) for name in (EVERY, DEFAULT)]
    lines += ["", "the same ratios in CPU time per frame (what a busy machine changes least; no credit for the "
                  "second core): " + "; ".join(cpu)]
    if "quality" in summary:
        ref = summary["quality"]["reference"]
        det = ref["detector"]
        lines += ["", f"quality vs the reference: full-resolution Haar (scaleFactor {det['scaleFactor']}, minNeighbors "
                      f"{det['minNeighbors']}, minSize {det['minSize'][0]}) on every frame, the float Keras model on "
                      f"its crops; a face is found when a shown box overlaps (IoU >= {ref['overlap_iou']})",
                  "| contender | frames with a face found | emotion agreement, per detected face | "
                  "as logged (smoothed) | as shown, every frame | float Keras on the same boxes |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, q in summary["quality"].items():
            if name != "reference":
                own = q.get("float_model_on_own_boxes_agreement")
                lines.append(f"| {name} | {q['frame_recall']:.1%} ({q['frames_found']}/"
                             f"{q['frames_with_reference_face']}) | {q['emotion_agreement']:.1%} of "
                             f"{q['detected_matching_reference']} | {q['logged_emotion_agreement']:.1%} | "
                             f"{q['shown_emotion_agreement']:.1%} | {'-' if own is None else f'{own:.1%}'} |")
        if ref.get("keras_label_kept_under_1px_shift") is not None:
            lines.append(f"the float Keras model itself keeps its label on only "
                         f"{ref['keras_label_kept_under_1px_shift']:.1%} of the reference crops moved by one pixel")
        if ref.get("int8_agrees_on_reference_crops") is not None:
            lines.append(f"quantization alone: fer-edge's int8 model gives the float model's label on "
                         f"{ref['int8_agrees_on_reference_crops']:.1%} of the reference crops themselves")
    if "inference" in summary:
        inf = summary["inference"]
        lines += ["", f"per-face inference alone, ms per face, one face per call ({inf['faces']} faces of the video):",
                  "| " + " | ".join(inf["ms_per_face"]) + " |", "| --- " * len(inf["ms_per_face"]) + "|",
                  "| " + " | ".join(f"{x:.3f}" for x in inf["ms_per_face"].values()) + " |",
                  f"int8 TFLite is {inf['speedup_int8_vs_keras_predict']:g}x faster than Keras predict(), "
                  f"{inf['speedup_int8_vs_keras_call']:g}x than Keras __call__, and gives the same label as "
                  f"Keras on {inf['int8_agrees_with_keras']:.1%} of these crops"]
    lines += ["", "targets:"]
    for k, t in summary["targets"].items():
        lines.append(f"  {'met   ' if t['met'] else 'MISSED'} {k}: {t['value']} (target {t['target']})")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", nargs="?")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip", action="append", default=[], choices=["tutorial", "fer", "quality", "inference"],
                   help="leave a part out (for quick runs)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="configuration override for both fer-edge modes (experiments)")
    p.add_argument("--from-json", type=Path, metavar="FILE", help="print the table of an earlier --json run")
    args = p.parse_args(argv)
    if args.from_json:
        print(report(json.loads(args.from_json.read_text())))
        return 0
    if not args.video:
        p.error("give a VIDEO (or --from-json FILE)")
    video = str(Path(args.video).resolve())
    say = (lambda m: print(f"bench: {m}", file=sys.stderr, flush=True))
    info = {"video": video_info(video), "machine": machine(), "rounds": args.rounds,
            "command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/pipeline.py", *(argv or sys.argv[1:])])}
    missing = {"fer": "fer", "tutorial": "keras", "quality": "keras", "inference": "keras"}
    for part, module in missing.items():
        if part not in args.skip and importlib.util.find_spec(module) is None:
            say(f"leaving out {part}: {module} is not installed ({INSTALL[module]})")
            args.skip.append(part)
    extra = [f"--set={s}" for s in args.set]
    # Every contender runs mini-Xception (fer-edge its int8 conversion), so the comparison is of pipelines,
    # not of networks, and the float Keras reference judges the same network fer-edge runs.
    same_network = [f"--model={find_resource(MINI_XCEPTION_MODEL)}"]
    contenders = fer_edge_contenders(video, same_network, record=True, extra=extra)
    if "tutorial" not in args.skip:
        contenders.append(contender_script(TUTORIAL, "tutorial", video))
    if "fer" not in args.skip:
        contenders.append(contender_script(FER, "fer", video))
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fer-edge-bench-") as tmp:
        runs = run_rounds(contenders, args.rounds, Path(tmp), say)
        summary = summarise(runs, BASELINES)
        summary["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
        for key in BASELINES:
            summary.setdefault(key, {})
        if "quality" not in args.skip:
            say("quality reference: full-resolution Haar + Keras on every frame")
            recorded = {name: rs[0].data["records"] for name, rs in runs.items() if "records" in rs[0].data}
            probe = Path(tmp) / "probe.json"  # fer-edge's boxes, for the float model to label too
            probe.write_text(json.dumps({name: [[rec[0], [f[:4] for f in rec[1]]] for rec in records]
                                         for name, records in recorded.items()}))
            ref = run_child(contender_script("reference", "reference", video, ("--probe", str(probe))),
                            Path(tmp)).data
            summary["quality"] = {name: quality(records, ref, ref["float_on_probe"].get(name))
                                  for name, records in recorded.items()}
            summary["quality"]["reference"] = {"detector": ref["settings"], "overlap_iou": OVERLAP_IOU,
                                               "frames": ref["frames"],
                                               "faces": sum(len(b) for b in ref["boxes"]),
                                               "keras_label_kept_under_1px_shift":
                                                   ref["keras_label_kept_under_1px_shift"],
                                               "int8_agrees_on_reference_crops":
                                                   ref["int8_agrees_on_reference_crops"]}
        if "inference" not in args.skip:
            say("per-face inference")
            summary["inference"] = run_child(contender_script("inference", "inference", video), Path(tmp)).data
            summary["inference"].pop("fps", None)
    for name in (EVERY, DEFAULT):
        data = runs[name][0].data
        summary.setdefault("settings", {})[name] = {**data.get("settings", {}), "full_scans": data.get("full_scans"),
                                                    "near_searches": data.get("near_searches")}
    summary["targets"] = targets(summary)
    summary.update(info)
    summary["wall_s"] = round(time.time() - started, 1)
    print(json.dumps(summary, indent=2) if args.json else report(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
