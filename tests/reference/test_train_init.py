"""Issue 14 item 6: a fresh model's FPN and head start from the reference's initialisation (``make test-reference``).

The reference models are built fresh by their own code (AdelaiDet FCOS_RT on detectron2, torchvision's
fcos_resnet50_fpn as its recipe builds it, PaddleDetection's FCOS in .venv-ppdet; no randomisation), ours by
``fcos.build_model``; every FPN/head tensor is paired through our converter's key map (the ImageNet backbone is
loaded from a checkpoint in training and left out). Per pair:

* constant tensors on the reference side (biases, the classifier's prior bias, GroupNorm affine, Scale): ours are
  the same constant exactly;
* random tensors: same distribution — two-sample Kolmogorov-Smirnov test (p >= 1e-4 over all tensors of one rule),
  standard deviation within 5 standard errors (>= 1000 samples per tensor), mean within 4 standard errors, and
  for bounded rules (uniform) our largest magnitude within the reference's bound.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
stats = pytest.importorskip("scipy.stats")

from parity import recipe_config  # noqa: E402

import fcos  # noqa: E402

KS_P_MIN = 1e-4


def _ours_fresh(recipe: str, seed: int) -> dict[str, np.ndarray]:
    import paddle

    paddle.seed(seed)
    model = fcos.build_model(recipe_config(recipe))
    return {k: v.numpy() for k, v in model.state_dict().items()}


def _rule(name: str) -> str:
    """Tensors drawn by one rule, pooled for the KS test: FPN convs by their fan-in, head convs together."""
    return name.rsplit(".", 2)[0] if name.startswith("fpn.") else name.split(".")[1]


def _compare_init(
    recipe: str, ref: dict[str, np.ndarray], ours: dict[str, np.ndarray], key_map: dict[str, str]
) -> dict:
    pairs = {dst: src for src, dst in key_map.items() if dst.startswith(("fpn.", "head."))}
    ours_keys = {k for k in ours if k.startswith(("fpn.", "head."))}
    assert set(pairs) == ours_keys, f"{recipe}: FPN/head tensors without a reference partner: {ours_keys - set(pairs)}"
    constants, randoms = 0, defaultdict(list)
    worst_std = 0.0
    for dst, src in sorted(pairs.items()):
        r = np.asarray(ref[src], np.float64).ravel()
        o = np.asarray(ours[dst], np.float64).ravel()
        if r.size == 0:
            continue
        if np.all(r == r[0]) and (r.size > 1 or dst.endswith("bias") or "scale" in dst):
            constants += 1
            assert np.all(o == np.float32(r[0])), (
                f"{recipe}: {dst} should be the constant {r[0]!r} ({src}), got {o[:4]}"
            )
            continue
        assert r.size >= 1000, f"{recipe}: {src}: too few elements for a distribution check"
        rel_std = abs(o.std() / r.std() - 1.0)
        worst_std = max(worst_std, rel_std)
        # 5 standard errors of the ratio of two sample standard deviations (~sqrt(1/2n) each)
        tol = 5.0 * np.sqrt(1.0 / (2 * o.size) + 1.0 / (2 * r.size))
        assert rel_std <= tol, f"{recipe}: {dst}: std {o.std():.6g}, reference {src} {r.std():.6g}"
        se = r.std() / np.sqrt(r.size)
        assert abs(o.mean() - r.mean()) <= 4 * se * np.sqrt(2), (
            f"{recipe}: {dst}: mean {o.mean():.3g} vs {r.mean():.3g}"
        )
        # a bounded reference rule (uniform): our values stay inside its support
        bound = np.abs(r).max()
        if bound < 2.5 * r.std():  # uniform: max = sqrt(3) std; a normal's max over >= 1000 draws is > 3 std
            assert np.abs(o).max() <= bound * (1 + 1e-3), f"{recipe}: {dst}: {np.abs(o).max():.6g} > bound {bound:.6g}"
        randoms[_rule(dst)].append((o, r))
    worst_p = 1.0
    for rule, items in randoms.items():
        o = np.concatenate([a for a, _ in items])
        r = np.concatenate([b for _, b in items])
        # subsample (fixed) to keep the test's power reasonable: KS at n ~ 1e6 would flag float-rounding noise
        rng = np.random.RandomState(0)
        o = o[rng.choice(o.size, min(o.size, 200_000), replace=False)]
        r = r[rng.choice(r.size, min(r.size, 200_000), replace=False)]
        p = float(stats.ks_2samp(o, r).pvalue)
        worst_p = min(worst_p, p)
        assert p >= KS_P_MIN, f"{recipe}: {rule}: KS p = {p:.3g} (ours std {o.std():.4g}, reference {r.std():.4g})"
    return {"constant_tensors": constants, "random_rules": len(randoms), "min_ks_p": worst_p, "max_std_rel": worst_std}


@pytest.mark.parametrize("recipe", ["rt_dla34", "rt_r50"])
def test_init_equals_adelaidet(recipe: str) -> None:
    t0 = time.time()
    from adelaidet_models import adelaidet_cfg
    from detectron2.modeling import build_model

    from fcos.checkpoint.convert_adelaidet import convert_adelaidet

    torch.manual_seed(0)
    ref = build_model(adelaidet_cfg(recipe))
    ref_state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    key_map = dict(convert_adelaidet(ref_state, recipe_config(recipe)).mapped)
    info = _compare_init(recipe, ref_state, _ours_fresh(recipe, 1), key_map)
    print(f"\n{recipe} init vs AdelaiDet: {info}, {time.time() - t0:.1f} s")


def test_init_equals_torchvision() -> None:
    t0 = time.time()
    from test_train_solver import _torchvision_fcos_as_trained

    from fcos.checkpoint.convert_torchvision import convert_torchvision_fcos

    ref = _torchvision_fcos_as_trained(0)
    ref_state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    key_map = dict(convert_torchvision_fcos(ref_state, recipe_config("tv_r50")).mapped)
    info = _compare_init("tv_r50", ref_state, _ours_fresh("tv_r50", 1), key_map)
    print(f"\ntv_r50 init vs torchvision: {info}, {time.time() - t0:.1f} s")


def test_init_equals_paddledetection(ppdet_worker: Any) -> None:
    t0 = time.time()
    from fcos.checkpoint.convert_paddledet import convert_paddledet

    ppdet_worker.call("ppdet_tasks:build_fcos", name="fcos_fresh", seed=0, randomize=False)
    ref_state = ppdet_worker.call("ppdet_tasks:state_dict", name="fcos_fresh")
    key_map = dict(convert_paddledet(ref_state, recipe_config("r50_ms_2x")).mapped)
    info = _compare_init("r50_ms_2x", ref_state, _ours_fresh("r50_ms_2x", 1), key_map)
    print(f"\nr50_ms_2x init vs PaddleDetection: {info}, {time.time() - t0:.1f} s")
