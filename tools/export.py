"""Export a model for deployment: paddle.jit.save (dynamic batch and image size, NMS inside) + infer_cfg.yml.

Examples:
    python tools/export.py -c configs/rt_dla34.yml -w weights/rt_dla34.safetensors --output output/export/rt_dla34
    python tools/export.py -c configs/rt_dla34.yml -w W --output DIR --onnx      # + DIR/model.onnx (paddle2onnx)
    python tools/export.py -c configs/rt_dla34.yml -w W --output DIR --check-images photos/

DIR holds model.json (Paddle 3; Paddle 2 wrote model.pdmodel) + model.pdiparams + infer_cfg.yml. Edit
infer_cfg.yml (draw_threshold, preprocess.target_size/max_size, runtime.use_mkldnn/cpu_threads/precision)
without re-exporting. After saving, the export is reloaded with Paddle Inference and compared with the
dygraph model on test images at two sizes, batch 1 and 2; the exit code is 1 when they disagree.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", required=True, help="YAML config")
    ap.add_argument("-w", "--weights", help="weights file (.safetensors/.npz/.pdparams or a trainer checkpoint)")
    ap.add_argument("-o", "--opt", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument(
        "--output", "--output_dir", dest="output", default=None, help="default: output/export/<config name>"
    )
    ap.add_argument("--no-check", action="store_true", help="skip the reload-and-compare check")
    ap.add_argument("--check-images", help="folder of images for the check (default: generated test images)")
    ap.add_argument("--onnx", action="store_true", help="also write model.onnx with paddle2onnx and check it")
    ap.add_argument("--opset", type=int, default=16, help="ONNX opset (>= 11 for NonMaxSuppression)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from fcos.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, overrides=args.opt)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    output = args.output or os.path.join("output", "export", os.path.splitext(os.path.basename(args.config))[0])

    from fcos.export import check_export, check_onnx, export_model, export_onnx
    from fcos.inference.detector import Detector

    if not args.weights:
        print("warning: no -w/--weights given: exporting random weights", file=sys.stderr)
    try:
        det = Detector(cfg, weights=args.weights)
    except (OSError, ValueError, pickle.UnpicklingError) as e:  # incl. unsafe pickles
        print(f"error: {e}", file=sys.stderr)
        return 2
    if det.load_report is not None:
        print(det.load_report)
    export_model(det.model, cfg, output, det.class_names, det.category_ids)
    print(f"exported to {output}: {sorted(os.listdir(output))}")

    images = None
    if args.check_images:
        from fcos.inference.sources import SourceError, iter_images, resolve_source

        try:
            paths = resolve_source(args.check_images).images
        except SourceError as e:
            print(f"error: --check-images: {e}", file=sys.stderr)
            return 2
        images = [item.image for item in iter_images(paths[:8]) if item.image is not None]
    ok = True
    if not args.no_check:
        for runtime in ({"use_mkldnn": False}, None):  # native kernels, then the infer_cfg.yml runtime (oneDNN)
            check = check_export(det.model, cfg, output, images=images, runtime=runtime)
            print(check)
            ok &= check.passed
    if args.onnx:
        try:
            onnx_path = export_onnx(output, opset=args.opset)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {onnx_path}")
        if not args.no_check:
            check = check_onnx(output, onnx_path, images=images)
            print(check)
            ok &= check.passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
