"""FCOS target assignment: which ground-truth box (if any) each feature-map point regresses.

A point p on level l with stride s is a positive for gt box g when
  1. p lies strictly inside g, or, with center sampling (radius r > 0), strictly inside the square of
     half-side r*s around the center of g, clipped to g;
  2. m = max(l, t, r, b) of p w.r.t. g lies in the level's size range: lo <= m <= hi
     (``inclusive_bounds``, AdelaiDet / mmdet) or lo < m < hi (PaddleDetection / torchvision).
Among several matching boxes the one with the smallest area wins (ties: the first box); with
``area_rank_offset`` (torchvision: 1e8) areas are compared as float32(offset - area), so areas within float32
rounding of each other at that offset tie.
Ranges come from ``sizes_of_interest`` [a, b, ...]: [-1, a], [a, b], ..., [last, INF].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import paddle

from fcos.config import AssignerConfig

INF = 1.0e8


def size_ranges(sizes_of_interest: Sequence[float], num_levels: int) -> list[tuple[float, float]]:
    """Per-level (lo, hi) bounds on max(l,t,r,b): [-1, a], [a, b], ..., [last, INF]."""
    if len(sizes_of_interest) != num_levels - 1:
        raise ValueError(
            f"assigner: model.assigner.sizes_of_interest needs {num_levels - 1} bounds for {num_levels} levels, "
            f"got {list(sizes_of_interest)}"
        )
    bounds = [-1.0] + [float(v) for v in sizes_of_interest] + [INF]
    return [(bounds[i], bounds[i + 1]) for i in range(num_levels)]


def _as_tensor(value: Any, dtype: str) -> paddle.Tensor:
    if isinstance(value, paddle.Tensor):
        return value.astype(dtype)
    return paddle.to_tensor(np.asarray(value), dtype=dtype)


def _assign_single_image(
    points: paddle.Tensor,
    point_strides: paddle.Tensor,
    range_lo: paddle.Tensor,
    range_hi: paddle.Tensor,
    boxes: paddle.Tensor,
    labels: paddle.Tensor,
    cfg: AssignerConfig,
    num_classes: int,
) -> tuple[paddle.Tensor, paddle.Tensor]:
    """Targets of one image. points (P,2) x,y; point_strides/range_lo/range_hi (P,); boxes (M,4) xyxy; labels (M,).

    Returns labels (P,) int64 (background = num_classes) and reg (P,4) float32 l,t,r,b in pixels (0 at background).
    """
    num_points = points.shape[0]
    xs = points[:, 0:1]  # (P,1)
    ys = points[:, 1:2]
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]  # (M,)
    ltrb = paddle.stack([xs - x1, ys - y1, x2 - xs, y2 - ys], axis=2)  # (P,M,4)

    radius = float(cfg.center_sampling_radius)
    if radius > 0:
        cx = (x1 + x2) * 0.5
        cy = (y1 + y2) * 0.5
        half = point_strides.unsqueeze(1) * radius  # (P,1)
        left = paddle.maximum(cx - half, x1)  # (P,M): the center square clipped to the box
        top = paddle.maximum(cy - half, y1)
        right = paddle.minimum(cx + half, x2)
        bottom = paddle.minimum(cy + half, y2)
        region = paddle.stack([xs - left, ys - top, right - xs, bottom - ys], axis=2)
        in_region = region.min(axis=2) > 0
    else:
        in_region = ltrb.min(axis=2) > 0

    max_side = ltrb.max(axis=2)  # (P,M)
    lo = range_lo.unsqueeze(1)
    hi = range_hi.unsqueeze(1)
    if cfg.inclusive_bounds:
        in_range = (max_side >= lo) & (max_side <= hi)
    else:
        in_range = (max_side > lo) & (max_side < hi)

    areas = (x2 - x1) * (y2 - y1)  # (M,) float32
    if cfg.area_rank_offset > 0:
        # torchvision (FCOS.compute_loss) takes the max of float32(1e8 - area): areas that round to the same value
        # there tie, and the first box wins. Ranking by offset - float32(offset - area) reproduces that exactly.
        offset = paddle.full_like(areas, float(cfg.area_rank_offset))
        areas = offset - (offset - areas)
    areas = areas.unsqueeze(0).expand([num_points, boxes.shape[0]])  # (P,M)
    candidate_areas = paddle.where(in_region & in_range, areas, paddle.full_like(areas, INF))
    min_area = candidate_areas.min(axis=1)  # (P,)
    gt_index = candidate_areas.argmin(axis=1)  # first minimum on ties
    positive = min_area < INF

    point_labels = paddle.gather(labels, gt_index)
    point_labels = paddle.where(positive, point_labels, paddle.full_like(point_labels, num_classes))
    gather_index = gt_index.reshape([-1, 1, 1]).expand([num_points, 1, 4])
    point_reg = paddle.take_along_axis(ltrb, gather_index, axis=1).squeeze(1)  # (P,4)
    point_reg = point_reg * positive.unsqueeze(1).astype(point_reg.dtype)
    return point_labels, point_reg


def assign_targets(
    points: Sequence[paddle.Tensor],
    strides: Sequence[int],
    targets: Sequence[dict],
    cfg: AssignerConfig,
    num_classes: int,
    norm_reg_targets: bool,
) -> tuple[paddle.Tensor, paddle.Tensor]:
    """FCOS classification and regression targets for a batch.

    Args:
        points: per level (P_l, 2) float32 point coordinates (x, y) in input pixels (``compute_points``).
        strides: per level stride.
        targets: per image dict(boxes=(M,4) float32 xyxy in the network-input frame, labels=(M,) int64 in
            0..num_classes-1); M may be 0 (all points background).
        cfg: ``model.assigner`` (sizes_of_interest, inclusive_bounds, center_sampling_radius).
        num_classes: number of foreground classes; also the background label.
        norm_reg_targets: divide l,t,r,b by the level stride.

    Returns:
        labels (N, P) int64 with background = num_classes, and reg_targets (N, P, 4) float32 l,t,r,b
        (0 at background points), P = sum of P_l in level order.
    """
    if len(points) != len(strides):
        raise ValueError(f"assign_targets: {len(points)} point levels but {len(strides)} strides")
    ranges = size_ranges(cfg.sizes_of_interest, len(strides))
    all_points = paddle.concat([p.astype("float32") for p in points], axis=0)  # (P,2)
    level_sizes = [int(p.shape[0]) for p in points]
    per_point = [
        paddle.full([n], value, dtype="float32")
        for n, stride, (lo, hi) in zip(level_sizes, strides, ranges)
        for value in (float(stride), lo, hi)
    ]
    point_strides = paddle.concat(per_point[0::3])
    range_lo = paddle.concat(per_point[1::3])
    range_hi = paddle.concat(per_point[2::3])
    num_points = int(all_points.shape[0])

    batch_labels, batch_reg = [], []
    for index, target in enumerate(targets):
        if "boxes" not in target or "labels" not in target:
            raise KeyError(f"assign_targets: target {index} must have keys 'boxes' and 'labels', got {sorted(target)}")
        boxes = _as_tensor(target["boxes"], "float32").reshape([-1, 4])
        labels = _as_tensor(target["labels"], "int64").reshape([-1])
        if boxes.shape[0] != labels.shape[0]:
            raise ValueError(f"assign_targets: target {index} has {boxes.shape[0]} boxes but {labels.shape[0]} labels")
        if boxes.shape[0] == 0:
            batch_labels.append(paddle.full([num_points], num_classes, dtype="int64"))
            batch_reg.append(paddle.zeros([num_points, 4], dtype="float32"))
            continue
        point_labels, point_reg = _assign_single_image(
            all_points, point_strides, range_lo, range_hi, boxes, labels, cfg, num_classes
        )
        if norm_reg_targets:
            point_reg = point_reg / point_strides.unsqueeze(1)
        batch_labels.append(point_labels)
        batch_reg.append(point_reg)
    if not batch_labels:
        return paddle.zeros([0, num_points], dtype="int64"), paddle.zeros([0, num_points, 4], dtype="float32")
    return paddle.stack(batch_labels), paddle.stack(batch_reg)
