"""Pascal VOC XML annotations (the VOC2012 layout) -> COCO JSON, through the shared validation.

Layout::

    VOC2012/Annotations/<id>.xml  JPEGImages/<id>.jpg  ImageSets/Main/{train,val,trainval}.txt

VOC coordinates are 1-based inclusive pixel indices; like detectron2's VOC loader we subtract 1
from xmin and ymin, giving 0-based continuous xyxy boxes. ``difficult`` objects are kept (as
detectron2 does for training) unless ``skip_difficult``. Image sizes come from the image files
(EXIF-oriented); a ``<size>`` in the XML that disagrees is reported. An object whose class is not
in the class list raises :class:`AnnotationError` naming the XML file and the class.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Optional

import numpy as np

from fcos.data.annotations import AnnotationError, ConversionReport, ImageEntry, build_coco, convert_entries
from fcos.data.image_io import ImageReadError, read_image, read_image_size

VOC_CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


def _text(node: Optional[ET.Element], tag: str) -> Optional[str]:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text is not None else None


def _number(text: Optional[str]) -> float:
    try:
        return float(text) if text is not None else float("nan")
    except ValueError:
        return float("nan")


def parse_voc_xml(
    xml_path: str, class_names: list[str], report: ConversionReport, skip_difficult: bool = False
) -> Optional[tuple[Optional[str], Optional[tuple[int, int]], np.ndarray, np.ndarray]]:
    """Parse one VOC XML -> (file name or None, (h, w) from <size> or None, boxes (M, 4) xyxy, labels (M,)).

    Returns None (reported) when the XML cannot be parsed.
    """
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as e:
        report.add("skipped image (invalid XML)", xml_path, str(e))
        return None
    file_name = _text(root, "filename")
    size = root.find("size")
    xml_size = None
    if size is not None:
        w, h = _number(_text(size, "width")), _number(_text(size, "height"))
        if np.isfinite(w) and np.isfinite(h) and w > 0 and h > 0:
            xml_size = (int(h), int(w))
    boxes, labels = [], []
    for i, obj in enumerate(root.findall("object")):
        name = _text(obj, "name")
        where = f"{xml_path} object {i}"
        if name not in class_names:
            raise AnnotationError(f"{where}: class {name!r} is not in the class list {class_names}")
        if skip_difficult and _text(obj, "difficult") == "1":
            report.add("dropped (difficult)", where, name)
            continue
        bnd = obj.find("bndbox")
        x1, y1, x2, y2 = (_number(_text(bnd, k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([x1 - 1.0, y1 - 1.0, x2, y2])
        labels.append(class_names.index(name))
    return file_name, xml_size, np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


def voc_to_coco(
    voc_root: str,
    image_set: Optional[str] = None,
    class_names: Optional[list[str]] = None,
    ann_dir: Optional[str] = None,
    image_dir: Optional[str] = None,
    skip_difficult: bool = False,
    verify_pixels: bool = True,
) -> tuple[dict, ConversionReport]:
    """Convert a VOC split to COCO; returns (coco, report).

    ``image_set`` names a list in ``ImageSets/Main`` (e.g. "train") or a path to one; without it,
    every XML in ``Annotations`` is converted. ``class_names`` defaults to the 20 VOC classes.
    """
    class_names = list(class_names or VOC_CLASSES)
    ann_dir = ann_dir or os.path.join(voc_root, "Annotations")
    image_dir = image_dir or os.path.join(voc_root, "JPEGImages")
    if not os.path.isdir(ann_dir):
        raise AnnotationError(f"VOC annotation directory not found: {ann_dir}")
    if image_set:
        list_path = (
            image_set if os.path.isfile(image_set) else os.path.join(voc_root, "ImageSets", "Main", f"{image_set}.txt")
        )
        if not os.path.isfile(list_path):
            raise AnnotationError(f"VOC image set list not found: {list_path}")
        with open(list_path, encoding="utf-8-sig") as f:
            stems = [line.split()[0] for line in f if line.strip()]
    else:
        stems = sorted(os.path.splitext(n)[0] for n in os.listdir(ann_dir) if n.lower().endswith(".xml"))
    report = ConversionReport()
    entries: list[ImageEntry] = []
    for stem in stems:
        xml_path = os.path.join(ann_dir, f"{stem}.xml")
        if not os.path.isfile(xml_path):
            report.add("skipped image (annotation XML missing)", xml_path, stem)
            continue
        parsed = parse_voc_xml(xml_path, class_names, report, skip_difficult)
        if parsed is None:
            continue
        file_name, xml_size, boxes, labels = parsed
        file_name = file_name or f"{stem}.jpg"
        path = os.path.join(image_dir, file_name)
        try:
            h, w = read_image(path).shape[:2] if verify_pixels else read_image_size(path)
        except ImageReadError as e:
            report.add("skipped image (unreadable)", xml_path, str(e))
            continue
        if xml_size is not None and xml_size != (h, w):
            report.add(
                "size mismatch (XML <size> differs from the image; image size used)",
                xml_path,
                f"XML {xml_size[1]}x{xml_size[0]}, image {w}x{h}",
            )
        entries.append(ImageEntry(file_name, h, w, boxes, labels, xml_path))
    entries = convert_entries(entries, report)
    coco = build_coco(entries, class_names, info={"description": f"converted from VOC {voc_root}"})
    return coco, report
