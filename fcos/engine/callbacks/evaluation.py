"""Runs COCO evaluation every ``every_n_steps`` steps and at the end; writes metrics.json and PR curves."""

from __future__ import annotations

import logging
import os
from typing import Any

from fcos.engine.callbacks.base import Callback
from fcos.evaluation.plots import plot_pr_curves

logger = logging.getLogger(__name__)


class PeriodicEvaluation(Callback):
    """Calls ``trainer.validate()`` after step ``k * every_n_steps`` and after the last step
    (``every_n_steps <= 0``: only at the end). On rank 0 it logs the COCO and per-class tables and
    writes ``<out_dir>/metrics.json`` and ``<out_dir>/pr_curve.png`` for the latest evaluation.
    """

    def __init__(self, every_n_steps: int, out_dir: str, eval_at_end: bool = True) -> None:
        self.every_n_steps = every_n_steps
        self.out_dir = out_dir
        self.eval_at_end = eval_at_end

    def on_train_batch_end(self, trainer: Any, outputs: dict[str, float], batch: Any, step: int) -> None:
        if trainer.evaluator is None or trainer.val_loader is None:
            return
        done = step + 1
        periodic = self.every_n_steps > 0 and done % self.every_n_steps == 0
        final = self.eval_at_end and done == trainer.state.max_steps
        if periodic or final:
            trainer.validate()

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        evaluator = trainer.evaluator
        if not trainer.is_main or evaluator is None or not metrics:
            return
        step = trainer.state.global_step
        logger.info("evaluation at step %d:\n%s\n%s", step, evaluator.summary_table(), evaluator.per_class_table())
        try:
            evaluator.write_json(os.path.join(self.out_dir, "metrics.json"), extra={"step": step})
            plot_pr_curves(
                evaluator.pr_curves(), os.path.join(self.out_dir, "pr_curve.png"), title=f"PR @ IoU 0.5, step {step}"
            )
        except Exception as e:  # a plotting problem must not end a long training run
            logger.warning("could not write evaluation files: %s", e)
