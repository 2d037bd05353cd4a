"""Issue 14 item 4: our optimizer and LR schedule equal each recipe's reference solver (``make test-reference``).

For every recipe the reference model is built by its own code, converted by our converter, and both solvers are
built the way each project's training does:

* rt_dla34 / rt_r50: detectron2 ``build_optimizer`` + ``build_lr_scheduler`` (WarmupMultiStepLR through fvcore's
  ``LRMultiplier``) from ``adet.config.get_cfg()`` + the AdelaiDet FCOS_RT yaml.
* tv_r50: torchvision's ``references/detection`` recipe rebuilt with torch's own classes (train.py and engine.py
  are not in the wheel): train.py (pytorch/vision 3ceb056, ``main``) ``params = [p for p in model.parameters() if
  p.requires_grad]``; ``torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)``
  (one group: decay on norms and biases too; the newer ``--norm-weight-decay`` defaults to None = the same);
  ``MultiStepLR(milestones=args.lr_steps, gamma=args.lr_gamma)`` stepped once per epoch; engine.py
  ``train_one_epoch``: in epoch 0 ``LinearLR(start_factor=1/1000, total_iters=min(1000, len(data_loader) - 1))``
  stepped after every iteration. fcos_resnet50_fpn's documented command: ``--lr 0.01`` at 16 images, 26 epochs,
  ``--lr-steps 16 22``.
* r50_ms_2x: PaddleDetection ``OptimizerBuilder`` + ``LearningRate`` of configs/fcos/fcos_r50_fpn_multiscale_2x_coco.yml
  inside .venv-ppdet (``ppdet_tasks.solver_*``).

Checked: each trainable parameter's (lr factor, weight decay) through the converter's key map, frozen parameters
frozen on both sides, the LR at step 0, mid-warmup, warmup end and around each milestone, and the parameters after
two optimizer steps (momentum included) from the same weights and gradients. The step test uses base LR 100 and
gradients ~1e-4 of each tensor's scale, so the weight-decay term is as large as the gradient term and the update is
far above fp32 resolution (at the real LR an update is below the parameters' float32 spacing); the update
(p1 - p0) is compared, never the parameters themselves.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from parity import recipe_config  # noqa: E402

import fcos  # noqa: E402
from fcos.checkpoint.weights import load_weights  # noqa: E402
from fcos.engine.optim import (  # noqa: E402
    build_lr_schedule,
    build_optimizer,
    build_param_groups,
    resolve_epoch_schedule,
)

STEP_BASE_LR = 100.0
# Iterations per epoch of both epoch-based references on COCO train2017 at 16 images (8 GPUs x 2): 117,266 training
# images (without annotation-less images) // 16, as their training logs show ("[7328/7329]"); our epoch-based
# configs (schedule.epochs, milestone_epochs) are resolved for that training set.
COCO_TRAIN_IMAGES = 117266
COCO_STEPS_PER_EPOCH = COCO_TRAIN_IMAGES // 16
UPDATE_RTOL = 1e-4  # relative L2 of the update difference, per tensor (fp32 spacing of p vs an update of ~2e-4 p)


def _grads_for(state: dict[str, np.ndarray], keys: list[str], seed: int) -> dict[str, np.ndarray]:
    """Random gradients ~1e-4 x each tensor's RMS (so decay and gradient are comparable)."""
    rng = np.random.RandomState(seed)
    out = {}
    for k in keys:
        v = np.asarray(state[k], np.float64)
        scale = 1e-4 * (float(np.sqrt(np.mean(v**2))) + 1e-3)
        out[k] = (rng.randn(*v.shape) * scale).astype(np.float32)
    return out


def _grads_to_ours(convert: Callable, s0: dict, grads: dict[str, np.ndarray], cfg: Any, key_map: dict) -> dict:
    """Reference gradients in our names, through the converter itself (so the class rows torchvision's 91-way
    classifier drops are dropped from its gradient too)."""
    conv = convert({**s0, **grads}, cfg)
    return {key_map[k]: conv.state[key_map[k]] for k in grads}


def _our_model_from(conv_state: dict[str, np.ndarray], cfg: Any) -> Any:
    model = fcos.build_model(cfg)
    report = load_weights(model, conv_state, strict=True)
    assert not report.missing and not report.unexpected and not report.shape_mismatch, report
    return model


def _our_groups(model: Any, cfg: Any) -> dict[str, tuple[float, float]]:
    """Our parameter name -> (lr factor, weight decay)."""
    ids = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in build_param_groups(model, cfg):
        for p in g["params"]:
            out[ids[id(p)]] = (float(g["learning_rate"]), float(g["weight_decay"]))
    return out


def _our_steps(model: Any, cfg: Any, grads: list[dict[str, np.ndarray]], lrs: list[float]) -> dict[str, np.ndarray]:
    """Our optimizer's steps with the given gradients (our names) and global LRs; returns trainable params after."""
    import paddle

    opt = build_optimizer(model, cfg)
    params = dict(model.named_parameters())
    for g, lr in zip(grads, lrs):
        # d(sum p * G)/dp = G exactly: the gradients arrive through autograd, as in training
        loss = paddle.add_n([(params[k] * paddle.to_tensor(v)).sum() for k, v in g.items()])
        loss.backward()
        opt.set_lr(lr)
        opt.step()
        opt.clear_grad()
    return {k: p.numpy().copy() for k, p in params.items() if not p.stop_gradient}


def _assert_updates(name: str, before: dict, after_ref: dict, after_ours: dict, key_map: dict[str, str]) -> dict:
    """Per mapped tensor: ||(ours1 - p0) - (ref1 - p0)|| <= UPDATE_RTOL ||ref1 - p0||."""
    worst, worst_key = 0.0, ""
    for src, dst in key_map.items():
        p0 = np.asarray(before[dst], np.float64)
        d_ref = np.asarray(after_ref[dst], np.float64) - p0
        d_our = np.asarray(after_ours[dst], np.float64) - p0
        denom = np.linalg.norm(d_ref)
        assert denom > 0, f"{name}: {src} did not move in the reference step"
        rel = float(np.linalg.norm(d_our - d_ref) / denom)
        if rel > worst:
            worst, worst_key = rel, dst
    assert worst <= UPDATE_RTOL, f"{name}: update of {worst_key} differs by {worst:.3g} relative"
    return {"tensors": len(key_map), "max_rel_update_diff": worst}


def _assert_lrs(name: str, ours: Callable[[int], float], ref: dict[int, float]) -> float:
    worst = 0.0
    for step, want in ref.items():
        got = ours(step)
        rel = abs(got - want) / want
        assert rel <= 1e-9, f"{name}: lr at step {step}: ours {got!r}, reference {want!r}"
        worst = max(worst, rel)
    return worst


def _numpy_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def _torch_two_steps(model: torch.nn.Module, opt: Any, grads: list[dict[str, np.ndarray]], set_lr: Callable) -> None:
    params = dict(model.named_parameters())
    for i, g in enumerate(grads):
        set_lr(i)
        opt.zero_grad()
        for k, v in g.items():
            params[k].grad = torch.from_numpy(v.copy())
        opt.step()


def _compare_groups(
    name: str,
    ref_groups: dict[str, tuple[float, float]],
    ours: dict[str, tuple[float, float]],
    key_map: dict[str, str],
    ref_trainable: set[str],
) -> dict:
    """Each reference trainable parameter's (lr factor, decay) equals its image's in our groups, and the trainable
    sets correspond through the key map."""
    mapped_trainable = {key_map[k] for k in ref_trainable if k in key_map}
    assert set(ours) == mapped_trainable, (
        f"{name}: trainable sets differ: only ours {sorted(set(ours) - mapped_trainable)[:6]}, "
        f"only reference {sorted(mapped_trainable - set(ours))[:6]}"
    )
    assert len(mapped_trainable) == len(ref_trainable), f"{name}: unmapped trainable reference parameters"
    bad = [
        (k, ref_groups[k], ours[key_map[k]])
        for k in ref_trainable
        if not np.allclose(ref_groups[k], ours[key_map[k]], rtol=1e-12, atol=0)
    ]
    assert not bad, f"{name}: (lr factor, weight decay) differ (reference, ours): {bad[:6]}"
    kinds = sorted({v for v in ours.values()})
    return {"trainable": len(ours), "groups": kinds}


# --------------------------------------------------------------------------------------------
# AdelaiDet / detectron2
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["rt_dla34", "rt_r50"])
def test_solver_equals_detectron2(adelaidet_model, recipe: str) -> None:
    t0 = time.time()
    from adelaidet_models import adelaidet_cfg, build_adelaidet_model
    from detectron2.solver import build_lr_scheduler
    from detectron2.solver import build_optimizer as d2_build_optimizer

    from fcos.checkpoint.convert_adelaidet import convert_adelaidet

    cfg_ref = adelaidet_cfg(recipe)
    ref = build_adelaidet_model(recipe, seed=0)
    ref.train()
    s0 = _numpy_state(ref)
    conv = convert_adelaidet(s0, recipe_config(recipe))
    key_map = dict(conv.mapped)
    cfg = recipe_config(recipe)
    assert (
        cfg.data.batch_size == cfg_ref.SOLVER.IMS_PER_BATCH
        and cfg.optim.base_batch_size == cfg_ref.SOLVER.IMS_PER_BATCH
    )

    # --- parameter groups
    opt_ref = d2_build_optimizer(cfg_ref, ref)
    base = cfg_ref.SOLVER.BASE_LR
    ref_groups, ref_momentum = {}, set()
    names = {id(p): n for n, p in ref.named_parameters()}
    for g in opt_ref.param_groups:
        ref_momentum.add((g["momentum"], g.get("nesterov", False), g.get("dampening", 0)))
        for p in g["params"]:
            ref_groups[names[id(p)]] = (g["lr"] / base, g["weight_decay"])
    ref_trainable = {n for n, p in ref.named_parameters() if p.requires_grad}
    assert set(ref_groups) == ref_trainable
    model = _our_model_from(conv.state, cfg)
    info = _compare_groups(recipe, ref_groups, _our_groups(model, cfg), key_map, ref_trainable)
    assert ref_momentum == {(cfg.optim.momentum, False, 0)}
    assert not cfg_ref.SOLVER.CLIP_GRADIENTS.ENABLED and cfg.optim.clip_grad_norm is None

    # --- LR schedule (the LR iteration i trains with: LRMultiplier at last_epoch = i)
    sched = build_lr_scheduler(cfg_ref, opt_ref)
    warm = cfg_ref.SOLVER.WARMUP_ITERS
    steps = [0, 1, warm // 2, warm - 1, warm, warm + 1]
    for m in cfg_ref.SOLVER.STEPS:
        steps += [m - 1, m, m + 1]
    steps.append(cfg_ref.SOLVER.MAX_ITER - 1)
    ref_lrs = {}
    for s in steps:
        sched.last_epoch = s
        ref_lrs[s] = sched.get_lr()[0]
    schedule = build_lr_schedule(cfg)
    info["lr_rel_diff"] = _assert_lrs(recipe, schedule.lr_at, ref_lrs)
    assert cfg.schedule.max_steps == cfg_ref.SOLVER.MAX_ITER

    # --- two optimizer steps from the same weights and gradients (warmup end and the step after)
    cfg_ref_step = cfg_ref.clone()
    cfg_ref_step.defrost()
    cfg_ref_step.SOLVER.BASE_LR = STEP_BASE_LR
    opt_step = d2_build_optimizer(cfg_ref_step, ref)
    sched_step = build_lr_scheduler(cfg_ref_step, opt_step)
    grads_ref = [_grads_for(s0, sorted(ref_trainable), seed) for seed in (1, 2)]

    def set_lr(i: int) -> None:
        sched_step.last_epoch = warm + i
        for g, lr in zip(opt_step.param_groups, sched_step.get_lr()):
            g["lr"] = lr

    _torch_two_steps(ref, opt_step, grads_ref, set_lr)
    after_ref = convert_adelaidet(_numpy_state(ref), recipe_config(recipe)).state
    cfg_step = recipe_config(recipe, [f"optim.lr={STEP_BASE_LR}"])
    ours_sched = build_lr_schedule(cfg_step)
    grads_ours = [_grads_to_ours(convert_adelaidet, s0, g, cfg, key_map) for g in grads_ref]
    after_ours = _our_steps(model, cfg_step, grads_ours, [ours_sched.lr_at(warm + i) for i in (0, 1)])
    trainable_map = {k: key_map[k] for k in ref_trainable}
    info.update(_assert_updates(recipe, conv.state, after_ref, after_ours, trainable_map))
    print(f"\n{recipe} vs detectron2 solver: {info}, {time.time() - t0:.1f} s")


def test_bias_lr_factor_groups_equal_detectron2() -> None:
    """SOLVER.BIAS_LR_FACTOR 2 (no recipe sets it): detectron2 gives every parameter named "bias" the factor,
    normalisation biases included (their decay stays WEIGHT_DECAY_NORM); so does optim.bias_lr_factor."""
    from adelaidet_models import adelaidet_cfg, build_adelaidet_model
    from detectron2.solver import build_optimizer as d2_build_optimizer

    from fcos.checkpoint.convert_adelaidet import convert_adelaidet

    recipe = "rt_dla34"
    cfg_ref = adelaidet_cfg(recipe).clone()
    cfg_ref.defrost()
    cfg_ref.SOLVER.BIAS_LR_FACTOR = 2.0
    ref = build_adelaidet_model(recipe, seed=0)
    conv = convert_adelaidet(_numpy_state(ref), recipe_config(recipe))
    opt_ref = d2_build_optimizer(cfg_ref, ref)
    names = {id(p): n for n, p in ref.named_parameters()}
    base = cfg_ref.SOLVER.BASE_LR
    ref_groups = {names[id(p)]: (g["lr"] / base, g["weight_decay"]) for g in opt_ref.param_groups for p in g["params"]}
    cfg = recipe_config(recipe, ["optim.bias_lr_factor=2.0"])
    model = _our_model_from(conv.state, cfg)
    info = _compare_groups(recipe, ref_groups, _our_groups(model, cfg), dict(conv.mapped), set(ref_groups))
    assert (2.0, 0.0) in info["groups"] and (2.0, 1e-4) in info["groups"]


# --------------------------------------------------------------------------------------------
# torchvision references/detection
# --------------------------------------------------------------------------------------------


def _torchvision_fcos_as_trained(seed: int = 0) -> torch.nn.Module:
    """fcos_resnet50_fpn as the recipe trains it (weights_backbone given: FrozenBN, 3 trainable stages), built
    without the download: the same calls as torchvision.models.detection.fcos_resnet50_fpn makes."""
    import torchvision
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(seed)
    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return torchvision.models.detection.FCOS(backbone, num_classes=91)


def test_solver_equals_torchvision_recipe() -> None:
    t0 = time.time()
    from fcos.checkpoint.convert_torchvision import convert_torchvision_fcos

    recipe = "tv_r50"
    cfg = resolve_epoch_schedule(recipe_config(recipe), COCO_TRAIN_IMAGES)  # as training on COCO resolves it
    ref = _torchvision_fcos_as_trained(0)
    s0 = _numpy_state(ref)
    conv = convert_torchvision_fcos(s0, cfg)
    key_map = dict(conv.mapped)
    # the documented command: --lr 0.01 with 16 images (8 GPUs x 2), momentum/weight decay at train.py's defaults
    lr, momentum, weight_decay, lr_steps, epochs = 0.01, 0.9, 1e-4, [16, 22], 26
    assert (cfg.optim.lr, cfg.data.batch_size, cfg.optim.momentum, cfg.optim.weight_decay) == (
        lr,
        16,
        momentum,
        weight_decay,
    )
    params = [p for p in ref.parameters() if p.requires_grad]
    opt_ref = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    names = {id(p): n for n, p in ref.named_parameters()}
    ref_groups = {names[id(p)]: (g["lr"] / lr, g["weight_decay"]) for g in opt_ref.param_groups for p in g["params"]}
    ref_trainable = set(ref_groups)
    model = _our_model_from(conv.state, cfg)
    info = _compare_groups(recipe, ref_groups, _our_groups(model, cfg), key_map, ref_trainable)
    assert cfg.optim.clip_grad_norm is None  # train.py clips nothing

    # --- LR: MultiStepLR per epoch, LinearLR per iteration in epoch 0 (engine.py), on COCO's epoch length
    spe = COCO_STEPS_PER_EPOCH
    multistep = torch.optim.lr_scheduler.MultiStepLR(opt_ref, milestones=lr_steps, gamma=0.1)
    warmup_iters = min(1000, spe - 1)
    warmup = torch.optim.lr_scheduler.LinearLR(opt_ref, start_factor=1.0 / 1000, total_iters=warmup_iters)
    ref_lrs = {}
    for epoch in range(epochs):
        if epoch == 0:
            for it in range(spe):
                if it <= warmup_iters + 2 or it == spe - 1:
                    ref_lrs[it] = opt_ref.param_groups[0]["lr"]
                opt_ref.step()  # no gradients: nothing moves; keeps torch's step-order check quiet
                warmup.step()
        else:
            ref_lrs[epoch * spe] = ref_lrs[epoch * spe + 1] = ref_lrs[(epoch + 1) * spe - 1] = opt_ref.param_groups[0][
                "lr"
            ]
        multistep.step()
    schedule = build_lr_schedule(cfg)
    info["lr_rel_diff"] = _assert_lrs(recipe, schedule.lr_at, ref_lrs)
    assert cfg.schedule.max_steps == epochs * spe
    assert (cfg.schedule.epochs, cfg.schedule.milestone_epochs) == (epochs, lr_steps)

    # --- two steps at base LR 100 after warmup
    grads_ref = [_grads_for(s0, sorted(ref_trainable), seed) for seed in (1, 2)]
    ref_step = _torchvision_fcos_as_trained(0)
    ref_step.load_state_dict({k: torch.from_numpy(v) for k, v in s0.items()})
    opt_step = torch.optim.SGD(
        [p for p in ref_step.parameters() if p.requires_grad],
        lr=STEP_BASE_LR,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    _torch_two_steps(ref_step, opt_step, grads_ref, lambda i: None)
    after_ref = convert_torchvision_fcos(_numpy_state(ref_step), cfg).state
    cfg_step = recipe_config(recipe, [f"optim.lr={STEP_BASE_LR}"])
    grads_ours = [_grads_to_ours(convert_torchvision_fcos, s0, g, cfg, key_map) for g in grads_ref]
    ours_sched = build_lr_schedule(cfg_step)
    warm = cfg_step.schedule.warmup_steps
    after_ours = _our_steps(model, cfg_step, grads_ours, [ours_sched.lr_at(warm + i) for i in (0, 1)])
    assert ours_sched.lr_at(warm) == ours_sched.lr_at(warm + 1) == STEP_BASE_LR
    info.update(_assert_updates(recipe, conv.state, after_ref, after_ours, {k: key_map[k] for k in ref_trainable}))
    print(f"\n{recipe} vs torchvision references/detection solver: {info}, {time.time() - t0:.1f} s")


# --------------------------------------------------------------------------------------------
# PaddleDetection
# --------------------------------------------------------------------------------------------


def test_solver_equals_paddledetection(ppdet_worker, ppdet_fcos) -> None:
    t0 = time.time()
    from fcos.checkpoint.convert_paddledet import convert_paddledet

    recipe = "r50_ms_2x"
    cfg = resolve_epoch_schedule(recipe_config(recipe), COCO_TRAIN_IMAGES)  # as training on COCO resolves it
    s0 = ppdet_worker.call("ppdet_tasks:state_dict", name=ppdet_fcos["name"])
    conv = convert_paddledet(s0, cfg)
    key_map = dict(conv.mapped)
    steps_per_epoch = COCO_STEPS_PER_EPOCH
    info_ref = ppdet_worker.call("ppdet_tasks:solver_groups", name=ppdet_fcos["name"], steps_per_epoch=steps_per_epoch)
    ref_trainable = set(info_ref["trainable"])
    ref_groups = {k: (float(lr), float(wd)) for k, lr, wd in info_ref["groups"]}
    assert info_ref["momentum"] == cfg.optim.momentum and info_ref["clip"] is None and cfg.optim.clip_grad_norm is None
    model = _our_model_from(conv.state, cfg)
    info = _compare_groups(recipe, ref_groups, _our_groups(model, cfg), key_map, ref_trainable)

    # --- LR: LinearWarmup + PiecewiseDecay (milestones in epochs x steps_per_epoch)
    assert info_ref["epoch"] * steps_per_epoch == cfg.schedule.max_steps and info_ref["epoch"] == cfg.schedule.epochs
    schedule = build_lr_schedule(cfg)
    ref_lrs = {int(s): float(v) for s, v in info_ref["lrs"]}
    info["lr_rel_diff"] = _assert_lrs(recipe, schedule.lr_at, ref_lrs)

    # --- two steps at base LR 100 after warmup
    grads_ref = [_grads_for(s0, sorted(ref_trainable), seed) for seed in (1, 2)]
    flat = {f"g{i}": np.concatenate([g[k].ravel() for k in sorted(ref_trainable)]) for i, g in enumerate(grads_ref)}
    out = ppdet_worker.call(
        "ppdet_tasks:solver_steps",
        name=ppdet_fcos["name"],
        keys=sorted(ref_trainable),
        base_lr=STEP_BASE_LR,
        steps_per_epoch=steps_per_epoch,
        **flat,
    )
    after_ref_state = dict(s0)
    off = 0
    flat_after = out["params"]
    for k in sorted(ref_trainable):
        n = int(np.prod(s0[k].shape))
        after_ref_state[k] = flat_after[off : off + n].reshape(s0[k].shape)
        off += n
    after_ref = convert_paddledet(after_ref_state, cfg).state
    cfg_step = recipe_config(recipe, [f"optim.lr={STEP_BASE_LR}"])
    ours_sched = build_lr_schedule(cfg_step)
    warm = cfg_step.schedule.warmup_steps
    assert [int(s) for s in out["steps"]] == [warm, warm + 1]
    grads_ours = [_grads_to_ours(convert_paddledet, s0, g, cfg, key_map) for g in grads_ref]
    after_ours = _our_steps(model, cfg_step, grads_ours, [ours_sched.lr_at(warm + i) for i in (0, 1)])
    info.update(_assert_updates(recipe, conv.state, after_ref, after_ours, {k: key_map[k] for k in ref_trainable}))
    print(f"\n{recipe} vs PaddleDetection solver: {info}, {time.time() - t0:.1f} s")
