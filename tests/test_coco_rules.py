"""COCO loading rules per recipe, by hand on a file with every edge case (tests/coco_rules_data.py): which images
train (data.empty_image_rule: each reference's test for an image without boxes), which boxes they train on
(crowd dropped, duplicates kept, clipped to the image, empty and outside boxes gone, JSON area 0 dropped with
data.drop_zero_area, corners rounded with data.box_decimals), labels in category-id order."""

from __future__ import annotations

import numpy as np
import pytest
from coco_rules_data import write_coco_rules_dataset

import fcos
from fcos.config import ConfigError, DatasetSplit, InputConfig
from fcos.data.dataset import DetectionDataset
from fcos.data.loader import build_train_dataset
from fcos.data.transforms import clean_boxes

# labels follow the category ids in increasing order: 3 -> 0 ("c"), 7 -> 1 ("g"), 12 -> 2 ("l")
C, G, L = 0, 1, 2
IMAGE1 = [  # image 1 after clipping and dropping, JSON order: crowd, outside, zero-width, negative-height gone
    ([10, 10, 30, 25], G),
    ([10, 10, 30, 25], G),  # the duplicate stays (every reference trains on both)
    ([0, 40, 15, 48], L),
    ([30.1234, 20.5678, 40.2345, 25.79], G),
    ([40, 30, 40.5, 30.5], C),
    ([50, 2, 58, 10], L),  # JSON area 0: kept unless drop_zero_area
    ([1, 1, 1.00002, 7], G),
]
EXPECTED = {
    # recipe: {image id: [(box, label), ...]} for the images that train
    "rt_dla34": {1: IMAGE1, 4: [], 5: [([3, 3, 3.5, 3.5], C)], 6: [], 7: [([5, 5, 15, 15], G)]},
    "tv_r50": {1: IMAGE1, 2: [], 6: [], 7: [([5, 5, 15, 15], G)]},
    # PaddleDetection: area-0 box dropped, corners rounded to 3 decimals (40.2345 is 40.23449.. in binary -> 40.234;
    # the 2e-5 px sliver becomes [1, 1, 1, 7], empty, and is dropped)
    "r50_ms_2x": {
        1: IMAGE1[:3] + [([30.123, 20.568, 40.234, 25.79], G)] + IMAGE1[4:5],
        5: [([3, 3, 3.5, 3.5], C)],
        6: [],
    },
    "demo_shapes": {1: IMAGE1, 5: [([3, 3, 3.5, 3.5], C)], 7: [([5, 5, 15, 15], G)]},
}


@pytest.fixture(scope="module")
def tricky(tmp_path_factory):
    return write_coco_rules_dataset(str(tmp_path_factory.mktemp("tricky")))


def training_boxes(ds: DetectionDataset, min_size: float) -> dict[int, list[tuple[list[float], int]]]:
    """Per training image: the boxes the train transform keeps at scale 1 (clipped, width/height > min_size)."""
    out = {}
    for i in range(len(ds)):
        rec = ds.record(i)
        boxes, labels = clean_boxes(rec["boxes"], rec["labels"], rec["height"], rec["width"], min_size)
        out[rec["image_id"]] = [(b.tolist(), int(lab)) for b, lab in zip(boxes, labels)]
    return out


@pytest.mark.parametrize("recipe", list(EXPECTED))
def test_each_recipe_trains_on_its_references_images_and_boxes(tricky, recipe):
    image_dir, ann_file = tricky
    cfg = fcos.load_config(
        f"configs/{recipe}.yml",
        [
            f"data.train.image_dir={image_dir}",
            f"data.train.ann_file={ann_file}",
            "model.num_classes=3",
            "data.class_names=[c, g, l]",
            "data.drop_images_without_boxes=true",
        ],
    )
    got = training_boxes(build_train_dataset(cfg), cfg.input.train_min_box_size)
    want = EXPECTED[recipe]
    assert sorted(got) == sorted(want)
    for image_id, boxes in want.items():
        assert [lab for _, lab in got[image_id]] == [lab for _, lab in boxes], image_id
        np.testing.assert_allclose(
            np.asarray([b for b, _ in got[image_id]], np.float64).reshape(-1, 4),
            np.asarray([b for b, _ in boxes], np.float64).reshape(-1, 4),
            rtol=0,
            atol=4e-6,  # float32 coordinates
        )


def test_rules_without_dropping_keep_every_image(tricky):
    image_dir, ann_file = tricky
    ds = DetectionDataset(DatasetSplit(image_dir, ann_file), InputConfig(), train=True, drop_zero_area=True)
    # area <= 0: the zero-width and negative-height boxes of images 1 and 4 (area w * h), and the two area-0 boxes
    assert len(ds) == 7 and ds.coco.load_report.counts["dropped (area <= 0)"] == 5
    flags = {r: [ds.coco.has_boxes(i, r) for i in range(7)] for r in ("any_annotation", "box_over_1px")}
    assert flags["any_annotation"] == [True, False, False, True, True, True, True]
    assert flags["box_over_1px"] == [True, True, False, False, False, True, True]
    with pytest.raises(ValueError, match="unknown empty-image rule"):
        ds.coco.has_boxes(0, "some")
    with pytest.raises(ConfigError, match="data.empty_image_rule"):
        fcos.load_config("configs/rt_dla34.yml", ["data.empty_image_rule=nonempty"])
