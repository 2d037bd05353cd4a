"""Training-time image + box transforms (numpy, BGR uint8 images, xyxy pixel boxes).

Boxes use continuous pixel-edge coordinates: a box covering pixel columns 10..19 is x1=10, x2=20.
Resizing scales both by the same factors; a horizontal flip of an image of width W maps
x -> W - x. Resizing itself is :func:`fcos.data.preprocess.resize_image` (the one implementation
shared with evaluation and inference).

Optional albumentations transforms come from ``data.albumentations`` in the YAML, a list of
``{name: ClassName, **kwargs}``; albumentations is only imported when that list is non-empty.
"""

from __future__ import annotations

import random
from typing import Any, Optional

import numpy as np

from fcos.data.preprocess import resize_image


def resize_with_boxes(
    img: np.ndarray, boxes: np.ndarray, short: int, max_size: int, interp: str = "bilinear"
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Resize (short side to ``short``, long side capped) and scale boxes (M, 4) xyxy along.

    Returns (image, boxes float32, (sy, sx) = new / old).
    """
    out, (sy, sx) = resize_image(img, short, max_size, interp)
    scaled = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], dtype=np.float32)
    return out, scaled, (sy, sx)


def hflip_with_boxes(img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an (H, W, C) image left-right and its boxes (M, 4) xyxy: x1' = W - x2, x2' = W - x1."""
    w = img.shape[1]
    flipped = np.ascontiguousarray(img[:, ::-1])
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = w - b[:, [2, 0]]
    return flipped, b


def clean_boxes(
    boxes: np.ndarray, labels: np.ndarray, height: int, width: int, min_size: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to the image and drop those with width or height <= ``min_size`` (after transforms)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
    keep = ((b[:, 2] - b[:, 0]) > min_size) & ((b[:, 3] - b[:, 1]) > min_size) & np.all(np.isfinite(b), axis=1)
    return b[keep], np.asarray(labels, dtype=np.int64).reshape(-1)[keep]


class AlbumentationsTransform:
    """Bounding-box-aware albumentations pipeline built from ``[{name: ClassName, **kwargs}, ...]``.

    Called with an RGB/BGR uint8 image (colour transforms assume nothing about the order except
    where the albumentations class does), xyxy pixel boxes and labels; each call is seeded, so the
    result depends only on ``seed`` (deterministic resume).
    """

    def __init__(self, specs: list[dict[str, Any]], min_visibility: float = 0.0) -> None:
        try:
            import albumentations as A
        except ImportError as e:
            raise ImportError(
                "data.albumentations is set in the config but the 'albumentations' package is not installed; "
                "install it with `pip install albumentations` or remove data.albumentations"
            ) from e
        transforms = []
        for i, spec in enumerate(specs):
            if not isinstance(spec, dict) or "name" not in spec:
                raise ValueError(f"data.albumentations[{i}] must be a mapping with a 'name' key, got {spec!r}")
            kwargs = {k: v for k, v in spec.items() if k != "name"}
            cls = getattr(A, str(spec["name"]), None)
            if cls is None:
                raise ValueError(f"data.albumentations[{i}]: albumentations has no transform named {spec['name']!r}")
            try:
                transforms.append(cls(**kwargs))
            except TypeError as e:
                raise ValueError(f"data.albumentations[{i}] ({spec['name']}): bad arguments {kwargs}: {e}") from e
        self.compose = A.Compose(
            transforms,
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=min_visibility),
        )

    def __call__(
        self, img: np.ndarray, boxes: np.ndarray, labels: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = img.shape[:2]
        boxes, labels = clean_boxes(boxes, labels, h, w)
        random.seed(seed)
        np.random.seed(seed % (2**32))
        if hasattr(self.compose, "set_random_seed"):
            self.compose.set_random_seed(seed % (2**32))
        out = self.compose(image=img, bboxes=boxes.tolist(), labels=labels.tolist())
        image = np.ascontiguousarray(out["image"])
        new_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        new_labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        return image, new_boxes, new_labels


def build_albumentations(specs: Optional[list[dict[str, Any]]]) -> Optional[AlbumentationsTransform]:
    """None when no albumentations transforms are configured (albumentations is not imported)."""
    return AlbumentationsTransform(specs) if specs else None


def train_transform(
    img: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    train_shorts: list[int],
    train_max: int,
    flip_prob: float,
    interp: str = "bilinear",
    album: Optional[AlbumentationsTransform] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    """Albumentations (optional) -> random short side from ``train_shorts`` -> random horizontal flip.

    All randomness comes from ``rng``. Returns (image uint8 (h, w, 3), boxes (M, 4) float32 xyxy in
    the resized frame, labels (M,) int64, (sy, sx) resized / original).
    """
    album_seed = int(rng.integers(0, 2**31 - 1))
    short = int(train_shorts[int(rng.integers(0, len(train_shorts)))])
    do_flip = bool(rng.random() < flip_prob)
    h0, w0 = img.shape[:2]
    if album is not None:
        img, boxes, labels = album(img, boxes, labels, album_seed)
    img_r, boxes, _ = resize_with_boxes(img, boxes, short, train_max, interp)
    # relative to the image as read (albumentations may have cropped or padded it)
    sy, sx = img_r.shape[0] / h0, img_r.shape[1] / w0
    if do_flip:
        img_r, boxes = hflip_with_boxes(img_r, boxes)
    boxes, labels = clean_boxes(boxes, labels, img_r.shape[0], img_r.shape[1])
    return img_r, boxes, labels, (sy, sx)
