"""Convert published FCOS checkpoints and ImageNet backbones into fcos-paddle weights (no torch needed).

    python tools/convert_weights.py --src adelaidet FCOS_RT_MS_DLA_34_4x_syncbn.pth weights/rt_dla34.safetensors
    python tools/convert_weights.py --src torchvision fcos_resnet50_fpn_coco-99b0c9b7.pth weights/tv_r50.safetensors
    python tools/convert_weights.py --src paddledet fcos_r50_fpn_multiscale_2x.pdparams weights/r50_ms_2x.safetensors
    python tools/convert_weights.py --src detectron2-r50 R-50.pkl weights/R-50_msra.safetensors

Pickle-based inputs are read by the restricted loader (no code in them runs). Prints the summary
(mapped / ignored / derived / missing) and exits non-zero on anything unexpected, writing nothing.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    from fcos.checkpoint.convert import SOURCES, convert_file
    from fcos.checkpoint.convert_common import ConversionError
    from fcos.checkpoint.weights import WeightsError
    from fcos.config import ConfigError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--src",
        required=True,
        choices=sorted(SOURCES),
        help="; ".join(f"{k}: {v.description}" for k, v in SOURCES.items()),
    )
    parser.add_argument("input", help="checkpoint to convert (.pth, .pdparams, .pkl, .safetensors, .npz)")
    parser.add_argument("output", help="converted weights (.safetensors, or .npz)")
    parser.add_argument("-c", "--config", default=None, help="recipe YAML (default: the one the source implies)")
    parser.add_argument("-v", "--verbose", action="store_true", help="also list every mapped key")
    args = parser.parse_args(argv)
    try:
        conv = convert_file(args.src, args.input, args.output, config=args.config)
    except (ConversionError, pickle.UnpicklingError, WeightsError, ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(conv.summary())
    if args.verbose:
        for src, dst in conv.mapped:
            print(f"  {src} -> {dst}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
