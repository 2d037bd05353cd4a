"""fcos.utils.detections: the graph's flat rows split per image, and the box rule's empty-box flag."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from fcos.utils.detections import drops_empty_boxes, split_detections

ROWS = np.array(
    [
        [1, 0.9, 0, 0, 10, 10],
        [0, 0.8, 5, 5, 5, 9],  # zero width
        [-1, 0.0, 0, 0, 0, 0],  # padding row
        [2, 0.7, 1, 2, 3, 4],
        [3, 0.6, 1, 4, 3, 4],  # zero height
    ],
    np.float32,
)


def test_drop_empty_drops_zero_width_or_height_and_padding():
    out = split_detections(ROWS, np.array([3, 2], np.int32), drop_empty=True)
    assert len(out) == 2
    np.testing.assert_array_equal(out[0]["boxes"], [[0, 0, 10, 10]])
    assert out[0]["labels"].dtype == np.int64 and out[0]["labels"].tolist() == [1]
    assert out[0]["scores"].dtype == np.float32 and out[0]["scores"].tolist() == [np.float32(0.9)]
    assert out[0]["boxes"].dtype == np.float32
    np.testing.assert_array_equal(out[1]["boxes"], [[1, 2, 3, 4]])
    assert out[1]["labels"].tolist() == [2]


def test_keep_empty_keeps_zero_area_boxes_but_not_padding():
    out = split_detections(ROWS, np.array([3, 2]), drop_empty=False)
    np.testing.assert_array_equal(out[0]["boxes"], [[0, 0, 10, 10], [5, 5, 5, 9]])
    assert out[0]["labels"].tolist() == [1, 0]
    np.testing.assert_array_equal(out[1]["boxes"], [[1, 2, 3, 4], [1, 4, 3, 4]])
    assert out[1]["labels"].tolist() == [2, 3]


def test_paddle_tensors_empty_images_and_results_own_their_memory():
    out = split_detections(paddle.to_tensor(ROWS), paddle.to_tensor(np.array([0, 5, 0], np.int32)), drop_empty=False)
    assert [len(d["scores"]) for d in out] == [0, 4, 0]
    assert out[0]["boxes"].shape == (0, 4)
    rows = ROWS.copy()
    det = split_detections(rows, np.array([5]), drop_empty=False)[0]
    rows[:] = 0
    assert det["scores"][0] == np.float32(0.9)


def test_box_rule_must_be_stated_and_counts_must_match():
    with pytest.raises(TypeError, match="drop_empty"):
        split_detections(ROWS, np.array([5]))  # no default: every caller states its recipe's box rule
    with pytest.raises(ValueError, match="bbox_num sums to 4 but there are 5 rows"):
        split_detections(ROWS, np.array([1, 3]), drop_empty=True)


def test_only_clip_drop_empty_drops_empty_boxes():
    assert [drops_empty_boxes(r) for r in ("clip_drop_empty", "clip_keep", "none")] == [True, False, False]
