"""Small building blocks shared by the backbones, the FPN and the head.

Norm layers follow Paddle's state-dict naming: BatchNorm2D and :class:`FrozenBatchNorm2D` hold
``weight``, ``bias``, ``_mean``, ``_variance``; GroupNorm holds ``weight``, ``bias``.
"""

from __future__ import annotations

import math
from typing import Optional

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from fcos.ops.batch_norm import cpu_batch_norm, cpu_batch_norm_applies
from fcos.ops.group_norm import cpu_group_norm, cpu_group_norm_applies
from fcos.ops.onednn_conv import onednn_conv2d, onednn_conv_applies

NORMS = ("bn", "syncbn", "frozen_bn", "gn", "none")


class FrozenBatchNorm2D(nn.Layer):
    """BatchNorm with fixed statistics and affine parameters: ``y = (x - mean) / sqrt(var + eps) * w + b``.

    All four tensors are buffers (saved in the state dict, never trained, never updated), as in
    detectron2 / torchvision ``FrozenBatchNorm2d``. Input and output (N, C, H, W).
    """

    def __init__(self, num_channels: int, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.epsilon = epsilon
        self.register_buffer("weight", paddle.ones([num_channels], dtype="float32"))
        self.register_buffer("bias", paddle.zeros([num_channels], dtype="float32"))
        self.register_buffer("_mean", paddle.zeros([num_channels], dtype="float32"))
        self.register_buffer("_variance", paddle.ones([num_channels], dtype="float32"))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        # One inference-mode batch_norm op rather than x * scale + shift: a single pass over x in
        # dygraph, and an exported graph whose conv + batch_norm pairs Paddle Inference folds into
        # one convolution (two elementwise ops per conv cost a third of the exported R50's time).
        return F.batch_norm(x, self._mean, self._variance, self.weight, self.bias, training=False, epsilon=self.epsilon)

    @classmethod
    def from_batch_norm(cls, bn: nn.Layer) -> FrozenBatchNorm2D:
        """A frozen copy of a ``BatchNorm2D`` / ``SyncBatchNorm`` (its current weight, bias and statistics)."""
        frozen = cls(bn.weight.shape[0], epsilon=float(getattr(bn, "_epsilon", 1e-5)))
        frozen.weight.set_value(bn.weight.detach())
        frozen.bias.set_value(bn.bias.detach())
        frozen._mean.set_value(bn._mean.detach())
        frozen._variance.set_value(bn._variance.detach())
        return frozen

    def extra_repr(self) -> str:
        return f"{self.num_channels}, epsilon={self.epsilon}"


class Scale(nn.Layer):
    """Learnable scalar multiplier (FCOS per-level regression scale); parameter ``scale`` of shape [1]."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = self.create_parameter(
            shape=[1], dtype="float32", default_initializer=nn.initializer.Constant(init_value)
        )

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return x * self.scale


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state dict) that runs ``fcos_group_norm`` in dygraph on CPU.

    Active together with the oneDNN convolutions (:func:`fcos.ops.set_conv_backend`); export and
    GPU use Paddle's ``group_norm``.
    """

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if cpu_group_norm_applies(self, x):
            return cpu_group_norm(x, self._num_groups, self._epsilon, self.weight, self.bias)
        return super().forward(x)


class BatchNorm2D(nn.BatchNorm2D):
    """``nn.BatchNorm2D`` (same parameters, statistics and state dict) that trains through ``fcos_batch_norm``.

    In dygraph training on CPU float32, with the fcos CPU operators active
    (:func:`fcos.ops.set_conv_backend`), the batch statistics and gradients are accumulated in double
    and the running variance is updated with the unbiased batch variance, as torch does
    (:mod:`fcos.ops.batch_norm`). Evaluation, export, GPU and ``SyncBatchNorm`` conversion use Paddle's
    ``batch_norm``. Input and output (N, C, H, W).
    """

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if cpu_batch_norm_applies(self, x):
            self._check_input_dim(x)
            return cpu_batch_norm(x, self._mean, self._variance, self.weight, self.bias, self._momentum, self._epsilon)
        return super().forward(x)


def get_norm(name: str, channels: int, gn_groups: int = 32) -> Optional[nn.Layer]:
    """Norm layer for ``channels`` feature maps; ``None`` for ``"none"``.

    "bn" and "syncbn" give :class:`BatchNorm2D` (momentum 0.9 == torch 0.1, epsilon 1e-5); "syncbn" is
    converted to ``SyncBatchNorm`` by ``build_model`` only on multi-GPU CUDA runs. "frozen_bn" gives
    :class:`FrozenBatchNorm2D`; "gn" :class:`GroupNorm` with ``gn_groups`` groups (epsilon 1e-5).
    """
    if name in ("bn", "syncbn"):
        return BatchNorm2D(channels, momentum=0.9, epsilon=1e-5)
    if name == "frozen_bn":
        return FrozenBatchNorm2D(channels)
    if name == "gn":
        if channels % gn_groups:
            raise ValueError(f"get_norm: GroupNorm groups ({gn_groups}) must divide the channels ({channels})")
        return GroupNorm(gn_groups, channels, epsilon=1e-5)
    if name == "none":
        return None
    raise ValueError(f"get_norm: unknown norm {name!r}; expected one of {list(NORMS)}")


class Conv2D(nn.Conv2D):
    """``nn.Conv2D`` (same parameters and state dict) that runs through oneDNN in dygraph on CPU.

    When :func:`fcos.ops.set_conv_backend` activated the oneDNN operator (the library does so in
    ``setup_cpu_runtime``), kernels larger than 1x1 use it forward and backward; everything else,
    including ``paddle.jit.to_static`` export, uses Paddle's ``conv2d``.
    """

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if onednn_conv_applies(self, x):
            return onednn_conv2d(x, self.weight, self.bias, self._stride, self._padding, self._dilation, self._groups)
        return super().forward(x)


def conv2d(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = False, dilation: int = 1
) -> Conv2D:
    """A square :class:`Conv2D` with "same" padding ``dilation * (k - 1) // 2``."""
    return Conv2D(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=dilation * (kernel_size - 1) // 2,
        dilation=dilation,
        bias_attr=None if bias else False,
    )


class ConvNormAct(nn.Sequential):
    """``Sequential(conv, norm[, ReLU])`` so the state-dict keys are ``0.weight`` (conv) and ``1.*`` (norm).

    The conv has no bias (the norm supplies it). This is the layout of DLA's ``base_layer`` /
    ``level0`` / ``level1`` and of every ``project`` / ``downsample`` branch.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        norm: str = "bn",
        act: bool = True,
        dilation: int = 1,
    ) -> None:
        layers: list[nn.Layer] = [conv2d(in_channels, out_channels, kernel_size, stride, dilation=dilation)]
        norm_layer = get_norm(norm, out_channels)
        if norm_layer is None:
            raise ValueError("ConvNormAct needs a norm; use conv2d(..., bias=True) for a plain conv")
        layers.append(norm_layer)
        if act:
            layers.append(nn.ReLU())
        super().__init__(*layers)


# --------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------


def init_normal(layer: nn.Layer, std: float = 0.01, bias: float = 0.0) -> None:
    """weight ~ N(0, std), bias = ``bias`` (FCOS head convs)."""
    nn.initializer.Normal(mean=0.0, std=std)(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.initializer.Constant(bias)(layer.bias)


def init_c2_xavier(layer: nn.Layer) -> None:
    """Caffe2 "XavierFill" as detectron2 ``c2_xavier_fill`` / torchvision FPN: kaiming_uniform(a=1), bias 0.

    weight ~ U(-b, b) with b = sqrt(3 / fan_in), fan_in = in_channels * kh * kw.
    """
    fan_in = int(math.prod(layer.weight.shape[1:]))
    bound = math.sqrt(3.0 / fan_in)
    nn.initializer.Uniform(-bound, bound)(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.initializer.Constant(0.0)(layer.bias)


def init_kaiming_normal_fan_out(layer: nn.Layer) -> None:
    """He normal init, mode fan_out, ReLU gain (torchvision / DLA backbone convs): std = sqrt(2 / fan_out)."""
    fan_out = int(layer.weight.shape[0] * math.prod(layer.weight.shape[2:]))
    nn.initializer.Normal(mean=0.0, std=math.sqrt(2.0 / fan_out))(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.initializer.Constant(0.0)(layer.bias)


def prior_prob_bias(prior_prob: float) -> float:
    """Classifier bias so that sigmoid(bias) == prior_prob: ``-log((1 - p) / p)`` (-4.595 for p = 0.01)."""
    if not 0.0 < prior_prob < 1.0:
        raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
    return -math.log((1.0 - prior_prob) / prior_prob)


# --------------------------------------------------------------------------------------------
# Freezing
# --------------------------------------------------------------------------------------------


def convert_frozen_batchnorm(layer: nn.Layer) -> nn.Layer:
    """Replace every ``BatchNorm2D`` inside ``layer`` (or ``layer`` itself) by a :class:`FrozenBatchNorm2D`.

    Returns the (possibly new) layer; sublayers are swapped in place, keeping their names.
    """
    if isinstance(layer, (nn.BatchNorm2D, nn.SyncBatchNorm)):
        return FrozenBatchNorm2D.from_batch_norm(layer)
    for name, child in list(layer.named_children()):
        new_child = convert_frozen_batchnorm(child)
        if new_child is not child:
            setattr(layer, name, new_child)
    return layer


def freeze(layer: nn.Layer) -> nn.Layer:
    """Freeze ``layer`` as detectron2 does for frozen stages.

    Its BatchNorms become :class:`FrozenBatchNorm2D` and all its parameters get ``stop_gradient=True``
    (they receive no gradient and optimizers skip them). Returns the layer (a new object only when
    ``layer`` itself is a BatchNorm).
    """
    layer = convert_frozen_batchnorm(layer)
    for p in layer.parameters():
        p.stop_gradient = True
    return layer
