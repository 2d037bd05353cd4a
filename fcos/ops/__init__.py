"""Custom CPU operators for dygraph: oneDNN convolutions (:mod:`fcos.ops.onednn_conv`), GroupNorm
(:mod:`fcos.ops.group_norm`) and train-mode BatchNorm (:mod:`fcos.ops.batch_norm`), built together on
first use."""

from fcos.ops.batch_norm import cpu_batch_norm, cpu_batch_norm_applies
from fcos.ops.group_norm import cpu_group_norm, cpu_group_norm_applies
from fcos.ops.onednn_conv import (
    ConvBackendError,
    conv_backend,
    onednn_conv2d,
    onednn_conv_applies,
    set_conv_backend,
)

__all__ = [
    "ConvBackendError",
    "conv_backend",
    "cpu_batch_norm",
    "cpu_batch_norm_applies",
    "cpu_group_norm",
    "cpu_group_norm_applies",
    "onednn_conv2d",
    "onednn_conv_applies",
    "set_conv_backend",
]
