"""Run an exported model (tools/export.py, tools/quantize.py) on Paddle Inference, ONNX Runtime or OpenVINO
and report honest FPS.

Examples:
    python tools/deploy_infer.py --model_dir output/export/rt_dla34 --image_dir photos/ --output_dir out/
    python tools/deploy_infer.py --model_dir DIR --video_file clip.mp4 --cpu_threads 2 --enable_mkldnn true
    python tools/deploy_infer.py --model_dir DIR --image_file a.jpg --bf16 --benchmark 50
    python tools/deploy_infer.py --model_dir DIR_int8 --image_dir photos/     # int8 from tools/quantize.py
    python tools/deploy_infer.py --model_dir DIR --image_dir photos/ --backend openvino   # needs DIR/model.onnx
    python tools/deploy_infer.py --model_dir DIR --play_video clip.mp4          # window, ESC stops, nothing saved
    python tools/deploy_infer.py --model_dir DIR --camera 0 --device gpu --run_mode trt_fp16

Accepts Paddle 3 (model.json) and Paddle 2 (model.pdmodel) exports. Preprocessing is the training code
(fcos.data.preprocess) driven by DIR/infer_cfg.yml; runtime options default to its runtime: section.
FPS: median per-stage times after warm-up calls; pre-processing, inference (incl. in-graph decoding and
NMS) and post-processing are timed separately, drawing and file writing are excluded; the engine,
hardware, thread count and input size are printed with it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fcos.deploy.predictor import BACKEND_CHOICES  # noqa: E402


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model_dir",
        help="export directory (model.json|model.pdmodel, model.pdiparams, infer_cfg.yml); "
        "default: output/demo/export from `make demo`",
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--image_file", help="one image")
    src.add_argument("--image_dir", help="a folder of images")
    src.add_argument("--video_file", help="a video file; the annotated video goes to --output_dir")
    src.add_argument("--play_video", help="a video file shown in a window (ESC stops); saved only with --output_dir")
    src.add_argument("--camera", "--camera_id", dest="camera", type=int, help="camera index")
    ap.add_argument("--device", choices=("cpu", "gpu"), default=None, help="default: infer_cfg.yml runtime.device")
    ap.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=None,
        help="inference engine (default: infer_cfg.yml runtime.backend, else paddle); onnxruntime/openvino "
        "run model.onnx (tools/export.py --onnx) or the int8 model of tools/quantize.py; auto: the fastest "
        "installed engine on this machine, timed once and remembered",
    )
    ap.add_argument("--remeasure", action="store_true", help="--backend auto: time the engines again")
    ap.add_argument(
        "--run_mode", choices=("paddle", "trt_fp32", "trt_fp16"), default="paddle", help="GPU: TensorRT modes"
    )
    ap.add_argument("--cpu_threads", type=int, default=None, help="CPU math threads (0: all cores)")
    ap.add_argument(
        "--enable_mkldnn", type=_bool, nargs="?", const=True, default=None, metavar="BOOL", help="oneDNN on CPU"
    )
    ap.add_argument("--bf16", action="store_true", help="bfloat16 through oneDNN (CPUs with AVX512-BF16 or AMX)")
    ap.add_argument(
        "--threshold",
        "--draw_threshold",
        dest="threshold",
        type=float,
        default=None,
        help="default: infer_cfg.yml draw_threshold",
    )
    ap.add_argument("--target_size", type=int, default=None, help="override preprocess.target_size (short side)")
    ap.add_argument("--max_size", type=int, default=None, help="override preprocess.max_size (long side cap)")
    ap.add_argument("--output_dir", default=None, help="annotated outputs (default output/deploy; --play_video: none)")
    ap.add_argument("--save_json", default=None, metavar="OUT.json", help="COCO result records")
    ap.add_argument("--save_txt", action="store_true")
    ap.add_argument("--show", action="store_true", help="show results in a window (ESC stops)")
    ap.add_argument("--batch_size", type=int, default=1)
    ap.add_argument(
        "--streams",
        type=int,
        default=None,
        help="openvino backend: images in flight at once (default: infer_cfg.yml runtime.streams, else 1); "
        "more images/s on folders and videos, each image slower",
    )
    ap.add_argument("--warmup", type=int, default=3, help="calls not timed (kernel and cache set-up)")
    ap.add_argument(
        "--benchmark", type=int, default=0, metavar="N", help="also time N runs on the first image after warm-up"
    )
    ap.add_argument("--max_frames", type=int, default=0, help="videos/cameras: stop after N frames")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from fcos.inference.sources import Source, SourceError, resolve_source
    from fcos.inference.video import VideoError, probe_stream

    raw = next(
        v for v in (args.image_file, args.image_dir, args.video_file, args.play_video, args.camera) if v is not None
    )
    try:
        source: Source = resolve_source(raw)
        if source.kind in ("video", "camera"):
            probe_stream(source.target)
    except (SourceError, VideoError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if not args.model_dir:
        from fcos.inference.default_model import find_demo_export, no_model_message

        args.model_dir = find_demo_export()
        if args.model_dir is None:
            print(f"error: {no_model_message('pass --model_dir EXPORT_DIR (from tools/export.py)')}", file=sys.stderr)
            return 2
        print(f"no --model_dir given: using the demo model {args.model_dir} (trained by `make demo`)")

    from fcos.deploy.factory import create_predictor
    from fcos.deploy.predictor import DeployError
    from fcos.inference.runner import RunOptions, format_summary, run_source

    precision = "bf16" if args.bf16 else ("fp16" if args.run_mode == "trt_fp16" else None)
    use_trt = True if args.run_mode.startswith("trt") else None
    device = args.device or ("gpu" if use_trt else None)
    try:
        predictor = create_predictor(
            args.model_dir,
            backend=args.backend,
            device=device,
            use_mkldnn=args.enable_mkldnn,
            cpu_threads=args.cpu_threads,
            precision=precision,
            use_tensorrt=use_trt,
            target_size=args.target_size,
            max_size=args.max_size,
            draw_threshold=args.threshold,
            warmup=args.warmup,
            remeasure=args.remeasure,
            streams=args.streams,
        )
    except (DeployError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model_file = getattr(predictor, "onnx_file", None) or predictor.cfg.model_file
    print(f"model: {model_file} (exported with Paddle {predictor.cfg.paddle_version or '?'})")

    play = args.play_video is not None
    save_dir = args.output_dir or ("output/deploy" if not play else None)
    opts = RunOptions(
        save_dir=save_dir or "output/deploy",
        draw_threshold=predictor.draw_threshold,
        save_images=save_dir is not None,
        save_json=args.save_json,
        save_txt=args.save_txt and save_dir is not None,
        show=args.show or play,
        batch_size=args.batch_size,
        max_frames=args.max_frames,
        progress=not args.quiet,
    )
    try:
        summary = run_source(predictor, source, opts)
    except VideoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    if args.benchmark > 0 and source.kind in ("image", "folder"):
        from fcos.deploy.benchmark import benchmark_predictor
        from fcos.inference.sources import iter_images

        first = next((it.image for it in iter_images(source.images) if it.image is not None), None)
        if first is not None:
            benchmark_predictor(predictor, [first] * args.batch_size, warmup=args.warmup, repeats=args.benchmark)
    print(f"speed: {predictor.describe()}")
    if predictor.timer.timed_calls:
        print(f"speed: {predictor.timer.summary()}")
        if predictor.cfg.runtime.streams > 1:
            print(
                f"speed: {predictor.cfg.runtime.streams} images in flight (streams): the per-call inference times are "
                "latencies, queueing included; the throughput line is the rate"
            )
        if predictor.last_input_shape is not None:
            print(f"speed: network input of the last call {'x'.join(map(str, predictor.last_input_shape))}")
    else:
        print(
            f"speed: too few calls for an FPS figure ({predictor.timer.calls} call(s), {args.warmup} warm-up); "
            "use --benchmark N"
        )
    for note in predictor.notes:
        print(f"note: {note}")
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
