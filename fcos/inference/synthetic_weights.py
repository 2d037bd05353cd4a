"""Random weights that give many detections, for tests, smoke runs and benchmarks.

A freshly initialised FCOS predicts almost nothing (classifier bias ``log(0.01/0.99)``, tiny head
weights), which makes export checks vacuous and NMS artificially cheap in benchmarks. These weights
keep the backbone/FPN initialisation but give the head outputs with a realistic spread: logits
~ N(cls_bias, 1), box sizes of a few strides, centerness ~ N(0, 1) logits. Never use them for
anything but plumbing and timing.
"""

from __future__ import annotations

import numpy as np


def make_detection_rich(model: object, seed: int = 0, cls_bias: float = -3.0, reg_bias: float = 1.5) -> object:
    """Overwrite ``model.head``'s final convolutions in place (see module docstring); returns ``model``.

    ``model`` is an FCOS layer (``fcos.build_model``); with GN/BN towers the inputs of the final
    convolutions have about unit variance, so weights ~ N(0, 1/fan_in) give unit-variance logits.
    """
    rng = np.random.default_rng(seed)
    head = model.head  # type: ignore[attr-defined]
    for conv, w_gain, bias in (
        (head.cls_logits, 1.0, cls_bias),
        (head.bbox_pred, 0.5, reg_bias),
        (head.ctrness, 1.0, 0.0),
    ):
        shape = list(conv.weight.shape)  # (out, in, kh, kw)
        fan_in = int(np.prod(shape[1:]))
        conv.weight.set_value(rng.normal(0.0, w_gain / np.sqrt(fan_in), size=shape).astype("float32"))
        conv.bias.set_value(np.full(list(conv.bias.shape), bias, dtype="float32"))
    return model
