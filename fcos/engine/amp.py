"""Mixed precision: ``paddle.amp.auto_cast`` + ``GradScaler`` on GPU, plain fp32 elsewhere.

One object owns the three AMP touch points of a step (forward context, backward, optimizer step)
so the training loop has a single code path. Loss terms are cast to fp32 before they are summed.
With fp16 the dynamic loss scaler skips steps whose gradients overflow (weights stay finite) and
lowers the scale; bf16 needs no scaler. On CPU Paddle's autocast does nothing, so AMP falls back to
fp32 with one clear message.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import paddle

logger = logging.getLogger(__name__)


def amp_available() -> bool:
    """True when Paddle can run mixed precision here (a CUDA build on a GPU device)."""
    return bool(paddle.is_compiled_with_cuda()) and paddle.get_device().startswith("gpu")


class MixedPrecision:
    """``enabled`` requests AMP with ``dtype`` ("float16" | "bfloat16"); ``active`` says whether it is used."""

    def __init__(self, enabled: bool = False, dtype: str = "float16", init_scale: float = 2.0**16) -> None:
        if dtype not in ("float16", "bfloat16"):
            raise ValueError(f"train.amp_dtype must be float16 or bfloat16, got {dtype!r}")
        self.dtype = dtype
        self.active = bool(enabled) and amp_available()
        if enabled and not self.active:
            logger.warning(
                "train.amp=true but this Paddle runs on %s: mixed precision needs a CUDA GPU; training in fp32",
                paddle.get_device(),
            )
        self.scaler = None
        if self.active and dtype == "float16":
            self.scaler = paddle.amp.GradScaler(init_loss_scaling=init_scale, incr_every_n_steps=2000)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Forward context: fp16/bf16 for white-listed ops when active, nothing otherwise."""
        if not self.active:
            yield
            return
        with paddle.amp.auto_cast(enable=True, level="O1", dtype=self.dtype):
            yield

    def backward(self, loss: paddle.Tensor) -> None:
        """``loss.backward()``, scaled when the fp16 scaler is on. ``loss`` must be fp32."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def unscale(self, optimizer: paddle.optimizer.Optimizer) -> None:
        """Bring gradients back to their true scale before clipping or inspecting them."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: paddle.optimizer.Optimizer) -> bool:
        """Apply the update; with the scaler, overflowing steps are skipped. Returns True if applied."""
        if self.scaler is None:
            optimizer.step()
            return True
        scale_before = float(self.scaler._scale.item()) if hasattr(self.scaler, "_scale") else None
        self.scaler.step(optimizer)
        found_inf = bool(getattr(self.scaler, "_found_inf", paddle.to_tensor(False)).item())
        self.scaler.update()
        if found_inf:
            logger.info("AMP: gradient overflow at loss scale %s; step skipped", scale_before)
        return not found_inf

    @property
    def loss_scale(self) -> float:
        if self.scaler is None:
            return 1.0
        return float(self.scaler._scale.item())

    def state_dict(self) -> dict[str, Any]:
        if self.scaler is None:
            return {}
        sd = self.scaler.state_dict()
        return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in sd.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
