"""Convert Pascal VOC XML annotations (VOC2012 layout) to COCO JSON, validating every box.

    python tools/voc2coco.py --voc-root VOCdevkit/VOC2012 --split train --output voc_train.json
    python tools/voc2coco.py --voc-root mydata --classes classes.txt --output all.json   # every XML

Layout: ROOT/Annotations/*.xml, ROOT/JPEGImages/, ROOT/ImageSets/Main/<split>.txt. Boxes become
0-based pixel-edge xyxy (xmin-1, ymin-1, xmax, ymax). Image sizes come from the files; an XML <size>
that disagrees is reported. An object of a class not in the class list stops the conversion.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fcos.data.annotations import AnnotationError, read_class_names, write_conversion  # noqa: E402
from fcos.data.voc import voc_to_coco  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voc-root", required=True, help="directory holding Annotations/ and JPEGImages/")
    ap.add_argument("--split", default=None, help="ImageSets/Main/<split>.txt (or a path to a list); default: all XML")
    ap.add_argument("--classes", default=None, help="class names file (default: the 20 VOC classes)")
    ap.add_argument("--output", required=True, help="COCO JSON to write")
    ap.add_argument("--skip-difficult", action="store_true", help="drop objects marked difficult")
    ap.add_argument(
        "--headers-only", action="store_true", help="read image headers only (fast; misses truncated files)"
    )
    args = ap.parse_args(argv)
    try:
        names = read_class_names(args.classes) if args.classes else None
        coco, report = voc_to_coco(
            args.voc_root,
            image_set=args.split,
            class_names=names,
            skip_difficult=args.skip_difficult,
            verify_pixels=not args.headers_only,
        )
    except AnnotationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(write_conversion(coco, report, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
