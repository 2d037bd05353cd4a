"""``fcos.Detector``: the public dygraph inference API.

    det = fcos.Detector(fcos.load_config("configs/rt_dla34.yml"), weights="weights/rt_dla34.safetensors")
    results = det.predict(["street.jpg", cv2.imread("other.jpg")])   # list[Results]
    cv2.imwrite("out.jpg", results[0].plot(threshold=0.3))

Images go through :func:`fcos.data.preprocess.preprocess` (the same code as training, evaluation and
the deploy predictor); boxes come back in original image pixels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np

from fcos.config import Config
from fcos.data.coco_names import default_category_ids, default_class_names
from fcos.data.preprocess import preprocess
from fcos.inference.results import Results
from fcos.inference.timing import StageTimer
from fcos.utils.detections import drops_empty_boxes, split_detections

logger = logging.getLogger(__name__)

ImageLike = Union[np.ndarray, str]


def resolve_class_info(cfg: Config, metadata: Optional[dict[str, Any]] = None) -> tuple[list[str], list[int]]:
    """(class names, category ids) by priority: weights metadata, ``cfg.data.class_names``, COCO-80
    when ``num_classes == 80``, else ``class_i`` / ``1..C``. Metadata lists of the wrong length are
    ignored with a warning (e.g. fine-tuned weights loaded into a different class count)."""
    num_classes = cfg.model.num_classes
    meta = metadata or {}
    names = meta.get("class_names") or None
    if names is not None and len(names) != num_classes:
        logger.warning(
            "weights metadata has %d class names but the model has %d classes: ignored", len(names), num_classes
        )
        names = None
    names = names or (list(cfg.data.class_names) or None)
    cat_ids = meta.get("category_ids") or None
    if cat_ids is not None and len(cat_ids) != num_classes:
        logger.warning(
            "weights metadata has %d category ids but the model has %d classes: ignored", len(cat_ids), num_classes
        )
        cat_ids = None
    return default_class_names(num_classes, names), default_category_ids(num_classes, cat_ids)


class Detector:
    """Dygraph FCOS inference on lists of images.

    Args:
        cfg: the model's config (architecture, ``input`` preprocessing, class names).
        weights: a weights file read by :func:`fcos.checkpoint.weights.read_weights` (.safetensors,
            .npz, .pdparams, trainer checkpoint; pickle-based files only through the safe loader) and
            loaded with :func:`fcos.checkpoint.weights.load_weights`; its metadata supplies class
            names and category ids.
        model: an already built (and loaded) FCOS layer to use instead of building one.
        class_names / category_ids: override the names and COCO category ids.
    """

    def __init__(
        self,
        cfg: Config,
        weights: Optional[str] = None,
        model: Any = None,
        class_names: Optional[Sequence[str]] = None,
        category_ids: Optional[Sequence[int]] = None,
    ) -> None:
        from fcos.utils.runtime import ensure_cpu_runtime

        ensure_cpu_runtime()  # threads + MKL settings for Python-API users too (tools set them first)
        self.cfg = cfg
        self.load_report: Any = None
        metadata: dict[str, Any] = {}
        if model is None:
            from fcos.modeling import build_model

            model = build_model(cfg)
        if weights:
            from fcos.checkpoint.weights import load_weights, read_weights

            state, metadata = read_weights(weights)
            report = load_weights(model, state)
            report.source = weights
            if report.missing or report.shape_mismatch:
                logger.warning("%s", report)
            self.load_report = report
        self.model = model
        self.model.eval()
        self.metadata = metadata
        names, cat_ids = resolve_class_info(cfg, metadata)
        self.class_names = list(class_names) if class_names else names
        self.category_ids = [int(c) for c in category_ids] if category_ids else cat_ids
        self.timer = StageTimer()
        self.batch_size = 1  # images per forward pass when predict() is not told

    def predict(
        self,
        images: Sequence[ImageLike],
        batch_size: Optional[int] = None,
        keep_images: bool = True,
        paths: Optional[Sequence[str]] = None,
    ) -> list[Results]:
        """Detect objects; ``images`` are BGR uint8 (H, W, 3) arrays or image paths.

        Returns one :class:`Results` per image, in order, with all detections the model kept
        (``model.postprocess.score_thresh`` and above; filter with ``Results.filter(threshold)``):
        boxes (k, 4) xyxy in original pixels. ``batch_size`` (default ``self.batch_size``, 1) images
        share one forward pass;
        ``paths`` names array inputs (``Results.path``).
        """
        import paddle

        if isinstance(images, (np.ndarray, str)):
            images = [images]
        batch_size = self.batch_size if batch_size is None else batch_size
        drop_empty = drops_empty_boxes(self.cfg.model.postprocess.box_rule)
        out: list[Results] = []
        for start in range(0, len(images), max(1, batch_size)):
            chunk = list(images[start : start + max(1, batch_size)])
            t0 = time.perf_counter()
            arrays, names = [], []
            for j, item in enumerate(chunk):
                if isinstance(item, str):
                    from fcos.data.image_io import read_image

                    arrays.append(read_image(item))
                    names.append(item)
                else:
                    arrays.append(item)
                    names.append(paths[start + j] if paths else "")
            batch = preprocess(arrays, self.cfg.input)
            t1 = time.perf_counter()
            with paddle.no_grad():
                bboxes, bbox_num = self.model(
                    paddle.to_tensor(batch.images),
                    paddle.to_tensor(batch.im_shape),
                    paddle.to_tensor(batch.scale_factor),
                )
                rows = bboxes.numpy()  # the copy to host waits for the computation inside the "infer" stage
            t2 = time.perf_counter()
            dets = split_detections(rows, bbox_num.numpy(), drop_empty=drop_empty)
            for det, img, name in zip(dets, arrays, names):
                out.append(
                    Results(
                        boxes=det["boxes"],
                        scores=det["scores"],
                        labels=det["labels"],
                        names=self.class_names,
                        image=img if keep_images else None,
                        path=name,
                        orig_shape=(int(img.shape[0]), int(img.shape[1])),
                        category_ids=self.category_ids,
                    )
                )
            t3 = time.perf_counter()
            self.timer.record({"pre": t1 - t0, "infer": t2 - t1, "post": t3 - t2}, len(chunk))
        return out

    def __call__(self, images: Sequence[ImageLike], **kwargs: Any) -> list[Results]:
        return self.predict(images, **kwargs)
