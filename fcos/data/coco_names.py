"""COCO 2017 detection classes: the 80 names in contiguous label order and their category ids.

Label ``i`` (0..79, what the model predicts) has name ``COCO_CLASS_NAMES[i]`` and COCO
``category_id`` ``COCO_CATEGORY_IDS[i]`` (ids run 1..90 with gaps, as in instances_*.json).
"""

from __future__ import annotations

COCO_CLASS_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)  # fmt: skip

assert len(COCO_CLASS_NAMES) == 80 and len(COCO_CATEGORY_IDS) == 80


def default_class_names(num_classes: int, names: list[str] | None = None) -> list[str]:
    """``names`` when given, COCO names when ``num_classes == 80``, else ``class_0 .. class_{n-1}``."""
    if names:
        return list(names)
    if num_classes == len(COCO_CLASS_NAMES):
        return list(COCO_CLASS_NAMES)
    return [f"class_{i}" for i in range(num_classes)]


def default_category_ids(num_classes: int, category_ids: list[int] | None = None) -> list[int]:
    """``category_ids`` when given, COCO ids when ``num_classes == 80``, else ``1 .. num_classes``."""
    if category_ids:
        return [int(c) for c in category_ids]
    if num_classes == len(COCO_CATEGORY_IDS):
        return list(COCO_CATEGORY_IDS)
    return list(range(1, num_classes + 1))
