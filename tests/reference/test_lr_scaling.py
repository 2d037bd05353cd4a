"""Linear scaling at a batch other than 16: our resolved rt_* schedule equals detectron2's
``DefaultTrainer.auto_scale_workers`` (``make test-reference``).

AdelaiDet's FCOS_RT configs train 16 images on 8 GPUs and leave ``SOLVER.REFERENCE_WORLD_SIZE`` at detectron2's
default 0 (no scaling); setting it to 8 turns on detectron2's rule: with n GPUs the batch becomes 2n, the LR x n/8
and MAX_ITER, STEPS, WARMUP_ITERS, TEST.EVAL_PERIOD, CHECKPOINT_PERIOD ``int(round(x * 8 / n))``. Our rt_* configs
(``schedule.scale_steps: true``) at ``data.batch_size = 2n`` must resolve to the same numbers, and our LR curve
must equal the reference's ``WarmupMultiStepLR`` built from the scaled config at step 0, mid-warmup, warmup end,
around each milestone and at the last step.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from adelaidet_models import adelaidet_cfg  # noqa: E402
from parity import recipe_config  # noqa: E402

from fcos.engine.optim import build_lr_schedule, resolve_epoch_schedule  # noqa: E402

GPUS = (1, 2, 3, 4, 12, 16)  # batch 2, 4, 6, 8, 24, 32 (k = 1/8 ... 2; 3 and 12 give non-integer periods)


@pytest.mark.parametrize("recipe", ["rt_dla34", "rt_r50"])
def test_batch_scaling_equals_auto_scale_workers(recipe: str) -> None:
    from detectron2.engine import DefaultTrainer
    from detectron2.solver import build_lr_scheduler

    base = adelaidet_cfg(recipe).clone()
    base.defrost()
    base.SOLVER.REFERENCE_WORLD_SIZE = 8
    ours16 = recipe_config(recipe)
    # the periods are ours (AdelaiDet: checkpoints every 5000 iterations, no evaluation during training)
    base.TEST.EVAL_PERIOD, base.SOLVER.CHECKPOINT_PERIOD = ours16.train.eval_every, ours16.train.ckpt_every
    base.freeze()
    for n in GPUS:
        scaled = DefaultTrainer.auto_scale_workers(base, n)
        ref = scaled.SOLVER
        cfg = resolve_epoch_schedule(recipe_config(recipe, [f"data.batch_size={2 * n}"]), 117266)
        s = cfg.schedule
        assert cfg.data.batch_size == ref.IMS_PER_BATCH
        assert (s.max_steps, list(s.milestones), s.warmup_steps) == (ref.MAX_ITER, list(ref.STEPS), ref.WARMUP_ITERS)
        assert s.warmup_factor == ref.WARMUP_FACTOR and s.gamma == ref.GAMMA
        assert (cfg.train.ckpt_every, cfg.train.eval_every) == (ref.CHECKPOINT_PERIOD, scaled.TEST.EVAL_PERIOD)
        # the LR curve: detectron2's scheduler on a one-parameter SGD with the scaled BASE_LR
        ours = build_lr_schedule(cfg)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=ref.BASE_LR)
        sched = build_lr_scheduler(scaled, opt)
        probes = {0, ref.WARMUP_ITERS // 2, ref.WARMUP_ITERS - 1, ref.WARMUP_ITERS, ref.MAX_ITER - 1}
        for m in ref.STEPS:
            probes |= {m - 1, m}
        # fvcore's schedulers add WHERE_EPSILON = 1e-6 to the training fraction before switching from warmup and
        # before counting milestones, so at MAX_ITER >= 1e6 (batch <= 4 here) detectron2 ends warmup and steps the LR
        # lead = int(1e-6 * MAX_ITER) iterations early. We do not copy that float artefact: at those probes the
        # reference must equal our LR ``lead`` iterations later.
        lead = int(1e-6 * ref.MAX_ITER)
        boundaries = [ref.WARMUP_ITERS, *ref.STEPS]
        for it in sorted(probes):  # the LR iteration ``it`` trains with: LRMultiplier at last_epoch = it
            sched.last_epoch = it
            want = sched.get_lr()[0]
            if lead and any(0 < b - it <= lead for b in boundaries):
                assert ours.lr_at(it + lead) == pytest.approx(want, rel=1e-9, abs=0), (recipe, n, it, lead)
            else:
                assert ours.lr_at(it) == pytest.approx(want, rel=1e-9, abs=0), (recipe, n, it)
