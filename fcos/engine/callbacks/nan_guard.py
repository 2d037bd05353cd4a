"""Stops (or skips) on a non-finite loss or gradient and saves the offending batch."""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np

from fcos.engine.callbacks.base import Callback

logger = logging.getLogger(__name__)


def dump_batch(path: str, batch: Any) -> str:
    """Save a batch's images, im_shape, scale_factor, image ids and targets to ``path`` (.npz, no pickle)."""
    arrays: dict[str, np.ndarray] = {}
    for name in ("images", "im_shape", "scale_factor"):
        value = getattr(batch, name, None)
        if value is not None:
            arrays[name] = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    ids = getattr(batch, "image_ids", None)
    if ids is not None:
        arrays["image_ids"] = np.asarray(ids, dtype=np.int64)
    for i, t in enumerate(getattr(batch, "targets", None) or []):
        for key in ("boxes", "labels"):
            v = t[key]
            arrays[f"target{i}_{key}"] = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **arrays)
    return path


def running_stats(module: Any) -> list[Any]:
    """The tensors a training forward changes besides activations: BatchNorm running mean/variance
    (Paddle keeps them as non-trainable parameters ``_mean`` / ``_variance``)."""
    import paddle.nn as nn

    bn_types = (nn.BatchNorm, nn.BatchNorm1D, nn.BatchNorm2D, nn.BatchNorm3D, nn.SyncBatchNorm)
    out = []
    for layer in module.sublayers(include_self=True):
        if isinstance(layer, bn_types):
            out += [t for t in (getattr(layer, "_mean", None), getattr(layer, "_variance", None)) if t is not None]
    return out


class NaNGuard(Callback):
    """``policy="stop"``: end training at the first non-finite loss/gradient; ``"skip"``: drop that
    step (at most ``max_consecutive_skips`` in a row, then stop). In both cases the update is not
    applied, the batch goes to ``<dump_dir>/step_<n>.npz`` and ``state.nan_seen`` is set so the
    checkpoint callback never records this run as best afterwards. Runs after :class:`GradientClip`.
    """

    def __init__(self, dump_dir: str, policy: str = "stop", max_consecutive_skips: int = 20) -> None:
        if policy not in ("stop", "skip"):
            raise ValueError(f"train.nan_policy must be 'stop' or 'skip', got {policy!r}")
        self.dump_dir = dump_dir
        self.policy = policy
        self.max_consecutive_skips = max_consecutive_skips
        self._batch: Any = None
        self._buffers: dict[str, Any] = {}
        self._consecutive = 0

    def on_train_batch_start(self, trainer: Any, batch: Any, step: int) -> None:
        self._batch = batch
        self._buffers = {id(t): (t, t.clone()) for t in running_stats(trainer.module)}

    def _restore_buffers(self, trainer: Any) -> None:
        for tensor, saved in self._buffers.values():
            tensor.set_value(saved)

    def _trip(self, trainer: Any, what: str) -> None:
        state = trainer.state
        step = state.global_step
        state.skip_step = True
        state.nan_seen = True
        self._consecutive += 1
        self._restore_buffers(trainer)
        path = os.path.join(self.dump_dir, f"step_{step:07d}_rank{trainer.rank}.npz")
        try:
            dump_batch(path, self._batch)
        except Exception as e:  # never let the dump hide the real problem
            path = f"(could not save the batch: {e})"
        ids = getattr(self._batch, "image_ids", None)
        msg = f"non-finite {what} at step {step} (image ids {ids}); batch saved to {path}"
        if self.policy == "stop" or self._consecutive > self.max_consecutive_skips:
            state.should_stop = True
            state.stop_reason = msg
            logger.error(
                "%s. Stopping. Usual fixes: lower optim.lr, longer schedule.warmup_steps, "
                "set optim.clip_grad_norm, check the boxes of these images",
                msg,
            )
        else:
            logger.warning("%s; step skipped (%d in a row)", msg, self._consecutive)

    def on_before_backward(self, trainer: Any, losses: dict[str, Any]) -> None:
        values = {k: float(v) for k, v in losses.items()}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            self._trip(trainer, "loss " + ", ".join(f"{k}={values[k]}" for k in bad))

    def on_before_optimizer_step(self, trainer: Any, optimizer: Any) -> None:
        norm = trainer.metrics.get("train/grad_norm")
        if norm is not None and not math.isfinite(norm) and not trainer.state.skip_step and not trainer.amp.scaler:
            # with the fp16 scaler, overflow is expected now and then: the scaler skips those steps itself
            self._trip(trainer, f"gradient norm ({norm})")

    def on_train_batch_end(self, trainer: Any, outputs: dict[str, float], batch: Any, step: int) -> None:
        if all(math.isfinite(v) for v in outputs.values()) and math.isfinite(
            trainer.metrics.get("train/grad_norm", 0.0)
        ):
            self._consecutive = 0
        self._batch = None
        self._buffers = {}
