"""GroupNorm for Paddle dygraph on CPU: the ``fcos_group_norm`` kernel (``group_norm.cc``).

Paddle 3.3's CPU ``group_norm`` forward + backward of a (2, 256, 64, 64) tensor (the FCOS head at P3,
512 px) takes about 13 ms on 2 cores; this kernel takes about 3 ms (torch: 2 ms). It is built and
switched on together with the oneDNN convolution (:mod:`fcos.ops.onednn_conv`, ``train.cpu_conv``)
and only runs in dygraph on CPU float32 NCHW tensors with an affine GroupNorm; export, GPU and
everything else use Paddle's ``group_norm``.
"""

from __future__ import annotations

import paddle

from fcos.ops import onednn_conv


def cpu_group_norm_applies(layer: paddle.nn.GroupNorm, x: paddle.Tensor) -> bool:
    """True when ``layer(x)`` should run through ``fcos_group_norm``."""
    return (
        onednn_conv.conv_backend() == "onednn"
        and paddle.in_dynamic_mode()
        and layer._data_format == "NCHW"
        and layer.weight is not None
        and layer.bias is not None
        and x.ndim == 4
        and x.dtype == paddle.float32
        and x.place.is_cpu_place()
    )


def cpu_group_norm(
    x: paddle.Tensor, num_groups: int, epsilon: float, weight: paddle.Tensor, bias: paddle.Tensor
) -> paddle.Tensor:
    """``F.group_norm(x, num_groups, epsilon, weight, bias)`` for x (N, C, H, W) float32 on CPU.

    Returns (N, C, H, W); differentiable in x, weight (C,) and bias (C,).
    """
    module = onednn_conv.load_onednn_conv()
    if module is None:
        raise onednn_conv.ConvBackendError(f"the fcos CPU operators are unavailable: {onednn_conv.build_error()}")
    if x.shape[1] % num_groups:
        raise ValueError(f"cpu_group_norm: {num_groups} groups do not divide {x.shape[1]} channels")
    return module.fcos_group_norm(x, weight, bias, int(num_groups), float(epsilon))[0]
