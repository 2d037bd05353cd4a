"""SGD with momentum, parameter groups, and the warmup + multi-step learning-rate schedule.

The learning rate is a pure function of the step (``lr_at``), so a resumed run follows exactly the
same curve: nothing but the step has to be restored. Parameter groups follow detectron2: no weight
decay on normalisation parameters (``optim.weight_decay_norm``) and ``optim.bias_lr_factor`` on biases.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
from dataclasses import dataclass

import paddle
import paddle.nn as nn

from fcos.config import Config
from fcos.modeling.head import FCOSHead

logger = logging.getLogger(__name__)

_NORM_LAYERS = (
    nn.BatchNorm,
    nn.BatchNorm1D,
    nn.BatchNorm2D,
    nn.BatchNorm3D,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
)


@dataclass
class LRSchedule:
    """Linear warmup from ``base_lr * warmup_factor`` to ``base_lr`` over ``warmup_steps``, then ``gamma``
    at each milestone. ``lr_at(step)`` is the rate used for the update that finishes step ``step + 1``."""

    base_lr: float
    milestones: tuple[int, ...]
    gamma: float = 0.1
    warmup_steps: int = 0
    warmup_factor: float = 0.001

    def lr_at(self, step: int) -> float:
        factor = self.gamma ** bisect.bisect_right(list(self.milestones), step)
        if step < self.warmup_steps:
            alpha = step / float(self.warmup_steps)
            factor *= self.warmup_factor * (1.0 - alpha) + alpha
        return self.base_lr * factor

    def state_dict(self) -> dict:
        return {
            "base_lr": self.base_lr,
            "milestones": list(self.milestones),
            "gamma": self.gamma,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
        }


def scaled_base_lr(cfg: Config) -> float:
    """``optim.lr`` scaled by ``data.batch_size / optim.base_batch_size`` (linear scaling rule) when
    ``optim.scale_lr`` is on and the total batch differs from the one the recipe was tuned for."""
    lr = cfg.optim.lr
    k = batch_scale(cfg)
    if k != 1.0:
        scaled = lr * k
        logger.info(
            "linear scaling rule: batch %d vs recipe %d -> lr %.6g (was %.6g)",
            cfg.data.batch_size,
            cfg.optim.base_batch_size,
            scaled,
            lr,
        )
        return scaled
    return lr


def batch_scale(cfg: Config) -> float:
    """k = ``data.batch_size / optim.base_batch_size`` when ``optim.scale_lr`` is on, else 1."""
    total, base = cfg.data.batch_size, cfg.optim.base_batch_size
    if cfg.optim.scale_lr and base > 0 and total != base:
        return total / base
    return 1.0


def scale_schedule_to_batch(cfg: Config) -> Config:
    """``cfg`` with a step-based schedule divided by k = :func:`batch_scale` when ``schedule.scale_steps`` is on.

    detectron2's ``DefaultTrainer.auto_scale_workers``: the LR is multiplied by k (:func:`scaled_base_lr`) and
    ``MAX_ITER``, ``STEPS``, ``WARMUP_ITERS``, ``EVAL_PERIOD``, ``CHECKPOINT_PERIOD`` become ``int(round(x / k))``
    (Python's round, halves to even), so a smaller batch trains the same number of epochs. ``cfg`` itself when
    nothing changes (scaling off, k = 1, or an epoch-based schedule).
    """
    s = cfg.schedule
    k = batch_scale(cfg)
    if not s.scale_steps or s.epochs > 0 or k == 1.0:
        return cfg

    def div(x: int) -> int:
        return int(round(x / k))

    sched = dataclasses.replace(
        s, max_steps=div(s.max_steps), milestones=[div(m) for m in s.milestones], warmup_steps=div(s.warmup_steps)
    )
    train = dataclasses.replace(cfg.train, eval_every=div(cfg.train.eval_every), ckpt_every=div(cfg.train.ckpt_every))
    logger.info(
        "batch %d vs recipe %d: schedule scaled by 1/%.4g -> %d steps, LR steps at %s, warmup %d "
        "(detectron2 auto_scale_workers rule)",
        cfg.data.batch_size,
        cfg.optim.base_batch_size,
        k,
        sched.max_steps,
        sched.milestones,
        sched.warmup_steps,
    )
    return dataclasses.replace(cfg, schedule=sched, train=train)


def resolve_epoch_schedule(cfg: Config, num_images: int) -> Config:
    """``cfg`` with ``schedule.max_steps`` and ``schedule.milestones`` computed from ``schedule.epochs`` and
    ``schedule.milestone_epochs`` for a training set of ``num_images`` images (``num_images // data.batch_size``
    steps per epoch: torchvision's GroupedBatchSampler and PaddleDetection's drop_last reader both drop the last
    partial batch). A schedule in steps (``schedule.epochs`` 0) goes through :func:`scale_schedule_to_batch`
    instead (``cfg`` itself unless ``schedule.scale_steps`` and the batch differs from the recipe's)."""
    s = cfg.schedule
    if s.epochs <= 0:
        return scale_schedule_to_batch(cfg)
    per_epoch = max(1, int(num_images) // max(1, cfg.data.batch_size))
    resolved = dataclasses.replace(
        s, max_steps=s.epochs * per_epoch, milestones=[e * per_epoch for e in s.milestone_epochs]
    )
    logger.info(
        "schedule: %d epochs x %d steps (%d images, batch %d) = %d steps, LR steps at %s",
        s.epochs,
        per_epoch,
        num_images,
        cfg.data.batch_size,
        resolved.max_steps,
        resolved.milestones,
    )
    return dataclasses.replace(cfg, schedule=resolved)


def build_lr_schedule(cfg: Config) -> LRSchedule:
    s = cfg.schedule
    return LRSchedule(
        base_lr=scaled_base_lr(cfg),
        milestones=tuple(s.milestones),
        gamma=s.gamma,
        warmup_steps=s.warmup_steps,
        warmup_factor=s.warmup_factor,
    )


def tower_conv_biases(model: nn.Layer) -> set[int]:
    """ids of the conv biases in every FCOSHead's cls/bbox/share towers (not the predictors')."""
    out: set[int] = set()
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, FCOSHead):
            for tower in (layer.cls_tower, layer.bbox_tower, layer.share_tower):
                for sub in tower.sublayers():
                    if isinstance(sub, nn.Conv2D) and sub.bias is not None:
                        out.add(id(sub.bias))
    return out


def build_param_groups(model: nn.Layer, cfg: Config) -> list[dict]:
    """Trainable parameters split by (weight decay, LR factor): norm layers' parameters get
    ``optim.weight_decay_norm``, every bias ``optim.bias_lr_factor`` (detectron2), the head's tower conv biases
    ``optim.tower_bias_lr_factor`` on top (PaddleDetection), everything else (``optim.weight_decay``, 1)."""
    norm_params: set[int] = set()
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, _NORM_LAYERS) or type(layer).__name__ in ("FrozenBatchNorm2D", "FrozenBatchNorm"):
            norm_params.update(id(p) for p in layer.parameters(include_sublayers=False))
    tower_biases = tower_conv_biases(model)
    o = cfg.optim
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if p.stop_gradient:
            continue
        is_norm = id(p) in norm_params
        is_bias = name.endswith(".bias") or name.endswith("bias")
        wd = o.weight_decay_norm if is_norm else o.weight_decay
        lr_mult = o.bias_lr_factor if is_bias else 1.0  # detectron2: every parameter named "bias", norms' too
        if id(p) in tower_biases:
            lr_mult *= o.tower_bias_lr_factor
        groups.setdefault((wd, lr_mult), []).append(p)
    return [{"params": ps, "weight_decay": wd, "learning_rate": lr} for (wd, lr), ps in groups.items()]


def build_optimizer(model: nn.Layer, cfg: Config) -> paddle.optimizer.Optimizer:
    """Momentum SGD over ``build_param_groups``; the lr is set every step by the LR callback."""
    groups = build_param_groups(model, cfg)
    if not groups:
        raise ValueError("the model has no trainable parameters (check model.backbone.freeze_at)")
    return paddle.optimizer.Momentum(
        learning_rate=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        parameters=groups,
        weight_decay=cfg.optim.weight_decay,
    )
