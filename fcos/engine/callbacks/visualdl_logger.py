"""VisualDL scalars (losses, lr, images/s, COCO metrics) and validation predictions at the global step.

Start the board with ``visualdl --logdir output --language en``. The step written is always
``trainer.state.global_step``, so the curves of a resumed run continue where they stopped.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np

from fcos.engine.callbacks.base import Callback

logger = logging.getLogger(__name__)


def draw_predictions(
    image_bgr: np.ndarray, det: dict[str, np.ndarray], class_names: list[str], threshold: float
) -> np.ndarray:
    """BGR image with the detections (boxes (k,4) xyxy original pixels) ``>= threshold`` drawn."""
    from fcos.inference.visualize import draw_detections

    return draw_detections(image_bgr, det["boxes"], det["scores"], det["labels"], class_names, threshold)


class VisualDLLogger(Callback):
    """Writes every ``train/*`` metric each ``log_every`` steps and every ``val/*`` metric after each
    evaluation; draws the predictions on the first ``num_images`` validation images (``image_paths``:
    image id -> file). Training runs only (an evaluation-only run adds nothing to the curves); rank 0
    only; a missing VisualDL turns the logger off with a warning."""

    def __init__(
        self,
        log_dir: str,
        log_every: int = 20,
        image_paths: Optional[dict[int, str]] = None,
        class_names: Optional[list[str]] = None,
        num_images: int = 4,
        threshold: float = 0.3,
    ) -> None:
        self.log_dir = log_dir
        self.log_every = max(1, log_every)
        self.image_paths = image_paths or {}
        self.class_names = class_names or []
        self.num_images = num_images
        self.threshold = threshold
        self.writer: Any = None
        self._vis: dict[int, dict[str, np.ndarray]] = {}

    def on_fit_start(self, trainer: Any) -> None:
        if not trainer.is_main or self.writer is not None:
            return
        try:
            from visualdl import LogWriter
        except ImportError:
            logger.warning("visualdl is not installed: no VisualDL logs (pip install visualdl)")
            return
        self.writer = LogWriter(logdir=self.log_dir)
        logger.info("VisualDL logs in %s (view: visualdl --logdir %s --language en)", self.log_dir, self.log_dir)

    def on_train_batch_end(self, trainer: Any, outputs: dict[str, float], batch: Any, step: int) -> None:
        done = step + 1
        if self.writer is None or (done % self.log_every and done != trainer.state.max_steps):
            return
        for k, v in trainer.metrics.items():
            if k.startswith("train/"):
                self.writer.add_scalar(tag=k, value=float(v), step=done)

    def on_validation_start(self, trainer: Any) -> None:
        self._vis = {}

    def on_validation_batch_end(self, trainer: Any, outputs: list[dict], batch: Any, index: int) -> None:
        if self.writer is None or len(self._vis) >= self.num_images:
            return
        for image_id, det in zip(batch.image_ids, outputs):
            if len(self._vis) < self.num_images and int(image_id) in self.image_paths:
                self._vis[int(image_id)] = det

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        step = trainer.state.global_step
        for k, v in metrics.items():
            self.writer.add_scalar(tag=k, value=float(v), step=step)
        for i, (image_id, det) in enumerate(self._vis.items()):
            try:
                from fcos.data.image_io import read_image

                drawn = draw_predictions(read_image(self.image_paths[image_id]), det, self.class_names, self.threshold)
                self.writer.add_image(tag=f"val/predictions_{i}", img=drawn[:, :, ::-1].copy(), step=step)
            except Exception as e:  # drawing is a nicety; never stop training for it
                logger.warning("could not log predictions of image %s: %s", image_id, e)
        self.writer.flush()

    def teardown(self, trainer: Any, stage: str) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
