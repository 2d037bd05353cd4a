"""COCO datasets: the label <-> category_id <-> name mapping, crowd and degenerate boxes, background images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fcos.data.coco import CocoDetection, DatasetError, LabelMap
from fcos.data.coco_names import COCO_CATEGORY_IDS, COCO_CLASS_NAMES, default_category_ids, default_class_names


def _write(tmp_path, images, anns, cats, name="ann.json"):
    p = tmp_path / name
    p.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(p)


CATS = [{"id": 90, "name": "zebra"}, {"id": 5, "name": "ant"}, {"id": 17, "name": "moose"}]  # unordered, gaps


def _ann(i, image_id, cat, bbox, crowd=0):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": crowd}


def test_label_map_follows_category_id_order_and_round_trips():
    lm = LabelMap.from_categories(CATS)
    assert lm.category_ids == [5, 17, 90]
    assert lm.class_names == ["ant", "moose", "zebra"]
    assert lm.category_to_label == {5: 0, 17: 1, 90: 2}
    stored = json.loads(json.dumps(lm.to_list()))  # what checkpoints / exports keep
    assert stored == [
        {"label": 0, "category_id": 5, "name": "ant"},
        {"label": 1, "category_id": 17, "name": "moose"},
        {"label": 2, "category_id": 90, "name": "zebra"},
    ]
    assert LabelMap.from_list(list(reversed(stored))) == lm
    for label in range(3):
        cid = lm.category_ids[label]
        assert lm.category_to_label[cid] == label


def test_label_map_rejects_bad_input():
    with pytest.raises(DatasetError, match="duplicate category ids"):
        LabelMap.from_categories([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}], "x.json")
    with pytest.raises(DatasetError, match="empty"):
        LabelMap.from_categories([], "x.json")
    with pytest.raises(ValueError, match="0..C-1"):
        LabelMap.from_list([{"label": 1, "category_id": 3, "name": "a"}])


def test_coco_names_tables():
    assert len(set(COCO_CATEGORY_IDS)) == 80 and COCO_CATEGORY_IDS[-1] == 90 and 12 not in COCO_CATEGORY_IDS
    assert default_class_names(80) == list(COCO_CLASS_NAMES) and default_category_ids(80)[11] == 13
    assert default_class_names(3) == ["class_0", "class_1", "class_2"] and default_category_ids(3) == [1, 2, 3]


def test_dataset_labels_crowd_degenerate_and_background(tmp_path):
    images = [
        {"id": 10, "file_name": "a.jpg", "height": 50, "width": 60},
        {"id": 20, "file_name": "b.jpg", "height": 50, "width": 60},  # no annotations: background
        {"id": 30, "file_name": "c.jpg", "height": 50, "width": 60},  # only a crowd box: background
    ]
    anns = [
        _ann(1, 10, 90, [1, 2, 10, 20]),
        _ann(2, 10, 5, [5, 5, 3, 4]),
        _ann(3, 10, 17, [0, 0, 60, 50], crowd=1),
        _ann(4, 10, 17, [5, 5, 0, 4]),  # zero width
        _ann(5, 10, 17, [5, 5, float("nan"), 4]),
        _ann(6, 10, 17, [50, 40, 20, 20]),  # past the border: clipped
        _ann(7, 30, 5, [0, 0, 10, 10], crowd=1),
    ]
    ds = CocoDetection(str(tmp_path), _write(tmp_path, images, anns, CATS))
    assert len(ds) == 3 and ds.ids == [10, 20, 30]
    rec = ds.get_record(0)
    np.testing.assert_allclose(rec["boxes"], [[1, 2, 11, 22], [5, 5, 8, 9], [50, 40, 60, 50]])
    assert rec["labels"].tolist() == [2, 0, 1]
    assert ds.class_names[rec["labels"][0]] == "zebra" and ds.category_ids[rec["labels"][0]] == 90
    assert ds.get_record(1)["boxes"].shape == (0, 4) and ds.get_record(2)["boxes"].shape == (0, 4)
    counts = ds.load_report.counts
    assert counts["crowd annotations dropped"] == 2
    assert counts["dropped (x2<=x1 or y2<=y1)"] == 1
    assert counts["dropped (NaN/inf coordinate)"] == 1
    assert counts["clipped (past the border)"] == 1
    with_crowd = CocoDetection(str(tmp_path), _write(tmp_path, images, anns, CATS), include_crowd=True)
    assert with_crowd.get_record(0)["iscrowd"].tolist() == [0, 0, 1, 0]


def test_unknown_category_and_duplicate_image_id_name_the_file(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "height": 5, "width": 5}]
    path = _write(tmp_path, images, [_ann(42, 1, 6, [0, 0, 1, 1])], CATS)
    with pytest.raises(DatasetError) as e:
        CocoDetection(str(tmp_path), path)
    assert "ann.json" in str(e.value) and "annotation id 42" in str(e.value) and "category_id 6" in str(e.value)
    path = _write(tmp_path, images + [{"id": 1, "file_name": "b.jpg", "height": 5, "width": 5}], [], CATS)
    with pytest.raises(DatasetError, match="duplicate image id 1"):
        CocoDetection(str(tmp_path), path)


def test_config_class_names_must_match(tmp_path):
    path = _write(tmp_path, [], [], CATS)
    assert CocoDetection(str(tmp_path), path, class_names=["ant", "moose", "zebra"]).num_classes == 3
    with pytest.raises(DatasetError, match="do not match"):
        CocoDetection(str(tmp_path), path, class_names=["zebra", "ant", "moose"])


def test_val_set_uses_the_train_label_map(tmp_path):
    train_map = LabelMap.from_categories(CATS)
    images = [{"id": 1, "file_name": "a.jpg", "height": 50, "width": 50}]
    val_cats = [{"id": 90, "name": "zebra"}]  # a subset: label must still be 2, not 0
    val = CocoDetection(
        str(tmp_path), _write(tmp_path, images, [_ann(1, 1, 90, [1, 1, 5, 5])], val_cats), label_map=train_map
    )
    assert val.get_record(0)["labels"].tolist() == [2] and val.num_classes == 3
    renamed = [{"id": 90, "name": "horse"}]
    with pytest.raises(DatasetError, match="'horse' here but 'zebra'"):
        CocoDetection(str(tmp_path), _write(tmp_path, images, [], renamed), label_map=train_map)
    extra = [{"id": 91, "name": "yak"}]
    with pytest.raises(DatasetError, match="category id 91"):
        CocoDetection(str(tmp_path), _write(tmp_path, images, [], extra), label_map=train_map)


def test_missing_image_size_is_read_from_the_file(tmp_path):
    Image.new("RGB", (33, 22)).save(str(tmp_path / "a.png"))
    ds = CocoDetection(str(tmp_path), _write(tmp_path, [{"id": 1, "file_name": "a.png"}], [], CATS))
    rec = ds.get_record(0)
    assert (rec["height"], rec["width"]) == (22, 33)


def test_invalid_json_and_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        CocoDetection(str(tmp_path), str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(DatasetError, match="bad.json: invalid JSON"):
        CocoDetection(str(tmp_path), str(tmp_path / "bad.json"))
