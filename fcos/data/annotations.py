"""Box validation and COCO writing shared by the txt and VOC converters.

Converters collect one :class:`ImageEntry` per image (file name, real EXIF-oriented size, raw boxes
in pixel xyxy with contiguous class indices), pass each through :func:`validate_boxes`, and hand the
result to :func:`build_coco`. Every recoverable problem is recorded in a :class:`ConversionReport`
with the place it came from (``file:line``) and what was done about it:

- dropped: NaN/inf coordinates, x2 <= x1 or y2 <= y1 (also after clipping), boxes entirely outside;
- clipped: coordinates past the image border (by more than ``border_tolerance`` pixels);
- merged: identical boxes of the same class on the same image.

Image ids and annotation ids start at 1 (id 0 collides with pycocotools' "no match" sentinel).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from fcos.utils.files import default_file_mode


class AnnotationError(ValueError):
    """A non-recoverable annotation problem; the message names the file, line and value."""


@dataclass
class ImageEntry:
    """One image for the COCO writer.

    boxes: (M, 4) float64 xyxy pixels in the EXIF-oriented frame; labels: (M,) int contiguous 0..C-1.
    """

    file_name: str
    height: int
    width: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.float64))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    where: str = ""  # e.g. "ann.txt:12", used in report messages


@dataclass
class ConversionReport:
    """Counts and per-item messages of what a conversion dropped, clipped or merged, and why."""

    counts: Counter = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)
    num_images: int = 0
    num_boxes: int = 0
    max_messages: int = 200

    def add(self, kind: str, where: str, detail: str) -> None:
        self.counts[kind] += 1
        if len(self.messages) < self.max_messages:
            self.messages.append(f"{where}: {kind}: {detail}")

    def summary(self) -> str:
        lines = [f"converted {self.num_images} images, {self.num_boxes} boxes"]
        if not self.counts:
            lines.append("no problems found")
        for kind, n in sorted(self.counts.items()):
            lines.append(f"  {kind}: {n}")
        if self.messages:
            lines.append("details:")
            lines.extend(f"  {m}" for m in self.messages)
            hidden = sum(self.counts.values()) - len(self.messages)
            if hidden > 0:
                lines.append(f"  ... and {hidden} more")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "num_images": self.num_images,
            "num_boxes": self.num_boxes,
            "counts": dict(self.counts),
            "messages": list(self.messages),
        }


def _fmt_box(b: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in b) + "]"


def validate_boxes(
    boxes: np.ndarray,
    labels: np.ndarray,
    height: int,
    width: int,
    where: str,
    report: ConversionReport,
    border_tolerance: float = 0.5,
    merge_duplicates: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Drop, clip and (``merge_duplicates``) de-duplicate boxes of one image; record what happened in ``report``.

    boxes (M, 4) xyxy pixels, labels (M,) int. Returns (boxes (K, 4) float64, labels (K,) int64),
    boxes inside [0, width] x [0, height] with positive width and height, order kept.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    keep_boxes: list[np.ndarray] = []
    keep_labels: list[int] = []
    seen: set[tuple] = set()
    for box, label in zip(boxes, labels):
        if not np.all(np.isfinite(box)):
            report.add("dropped (NaN/inf coordinate)", where, _fmt_box(box))
            continue
        x1, y1, x2, y2 = box
        if x2 <= x1 or y2 <= y1:
            report.add("dropped (x2<=x1 or y2<=y1)", where, _fmt_box(box))
            continue
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            report.add("dropped (outside the image)", where, f"{_fmt_box(box)} in a {width}x{height} image")
            continue
        clipped = np.array([min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(x2, width), min(y2, height)])
        if np.max(np.abs(clipped - box)) > border_tolerance:
            report.add("clipped (past the border)", where, f"{_fmt_box(box)} -> {_fmt_box(clipped)}")
        box = clipped
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            report.add("dropped (empty after clipping)", where, _fmt_box(box))
            continue
        key = (int(label), *np.round(box, 3).tolist())
        if merge_duplicates and key in seen:
            report.add("merged (duplicate box)", where, f"{_fmt_box(box)} class {int(label)}")
            continue
        seen.add(key)
        keep_boxes.append(box)
        keep_labels.append(int(label))
    out_boxes = np.asarray(keep_boxes, dtype=np.float64).reshape(-1, 4)
    return out_boxes, np.asarray(keep_labels, dtype=np.int64)


def default_category_ids(num_classes: int) -> list[int]:
    """Category ids written for contiguous labels 0..C-1: 1..C (COCO style; 0 is never used)."""
    return list(range(1, num_classes + 1))


def build_coco(
    images: list[ImageEntry],
    class_names: list[str],
    category_ids: Optional[list[int]] = None,
    info: Optional[dict] = None,
) -> dict:
    """COCO detection dict from validated images; image and annotation ids start at 1.

    bbox is [x, y, w, h] in pixels, area = w * h, iscrowd 0. Images without boxes are kept.
    """
    category_ids = category_ids or default_category_ids(len(class_names))
    if len(category_ids) != len(class_names):
        raise ValueError(f"{len(category_ids)} category ids for {len(class_names)} class names")
    coco_images, coco_anns = [], []
    ann_id = 1
    for image_id, entry in enumerate(images, start=1):
        coco_images.append(
            {"id": image_id, "file_name": entry.file_name, "height": int(entry.height), "width": int(entry.width)}
        )
        for box, label in zip(entry.boxes, entry.labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            w, h = x2 - x1, y2 - y1
            coco_anns.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": int(category_ids[int(label)]),
                    "bbox": [round(x1, 3), round(y1, 3), round(w, 3), round(h, 3)],
                    "area": round(w * h, 3),
                    "iscrowd": 0,
                }
            )
            ann_id += 1
    categories = [{"id": int(cid), "name": name, "supercategory": ""} for cid, name in zip(category_ids, class_names)]
    return {
        "info": info or {"description": "converted by fcos-paddle"},
        "images": coco_images,
        "annotations": coco_anns,
        "categories": categories,
    }


def write_json(data: dict, path: str) -> None:
    """Write JSON atomically (temp file in the same directory, then rename)."""
    out_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".json", dir=out_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_conversion(coco: dict, report: ConversionReport, output: str) -> str:
    """Write a converted dataset and its report (``<output stem>.report.json``); returns a summary."""
    write_json(coco, output)
    report_path = os.path.splitext(output)[0] + ".report.json"
    write_json(report.to_dict(), report_path)
    return (
        f"{report.summary()}\nwrote {output} ({len(coco['images'])} images, {len(coco['annotations'])} boxes) "
        f"and {report_path}"
    )


def read_class_names(path: str) -> list[str]:
    """Class names, one per line (blank lines and surrounding spaces ignored, CRLF accepted)."""
    if not os.path.isfile(path):
        raise AnnotationError(f"class names file not found: {path}")
    names: list[str] = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            name = line.strip()
            if not name:
                continue
            if name in names:
                raise AnnotationError(f"{path}:{lineno}: class name {name!r} appears twice")
            names.append(name)
    if not names:
        raise AnnotationError(f"{path}: no class names found")
    return names


def convert_entries(
    entries: list[ImageEntry], report: ConversionReport, border_tolerance: float = 0.5
) -> list[ImageEntry]:
    """Validate every entry's boxes in place order; updates the report's image and box counts."""
    out = []
    for e in entries:
        boxes, labels = validate_boxes(e.boxes, e.labels, e.height, e.width, e.where, report, border_tolerance)
        out.append(ImageEntry(e.file_name, e.height, e.width, boxes, labels, e.where))
        report.num_boxes += len(boxes)
        if len(boxes) == 0:
            report.counts["images without boxes (kept as background)"] += 1
    report.num_images = len(out)
    return out
