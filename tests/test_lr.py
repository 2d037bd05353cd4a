"""Warmup + multi-step LR values by hand, the linear scaling rule, parameter groups."""

from __future__ import annotations

import numpy as np
import pytest

from fcos.config import config_from_dict
from fcos.engine.optim import (
    LRSchedule,
    build_lr_schedule,
    build_optimizer,
    build_param_groups,
    resolve_epoch_schedule,
    scaled_base_lr,
)


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


def _tiny(optim: dict, use_scale: bool = True):
    from fcos.modeling import build_model

    cfg = config_from_dict(
        {
            "model": {
                "num_classes": 2,
                "backbone": {"dla_levels": [1, 1, 1, 1, 1, 1], "dla_channels": [4, 8, 8, 16, 16, 32]},
                "fpn": {"out_channels": 16},
                "head": {"num_convs": 2, "gn_groups": 4, "use_scale": use_scale},
            },
            "optim": {"lr": 0.1, **optim},
        }
    )
    return build_model(cfg), cfg


def _groups_by_name(model, cfg) -> dict:
    ids = {id(p): n for n, p in model.named_parameters()}
    return {
        ids[id(p)]: (g["learning_rate"], g["weight_decay"]) for g in build_param_groups(model, cfg) for p in g["params"]
    }


def test_tower_bias_lr_factor_only_on_tower_conv_biases():
    """PaddleDetection FCOSFeat: the cls/bbox tower conv biases train at 2x; predictors, FPN and backbone biases,
    GroupNorm affine and the Scales do not (norms without decay, the rest with it)."""
    model, cfg = _tiny({"tower_bias_lr_factor": 2.0, "weight_decay": 1e-4, "weight_decay_norm": 0.0})
    g = _groups_by_name(model, cfg)
    tower_biases = {n for n in g if n.startswith(("head.cls_tower.", "head.bbox_tower.")) and n.endswith(".bias")}
    gn = {n for n in tower_biases if n.split(".")[2] in ("1", "4")}  # conv, GN, ReLU per tower layer
    conv_biases = tower_biases - gn
    assert len(conv_biases) == 4 and len(gn) == 4
    for n, (lr, wd) in g.items():
        if n in conv_biases:
            assert (lr, wd) == (2.0, 1e-4), n
        elif n in gn:
            assert (lr, wd) == (1.0, 0.0), n
        elif n.startswith(("head.cls_logits", "head.bbox_pred", "head.ctrness", "head.scales", "fpn.")):
            assert (lr, wd) == (1.0, 1e-4), n
    assert g["head.cls_tower.1.weight"] == (1.0, 0.0)  # GroupNorm: weight_decay_norm
    assert g["head.scales.0.scale"] == (1.0, 1e-4)


def test_torchvision_recipe_decays_every_parameter():
    """tv_r50 (torchvision train.py: one SGD group, --weight-decay 1e-4): norms and biases decay too."""
    import fcos

    cfg = fcos.load_config("configs/tv_r50.yml")
    assert (cfg.optim.weight_decay, cfg.optim.weight_decay_norm, cfg.optim.bias_lr_factor) == (1e-4, 1e-4, 1.0)
    model, tiny_cfg = _tiny({"weight_decay": 1e-4, "weight_decay_norm": 1e-4}, use_scale=False)
    assert set(_groups_by_name(model, tiny_cfg).values()) == {(1.0, 1e-4)}


def test_recipe_schedules_in_coco_epochs():
    """Epoch-based references at COCO's 7329 iterations per epoch (117,266 images // 16): torchvision 26 epochs,
    steps at 16 and 22; PaddleDetection 24 epochs, steps at 16 and 22, warmup 500 from 1/3; FCOS_RT detectron2
    iterations as given."""
    import fcos

    tv = fcos.load_config("configs/tv_r50.yml").schedule
    assert (tv.max_steps, tv.milestones, tv.warmup_steps, tv.warmup_factor) == (
        26 * 7329,
        [16 * 7329, 22 * 7329],
        1000,
        0.001,
    )
    pd = fcos.load_config("configs/r50_ms_2x.yml")
    assert (pd.schedule.max_steps, pd.schedule.milestones) == (24 * 7329, [16 * 7329, 22 * 7329])
    assert pd.schedule.warmup_steps == 500 and pd.schedule.warmup_factor == pytest.approx(1 / 3)
    assert pd.optim.tower_bias_lr_factor == 2.0
    s = build_lr_schedule(pd)
    # PaddleDetection LinearWarmup: base * (1/3 * (1 - i/500) + i/500); PiecewiseDecay from the milestone step on
    assert s.lr_at(0) == pytest.approx(0.01 / 3)
    assert s.lr_at(250) == pytest.approx(0.01 * (1 / 3 * 0.5 + 0.5))
    assert s.lr_at(500) == pytest.approx(0.01)
    assert s.lr_at(117263) == pytest.approx(0.01) and s.lr_at(117264) == pytest.approx(0.001)
    assert s.lr_at(161238) == pytest.approx(0.0001)
    rt = fcos.load_config("configs/rt_dla34.yml")
    assert (rt.schedule.max_steps, rt.schedule.milestones, rt.schedule.warmup_steps) == (360000, [300000, 340000], 1000)
    assert resolve_epoch_schedule(rt, 5000) is rt  # iteration-based: independent of the dataset
    # the epoch-based recipes follow the training set: COCO's values back, and a 5000-image set (312 steps/epoch)
    for cfg, epochs in ((fcos.load_config("configs/tv_r50.yml"), 26), (pd, 24)):
        coco = resolve_epoch_schedule(cfg, 117266).schedule
        assert (coco.max_steps, coco.milestones) == (cfg.schedule.max_steps, cfg.schedule.milestones)
        small = resolve_epoch_schedule(cfg, 5000).schedule
        assert (small.max_steps, small.milestones) == (epochs * 312, [16 * 312, 22 * 312])
        assert small.warmup_steps == cfg.schedule.warmup_steps


def test_milestone_epochs_need_epochs():
    from fcos.config import ConfigError

    with pytest.raises(ConfigError, match="schedule.milestone_epochs"):
        config_from_dict({"schedule": {"milestone_epochs": [2]}})
    with pytest.raises(ConfigError, match="1..schedule.epochs"):
        config_from_dict({"schedule": {"epochs": 3, "milestone_epochs": [4]}})


def test_momentum_step_by_hand():
    """Paddle Momentum as torch SGD (dampening 0, no Nesterov): v = mu v + (g + wd p); p -= lr v, two steps."""
    import paddle

    model, cfg = _tiny({"weight_decay": 1e-4, "weight_decay_norm": 0.0, "momentum": 0.9})
    opt = build_optimizer(model, cfg)
    w = model.head.cls_logits.weight
    p0 = w.numpy().astype(np.float64)
    g1, g2 = np.full(p0.shape, 0.5), np.full(p0.shape, -0.25)
    for g, lr in ((g1, 0.1), (g2, 0.05)):
        (w * paddle.to_tensor(g.astype(np.float32))).sum().backward()
        opt.set_lr(lr)
        opt.step()
        opt.clear_grad()
    v1 = g1 + 1e-4 * p0
    p1 = p0 - 0.1 * v1
    v2 = 0.9 * v1 + g2 + 1e-4 * p1
    p2 = p1 - 0.05 * v2
    np.testing.assert_allclose(w.numpy(), p2, rtol=0, atol=1e-6)


def test_bias_lr_factor_on_every_bias_like_detectron2():
    """detectron2 get_default_optimizer_params: the "bias" override (lr x BIAS_LR_FACTOR) applies to norm biases
    too; their decay stays weight_decay_norm."""
    model, cfg = _tiny({"bias_lr_factor": 2.0, "weight_decay": 1e-4, "weight_decay_norm": 0.0})
    g = _groups_by_name(model, cfg)
    assert g["head.cls_tower.1.bias"] == (2.0, 0.0)  # GroupNorm bias
    assert g["head.cls_tower.1.weight"] == (1.0, 0.0)
    assert g["head.cls_tower.0.bias"] == (2.0, 1e-4)
    assert g["head.cls_logits.weight"] == (1.0, 1e-4)
