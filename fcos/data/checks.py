"""Dataset checks: what is wrong with a COCO dataset, each problem named, before anything trains on it.

:func:`check_dataset` reads the annotation JSON and (optionally decoding every pixel) every image, and
returns a :class:`DatasetReport` with counts (images, boxes, instances and images per class) and:

errors (the dataset is wrong; training would skip or crash on these):
    invalid or missing JSON, missing/empty/unreadable/truncated images, duplicate image ids,
    duplicate category ids, annotations with an unknown ``category_id`` or ``image_id``;
warnings (recoverable; the loader drops or clips them the same way):
    degenerate boxes (NaN/inf, width or height <= 0), boxes past the border, malformed ``bbox``,
    image sizes that disagree with the JSON (with a hint when it is the EXIF rotation), duplicate
    file names, duplicate annotation ids, annotation id 0, duplicate boxes (kept by the loader, as every
    reference keeps them; the txt/VOC converters merge them).

Nothing is ever written into the dataset; the report goes to ``out_dir`` as ``dataset_report.json``
plus ``class_distribution.png``.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

from tqdm import tqdm

from fcos.data.annotations import write_json
from fcos.data.image_io import ImageReadError, read_image, read_image_size, read_raw_size

REPORT_JSON = "dataset_report.json"
CLASS_PLOT = "class_distribution.png"


@dataclass
class DatasetReport:
    """The outcome of :func:`check_dataset`. ``ok`` is True when there are no errors."""

    ann_file: str
    image_dir: str
    num_images: int = 0
    num_readable_images: int = 0
    num_annotations: int = 0
    num_boxes: int = 0  # valid, non-crowd boxes (what training uses)
    num_crowd: int = 0
    images_without_boxes: int = 0
    class_names: list[str] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    instances_per_class: dict[str, int] = field(default_factory=dict)
    images_per_class: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # problem kind -> number of occurrences
    outputs: dict[str, str] = field(default_factory=dict)
    max_messages: int = 500

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        if len(self.errors) < self.max_messages:
            self.errors.append(f"{kind}: {message}")

    def warn(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        if len(self.warnings) < self.max_messages:
            self.warnings.append(f"{kind}: {message}")

    def summary(self, max_lines: int = 20) -> str:
        """Human-readable multi-line summary (counts, per-class table, first problems)."""
        lines = [
            f"dataset {self.ann_file} (images in {self.image_dir})",
            f"  images: {self.num_images} ({self.num_readable_images} readable, "
            f"{self.images_without_boxes} without boxes), boxes: {self.num_boxes}, crowd: {self.num_crowd}",
        ]
        if self.class_names:
            width = max(len(n) for n in self.class_names)
            lines.append(f"  {'class'.ljust(width)}  instances  images")
            for name in self.class_names:
                inst, imgs = self.instances_per_class.get(name, 0), self.images_per_class.get(name, 0)
                lines.append(f"  {name.ljust(width)}  {inst:9d}  {imgs:6d}")
        for kind, n in sorted(self.counts.items()):
            lines.append(f"  {kind}: {n}")
        for title, msgs in (("errors", self.errors), ("warnings", self.warnings)):
            if msgs:
                lines.append(f"{title} ({len(msgs)}{'+' if len(msgs) >= self.max_messages else ''}):")
                lines.extend(f"  {m}" for m in msgs[:max_lines])
                if len(msgs) > max_lines:
                    lines.append(f"  ... {len(msgs) - max_lines} more in the report JSON")
        lines.append("OK" if self.ok else f"FAILED: {len(self.errors)} error(s)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ann_file": self.ann_file,
            "image_dir": self.image_dir,
            "ok": self.ok,
            "num_images": self.num_images,
            "num_readable_images": self.num_readable_images,
            "num_annotations": self.num_annotations,
            "num_boxes": self.num_boxes,
            "num_crowd": self.num_crowd,
            "images_without_boxes": self.images_without_boxes,
            "classes": [
                {
                    "label": i,
                    "category_id": cid,
                    "name": name,
                    "instances": self.instances_per_class.get(name, 0),
                    "images": self.images_per_class.get(name, 0),
                }
                for i, (cid, name) in enumerate(zip(self.category_ids, self.class_names))
            ],
            "counts": dict(self.counts),
            "errors": list(self.errors),
            "warnings": list(self.warnings),
        }


def _image_probe(
    path: str, verify_pixels: bool
) -> tuple[Optional[tuple[int, int]], Optional[str], Optional[tuple[int, int]]]:
    """(EXIF-oriented (h, w) or None, error text or None, raw (h, w) as stored or None)."""
    try:
        hw = read_image(path).shape[:2] if verify_pixels else read_image_size(path)
    except ImageReadError as e:
        return None, e.reason, None
    try:
        raw = read_raw_size(path)
    except ImageReadError:
        raw = None
    return (int(hw[0]), int(hw[1])), None, raw


def _probe_all(paths: list[str], verify_pixels: bool, num_threads: int) -> Iterator[tuple]:
    desc = "checking images" if verify_pixels else "reading image headers"
    disable = len(paths) < 200
    if num_threads <= 1:
        for p in tqdm(paths, desc=desc, unit="img", disable=disable):
            yield _image_probe(p, verify_pixels)
        return
    with ThreadPoolExecutor(num_threads) as pool:  # decoding releases the GIL
        yield from tqdm(
            pool.map(lambda p: _image_probe(p, verify_pixels), paths),
            total=len(paths),
            desc=desc,
            unit="img",
            disable=disable,
        )


def _fmt(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)


def check_dataset(
    ann_file: str,
    image_dir: str,
    out_dir: Optional[str] = None,
    verify_pixels: bool = True,
    num_threads: int = 4,
    border_tolerance: float = 0.5,
) -> DatasetReport:
    """Check a COCO dataset; never raises for data problems (they go into the report), never modifies files.

    ``verify_pixels`` decodes every image (finds truncated files; slower), otherwise only headers are
    read. With ``out_dir`` the report JSON and a class-distribution PNG are written there.
    """
    report = DatasetReport(ann_file=ann_file, image_dir=image_dir)
    data = _load_json(ann_file, report)
    if data is not None:
        _check(data, report, verify_pixels, num_threads, border_tolerance)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        report.outputs["report"] = os.path.join(out_dir, REPORT_JSON)
        write_json(report.to_dict(), report.outputs["report"])
        if report.class_names:
            report.outputs["plot"] = os.path.join(out_dir, CLASS_PLOT)
            plot_class_distribution(report, report.outputs["plot"])
    return report


def _load_json(ann_file: str, report: DatasetReport) -> Optional[dict]:
    if not os.path.isfile(ann_file):
        report.error("annotation file missing", ann_file)
        return None
    try:
        with open(ann_file, encoding="utf-8-sig") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        report.error("invalid JSON", f"{ann_file}: {e}")
        return None
    if not isinstance(data, dict):
        report.error("invalid JSON", f"{ann_file}: top level is not an object")
        return None
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            report.error("invalid JSON", f"{ann_file}: missing the '{key}' list")
            return None
    if not isinstance(data.get("annotations", []), list):
        report.error("invalid JSON", f"{ann_file}: 'annotations' is not a list")
        return None
    return data


def _check(data: dict, report: DatasetReport, verify_pixels: bool, num_threads: int, tol: float) -> None:
    ann_file = report.ann_file
    # categories ---------------------------------------------------------------------------------
    cat_names: dict[int, str] = {}
    for c in data["categories"]:
        cid = int(c["id"])
        if cid in cat_names:
            report.error("duplicate category id", f"category id {cid} ({c.get('name')!r} and {cat_names[cid]!r})")
            continue
        cat_names[cid] = str(c.get("name", cid))
    if not cat_names:
        report.error("no categories", f"{ann_file}: the 'categories' list is empty")
    report.category_ids = sorted(cat_names)
    report.class_names = [cat_names[c] for c in report.category_ids]
    dup_names = [n for n, k in Counter(report.class_names).items() if k > 1]
    for n in dup_names:
        report.warn("duplicate category name", f"{n!r} is used by several category ids")

    # images -------------------------------------------------------------------------------------
    images: dict[int, dict] = {}
    by_file: dict[str, int] = {}
    for img in data["images"]:
        iid = int(img.get("id", -1))
        name = str(img.get("file_name", ""))
        if iid in images:
            report.error("duplicate image id", f"id {iid}: {images[iid].get('file_name')!r} and {name!r}")
            continue
        images[iid] = img
        if name in by_file:
            report.warn("duplicate file name", f"{name!r} is listed as image ids {by_file[name]} and {iid}")
        else:
            by_file[name] = iid
    report.num_images = len(images)

    ids = list(images)
    paths = [os.path.join(report.image_dir, str(images[i].get("file_name", ""))) for i in ids]
    real_size: dict[int, tuple[int, int]] = {}
    for iid, path, (hw, err, raw) in zip(ids, paths, _probe_all(paths, verify_pixels, num_threads)):
        name = images[iid].get("file_name")
        if err is not None:
            kind = "missing image" if "not found" in err else "unreadable image"
            if "truncated" in err.lower():
                kind = "truncated image"
            report.error(kind, f"{path} (image id {iid}): {err}")
            continue
        report.num_readable_images += 1
        real_size[iid] = hw
        jh, jw = images[iid].get("height"), images[iid].get("width")
        if jh is None or jw is None:
            report.warn("image size missing in JSON", f"{name!r} (image id {iid}); the file says {hw[1]}x{hw[0]}")
        elif (int(jh), int(jw)) != hw:
            hint = ""
            if raw is not None and raw != hw and (int(jh), int(jw)) == raw:
                hint = (
                    " (the JSON has the size before EXIF rotation: the boxes were probably drawn on unrotated pixels)"
                )
            report.warn(
                "size mismatch",
                f"{name!r} (image id {iid}): JSON {int(jw)}x{int(jh)}, file {hw[1]}x{hw[0]} (WxH){hint}",
            )

    # annotations --------------------------------------------------------------------------------
    anns = data.get("annotations", [])
    report.num_annotations = len(anns)
    seen_ann_ids: set = set()
    per_image_boxes: dict[int, set] = defaultdict(set)
    instances: Counter = Counter()
    images_with: dict[str, set] = defaultdict(set)
    with_boxes: set[int] = set()
    for k, ann in enumerate(anns):
        aid = ann.get("id")
        where = f"annotation id {aid}" if aid is not None else f"annotation #{k}"
        if aid is not None:
            if aid in seen_ann_ids:
                report.warn("duplicate annotation id", f"{where} appears more than once")
            seen_ann_ids.add(aid)
            if aid == 0:
                report.warn("annotation id 0", f"{where}: pycocotools treats id 0 as 'no match'; renumber from 1")
        iid = ann.get("image_id")
        if iid not in images:
            report.error("unknown image id", f"{where} refers to image id {iid}, which is not in 'images'")
            continue
        where = f"{where} (image {images[iid].get('file_name')!r})"
        cid = ann.get("category_id")
        if cid not in cat_names:
            report.error("unknown category id", f"{where} has category_id {cid}; categories are {report.category_ids}")
            continue
        if int(ann.get("iscrowd", 0)):
            report.num_crowd += 1
            continue
        bbox = ann.get("bbox")
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            report.warn("malformed bbox", f"{where}: bbox {_fmt(bbox)} is not 4 numbers")
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            report.warn("degenerate box (NaN/inf)", f"{where}: bbox {_fmt(bbox)}")
            continue
        if w <= 0 or h <= 0:
            report.warn("degenerate box (width or height <= 0)", f"{where}: bbox {_fmt(bbox)}")
            continue
        ih, iw = real_size.get(iid, (images[iid].get("height"), images[iid].get("width")))
        if ih is not None and iw is not None:
            if x + w <= 0 or y + h <= 0 or x >= iw or y >= ih:
                report.warn("box outside the image", f"{where}: bbox {_fmt(bbox)} in a {iw}x{ih} image")
                continue
            if x < -tol or y < -tol or x + w > iw + tol or y + h > ih + tol:
                report.warn(
                    "box past the border (clipped when loading)", f"{where}: bbox {_fmt(bbox)} in a {iw}x{ih} image"
                )
        key = (cid, round(x, 2), round(y, 2), round(w, 2), round(h, 2))
        if key in per_image_boxes[iid]:
            report.warn("duplicate box", f"{where}: bbox {_fmt(bbox)} category {cid} appears twice on this image")
            continue
        per_image_boxes[iid].add(key)
        name = cat_names[cid]
        instances[name] += 1
        images_with[name].add(iid)
        with_boxes.add(iid)
        report.num_boxes += 1
    report.instances_per_class = {n: instances.get(n, 0) for n in report.class_names}
    report.images_per_class = {n: len(images_with.get(n, ())) for n in report.class_names}
    report.images_without_boxes = len(set(images) - with_boxes)
    for name, n in report.instances_per_class.items():
        if n == 0:
            report.warn("class without instances", f"{name!r} has no boxes in {os.path.basename(ann_file)}")


def plot_class_distribution(report: DatasetReport, path: str) -> str:
    """Bar chart of instances and images per class (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = report.class_names
    inst = [report.instances_per_class.get(n, 0) for n in names]
    imgs = [report.images_per_class.get(n, 0) for n in names]
    width = max(6.0, min(0.35 * len(names) + 2, 40.0))
    fig = Figure(figsize=(width, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], inst, width=0.4, label="instances")
    ax.bar([x + 0.2 for x in xs], imgs, width=0.4, label="images")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=60 if len(names) > 8 else 0, ha="right" if len(names) > 8 else "center")
    ax.set_ylabel("count")
    ax.set_title(
        f"{os.path.basename(report.ann_file)}: {report.num_images} images, {report.num_boxes} boxes, "
        f"{report.images_without_boxes} without boxes"
    )
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
