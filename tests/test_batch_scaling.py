"""Linear scaling at a batch other than the recipe's: the LR by k = batch / base and, for step-based recipes with
``schedule.scale_steps`` (rt_*), steps, milestones, warmup and the eval/checkpoint periods by 1 / k, as detectron2's
``DefaultTrainer.auto_scale_workers`` does. Numbers by hand."""

from __future__ import annotations

import pytest

import fcos
from fcos.config import ConfigError, config_from_dict
from fcos.engine.optim import build_lr_schedule, resolve_epoch_schedule, scale_schedule_to_batch, scaled_base_lr


def _rt(batch: int) -> fcos.Config:
    return fcos.load_config("configs/rt_dla34.yml", overrides=[f"data.batch_size={batch}"])


def test_rt_recipe_at_batch_4_trains_the_same_epochs():
    cfg = resolve_epoch_schedule(_rt(4), 5000)  # k = 4 / 16 = 0.25: every period x 4, LR / 4
    s = cfg.schedule
    assert (s.max_steps, s.milestones, s.warmup_steps) == (1440000, [1200000, 1360000], 4000)
    assert (cfg.train.eval_every, cfg.train.ckpt_every) == (20000, 20000)
    assert scaled_base_lr(cfg) == pytest.approx(0.0025)
    sched = build_lr_schedule(cfg)
    assert sched.lr_at(0) == pytest.approx(0.0025 * 0.001)
    assert sched.lr_at(2000) == pytest.approx(0.0025 * (0.001 * 0.5 + 0.5))  # mid-warmup (step 2000 of 4000)
    assert sched.lr_at(4000) == pytest.approx(0.0025)
    assert sched.lr_at(1199999) == pytest.approx(0.0025) and sched.lr_at(1200000) == pytest.approx(0.00025)
    assert sched.lr_at(1360000) == pytest.approx(0.000025)


def test_rounding_follows_python_round():
    # k = 24 / 16 = 1.5: 1000 / 1.5 = 666.67 -> 667; 360000 / 1.5 = 240000; 5000 / 1.5 = 3333.3 -> 3333
    s = resolve_epoch_schedule(_rt(24), 5000)
    assert (s.schedule.max_steps, s.schedule.milestones, s.schedule.warmup_steps) == (240000, [200000, 226667], 667)
    assert s.train.eval_every == 3333
    # k = 32 / 16 = 2: 5 / 2 = 2.5 rounds half to even -> 2 (detectron2 uses Python's round too)
    cfg = config_from_dict(
        {
            "data": {"batch_size": 32},
            "optim": {"base_batch_size": 16},
            "schedule": {"max_steps": 7, "milestones": [3, 5], "warmup_steps": 5, "scale_steps": True},
        }
    )
    assert scale_schedule_to_batch(cfg).schedule.milestones == [2, 2]
    assert scale_schedule_to_batch(cfg).schedule.max_steps == 4  # 3.5 -> 4 (even)


def test_no_scaling_cases_return_the_config_itself():
    rt = _rt(16)
    assert resolve_epoch_schedule(rt, 5000) is rt  # recipe batch
    off = fcos.load_config("configs/rt_dla34.yml", overrides=["data.batch_size=4", "optim.scale_lr=false"])
    assert scale_schedule_to_batch(off) is off and scaled_base_lr(off) == pytest.approx(0.01)
    lr_only = fcos.load_config("configs/rt_dla34.yml", overrides=["data.batch_size=4", "schedule.scale_steps=false"])
    assert scale_schedule_to_batch(lr_only) is lr_only and scaled_base_lr(lr_only) == pytest.approx(0.0025)
    demo = fcos.load_config("configs/demo_shapes.yml")  # its base batch is its batch: make demo is unchanged
    assert demo.data.batch_size == demo.optim.base_batch_size and resolve_epoch_schedule(demo, 100) is demo


def test_epoch_recipes_follow_the_batch_through_the_dataset():
    tv = fcos.load_config("configs/tv_r50.yml", overrides=["data.batch_size=4"])
    s = resolve_epoch_schedule(tv, 5000).schedule  # 5000 // 4 = 1250 steps per epoch; warmup stays 1000 steps
    assert (s.max_steps, s.milestones, s.warmup_steps) == (26 * 1250, [16 * 1250, 22 * 1250], 1000)
    assert scaled_base_lr(tv) == pytest.approx(0.0025)
    with pytest.raises(ConfigError, match="schedule.scale_steps"):
        fcos.load_config("configs/tv_r50.yml", overrides=["schedule.scale_steps=true"])
