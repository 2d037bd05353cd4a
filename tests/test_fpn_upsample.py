"""The FPN's repeat+crop upsampling equals nearest interpolation for every size the FPN meets."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from fcos.modeling.fpn import upsample_nearest_to


@pytest.mark.parametrize("h,w,H,W", [(4, 5, 8, 10), (4, 5, 7, 9), (3, 3, 5, 6), (1, 1, 2, 1)])
def test_upsample_nearest_to_equals_interpolate(h, w, H, W):
    x = paddle.to_tensor(np.random.RandomState(0).randn(2, 3, h, w).astype("float32"))
    ref = paddle.zeros([2, 1, H, W])
    ours = upsample_nearest_to(x, ref).numpy()
    expected = F.interpolate(x, size=[H, W], mode="nearest").numpy()
    assert ours.shape == (2, 3, H, W)
    np.testing.assert_array_equal(ours, expected)
    # and by hand: output pixel (i, j) is input pixel (i // 2, j // 2)
    xi = x.numpy()
    assert ours[1, 2, H - 1, W - 1] == xi[1, 2, (H - 1) // 2, (W - 1) // 2]


@pytest.mark.parametrize("H,W", [(8, 10), (7, 9)])
def test_upsample_nearest_to_gradient_equals_interpolate(H, W):
    """Both dygraph paths (no crop needed / crop) back-propagate like nearest interpolation."""
    rng = np.random.RandomState(1)
    g = paddle.to_tensor(rng.randn(2, 3, H, W).astype("float32"))
    grads = []
    for up in (lambda x: upsample_nearest_to(x, paddle.zeros([2, 1, H, W])), None):
        x = paddle.to_tensor(np.arange(2 * 3 * 4 * 5, dtype="float32").reshape(2, 3, 4, 5), stop_gradient=False)
        y = up(x) if up else F.interpolate(x, size=[H, W], mode="nearest")
        (y * g).sum().backward()
        grads.append(x.grad.numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6, atol=1e-6)
