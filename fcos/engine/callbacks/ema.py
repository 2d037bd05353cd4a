"""Exponential moving average of the weights, used for validation and saved as ``ema.*`` tensors."""

from __future__ import annotations

import math
from typing import Any, Optional

import paddle

from fcos.engine.callbacks.base import Callback


class EMA(Callback):
    """``ema = d * ema + (1 - d) * w`` after every applied step, with ``d = decay * (1 - exp(-step / ramp))``
    so early averages follow the weights closely. Buffers (BN statistics) are copied. During
    validation the model runs with the EMA weights; training weights are put back afterwards.
    """

    def __init__(self, decay: float = 0.9998, ramp_steps: int = 2000) -> None:
        self.decay = decay
        self.ramp_steps = ramp_steps
        self.shadow: Optional[dict[str, paddle.Tensor]] = None
        self._backup: Optional[dict[str, paddle.Tensor]] = None

    def _init(self, module: paddle.nn.Layer) -> None:
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_fit_start(self, trainer: Any) -> None:
        if self.shadow is None:
            self._init(trainer.module)

    def on_train_batch_end(self, trainer: Any, outputs: dict[str, float], batch: Any, step: int) -> None:
        if self.shadow is None:
            self._init(trainer.module)
        d = self.decay * (1.0 - math.exp(-(step + 1) / max(1, self.ramp_steps)))
        with paddle.no_grad():
            for k, v in trainer.module.state_dict().items():
                s = self.shadow[k]
                if paddle.is_floating_point(v) and not v.stop_gradient:
                    s.set_value(s * d + v.detach().astype(s.dtype) * (1.0 - d))
                else:
                    s.set_value(v.detach())

    def on_validation_start(self, trainer: Any) -> None:
        if self.shadow is None:
            return
        module = trainer.module
        self._backup = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.set_state_dict(self.shadow)

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        if self._backup is not None:
            trainer.module.set_state_dict(self._backup)
            self._backup = None

    def on_exception(self, trainer: Any, exc: BaseException) -> None:
        self.on_validation_end(trainer, {})

    def on_save_checkpoint(self, trainer: Any, checkpoint: dict[str, Any]) -> None:
        if self.shadow is not None:
            checkpoint["tensors"].update({"ema." + k: v for k, v in self.shadow.items()})

    def on_load_checkpoint(self, trainer: Any, checkpoint: dict[str, Any]) -> None:
        ema = {k[4:]: v for k, v in checkpoint["tensors"].items() if k.startswith("ema.")}
        if ema:
            own = trainer.module.state_dict()
            self.shadow = {k: paddle.to_tensor(v, dtype=own[k].dtype) for k, v in ema.items() if k in own}
