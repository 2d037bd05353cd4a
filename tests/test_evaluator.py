"""CocoEvaluator against pycocotools run directly on the same detections (json results file)."""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fcos.evaluation.coco_eval import STAT_NAMES, CocoEvaluator
from fcos.evaluation.plots import plot_pr_curves

CATEGORY_IDS = [3, 7, 11]  # deliberately not 1..C
NAMES = ["circle", "square", "star"]


def _write_gt(path: str, rng: np.random.Generator, num_images: int = 8) -> dict:
    images, anns = [], []
    for i in range(num_images):
        image_id = 100 + i
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 240, "width": 320})
        if i == num_images - 1:
            continue  # an image without annotations still counts
        for _ in range(rng.integers(1, 5)):
            w, h = rng.uniform(6, 150, size=2)
            x, y = rng.uniform(0, 320 - w), rng.uniform(0, 240 - h)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice(CATEGORY_IDS)),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
    data = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, NAMES)],
    }
    with open(path, "w") as f:
        json.dump(data, f)
    return data


def _fake_detections(gt: dict, rng: np.random.Generator) -> dict[int, dict[str, np.ndarray]]:
    """Jittered GT boxes (some with the wrong class) plus random false positives, per image."""
    by_image: dict[int, list] = {img["id"]: [] for img in gt["images"]}
    for a in gt["annotations"]:
        by_image[a["image_id"]].append(a)
    out = {}
    for image_id, anns in by_image.items():
        boxes, scores, labels = [], [], []
        for a in anns:
            if rng.random() < 0.2:
                continue  # a miss
            x, y, w, h = a["bbox"]
            j = rng.normal(0, 0.08, size=4) * [w, h, w, h]
            boxes.append([x + j[0], y + j[1], x + w + j[2], y + h + j[3]])
            scores.append(rng.uniform(0.3, 1.0))
            label = CATEGORY_IDS.index(a["category_id"])
            labels.append(label if rng.random() > 0.1 else (label + 1) % 3)
        for _ in range(rng.integers(0, 4)):
            x1, y1 = rng.uniform(0, 250), rng.uniform(0, 180)
            boxes.append([x1, y1, x1 + rng.uniform(5, 70), y1 + rng.uniform(5, 60)])
            scores.append(rng.uniform(0.05, 0.6))
            labels.append(int(rng.integers(0, 3)))
        out[image_id] = {
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "scores": np.asarray(scores, dtype=np.float32),
            "labels": np.asarray(labels, dtype=np.int64),
        }
    return out


def _pycocotools_stats(ann_file: str, results: list[dict]) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann_file)
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def _reference_results(dets: dict[int, dict[str, np.ndarray]]) -> list[dict]:
    """COCO results written independently of fcos (xyxy -> xywh, label -> category id)."""
    res = []
    for image_id, d in dets.items():
        for (x1, y1, x2, y2), s, lab in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()):
            res.append(
                {
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[lab],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": s,
                }
            )
    return res


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_pycocotools(tmp_path, seed):
    rng = np.random.default_rng(seed)
    ann = str(tmp_path / "gt.json")
    gt = _write_gt(ann, rng)
    dets = _fake_detections(gt, rng)
    ev = CocoEvaluator(ann, category_ids=CATEGORY_IDS)
    ids = sorted(dets)
    # two "batches", in a shuffled order: order must not matter
    ev.process(ids[4:], [dets[i] for i in ids[4:]])
    ev.process(ids[:4], [dets[i] for i in ids[:4]])
    metrics = ev.evaluate()
    ref = _pycocotools_stats(ann, _reference_results(dets))
    assert set(metrics) == {f"val/bbox_{n}" for n in STAT_NAMES}
    np.testing.assert_allclose(ev.raw_stats, ref, atol=1e-12)
    np.testing.assert_allclose([metrics[f"val/bbox_{n}"] for n in STAT_NAMES], np.maximum(ref, 0), atol=1e-12)
    assert 0.2 < metrics["val/bbox_mAP"] < 1.0  # the jittered boxes score, the noise does not make it perfect

    # per-class AP equals the mean of pycocotools' precision for that category (area all, 100 dets)
    prec = ev.coco_eval.eval["precision"]
    for k, name in enumerate(NAMES):
        p = prec[:, :, k, 0, -1]
        assert ev.per_class[name] == pytest.approx(float(p[p > -1].mean()))

    out = tmp_path / "metrics.json"
    ev.write_json(str(out), extra={"step": 7})
    data = json.loads(out.read_text())
    assert data["bbox_mAP"] == pytest.approx(max(ref[0], 0))
    assert data["bbox_AP50"] == pytest.approx(max(ref[1], 0))
    assert data["step"] == 7 and data["num_images"] == 8
    assert set(data["per_class_AP"]) == set(NAMES)
    assert "circle" in ev.per_class_table()
    assert "maxDets=100 ] = " in ev.summary_table()


def test_perfect_detections_give_map_one(tmp_path):
    rng = np.random.default_rng(3)
    ann = str(tmp_path / "gt.json")
    gt = _write_gt(ann, rng)
    ev = CocoEvaluator(ann, category_ids=CATEGORY_IDS)
    for img in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        boxes = np.asarray([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        labels = np.asarray([CATEGORY_IDS.index(a["category_id"]) for a in anns], dtype=np.int64)
        ev.process([img["id"]], [{"boxes": boxes, "scores": np.ones(len(anns)), "labels": labels}])
    m = ev.evaluate()
    assert m["val/bbox_mAP"] == pytest.approx(1.0)
    assert m["val/bbox_AP50"] == pytest.approx(1.0)


def test_no_detections_give_zero_without_crash(tmp_path):
    """pycocotools' loadRes([]) crashes; the evaluator gives what COCOeval gives for detections that
    match nothing: 0 for every AP/AR with ground truth, and writes its files."""
    rng = np.random.default_rng(5)
    ann = str(tmp_path / "gt.json")
    gt = _write_gt(ann, rng)
    ev = CocoEvaluator(ann, category_ids=CATEGORY_IDS)
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, dtype=np.int64)}
    ids = [img["id"] for img in gt["images"]]
    ev.process(ids, [empty] * len(ids))
    metrics = ev.evaluate()
    assert all(v == 0.0 for v in metrics.values())

    # reference: pycocotools with a single detection far from every object (it matches nothing)
    far = [{"image_id": ids[0], "category_id": CATEGORY_IDS[0], "bbox": [5000, 5000, 10, 10], "score": 0.5}]
    ref = _pycocotools_stats(ann, far)
    np.testing.assert_allclose(ev.raw_stats, ref, atol=1e-12)
    assert all(v == 0.0 for v in ev.per_class.values())
    ev.write_json(str(tmp_path / "m.json"))
    curves = ev.pr_curves()
    assert all(np.all(curves[n] == 0) for n in NAMES)
    png = plot_pr_curves(curves, str(tmp_path / "pr.png"))
    assert os.path.getsize(png) > 1000


def test_errors_name_the_problem(tmp_path):
    rng = np.random.default_rng(0)
    ann = str(tmp_path / "gt.json")
    _write_gt(ann, rng)
    with pytest.raises(ValueError, match="category ids \\[99\\]"):
        CocoEvaluator(ann, category_ids=[3, 7, 99])
    ev = CocoEvaluator(ann, category_ids=CATEGORY_IDS)
    bad = {"boxes": np.zeros((1, 4)), "scores": np.ones(1), "labels": np.asarray([5])}
    with pytest.raises(ValueError, match="label 5 outside 0..2"):
        ev.process([100], [bad])
    ev.reset()
    ok = {"boxes": np.asarray([[1, 1, 5, 5]]), "scores": np.ones(1), "labels": np.asarray([0])}
    ev.process([12345], [ok])
    with pytest.raises(ValueError, match="not in the ground truth"):
        ev.evaluate()
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoEvaluator(str(tmp_path / "nope.json"), category_ids=CATEGORY_IDS)
