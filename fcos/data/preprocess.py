"""The one preprocessing implementation: resize by short/max side, normalise, pad to a divisor.

Training, evaluation, inference and the deploy predictor all call these functions, so a model
sees the same pixels wherever it runs. Pure numpy + OpenCV + Pillow (no Paddle import), so the
deploy predictor can use it without the training stack.

Images enter as BGR ``uint8`` arrays of shape (H, W, 3), the way ``cv2.imread`` returns them.

Each reference resizes differently, and the published AP was measured through its own pipeline, so
the resize is a rule of the recipe (``input.resize_backend`` and ``input.size_rounding``):

* ``pil`` + ``round`` (detectron2 / AdelaiDet ``ResizeShortestEdge``): the uint8 image through Pillow's
  bilinear filter (which widens its support when shrinking), size ``int(x + 0.5)``.
* ``opencv`` + ``round`` (PaddleDetection ``Resize``): ``cv2.resize`` ``INTER_LINEAR`` on the uint8 image.
* ``torch_float`` + ``floor`` (torchvision ``GeneralizedRCNNTransform``): normalise first, then bilinear
  interpolation with half-pixel centres and no antialiasing on the float image (what
  ``F.interpolate(mode="bilinear", align_corners=False)`` computes; here cv2's float ``INTER_LINEAR``),
  size ``floor(side * scale)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
from PIL import Image

from fcos.config import RESIZE_BACKENDS, SIZE_ROUNDINGS, InputConfig

_INTERP = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA}
_PIL_INTERP = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "area": Image.BOX}


def resized_shape(h: int, w: int, short: int, max_size: int, rounding: str = "round") -> tuple[int, int]:
    """New (height, width) for short side ``short`` and long side capped at ``max_size`` (<= 0: no cap).

    ``rounding="round"``: detectron2 ``ResizeShortestEdge.get_output_shape`` (the short side becomes
    exactly ``short``, each side ``int(x + 0.5)``). ``rounding="floor"``: torchvision, one scale
    ``min(short / min(h, w), max_size / max(h, w))`` in double precision and each side
    ``floor(side * scale)`` (so a 300x451 image becomes 800x1202, not 800x1203).
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"image has an empty side: {h}x{w}")
    if rounding == "floor":
        scale = short / min(h, w)
        if max_size > 0:
            scale = min(scale, max_size / max(h, w))
        return max(1, math.floor(h * scale)), max(1, math.floor(w * scale))
    if rounding != "round":
        raise ValueError(f"size rounding must be one of {list(SIZE_ROUNDINGS)}, got {rounding!r}")
    scale = short / min(h, w)
    if h < w:
        newh, neww = float(short), scale * w
    else:
        newh, neww = scale * h, float(short)
    if max_size > 0 and max(newh, neww) > max_size:
        r = max_size / max(newh, neww)
        newh, neww = newh * r, neww * r
    return max(1, int(newh + 0.5)), max(1, int(neww + 0.5))


def resize_to(img: np.ndarray, newh: int, neww: int, backend: str = "pil", interp: str = "bilinear") -> np.ndarray:
    """Resize an (H, W, C) image to (newh, neww) with ``backend`` (see the module docstring).

    "pil" and "opencv" take uint8 images; "torch_float" takes float32 (bilinear only). An image already
    at the size is returned unchanged.
    """
    h, w = img.shape[:2]
    if (newh, neww) == (h, w):
        return img
    if backend == "pil":
        if img.dtype != np.uint8:
            raise ValueError(f"resize backend 'pil' takes uint8 images, got {img.dtype}")
        return np.asarray(Image.fromarray(img).resize((neww, newh), _PIL_INTERP[interp]))
    if backend == "opencv":
        return cv2.resize(img, (neww, newh), interpolation=_INTERP[interp])
    if backend == "torch_float":
        if interp != "bilinear":
            raise ValueError(f"resize backend 'torch_float' is bilinear only, got interp {interp!r}")
        # cv2's float INTER_LINEAR is the same half-pixel, non-antialiased interpolation as torch's
        # F.interpolate(bilinear, align_corners=False); on random images they differ by < 1e-4 of the
        # value range (float32 weight rounding), 10x faster than a numpy re-implementation.
        return cv2.resize(np.asarray(img, dtype=np.float32), (neww, newh), interpolation=cv2.INTER_LINEAR)
    raise ValueError(f"resize backend must be one of {list(RESIZE_BACKENDS)}, got {backend!r}")


def _normalize_hwc(img_bgr: np.ndarray, cfg: InputConfig) -> np.ndarray:
    """BGR (H, W, 3) -> float32 (H, W, 3) in the network's channel order, ``(x [/255] - mean) / std``."""
    x = img_bgr.astype(np.float32)
    if cfg.channel_order == "RGB":
        x = x[:, :, ::-1]
    if cfg.to_unit:
        x = x * np.float32(1.0 / 255.0)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    return (x - mean) / std


def normalize_image(img_bgr: np.ndarray, cfg: InputConfig) -> np.ndarray:
    """BGR uint8 (H, W, 3) -> float32 (3, H, W) in the network's channel order, ``(x [/255] - mean) / std``."""
    return np.ascontiguousarray(_normalize_hwc(img_bgr, cfg).transpose(2, 0, 1))


def prepare_image(
    img_bgr: np.ndarray, cfg: InputConfig, short: int, max_size: int
) -> tuple[np.ndarray, tuple[float, float]]:
    """BGR uint8 (H, W, 3) -> network input float32 (3, h, w) at the recipe's resize rule, and (sy, sx) = new / old.

    "pil" / "opencv" resize the uint8 image, then normalise; "torch_float" normalises, then resizes the
    float image (torchvision's order).
    """
    h, w = img_bgr.shape[:2]
    newh, neww = resized_shape(h, w, short, max_size, cfg.size_rounding)
    if cfg.resize_backend == "torch_float":
        x = resize_to(_normalize_hwc(img_bgr, cfg), newh, neww, cfg.resize_backend, cfg.interp)
        chw = np.ascontiguousarray(x.transpose(2, 0, 1))
    else:
        chw = normalize_image(resize_to(img_bgr, newh, neww, cfg.resize_backend, cfg.interp), cfg)
    return chw, (newh / h, neww / w)


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
        image, (sy, sx) = prepare_image(img, cfg, short, max_size)
        shapes.append(image.shape[1:])
        scales.append((sy, sx))
        chw.append(image)
    return PreparedBatch(
        images=pad_batch(chw, cfg.size_divisor),
        im_shape=np.asarray(shapes, dtype=np.float32),
        scale_factor=np.asarray(scales, dtype=np.float32),
        orig_shape=np.asarray(origs, dtype=np.int64),
    )
