"""Feature Pyramid Network: [C3, C4, C5] -> [P3, P4, P5] (+ P6, P7).

Layout of detectron2 / AdelaiDet ``FPN`` with ``LastLevelP6P7`` (and torchvision's FPN): 1x1 lateral
convs and 3x3 output convs, both with bias and no norm; nearest-neighbour top-down upsampling
(to the lateral's size, so it is exactly x2 on inputs padded to a multiple of 32); P6 = 3x3 stride-2
conv on P5 (or C5), P7 = 3x3 stride-2 conv on ReLU(P6). All convs use the Caffe2 Xavier init
(kaiming_uniform a=1, bias 0).

Keys: ``lateral_convs.{0,1,2}`` (index 0 takes C3), ``output_convs.{0,1,2}`` (index 0 gives P3), ``p6``, ``p7``.
"""

from __future__ import annotations

from collections.abc import Sequence

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from fcos.modeling.layers import conv2d, init_c2_xavier


def upsample_nearest_to(x: paddle.Tensor, ref: paddle.Tensor) -> paddle.Tensor:
    """Nearest x2 upsampling of ``x`` (N, C, h, w) cropped to ``ref``'s (H, W), H in {2h, 2h-1}.

    Equal to ``F.interpolate(x, size=(H, W), mode="nearest")`` for those sizes, written as repeat +
    crop because Paddle 3.3 Inference cannot run ``nearest_interp`` under oneDNN from a saved model
    (PaddlePaddle/Paddle#79749), which would force the slower fallback predictor.
    """
    if paddle.in_dynamic_mode():
        return _upsample_nearest_to_eager(x, ref)
    s, r = paddle.shape(x), paddle.shape(ref)
    y = x.unsqueeze([3, 5]).expand([s[0], s[1], s[2], 2, s[3], 2]).reshape([s[0], s[1], s[2] * 2, s[3] * 2])
    return paddle.slice(y, axes=[2, 3], starts=[0, 0], ends=[r[2], r[3]])


def _upsample_nearest_to_eager(x: paddle.Tensor, ref: paddle.Tensor) -> paddle.Tensor:
    """Dygraph (known shapes): skip the crop when there is nothing to crop; its backward costs a copy."""
    n, c, h, w = x.shape
    y = x.unsqueeze([3, 5]).expand([n, c, h, 2, w, 2]).reshape([n, c, h * 2, w * 2])
    if list(ref.shape[2:]) == [h * 2, w * 2]:
        return y
    return y[:, :, : ref.shape[2], : ref.shape[3]]


class FPN(nn.Layer):
    """Args:
        in_channels: channels of C3, C4, C5.
        out_channels: channels of every P level.
        num_extra_levels: 0 (P3-P5), 1 (P6) or 2 (P6, P7).
        extra_source: "p5" or "c5": input of the P6 conv.
        relu_before_extra: apply ReLU to P6 before the P7 conv.

    Attributes: ``out_channels`` (int), ``num_levels``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        num_extra_levels: int = 0,
        extra_source: str = "p5",
        relu_before_extra: bool = True,
    ) -> None:
        super().__init__()
        if not 0 <= num_extra_levels <= 2:
            raise ValueError(f"FPN: model.fpn.num_extra_levels must be 0, 1 or 2, got {num_extra_levels}")
        if extra_source not in ("p5", "c5"):
            raise ValueError(f"FPN: model.fpn.extra_source must be 'p5' or 'c5', got {extra_source!r}")
        self.lateral_convs = nn.LayerList([conv2d(c, out_channels, 1, bias=True) for c in in_channels])
        self.output_convs = nn.LayerList([conv2d(out_channels, out_channels, 3, bias=True) for _ in in_channels])
        self.extra_source = extra_source
        self.relu_before_extra = relu_before_extra
        self.num_extra_levels = num_extra_levels
        if num_extra_levels >= 1:
            p6_in = out_channels if extra_source == "p5" else in_channels[-1]
            self.p6 = conv2d(p6_in, out_channels, 3, stride=2, bias=True)
        if num_extra_levels >= 2:
            self.p7 = conv2d(out_channels, out_channels, 3, stride=2, bias=True)
        self.out_channels = out_channels
        self.num_levels = len(in_channels) + num_extra_levels
        for layer in self.sublayers():
            if isinstance(layer, nn.Conv2D):
                init_c2_xavier(layer)

    def forward(self, feats: Sequence[paddle.Tensor]) -> list[paddle.Tensor]:
        """[C3, C4, C5] (N, c_l, H_l, W_l) -> [P3, ..., P5 (, P6, P7)] (N, out_channels, H_l, W_l)."""
        if len(feats) != len(self.lateral_convs):
            raise ValueError(f"FPN: expected {len(self.lateral_convs)} input features, got {len(feats)}")
        prev = self.lateral_convs[-1](feats[-1])
        outs = [self.output_convs[-1](prev)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.lateral_convs[i](feats[i])
            top_down = upsample_nearest_to(prev, lateral)
            prev = lateral + top_down
            outs.insert(0, self.output_convs[i](prev))
        if self.num_extra_levels >= 1:
            p6 = self.p6(outs[-1] if self.extra_source == "p5" else feats[-1])
            outs.append(p6)
            if self.num_extra_levels >= 2:
                outs.append(self.p7(F.relu(p6) if self.relu_before_extra else p6))
        return outs
