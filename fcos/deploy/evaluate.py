"""COCO evaluation of an exported model directory (fp32, bf16, int8; any backend) with the same evaluator
as ``tools/eval.py -w`` (:class:`fcos.evaluation.coco_eval.CocoEvaluator`), on the predictor's detections.

Images are read from the config's ``data.val`` in file order and fed in batches of
``data.val_batch_size`` (as the dygraph evaluation pads them), through the predictor's own
preprocessing (the export's infer_cfg.yml).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from typing import Optional

from fcos.config import Config
from fcos.data.image_io import ImageReadError
from fcos.deploy.factory import create_predictor
from fcos.evaluation.coco_eval import CocoEvaluator
from fcos.evaluation.evaluate import EvalResult
from fcos.evaluation.plots import plot_pr_curves

logger = logging.getLogger(__name__)


def evaluate_export(
    cfg: Config,
    model_dir: str,
    out_dir: str,
    backend: Optional[str] = None,
    cpu_threads: int = 0,
    progress: bool = True,
) -> EvalResult:
    """Run ``model_dir`` (see :func:`fcos.deploy.factory.create_predictor`) on ``cfg.data.val`` and
    evaluate; writes ``out_dir/metrics.json`` and ``out_dir/pr_curve.png``. Raises DeployError for
    an unusable model directory, ValueError when its classes do not fit the dataset."""
    from tqdm import tqdm

    from fcos.data.loader import build_val_dataset

    predictor = create_predictor(model_dir, backend=backend, cpu_threads=cpu_threads)
    dataset = build_val_dataset(cfg)
    class_names = list(dataset.class_names)
    category_ids = [int(c) for c in dataset.label_map.category_ids]
    if len(predictor.class_names) != len(class_names):
        raise ValueError(
            f"{model_dir} detects {len(predictor.class_names)} classes {predictor.class_names}, "
            f"{cfg.data.val.ann_file} has {len(class_names)} {class_names}"
        )
    if list(predictor.class_names) != class_names:
        logger.warning(
            "%s was exported with classes %s, %s has %s: labels are mapped by position",
            model_dir,
            predictor.class_names,
            cfg.data.val.ann_file,
            class_names,
        )
    evaluator = CocoEvaluator(cfg.data.val.ann_file, category_ids=category_ids, class_names=class_names)
    evaluator.reset()
    coco = dataset.coco
    batch_size = max(1, int(cfg.data.val_batch_size))
    tty = sys.stderr.isatty()
    bar = tqdm(
        total=len(coco), desc="eval", unit="img", disable=not progress, mininterval=0.1 if tty else 10.0, leave=tty
    )

    def jobs() -> Iterator[tuple[list, None, list[int]]]:
        for start in range(0, len(coco), batch_size):
            ids, images = [], []
            for index in range(start, min(start + batch_size, len(coco))):
                try:
                    images.append(coco.load_image(index))
                except ImageReadError as e:
                    logger.warning("skipping unreadable image %s", e)
                    continue
                ids.append(int(coco.get_record(index)["image_id"]))
            bar.update(min(start + batch_size, len(coco)) - start)
            yield images, None, ids

    # predict_stream: an OpenVINO model with runtime.streams > 1 keeps several images in flight
    for ids, results in predictor.predict_stream(jobs(), keep_images=False):
        if ids:
            evaluator.process(ids, [{"boxes": r.boxes, "scores": r.scores, "labels": r.labels} for r in results])
    bar.close()
    metrics = evaluator.evaluate()
    os.makedirs(out_dir, exist_ok=True)
    metrics_path = os.path.join(out_dir, "metrics.json")
    pr_path = os.path.join(out_dir, "pr_curve.png")
    engine = predictor.describe()
    evaluator.write_json(
        metrics_path, extra={"model_dir": os.path.abspath(model_dir), "engine": engine, "config": cfg.source}
    )
    plot_pr_curves(evaluator.pr_curves(), pr_path, title=f"PR @ IoU 0.5: {os.path.basename(model_dir.rstrip('/'))}")
    return EvalResult(
        metrics=metrics,
        per_class=dict(evaluator.per_class),
        summary_table=evaluator.summary_table(),
        per_class_table=evaluator.per_class_table(),
        report="\n".join([f"model: {model_dir} | {engine}"] + [f"note: {n}" for n in predictor.notes]),
        metrics_path=metrics_path,
        pr_curve_path=pr_path,
    )
