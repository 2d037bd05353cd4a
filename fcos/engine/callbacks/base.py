"""Callback base class with Lightning-style hooks.

Every hook receives the trainer first and does nothing by default. Callbacks read
``trainer.state`` (:class:`fcos.engine.state.TrainState`) and the flat ``trainer.metrics`` dict
(``train/loss_cls``, ``val/bbox_mAP``, ...) and set ``trainer.state.should_stop`` / ``skip_step``;
they never call each other. Callbacks with ``monitoring = True`` (checkpointing, early stopping)
run after all others, so they see the metrics of the same step. ``state_dict`` is saved in the
checkpoint under ``state_key``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import paddle

    from fcos.engine.trainer import Trainer


class Callback:
    monitoring: bool = False  # True: run after the non-monitoring callbacks

    @property
    def state_key(self) -> str:
        return type(self).__name__

    # -- lifetime ---------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, stage: str) -> None:
        """Once before anything else; ``stage`` is "fit" or "validate"."""

    def teardown(self, trainer: Trainer, stage: str) -> None:
        """Once at the very end, also after an exception."""

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None: ...

    # -- training steps -------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: Trainer, batch: Any, step: int) -> None:
        """Before the forward of step ``step`` (0-based; ``trainer.state.global_step == step``)."""

    def on_before_backward(self, trainer: Trainer, losses: dict[str, paddle.Tensor]) -> None:
        """After the forward; may set ``trainer.state.skip_step`` to drop this step."""

    def on_after_backward(self, trainer: Trainer) -> None: ...

    def on_before_optimizer_step(self, trainer: Trainer, optimizer: paddle.optimizer.Optimizer) -> None:
        """Gradients are unscaled (AMP) here; clip or inspect them."""

    def on_train_batch_end(self, trainer: Trainer, outputs: dict[str, float], batch: Any, step: int) -> None:
        """After the update; ``trainer.state.global_step == step + 1``; ``outputs`` are the step's losses."""

    # -- validation -----------------------------------------------------------------------------
    def on_validation_start(self, trainer: Trainer) -> None: ...

    def on_validation_batch_end(self, trainer: Trainer, outputs: list[dict], batch: Any, index: int) -> None:
        """``outputs``: per-image detections dict(boxes, scores, labels) in original pixels."""

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...

    # -- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
        """``checkpoint = {"tensors": {...}, "state": {...}}``; add tensors with a unique prefix."""

    def on_load_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state restored on resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def order_callbacks(callbacks: list[Callback]) -> list[Callback]:
    """List order, except that monitoring callbacks move to the end (keeping their relative order)."""
    return [c for c in callbacks if not c.monitoring] + [c for c in callbacks if c.monitoring]
