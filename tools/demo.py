"""The whole life of a detector on a CPU in minutes, with no downloads.

    python tools/demo.py            # or: make demo

Runs, as the commands a user would type (each is printed before it runs):
synthetic shapes dataset -> dataset check -> training (progress bar, VisualDL, checkpoints) ->
COCO evaluation -> export (paddle.jit.save + infer_cfg.yml) -> deploy predictor on images and a
video -> a summary of where everything is.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fcos.inference.default_model import DEMO_EXPORT  # noqa: E402

CONFIG = "configs/demo_shapes.yml"


def run(cmd: list[str], title: str) -> float:
    """Run one step as a user would type it; stop the demo with the step's name on failure."""
    print(f"\n=== {title}\n$ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"demo: step '{title}' failed (exit code {proc.returncode}); the command above reproduces it")
    return time.perf_counter() - t0


def make_demo_video(path: str, image_dir: str, seed: int, num_frames: int) -> str:
    """A video of the synthetic val scenes panning sideways, so objects move across frames."""
    from fcos.data.synthetic import make_demo_video as _make

    return _make(path, image_dir=image_dir, seed=seed, num_frames=num_frames)


def write_montage(image_dir: str, path: str, count: int = 6, cols: int = 3) -> str:
    """A grid of the first ``count`` annotated images (all the same size in the demo) as one JPEG."""
    import cv2
    import numpy as np

    names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith((".jpg", ".png")))[:count]
    tiles = [cv2.imread(os.path.join(image_dir, n)) for n in names]
    tiles = [t for t in tiles if t is not None]
    if not tiles:
        return "(no annotated images)"
    h, w = tiles[0].shape[:2]
    tiles = [cv2.resize(t, (w, h)) for t in tiles]
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % cols)
    rows = [np.hstack(tiles[i : i + cols]) for i in range(0, len(tiles), cols)]
    cv2.imwrite(path, np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def best_weights(run_dir: str) -> str:
    from fcos.engine.checkpoint import find_best_weights

    return find_best_weights(run_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default=os.path.dirname(DEMO_EXPORT), help="everything the demo writes goes here")
    ap.add_argument("--train-images", type=int, default=600)
    ap.add_argument("--val-images", type=int, default=100)
    ap.add_argument("--steps", type=int, default=0, help="training steps (0: the config's schedule)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    py = sys.executable
    out = args.output
    data = os.path.join(out, "shapes")
    run_dir = os.path.join(out, "train")
    export_dir = os.path.join(out, "export")
    deploy_dir = os.path.join(out, "deploy")
    overrides = [
        f"data.train.image_dir={data}/train",
        f"data.train.ann_file={data}/annotations/train.json",
        f"data.val.image_dir={data}/val",
        f"data.val.ann_file={data}/annotations/val.json",
        f"train.output_dir={run_dir}",
    ]
    if args.steps:  # the recipe's LR drops at 80 % and 95 % of the schedule, eval at half and end
        steps = int(args.steps)
        overrides += [
            f"schedule.max_steps={steps}",
            f"schedule.milestones=[{int(steps * 0.8)},{int(steps * 0.95)}]",
            f"schedule.warmup_steps={min(50, steps // 4)}",
            f"train.eval_every={max(1, steps // 2)}",
            f"train.ckpt_every={max(1, steps // 2)}",
        ]
    o_flags = [x for ov in overrides for x in ("-o", ov)]
    times: dict[str, float] = {}
    t_start = time.perf_counter()

    times["data"] = run(
        [
            py,
            "tools/make_synthetic.py",
            "--output",
            data,
            "--train",
            str(args.train_images),
            "--val",
            str(args.val_images),
            "--seed",
            str(args.seed),
        ],
        "1/6 synthetic shapes dataset (COCO format)",
    )
    run(
        [
            py,
            "tools/check_dataset.py",
            "--ann",
            f"{data}/annotations/train.json",
            "--image-dir",
            f"{data}/train",
            "--output",
            os.path.join(out, "dataset_check"),
        ],
        "2/6 dataset check",
    )
    # --resume: a second `make demo` continues (or reuses) the finished run instead of overwriting it
    times["train"] = run(
        [py, "tools/train.py", "-c", CONFIG, "--resume", *o_flags], "3/6 training (VisualDL logs, checkpoints)"
    )
    weights = best_weights(run_dir)
    times["eval"] = run([py, "tools/eval.py", "-c", CONFIG, "-w", weights, *o_flags], "4/6 COCO evaluation")
    times["export"] = run(
        [py, "tools/export.py", "-c", CONFIG, "-w", weights, "--output", export_dir, *o_flags],
        "5/6 export (paddle.jit.save + infer_cfg.yml)",
    )
    video = make_demo_video(os.path.join(out, "demo_video.mp4"), f"{data}/val", args.seed, num_frames=60)
    times["deploy"] = run(
        [
            py,
            "tools/deploy_infer.py",
            "--model_dir",
            export_dir,
            "--image_dir",
            f"{data}/val",
            "--output_dir",
            os.path.join(deploy_dir, "images"),
        ],
        "6/6 deploy predictor on images",
    )
    times["deploy"] += run(
        [
            py,
            "tools/deploy_infer.py",
            "--model_dir",
            export_dir,
            "--video_file",
            video,
            "--output_dir",
            os.path.join(deploy_dir, "video"),
        ],
        "6/6 deploy predictor on a video",
    )

    metrics_path = os.path.join(run_dir, "eval", "metrics.json")
    summary = ""
    if os.path.isfile(metrics_path):
        with open(metrics_path, encoding="utf-8") as f:
            m = json.load(f)
        summary = f"  mAP {m.get('bbox_mAP', float('nan')):.3f}  AP50 {m.get('bbox_AP50', float('nan')):.3f} on the synthetic val set\n"
    montage = write_montage(os.path.join(deploy_dir, "images"), os.path.join(out, "detections.jpg"))
    total = time.perf_counter() - t_start
    print(
        f"\n=== Done in {total / 60:.1f} min\n{summary}"
        f"  detections       : {montage}  (a grid of annotated val images)\n"
        f"  annotated images : {deploy_dir}/images/\n"
        f"  annotated video  : {deploy_dir}/video/{os.path.basename(video)}\n"
        f"  dataset check    : {out}/dataset_check/ (report JSON, class distribution PNG)\n"
        f"  training run     : {run_dir}/ (train.log, metrics.csv, results.png, checkpoints/)\n"
        f"  evaluation       : {metrics_path}, {run_dir}/eval/pr_curve.png\n"
        f"  exported model   : {export_dir}/  (edit infer_cfg.yml to change threshold or size)\n"
        f"  VisualDL         : visualdl --logdir {run_dir}/vdl --language en   (then open http://localhost:8040)\n"
    )
    if os.path.abspath(export_dir) == os.path.abspath(DEMO_EXPORT):
        print("  next             : python tools/infer.py --video YOUR.mp4   (no model given: uses this one)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
