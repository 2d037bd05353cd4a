"""Training: :class:`Trainer` (the loop), :func:`build_trainer` (wiring from a config), callbacks in
:mod:`fcos.engine.callbacks`, checkpoints in :mod:`fcos.engine.checkpoint`."""

from fcos.engine.build import build_trainer
from fcos.engine.state import TrainState
from fcos.engine.trainer import Trainer

__all__ = ["TrainState", "Trainer", "build_trainer"]
