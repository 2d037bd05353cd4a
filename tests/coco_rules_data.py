"""A COCO file with every loading edge case the references treat differently (crowd boxes, duplicates, boxes past
or outside the border, zero/negative size, sub-pixel and sliver boxes, JSON area 0, 4-decimal coordinates, images
with no / only crowd / only degenerate / only outside boxes, unsorted non-contiguous category ids). Shared by
tests/test_coco_rules.py (hand-computed expectations) and tests/reference/test_coco_loading_parity.py."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np

WIDTH, HEIGHT = 64, 48
CATEGORIES = [{"id": 7, "name": "g"}, {"id": 3, "name": "c"}, {"id": 12, "name": "l"}]  # unsorted on purpose

# (image id, category id, bbox, iscrowd, area or None for w*h)
ANNOTATIONS = [
    (1, 7, [10, 10, 20, 15], 0, None),  # a plain box
    (1, 3, [0, 0, 64, 48], 1, None),  # crowd
    (1, 7, [10, 10, 20, 15], 0, None),  # the same box again
    (1, 12, [-5, 40, 20, 20], 0, None),  # past the left and bottom borders: clipped to [0, 40, 15, 48]
    (1, 3, [70, 5, 10, 10], 0, None),  # entirely right of the image
    (1, 3, [5, 5, 0, 10], 0, None),  # zero width
    (1, 12, [5, 5, 10, -3], 0, None),  # negative height
    (1, 7, [30.1234, 20.5678, 10.1111, 5.2222], 0, None),  # 4 decimals (PaddleDetection rounds to 3)
    (1, 3, [40, 30, 0.5, 0.5], 0, None),  # half a pixel
    (1, 12, [50, 2, 8, 8], 0, 0.0),  # JSON area 0 (PaddleDetection drops it)
    (1, 7, [1, 1, 2e-5, 6], 0, None),  # a 2e-5 px sliver (above every 1e-5 threshold)
    (2, 3, [5, 5, 20, 20], 1, None),  # image 2: only a crowd box
    (4, 3, [5, 5, 0, 10], 0, None),  # image 4: only a zero-width box
    (5, 3, [3, 3, 0.5, 0.5], 0, None),  # image 5: only a half-pixel box
    (6, 12, [100, 100, 10, 10], 0, None),  # image 6: only a box outside the image
    (7, 7, [5, 5, 10, 10], 0, 0.0),  # image 7: only a box with JSON area 0
]
NUM_IMAGES = 7  # image 3 has no annotation


def write_coco_rules_dataset(root: str) -> tuple[str, str]:
    """Writes ``root``/images/im<i>.png (64x48) and ``root``/tricky.json; returns (image_dir, ann_file)."""
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    images = []
    for i in range(1, NUM_IMAGES + 1):
        name = f"im{i}.png"
        cv2.imwrite(os.path.join(image_dir, name), np.full((HEIGHT, WIDTH, 3), 20 * i, np.uint8))
        images.append({"id": i, "file_name": name, "height": HEIGHT, "width": WIDTH})
    anns = []
    for k, (image_id, cat, bbox, crowd, area) in enumerate(ANNOTATIONS, start=1):
        x, y, w, h = bbox
        poly = [x, y, x + w, y, x + w, y + h, x, y + h]
        anns.append(
            {
                "id": k,
                "image_id": image_id,
                "category_id": cat,
                "bbox": bbox,
                "iscrowd": crowd,
                "area": float(w * h) if area is None else area,
                "segmentation": [poly],
            }
        )
    ann_file = os.path.join(root, "tricky.json")
    with open(ann_file, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": anns, "categories": CATEGORIES}, f)
    return image_dir, ann_file
