"""Typed training state shared by the trainer and its callbacks.

Steps (optimizer iterations) are the only time unit: ``global_step`` counts finished steps, so a
run with ``max_steps=N`` ends with ``global_step == N``. Callbacks read this state and the flat
``trainer.metrics`` dict; they set ``should_stop`` / ``skip_step`` instead of calling each other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class TrainState:
    global_step: int = 0  # finished optimizer steps
    max_steps: int = 0
    start_step: int = 0  # step the current process started (or resumed) from
    batch_size: int = 0  # images per step over all devices
    world_size: int = 1
    lr: float = 0.0
    best_metric: Optional[float] = None  # best value of the monitored metric so far
    best_step: Optional[int] = None
    last_eval_step: Optional[int] = None
    nan_seen: bool = False  # a non-finite loss/gradient happened in this process: never save best after it
    skipped_steps: int = 0  # steps skipped (non-finite loss with nan_policy=skip, or AMP overflow)
    should_stop: bool = False  # set by callbacks (NaN guard, early stopping); the loop ends after the step
    stop_reason: str = ""
    skip_step: bool = False  # set during a step by a callback: do not apply this step's update
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state saved in checkpoints (per-step flags excluded)."""
        d = dataclasses.asdict(self)
        for transient in ("should_stop", "stop_reason", "skip_step", "start_step", "nan_seen"):
            d.pop(transient)
        return d

    def load_dict(self, d: dict[str, Any]) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        for k, v in d.items():
            if k in names:
                setattr(self, k, v)
