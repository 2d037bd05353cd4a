"""The simple txt annotation format -> COCO JSON.

One image per line::

    images/0001.jpg 10,20,110,220,0 30,40,60,90,2
    images/0002.jpg                      # no boxes: a background image

Boxes are ``x1,y1,x2,y2,class_id`` in pixels of the EXIF-oriented image; class ids index the class
names file (one name per line, 0-based). Spaces around commas, repeated spaces, tabs, CRLF line
ends, a UTF-8 BOM, blank lines and ``#`` comment lines are accepted. File names may contain spaces
(everything before the first box token is the file name).

Recoverable problems (bad boxes, unreadable or missing images, an image listed twice, unparseable
box tokens) are reported and never stop the conversion. A class id outside the names file raises
:class:`AnnotationError` naming the file, line and id.
"""

from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np

from fcos.data.annotations import (
    AnnotationError,
    ConversionReport,
    ImageEntry,
    build_coco,
    convert_entries,
    read_class_names,
)
from fcos.data.image_io import ImageReadError, read_image, read_image_size

_SPACES_AROUND_COMMA = re.compile(r"\s*,\s*")


def _parse_number(text: str) -> float:
    return float(text)  # accepts "nan", "inf": validated later and reported


def _parse_class_id(text: str, where: str, num_classes: int, classes_path: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise AnnotationError(f"{where}: class id {text!r} is not a number") from None
    if not np.isfinite(value) or value != int(value) or not 0 <= int(value) < num_classes:
        raise AnnotationError(
            f"{where}: class id {text} is outside the names file {classes_path} "
            f"(valid ids 0..{num_classes - 1}, {num_classes} names)"
        )
    return int(value)


def parse_txt_line(
    line: str, where: str, num_classes: int, classes_path: str, report: ConversionReport
) -> Optional[tuple[str, np.ndarray, np.ndarray]]:
    """One line -> (file name, boxes (M, 4) float64 xyxy, labels (M,) int64); None for blank/comment lines."""
    text = line.strip().lstrip("\ufeff")
    if not text or text.startswith("#"):
        return None
    text = _SPACES_AROUND_COMMA.sub(",", text)
    tokens = text.split()
    first_box = next((i for i, t in enumerate(tokens) if "," in t), len(tokens))
    if first_box == 0:
        raise AnnotationError(f"{where}: line starts with a box, expected an image file name first: {line.strip()!r}")
    file_name = " ".join(tokens[:first_box])
    boxes, labels = [], []
    for token in tokens[first_box:]:
        parts = token.split(",")
        if len(parts) != 5:
            report.add("dropped (unparseable box token)", where, f"{token!r} needs 5 values x1,y1,x2,y2,class")
            continue
        label = _parse_class_id(parts[4], where, num_classes, classes_path)
        try:
            coords = [_parse_number(p) for p in parts[:4]]
        except ValueError:
            report.add("dropped (unparseable box token)", where, f"{token!r} has a non-numeric coordinate")
            continue
        boxes.append(coords)
        labels.append(label)
    return file_name, np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


def txt_to_coco(
    ann_path: str,
    image_dir: str,
    classes_path: str,
    verify_pixels: bool = True,
    border_tolerance: float = 0.5,
) -> tuple[dict, ConversionReport]:
    """Convert a txt annotation file to a COCO dict; returns (coco, report).

    Image sizes come from the image files (EXIF-oriented). ``verify_pixels`` decodes every image
    so truncated files are found (slower); otherwise only headers are read.
    """
    class_names = read_class_names(classes_path)
    if not os.path.isfile(ann_path):
        raise AnnotationError(f"annotation file not found: {ann_path}")
    report = ConversionReport()
    entries: list[ImageEntry] = []
    by_name: dict[str, int] = {}
    with open(ann_path, encoding="utf-8-sig", newline=None) as f:
        for lineno, line in enumerate(f, start=1):
            where = f"{ann_path}:{lineno}"
            parsed = parse_txt_line(line, where, len(class_names), classes_path, report)
            if parsed is None:
                continue
            file_name, boxes, labels = parsed
            if len(boxes) == 0:
                report.add("image line without boxes (kept as background)", where, file_name)
            if file_name in by_name:
                prev = entries[by_name[file_name]]
                report.add("merged (image listed twice)", where, f"{file_name} also on {prev.where}")
                prev.boxes = np.concatenate([prev.boxes, boxes])
                prev.labels = np.concatenate([prev.labels, labels])
                continue
            path = os.path.join(image_dir, file_name)
            try:
                h, w = read_image(path).shape[:2] if verify_pixels else read_image_size(path)
            except ImageReadError as e:
                report.add("skipped image (unreadable)", where, str(e))
                continue
            by_name[file_name] = len(entries)
            entries.append(ImageEntry(file_name, h, w, boxes, labels, where))
    entries = convert_entries(entries, report, border_tolerance)
    coco = build_coco(entries, class_names, info={"description": f"converted from {os.path.basename(ann_path)}"})
    return coco, report
