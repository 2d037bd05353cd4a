"""The batch contract between the data pipeline and the model / trainer / evaluator.

Data loaders (``fcos.data.loader``) yield :class:`Batch` objects; ``Trainer.training_step`` calls
``model(batch.images, batch.im_shape, batch.scale_factor, batch.targets)`` and the evaluation loop
uses ``batch.image_ids`` to match detections to the COCO ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import paddle

from fcos.data.preprocess import pad_batch


@dataclass
class Sample:
    """One preprocessed image (numpy, so it can cross DataLoader worker processes).

    image: (3, h, w) float32, normalised, not padded; boxes: (M, 4) float32 xyxy in the resized
    frame; labels: (M,) int64 contiguous in [0, num_classes); scale: (sy, sx) = resized / original;
    orig_shape: (H, W) of the original image; image_id: the COCO image id.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    scale: tuple[float, float]
    orig_shape: tuple[int, int]
    image_id: int
    path: str = ""


@dataclass
class Batch:
    """A padded batch as paddle tensors.

    images: (N, 3, H, W) float32; im_shape: (N, 2) float32 (h, w) before padding; scale_factor:
    (N, 2) float32 (sy, sx); targets: per image dict(boxes=(M, 4) float32 xyxy in the network-input
    frame, labels=(M,) int64); image_ids: COCO image ids; orig_shape: (N, 2) int64 numpy; paths: file
    paths (for drawing and debugging).
    """

    images: paddle.Tensor
    im_shape: paddle.Tensor
    scale_factor: paddle.Tensor
    targets: list[dict[str, paddle.Tensor]]
    image_ids: list[int]
    orig_shape: np.ndarray
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.image_ids)


@dataclass
class NumpyBatch:
    """The numpy form of :class:`Batch` that DataLoader workers return (see :func:`collate_samples`)."""

    images: np.ndarray
    im_shape: np.ndarray
    scale_factor: np.ndarray
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    image_ids: list[int]
    orig_shape: np.ndarray
    paths: list[str]

    def to_paddle(self) -> Batch:
        targets = [
            {
                "boxes": paddle.to_tensor(b.reshape(-1, 4).astype("float32")),
                "labels": paddle.to_tensor(lab.astype("int64")),
            }
            for b, lab in zip(self.boxes, self.labels)
        ]
        return Batch(
            images=paddle.to_tensor(self.images),
            im_shape=paddle.to_tensor(self.im_shape),
            scale_factor=paddle.to_tensor(self.scale_factor),
            targets=targets,
            image_ids=list(self.image_ids),
            orig_shape=self.orig_shape,
            paths=list(self.paths),
        )


def collate_samples(samples: Sequence[Sample], size_divisor: int) -> NumpyBatch:
    """Pad ``samples`` to a common size divisible by ``size_divisor`` (bottom/right padding, zeros)."""
    images = [s.image for s in samples]
    return NumpyBatch(
        images=pad_batch(images, size_divisor),
        im_shape=np.asarray([s.image.shape[1:] for s in samples], dtype=np.float32),
        scale_factor=np.asarray([s.scale for s in samples], dtype=np.float32),
        boxes=[np.asarray(s.boxes, dtype=np.float32).reshape(-1, 4) for s in samples],
        labels=[np.asarray(s.labels, dtype=np.int64).reshape(-1) for s in samples],
        image_ids=[int(s.image_id) for s in samples],
        orig_shape=np.asarray([s.orig_shape for s in samples], dtype=np.int64),
        paths=[s.path for s in samples],
    )


def as_batch(obj: Any) -> Batch:
    """Accept a :class:`Batch` or a :class:`NumpyBatch` and return a :class:`Batch`."""
    return obj.to_paddle() if isinstance(obj, NumpyBatch) else obj
