"""The one preprocessing implementation: resize by short/max side, normalise, pad to a divisor.

Training, evaluation, inference and the deploy predictor all call these functions, so a model
sees the same pixels wherever it runs. Pure numpy + OpenCV (no Paddle import), so the deploy
predictor can use it without the training stack.

Images enter as BGR ``uint8`` arrays of shape (H, W, 3), the way ``cv2.imread`` returns them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from fcos.config import InputConfig

_INTERP = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA}


def resized_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge`` rule: short side to ``short``, long side capped at ``max_size``.

    Returns the new (height, width), each rounded as ``int(x + 0.5)``.
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"image has an empty side: {h}x{w}")
    scale = short / min(h, w)
    if h < w:
        newh, neww = float(short), scale * w
    else:
        newh, neww = scale * h, float(short)
    if max_size > 0 and max(newh, neww) > max_size:
        r = max_size / max(newh, neww)
        newh, neww = newh * r, neww * r
    return max(1, int(newh + 0.5)), max(1, int(neww + 0.5))


def resize_image(
    img: np.ndarray, short: int, max_size: int, interp: str = "bilinear"
) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize an (H, W, C) image; returns the image and its scale factor (sy, sx) = new / old."""
    h, w = img.shape[:2]
    newh, neww = resized_shape(h, w, short, max_size)
    if (newh, neww) != (h, w):
        img = cv2.resize(img, (neww, newh), interpolation=_INTERP[interp])
    return img, (newh / h, neww / w)


def normalize_image(img_bgr: np.ndarray, cfg: InputConfig) -> np.ndarray:
    """BGR uint8 (H, W, 3) -> float32 (3, H, W) in the network's channel order, ``(x [/255] - mean) / std``."""
    x = img_bgr.astype(np.float32)
    if cfg.channel_order == "RGB":
        x = x[:, :, ::-1]
    if cfg.to_unit:
        x = x * np.float32(1.0 / 255.0)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def pad_batch(images: Sequence[np.ndarray], divisor: int) -> np.ndarray:
    """Stack (3, h_i, w_i) arrays into (N, 3, H, W), zero-padded bottom/right, H and W multiples of ``divisor``."""
    if not images:
        raise ValueError("pad_batch needs at least one image")
    hmax = max(im.shape[1] for im in images)
    wmax = max(im.shape[2] for im in images)
    d = max(1, int(divisor))
    H = (hmax + d - 1) // d * d
    W = (wmax + d - 1) // d * d
    out = np.zeros((len(images), images[0].shape[0], H, W), dtype=np.float32)
    for i, im in enumerate(images):
        out[i, :, : im.shape[1], : im.shape[2]] = im
    return out


@dataclass
class PreparedBatch:
    """A network-ready batch.

    images: (N, 3, H, W) float32, padded; im_shape: (N, 2) float32 resized (h, w) before padding;
    scale_factor: (N, 2) float32 (sy, sx) = resized / original; orig_shape: (N, 2) int (h, w).
    Boxes in the resized frame map back to the original by dividing x by sx and y by sy.
    """

    images: np.ndarray
    im_shape: np.ndarray
    scale_factor: np.ndarray
    orig_shape: np.ndarray


def preprocess(
    images: Sequence[np.ndarray],
    cfg: InputConfig,
    short: Optional[int] = None,
    max_size: Optional[int] = None,
) -> PreparedBatch:
    """Resize (test size unless given), normalise and pad a list of BGR uint8 images."""
    short = cfg.test_short if short is None else short
    max_size = cfg.test_max if max_size is None else max_size
    chw, shapes, scales, origs = [], [], [], []
    for img in images:
        if img is None or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            desc = "None" if img is None else f"{img.dtype} {img.shape}"
            raise ValueError(f"preprocess expects BGR uint8 images of shape (H, W, 3), got {desc}")
        origs.append(img.shape[:2])
        resized, (sy, sx) = resize_image(img, short, max_size, cfg.interp)
        shapes.append(resized.shape[:2])
        scales.append((sy, sx))
        chw.append(normalize_image(resized, cfg))
    return PreparedBatch(
        images=pad_batch(chw, cfg.size_divisor),
        im_shape=np.asarray(shapes, dtype=np.float32),
        scale_factor=np.asarray(scales, dtype=np.float32),
        orig_shape=np.asarray(origs, dtype=np.int64),
    )
