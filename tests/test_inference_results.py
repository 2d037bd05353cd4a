"""Results (COCO records, JSON round trip, txt, drawing), box matching and stage timing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fcos.inference.matching import box_iou, match_detections
from fcos.inference.results import Results
from fcos.inference.timing import StageTimer


def _results(**kw) -> Results:
    base = dict(
        boxes=np.array([[10, 20, 50, 80], [0, 0, 5.5, 4.25], [30, 30, 31, 32]], dtype=np.float32),
        scores=np.array([0.9, 0.5, 0.1], dtype=np.float32),
        labels=np.array([2, 0, 1]),
        names=["cat", "dog", "bird"],
        path="/data/imgs/sub/a.jpg",
        category_ids=[7, 11, 42],
    )
    base.update(kw)
    return Results(**base)


def test_to_coco_uses_dataset_category_ids_xywh_and_file_name():
    recs = _results().to_coco(image_id=3)
    assert [r["category_id"] for r in recs] == [42, 7, 11]
    assert recs[0]["bbox"] == [10.0, 20.0, 40.0, 60.0]
    assert recs[1]["bbox"] == [0.0, 0.0, 5.5, 4.25]
    assert all(r["file_name"] == "a.jpg" and r["image_id"] == 3 for r in recs)
    assert [r["score"] for r in recs] == pytest.approx([0.9, 0.5, 0.1], abs=1e-6)


def test_to_coco_threshold_file_name_override_and_default_ids():
    res = _results(category_ids=[])
    recs = res.to_coco(threshold=0.5, file_name="sub/a.jpg")
    assert [r["category_id"] for r in recs] == [3, 1]  # label + 1 without ids
    assert {r["file_name"] for r in recs} == {"sub/a.jpg"}
    assert "image_id" not in recs[0]


def test_to_coco_label_without_category_id_is_an_error():
    with pytest.raises(ValueError, match="label 2 has no category id"):
        _results(category_ids=[1, 2]).to_coco()


def test_json_round_trip():
    res = _results()
    text = res.to_json()
    assert isinstance(json.loads(text), list)
    back = Results.from_json(text, names=res.names, category_ids=res.category_ids)
    np.testing.assert_allclose(back.boxes, res.boxes, atol=1e-3)
    np.testing.assert_allclose(back.scores, res.scores, atol=1e-6)
    np.testing.assert_array_equal(back.labels, res.labels)
    assert back.file_name == "a.jpg" and back.category_ids == [7, 11, 42]


def test_from_coco_rejects_unknown_category_and_missing_keys():
    with pytest.raises(ValueError, match="category_id 5 is not one of"):
        Results.from_coco([{"bbox": [0, 0, 1, 1], "category_id": 5, "score": 0.5}], category_ids=[1, 2])
    with pytest.raises(ValueError, match="COCO record 0"):
        Results.from_coco([{"bbox": [0, 0, 1, 1], "score": 0.5}])


def test_filter_keeps_metadata():
    res = _results().filter(0.5)
    assert len(res) == 2 and res.category_ids == [7, 11, 42] and res.path.endswith("a.jpg")


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same length"):
        Results(boxes=np.zeros((2, 4)), scores=np.zeros(1), labels=np.zeros(2))


def test_plot_draws_only_above_threshold_and_keeps_input():
    img = np.zeros((100, 100, 3), dtype=np.uint8)
    res = _results(image=img)
    drawn = res.plot(threshold=0.6)
    assert img.sum() == 0  # input untouched
    assert drawn.shape == img.shape and drawn.dtype == np.uint8
    assert drawn[50, 10].any()  # left edge of the 0.9 box at x=10
    assert not drawn[90:, 90:].any()  # far from every box
    low = res.plot(threshold=0.0)
    assert low[2, 5].any() and not drawn[2, 5].any()  # the 0.5 box is drawn only at the low threshold
    with pytest.raises(ValueError, match="no image kept"):
        _results().plot()


def test_save_txt(tmp_path):
    path = tmp_path / "labels" / "a.txt"
    _results().save_txt(str(path), threshold=0.3)
    lines = path.read_text().splitlines()
    assert lines == ["2 0.90000 10.00 20.00 50.00 80.00 bird", "0 0.50000 0.00 0.00 5.50 4.25 cat"]
    _results().save_txt(str(path), threshold=0.99)
    assert path.read_text() == ""  # processed, nothing found


def test_box_iou_by_hand():
    a = np.array([[0, 0, 10, 10]], dtype=np.float32)
    b = np.array([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[25 / 175, 1.0, 0.0]], rtol=1e-6)
    assert box_iou(a, np.zeros((0, 4))).shape == (1, 0)


def test_match_detections_label_iou_and_one_to_one():
    ref = _results()
    same = _results(boxes=ref.boxes + 0.01, scores=ref.scores + 0.001)
    stats = match_detections(ref, same, iou_thresh=0.9)
    assert stats.matched == 3 and stats.max_score_diff == pytest.approx(0.001, abs=1e-6)
    assert stats.max_box_diff == pytest.approx(0.01, abs=1e-5)
    relabelled = _results(labels=np.array([0, 0, 1]))
    assert match_detections(ref, relabelled, iou_thresh=0.9).matched == 2
    dup = Results(np.repeat(ref.boxes[:1], 2, 0), np.array([0.9, 0.8]), np.array([2, 2]))
    assert match_detections(dup, ref.filter(0.9), iou_thresh=0.9).matched == 1  # one partner each


def test_stage_timer_skips_warmup_and_reports_fps():
    timer = StageTimer(warmup=2)
    for t in (9.0, 9.0, 0.01, 0.03, 0.02):
        timer.record({"pre": t, "infer": 2 * t, "post": 0.0}, num_images=2)
    assert timer.timed_calls == 3
    med = timer.median_ms()
    assert med["pre"] == pytest.approx(20.0) and med["infer"] == pytest.approx(40.0)
    assert timer.fps() == pytest.approx(2 / 0.06)
    assert "drawing excluded" in timer.summary()
    timer.reset()
    assert timer.timed_calls == 0 and np.isnan(timer.fps())
