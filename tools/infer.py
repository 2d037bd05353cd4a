"""Detect objects in an image, a folder, a video file or a webcam.

Examples:
    python tools/infer.py -c configs/rt_dla34.yml -w weights/rt_dla34.safetensors --source street.jpg
    python tools/infer.py -c configs/rt_dla34.yml -w W --source photos/ --save-json out/dets.json --save-txt
    python tools/infer.py -c configs/rt_dla34.yml -w W --source clip.mp4 --save-dir out/   # out/clip.mp4
    python tools/infer.py -c configs/rt_dla34.yml -w W --source 0 --show                  # webcam 0, ESC stops
    python tools/infer.py -w output/export/rt_dla34 --source photos/                      # an exported model dir
    python tools/infer.py -c configs/rt_dla34.yml -w W --source clip.mp4 --engine predictor  # fast engine, no export step
    python tools/infer.py -c configs/rt_dla34.yml -w W --source photos/ --engine predictor --backend auto  # fastest here
    (--image / --image_dir / --video / --camera N are accepted as well)

Writes annotated images/videos to --save-dir (default output/infer), --save-json COCO result records
(file_name, category_id = the dataset's id, bbox [x, y, w, h] in original pixels, score) and
--save-txt one `label score x1 y1 x2 y2 name` line per detection. Exit code 0 on success, 1 when some
inputs failed or a video ended early (outputs are still finalized), 2 for unusable arguments/sources.
--engine predictor runs a checkpoint on the exported predictor (Paddle Inference, oneDNN), about twice
as fast on CPU as the dygraph model: it is exported once into a cache ($FCOS_CACHE_DIR or
~/.cache/fcos-paddle/exports, keyed by config + weights) and reused on later runs. --backend onnxruntime,
openvino or auto (the fastest installed engine, timed once and remembered) adds model.onnx to that export.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fcos.deploy.predictor import BACKEND_CHOICES  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", help="YAML config (not needed when -w is an exported model directory)")
    ap.add_argument(
        "-w",
        "--weights",
        help="weights file (.safetensors/.npz/.pdparams) or an export directory (default with no -c: output/demo/export)",
    )
    ap.add_argument("-o", "--opt", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", help="image, folder, video file, or camera index (0, 1, ...)")
    src.add_argument("--image", "--image_file", dest="image", help="one image")
    src.add_argument("--image_dir", "--image-dir", dest="image_dir", help="a folder of images")
    src.add_argument("--video", "--video_file", dest="video", help="a video file")
    src.add_argument("--camera", "--camera_id", dest="camera", type=int, help="camera index")
    ap.add_argument("--recursive", action="store_true", help="include images in sub-folders")
    ap.add_argument(
        "--draw-threshold",
        "--draw_threshold",
        type=float,
        default=None,
        help="default: export.draw_threshold of the config",
    )
    ap.add_argument("--save-dir", "--output_dir", dest="save_dir", default="output/infer")
    ap.add_argument("--no-save", action="store_true", help="do not write annotated images/videos")
    ap.add_argument("--save-json", "--save_json", dest="save_json", metavar="OUT.json", help="COCO result records")
    ap.add_argument("--json-threshold", type=float, default=0.0, help="minimum score of --save-json records")
    ap.add_argument("--save-txt", "--save_txt", dest="save_txt", action="store_true")
    ap.add_argument("--show", action="store_true", help="show results in a window (ESC stops)")
    ap.add_argument("--batch-size", type=int, default=1, help="images per forward pass (folders)")
    ap.add_argument("--max-frames", type=int, default=0, help="videos/cameras: stop after N frames (0: all)")
    ap.add_argument("--threads", type=int, default=0, help="CPU math threads (0: all cores)")
    ap.add_argument(
        "--engine",
        choices=("dygraph", "predictor"),
        default="dygraph",
        help="with -c/-w: dygraph model, or the exported predictor (exported once into a cache; faster on CPU)",
    )
    ap.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=None,
        help="--engine predictor or an export directory: inference engine (default: paddle, or the export's "
        "infer_cfg.yml); auto: the fastest installed engine on this machine",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from fcos.inference.sources import SourceError, resolve_source

    raw = next(v for v in (args.source, args.image, args.image_dir, args.video, args.camera) if v is not None)
    try:
        source = resolve_source(raw, recursive=args.recursive)  # before loading any model: fail fast
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.video is not None and source.kind != "video":
        print(f"error: --video {args.video}: not a video file (extension)", file=sys.stderr)
        return 2
    from fcos.inference.video import VideoError, probe_stream

    try:
        if source.kind in ("video", "camera"):
            probe_stream(source.target)
    except VideoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if not args.config and not args.weights:
        from fcos.inference.default_model import find_demo_export, no_model_message

        args.weights = find_demo_export()
        if args.weights is None:
            print(
                f"error: {no_model_message('pass -w EXPORT_DIR (from tools/export.py), or -c CONFIG -w WEIGHTS')}",
                file=sys.stderr,
            )
            return 2
        print(f"no -c/-w given: using the demo model {args.weights} (trained by `make demo` on synthetic shapes)")

    from fcos.config import ConfigError, load_config
    from fcos.deploy.predictor import DeployError
    from fcos.inference.runner import RunOptions, format_summary, run_source
    from fcos.utils.runtime import setup_cpu_runtime

    if args.backend and args.engine != "predictor" and not (args.weights and os.path.isdir(args.weights)):
        print("error: --backend needs --engine predictor or an export directory (-w DIR)", file=sys.stderr)
        return 2
    setup_cpu_runtime(args.threads)
    try:
        if args.weights and os.path.isdir(args.weights):
            from fcos.deploy.factory import create_predictor

            # the backend and precision its infer_cfg.yml names (e.g. int8 on OpenVINO from tools/quantize.py)
            predictor = create_predictor(args.weights, backend=args.backend, cpu_threads=args.threads or None, warmup=1)
            default_threshold = predictor.draw_threshold
            print(f"model: {args.weights} ({predictor.describe()})")
        else:
            if not args.config:
                print("error: -c/--config is required unless -w is an exported model directory", file=sys.stderr)
                return 2
            cfg = load_config(args.config, overrides=args.opt)
            from fcos.inference.detector import Detector

            if not args.weights:
                print("warning: no -w/--weights given: the model has random weights", file=sys.stderr)
            predictor = Detector(cfg, weights=args.weights)
            predictor.timer.warmup = 1
            predictor.batch_size = max(1, args.batch_size)
            default_threshold = cfg.export.draw_threshold
            if predictor.load_report is not None:
                print(predictor.load_report)
            if args.engine == "predictor":
                from fcos.deploy.engine_cache import cached_export, ensure_onnx
                from fcos.deploy.factory import create_predictor

                export_dir, fresh = cached_export(predictor, args.weights)
                print(f"engine: predictor, {'exported to' if fresh else 'cached export'} {export_dir}")
                backend = args.backend or "paddle"
                if backend != "paddle":
                    try:
                        ensure_onnx(export_dir)
                    except RuntimeError as e:  # paddle2onnx missing: auto still has Paddle Inference
                        if backend != "auto":
                            raise DeployError(f"--backend {backend} needs model.onnx: {e}") from e
                        print(f"note: {e}; --backend auto chooses among the other engines")
                predictor = create_predictor(export_dir, backend=backend, cpu_threads=args.threads or None, warmup=1)
                print(f"engine: {predictor.describe()}")
    except (ConfigError, DeployError, OSError, ValueError, pickle.UnpicklingError) as e:  # incl. unsafe pickles
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in getattr(predictor, "notes", []):  # e.g. which engine --backend auto picked
        print(f"note: {note}")

    opts = RunOptions(
        save_dir=args.save_dir,
        draw_threshold=default_threshold if args.draw_threshold is None else args.draw_threshold,
        save_images=not args.no_save,
        save_json=args.save_json,
        json_threshold=args.json_threshold,
        save_txt=args.save_txt,
        show=args.show,
        batch_size=args.batch_size,
        max_frames=args.max_frames,
        progress=not args.quiet,
    )
    try:
        summary = run_source(predictor, source, opts)
    except VideoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary, predictor.timer))
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
