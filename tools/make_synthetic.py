"""Write the synthetic shapes dataset (COCO format, no download).

    python tools/make_synthetic.py --output output/shapes --train 400 --val 100 --seed 0

Writes DIR/{train,val}/*.jpg, DIR/annotations/{train,val}.json and DIR/synthetic.json. If DIR already
holds a complete dataset made with the same parameters, nothing is done; --force regenerates.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fcos.data.synthetic import DEFAULT_SCENE, existing_synthetic_params, make_synthetic_dataset, synthetic_params  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", required=True, help="dataset directory")
    ap.add_argument("--train", type=int, default=400, help="number of training images")
    ap.add_argument("--val", type=int, default=100, help="number of validation images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--force", action="store_true", help="regenerate even if the same dataset exists")
    args = ap.parse_args(argv)

    size = (args.height, args.width)
    wanted = synthetic_params(args.train, args.val, args.seed, size, **DEFAULT_SCENE)
    existing = existing_synthetic_params(args.output)
    if existing == wanted and not args.force:
        print(f"{args.output}: synthetic dataset with these parameters already exists; skipping (use --force)")
        return 0
    paths = make_synthetic_dataset(args.output, args.train, args.val, seed=args.seed, image_size=size)
    print(f"wrote {args.train} train + {args.val} val images to {args.output}")
    for key in ("train_ann_file", "val_ann_file"):
        print(f"  {key}: {paths[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
