"""How closely the bf16 predictor reproduces fp32 detections of an exported model, over a folder of images.

    python benchmarks/bf16_match.py --model_dir output/demo/export --image_dir output/demo/shapes/val
    python benchmarks/bf16_match.py --model_dir output/export/rt_r50 --image_dir photos/ --min-score 0.3

Runs the same images through the exported model on Paddle Inference with oneDNN in fp32 and in bf16
(AVX512-BF16 or AMX needed) and prints, per score threshold, how many fp32 detections found a bf16
partner with the same label and IoU >= 0.9 (bf16 candidates down to half the threshold take part, so a
detection at the cut is not lost to a small score change), the largest score change of the pairs, and
the median network time of both. Use trained weights: random weights put all scores close together.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", required=True, help="an export directory (infer_cfg.yml + model)")
    ap.add_argument("--image_dir", required=True)
    ap.add_argument("--max-images", type=int, default=200)
    ap.add_argument("--min-score", type=float, nargs="+", default=[0.05, 0.3, 0.5])
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: all usable cores)")
    args = ap.parse_args(argv)

    import cv2
    import numpy as np

    from fcos.deploy.predictor import DeployPredictor, cpu_supports_bf16
    from fcos.inference.matching import match_detections
    from fcos.utils.runtime import cpu_name

    if not cpu_supports_bf16():
        print("this CPU has neither AVX512-BF16 nor AMX: no bf16 mode to compare", file=sys.stderr)
        return 2
    names = sorted(f for f in os.listdir(args.image_dir) if f.lower().endswith(IMAGE_EXTS))[: args.max_images]
    if not names:
        print(f"{args.image_dir}: no images", file=sys.stderr)
        return 2
    images = [cv2.imread(os.path.join(args.image_dir, n)) for n in names]
    outputs, times = {}, {}
    for precision in ("fp32", "bf16"):
        pred = DeployPredictor(args.model_dir, use_mkldnn=True, cpu_threads=args.threads, precision=precision)
        pred.predict(images[:1], keep_images=False)  # warm-up
        per_image = []
        results = []
        for img in images:
            t0 = time.perf_counter()
            results.append(pred.predict([img], keep_images=False)[0])
            per_image.append(time.perf_counter() - t0)
        outputs[precision], times[precision] = results, float(np.median(per_image)) * 1e3
    print(f"{args.model_dir} on {len(images)} image(s) of {args.image_dir}; CPU: {cpu_name()}")
    print(f"median ms per image: fp32 {times['fp32']:.1f}, bf16 {times['bf16']:.1f}")
    print()
    print("| min score | fp32 detections | matched by bf16 (IoU >= 0.9, same label) | max score change |")
    print("|---|---|---|---|")
    for thr in args.min_score:
        total = matched = 0
        max_sd = 0.0
        for ref, got in zip(outputs["fp32"], outputs["bf16"]):
            m = match_detections(ref, got, iou_thresh=0.9, min_score=thr, other_min_score=thr / 2)
            total, matched, max_sd = total + m.num_ref, matched + m.matched, max(max_sd, m.max_score_diff)
        share = f"{matched / total:.1%}" if total else "-"
        print(f"| {thr:g} | {total} | {matched} ({share}) | {max_sd:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
