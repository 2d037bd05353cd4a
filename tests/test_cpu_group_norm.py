"""The fcos_group_norm CPU kernel (fcos/ops/group_norm.cc) against Paddle's group_norm."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from fcos.modeling.layers import GroupNorm, get_norm
from fcos.ops import group_norm as gn_ops
from fcos.ops import onednn_conv as ops


def _run(ours: bool, x_np, w_np, b_np, groups):
    x, w, b = (paddle.to_tensor(a, stop_gradient=False) for a in (x_np, w_np, b_np))
    y = gn_ops.cpu_group_norm(x, groups, 1e-5, w, b) if ours else F.group_norm(x, groups, 1e-5, w, b)
    # A loss whose gradient differs per element, so misplaced or transposed gradients show.
    ramp = paddle.to_tensor(np.linspace(-1.0, 1.0, y.size).reshape(y.shape).astype("float32"))
    (y * y * 0.5 + y * ramp).sum().backward()
    return y.numpy(), [t.grad.numpy() for t in (x, w, b)]


def _numpy_reference(x, w, b, groups, ramp):
    """Forward and gradients of the same loss in float64, by the textbook formulas."""
    n, c = x.shape[:2]
    xg = x.astype(np.float64).reshape(n, groups, -1)
    mu = xg.mean(-1, keepdims=True)
    r = 1.0 / np.sqrt(((xg - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
    xhat = ((xg - mu) * r).reshape(x.shape)
    y = xhat * w.reshape(1, c, 1, 1) + b.reshape(1, c, 1, 1)
    dy = y + ramp  # d/dy of 0.5 * y^2 + y * ramp
    dw = (dy * xhat).sum(axis=(0, 2, 3))
    db = dy.sum(axis=(0, 2, 3))
    g = (dy * w.reshape(1, c, 1, 1)).reshape(n, groups, -1)
    xh = xhat.reshape(n, groups, -1)
    dx = r * (g - g.mean(-1, keepdims=True) - xh * (g * xh).mean(-1, keepdims=True))
    return y, [dx.reshape(x.shape), dw, db]


@pytest.mark.parametrize(
    "shape,groups,offset",
    [
        ((2, 256, 16, 16), 32, 0.0),  # the FCOS head
        ((1, 12, 7, 9), 4, 0.0),  # odd spatial size, 3 channels per group
        ((3, 8, 5, 5), 8, 0.0),  # one channel per group
        ((2, 64, 6, 6), 32, 100.0),  # a large mean: variance must not cancel
    ],
)
def test_forward_and_gradients_match_paddle(backend, shape, groups, offset):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=shape) * 2.0 + offset).astype("float32")
    w = rng.uniform(0.5, 1.5, size=shape[1]).astype("float32")
    b = rng.normal(size=shape[1]).astype("float32")
    got_y, got_grads = _run(True, x, w, b, groups)
    ramp = np.linspace(-1.0, 1.0, x.size).reshape(shape)
    references = [_numpy_reference(x, w, b, groups, ramp)]
    if offset == 0.0:  # Paddle's kernel loses ~1e-3 to cancellation with a large mean; ours does not
        references.append(_run(False, x, w, b, groups))
    for ref_y, ref_grads in references:
        np.testing.assert_allclose(got_y, ref_y, rtol=1e-4, atol=1e-4)
        for name, ref, got in zip(("x", "weight", "bias"), ref_grads, got_grads):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-4 * np.abs(ref).max(), err_msg=f"grad {name}")
    # and by hand: every (sample, group) of the normalised output has mean 0 and variance 1
    n, c = shape[:2]
    xhat = ((got_y - b.reshape(1, c, 1, 1)) / w.reshape(1, c, 1, 1)).reshape(n, groups, -1)
    np.testing.assert_allclose(xhat.mean(-1), 0.0, atol=1e-4)
    np.testing.assert_allclose(xhat.var(-1), 1.0, rtol=2e-3)


def test_group_norm_layer_routes_in_dygraph_only(backend, monkeypatch):
    calls = []
    real = gn_ops.cpu_group_norm
    monkeypatch.setattr("fcos.modeling.layers.cpu_group_norm", lambda *a: calls.append(a[1]) or real(*a))
    layer = get_norm("gn", 64, gn_groups=32)
    assert isinstance(layer, GroupNorm)
    x = paddle.randn([2, 64, 5, 6])
    ref = F.group_norm(x, 32, 1e-5, layer.weight, layer.bias)
    np.testing.assert_allclose(layer(x).numpy(), ref.numpy(), rtol=1e-4, atol=1e-5)
    assert calls == [32]
    calls.clear()
    static = paddle.jit.to_static(layer, full_graph=True)
    np.testing.assert_allclose(static(x).numpy(), ref.numpy(), rtol=1e-4, atol=1e-5)
    assert calls == []
    assert "fcos_group_norm" not in str(static.forward.concrete_program.main_program)
    # with the Paddle backend the layer is plain nn.GroupNorm
    ops._active = "paddle"
    layer(x)
    assert calls == []
