"""PaddleDetection task functions for ``ppdet_worker.py`` (they run in ``.venv-ppdet``; see ``ppdet_client.py``).

Each is ``f(ctx, **kwargs) -> dict`` (numpy arrays and JSON values). Models built here stay in
``ctx["models"][name]`` for later calls.

* ``build_fcos(ctx, name="fcos", config=FCOS_R50_MS_2X, seed=0, randomize=True, save=None)``: the config's
  architecture from ``ppdet.core.workspace``, eval mode, seeded random weights (``randomize_fcos``); ``save``
  writes ``paddle.save(model.state_dict())`` there. Returns ``num_params`` and ``keys`` (state-dict order).
* ``forward(ctx, name, image, im_shape, scale_factor)``: the architecture's test forward on an already
  normalised, padded batch (N, 3, H, W) float32; returns ``bbox`` (M, 6: class, score, x1, y1, x2, y2 in the
  original image) and ``bbox_num`` (N,).
* ``state_dict(ctx, name)``: the model's state dict as arrays (keys as PaddleDetection names them).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

PPDET_SRC = os.environ.get("FCOS_REF_PADDLEDET_SRC") or os.path.dirname(os.path.dirname(__import__("ppdet").__file__))
FCOS_R50_MS_2X = "configs/fcos/fcos_r50_fpn_multiscale_2x_coco.yml"


def _model(ctx: dict, name: str) -> Any:
    try:
        return ctx["models"][name]
    except KeyError:
        raise KeyError(
            f"no model {name!r} in this worker; build it first (built: {sorted(ctx.get('models', {}))})"
        ) from None


def randomize_fcos(model: Any, seed: int) -> None:
    """Seeded random weights that give many detections of varied sizes: BN statistics and affine parameters,
    GN affine, tower/FPN biases, per-level scales (so a level mix-up shows), and the predictors (the same rules as
    ``adelaidet_models.randomize_fcos``: scores below saturation, boxes about 5 strides wide)."""
    import paddle

    rng = np.random.RandomState(seed)
    paddle.seed(seed)
    state = model.state_dict()
    new = {}
    for key, value in state.items():
        shape = tuple(value.shape)
        if key.endswith("._mean"):
            new[key] = rng.randn(*shape) * 0.1
        elif key.endswith("._variance"):
            new[key] = rng.rand(*shape) * 0.5 + 0.75
        elif ".norm." in key or key.endswith("_norm.weight") or key.endswith("_norm.bias") or "bn" in key:
            new[key] = (rng.rand(*shape) * 0.5 + 0.75) if key.endswith("weight") else rng.randn(*shape) * 0.1
        elif key == "fcos_head.fcos_head_cls.weight":
            new[key] = rng.randn(*shape) * 0.03
        elif key == "fcos_head.fcos_head_cls.bias":  # a low prior keeps the sigmoid unsaturated: scores spread
            new[key] = rng.randn(*shape) * 0.5 - 4.5
        elif key == "fcos_head.fcos_head_reg.weight":
            new[key] = rng.randn(*shape) * 0.03
        elif key == "fcos_head.fcos_head_reg.bias":  # boxes ~5 strides wide, no degenerate (ReLU'd to 0) sides
            new[key] = rng.randn(*shape) * 0.5 + 2.5
        elif key == "fcos_head.fcos_head_centerness.weight":
            new[key] = rng.randn(*shape) * 0.03
        elif key == "fcos_head.fcos_head_centerness.bias":
            new[key] = rng.randn(*shape) * 0.3
        elif key.endswith(".scale_reg"):  # fcos_head.p{3..7}_feat.scale_reg
            new[key] = rng.rand(*shape) * 0.5 + 0.75
        elif key.endswith(".bias"):
            new[key] = rng.randn(*shape) * 0.05
    model.set_state_dict({k: v.astype(np.float32) for k, v in new.items()})


def build_fcos(
    ctx: dict,
    name: str = "fcos",
    config: str = FCOS_R50_MS_2X,
    seed: int = 0,
    randomize: bool = True,
    save: Optional[str] = None,
) -> dict:
    import paddle
    from ppdet.core.workspace import create, load_config

    cfg = load_config(config if os.path.isabs(config) else os.path.join(PPDET_SRC, config))
    paddle.seed(seed)
    model = create(cfg.architecture)
    model.eval()
    if randomize:
        randomize_fcos(model, seed)
    if save:
        paddle.save(model.state_dict(), save)
    ctx.setdefault("models", {})[name] = model
    state = model.state_dict()
    return {"num_params": int(sum(int(np.prod(p.shape)) for p in model.parameters())), "keys": list(state)}


def forward(ctx: dict, name: str, image: np.ndarray, im_shape: np.ndarray, scale_factor: np.ndarray) -> dict:
    import paddle

    model = _model(ctx, name)
    inputs = {
        "image": paddle.to_tensor(image.astype(np.float32)),
        "im_shape": paddle.to_tensor(im_shape.astype(np.float32)),
        "scale_factor": paddle.to_tensor(scale_factor.astype(np.float32)),
    }
    with paddle.no_grad():
        out = model(inputs)
    return {"bbox": out["bbox"].numpy(), "bbox_num": out["bbox_num"].numpy()}


def state_dict(ctx: dict, name: str) -> dict:
    return {k: v.numpy() for k, v in _model(ctx, name).state_dict().items()}


def ping(ctx: dict) -> dict:
    """Imports Paddle and PaddleDetection; returns their versions and locations."""
    import paddle
    import ppdet

    return {"paddle": paddle.__version__, "numpy": np.__version__, "ppdet": os.path.dirname(ppdet.__file__)}


# ---------------------------------------------------------------------------------------------
# Solver (issue 14 item 4): OptimizerBuilder + LearningRate of the loaded config, as ppdet's Trainer builds them
# ---------------------------------------------------------------------------------------------


def _solver(model: Any, steps_per_epoch: int, base_lr: Optional[float] = None) -> tuple[Any, Any, Any]:
    """``create('LearningRate')(steps_per_epoch)`` and ``create('OptimizerBuilder')(lr, model)`` (ppdet Trainer),
    optionally with another base LR; returns (LearningRate config object, LR scheduler, optimizer)."""
    from ppdet.core.workspace import create

    lr_cfg = create("LearningRate")
    if base_lr is not None:
        lr_cfg.base_lr = base_lr
    sched = lr_cfg(steps_per_epoch)
    opt = create("OptimizerBuilder")(sched, model)
    return lr_cfg, sched, opt


def solver_groups(ctx: dict, name: str, steps_per_epoch: int) -> dict:
    """Per trainable parameter (state-dict name): the LR factor (``optimize_attr['learning_rate']``) and the weight
    decay the Momentum optimizer applies (its own ``L2Decay`` regularizer, else the optimizer's); the LR an iteration
    trains with (the Trainer steps the scheduler after each ``optimizer.step()``) at warmup/milestone steps."""
    from ppdet.core.workspace import global_config

    model = _model(ctx, name)
    lr_cfg, sched, opt = _solver(model, steps_per_epoch)
    names = {id(p): n for n, p in model.named_parameters()}
    default_wd = float(getattr(opt, "_regularization_coeff", 0.0))
    groups = []
    for p in opt._parameter_list:
        reg = getattr(p, "regularizer", None)
        wd = float(reg._coeff) if reg is not None else default_wd
        groups.append([names[id(p)], float(p.optimize_attr["learning_rate"]), wd])
    warm = lr_cfg.schedulers[1].steps
    milestones = [int(steps_per_epoch) * m for m in lr_cfg.schedulers[0].milestones]
    steps = [0, 1, warm // 2, warm - 1, warm, warm + 1]
    for m in milestones:
        steps += [m - 1, m, m + 1]
    epoch = int(global_config["epoch"])
    steps.append(epoch * steps_per_epoch - 1)
    lrs = []
    for s in steps:
        sched.last_epoch = s
        lrs.append([s, float(sched.get_lr())])
    clip = getattr(opt, "_grad_clip", None)
    return {
        "groups": groups,
        "trainable": [n for n, p in model.named_parameters() if not p.stop_gradient],
        "momentum": float(opt._momentum),
        "clip": None if clip is None else repr(clip),
        "lrs": lrs,
        "epoch": epoch,
    }


def solver_steps(ctx: dict, name: str, keys: list, base_lr: float, steps_per_epoch: int, **grads: np.ndarray) -> dict:
    """Two optimizer steps at the iterations right after warmup with gradients ``g0``, ``g1`` (flat, in ``keys``
    order) and base LR ``base_lr``; returns the parameters ``keys`` after (flat) and the iterations used. The model's
    weights are restored afterwards."""
    import paddle

    model = _model(ctx, name)
    saved = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    lr_cfg, sched, opt = _solver(model, steps_per_epoch, base_lr=base_lr)
    warm = lr_cfg.schedulers[1].steps
    params = dict(model.named_parameters())
    steps = []
    try:
        for i in range(2):
            flat = grads[f"g{i}"]
            off, terms = 0, []
            for k in keys:
                n = int(np.prod(params[k].shape))
                g = flat[off : off + n].reshape(params[k].shape).astype(np.float32)
                off += n
                terms.append((params[k] * paddle.to_tensor(g)).sum())
            paddle.add_n(terms).backward()
            sched.step(warm + i)  # the LR iteration warm + i trains with
            steps.append(warm + i)
            opt.step()
            opt.clear_grad()
        out = np.concatenate([params[k].numpy().ravel() for k in keys])
    finally:
        model.set_state_dict(saved)
    return {"params": out, "steps": steps}


# ---------------------------------------------------------------------------------------------
# Train-time data pipeline (issue 14 item 5): the config's TrainReader sample_transforms
# ---------------------------------------------------------------------------------------------


def _train_reader_ops(config: str = FCOS_R50_MS_2X) -> list:
    """The TrainReader sample_transforms of ``config`` as [(name, args)]."""
    from ppdet.core.workspace import load_config

    cfg = load_config(config if os.path.isabs(config) else os.path.join(PPDET_SRC, config))
    return [(name, dict(args or {})) for op in cfg["TrainReader"]["sample_transforms"] for name, args in op.items()]


def train_reader_config(ctx: dict, config: str = FCOS_R50_MS_2X) -> dict:
    """The TrainReader sample_transforms (names and arguments), its batch size, drop_last and PadBatch stride."""
    from ppdet.core.workspace import load_config

    cfg = load_config(config if os.path.isabs(config) else os.path.join(PPDET_SRC, config))
    return {
        "ops": [[name, args] for name, args in _train_reader_ops(config)],
        "batch_size": int(cfg["TrainReader"]["batch_size"]),
        "drop_last": bool(cfg["TrainReader"].get("drop_last", False)),
        "pad_to_stride": [
            int(args["pad_to_stride"])
            for op in cfg["TrainReader"]["batch_transforms"]
            for name, args in op.items()
            if name == "PadBatch"
        ],
    }


def train_sample(
    ctx: dict,
    im_file: str,
    gt_bbox: np.ndarray,
    gt_class: np.ndarray,
    short: int,
    flip: bool,
    config: str = FCOS_R50_MS_2X,
) -> dict:
    """The config's sample_transforms on one image file with the random draws fixed: RandomResize with only the
    target ``[short, long]`` entry of its list whose short side is ``short``, RandomFlip with prob 1 or 0. Returns
    the image (H, W, 3) float32 as NormalizeImage/RandomFlip leave it, gt_bbox, im_shape, scale_factor."""
    from ppdet.data.transform import operators as ops

    sample = {
        "im_file": im_file,
        "gt_bbox": gt_bbox.astype(np.float32).copy(),
        "gt_class": gt_class.astype(np.int32).reshape(-1, 1),
        "is_crowd": np.zeros((len(gt_bbox), 1), np.int32),
        "im_id": np.array([0]),
    }
    for name, args in _train_reader_ops(config):
        args = dict(args)
        if name == "RandomResize":
            chosen = [t for t in args["target_size"] if min(t) == short]
            assert len(chosen) == 1, f"{short} is not a short side of {args['target_size']}"
            args["target_size"] = chosen
        if name == "RandomFlip":
            args["prob"] = 1.0 if flip else 0.0
        sample = getattr(ops, name)(**args)(sample)
    return {
        "image": np.asarray(sample["image"], np.float32),
        "gt_bbox": np.asarray(sample["gt_bbox"], np.float32),
        "im_shape": np.asarray(sample["im_shape"]),
        "scale_factor": np.asarray(sample["scale_factor"]),
    }


def train_sampling(ctx: dict, n: int, seed: int, config: str = FCOS_R50_MS_2X) -> dict:
    """``n`` draws of the config's RandomResize and RandomFlip (seeded ``random`` and ``np.random``, as the reader
    workers use them) on a small image with an asymmetric box; returns the resized short sides and flip flags."""
    import random

    from ppdet.data.transform import operators as ops

    random.seed(seed)
    np.random.seed(seed)
    conf = dict(_train_reader_ops(config))
    resize = ops.RandomResize(**conf["RandomResize"])
    flip = ops.RandomFlip(**conf["RandomFlip"])
    shorts, flips = [], []
    for _ in range(n):
        sample = {
            "image": np.zeros((8, 12, 3), np.float32),
            "gt_bbox": np.array([[0.0, 0.0, 1.0, 8.0]], np.float32),
            "gt_class": np.zeros((1, 1), np.int32),
        }
        sample = flip(resize(sample))
        shorts.append(int(min(sample["image"].shape[:2])))
        flips.append(bool(sample["gt_bbox"][0, 0] > 0))
    return {"shorts": np.asarray(shorts), "flips": np.asarray(flips)}
