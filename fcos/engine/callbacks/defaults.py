"""The default callback list of a training run, wired explicitly from the config."""

from __future__ import annotations

import os
from typing import Optional

from fcos.config import Config
from fcos.engine.callbacks.base import Callback
from fcos.engine.callbacks.checkpointing import ModelCheckpoint
from fcos.engine.callbacks.early_stopping import EarlyStopping
from fcos.engine.callbacks.ema import EMA
from fcos.engine.callbacks.evaluation import PeriodicEvaluation
from fcos.engine.callbacks.grad_clip import GradientClip
from fcos.engine.callbacks.lr_schedule import LRScheduleCallback
from fcos.engine.callbacks.nan_guard import NaNGuard
from fcos.engine.callbacks.plots import MetricsCSV
from fcos.engine.callbacks.progress import ProgressBar
from fcos.engine.callbacks.visualdl_logger import VisualDLLogger
from fcos.engine.optim import build_lr_schedule


def build_default_callbacks(
    cfg: Config,
    run_dir: str,
    image_paths: Optional[dict[int, str]] = None,
    class_names: Optional[list[str]] = None,
    visualdl: bool = True,
) -> list[Callback]:
    """LR schedule, gradient clip, NaN guard, [EMA], evaluation, progress, VisualDL, metrics.csv/plots,
    then the monitoring callbacks: checkpointing and [early stopping].

    Order matters for: GradientClip before NaNGuard (the guard reads ``train/grad_norm``); EMA before
    evaluation (validation runs on EMA weights); evaluation before the loggers (same-step metrics).
    """
    t = cfg.train
    callbacks: list[Callback] = [
        LRScheduleCallback(build_lr_schedule(cfg)),
        GradientClip(cfg.optim.clip_grad_norm),
        NaNGuard(os.path.join(run_dir, "nan_batches"), policy=t.nan_policy),
    ]
    if t.ema:
        callbacks.append(EMA(decay=t.ema_decay))
    callbacks += [
        PeriodicEvaluation(t.eval_every, out_dir=os.path.join(run_dir, "eval")),
        ProgressBar(t.log_every),
    ]
    if visualdl:
        callbacks.append(
            VisualDLLogger(
                os.path.join(run_dir, "vdl"),
                log_every=t.log_every,
                image_paths=image_paths,
                class_names=class_names or list(cfg.data.class_names),
                num_images=t.vis_images,
                threshold=cfg.export.draw_threshold,
            )
        )
    callbacks += [
        MetricsCSV(run_dir, t.log_every),
        ModelCheckpoint(
            os.path.join(run_dir, "checkpoints"),
            every_n_steps=t.ckpt_every,
            keep_last=t.keep_checkpoints,
            monitor=t.monitor,
            mode=t.monitor_mode,
        ),
    ]
    if t.early_stopping_patience > 0:
        callbacks.append(EarlyStopping(t.monitor, t.monitor_mode, patience=t.early_stopping_patience))
    return callbacks
