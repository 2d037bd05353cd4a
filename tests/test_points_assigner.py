"""compute_points and assign_targets on hand-computed cases and against a brute-force numpy reference."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from fcos.config import AssignerConfig
from fcos.modeling.assigner import INF, assign_targets, size_ranges
from fcos.modeling.points import compute_points


def _target(boxes, labels):
    return {
        "boxes": paddle.to_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
        "labels": paddle.to_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
    }


def _index(points_per_level, level, x, y):
    """Flat index (over all levels) of the point at (x, y) on ``level``."""
    start = sum(int(p.shape[0]) for p in points_per_level[:level])
    pts = points_per_level[level].numpy()
    hit = np.nonzero((pts[:, 0] == x) & (pts[:, 1] == y))[0]
    assert hit.size == 1, f"no point ({x}, {y}) on level {level}"
    return start + int(hit[0])


def test_compute_points_offsets_and_order():
    pts = compute_points([(2, 3), (1, 2)], [8, 16], offset=0.5)
    np.testing.assert_array_equal(pts[0].numpy(), [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]])
    np.testing.assert_array_equal(pts[1].numpy(), [[8, 8], [24, 8]])
    assert pts[0].dtype == paddle.float32
    pts0 = compute_points([(1, 2)], [32], offset=0.0)
    np.testing.assert_array_equal(pts0[0].numpy(), [[0, 0], [32, 0]])
    with pytest.raises(ValueError, match="strides"):
        compute_points([(1, 1)], [8, 16])


def test_size_ranges():
    assert size_ranges([64, 128], 3) == [(-1.0, 64.0), (64.0, 128.0), (128.0, INF)]
    with pytest.raises(ValueError, match="sizes_of_interest"):
        size_ranges([64], 3)


@pytest.mark.parametrize("inclusive", [True, False])
def test_size_range_boundary_inclusive_vs_strict(inclusive):
    # Offset 0: the location (16, 16) is a point of both P3 (stride 8) and P4 (stride 16).
    strides = [8, 16]
    points = compute_points([(8, 8), (4, 4)], strides, offset=0.0)
    cfg = AssignerConfig(sizes_of_interest=[64.0], inclusive_bounds=inclusive, center_sampling_radius=0.0)
    # (16,16) -> l,t,r,b = 6, 6, 64, 4: max exactly 64, the P3/P4 boundary.
    # (32,16) -> 22, 6, 48, 4: max 48, P3 only.  (48, 16) -> 38, 6, 32, 4 ... all P3.
    labels, reg = assign_targets(points, strides, [_target([[10, 10, 80, 20]], [1])], cfg, 3, norm_reg_targets=True)
    labels = labels.numpy()[0]
    p3_boundary = _index(points, 0, 16, 16)
    p4_boundary = _index(points, 1, 16, 16)
    p3_inner = _index(points, 0, 32, 16)
    p4_inner = _index(points, 1, 32, 16)
    if inclusive:
        assert labels[p3_boundary] == 1 and labels[p4_boundary] == 1
    else:
        assert labels[p3_boundary] == 3 and labels[p4_boundary] == 3
    assert labels[p3_inner] == 1 and labels[p4_inner] == 3  # max 48: inside (-1, 64) only
    # Regression targets are divided by the stride of the point's level.
    np.testing.assert_allclose(reg.numpy()[0, p3_inner], np.array([22, 6, 48, 4]) / 8.0, rtol=1e-6)
    if inclusive:
        np.testing.assert_allclose(reg.numpy()[0, p4_boundary], np.array([6, 6, 64, 4]) / 16.0, rtol=1e-6)


def test_point_in_two_boxes_min_area_wins_and_ties_take_first():
    strides = [8]
    points = compute_points([(8, 8)], strides, offset=0.5)
    cfg = AssignerConfig(sizes_of_interest=[], center_sampling_radius=0.0)
    big = [0, 0, 60, 60]
    small = [8, 8, 40, 30]
    labels, reg = assign_targets(points, strides, [_target([big, small], [0, 1])], cfg, 2, norm_reg_targets=False)
    i = _index(points, 0, 20, 20)
    assert labels.numpy()[0, i] == 1
    np.testing.assert_allclose(reg.numpy()[0, i], [12, 12, 20, 10])  # w.r.t. the small box
    j = _index(points, 0, 52, 52)  # only in the big box
    assert labels.numpy()[0, j] == 0
    np.testing.assert_allclose(reg.numpy()[0, j], [52, 52, 8, 8])
    # Two boxes of equal area (different positions) containing the point: the first one wins.
    a = [4, 4, 36, 36]
    b = [8, 0, 40, 32]
    labels, reg = assign_targets(points, strides, [_target([a, b], [0, 1])], cfg, 2, norm_reg_targets=False)
    assert labels.numpy()[0, i] == 0
    np.testing.assert_allclose(reg.numpy()[0, i], [16, 16, 16, 16])
    labels, _ = assign_targets(points, strides, [_target([b, a], [1, 0])], cfg, 2, norm_reg_targets=False)
    assert labels.numpy()[0, i] == 1


def test_area_rank_offset_ties_areas_within_float32_rounding():
    """torchvision ranks candidates by float32(1e8 - area): 1e8 - 10000 = 99990000 and 1e8 - 9999 round to the
    same float32 (spacing 8 there), so the first box wins; 9992 (one spacing further) still wins as the smaller."""
    strides = [8]
    points = compute_points([(8, 8)], strides, offset=0.5)
    i = _index(points, 0, 20, 20)
    a = [0, 0, 100, 100]  # area 10000
    b = [1, 0, 100, 101]  # area 99 * 101 = 9999
    c = [2, 0, 100, 101.959183]  # area 98 * 101.959183 = 9992.0 (float32)
    for offset, boxes, winner in [
        (0.0, [a, b], 1),  # exact smallest area (AdelaiDet, PaddleDetection)
        (1e8, [a, b], 0),  # a float32 tie: the first box
        (1e8, [b, a], 0),
        (1e8, [a, c], 1),  # 8 px^2 apart: distinct after rounding
    ]:
        cfg = AssignerConfig(sizes_of_interest=[], center_sampling_radius=0.0, area_rank_offset=offset)
        labels, _ = assign_targets(points, strides, [_target(boxes, [0, 1])], cfg, 2, norm_reg_targets=False)
        assert labels.numpy()[0, i] == winner, (offset, boxes)


def test_center_sampling_box_touching_border():
    strides = [8]
    points = compute_points([(4, 16)], strides, offset=0.5)  # x in 4..124, y in 4..28
    cfg = AssignerConfig(sizes_of_interest=[], center_sampling_radius=1.5)
    # Box touches the top image border; center (50, 10), sampling square x in [38, 62], y in [-2, 22] -> [0, 20].
    labels, reg = assign_targets(points, strides, [_target([[0, 0, 100, 20]], [2])], cfg, 3, norm_reg_targets=False)
    grid = labels.numpy()[0].reshape(4, 16)
    expected = np.full((4, 16), 3)
    expected[0:2, 5:8] = 2  # x in {44, 52, 60}, y in {4, 12}; y=20 is on the box edge, x=36 < 38
    np.testing.assert_array_equal(grid, expected)
    np.testing.assert_allclose(reg.numpy()[0, _index(points, 0, 44, 4)], [44, 4, 56, 16])
    # Radius 0 disables center sampling: every point strictly inside the box is positive.
    labels, _ = assign_targets(
        points,
        strides,
        [_target([[0, 0, 100, 20]], [2])],
        AssignerConfig(sizes_of_interest=[], center_sampling_radius=0.0),
        3,
        norm_reg_targets=False,
    )
    grid = labels.numpy()[0].reshape(4, 16)
    expected = np.full((4, 16), 3)
    expected[0:2, 0:12] = 2  # x in 4..92 (100 is on the edge), y in {4, 12}
    np.testing.assert_array_equal(grid, expected)


def test_image_without_boxes_is_background():
    strides = [8, 16]
    points = compute_points([(4, 4), (2, 2)], strides)
    cfg = AssignerConfig(sizes_of_interest=[64.0])
    empty = {"boxes": paddle.zeros([0, 4]), "labels": paddle.zeros([0], dtype="int64")}
    labels, reg = assign_targets(points, strides, [empty, _target([[0, 0, 30, 30]], [0])], cfg, 5, True)
    assert labels.shape == [2, 20] and labels.dtype == paddle.int64
    assert reg.shape == [2, 20, 4] and reg.dtype == paddle.float32
    assert (labels.numpy()[0] == 5).all()
    assert (reg.numpy()[0] == 0).all()
    assert (labels.numpy()[1] == 0).any()
    # numpy inputs are accepted as well
    labels_np, _ = assign_targets(points, strides, [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0)}], cfg, 5, True)
    assert (labels_np.numpy() == 5).all()


def test_mismatched_target_raises():
    points = compute_points([(2, 2)], [8])
    bad = {"boxes": paddle.zeros([2, 4]), "labels": paddle.zeros([1], dtype="int64")}
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        assign_targets(points, [8], [bad], AssignerConfig(sizes_of_interest=[]), 2, True)


def _reference_assign(points, strides, boxes, labels, sizes, inclusive, radius, num_classes):
    """Plain-loop numpy assignment (independent of the vectorised implementation)."""
    bounds = [-1.0] + list(sizes) + [INF]
    out_labels, out_reg = [], []
    for level, (pts, stride) in enumerate(zip(points, strides)):
        lo, hi = bounds[level], bounds[level + 1]
        for x, y in pts:
            best, best_area = None, INF
            for g, (x1, y1, x2, y2) in enumerate(boxes):
                ltrb = (x - x1, y - y1, x2 - x, y2 - y)
                if radius > 0:
                    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                    rx1, ry1 = max(cx - radius * stride, x1), max(cy - radius * stride, y1)
                    rx2, ry2 = min(cx + radius * stride, x2), min(cy + radius * stride, y2)
                    inside = rx1 < x < rx2 and ry1 < y < ry2
                else:
                    inside = min(ltrb) > 0
                m = max(ltrb)
                in_range = (lo <= m <= hi) if inclusive else (lo < m < hi)
                area = (x2 - x1) * (y2 - y1)
                if inside and in_range and area < best_area:
                    best, best_area = g, area
            if best is None:
                out_labels.append(num_classes)
                out_reg.append((0, 0, 0, 0))
            else:
                x1, y1, x2, y2 = boxes[best]
                out_labels.append(labels[best])
                out_reg.append((x - x1, y - y1, x2 - x, y2 - y))
    return np.array(out_labels), np.array(out_reg, dtype=np.float64)


@pytest.mark.parametrize("inclusive,radius", [(True, 1.5), (False, 1.5), (True, 0.0)])
def test_matches_bruteforce_reference(inclusive, radius):
    rng = np.random.default_rng(3)
    strides = [8, 16, 32]
    sizes = [(12, 10), (6, 5), (3, 3)]
    points = compute_points(sizes, strides)
    xy = rng.uniform(0, 70, size=(7, 2))
    wh = rng.uniform(4, 60, size=(7, 2))
    boxes = np.round(np.concatenate([xy, xy + wh], axis=1))  # integer coordinates hit exact boundaries
    labels = rng.integers(0, 4, size=7)
    cfg = AssignerConfig(sizes_of_interest=[16.0, 32.0], inclusive_bounds=inclusive, center_sampling_radius=radius)
    got_labels, got_reg = assign_targets(points, strides, [_target(boxes, labels)], cfg, 4, norm_reg_targets=False)
    ref_labels, ref_reg = _reference_assign(
        [p.numpy().astype(np.float64) for p in points], strides, boxes, labels, [16.0, 32.0], inclusive, radius, 4
    )
    np.testing.assert_array_equal(got_labels.numpy()[0], ref_labels)
    np.testing.assert_allclose(got_reg.numpy()[0], ref_reg, atol=1e-4)
    assert (ref_labels < 4).sum() > 10  # the case is not trivially all background
