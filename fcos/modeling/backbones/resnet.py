"""ResNet-50/101 backbone with torchvision parameter names (``conv1``, ``bn1``, ``layer{1-4}.{i}.conv{1,2,3}``,
``.bn{1,2,3}``, ``.downsample.0/.1``), returning [C3, C4, C5] (layer2, layer3, layer4).

``stride_in_1x1`` puts the stage stride in the first 1x1 conv (detectron2 / MSRA "ResNet v1",
AdelaiDet FCOS_RT R-50) instead of the 3x3 conv (torchvision, PaddleDetection "variant b").
"""

from __future__ import annotations

from typing import Optional

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from fcos.modeling.layers import ConvNormAct, conv2d, freeze, get_norm, init_kaiming_normal_fan_out

DEPTHS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}


class Bottleneck(nn.Layer):
    """1x1 -> 3x3 -> 1x1 (x4 expansion) residual block; (N, in, H, W) -> (N, 4*width, H/stride, W/stride).

    Keys: conv1, bn1, conv2, bn2, conv3, bn3 and, in the first block of a stage, downsample.0 (1x1 conv
    with the stride) / downsample.1 (norm).
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        norm: str = "bn",
        stride_in_1x1: bool = False,
        downsample: bool = False,
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv2d(in_channels, width, 1, stride_1x1)
        self.bn1 = get_norm(norm, width)
        self.conv2 = conv2d(width, width, 3, stride_3x3)
        self.bn2 = get_norm(norm, width)
        self.conv3 = conv2d(width, out_channels, 1)
        self.bn3 = get_norm(norm, out_channels)
        self.downsample: Optional[nn.Layer] = (
            ConvNormAct(in_channels, out_channels, 1, stride, norm=norm, act=False) if downsample else None
        )

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        identity = self.downsample(x) if self.downsample is not None else x
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class ResNet(nn.Layer):
    """ResNet body (no avgpool/fc) returning [C3, C4, C5] at strides 8, 16, 32.

    Args:
        depth: 50 or 101.
        norm: "bn" | "syncbn" (BN here; converted by build_model on multi-GPU CUDA) | "frozen_bn" (all BN frozen,
            convs still trainable unless frozen by ``freeze_at``; torchvision detection default).
        freeze_at: detectron2 semantics: -1/0 nothing, 1 stem (conv1, bn1), 2 stem + layer1, k: + layer{k-1}.
            Frozen parts use FrozenBatchNorm2D and get no gradients.
        stride_in_1x1: stride in the 1x1 conv of each stage's first block (detectron2 MSRA weights).

    Attributes: ``out_channels`` [512, 1024, 2048], ``strides`` [8, 16, 32].
    """

    def __init__(self, depth: int = 50, norm: str = "bn", freeze_at: int = -1, stride_in_1x1: bool = False) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNet: model.backbone.depth must be one of {sorted(DEPTHS)}, got {depth}")
        if norm not in ("bn", "syncbn", "frozen_bn"):
            raise ValueError(f"ResNet: model.backbone.norm must be bn, syncbn or frozen_bn, got {norm!r}")
        self.conv1 = conv2d(3, 64, 7, 2)
        self.bn1 = get_norm(norm, 64)
        self.maxpool = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)
        in_channels = 64
        for i, num_blocks in enumerate(DEPTHS[depth]):
            width = 64 * 2**i
            stride = 1 if i == 0 else 2
            blocks = []
            for b in range(num_blocks):
                blocks.append(
                    Bottleneck(
                        in_channels,
                        width,
                        stride if b == 0 else 1,
                        norm=norm,
                        stride_in_1x1=stride_in_1x1,
                        downsample=b == 0,
                    )
                )
                in_channels = width * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels = [512, 1024, 2048]
        self.strides = [8, 16, 32]
        for layer in self.sublayers():
            if isinstance(layer, nn.Conv2D):
                init_kaiming_normal_fan_out(layer)
        self.freeze_at = freeze_at
        self._freeze(freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        stages = [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
        for names in stages[: max(freeze_at, 0)]:
            for name in names:
                setattr(self, name, freeze(getattr(self, name)))

    def forward(self, x: paddle.Tensor) -> list[paddle.Tensor]:
        """(N, 3, H, W) -> [C3 (N,512,H/8,W/8), C4 (N,1024,H/16,W/16), C5 (N,2048,H/32,W/32)]."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]
