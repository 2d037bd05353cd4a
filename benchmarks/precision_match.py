"""How closely bf16 and int8 reproduce the fp32 detections of an exported model, over a folder of images.

    python benchmarks/precision_match.py --model_dir output/demo/export --image_dir output/demo/shapes/val --bf16
    python benchmarks/precision_match.py --model_dir DIR_WITH_ONNX --image_dir IMAGES --bf16 paddle openvino
    python benchmarks/precision_match.py --model_dir output/demo/export --image_dir output/demo/shapes/val \\
        --int8 output/demo/export_int8 output/demo/export_int8_ort --min-score 0.05 0.3 0.5

(This was benchmarks/bf16_match.py; ``--bf16`` does what it did.) The reference is the fp32 export on
Paddle Inference with oneDNN. Each candidate (bf16 on Paddle Inference and/or OpenVINO when the CPU has
AVX512-BF16 or AMX; every int8 directory of tools/quantize.py on its own backend) runs the same images, and per score
threshold the table gives how many fp32 detections found a partner with the same label and IoU >= 0.9
(candidates down to half the threshold take part, so a detection at the cut is not lost to a small
score change), and the largest score change of the pairs; with the median time per image of each
engine. Use trained weights: random weights put all scores close together.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", required=True, help="the fp32 export directory (infer_cfg.yml + model)")
    ap.add_argument("--image_dir", required=True)
    ap.add_argument(
        "--bf16",
        nargs="*",
        choices=["paddle", "openvino"],
        default=None,
        metavar="BACKEND",
        help="compare bf16 on these engines (default: paddle, i.e. Paddle Inference oneDNN; openvino needs model.onnx)",
    )
    ap.add_argument("--int8", nargs="+", default=[], metavar="DIR", help="int8 directories of tools/quantize.py")
    ap.add_argument("--max-images", type=int, default=200)
    ap.add_argument("--min-score", type=float, nargs="+", default=[0.05, 0.3, 0.5])
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: all usable cores)")
    args = ap.parse_args(argv)

    import numpy as np

    from fcos.deploy.factory import create_predictor
    from fcos.deploy.precision_match import format_match_table, precision_match
    from fcos.deploy.predictor import DeployError, cpu_supports_bf16
    from fcos.inference.sources import SourceError, iter_images, resolve_source
    from fcos.utils.runtime import cpu_name

    bf16_backends = [] if args.bf16 is None else (args.bf16 or ["paddle"])
    if not bf16_backends and not args.int8:
        print("nothing to compare: pass --bf16 and/or --int8 DIR ...", file=sys.stderr)
        return 2
    if bf16_backends and not cpu_supports_bf16():
        print("this CPU has neither AVX512-BF16 nor AMX: no bf16 mode to compare", file=sys.stderr)
        return 2
    try:
        paths = resolve_source(args.image_dir).images[: args.max_images]
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    images = [it.image for it in iter_images(paths) if it.image is not None]
    if not images:
        print(f"{args.image_dir}: no readable images", file=sys.stderr)
        return 2
    candidates = [("fp32", args.model_dir, {"backend": "paddle", "precision": "fp32", "use_mkldnn": True})]
    for backend in bf16_backends:
        opts = {"backend": backend, "precision": "bf16"} | ({"use_mkldnn": True} if backend == "paddle" else {})
        candidates.append((f"bf16 {backend}", args.model_dir, opts))
    candidates += [(f"int8 {d}", d, {}) for d in args.int8]
    outputs, times, engines = {}, {}, {}
    for name, model_dir, opts in candidates:
        try:
            pred = create_predictor(model_dir, cpu_threads=args.threads, **opts)
        except DeployError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        pred.predict(images[:1], keep_images=False)  # warm-up
        per_image, results = [], []
        for img in images:
            t0 = time.perf_counter()
            results.append(pred.predict([img], keep_images=False)[0])
            per_image.append(time.perf_counter() - t0)
        outputs[name], times[name], engines[name] = results, float(np.median(per_image)) * 1e3, pred.engine()
    print(f"{args.model_dir} on {len(images)} image(s) of {args.image_dir}; CPU: {cpu_name()}")
    for name in outputs:
        print(f"  {name}: {engines[name]}, median {times[name]:.1f} ms per image")
    for name in list(outputs)[1:]:
        print()
        print(f"{name} vs fp32:")
        print(format_match_table(precision_match(outputs["fp32"], outputs[name], args.min_score), name.split()[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
