"""Sets the learning rate of every step from :class:`fcos.engine.optim.LRSchedule`."""

from __future__ import annotations

import logging
from typing import Any

from fcos.engine.callbacks.base import Callback
from fcos.engine.optim import LRSchedule

logger = logging.getLogger(__name__)


class LRScheduleCallback(Callback):
    """Warmup + multi-step LR as a pure function of the step, so resume reproduces the curve exactly.

    Writes ``trainer.state.lr`` and ``trainer.metrics["train/lr"]``.
    """

    def __init__(self, schedule: LRSchedule) -> None:
        self.schedule = schedule

    def on_train_batch_start(self, trainer: Any, batch: Any, step: int) -> None:
        lr = self.schedule.lr_at(step)
        trainer.optimizer.set_lr(lr)
        trainer.state.lr = lr
        trainer.metrics["train/lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        current = self.schedule.state_dict()
        changed = {k: (state.get(k), v) for k, v in current.items() if k in state and state[k] != v}
        if changed:
            details = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changed.items())
            logger.warning("the LR schedule differs from the checkpoint's (%s); using the config's", details)
