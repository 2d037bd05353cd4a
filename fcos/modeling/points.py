"""Feature-map points: the image location each output pixel of a pyramid level stands for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import paddle


def _as_float(value: Any) -> Any:
    """A Python float, or a float32 tensor for a shape read from a tensor under ``paddle.jit.to_static``."""
    if isinstance(value, paddle.Tensor):
        return value.astype("float32")
    return float(value)


def compute_points(
    feat_sizes: Sequence[tuple[Any, Any]],
    strides: Sequence[int],
    offset: float = 0.5,
    image_size: Optional[tuple[Any, Any]] = None,
) -> list[paddle.Tensor]:
    """Points of every pyramid level, in input-image pixels.

    Args:
        feat_sizes: per level (H_l, W_l) of the feature map. Plain ints, or 0-d/1-element int tensors
            (shapes read from a tensor under ``paddle.jit.to_static``).
        strides: per level stride s_l in pixels.
        offset: fraction of the step added to both coordinates (AdelaiDet / PaddleDetection 0.5,
            i.e. s//2 for even strides; torchvision 0.0).
        image_size: (H, W) of the padded network input. When given, the step between points is
            (H // H_l, W // W_l) instead of s_l, as torchvision's ``AnchorGenerator`` computes it; the two
            agree whenever H and W are multiples of the largest stride (on P6/P7 of an input padded to 32
            they do not, e.g. 800 // 13 = 61 instead of 64).

    Returns:
        list of (H_l*W_l, 2) float32 tensors, row-major over (i, j), holding
        (x, y) = (j*step_x + offset*step_x, i*step_y + offset*step_y), step = s_l unless ``image_size``.
    """
    if len(feat_sizes) != len(strides):
        raise ValueError(f"compute_points: {len(feat_sizes)} feature sizes but {len(strides)} strides")
    points = []
    for (h, w), stride in zip(feat_sizes, strides):
        if image_size is None:
            step_y = step_x = float(stride)
        else:
            step_y = _as_float(image_size[0] // h)
            step_x = _as_float(image_size[1] // w)
        xs = paddle.arange(0, w, dtype="float32") * step_x + float(offset) * step_x
        ys = paddle.arange(0, h, dtype="float32") * step_y + float(offset) * step_y
        grid_y, grid_x = paddle.meshgrid(ys, xs)
        points.append(paddle.stack([grid_x.reshape([-1]), grid_y.reshape([-1])], axis=1))
    return points
