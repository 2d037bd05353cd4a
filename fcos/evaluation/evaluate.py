"""Stand-alone evaluation of a weights file (what ``tools/eval.py`` runs)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

from fcos.config import Config
from fcos.evaluation.coco_eval import CocoEvaluator
from fcos.evaluation.loop import run_evaluation
from fcos.evaluation.plots import plot_pr_curves
from fcos.utils import dist
from fcos.utils.runtime import setup_cpu_runtime

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    metrics: dict[str, float]  # "val/bbox_mAP", ... (the 12 COCO numbers)
    per_class: dict[str, float]  # class name -> AP@[.5:.95]
    summary_table: str
    per_class_table: str
    report: str  # the weights load report
    metrics_path: str
    pr_curve_path: str


def evaluate_weights(cfg: Config, weights: str, out_dir: str) -> Optional[EvalResult]:
    """Build the model of ``cfg``, load ``weights`` (report logged), evaluate on ``cfg.data.val`` and write
    ``out_dir/metrics.json`` and ``out_dir/pr_curve.png``. Under ``paddle.distributed.launch`` every rank
    takes a share of the images; rank 0 returns the result, the others ``None``."""
    from fcos.checkpoint.weights import load_weights
    from fcos.data.loader import build_val_dataset, build_val_loader
    from fcos.modeling import build_model

    setup_cpu_runtime(cfg.train.num_threads, cfg.train.cpu_conv)
    dist.init_distributed()
    model = build_model(cfg)
    report = load_weights(model, weights)
    if not report.loaded:
        raise ValueError(f"{weights}: no tensor matches the model of {cfg.source}\n{report}")
    if not report.ok:
        logger.warning("%s", report)
    dataset = build_val_dataset(cfg)
    class_names = list(dataset.class_names)
    category_ids = [int(c) for c in dataset.label_map.category_ids]
    stored = report.metadata.get("category_ids")
    if stored and [int(c) for c in stored] != category_ids:
        logger.warning(
            "%s was trained with category ids %s, %s has %s: labels are mapped by position",
            weights,
            stored,
            cfg.data.val.ann_file,
            category_ids,
        )
    evaluator = CocoEvaluator(cfg.data.val.ann_file, category_ids=category_ids, class_names=class_names)
    metrics = run_evaluation(
        model,
        build_val_loader(cfg, dataset),
        evaluator,
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        progress="eval",
    )
    if not dist.is_main_process():
        return None
    metrics_path = os.path.join(out_dir, "metrics.json")
    pr_path = os.path.join(out_dir, "pr_curve.png")
    evaluator.write_json(metrics_path, extra={"weights": os.path.abspath(weights), "config": cfg.source})
    plot_pr_curves(evaluator.pr_curves(), pr_path, title=f"PR @ IoU 0.5: {os.path.basename(weights)}")
    return EvalResult(
        metrics=metrics,
        per_class=dict(evaluator.per_class),
        summary_table=evaluator.summary_table(),
        per_class_table=evaluator.per_class_table(),
        report=str(report),
        metrics_path=metrics_path,
        pr_curve_path=pr_path,
    )
