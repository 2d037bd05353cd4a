"""Convert the simple txt annotation format to COCO JSON, validating every box.

    python tools/txt2coco.py --ann train.txt --image-dir images --classes classes.txt --output train.json

One image per line: ``img.jpg x1,y1,x2,y2,cls x1,y1,x2,y2,cls ...`` (pixels, class ids index the
names file, 0-based; a line with only a path is a background image). Image sizes are read from the
files (EXIF orientation applied). Dropped, clipped and merged boxes and skipped images are listed
with file and line; a class id outside the names file stops the conversion with file, line and id.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fcos.data.annotations import AnnotationError, write_conversion  # noqa: E402
from fcos.data.txt_format import txt_to_coco  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ann", required=True, help="txt annotation file")
    ap.add_argument("--image-dir", required=True, help="directory the image paths are relative to")
    ap.add_argument("--classes", required=True, help="class names, one per line (line k = class id k)")
    ap.add_argument("--output", required=True, help="COCO JSON to write")
    ap.add_argument(
        "--headers-only", action="store_true", help="read image headers only (fast; misses truncated files)"
    )
    args = ap.parse_args(argv)
    try:
        coco, report = txt_to_coco(args.ann, args.image_dir, args.classes, verify_pixels=not args.headers_only)
    except AnnotationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(write_conversion(coco, report, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
