"""Training-time image + box transforms (numpy, BGR uint8 images, xyxy pixel boxes).

Boxes use continuous pixel-edge coordinates: a box covering pixel columns 10..19 is x1=10, x2=20.
Resizing scales both by the same factors; a horizontal flip of an image of width W maps
x -> W - x. Resizing and normalisation are :func:`fcos.data.preprocess.prepare_image` (the one
implementation shared with evaluation and inference, following the recipe's ``input.resize_backend``
and ``input.size_rounding``), so training images are network inputs: float32 (3, h, w), normalised.

Optional albumentations transforms come from ``data.albumentations`` in the YAML, a list of
``{name: ClassName, **kwargs}``; albumentations is only imported when that list is non-empty.
"""

from __future__ import annotations

import random
from typing import Any, Optional

import numpy as np

from fcos.config import InputConfig
from fcos.data.preprocess import prepare_image


def resize_with_boxes(
    img: np.ndarray, boxes: np.ndarray, short: int, max_size: int, cfg: InputConfig
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """BGR uint8 (H, W, 3) -> network input (3, h, w) (short side ``short``, long side capped, the
    recipe's resize rule), boxes (M, 4) xyxy scaled along.

    Returns (image float32 (3, h, w), boxes float32, (sy, sx) = new / old).
    """
    out, (sy, sx) = prepare_image(img, cfg, short, max_size)
    scaled = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], dtype=np.float32)
    return out, scaled, (sy, sx)


def hflip_with_boxes(img: np.ndarray, boxes: np.ndarray, chw: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an image left-right, (H, W, C) or with ``chw`` (C, H, W), and its boxes (M, 4) xyxy:
    x1' = W - x2, x2' = W - x1."""
    w = img.shape[2] if chw else img.shape[1]
    flipped = np.ascontiguousarray(img[:, :, ::-1] if chw else img[:, ::-1])
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
    cfg: InputConfig,
    flip_prob: float,
    album: Optional[AlbumentationsTransform] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    """Albumentations (optional) -> random short side from ``cfg.train_shorts`` (long side capped at
    ``cfg.train_max``, the recipe's resize rule) and normalisation -> random horizontal flip.

    All randomness comes from ``rng``. Returns (image float32 (3, h, w) normalised, boxes (M, 4) float32
    xyxy in the resized frame, labels (M,) int64, (sy, sx) resized / original).
    """
    album_seed = int(rng.integers(0, 2**31 - 1))
    short = int(cfg.train_shorts[int(rng.integers(0, len(cfg.train_shorts)))])
    do_flip = bool(rng.random() < flip_prob)
    h0, w0 = img.shape[:2]
    if album is not None:
        img, boxes, labels = album(img, boxes, labels, album_seed)
    img_r, boxes, _ = resize_with_boxes(img, boxes, short, cfg.train_max, cfg)
    # relative to the image as read (albumentations may have cropped or padded it)
    sy, sx = img_r.shape[1] / h0, img_r.shape[2] / w0
    if do_flip:
        img_r, boxes = hflip_with_boxes(img_r, boxes, chw=True)
    # the recipe's rule (input.train_min_box_size): detectron2 clips and then drops boxes of width or height
    # <= 1e-5; torchvision and PaddleDetection clip and drop none after resizing (their loaders dropped empty ones)
    boxes, labels = clean_boxes(boxes, labels, img_r.shape[1], img_r.shape[2], min_size=cfg.train_min_box_size)
    return img_r, boxes, labels, (sy, sx)
