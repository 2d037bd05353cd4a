"""Progress: a tqdm bar on a terminal, one log line every ``log_every`` steps in files and CI logs."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Optional

from fcos.engine.callbacks.base import Callback

logger = logging.getLogger("fcos.train")


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class ProgressBar(Callback):
    """Shows step/max_steps, ETA, the losses, lr and images/s (``trainer.metrics``). A plain line is
    logged every ``log_every`` steps (``train.log``, CI logs); on a terminal a tqdm bar is refreshed
    every step as well, with the log lines printed above it. Rank 0 only."""

    def __init__(self, log_every: int = 20, use_tqdm: Optional[bool] = None) -> None:
        self.log_every = max(1, log_every)
        self.use_tqdm = sys.stderr.isatty() if use_tqdm is None else use_tqdm
        self._bar: Any = None
        self._redirect: Any = None
        self._t0 = 0.0
        self._step0 = 0

    def on_fit_start(self, trainer: Any) -> None:
        if not trainer.is_main:
            return
        self._t0 = time.perf_counter()
        self._step0 = trainer.state.global_step
        if self.use_tqdm:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(
                total=trainer.state.max_steps, initial=trainer.state.global_step, dynamic_ncols=True, unit="step"
            )
            self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger("fcos")])
            self._redirect.__enter__()

    def _line(self, trainer: Any) -> str:
        m = trainer.metrics
        losses = " ".join(f"{k[6:]}={v:.4f}" for k, v in m.items() if k.startswith("train/loss"))
        return f"lr={m.get('train/lr', 0.0):.3g} {losses} img/s={m.get('train/images_per_sec', 0.0):.1f}"

    def on_train_batch_end(self, trainer: Any, outputs: dict[str, float], batch: Any, step: int) -> None:
        if not trainer.is_main:
            return
        done, total = step + 1, trainer.state.max_steps
        if self._bar is not None:
            self._bar.update(1)
            if done % self.log_every == 0 or done == total:
                self._bar.set_postfix_str(self._line(trainer), refresh=False)
        if done % self.log_every == 0 or done == total:
            elapsed = time.perf_counter() - self._t0
            rate = (done - self._step0) / max(elapsed, 1e-9)
            eta = format_eta((total - done) / max(rate, 1e-9))
            logger.info("step %d/%d eta %s %s", done, total, eta, self._line(trainer))

    def teardown(self, trainer: Any, stage: str) -> None:
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
