"""COCO box evaluation on pycocotools with the official protocol.

``CocoEvaluator`` follows the reset / process / evaluate triplet. Every image of the ground-truth
file counts (also images without annotations and images the model found nothing in), so the numbers
equal what ``pycocotools.cocoeval.COCOeval`` gives for the same result file. Zero detections give
mAP 0 instead of the ``loadRes([])`` crash. Under ``paddle.distributed.launch`` each rank processes
its share and ``evaluate`` gathers all results on rank 0.

    evaluator = CocoEvaluator("annotations/val.json", category_ids=dataset.category_ids)
    evaluator.reset()
    bboxes, bbox_num = model(batch.images, batch.im_shape, batch.scale_factor)  # eval mode
    drop_empty = drops_empty_boxes(cfg.model.postprocess.box_rule)  # fcos.utils.detections
    evaluator.process(batch.image_ids, split_detections(bboxes.numpy(), bbox_num.numpy(), drop_empty=drop_empty))
    metrics = evaluator.evaluate()   # {"val/bbox_mAP": 0.41, "val/bbox_AP50": ..., ...}
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

logger = logging.getLogger(__name__)

# Order and names of COCOeval.stats (12 numbers).
STAT_NAMES = ["mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
_STAT_LINES = [
    ("Average Precision", "0.50:0.95", "all", 100),
    ("Average Precision", "0.50", "all", 100),
    ("Average Precision", "0.75", "all", 100),
    ("Average Precision", "0.50:0.95", "small", 100),
    ("Average Precision", "0.50:0.95", "medium", 100),
    ("Average Precision", "0.50:0.95", "large", 100),
    ("Average Recall", "0.50:0.95", "all", 1),
    ("Average Recall", "0.50:0.95", "all", 10),
    ("Average Recall", "0.50:0.95", "all", 100),
    ("Average Recall", "0.50:0.95", "small", 100),
    ("Average Recall", "0.50:0.95", "medium", 100),
    ("Average Recall", "0.50:0.95", "large", 100),
]


def load_coco_quietly(ann_file: str) -> COCO:
    """``pycocotools.coco.COCO(ann_file)`` without its prints; a clear error for a missing file."""
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(ann_file)


def load_results(coco_gt: COCO, results: list[dict[str, Any]]) -> COCO:
    """``coco_gt.loadRes(results)``, also for an empty list (pycocotools crashes on ``loadRes([])``):
    then a result set with the GT images and categories and no annotations, which COCOeval scores
    as precision and recall 0 for every category that has ground truth."""
    if results:
        return coco_gt.loadRes(results)
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": list(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    coco_dt.createIndex()
    return coco_dt


def detections_to_coco(image_id: int, det: dict[str, np.ndarray], category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """One image's detections (boxes (k,4) xyxy original pixels, scores (k,), labels (k,) contiguous)
    as COCO result dicts with ``bbox`` in xywh and the dataset's ``category_id``."""
    boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(det["scores"], dtype=np.float64).reshape(-1)
    labels = np.asarray(det["labels"], dtype=np.int64).reshape(-1)
    if not (len(boxes) == len(scores) == len(labels)):
        raise ValueError(
            f"image {image_id}: detections have {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(category_ids)):
        raise ValueError(
            f"image {image_id}: detection label {int(labels.max())} outside 0..{len(category_ids) - 1} "
            f"(the model has more classes than the dataset)"
        )
    out = []
    for (x1, y1, x2, y2), s, lab in zip(boxes, scores, labels):
        out.append(
            {
                "image_id": int(image_id),
                "category_id": int(category_ids[int(lab)]),
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "score": float(s),
            }
        )
    return out


def _gather_lists(local: list) -> list:
    """Concatenate a python list over all ranks (on every rank); the list itself with one process."""
    from fcos.utils.dist import all_gather_objects

    return [x for part in all_gather_objects(local) for x in part]


class CocoEvaluator:
    """Box AP on a COCO ground truth.

    Args:
        coco_gt: annotation file path or a loaded ``pycocotools.coco.COCO``.
        category_ids: contiguous label -> COCO ``category_id`` (``CocoDetection.category_ids``).
        class_names: names for the per-class table; default: the GT categories' names.
        prefix: metric key prefix, ``"val/bbox_"`` gives ``val/bbox_mAP``.
    """

    def __init__(
        self,
        coco_gt: Union[str, COCO],
        category_ids: Sequence[int],
        class_names: Optional[Sequence[str]] = None,
        prefix: str = "val/bbox_",
    ) -> None:
        self.coco_gt = load_coco_quietly(coco_gt) if isinstance(coco_gt, str) else coco_gt
        self.category_ids = [int(c) for c in category_ids]
        known = set(self.coco_gt.getCatIds())
        unknown = [c for c in self.category_ids if c not in known]
        if unknown:
            raise ValueError(f"category ids {unknown} are not in the ground-truth categories {sorted(known)}")
        if class_names is None:
            cats = self.coco_gt.loadCats(self.category_ids)
            class_names = [c.get("name", str(c["id"])) for c in cats]
        self.class_names = list(class_names)
        self.prefix = prefix
        self._results: list[dict[str, Any]] = []
        self._image_ids: list[int] = []
        self.coco_eval: Optional[COCOeval] = None  # the last COCOeval run
        self.per_class: dict[str, float] = {}
        self.stats = np.zeros(12)  # the 12 COCO numbers, -1 ("no such ground truth") reported as 0
        self.raw_stats = np.zeros(12)  # exactly COCOeval.stats
        self.num_detections = 0

    def reset(self) -> None:
        self._results = []
        self._image_ids = []
        self.coco_eval = None

    def process(self, image_ids: Sequence[int], detections: Sequence[dict[str, np.ndarray]]) -> None:
        """Add one batch: ``detections[i]`` holds image ``image_ids[i]``'s boxes/scores/labels."""
        if len(image_ids) != len(detections):
            raise ValueError(f"{len(image_ids)} image ids but {len(detections)} detection dicts")
        for image_id, det in zip(image_ids, detections):
            self._image_ids.append(int(image_id))
            self._results.extend(detections_to_coco(int(image_id), det, self.category_ids))

    @property
    def results(self) -> list[dict[str, Any]]:
        """The COCO result dicts added so far on this rank."""
        return self._results

    def evaluate(self) -> dict[str, float]:
        """Run COCOeval on all GT images; returns ``{prefix+name: value}`` for the 12 COCO numbers.

        With several processes, every rank must call this; the metrics are computed on rank 0 and
        the other ranks return an empty dict.
        """
        from fcos.utils.dist import is_main_process

        results = _gather_lists(self._results)
        seen = set(_gather_lists(self._image_ids))
        self.num_detections = len(results)
        if not is_main_process():
            return {}
        gt_ids = set(self.coco_gt.getImgIds())
        foreign = sorted(seen - gt_ids)
        if foreign:
            raise ValueError(
                f"{len(foreign)} evaluated image ids are not in the ground truth (first: {foreign[:5]}); "
                "the validation loader and the annotation file disagree"
            )
        missing = len(gt_ids - seen)
        if missing:
            logger.warning(
                "%d of %d ground-truth images were not evaluated; they count as misses", missing, len(gt_ids)
            )
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = load_results(self.coco_gt, results)
            coco_eval = COCOeval(self.coco_gt, coco_dt, "bbox")
            coco_eval.params.imgIds = sorted(gt_ids)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        if not results:
            logger.warning("no detections on %d images: every AP is 0", len(seen))
        self.coco_eval = coco_eval
        self.raw_stats = np.asarray(coco_eval.stats, dtype=np.float64)
        # -1 means "no ground truth of that kind" (e.g. no small objects); reported as 0 like most tools.
        self.stats = np.maximum(self.raw_stats, 0.0)
        self.per_class = self._per_class_ap(coco_eval)
        return {self.prefix + name: float(v) for name, v in zip(STAT_NAMES, self.stats)}

    def _per_class_ap(self, coco_eval: COCOeval) -> dict[str, float]:
        # precision: [T IoU thresholds, R recall thresholds, K categories, A areas, M maxDets]
        precision = coco_eval.eval["precision"]
        cat_index = {c: k for k, c in enumerate(coco_eval.params.catIds)}
        out = {}
        for name, cat in zip(self.class_names, self.category_ids):
            p = precision[:, :, cat_index[cat], 0, -1]
            p = p[p > -1]
            out[name] = float(p.mean()) if p.size else 0.0
        return out

    # ---------------------------------------------------------------------------------------
    # reports
    # ---------------------------------------------------------------------------------------

    def summary_table(self) -> str:
        """The 12 lines pycocotools prints, from the last ``evaluate``."""
        lines = []
        for (title, iou, area, dets), v in zip(_STAT_LINES, self.stats):
            kind = "(AP)" if title.startswith("Average Precision") else "(AR)"
            lines.append(f" {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6s} | maxDets={dets:>3d} ] = {v:0.3f}")
        return "\n".join(lines)

    def per_class_table(self, columns: int = 3) -> str:
        """Per-class AP@[.5:.95] (0..1, like the summary) as a text table with ``columns`` (name, AP) pairs per row."""
        items = list(self.per_class.items())
        if not items:
            return "(no classes)"
        width = max(8, max(len(n) for n, _ in items))
        header = " | ".join([f"{'category':<{width}} | {'AP':>6}"] * min(columns, len(items)))
        rows = [header, "-" * len(header)]
        for i in range(0, len(items), columns):
            chunk = items[i : i + columns]
            rows.append(" | ".join(f"{n:<{width}} | {v:6.3f}" for n, v in chunk))
        return "\n".join(rows)

    def write_json(self, path: str, extra: Optional[dict[str, Any]] = None) -> None:
        """Write ``metrics.json``: ``bbox_mAP``, ``bbox_AP50``, ... (the 12 numbers), ``per_class_AP``
        (AP@[.5:.95] per class name), ``num_images``, ``num_detections`` and ``extra`` fields."""
        data: dict[str, Any] = {f"bbox_{name}": float(v) for name, v in zip(STAT_NAMES, self.stats)}
        data["per_class_AP"] = dict(self.per_class)
        data["num_images"] = len(self.coco_gt.getImgIds())
        data["num_detections"] = self.num_detections
        if extra:
            data.update(extra)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)

    def pr_curves(self) -> dict[str, np.ndarray]:
        """Precision over the 101 recall thresholds at IoU 0.5 (area all, 100 dets), per class.

        Returns ``{"recall": (101,), name: (101,) ...}``; a class without detections or GT gives zeros.
        """
        recall = np.linspace(0.0, 1.0, 101)
        out: dict[str, np.ndarray] = {"recall": recall}
        if self.coco_eval is None or "precision" not in self.coco_eval.eval:
            for name in self.class_names:
                out[name] = np.zeros_like(recall)
            return out
        precision = self.coco_eval.eval["precision"]
        cat_index = {c: k for k, c in enumerate(self.coco_eval.params.catIds)}
        for name, cat in zip(self.class_names, self.category_ids):
            out[name] = np.maximum(precision[0, :, cat_index[cat], 0, -1], 0.0)
        return out
