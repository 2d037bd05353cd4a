"""COCO loading rules: the images each recipe trains on and their boxes/labels equal its reference's, on a file
with every edge case (tests/coco_rules_data.py) (``make test-reference``).

* rt_dla34 / rt_r50 vs detectron2: ``load_coco_json`` (categories sorted by id -> contiguous ids),
  ``filter_images_with_only_crowd_annotations`` (FILTER_EMPTY_ANNOTATIONS), then ``DatasetMapper(is_train=True)``
  with no augmentation: crowd annotations dropped, ``transform_instance_annotations`` clips to the image,
  ``filter_empty_instances`` drops boxes of width or height <= 1e-5.
* tv_r50 vs torchvision's references/detection/coco_utils.py (pytorch/vision aaca9bd; not in the wheel, so its rules
  are applied here to ``torchvision.datasets.CocoDetection``'s annotations): ``_coco_remove_images_without_annotations``
  keeps an image if some annotation, crowd ones included, has a bbox with w > 1 and h > 1;
  ``ConvertCocoPolysToMask`` drops crowd annotations, converts xywh -> xyxy in float32, clamps to the image and
  keeps x2 > x1 and y2 > y1; labels are the raw category ids (the 91-way model). The later ``--use-v2`` path
  (``wrap_dataset_for_transforms_v2``) keeps crowd boxes as targets and FCOS never looks at ``iscrowd``, but it is
  off by default and the published fcos_resnet50_fpn weights predate it (train.py at 3ceb056 has only this path).
* r50_ms_2x vs PaddleDetection: ``COCODataSet.parse_dataset`` in .venv-ppdet (non-crowd, JSON area > 0,
  x2 - x1 > 1e-5 and y2 - y1 > 1e-5 unclipped, coordinates rounded to 3 decimals, images without such a box
  left out), then ``Resize.apply_bbox``'s clip to the image; boxes it leaves with zero width or height are not
  compared (no point lies strictly inside them, so ``Gt2FCOSTarget`` never assigns them; we drop them).

Ours: the recipe's training dataset (``build_train_dataset``) and the train transform's box cleaning at scale 1.
Labels are compared as category ids. Boxes: exact set and order; coordinates within float32 rounding (4e-6 px:
detectron2 and torchvision add x + w in float32, we in float64; PaddleDetection and r50_ms_2x round the corners to
3 decimals, data.box_decimals).
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from coco_rules_data import write_coco_rules_dataset  # noqa: E402
from parity import recipe_config  # noqa: E402

from fcos.data.loader import build_train_dataset  # noqa: E402
from fcos.data.transforms import clean_boxes  # noqa: E402

Boxes = dict[int, tuple[np.ndarray, list[int]]]  # image id -> (boxes (M, 4) float64 xyxy, category ids)


@pytest.fixture(scope="module")
def tricky(tmp_path_factory):
    return write_coco_rules_dataset(str(tmp_path_factory.mktemp("tricky")))


def _ours(recipe: str, image_dir: str, ann_file: str) -> Boxes:
    cfg = recipe_config(
        recipe,
        [
            f"data.train.image_dir={image_dir}",
            f"data.train.ann_file={ann_file}",
            "model.num_classes=3",
            "data.class_names=[c, g, l]",
        ],
    )
    ds = build_train_dataset(cfg)
    min_size = cfg.input.train_min_box_size
    out = {}
    for i in range(len(ds)):
        rec = ds.record(i)
        boxes, labels = clean_boxes(rec["boxes"], rec["labels"], rec["height"], rec["width"], min_size)
        out[int(rec["image_id"])] = (boxes.astype(np.float64), [ds.label_map.category_ids[int(v)] for v in labels])
    return out


def _compare(name: str, ours: Boxes, ref: Boxes, atol: float) -> float:
    assert sorted(ours) == sorted(ref), f"{name}: training images {sorted(ours)} vs the reference's {sorted(ref)}"
    worst = 0.0
    for image_id, (rb, rc) in ref.items():
        ob, oc = ours[image_id]
        assert oc == rc, f"{name}: image {image_id} categories {oc} vs {rc}"
        assert ob.shape == rb.shape, (name, image_id, ob, rb)
        if len(rb):
            diff = float(np.max(np.abs(ob - rb)))
            worst = max(worst, diff)
            assert diff <= atol, f"{name}: image {image_id} boxes differ by {diff}: {ob} vs {rb}"
    return worst


@pytest.mark.parametrize("recipe", ["rt_dla34", "rt_r50"])
def test_loading_equals_detectron2(tricky, recipe: str) -> None:
    from detectron2.data import DatasetMapper
    from detectron2.data.build import filter_images_with_only_crowd_annotations
    from detectron2.data.datasets import load_coco_json

    image_dir, ann_file = tricky
    dicts = load_coco_json(ann_file, image_dir, dataset_name=f"fcos_tricky_{uuid.uuid4().hex}")
    dicts = filter_images_with_only_crowd_annotations(dicts)
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    cat_ids = sorted(c for c in (7, 3, 12))
    ref = {}
    for d in dicts:
        inst = mapper(dict(d))["instances"]
        ref[int(d["image_id"])] = (
            inst.gt_boxes.tensor.numpy().astype(np.float64).reshape(-1, 4),
            [cat_ids[int(c)] for c in inst.gt_classes],
        )
    worst = _compare(recipe, _ours(recipe, image_dir, ann_file), ref, atol=4e-6)
    print(f"{recipe} vs detectron2: {len(ref)} images, max box difference {worst:.2e} px")


def test_loading_equals_torchvision_recipe(tricky) -> None:
    from torchvision.datasets import CocoDetection

    image_dir, ann_file = tricky
    ds = CocoDetection(image_dir, ann_file)
    ref = {}
    for idx, image_id in enumerate(ds.ids):
        anno = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=image_id, iscrowd=None))
        # _coco_remove_images_without_annotations: some annotation (crowd too) must not have w <= 1 or h <= 1
        if not anno or all(any(v <= 1 for v in a["bbox"][2:]) for a in anno):
            continue
        image, target = ds[idx]
        w, h = image.size
        objs = [a for a in target if a["iscrowd"] == 0]  # ConvertCocoPolysToMask
        boxes = torch.as_tensor([a["bbox"] for a in objs], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(min=0, max=w)
        boxes[:, 1::2].clamp_(min=0, max=h)
        keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
        cats = [a["category_id"] for a, k in zip(objs, keep.tolist()) if k]
        ref[int(image_id)] = (boxes[keep].numpy().astype(np.float64), cats)
    worst = _compare("tv_r50", _ours("tv_r50", image_dir, ann_file), ref, atol=4e-6)
    print(f"tv_r50 vs torchvision: {len(ref)} images, max box difference {worst:.2e} px")


def test_loading_equals_paddledetection(tricky, ppdet_worker) -> None:
    import os

    image_dir, ann_file = tricky
    res = ppdet_worker.call(
        "ppdet_coco_tasks:coco_records",
        dataset_dir=os.path.dirname(ann_file),
        image_dir=os.path.basename(image_dir),
        anno_path=os.path.basename(ann_file),
    )
    clsid2catid = {int(v): int(k) for k, v in res["catid2clsid"]}
    # PaddleDetection's own label order follows the JSON's category list (7, 3, 12), ours the sorted ids
    assert [k for k, _ in sorted(res["catid2clsid"], key=lambda kv: kv[1])] == [7, 3, 12]
    ref = {}
    for image_id in res["image_ids"]:
        b = np.asarray(res[f"gt_bbox_{image_id}"], np.float64).reshape(-1, 4).copy()
        cats = [clsid2catid[int(c)] for c in np.asarray(res[f"gt_class_{image_id}"]).reshape(-1)]
        b[:, 0::2] = np.clip(b[:, 0::2], 0, 64)  # Resize.apply_bbox at scale 1 (the images are 64 x 48)
        b[:, 1::2] = np.clip(b[:, 1::2], 0, 48)
        live = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        ref[int(image_id)] = (b[live], [c for c, k in zip(cats, live) if k])
    worst = _compare("r50_ms_2x", _ours("r50_ms_2x", image_dir, ann_file), ref, atol=4e-6)
    print(f"r50_ms_2x vs PaddleDetection: {len(ref)} images, max box difference {worst:.2e} px")
