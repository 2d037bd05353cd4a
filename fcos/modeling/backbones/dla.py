"""DLA-34 (Deep Layer Aggregation) backbone, module tree identical to AdelaiDet's ``adet/modeling/backbone/dla.py``.

AdelaiDet key ``backbone.bottom_up.<X>`` is our ``backbone.<X>`` (e.g. ``level3.tree2.root.conv.weight``),
so released FCOS_RT-DLA34 checkpoints map one to one (BN ``running_mean/var`` -> ``_mean/_variance``).

Structure (channels c = [16, 32, 64, 128, 256, 512], levels [1, 1, 1, 2, 2, 1] for DLA-34):

* ``base_layer`` = conv 7x7 3->c0, BN, ReLU; ``level0`` = [conv 3x3, BN, ReLU] x levels[0];
  ``level1`` = same with stride 2 on the first conv (c0->c1).
* ``level2..level5`` = :class:`Tree` (stride 2 each; ``level_root`` for level3-5), outputs at strides
  4, 8, 16, 32. The detector uses level3/4/5 (C3, C4, C5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from fcos.modeling.layers import ConvNormAct, conv2d, freeze, get_norm, init_kaiming_normal_fan_out


class BasicBlock(nn.Layer):
    """Two 3x3 convs with BN; ``forward(x, residual)`` adds ``residual`` (default ``x``) before the last ReLU.

    (N, in, H, W) -> (N, out, H/stride, W/stride). Keys: conv1, bn1, conv2, bn2.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm: str = "bn") -> None:
        super().__init__()
        self.conv1 = conv2d(in_channels, out_channels, 3, stride)
        self.bn1 = get_norm(norm, out_channels)
        self.conv2 = conv2d(out_channels, out_channels, 3)
        self.bn2 = get_norm(norm, out_channels)

    def forward(self, x: paddle.Tensor, residual: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        if residual is None:
            residual = x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + residual)


class Root(nn.Layer):
    """Aggregation node: 1x1 conv over the channel concat of its children, BN, (+ first child), ReLU.

    Keys: ``conv.weight`` (out, root_dim, 1, 1), ``bn.*``.
    """

    def __init__(self, in_channels: int, out_channels: int, residual: bool = False, norm: str = "bn") -> None:
        super().__init__()
        self.conv = conv2d(in_channels, out_channels, 1)
        self.bn = get_norm(norm, out_channels)
        self.residual = residual

    def forward(self, children: Sequence[paddle.Tensor]) -> paddle.Tensor:
        x = self.bn(self.conv(paddle.concat(list(children), axis=1)))
        if self.residual:
            x = x + children[0]
        return F.relu(x)


class Tree(nn.Layer):
    """Hierarchical aggregation tree of ``levels`` depth (AdelaiDet/ucbdrive ``Tree``).

    levels == 1: ``tree1`` = BasicBlock(in->out, stride), ``tree2`` = BasicBlock(out->out), ``root`` =
    :class:`Root` over [tree2, tree1, *children]. levels > 1: ``tree1`` = Tree(levels-1, in->out, stride),
    ``tree2`` = Tree(levels-1, out->out, root_dim + out) which receives the children; no own root.
    root_dim = 2 * out (+ in when ``level_root``). ``downsample`` = MaxPool(stride, ceil_mode) (no parameters),
    ``project`` = [conv 1x1, BN] when in != out.
    """

    def __init__(
        self,
        levels: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        level_root: bool = False,
        root_dim: int = 0,
        root_residual: bool = False,
        norm: str = "bn",
    ) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"Tree: levels must be >= 1, got {levels}")
        if root_dim == 0:
            root_dim = 2 * out_channels
        if level_root:
            root_dim += in_channels
        self.levels = levels
        self.level_root = level_root
        self.root_dim = root_dim
        if levels == 1:
            self.tree1 = BasicBlock(in_channels, out_channels, stride, norm=norm)
            self.tree2 = BasicBlock(out_channels, out_channels, 1, norm=norm)
            self.root = Root(root_dim, out_channels, residual=root_residual, norm=norm)
        else:
            self.tree1 = Tree(levels - 1, in_channels, out_channels, stride, root_residual=root_residual, norm=norm)
            self.tree2 = Tree(
                levels - 1,
                out_channels,
                out_channels,
                1,
                root_dim=root_dim + out_channels,
                root_residual=root_residual,
                norm=norm,
            )
        # ceil_mode: same result as AdelaiDet on even sizes, and matches the stride-2 conv's ceil(H / 2) on odd ones.
        self.downsample = nn.MaxPool2D(stride, stride, ceil_mode=True) if stride > 1 else None
        self.project = (
            ConvNormAct(in_channels, out_channels, 1, norm=norm, act=False) if in_channels != out_channels else None
        )

    def forward(
        self,
        x: paddle.Tensor,
        residual: Optional[paddle.Tensor] = None,
        children: Optional[list[paddle.Tensor]] = None,
    ) -> paddle.Tensor:
        if self.training and residual is not None:
            # A sub-tree ignores the residual its parent computed (as in AdelaiDet); the zero term keeps
            # the parent's ``project`` in the graph so every parameter gets a (zero) gradient.
            x = x + residual.sum() * 0.0
        children = [] if children is None else children
        bottom = self.downsample(x) if self.downsample is not None else x
        residual = self.project(bottom) if self.project is not None else bottom
        if self.level_root:
            children.append(bottom)
        x1 = self.tree1(x, residual)
        if self.levels == 1:
            x2 = self.tree2(x1)
            return self.root([x2, x1, *children])
        children.append(x1)
        return self.tree2(x1, children=children)


def _conv_level(in_channels: int, out_channels: int, num_convs: int, stride: int, norm: str) -> nn.Sequential:
    """[conv 3x3, BN, ReLU] x num_convs as one flat Sequential (keys 0, 1, 3, 4, ...); stride on the first conv."""
    layers: list[nn.Layer] = []
    for i in range(num_convs):
        layers.extend(ConvNormAct(in_channels, out_channels, 3, stride if i == 0 else 1, norm=norm).children())
        in_channels = out_channels
    return nn.Sequential(*layers)


class DLA(nn.Layer):
    """DLA backbone returning [C3, C4, C5] = [level3, level4, level5] (strides 8, 16, 32).

    Args:
        levels: depth of base/level0/level1 (conv count) and level2-5 (tree depth); DLA-34 [1, 1, 1, 2, 2, 1].
        channels: output channels of base_layer, level0..level5; DLA-34 [16, 32, 64, 128, 256, 512].
        norm: "bn" | "syncbn" (BN here; converted by build_model on multi-GPU CUDA) | "frozen_bn".
        freeze_at: -1/0 nothing frozen; 1 stem (base_layer, level0, level1); k >= 2 also level2..level{k}.
            Frozen parts use FrozenBatchNorm2D and get no gradients.
        root_residual: residual in Root (False for DLA-34).

    Attributes: ``out_channels`` [c3, c4, c5], ``strides`` [8, 16, 32].
    Input (N, 3, H, W) of any size; outputs (N, c_l, H_l, W_l) with H_l = ceil(H / s_l) (repeated halving).
    """

    def __init__(
        self,
        levels: Sequence[int] = (1, 1, 1, 2, 2, 1),
        channels: Sequence[int] = (16, 32, 64, 128, 256, 512),
        norm: str = "bn",
        freeze_at: int = -1,
        root_residual: bool = False,
    ) -> None:
        super().__init__()
        levels, channels = list(levels), list(channels)
        if len(levels) != 6 or len(channels) != 6:
            raise ValueError(
                f"DLA: model.backbone.dla_levels and dla_channels need 6 entries each, got {levels} and {channels}"
            )
        if any(n < 1 for n in levels) or any(c < 1 for c in channels):
            raise ValueError(f"DLA: dla_levels and dla_channels must be >= 1, got {levels} and {channels}")
        if norm not in ("bn", "syncbn", "frozen_bn"):
            raise ValueError(f"DLA: model.backbone.norm must be bn, syncbn or frozen_bn, got {norm!r}")
        self.base_layer = ConvNormAct(3, channels[0], 7, 1, norm=norm)
        self.level0 = _conv_level(channels[0], channels[0], levels[0], 1, norm)
        self.level1 = _conv_level(channels[0], channels[1], levels[1], 2, norm)
        self.level2 = Tree(
            levels[2], channels[1], channels[2], 2, level_root=False, root_residual=root_residual, norm=norm
        )
        self.level3 = Tree(
            levels[3], channels[2], channels[3], 2, level_root=True, root_residual=root_residual, norm=norm
        )
        self.level4 = Tree(
            levels[4], channels[3], channels[4], 2, level_root=True, root_residual=root_residual, norm=norm
        )
        self.level5 = Tree(
            levels[5], channels[4], channels[5], 2, level_root=True, root_residual=root_residual, norm=norm
        )
        self.out_channels = channels[3:6]
        self.strides = [8, 16, 32]
        for layer in self.sublayers():
            if isinstance(layer, nn.Conv2D):
                init_kaiming_normal_fan_out(layer)
        self.freeze_at = freeze_at
        self._freeze(freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        stages = [["base_layer", "level0", "level1"], ["level2"], ["level3"], ["level4"], ["level5"]]
        for names in stages[: max(freeze_at, 0)]:
            for name in names:
                setattr(self, name, freeze(getattr(self, name)))

    def forward(self, x: paddle.Tensor) -> list[paddle.Tensor]:
        """(N, 3, H, W) -> [C3, C4, C5]."""
        x = self.base_layer(x)
        outs = []
        for i in range(6):
            x = getattr(self, f"level{i}")(x)
            if i >= 3:
                outs.append(x)
        return outs
