"""Matching two detection sets of one image (export checks, fp32 vs bf16, ONNX vs Paddle)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of xyxy boxes a (n, 4) and b (m, 4)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


@dataclass
class MatchStats:
    """How well detections ``b`` reproduce reference ``a``: ``matched`` of the ``num_ref`` reference
    detections found a partner among ``num_other``; score and coordinate differences of the pairs."""

    num_ref: int
    num_other: int
    matched: int
    max_score_diff: float
    max_box_diff: float

    @property
    def recall(self) -> float:
        """Matched fraction of the reference detections (1.0 when there are none)."""
        return self.matched / self.num_ref if self.num_ref else 1.0


def match_detections(
    a: Any, b: Any, iou_thresh: float = 0.9, min_score: float = 0.0, other_min_score: float = 0.0
) -> MatchStats:
    """Greedy one-to-one matching, strongest reference first, same label and IoU >= ``iou_thresh``.

    ``a`` and ``b`` have ``boxes`` (k, 4) xyxy, ``scores`` (k,), ``labels`` (k,) (e.g. ``Results``).
    Reference detections with score < ``min_score`` and candidates with score < ``other_min_score``
    take no part (use a lower ``other_min_score`` so a reference near the cut still finds its partner).
    """
    ka, kb = a.scores >= min_score, b.scores >= other_min_score
    ab, asc, al = a.boxes[ka], a.scores[ka], a.labels[ka]
    bb, bsc, bl = b.boxes[kb], b.scores[kb], b.labels[kb]
    iou = box_iou(ab, bb)
    used = np.zeros(len(bb), dtype=bool)
    matched, max_sd, max_bd = 0, 0.0, 0.0
    for i in np.argsort(-asc, kind="stable"):
        if len(bb) == 0:
            break
        cand = np.where((bl == al[i]) & ~used & (iou[i] >= iou_thresh))[0]
        if len(cand) == 0:
            continue
        j = cand[np.argmax(iou[i, cand])]
        used[j] = True
        matched += 1
        max_sd = max(max_sd, abs(float(asc[i]) - float(bsc[j])))
        max_bd = max(max_bd, float(np.abs(ab[i] - bb[j]).max()))
    return MatchStats(len(ab), len(bb), matched, max_sd, max_bd)
