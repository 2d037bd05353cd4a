"""Post-training int8 quantization of an exported model, calibrated on your own images (CPU deployment).

Examples:
    python tools/quantize.py -w output/export/rt_dla34 --calib-images photos/ --output output/export/rt_dla34_int8
    python tools/quantize.py -w DIR --calib-images photos/ --output DIR_int8 --num-images 300 --backend onnxruntime
    python tools/deploy_infer.py --model_dir output/export/rt_dla34_int8 --image_dir photos/   # runs it
    python tools/eval.py -c configs/rt_dla34.yml --model_dir output/export/rt_dla34_int8      # its COCO AP

-w is a directory written by tools/export.py (fp32). The calibration images (a folder, sub-folders
included; a few hundred images like the ones you will deploy on) go through the export's own
preprocessing (infer_cfg.yml). --backend openvino (default; NNCF) writes model.xml/.bin, --backend
onnxruntime (quantize_static, QDQ) writes model.onnx; infer_cfg.yml in --output names the backend and
precision int8, so tools/deploy_infer.py and tools/eval.py --model_dir run it like any other export.
Convolutions are int8; GroupNorm, the final class/box/centerness convolutions, box decoding and NMS
stay fp32. At the end the int8 model is compared with the fp32 export (Paddle Inference) on the
calibration images: per score threshold, the share of fp32 detections it reproduces. Nothing is
written when the input is unusable; the output appears only when everything succeeded.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--model_dir", "--weights", dest="model_dir", required=True, help="fp32 export directory")
    ap.add_argument("--calib-images", "--calib_images", dest="calib_images", required=True, help="image folder")
    ap.add_argument("--output", "--output_dir", dest="output", required=True, help="int8 model directory to write")
    ap.add_argument("--num-images", "--num_images", dest="num_images", type=int, default=100, help="at most N images")
    ap.add_argument("--backend", choices=("openvino", "onnxruntime"), default="openvino")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    ap.add_argument("--cpu_threads", type=int, default=0, help="threads for the final comparison (0: all cores)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    from fcos.deploy.precision_match import format_match_table
    from fcos.deploy.predictor import DeployError, cpu_has_amx
    from fcos.deploy.quantize import QuantizeError, quantize_export

    try:
        report = quantize_export(
            args.model_dir,
            args.calib_images,
            args.output,
            backend=args.backend,
            num_images=args.num_images,
            overwrite=args.overwrite,
            progress=not args.quiet,
            cpu_threads=args.cpu_threads,
        )
    except (QuantizeError, DeployError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {report.output}: {report.model_file} (int8, backend {report.backend}) + infer_cfg.yml")
    print(
        f"calibrated on {report.num_images} image(s) of {args.calib_images}"
        + (f" ({len(report.skipped)} unreadable skipped)" if report.skipped else "")
    )
    print(f"kept in fp32: GroupNorm, box decoding + NMS, final predictor convolutions {', '.join(report.fp32_layers)}")
    print("int8 vs fp32 (Paddle Inference) on the calibration images:")
    print(format_match_table(report.match, "int8"))
    if cpu_has_amx():
        print(
            "note: this CPU has AMX, where OpenVINO bf16 ran about as fast as int8 and kept fp32's accuracy "
            f"(README, int8 on CPU): compare with tools/deploy_infer.py --model_dir {args.model_dir} "
            "--backend openvino --bf16 --benchmark 20 (needs model.onnx: tools/export.py --onnx)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
