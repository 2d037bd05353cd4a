"""Stops training when the monitored metric has not improved for ``patience`` evaluations."""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

from fcos.engine.callbacks.base import Callback

logger = logging.getLogger(__name__)


class EarlyStopping(Callback):
    monitoring = True

    def __init__(
        self, monitor: str = "val/bbox_mAP", mode: str = "max", patience: int = 5, min_delta: float = 0.0
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best: Optional[float] = None
        self.bad_evals = 0

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        value = metrics.get(self.monitor)
        if value is None or not math.isfinite(value):
            return
        if self._improved(value):
            self.best, self.bad_evals = value, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            trainer.state.should_stop = True
            trainer.state.stop_reason = (
                f"early stopping: {self.monitor} did not improve on {self.best:.4f} for {self.bad_evals} evaluations"
            )
            logger.info(trainer.state.stop_reason)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.bad_evals = int(state.get("bad_evals", 0))
