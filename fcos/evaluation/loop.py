"""The evaluation loop shared by training (``Trainer.validate``) and ``tools/eval.py``."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, Callable, Optional

import paddle

from fcos.evaluation.coco_eval import CocoEvaluator
from fcos.utils.detections import drops_empty_boxes, split_detections


def predict_batch(model: paddle.nn.Layer, batch: Any) -> list[dict]:
    """Eval-mode forward of one ``Batch`` -> per-image dict(boxes (k,4) xyxy original pixels, scores, labels)."""
    bboxes, bbox_num = model(batch.images, batch.im_shape, batch.scale_factor)
    detector = getattr(model, "_layers", model)  # paddle.DataParallel wraps the detector
    drop_empty = drops_empty_boxes(detector.cfg.postprocess.box_rule)
    return split_detections(bboxes.numpy(), bbox_num.numpy(), drop_empty=drop_empty)


def run_evaluation(
    model: paddle.nn.Layer,
    loader: Iterable[Any],
    evaluator: CocoEvaluator,
    on_batch: Optional[Callable[[list[dict], Any, int], None]] = None,
    rank: int = 0,
    world_size: int = 1,
    progress: Optional[str] = None,
) -> dict[str, float]:
    """Predict every batch of ``loader`` and evaluate. With ``world_size`` > 1 each rank runs the model
    on batches ``i % world_size == rank`` (a loader with ``shard(rank, world_size)``, such as
    ``ValLoader``, loads only those) and the evaluator gathers the results; ``model`` is left in
    eval mode (the caller restores train mode). ``progress``: a tqdm bar with this title on rank 0
    (refreshed every 10 s when stderr is not a terminal)."""
    model.eval()
    evaluator.reset()
    stride = world_size
    if world_size > 1 and hasattr(loader, "shard"):
        loader, stride = loader.shard(rank, world_size), 1
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        total = len(loader) if hasattr(loader, "__len__") else None
        tty = sys.stderr.isatty()
        bar = tqdm(total=total, desc=progress, unit="batch", mininterval=0.1 if tty else 10.0, leave=tty)
    with paddle.no_grad():
        for i, batch in enumerate(loader):
            if bar is not None:
                bar.update(1)
            if stride > 1 and i % stride != rank:
                continue
            detections = predict_batch(model, batch)
            evaluator.process(batch.image_ids, detections)
            if on_batch is not None:
                on_batch(detections, batch, i)
    if bar is not None:
        bar.close()
    return evaluator.evaluate()
