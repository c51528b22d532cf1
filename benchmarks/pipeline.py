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
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fer_edge.bench import (FLOOR, Contender, format_table, fer_edge_contenders, machine, run_child,
                            run_rounds, summarise, video_info)
from fer_edge.tracker import iou_matrix

HERE = Path(__file__).resolve().parent
TUTORIAL, FER = "tutorial loop (Keras)", "fer package"
EVERY, DEFAULT = "fer-edge every frame", "fer-edge default"
BASELINES = {"ratio_vs_fer": FER, "ratio_vs_tutorial": TUTORIAL, "ratio_vs_floor": FLOOR}
OVERLAP_IOU = 0.3  # a shown face "overlaps" the reference face at this IoU or more


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


def quality(records: list, reference: dict) -> dict[str, Any]:
    """Detection: frames with a reference face whose shown results overlap one; reference faces
    covered. Emotion: for each face fer-edge detected, the int8 model's label on fer-edge's crop
    vs the Keras label on the reference crop it overlaps (emotion_agreement); the same for the
    label fer-edge logs, which the tracker smooths over analyses (logged_), and for what is
    shown on every frame (shown_)."""
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
    detected = matched = agree = agree_logged = 0
    for index, found, _visible, unsmoothed in records:
        for f, label in zip(found, unsmoothed):
            detected += 1
            if index >= len(ref_boxes):
                continue
            j, iou = _best_match(f, ref_boxes[index])
            if iou >= OVERLAP_IOU:
                matched += 1
                agree += label == ref_labels[index][j]
                agree_logged += f[4] == ref_labels[index][j]
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
    clean = not any(s["tensorflow_loaded"].get(n) for n in (EVERY, DEFAULT))
    out["no TensorFlow in fer-edge"] = {"value": clean, "target": "True", "met": clean}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip", action="append", default=[], choices=["tutorial", "fer", "quality", "inference"],
                   help="leave a part out (for quick runs)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="configuration override for both fer-edge modes (experiments)")
    args = p.parse_args(argv)
    video = str(Path(args.video).resolve())
    say = (lambda m: print(f"bench: {m}", file=sys.stderr, flush=True))
    info = {"video": video_info(video), "machine": machine(), "rounds": args.rounds,
            "command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/pipeline.py", *(argv or sys.argv[1:])])}
    extra = [f"--set={s}" for s in args.set]
    contenders = fer_edge_contenders(video, [], record=True, extra=extra)
    if "tutorial" not in args.skip:
        contenders.append(contender_script(TUTORIAL, "tutorial", video))
    if "fer" not in args.skip:
        contenders.append(contender_script(FER, "fer", video))
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fer-edge-bench-") as tmp:
        runs = run_rounds(contenders, args.rounds, Path(tmp), say)
        summary = summarise(runs, BASELINES)
        for key in BASELINES:
            summary.setdefault(key, {})
        if "quality" not in args.skip:
            say("quality reference: full-resolution Haar + Keras on every frame")
            ref = run_child(contender_script("reference", "reference", video), Path(tmp)).data
            summary["quality"] = {name: quality(rs[0].data["records"], ref) for name, rs in runs.items()
                                  if "records" in rs[0].data}
            summary["quality"]["reference"] = {"detector": ref["settings"], "overlap_iou": OVERLAP_IOU,
                                               "frames": ref["frames"],
                                               "faces": sum(len(b) for b in ref["boxes"])}
        if "inference" not in args.skip:
            say("per-face inference")
            summary["inference"] = run_child(contender_script("inference", "inference", video), Path(tmp)).data
            summary["inference"].pop("fps", None)
    for name in (EVERY, DEFAULT):
        summary.setdefault("settings", {})[name] = runs[name][0].data.get("settings")
    summary["targets"] = targets(summary)
    summary.update(info)
    summary["wall_s"] = round(time.time() - started, 1)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    v = info["video"]
    print(f"{Path(video).name}: {v['width']}x{v['height']} @ {v['fps']} fps, {v['frames']} frames; "
          f"median of {args.rounds} rounds; {info['machine'].get('cpus')} CPUs")
    print(format_table(summary, list(BASELINES)))
    if "quality" in summary:
        print("\nquality vs full-resolution Haar + Keras on every frame")
        for name, q in summary["quality"].items():
            if name == "reference":
                continue
            print(f"  {name}: frame recall {q['frame_recall']:.1%} ({q['frames_found']}/"
                  f"{q['frames_with_reference_face']}), emotion agreement {q['emotion_agreement']:.1%} of "
                  f"{q['detected_matching_reference']} detected faces (shown: {q['shown_emotion_agreement']:.1%})")
    if "inference" in summary:
        inf = summary["inference"]
        print(f"\nper-face inference, ms ({inf['faces']} faces): " +
              ", ".join(f"{k} {v:.3f}" for k, v in inf["ms_per_face"].items()) +
              f"; int8 agrees with Keras on {inf['int8_agrees_with_keras']:.1%}")
    print("\ntargets")
    for k, t in summary["targets"].items():
        print(f"  {'ok  ' if t['met'] else 'MISS'} {k}: {t['value']} (target {t['target']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
