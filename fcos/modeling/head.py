"""FCOS head shared by all pyramid levels (AdelaiDet ``FCOSHead`` layout).

Towers are ``Sequential([conv 3x3 (bias), norm, ReLU] * n)``: convs at indices 0, 3, 6, 9 and norms at
1, 4, 7, 10 (with norm "none": [conv, ReLU], convs at 0, 2, 4, 6). With norm "bn" the norm slot holds
one BatchNorm per level (``<tower>.<idx>.<level>.*``, AdelaiDet ``ModuleListDial``).
Predictors ``cls_logits``, ``bbox_pred``, ``ctrness`` are 3x3 convs; ``scales.{l}.scale`` (index 0 = P3).
"""

from __future__ import annotations

from collections.abc import Sequence

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from fcos.modeling.layers import Scale, conv2d, get_norm, init_normal, prior_prob_bias


class PerLevelNorm(nn.LayerList):
    """One norm layer per pyramid level; ``forward(x, level)`` applies the one of ``level``."""

    def forward(self, x: paddle.Tensor, level: int) -> paddle.Tensor:
        return self[level](x)


def _build_tower(num_convs: int, channels: int, norm: str, gn_groups: int, num_levels: int) -> nn.Sequential:
    layers: list[nn.Layer] = []
    for _ in range(num_convs):
        layers.append(conv2d(channels, channels, 3, bias=True))
        if norm == "bn":
            layers.append(PerLevelNorm([get_norm("bn", channels) for _ in range(num_levels)]))
        elif norm == "gn":
            layers.append(get_norm("gn", channels, gn_groups))
        elif norm != "none":
            raise ValueError(f"FCOSHead: model.head.norm must be gn, bn or none, got {norm!r}")
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _run_tower(tower: nn.Sequential, x: paddle.Tensor, level: int) -> paddle.Tensor:
    for layer in tower.children():
        x = layer(x, level) if isinstance(layer, PerLevelNorm) else layer(x)
    return x


class FCOSHead(nn.Layer):
    """Classification, box-regression and centerness predictions for every FPN level.

    Args:
        in_channels: FPN channels.
        num_classes: foreground classes C (sigmoid outputs, no background logit).
        num_levels: number of FPN levels (one Scale and, for norm "bn", one BN per level).
        num_convs: convs in each of ``cls_tower`` and ``bbox_tower``.
        num_share_convs: convs in ``share_tower`` applied before both (0 = identity).
        norm: "gn" | "bn" (per level) | "none".
        gn_groups: GroupNorm groups.
        centerness_on_reg: ``ctrness`` reads the bbox tower (True) or the cls tower.
        use_scale: learnable per-level Scale on the regression output.
        norm_reg_targets: output ReLU(scale * x) in stride units; False: exp(scale * x) in pixels.
        prior_prob: initial foreground probability of the classifier.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_levels: int,
        num_convs: int = 4,
        num_share_convs: int = 0,
        norm: str = "gn",
        gn_groups: int = 32,
        centerness_on_reg: bool = True,
        use_scale: bool = True,
        norm_reg_targets: bool = True,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_levels = num_levels
        self.centerness_on_reg = centerness_on_reg
        self.norm_reg_targets = norm_reg_targets
        self.cls_tower = _build_tower(num_convs, in_channels, norm, gn_groups, num_levels)
        self.bbox_tower = _build_tower(num_convs, in_channels, norm, gn_groups, num_levels)
        self.share_tower = _build_tower(num_share_convs, in_channels, norm, gn_groups, num_levels)
        self.cls_logits = conv2d(in_channels, num_classes, 3, bias=True)
        self.bbox_pred = conv2d(in_channels, 4, 3, bias=True)
        self.ctrness = conv2d(in_channels, 1, 3, bias=True)
        self.scales = nn.LayerList([Scale(1.0) for _ in range(num_levels)]) if use_scale else None
        for layer in self.sublayers():
            if isinstance(layer, nn.Conv2D):
                init_normal(layer, std=0.01, bias=0.0)
        nn.initializer.Constant(prior_prob_bias(prior_prob))(self.cls_logits.bias)

    def forward(
        self, feats: Sequence[paddle.Tensor]
    ) -> tuple[list[paddle.Tensor], list[paddle.Tensor], list[paddle.Tensor]]:
        """Per level l of (N, in_channels, H_l, W_l) features returns three lists:
        cls logits (N, C, H_l, W_l), box regression (N, 4, H_l, W_l) as distances l, t, r, b (>= 0; in units of
        the level stride when ``norm_reg_targets``, else pixels) and centerness logits (N, 1, H_l, W_l).
        """
        if len(feats) != self.num_levels:
            raise ValueError(f"FCOSHead: built for {self.num_levels} levels, got {len(feats)} feature maps")
        cls_logits, bbox_reg, ctr_logits = [], [], []
        for level, feat in enumerate(feats):
            feat = _run_tower(self.share_tower, feat, level)
            cls_feat = _run_tower(self.cls_tower, feat, level)
            bbox_feat = _run_tower(self.bbox_tower, feat, level)
            cls_logits.append(self.cls_logits(cls_feat))
            ctr_logits.append(self.ctrness(bbox_feat if self.centerness_on_reg else cls_feat))
            reg = self.bbox_pred(bbox_feat)
            if self.scales is not None:
                reg = self.scales[level](reg)
            bbox_reg.append(F.relu(reg) if self.norm_reg_targets else paddle.exp(reg))
        return cls_logits, bbox_reg, ctr_logits
