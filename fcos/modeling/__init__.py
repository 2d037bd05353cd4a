"""Model construction: ``build_model(cfg)`` wires backbone -> FPN -> head into :class:`FCOS`.

Backbones are chosen by ``cfg.model.backbone.name`` from the plain dict :data:`BACKBONES`.
"""

from __future__ import annotations

import logging
from typing import Callable

import paddle
import paddle.nn as nn

from fcos.config import BackboneConfig, Config
from fcos.modeling.backbones.dla import DLA
from fcos.modeling.backbones.resnet import ResNet
from fcos.modeling.detector import FCOS
from fcos.modeling.fpn import FPN
from fcos.modeling.head import FCOSHead

__all__ = ["BACKBONES", "FCOS", "build_backbone", "build_model", "load_backbone_weights"]

logger = logging.getLogger(__name__)


def _build_dla34(cfg: BackboneConfig) -> nn.Layer:
    return DLA(levels=cfg.dla_levels, channels=cfg.dla_channels, norm=cfg.norm, freeze_at=cfg.freeze_at)


def _build_resnet(cfg: BackboneConfig) -> nn.Layer:
    return ResNet(depth=cfg.depth, norm=cfg.norm, freeze_at=cfg.freeze_at, stride_in_1x1=cfg.stride_in_1x1)


BACKBONES: dict[str, Callable[[BackboneConfig], nn.Layer]] = {"dla34": _build_dla34, "resnet50": _build_resnet}


def build_backbone(cfg: BackboneConfig) -> nn.Layer:
    """The backbone named ``cfg.name``; it returns [C3, C4, C5] and exposes ``out_channels`` and ``strides``."""
    if cfg.name not in BACKBONES:
        raise ValueError(f"model.backbone.name: unknown backbone {cfg.name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[cfg.name](cfg)


def _use_sync_bn() -> bool:
    # SyncBatchNorm has no CPU kernel (forward fails), and with one process it equals BatchNorm.
    if not paddle.is_compiled_with_cuda():
        return False
    from fcos.utils.dist import get_world_size

    return get_world_size() > 1


def load_backbone_weights(backbone: nn.Layer, path: str) -> None:
    """Load ImageNet weights into ``backbone``: bare keys (``conv1.weight``, ``level2.tree1.conv1.weight``) or
    detector keys (``backbone.*``, prefix stripped, other keys ignored). Logs the load report."""
    from fcos.checkpoint.weights import load_weights, read_weights

    state, _ = read_weights(path)
    prefix = "backbone."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    report = load_weights(backbone, state, strict=False)
    logger.info("model.backbone.pretrained %s: %s", path, report)


def build_model(cfg: Config) -> FCOS:
    """Build the FCOS detector described by ``cfg.model``.

    ``backbone.norm == "syncbn"`` converts the model's BatchNorms to SyncBatchNorm only on CUDA builds with more
    than one process. ``backbone.pretrained`` (a path) is loaded into the backbone with
    :func:`fcos.checkpoint.weights.load_weights` (non-strict; the report is printed).
    """
    m = cfg.model
    backbone = build_backbone(m.backbone)
    fpn = FPN(
        backbone.out_channels,
        out_channels=m.fpn.out_channels,
        num_extra_levels=m.fpn.num_extra_levels,
        extra_source=m.fpn.extra_source,
        relu_before_extra=m.fpn.relu_before_extra,
    )
    head = FCOSHead(
        m.fpn.out_channels,
        m.num_classes,
        num_levels=fpn.num_levels,
        num_convs=m.head.num_convs,
        num_share_convs=m.head.num_share_convs,
        norm=m.head.norm,
        gn_groups=m.head.gn_groups,
        centerness_on_reg=m.head.centerness_on_reg,
        use_scale=m.head.use_scale,
        norm_reg_targets=m.head.norm_reg_targets,
        prior_prob=m.head.prior_prob,
    )
    model = FCOS(backbone, fpn, head, m, grid_strides=m.head.grid_strides)
    if m.backbone.pretrained:
        load_backbone_weights(model.backbone, m.backbone.pretrained)
    if m.backbone.norm == "syncbn" and _use_sync_bn():
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
