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
    GN affine, tower/FPN biases, per-level scales (so a level mix-up shows), and the predictors (class
    logits around sigmoid 0.1-0.5, boxes a few strides wide)."""
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
        elif key.startswith("fcos_head.fcos_head_cls."):
            new[key] = rng.randn(*shape) * (0.03 if key.endswith("weight") else 0.5) - (
                0 if key.endswith("weight") else 1.0
            )
        elif key.startswith("fcos_head.fcos_head_reg."):
            new[key] = (
                rng.randn(*shape) * 0.03 if key.endswith("weight") else np.full(shape, 1.5) + rng.randn(*shape) * 0.3
            )
        elif key.startswith("fcos_head.fcos_head_centerness."):
            new[key] = rng.randn(*shape) * 0.03 if key.endswith("weight") else rng.randn(*shape) * 0.3
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
