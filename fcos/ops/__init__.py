"""Custom operators: oneDNN convolutions for dygraph on CPU (:mod:`fcos.ops.onednn_conv`)."""

from fcos.ops.onednn_conv import (
    ConvBackendError,
    conv_backend,
    onednn_conv2d,
    onednn_conv_applies,
    set_conv_backend,
)

__all__ = ["ConvBackendError", "conv_backend", "onednn_conv2d", "onednn_conv_applies", "set_conv_backend"]
