"""Check a COCO dataset before training: counts, per-class statistics and every problem by name.

    python tools/check_dataset.py --ann data/annotations/train.json --image-dir data/train --output out/check
    python tools/check_dataset.py -c configs/demo_shapes.yml            # the config's train and val splits

Writes dataset_report.json and class_distribution.png (per split with -c). Exit code 1 when errors were
found (missing, unreadable or truncated images, unknown categories, duplicate ids), 0 otherwise.
Files are only read, never modified.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fcos.config import load_config  # noqa: E402
from fcos.data.checks import check_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ann", help="COCO annotation JSON")
    ap.add_argument("--image-dir", help="directory the JSON's file_name entries are relative to")
    ap.add_argument("-c", "--config", help="check data.train and data.val of this config instead")
    ap.add_argument("-o", "--opt", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument(
        "--output",
        default="",
        help="where to write the report JSON and PNG (default: output/dataset_check/<config or annotation file name>)",
    )
    ap.add_argument(
        "--headers-only", action="store_true", help="read image headers only (fast; misses truncated files)"
    )
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args(argv)

    if args.config:
        cfg = load_config(args.config, args.opt)
        splits = [("train", cfg.data.train.ann_file, cfg.data.train.image_dir)]
        splits.append(("val", cfg.data.val.ann_file, cfg.data.val.image_dir))
    elif args.ann and args.image_dir:
        splits = [("", args.ann, args.image_dir)]
    else:
        ap.error("give --ann and --image-dir, or -c CONFIG")
    # Never next to the data by default: a dataset folder may be read-only or shared.
    stem = os.path.splitext(os.path.basename(args.config or args.ann))[0]
    base = args.output or os.path.join("output", "dataset_check", stem)
    failed = False
    for name, ann, image_dir in splits:
        out_dir = os.path.join(base, name) if name else base
        report = check_dataset(ann, image_dir, out_dir, verify_pixels=not args.headers_only, num_threads=args.threads)
        print(report.summary())
        for key, path in report.outputs.items():
            print(f"  {key}: {path}")
        failed |= not report.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
