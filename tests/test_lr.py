"""Warmup + multi-step LR values by hand, the linear scaling rule, parameter groups."""

from __future__ import annotations

import pytest

from fcos.config import config_from_dict
from fcos.engine.optim import LRSchedule, build_lr_schedule, build_optimizer, build_param_groups, scaled_base_lr


def test_warmup_and_milestones_by_hand():
    s = LRSchedule(base_lr=0.01, milestones=(10, 15), gamma=0.1, warmup_steps=4, warmup_factor=0.001)
    # warmup: factor = 0.001 * (1 - a) + a with a = step / 4
    assert s.lr_at(0) == pytest.approx(0.01 * 0.001)
    assert s.lr_at(1) == pytest.approx(0.01 * (0.001 * 0.75 + 0.25))
    assert s.lr_at(2) == pytest.approx(0.01 * (0.001 * 0.5 + 0.5))
    assert s.lr_at(3) == pytest.approx(0.01 * (0.001 * 0.25 + 0.75))
    assert s.lr_at(4) == pytest.approx(0.01)
    assert s.lr_at(9) == pytest.approx(0.01)
    # a milestone m applies from step m on (detectron2's bisect_right)
    assert s.lr_at(10) == pytest.approx(0.001)
    assert s.lr_at(14) == pytest.approx(0.001)
    assert s.lr_at(15) == pytest.approx(0.0001)
    assert s.lr_at(1000) == pytest.approx(0.0001)


def test_warmup_overlapping_a_milestone():
    s = LRSchedule(base_lr=1.0, milestones=(2,), gamma=0.5, warmup_steps=4, warmup_factor=0.0)
    assert s.lr_at(3) == pytest.approx(0.5 * 0.75)


def test_no_warmup():
    s = LRSchedule(base_lr=0.02, milestones=(), warmup_steps=0)
    assert [s.lr_at(i) for i in (0, 1, 99)] == [0.02, 0.02, 0.02]


def _cfg(batch, base, scale=True):
    return config_from_dict(
        {
            "data": {"batch_size": batch},
            "optim": {"lr": 0.01, "base_batch_size": base, "scale_lr": scale},
            "schedule": {"max_steps": 100, "milestones": [50, 80], "warmup_steps": 10, "warmup_factor": 0.1},
        }
    )


def test_linear_scaling_rule():
    assert scaled_base_lr(_cfg(16, 16)) == pytest.approx(0.01)
    assert scaled_base_lr(_cfg(8, 16)) == pytest.approx(0.005)
    assert scaled_base_lr(_cfg(64, 16)) == pytest.approx(0.04)
    assert scaled_base_lr(_cfg(8, 16, scale=False)) == pytest.approx(0.01)
    s = build_lr_schedule(_cfg(4, 16))
    assert s.base_lr == pytest.approx(0.0025)
    assert s.milestones == (50, 80)
    assert s.lr_at(0) == pytest.approx(0.0025 * 0.1)
    assert s.lr_at(50) == pytest.approx(0.00025)


def test_param_groups_and_effective_lr():
    import paddle

    from fcos.modeling import build_model

    cfg = config_from_dict(
        {
            "model": {
                "num_classes": 2,
                "backbone": {"dla_levels": [1, 1, 1, 1, 1, 1], "dla_channels": [4, 8, 8, 16, 16, 32]},
                "fpn": {"out_channels": 16},
                "head": {"num_convs": 1, "gn_groups": 4},
            },
            "optim": {"lr": 0.1, "weight_decay": 1e-4, "weight_decay_norm": 0.0, "bias_lr_factor": 2.0},
        }
    )
    model = build_model(cfg)
    groups = build_param_groups(model, cfg)
    by_key = {(g["weight_decay"], g["learning_rate"]): len(g["params"]) for g in groups}
    assert (1e-4, 1.0) in by_key and (0.0, 1.0) in by_key and (1e-4, 2.0) in by_key
    n_trainable = sum(1 for p in model.parameters() if not p.stop_gradient)
    assert sum(by_key.values()) == n_trainable

    opt = build_optimizer(model, cfg)
    opt.set_lr(0.05)
    assert opt.get_lr() == pytest.approx(0.05)
    # a bias gets bias_lr_factor x the global lr: check by a plain SGD-equivalent step (momentum 0 on step 1)
    conv = next(m for m in model.sublayers() if isinstance(m, paddle.nn.Conv2D) and m.bias is not None)
    bias, weight = conv.bias, conv.weight
    b0, w0 = bias.numpy().copy(), weight.numpy().copy()
    loss = bias.sum() + weight.sum()
    loss.backward()
    opt.step()
    # conv bias: lr 0.05 * bias_lr_factor 2, L2 decay 1e-4 (only norm parameters are exempt)
    expected_b = b0 - 0.1 * (1.0 + 1e-4 * b0)
    expected_w = w0 - 0.05 * (1.0 + 1e-4 * w0)
    assert paddle.allclose(bias, paddle.to_tensor(expected_b), atol=1e-6)
    assert paddle.allclose(weight, paddle.to_tensor(expected_w), atol=1e-6)
