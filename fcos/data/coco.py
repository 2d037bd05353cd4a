"""COCO-format detection dataset with a stored label <-> category_id <-> name mapping.

Category ids need not be contiguous or start at 1: contiguous labels 0..C-1 follow the category
ids in increasing order (the detectron2 rule), and ``category_ids[label]`` maps back for results.
Images without boxes stay in the dataset as background images. Crowd annotations
(``iscrowd=1``) are dropped from the training targets, as all three references do (detectron2's
DatasetMapper, torchvision's ConvertCocoPolysToMask, PaddleDetection's COCODataSet with
load_crowd False); pass ``include_crowd=True`` to keep them (flagged in ``iscrowd``).

Box problems found while loading (NaN, x2<=x1, past the border) are fixed the same way the
converters fix them (dropped or clipped) and counted in ``dataset.load_report``; an unknown
``category_id`` or a duplicate image id is an error naming the file and the annotation. Identical
boxes are kept (the references train on both; the converters merge them). ``drop_zero_area``
leaves out annotations whose JSON ``area`` is <= 0 and ``box_decimals=3`` rounds the corners
x1, y1, x1 + w, y1 + h to 3 decimals (Python's round) after the checks, as PaddleDetection does (a
sliver thinner than 5e-4 px can become empty and is then dropped).

Which images training leaves out as having no boxes differs between the references; every record
carries the answer for each rule (:data:`EMPTY_IMAGE_RULES`, ``record["has_boxes"][rule]``):

* ``valid_box``: no box left after loading (ours);
* ``any_annotation``: no non-crowd annotation at all, whatever its box (detectron2
  ``filter_images_with_only_crowd_annotations``; an image whose only box is degenerate trains as background);
* ``box_over_1px``: no annotation, crowd ones included, with a JSON bbox wider and taller than 1 px
  (torchvision references ``_coco_remove_images_without_annotations``);
* ``positive_box``: no non-crowd annotation with x2 - x1 > 1e-5 and y2 - y1 > 1e-5 in the JSON, unclipped
  (PaddleDetection ``COCODataSet.parse_dataset``, allow_empty False; with ``drop_zero_area`` also area > 0).
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from typing import Any, Optional

import numpy as np

from fcos.config import EMPTY_IMAGE_RULES
from fcos.data.annotations import ConversionReport, validate_boxes
from fcos.data.image_io import ImageReadError, read_image, read_image_size

logger = logging.getLogger(__name__)

_PADDLEDET_MIN_SIZE = 1e-5  # COCODataSet: x2 - x1 > eps and y2 - y1 > eps


class DatasetError(ValueError):
    """A dataset cannot be used as given; the message names the file and the offending entry."""


def load_coco_json(ann_file: str) -> dict:
    """Read a COCO JSON file, with clear errors for a missing file or invalid JSON."""
    if not os.path.isfile(ann_file):
        raise DatasetError(f"annotation file not found: {ann_file}")
    with open(ann_file, encoding="utf-8-sig") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{ann_file}: invalid JSON ({e})") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: expected a JSON object with images/annotations/categories")
    for key in ("images", "categories"):
        if key not in data:
            raise DatasetError(f"{ann_file}: missing the '{key}' list")
    data.setdefault("annotations", [])
    return data


class LabelMap:
    """Contiguous label (0..C-1) <-> COCO category_id <-> class name."""

    def __init__(self, category_ids: list[int], class_names: list[str]) -> None:
        if len(category_ids) != len(class_names):
            raise ValueError(f"{len(category_ids)} category ids for {len(class_names)} names")
        if len(set(category_ids)) != len(category_ids):
            raise ValueError(f"duplicate category ids in {category_ids}")
        self.category_ids = [int(c) for c in category_ids]
        self.class_names = list(class_names)
        self.category_to_label = {c: i for i, c in enumerate(self.category_ids)}

    @classmethod
    def from_categories(cls, categories: list[dict], where: str = "<categories>") -> LabelMap:
        """Labels follow the category ids in increasing order."""
        if not categories:
            raise DatasetError(f"{where}: the 'categories' list is empty")
        cats = sorted(categories, key=lambda c: int(c["id"]))
        ids = [int(c["id"]) for c in cats]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise DatasetError(f"{where}: duplicate category ids {dup}")
        return cls(ids, [str(c.get("name", c["id"])) for c in cats])

    @classmethod
    def from_list(cls, entries: list[dict]) -> LabelMap:
        """Inverse of :meth:`to_list`."""
        entries = sorted(entries, key=lambda e: int(e["label"]))
        if [int(e["label"]) for e in entries] != list(range(len(entries))):
            raise ValueError("labels in a label map must be 0..C-1")
        return cls([int(e["category_id"]) for e in entries], [str(e["name"]) for e in entries])

    def to_list(self) -> list[dict]:
        """[{label, category_id, name}, ...] — the form stored in weights/checkpoint metadata."""
        return [
            {"label": i, "category_id": c, "name": n}
            for i, (c, n) in enumerate(zip(self.category_ids, self.class_names))
        ]

    def __len__(self) -> int:
        return len(self.category_ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and self.to_list() == other.to_list()


class CocoDetection:
    """COCO detection dataset (image files + one annotation JSON).

    ``get_record(i)`` returns dict(image_id, file_name, path, height, width, boxes (M, 4) float32 xyxy
    original pixels, labels (M,) int64 contiguous, iscrowd (M,) int64). ``class_names`` (optional)
    must match the JSON's category names in label order.
    """

    def __init__(
        self,
        image_dir: str,
        ann_file: str,
        class_names: Optional[list[str]] = None,
        include_crowd: bool = False,
        label_map: Optional[LabelMap] = None,
        drop_zero_area: bool = False,
        box_decimals: int = -1,
    ) -> None:
        self.image_dir = image_dir
        self.ann_file = ann_file
        self.include_crowd = include_crowd
        self.drop_zero_area = drop_zero_area
        self.box_decimals = int(box_decimals)
        data = load_coco_json(ann_file)
        json_map = LabelMap.from_categories(data["categories"], ann_file)
        if label_map is not None:
            _check_compatible(json_map, label_map, ann_file)
            self.label_map = label_map
        else:
            self.label_map = json_map
        if class_names and list(class_names) != self.label_map.class_names:
            raise DatasetError(
                f"{ann_file}: class names from the config {list(class_names)} do not match the JSON categories "
                f"(in category-id order) {self.label_map.class_names}"
            )
        self.load_report = ConversionReport()
        self._records = self._parse(data)
        self.ids = [r["image_id"] for r in self._records]

    # -- mapping ------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return self.label_map.class_names

    @property
    def category_ids(self) -> list[int]:
        """contiguous label -> COCO category_id."""
        return self.label_map.category_ids

    @property
    def num_classes(self) -> int:
        return len(self.label_map)

    # -- parsing ------------------------------------------------------------------------------
    def _parse(self, data: dict) -> list[dict[str, Any]]:
        images: dict[int, dict] = {}
        for img in data["images"]:
            image_id = int(img["id"])
            if image_id in images:
                raise DatasetError(
                    f"{self.ann_file}: duplicate image id {image_id} "
                    f"({images[image_id].get('file_name')!r} and {img.get('file_name')!r})"
                )
            images[image_id] = img
        anns_by_image: dict[int, list[dict]] = defaultdict(list)
        for ann in data["annotations"]:
            image_id = int(ann["image_id"])
            if image_id not in images:
                raise DatasetError(
                    f"{self.ann_file}: annotation id {ann.get('id')} refers to unknown image id {image_id}"
                )
            cat = int(ann["category_id"])
            if cat not in self.label_map.category_to_label:
                raise DatasetError(
                    f"{self.ann_file}: annotation id {ann.get('id')} has unknown category_id {cat} "
                    f"(categories: {self.category_ids})"
                )
            anns_by_image[image_id].append(ann)
        records = []
        for image_id, img in images.items():
            if "file_name" not in img:
                raise DatasetError(f"{self.ann_file}: image id {image_id} has no 'file_name'")
            path = os.path.join(self.image_dir, img["file_name"])
            if img.get("height") and img.get("width"):
                h, w = int(img["height"]), int(img["width"])
            else:  # some exporters omit the size: read it from the file header
                try:
                    h, w = read_image_size(path)
                except ImageReadError as e:
                    raise DatasetError(f"{self.ann_file}: image id {image_id} has no height/width and {e}") from e
            where = f"{self.ann_file} image {image_id} ({img['file_name']})"
            boxes, labels, crowd = [], [], []
            anns = anns_by_image.get(image_id, [])
            has_boxes = {"any_annotation": False, "box_over_1px": False, "positive_box": False}
            for ann in anns:
                is_crowd = int(ann.get("iscrowd", 0))
                has_boxes["box_over_1px"] |= _over_1px(ann.get("bbox"))
                if is_crowd and not self.include_crowd:
                    self.load_report.counts["crowd annotations dropped"] += 1
                    continue
                has_boxes["any_annotation"] |= not is_crowd
                area = ann.get("area")
                if self.drop_zero_area and isinstance(area, (int, float)) and not area > 0:
                    self.load_report.add("dropped (area <= 0)", where, f"annotation id {ann.get('id')}: area {area!r}")
                    continue
                has_boxes["positive_box"] |= not is_crowd and _positive(ann.get("bbox"))
                bbox = ann.get("bbox")
                if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                    self.load_report.add("dropped (malformed bbox)", where, f"annotation id {ann.get('id')}: {bbox!r}")
                    continue
                try:
                    x, y, bw, bh = (float(v) if v is not None else float("nan") for v in bbox)
                except (TypeError, ValueError):
                    self.load_report.add("dropped (malformed bbox)", where, f"annotation id {ann.get('id')}: {bbox!r}")
                    continue
                corners = [x, y, x + bw, y + bh]
                if self.box_decimals >= 0:  # PaddleDetection: round(float(v), 3) of each corner
                    corners = [round(v, self.box_decimals) for v in corners]
                boxes.append(corners)
                labels.append(self.label_map.category_to_label[int(ann["category_id"])])
                crowd.append(is_crowd)
            kept_boxes, kept_labels, kept_crowd = _validate_with_flags(
                boxes, labels, crowd, h, w, where, self.load_report
            )
            records.append(
                {
                    "image_id": image_id,
                    "file_name": img["file_name"],
                    "path": path,
                    "height": h,
                    "width": w,
                    "boxes": kept_boxes.astype(np.float32),
                    "labels": kept_labels,
                    "iscrowd": kept_crowd,
                    "has_boxes": {**has_boxes, "valid_box": bool(np.any(kept_crowd == 0))},
                }
            )
        bad = {k: v for k, v in self.load_report.counts.items() if not k.startswith("crowd")}
        if bad:
            logger.warning("%s: fixed annotation problems while loading: %s", self.ann_file, dict(bad))
        return records

    # -- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    def get_record(self, index: int) -> dict[str, Any]:
        """A copy of record ``index`` (boxes xyxy in original image pixels, labels contiguous)."""
        r = self._records[index]
        return {**r, "boxes": r["boxes"].copy(), "labels": r["labels"].copy(), "iscrowd": r["iscrowd"].copy()}

    def has_boxes(self, index: int, rule: str) -> bool:
        """Whether image ``index`` counts as having boxes under ``rule`` (one of :data:`EMPTY_IMAGE_RULES`)."""
        if rule not in EMPTY_IMAGE_RULES:
            raise ValueError(f"unknown empty-image rule {rule!r}; expected one of {list(EMPTY_IMAGE_RULES)}")
        return bool(self._records[index]["has_boxes"][rule])

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of image ``index`` from the annotation file (or its header), without decoding it."""
        r = self._records[index]
        return int(r["height"]), int(r["width"])

    def load_image(self, index: int) -> np.ndarray:
        """BGR uint8 (H, W, 3), EXIF-oriented; raises ImageReadError naming the path."""
        return read_image(self._records[index]["path"])


def _validate_with_flags(
    boxes: list, labels: list, crowd: list, h: int, w: int, where: str, report: ConversionReport
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """validate_boxes keeping the crowd flag aligned (encoded into the label while validating)."""
    if not boxes:
        return np.zeros((0, 4), np.float64), np.zeros((0,), np.int64), np.zeros((0,), np.int64)
    # encode (label, crowd) into one integer so duplicates are judged per class and crowd flag
    num = max(labels) + 1
    encoded = np.asarray(labels, dtype=np.int64) + num * np.asarray(crowd, dtype=np.int64)
    kept, enc = validate_boxes(np.asarray(boxes), encoded, h, w, where, report, merge_duplicates=False)
    return kept, enc % num, enc // num


def _over_1px(bbox: Any) -> bool:
    """torchvision's test: a JSON bbox [x, y, w, h] is not empty unless w <= 1 or h <= 1."""
    try:
        return not any(float(v) <= 1 for v in bbox[2:4]) and len(bbox) == 4
    except (TypeError, ValueError):
        return False


def _positive(bbox: Any) -> bool:
    """PaddleDetection's test: x1 + w - x1 > 1e-5 and y1 + h - y1 > 1e-5 (float64, unclipped)."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return False
    return (x + w) - x > _PADDLEDET_MIN_SIZE and (y + h) - y > _PADDLEDET_MIN_SIZE


def _check_compatible(json_map: LabelMap, label_map: LabelMap, ann_file: str) -> None:
    """Every category of the JSON must exist in ``label_map`` with the same name."""
    for cid, name in zip(json_map.category_ids, json_map.class_names):
        if cid not in label_map.category_to_label:
            raise DatasetError(
                f"{ann_file}: category id {cid} ({name!r}) is not in the label map {label_map.to_list()}"
            )
        expected = label_map.class_names[label_map.category_to_label[cid]]
        if expected != name:
            raise DatasetError(
                f"{ann_file}: category id {cid} is named {name!r} here but {expected!r} in the label map"
            )
