"""COCO box evaluation of trained weights on the validation set of a config.

Examples:
    python tools/eval.py -c configs/demo_shapes.yml -w output/demo_shapes/checkpoints/best.safetensors
    python tools/eval.py -c configs/rt_dla34.yml -w weights/rt_dla34.safetensors -o data.val_batch_size=4
    python -m paddle.distributed.launch --gpus 0,1 tools/eval.py -c configs/rt_dla34.yml -w W
    python tools/eval.py -c configs/rt_dla34.yml --model_dir output/export/rt_dla34        # an export (fast engine)
    python tools/eval.py -c configs/rt_dla34.yml --model_dir output/export/rt_dla34_int8   # int8 (tools/quantize.py)
    python tools/eval.py -c configs/rt_dla34.yml --model_dir DIR --backend openvino        # DIR/model.onnx on OpenVINO
    python tools/eval.py -c configs/rt_dla34.yml --model_dir DIR --backend auto            # the fastest engine here

Prints the 12-number COCO table and the per-class AP table; writes metrics.json and pr_curve.png to
--output (default: <train.output_dir>/eval). Every image of the annotation file counts, also those
without objects. With --model_dir the exported model's predictor (Paddle Inference, ONNX Runtime or
OpenVINO; fp32, bf16 or int8, as its infer_cfg.yml says) produces the detections; -c gives the data.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fcos.deploy.predictor import BACKEND_CHOICES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", required=True, help="YAML config (model, input sizes, data.val)")
    model = ap.add_mutually_exclusive_group(required=True)
    model.add_argument("-w", "--weights", help="weights or trainer checkpoint (.safetensors, .pdparams)")
    model.add_argument("--model_dir", "--model-dir", dest="model_dir", help="an export directory (tools/export.py)")
    ap.add_argument(
        "--backend", choices=BACKEND_CHOICES, default=None, help="--model_dir: engine (auto: the fastest here)"
    )
    ap.add_argument("--threads", type=int, default=0, help="--model_dir: CPU threads (0: all cores)")
    ap.add_argument("-o", "--opt", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--output", default=None, help="directory for metrics.json and pr_curve.png")
    args = ap.parse_args(argv)

    from fcos.config import ConfigError, load_config
    from fcos.evaluation.evaluate import evaluate_weights

    try:
        cfg = load_config(args.config, overrides=args.opt)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_dir = args.output or os.path.join(cfg.train.output_dir, "eval")
    from fcos.utils.user_errors import user_errors

    try:
        if args.model_dir:
            from fcos.deploy.evaluate import evaluate_export

            result = evaluate_export(cfg, args.model_dir, out_dir, backend=args.backend, cpu_threads=args.threads)
        else:
            result = evaluate_weights(cfg, args.weights, out_dir)
    except user_errors() as e:  # missing data, unreadable weights, ...: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result is None:  # not rank 0
        return 0
    print(result.report)
    print(result.summary_table)
    print(result.per_class_table)
    print(f"wrote {result.metrics_path} and {result.pr_curve_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
