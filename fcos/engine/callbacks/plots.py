"""``metrics.csv`` (one row per logged step) and ``results.png`` (losses and mAP over steps)."""

from __future__ import annotations

import csv
import logging
import os
from typing import Any

from fcos.engine.callbacks.base import Callback
from fcos.evaluation.plots import plot_results

logger = logging.getLogger(__name__)


class MetricsCSV(Callback):
    """Every ``log_every`` steps appends the ``train/*`` metrics, after each evaluation the ``val/*``
    ones, to ``<run_dir>/metrics.csv`` (column ``step``, then one column per metric). The file is
    rewritten atomically as new columns appear; on resume rows after the resumed step are dropped.
    ``results.png`` is redrawn after each evaluation and at the end. Rank 0 only."""

    def __init__(self, run_dir: str, log_every: int) -> None:
        self.path = os.path.join(run_dir, "metrics.csv")
        self.png = os.path.join(run_dir, "results.png")
        self.log_every = max(1, log_every)
        self.rows: dict[int, dict[str, float]] = {}
        self._active = False

    def setup(self, trainer: Any, stage: str) -> None:
        self._active = stage == "fit"  # an evaluation-only run must not rewrite the training history

    def on_fit_start(self, trainer: Any) -> None:
        if not trainer.is_main or not os.path.isfile(self.path):
            return
        start = trainer.state.global_step
        with open(self.path, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                step = int(float(r["step"]))
                if step <= start:  # a resumed run continues the file; a fresh run (start 0) starts over
                    if start > 0:
                        self.rows[step] = {k: float(v) for k, v in r.items() if k != "step" and v not in ("", None)}
        self._write()

    def _add(self, step: int, values: dict[str, float]) -> None:
        self.rows.setdefault(step, {}).update(values)

    def _write(self) -> None:
        columns = sorted({k for r in self.rows.values() for k in r})
        tmp = self.path + ".tmp"
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["step", *columns])
            for step in sorted(self.rows):
                r = self.rows[step]
                w.writerow([step, *[("" if k not in r else f"{r[k]:.6g}") for k in columns]])
        os.replace(tmp, self.path)

    def on_train_batch_end(self, trainer: Any, outputs: dict[str, float], batch: Any, step: int) -> None:
        done = step + 1
        if not trainer.is_main or (done % self.log_every and done != trainer.state.max_steps):
            return
        self._add(done, {k: v for k, v in trainer.metrics.items() if k.startswith("train/")})
        self._write()

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        if not trainer.is_main or not metrics or not self._active:
            return
        self._add(trainer.state.global_step, metrics)
        self._write()
        self._plot()

    def on_fit_end(self, trainer: Any) -> None:
        if trainer.is_main and self.rows:
            self._plot()

    def _plot(self) -> None:
        try:
            plot_results(self.path, self.png)
        except Exception as e:
            logger.warning("could not draw %s: %s", self.png, e)
