"""Feature-map points: the image location each output pixel of a pyramid level stands for."""

from __future__ import annotations

from collections.abc import Sequence

import paddle


def compute_points(
    feat_sizes: Sequence[tuple[int, int]], strides: Sequence[int], offset: float = 0.5
) -> list[paddle.Tensor]:
    """Points of every pyramid level, in input-image pixels.

    Args:
        feat_sizes: per level (H_l, W_l) of the feature map. Plain ints, or 0-d/1-element int tensors
            (shapes read from a tensor under ``paddle.jit.to_static``).
        strides: per level stride s_l in pixels.
        offset: fraction of the stride added to both coordinates (AdelaiDet / PaddleDetection 0.5,
            i.e. s//2 for even strides; torchvision 0.0).

    Returns:
        list of (H_l*W_l, 2) float32 tensors, row-major over (i, j), holding
        (x, y) = (j*s + offset*s, i*s + offset*s).
    """
    if len(feat_sizes) != len(strides):
        raise ValueError(f"compute_points: {len(feat_sizes)} feature sizes but {len(strides)} strides")
    points = []
    for (h, w), stride in zip(feat_sizes, strides):
        shift = float(offset) * float(stride)
        xs = paddle.arange(0, w, dtype="float32") * float(stride) + shift
        ys = paddle.arange(0, h, dtype="float32") * float(stride) + shift
        grid_y, grid_x = paddle.meshgrid(ys, xs)
        points.append(paddle.stack([grid_x.reshape([-1]), grid_y.reshape([-1])], axis=1))
    return points
