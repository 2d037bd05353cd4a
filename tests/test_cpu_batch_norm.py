"""The fcos_batch_norm CPU kernel (fcos/ops/batch_norm.cc) and the BatchNorm2D layer against float64."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from fcos.modeling.layers import BatchNorm2D, FrozenBatchNorm2D, convert_frozen_batchnorm, get_norm
from fcos.ops import batch_norm as bn_ops
from fcos.ops import onednn_conv as ops

EPS = 1e-5


def _inputs(shape, seed=0):
    """A post-ReLU-like map (half zeros, a per-channel offset): the statistics of a conv + ReLU output."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = np.maximum(rng.normal(size=shape), 0.0) * 1.5 + 0.3 + rng.normal(size=(1, c, 1, 1))
    w = rng.uniform(0.5, 1.5, size=c)
    b = rng.normal(size=c)
    running_mean = rng.normal(size=c)
    running_var = rng.uniform(0.5, 2.0, size=c)
    return [a.astype("float32") for a in (x, w, b, running_mean, running_var)]


def _loss_ramp(shape):
    return np.linspace(-1.0, 1.0, int(np.prod(shape))).reshape(shape)


def _reference(x, w, b, running_mean, running_var, ramp):
    """Train-mode BatchNorm in float64 by the textbook formulas, with torch's running-statistics update
    (momentum 0.1 on torch's side == Paddle's 0.9, unbiased variance), and the gradients of
    ``sum(0.5 * y^2 + y * ramp)``."""
    x = x.astype(np.float64)
    axes = (0, 2, 3)
    m = x.size // x.shape[1]
    mu = x.mean(axes)
    var = x.var(axes)
    r = 1.0 / np.sqrt(var + EPS)
    xhat = (x - mu[:, None, None]) * r[:, None, None]
    y = xhat * w[:, None, None] + b[:, None, None]
    dy = y + ramp
    db = dy.sum(axes)
    dw = (dy * xhat).sum(axes)
    g = dy * w[:, None, None]
    dx = r[:, None, None] * (g - g.mean(axes, keepdims=True) - xhat * (g * xhat).mean(axes, keepdims=True))
    new_mean = 0.9 * running_mean + 0.1 * mu
    new_var = 0.9 * running_var + 0.1 * var * m / (m - 1)
    return {"y": y, "dx": dx, "dw": dw, "db": db, "mean": mu, "running_mean": new_mean, "running_var": new_var}


def _run(ours, x, w, b, running_mean, running_var, ramp):
    xt, wt, bt = (paddle.to_tensor(a, stop_gradient=False) for a in (x, w, b))
    rm, rv = paddle.to_tensor(running_mean), paddle.to_tensor(running_var)
    if ours:
        y = bn_ops.cpu_batch_norm(xt, rm, rv, wt, bt, 0.9, EPS)
    else:
        y = F.batch_norm(xt, rm, rv, wt, bt, training=True, momentum=0.9, epsilon=EPS)
    (y * y * 0.5 + y * paddle.to_tensor(ramp.astype("float32"))).sum().backward()
    out = {"y": y.numpy(), "dx": xt.grad.numpy(), "dw": wt.grad.numpy(), "db": bt.grad.numpy()}
    out.update(running_mean=rm.numpy(), running_var=rv.numpy())
    return out


def _rel(got, ref):
    return float(np.linalg.norm(got.astype(np.float64) - ref) / np.linalg.norm(ref))


# Relative L2 errors allowed against float64. torch's CPU BatchNorm reaches ~7e-8 on the output of such
# maps; Paddle's batch_norm is 100x further off (asserted below, so this test shows the point).
TOLERANCE = {"y": 3e-7, "dx": 1e-6, "dw": 3e-7, "db": 3e-7}


def test_large_map_matches_float64_where_paddle_does_not(backend):
    shape = (2, 16, 256, 368)  # DLA-34's first BatchNorm at a 256 x 368 input (the real one is 4x larger)
    x, w, b, rm, rv = _inputs(shape)
    ramp = _loss_ramp(shape)
    ref = _reference(x, w, b, rm, rv, ramp)
    ours = _run(True, x, w, b, rm, rv, ramp)
    paddle_bn = _run(False, x, w, b, rm, rv, ramp)
    for key, tol in TOLERANCE.items():
        assert _rel(ours[key], ref[key]) < tol, (key, _rel(ours[key], ref[key]))
        assert _rel(paddle_bn[key], ref[key]) > 10 * tol, (key, _rel(paddle_bn[key], ref[key]))
    # the running statistics: torch's update, unbiased variance
    np.testing.assert_allclose(ours["running_mean"], ref["running_mean"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ours["running_var"], ref["running_var"], rtol=1e-6)


def test_small_maps_and_unbiased_running_variance(backend):
    # Odd sizes, one sample, few values per channel (M = 8: the unbiased factor 8/7 shows).
    for shape in [(1, 3, 7, 9), (2, 5, 2, 2), (4, 2, 1, 3)]:
        x, w, b, rm, rv = _inputs(shape, seed=1)
        ramp = _loss_ramp(shape)
        ref = _reference(x, w, b, rm, rv, ramp)
        ours = _run(True, x, w, b, rm, rv, ramp)
        for key in ("y", "dx", "dw", "db"):
            np.testing.assert_allclose(ours[key], ref[key], rtol=1e-5, atol=1e-5 * np.abs(ref[key]).max(), err_msg=key)
        np.testing.assert_allclose(ours["running_mean"], ref["running_mean"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(ours["running_var"], ref["running_var"], rtol=1e-6)
        # Paddle's own kernel updates with the biased variance: 0.9 * rv + 0.1 * var
        paddle_bn = _run(False, x, w, b, rm, rv, ramp)
        biased = 0.9 * rv + 0.1 * x.astype(np.float64).var((0, 2, 3))
        np.testing.assert_allclose(paddle_bn["running_var"], biased, rtol=1e-5)
        m = x.size // x.shape[1]
        if m <= 21:  # the two updates differ by more than float noise
            assert np.abs(ours["running_var"] - biased).min() > 1e-4
    # and by hand: a channel holding 1, 2, 3, 4 (mean 2.5, biased var 1.25, unbiased 5/3)
    x = paddle.to_tensor(np.array([1.0, 2.0, 3.0, 4.0], dtype="float32").reshape(2, 1, 2, 1))
    rm, rv = paddle.zeros([1]), paddle.ones([1])
    y = bn_ops.cpu_batch_norm(x, rm, rv, paddle.ones([1]), paddle.zeros([1]), 0.9, 0.0)
    np.testing.assert_allclose(y.numpy().ravel(), (np.arange(1, 5) - 2.5) / np.sqrt(1.25), rtol=1e-6)
    np.testing.assert_allclose(rm.numpy(), [0.25], rtol=1e-6)
    np.testing.assert_allclose(rv.numpy(), [0.9 + 0.1 * 5 / 3], rtol=1e-6)


def test_one_value_per_channel_is_an_error(backend):
    x = paddle.ones([1, 4, 1, 1])
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn_ops.cpu_batch_norm(x, paddle.zeros([4]), paddle.ones([4]), paddle.ones([4]), paddle.zeros([4]), 0.9, EPS)


def test_layer_routes_training_only(backend, monkeypatch):
    calls = []
    real = bn_ops.cpu_batch_norm
    monkeypatch.setattr("fcos.modeling.layers.cpu_batch_norm", lambda *a: calls.append(a[0].shape) or real(*a))
    layer = get_norm("bn", 8)
    assert isinstance(layer, BatchNorm2D) and isinstance(layer, paddle.nn.BatchNorm2D)
    assert isinstance(get_norm("syncbn", 8), BatchNorm2D)
    x = paddle.randn([2, 8, 5, 6]) * 2.0 + 1.0
    mean_buffer, var_buffer = layer._mean, layer._variance
    ref_y = F.batch_norm(x, paddle.zeros([8]), paddle.ones([8]), layer.weight, layer.bias, training=True)
    y = layer(x)
    np.testing.assert_allclose(y.numpy(), ref_y.numpy(), rtol=1e-4, atol=1e-5)
    assert calls == [[2, 8, 5, 6]]
    # the running statistics are updated in place, in the layer's own buffers
    assert layer._mean is mean_buffer and layer._variance is var_buffer
    xs = x.numpy().astype(np.float64)
    np.testing.assert_allclose(layer._mean.numpy(), 0.1 * xs.mean((0, 2, 3)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(layer._variance.numpy(), 0.9 + 0.1 * xs.var((0, 2, 3), ddof=1), rtol=1e-5)

    # eval: Paddle's inference batch_norm with the stored statistics, nothing updated
    calls.clear()
    layer.eval()
    saved = (layer._mean.numpy().copy(), layer._variance.numpy().copy())
    expect = F.batch_norm(x, layer._mean, layer._variance, layer.weight, layer.bias, training=False)
    np.testing.assert_array_equal(layer(x).numpy(), expect.numpy())
    assert calls == []
    np.testing.assert_array_equal(layer._mean.numpy(), saved[0])
    np.testing.assert_array_equal(layer._variance.numpy(), saved[1])
    # export: Paddle's batch_norm in the static graph
    static = paddle.jit.to_static(layer, full_graph=True)
    np.testing.assert_allclose(static(x).numpy(), expect.numpy(), rtol=1e-6, atol=1e-6)
    assert calls == []
    assert "fcos_batch_norm" not in str(static.forward.concrete_program.main_program)

    # the Paddle backend: plain nn.BatchNorm2D (biased running variance)
    ops._active = "paddle"
    fresh = get_norm("bn", 8)
    fresh.train()
    fresh(x)
    assert calls == []
    np.testing.assert_allclose(fresh._variance.numpy(), 0.9 + 0.1 * xs.var((0, 2, 3)), rtol=1e-5)


def test_state_dict_conversions_keep_keys_and_values(backend):
    paddle.seed(3)
    model = paddle.nn.Sequential(paddle.nn.Conv2D(3, 8, 3), get_norm("bn", 8))
    model.train()
    model(paddle.randn([2, 3, 9, 9]))  # non-trivial running statistics
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    plain = paddle.nn.Sequential(paddle.nn.Conv2D(3, 8, 3), paddle.nn.BatchNorm2D(8))
    assert list(state) == list(plain.state_dict())  # 0.weight, 0.bias, 1.weight, 1.bias, 1._mean, 1._variance
    # round trip through Paddle's own BatchNorm2D and back
    plain.set_state_dict(model.state_dict())
    back = paddle.nn.Sequential(paddle.nn.Conv2D(3, 8, 3), get_norm("bn", 8))
    back.set_state_dict(plain.state_dict())
    for k, v in back.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), state[k], err_msg=k)
    # SyncBatchNorm conversion (multi-GPU CUDA runs): same keys, same tensors
    synced = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(synced[1], paddle.nn.SyncBatchNorm)
    assert list(synced.state_dict()) == list(state)
    for k, v in synced.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), state[k], err_msg=k)
    # freezing: FrozenBatchNorm2D with the same weights and statistics
    model2 = paddle.nn.Sequential(paddle.nn.Conv2D(3, 8, 3), get_norm("bn", 8))
    model2.set_state_dict(model.state_dict())
    frozen = convert_frozen_batchnorm(model2)
    assert isinstance(frozen[1], FrozenBatchNorm2D)
    for k, v in frozen.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), state[k], err_msg=k)
