"""Per-image detections from the graph's flat output, and the box rule's empty-box flag.

The detector in eval mode and the exported graph both return ``bboxes`` (K, 6) rows
[label, score, x1, y1, x2, y2] in original-image pixels, images in batch order, and ``bbox_num`` (N,)
rows per image. :func:`split_detections` turns them into one dict per image. Numpy only (no Paddle), so
training, evaluation, inference and the deploy predictor share it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def drops_empty_boxes(box_rule: str) -> bool:
    """Whether ``box_rule`` (``model.postprocess.box_rule``, infer_cfg.yml ``postprocess.box_rule``) drops
    boxes of zero width or height after NMS: only "clip_drop_empty" (detectron2's ``nonempty()``)."""
    return box_rule == "clip_drop_empty"


def split_detections(bboxes: ArrayLike, bbox_num: ArrayLike, *, drop_empty: bool) -> list[dict[str, np.ndarray]]:
    """Split ``bboxes`` (K, 6) by ``bbox_num`` (N,) into N dicts of boxes (k, 4) float32 xyxy, scores (k,) float32
    and labels (k,) int64.

    Rows with a negative label (padding) are dropped; with ``drop_empty`` (:func:`drops_empty_boxes` of the
    recipe's box rule) so are boxes of zero width or height. Inputs are numpy arrays or anything
    ``np.asarray`` takes (a paddle Tensor too). Raises ValueError when ``bbox_num`` does not sum to K.
    """
    rows_all = np.asarray(bboxes, dtype=np.float32).reshape(-1, 6)
    counts = np.asarray(bbox_num).reshape(-1)
    if int(counts.sum()) != rows_all.shape[0]:
        raise ValueError(
            f"split_detections: bbox_num sums to {int(counts.sum())} but there are {rows_all.shape[0]} rows"
        )
    results, start = [], 0
    for count in counts.tolist():
        rows = rows_all[start : start + int(count)]
        start += int(count)
        keep = rows[:, 0] >= 0
        if drop_empty:
            keep &= (rows[:, 4] > rows[:, 2]) & (rows[:, 5] > rows[:, 3])
        rows = rows[keep]
        results.append(
            {"boxes": rows[:, 2:6].copy(), "scores": rows[:, 1].copy(), "labels": rows[:, 0].astype(np.int64)}
        )
    return results
