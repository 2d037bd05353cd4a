"""Train-time augmentation: box math by hand for each resize rule, the sampling distribution of the short side
and the flip (seeded statistical tests), and the references' rule of training only on images with boxes.

The comparisons with the reference pipelines themselves are tests/reference/test_train_augment.py."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
from scipy import stats

from fcos.config import DatasetSplit, InputConfig
from fcos.data.dataset import DetectionDataset
from fcos.data.transforms import train_transform

_RULES = {
    "pil": dict(resize_backend="pil", size_rounding="round"),
    "opencv": dict(resize_backend="opencv", size_rounding="round"),
    "torch_float": dict(resize_backend="torch_float", size_rounding="floor"),
}


def _cfg(rule: str, shorts: list[int], max_size: int) -> InputConfig:
    return InputConfig(mean=[0.0] * 3, std=[1.0] * 3, train_shorts=shorts, train_max=max_size, **_RULES[rule])


@pytest.mark.parametrize("rule", list(_RULES))
@pytest.mark.parametrize("flip", [False, True])
def test_resize_then_flip_box_math(rule: str, flip: bool) -> None:
    """101x203 image, short side 50: round -> 50x100 (203 * 50 / 101 = 100.495), floor -> 50x100 as well; boxes
    scale by (100 / 203, 50 / 101), then x -> 100 - x; a box past the right border is clipped, an empty one dropped,
    a very thin one kept."""
    img = np.zeros((101, 203, 3), np.uint8)
    boxes = np.array(
        [[10.0, 20.0, 50.0, 60.0], [150.0, 0.0, 203.0, 101.0], [7.0, 7.0, 7.0, 9.0], [90.0, 9.0, 90.001, 19.0]],
        np.float32,
    )
    out, b, labels, (sy, sx) = train_transform(
        img, boxes, np.array([1, 2, 3, 4]), np.random.default_rng(0), _cfg(rule, [50], 1000), 1.0 if flip else 0.0
    )
    assert out.shape == (3, 50, 100)
    assert (sy, sx) == pytest.approx((50 / 101, 100 / 203))
    fx, fy = np.float32(100 / 203), np.float32(50 / 101)
    x1, x2 = np.float32(90.0), np.float32(90.001)  # 5e-4 px wide after resizing: kept (detectron2 drops <= 1e-5)
    want = np.array(
        [
            [10 * fx, 20 * fy, 50 * fx, 60 * fy],
            [150 * fx, 0.0, 203 * fx, 101 * fy],
            [x1 * fx, 9 * fy, x2 * fx, 19 * fy],
        ],
        np.float32,
    )
    if flip:
        want[:, [0, 2]] = 100 - want[:, [2, 0]]
    want = np.clip(want, 0, [100, 50, 100, 50])
    np.testing.assert_allclose(b, want, rtol=0, atol=1e-4)
    assert labels.tolist() == [1, 2, 4]


@pytest.mark.parametrize("min_size,kept", [(1e-5, [1]), (0.0, [1, 2])])
def test_train_min_box_size(min_size: float, kept: list[int]) -> None:
    """At scale 1 (100x100 image, short side 100) a box 4e-6 px wide is dropped by detectron2's 1e-5 rule and kept
    by torchvision's / PaddleDetection's (input.train_min_box_size 0); a zero-width box is dropped by both."""
    img = np.zeros((100, 100, 3), np.uint8)
    x = np.float32(40.0)
    boxes = np.array([[10, 10, 20, 20], [x, 10, x + np.float32(4e-6), 30], [50, 10, 50, 30]], np.float32)
    assert 0 < boxes[1, 2] - boxes[1, 0] < 1e-5
    cfg = dataclasses.replace(_cfg("pil", [100], 1000), train_min_box_size=min_size)
    _, b, labels, _ = train_transform(img, boxes, np.array([1, 2, 3]), np.random.default_rng(0), cfg, 0.0)
    assert labels.tolist() == kept
    np.testing.assert_array_equal(b, boxes[np.array(kept) - 1])


@pytest.mark.parametrize("rule", list(_RULES))
def test_long_side_cap(rule: str) -> None:
    """300x1000 at short 800, max 1333: scale 1.333 -> 399.9 x 1333: 400 rounded, 399 floored (torchvision)."""
    img = np.zeros((300, 1000, 3), np.uint8)
    out, *_ = train_transform(img, np.zeros((0, 4)), np.zeros(0), np.random.default_rng(0), _cfg(rule, [800], 1333), 0)
    assert out.shape[1:] == ((399, 1333) if rule == "torch_float" else (400, 1333))


def test_sampling_is_uniform_over_sizes_and_flips_half() -> None:
    """One generator per sample, as the loader drives it: short sides uniform over train_shorts, flip rate 0.5,
    and the two independent (chi-square and binomial tests, p >= 1e-3, 2400 draws)."""
    shorts = [8, 10, 12, 14, 16, 18]
    cfg = _cfg("pil", shorts, 100)
    img = np.zeros((8, 12, 3), np.uint8)
    box = np.array([[0.0, 0.0, 1.0, 8.0]], np.float32)
    got_s, got_f = [], []
    for i in range(2400):
        out, b, _, _ = train_transform(img, box, np.array([0]), np.random.default_rng([7, i]), cfg, 0.5)
        got_s.append(min(out.shape[1:]))
        got_f.append(bool(b[0, 0] > 0))
    got_s, got_f = np.array(got_s), np.array(got_f)
    assert set(got_s) == set(shorts)
    table = np.array([[np.sum((got_s == s) & (got_f == f)) for s in shorts] for f in (False, True)])
    assert stats.chisquare(table.sum(axis=0)).pvalue >= 1e-3, table
    assert stats.binomtest(int(got_f.sum()), len(got_f), 0.5).pvalue >= 1e-3
    assert stats.chi2_contingency(table).pvalue >= 1e-3, table
    # and a sampler that was not uniform would fail: the same test on sizes drawn with a 10 % bias
    biased = np.random.default_rng(0).choice(shorts, 2400, p=[0.25, 0.15, 0.15, 0.15, 0.15, 0.15])
    assert stats.chisquare([np.sum(biased == s) for s in shorts]).pvalue < 1e-3


def _write_dataset(tmp_path) -> DatasetSplit:
    entries, anns = [], []
    for i in range(1, 4):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), np.full((20, 30, 3), 40 * i, np.uint8))
        entries.append({"id": i, "file_name": f"im{i}.png", "height": 20, "width": 30})
    anns.append({"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "iscrowd": 0})
    anns.append({"id": 2, "image_id": 3, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 0})
    anns.append({"id": 3, "image_id": 2, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": 1})  # crowd only
    (tmp_path / "ann.json").write_text(
        json.dumps({"images": entries, "annotations": anns, "categories": [{"id": 1, "name": "a"}]})
    )
    return DatasetSplit(str(tmp_path), str(tmp_path / "ann.json"))


def test_training_leaves_out_images_without_boxes(tmp_path) -> None:
    """data.drop_images_without_boxes (detectron2 FILTER_EMPTY_ANNOTATIONS, torchvision's
    _coco_remove_images_without_annotations, PaddleDetection allow_empty False): the crowd-only image 2 is not
    trained on; evaluation keeps every image; off, image 2 is a background image."""
    split = _write_dataset(tmp_path)
    cfg = dataclasses.replace(InputConfig(), train_shorts=[20], train_max=40)
    ds = DetectionDataset(split, cfg, train=True, drop_images_without_boxes=True)
    assert len(ds) == 2
    assert sorted(ds[(k, 0)].image_id for k in range(2)) == [1, 3]
    with pytest.raises(IndexError):
        ds[(2, 0)]
    assert len(DetectionDataset(split, cfg, train=True)) == 3
    assert len(DetectionDataset(split, cfg, train=False, drop_images_without_boxes=True)) == 3
    import fcos

    for recipe in ("rt_dla34", "rt_r50", "tv_r50", "r50_ms_2x"):
        assert fcos.load_config(f"configs/{recipe}.yml").data.drop_images_without_boxes
