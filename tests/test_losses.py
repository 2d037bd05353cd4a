"""FCOS losses against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

from fcos.config import LossConfig
from fcos.modeling.losses import (
    MovingFgNormalizer,
    centerness_targets,
    fcos_losses,
    iou_loss,
    sigmoid_focal_loss,
)


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _bce(logit, target):
    p = _sigmoid(logit)
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_focal_loss_single_logits():
    p = _sigmoid(0.5)
    expected_pos = -0.25 * (1 - p) ** 2 * math.log(p)
    expected_neg = -0.75 * p**2 * math.log(1 - p)
    got_pos = sigmoid_focal_loss(paddle.to_tensor([0.5]), paddle.to_tensor([1.0]), 0.25, 2.0)
    got_neg = sigmoid_focal_loss(paddle.to_tensor([0.5]), paddle.to_tensor([0.0]), 0.25, 2.0)
    assert got_pos.item() == pytest.approx(expected_pos, rel=1e-5)
    assert got_neg.item() == pytest.approx(expected_neg, rel=1e-5)
    both = sigmoid_focal_loss(paddle.to_tensor([0.5, 0.5]), paddle.to_tensor([1.0, 0.0]), 0.25, 2.0)
    assert both.item() == pytest.approx(expected_pos + expected_neg, rel=1e-5)  # reduction = sum
    # gamma 0, alpha < 0: plain BCE
    plain = sigmoid_focal_loss(paddle.to_tensor([-1.2]), paddle.to_tensor([1.0]), -1.0, 0.0)
    assert plain.item() == pytest.approx(_bce(-1.2, 1.0), rel=1e-5)


# pred l,t,r,b = (2,2,2,2) -> box [-2,-2,2,2]; target (1,1,3,3) -> box [-1,-1,3,3] (same reference point)
# inter 3*3 = 9, union 16+16-9 = 23, enclosing box 5*5 = 25.
PRED = [2.0, 2.0, 2.0, 2.0]
TARGET = [1.0, 1.0, 3.0, 3.0]


@pytest.mark.parametrize(
    "loss_type,smooth,expected",
    [
        ("giou", 0.0, 1 - (9 / 23 - 2 / 25)),
        ("giou", 1.0, 1 - (10 / 24 - 2 / 25)),
        ("iou", 0.0, -math.log(9 / 23)),
        ("iou", 1.0, -math.log(10 / 24)),
        ("linear_iou", 1.0, 1 - 10 / 24),
    ],
)
def test_iou_losses_on_known_boxes(loss_type, smooth, expected):
    got = iou_loss(paddle.to_tensor([PRED]), paddle.to_tensor([TARGET]), loss_type, smooth)
    assert got.shape == [1]
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_iou_loss_identical_boxes_is_zero_and_bad_type_raises():
    box = paddle.to_tensor([[1.0, 2.0, 3.0, 4.0]])
    assert iou_loss(box, box, "giou", 0.0).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="box_loss"):
        iou_loss(box, box, "diou", 0.0)


def test_centerness_targets():
    got = centerness_targets(paddle.to_tensor([[1.0, 3.0, 2.0, 2.0], [5.0, 5.0, 5.0, 5.0]])).numpy()
    # l,r = 1,2 -> 1/2; t,b = 3,2 -> 2/3
    np.testing.assert_allclose(got, [math.sqrt((1 / 2) * (2 / 3)), 1.0], rtol=1e-6)


def _toy_batch():
    """N=1, P=3, C=2: point 0 class 0, point 1 background, point 2 class 1 (stride units)."""
    cls = np.array([[[0.3, -1.0], [-2.0, 0.4], [1.5, -0.7]]], dtype=np.float32)
    reg = np.array([[[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 1.0, 3.0]]], dtype=np.float32)
    ctr = np.array([[0.2, -0.3, 1.1]], dtype=np.float32)
    labels = np.array([[0, 2, 1]], dtype=np.int64)
    targets = np.array([[[1.0, 3.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]], dtype=np.float32)
    return cls, reg, ctr, labels, targets


def _expected_toy(cfg: LossConfig, cls_norm=None):
    cls, reg, ctr, labels, targets = _toy_batch()
    onehot = np.zeros((3, 2))
    onehot[0, 0] = 1
    onehot[2, 1] = 1
    focal = 0.0
    for i in range(3):
        for c in range(2):
            p = _sigmoid(float(cls[0, i, c]))
            t = onehot[i, c]
            p_t = p * t + (1 - p) * (1 - t)
            a_t = 0.25 * t + 0.75 * (1 - t)
            focal += -a_t * (1 - p_t) ** 2 * math.log(p_t)
    num_pos = 2.0
    ctr_t = [math.sqrt((1 / 2) * (2 / 3)), 1.0]  # targets (1,3,2,2) and (1,1,1,1)

    def giou(p, t, s):
        pl, pt, pr, pb = p
        tl, tt, tr, tb = t
        inter = (min(pl, tl) + min(pr, tr)) * (min(pt, tt) + min(pb, tb))
        union = (pl + pr) * (pt + pb) + (tl + tr) * (tt + tb) - inter
        enc = (max(pl, tl) + max(pr, tr)) * (max(pt, tt) + max(pb, tb))
        return 1 - ((inter + s) / (union + s) - (enc - union) / enc)

    box = [giou(reg[0, i], targets[0, i], cfg.iou_smooth) for i in (0, 2)]
    if cfg.box_weight_by_ctr:
        loss_box = (box[0] * ctr_t[0] + box[1] * ctr_t[1]) / (ctr_t[0] + ctr_t[1])
    else:
        loss_box = (box[0] + box[1]) / num_pos
    loss_ctr = (_bce(float(ctr[0, 0]), ctr_t[0]) + _bce(float(ctr[0, 2]), ctr_t[1])) / num_pos
    return focal / (cls_norm or num_pos), loss_box, loss_ctr


@pytest.mark.parametrize(
    "cfg",
    [
        LossConfig(),  # AdelaiDet: GIoU with +1 smoothing weighted by centerness
        LossConfig(iou_smooth=0.0, box_weight_by_ctr=False, reduce_across_devices=False),  # torchvision
    ],
)
def test_fcos_losses_hand_computed(cfg):
    tensors = [paddle.to_tensor(a) for a in _toy_batch()]
    out = fcos_losses(*tensors, cfg=cfg, num_classes=2)
    exp_cls, exp_box, exp_ctr = _expected_toy(cfg)
    assert out["loss_cls"].item() == pytest.approx(exp_cls, rel=1e-5)
    assert out["loss_box"].item() == pytest.approx(exp_box, rel=1e-5)
    assert out["loss_ctr"].item() == pytest.approx(exp_ctr, rel=1e-5)
    for v in out.values():
        assert v.dtype == paddle.float32 and v.shape == []


def test_moving_fg_normalizer():
    cfg = LossConfig(cls_normalizer="moving_fg")
    tensors = [paddle.to_tensor(a) for a in _toy_batch()]
    state = MovingFgNormalizer()
    out = fcos_losses(*tensors, cfg=cfg, num_classes=2, moving_fg=state)
    ema = 0.9 * 100 + 0.1 * 2  # initial 100, num_pos 2
    exp_cls, _, _ = _expected_toy(cfg, cls_norm=ema)
    assert state.value == pytest.approx(ema)
    assert out["loss_cls"].item() == pytest.approx(exp_cls, rel=1e-5)
    fcos_losses(*tensors, cfg=cfg, num_classes=2, moving_fg=state)
    assert state.value == pytest.approx(0.9 * ema + 0.2)
    restored = MovingFgNormalizer()
    restored.set_state_dict(state.state_dict())
    assert restored.value == state.value
    with pytest.raises(ValueError, match="MovingFgNormalizer"):
        fcos_losses(*tensors, cfg=cfg, num_classes=2)


def test_zero_positives_finite_and_backward():
    cls = paddle.to_tensor(np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32), stop_gradient=False)
    reg = paddle.zeros([2, 5, 4])  # ReLU output can be exactly 0
    reg.stop_gradient = False
    ctr = paddle.zeros([2, 5])
    ctr.stop_gradient = False
    labels = paddle.full([2, 5], 3, dtype="int64")
    targets = paddle.zeros([2, 5, 4])
    for cfg in (LossConfig(), LossConfig(iou_smooth=0.0, box_weight_by_ctr=False, box_loss="iou")):
        out = fcos_losses(cls, reg, ctr, labels, targets, cfg=cfg, num_classes=3)
        total = out["loss_cls"] + out["loss_box"] + out["loss_ctr"]
        assert math.isfinite(total.item())
        assert out["loss_box"].item() == 0.0 and out["loss_ctr"].item() == 0.0
        total.backward()
        assert reg.grad is not None and ctr.grad is not None
        assert np.isfinite(cls.grad.numpy()).all() and np.abs(cls.grad.numpy()).sum() > 0
        assert (reg.grad.numpy() == 0).all() and (ctr.grad.numpy() == 0).all()
        cls.clear_gradient()
        reg.clear_gradient()
        ctr.clear_gradient()


def test_gradients_reach_positives():
    cls, reg, ctr, labels, targets = (paddle.to_tensor(a) for a in _toy_batch())
    for t in (cls, reg, ctr):
        t.stop_gradient = False
    out = fcos_losses(cls, reg, ctr, labels, targets, cfg=LossConfig(), num_classes=2)
    (out["loss_cls"] + out["loss_box"] + out["loss_ctr"]).backward()
    g = reg.grad.numpy()[0]
    assert np.abs(g[0]).sum() > 0 and np.abs(g[2]).sum() > 0 and (g[1] == 0).all()


def test_half_precision_inputs_give_float32_losses():
    cls, reg, ctr, labels, targets = _toy_batch()
    out32 = fcos_losses(*[paddle.to_tensor(a) for a in _toy_batch()], cfg=LossConfig(), num_classes=2)
    half = [paddle.to_tensor(a).astype("float16") for a in (cls, reg, ctr)]
    out16 = fcos_losses(*half, paddle.to_tensor(labels), paddle.to_tensor(targets), cfg=LossConfig(), num_classes=2)
    for key in out32:
        assert out16[key].dtype == paddle.float32
        assert out16[key].item() == pytest.approx(out32[key].item(), rel=2e-3)


def test_class_count_mismatch_raises():
    tensors = [paddle.to_tensor(a) for a in _toy_batch()]
    with pytest.raises(ValueError, match="num_classes"):
        fcos_losses(*tensors, cfg=LossConfig(), num_classes=3)


def test_normalisers_use_the_device_mean_when_reduced(monkeypatch):
    """AdelaiDet all-reduces num_pos and the centerness-target sum (mean over devices, num_pos clamped >= 1) and
    divides every local sum by them; PaddleDetection/torchvision normalise per device. A second device is simulated
    by an all_reduce_mean that averages with another rank's value (num_pos 6, ctr sum 5), as
    fcos.utils.dist.all_reduce_mean does with two processes (tests/test_dist.py)."""
    other = {2.0: 6.0}  # local num_pos 2 -> the other rank has 6 positives
    ctr_t = [math.sqrt((1 / 2) * (2 / 3)), 1.0]
    local_ctr = ctr_t[0] + ctr_t[1]
    seen = []

    def fake_mean(value):
        v = float(value)
        seen.append(v)
        partner = other.get(v, 5.0)  # the centerness sum of the other rank
        return paddle.to_tensor((v + partner) / 2.0, dtype="float32")

    monkeypatch.setattr("fcos.modeling.losses.all_reduce_mean", fake_mean)
    tensors = [paddle.to_tensor(a) for a in _toy_batch()]
    out = fcos_losses(*tensors, cfg=LossConfig(), num_classes=2)
    assert seen == [2.0, pytest.approx(local_ctr)]
    exp_cls, exp_box, exp_ctr = _expected_toy(LossConfig())
    num_pos_mean = (2.0 + 6.0) / 2
    assert out["loss_cls"].item() == pytest.approx(exp_cls * 2.0 / num_pos_mean, rel=1e-5)
    assert out["loss_ctr"].item() == pytest.approx(exp_ctr * 2.0 / num_pos_mean, rel=1e-5)
    assert out["loss_box"].item() == pytest.approx(exp_box * local_ctr / ((local_ctr + 5.0) / 2), rel=1e-5)
    seen.clear()
    per_device = fcos_losses(*tensors, cfg=LossConfig(reduce_across_devices=False), num_classes=2)
    assert seen == []  # per-device normalisers never reduce
    assert per_device["loss_cls"].item() == pytest.approx(exp_cls, rel=1e-5)
