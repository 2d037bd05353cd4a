"""Measures the global gradient norm and clips it (``optim.clip_grad_norm``)."""

from __future__ import annotations

import math
from typing import Any, Optional

import paddle

from fcos.engine.callbacks.base import Callback


def global_grad_norm(parameters: list[paddle.Tensor]) -> float:
    """L2 norm over all gradients (inf/nan when any gradient is non-finite)."""
    sq = [paddle.sum(paddle.square(p.grad.astype("float32"))) for p in parameters if p.grad is not None]
    if not sq:
        return 0.0
    return math.sqrt(float(paddle.add_n(sq)))


class GradientClip(Callback):
    """Runs before the optimizer step on unscaled gradients. Always records ``train/grad_norm``
    (the NaN guard reads it); scales all gradients by ``max_norm / norm`` when above ``max_norm``."""

    def __init__(self, max_norm: Optional[float] = None) -> None:
        self.max_norm = max_norm

    def on_before_optimizer_step(self, trainer: Any, optimizer: Any) -> None:
        params = [p for p in trainer.module.parameters() if not p.stop_gradient]
        norm = global_grad_norm(params)
        trainer.metrics["train/grad_norm"] = norm
        if self.max_norm and math.isfinite(norm) and norm > self.max_norm:
            factor = self.max_norm / (norm + 1e-6)
            with paddle.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.grad.scale_(factor)
