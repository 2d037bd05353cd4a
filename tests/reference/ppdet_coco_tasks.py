"""PaddleDetection COCO-loading task for ``ppdet_worker.py`` (runs in ``.venv-ppdet``; see ``ppdet_client.py``).

* ``coco_records(ctx, dataset_dir, image_dir, anno_path)``: ``ppdet.data.source.coco.COCODataSet`` with the
  training data fields of configs/datasets/coco_detection.yml (``['image', 'gt_bbox', 'gt_class', 'is_crowd']``,
  load_crowd False, allow_empty False), ``parse_dataset()`` as its reader calls it; returns ``image_ids`` (the
  records kept, in order), per record ``gt_bbox_<id>`` (M, 4) float32 and ``gt_class_<id>`` (M,) int32 exactly as
  stored, and ``catid2clsid`` (category id -> its class index, as pairs).
"""

from __future__ import annotations

import numpy as np


def coco_records(ctx: dict, dataset_dir: str, image_dir: str, anno_path: str) -> dict:
    from ppdet.data.source.coco import COCODataSet

    ds = COCODataSet(
        dataset_dir=dataset_dir,
        image_dir=image_dir,
        anno_path=anno_path,
        data_fields=["image", "gt_bbox", "gt_class", "is_crowd"],
    )
    ds.parse_dataset()
    out: dict = {"image_ids": [], "catid2clsid": [[int(k), int(v)] for k, v in ds.catid2clsid.items()]}
    for rec in ds.roidbs:
        image_id = int(np.asarray(rec["im_id"]).reshape(-1)[0])
        out["image_ids"].append(image_id)
        out[f"gt_bbox_{image_id}"] = np.asarray(rec["gt_bbox"], np.float32).reshape(-1, 4)
        out[f"gt_class_{image_id}"] = np.asarray(rec["gt_class"], np.int32).reshape(-1)
    return out
