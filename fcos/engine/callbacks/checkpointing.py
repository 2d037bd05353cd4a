"""Periodic ``step_<n>.safetensors`` checkpoints (keep the newest N; the newest is "last") and
``best.safetensors`` (weights only, with metadata: what tools/eval.py, infer.py and export.py take)."""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from fcos.engine.callbacks.base import Callback
from fcos.engine.checkpoint import BEST_FILE, list_step_checkpoints, remove_stale_temp_files

logger = logging.getLogger(__name__)


class ModelCheckpoint(Callback):
    """Saves every ``every_n_steps`` steps and at the end of training (rank 0 only), keeps the newest
    ``keep_last`` step files (full trainer checkpoints for ``--resume``), and writes the evaluated
    weights to ``best.safetensors`` when ``monitor`` improves (``mode`` max or min). A run that met a non-finite loss (``state.nan_seen``) never replaces ``best``. Runs after
    the other callbacks (``monitoring``), so it sees the evaluation of the same step.
    """

    monitoring = True

    def __init__(
        self, dirpath: str, every_n_steps: int, keep_last: int = 3, monitor: str = "val/bbox_mAP", mode: str = "max"
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.dirpath = dirpath
        self.every_n_steps = every_n_steps
        self.keep_last = max(1, keep_last)
        self.monitor = monitor
        self.mode = mode
        self._last_saved_step = -1
        self._active = False

    @property
    def best_path(self) -> str:
        return os.path.join(self.dirpath, BEST_FILE)

    def step_path(self, step: int) -> str:
        return os.path.join(self.dirpath, f"step_{step:07d}.safetensors")

    def setup(self, trainer: Any, stage: str) -> None:
        self._active = stage == "fit"  # evaluation-only runs never write checkpoints
        if self._active and trainer.is_main and os.path.isdir(self.dirpath):
            n = remove_stale_temp_files(self.dirpath)
            if n:
                logger.info("removed %d unfinished temp file(s) from %s", n, self.dirpath)

    def on_exception(self, trainer: Any, exc: BaseException) -> None:
        if trainer.is_main and os.path.isdir(self.dirpath):
            remove_stale_temp_files(self.dirpath)

    def _save_step(self, trainer: Any) -> None:
        step = trainer.state.global_step
        if step == self._last_saved_step or not trainer.is_main or not self._active:
            return
        path = self.step_path(step)
        trainer.save_checkpoint(path)
        self._last_saved_step = step
        logger.info("saved checkpoint %s", path)
        for old in list_step_checkpoints(self.dirpath)[: -self.keep_last]:
            try:
                os.remove(old)
            except OSError as e:
                logger.warning("could not remove old checkpoint %s: %s", old, e)

    def on_train_batch_end(self, trainer: Any, outputs: dict[str, float], batch: Any, step: int) -> None:
        if self.every_n_steps > 0 and (step + 1) % self.every_n_steps == 0:
            self._save_step(trainer)

    def on_fit_end(self, trainer: Any) -> None:
        self._save_step(trainer)

    def _better(self, value: float, best: Any) -> bool:
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        value = metrics.get(self.monitor)
        state = trainer.state
        if not self._active:
            return
        if value is None:
            if metrics:
                logger.warning("checkpoint monitor '%s' is not among the metrics %s", self.monitor, sorted(metrics))
            return
        if not math.isfinite(value) or state.nan_seen:
            logger.warning("not updating best: %s=%s after a non-finite loss in this run", self.monitor, value)
            return
        if self._better(value, state.best_metric):
            state.best_metric = float(value)
            state.best_step = state.global_step
            if trainer.is_main:
                trainer.save_weights(self.best_path, extra={"monitor": self.monitor, "value": float(value)})
                logger.info("new best %s=%.4f at step %d -> %s", self.monitor, value, state.global_step, self.best_path)

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "mode": self.mode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and (state.get("monitor"), state.get("mode")) != (self.monitor, self.mode):
            logger.warning(
                "checkpoint monitored %s (%s), now %s (%s): the stored best value is compared as is",
                state.get("monitor"),
                state.get("mode"),
                self.monitor,
                self.mode,
            )
