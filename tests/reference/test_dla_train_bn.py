"""DLA-34 in train mode (trainable BatchNorm, batch statistics) against AdelaiDet's DLA-34 (``make test-reference``).

The same weights (AdelaiDet's ``dla34`` with seeded BatchNorm affine parameters and statistics, keys mapped one to
one) and the same two-image batch (two synthetic images of different sizes, normalised as detectron2 does and
zero-padded together). Compared with AdelaiDet in float32 and in float64, at every DLA level:

* the features level0..level5, the updated running statistics of all 39 BatchNorms, and the gradients of every
  parameter under a fixed random projection of all levels.

Our float32 error against float64 must stay within a small multiple of the reference's own float32 error (plus a
float floor): Paddle's CPU ``batch_norm`` accumulates its batch statistics in float and, before
``fcos_batch_norm`` (``fcos/ops/batch_norm.py``), left level0 of such a batch 4.5e-5 relative off (AdelaiDet's
float32: ~1e-7).
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest

torch = pytest.importorskip("torch")

from adelaidet_models import adelaidet_cfg  # noqa: E402
from envs import import_adet  # noqa: E402
from parity import synthetic_bgr  # noqa: E402

from fcos.modeling.backbones.dla import DLA  # noqa: E402
from fcos.ops import onednn_conv  # noqa: E402

PIXEL_MEAN = np.array([103.53, 116.28, 123.675], np.float32)  # detectron2 BGR mean, std 1 (rt_dla34)
SIZES = [(384, 512), (320, 448)]  # two images of different sizes, padded to 384 x 512 in one batch
# ours vs float64 must be within FACTOR x (AdelaiDet float32 vs float64) + FLOOR (relative L2)
FACTOR = 4.0
FLOOR = {"feature": 2e-7, "running": 2e-7, "grad": 1e-6}


def _batch() -> np.ndarray:
    h, w = SIZES[0]
    batch = np.zeros((len(SIZES), 3, h, w), np.float32)
    for i, (ih, iw) in enumerate(SIZES):
        img = synthetic_bgr(ih, iw, seed=11 + i).astype(np.float32) - PIXEL_MEAN
        batch[i, :, :ih, :iw] = img.transpose(2, 0, 1)
    return batch


def _reference_dla() -> torch.nn.Module:
    """AdelaiDet's dla34 with plain BN, seeded conv init and BatchNorm affine / statistics, in train mode."""
    import_adet()
    from adet.modeling.backbone.dla import dla34

    torch.manual_seed(0)
    model = dla34(adelaidet_cfg("rt_dla34"))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
    return model.train()


def _to_ours(name: str) -> str:
    return name.replace("running_mean", "_mean").replace("running_var", "_variance")


def _run_reference(model: torch.nn.Module, batch: np.ndarray, projections: list[np.ndarray], dtype: torch.dtype):
    """Features, updated running statistics and parameter gradients of a fresh copy of ``model`` in ``dtype``."""
    import copy

    m = copy.deepcopy(model).to(dtype).train()
    feats = m(torch.from_numpy(batch).to(dtype))
    levels = [feats[f"level{i}"] for i in range(6)]
    loss = sum((f * torch.from_numpy(p).to(dtype)).sum() for f, p in zip(levels, projections))
    loss.backward()
    out = {f"level{i}": f.detach().double().numpy() for i, f in enumerate(levels)}
    running = {_to_ours(k): v.double().numpy() for k, v in m.state_dict().items() if "running" in k}
    grads = {k: p.grad.double().numpy() for k, p in m.named_parameters() if p.grad is not None}
    return out, running, grads


def _run_ours(state: dict, batch: np.ndarray, projections: list[np.ndarray]):
    model = DLA(norm="bn")
    missing, unexpected = model.set_state_dict(state)
    assert not missing and not unexpected, (missing, unexpected)
    model.train()
    x = model.base_layer(paddle.to_tensor(batch))
    levels = []
    for i in range(6):
        x = getattr(model, f"level{i}")(x)
        levels.append(x)
    loss = sum((f * paddle.to_tensor(p)).sum() for f, p in zip(levels, projections))
    loss.backward()
    out = {f"level{i}": f.numpy().astype(np.float64) for i, f in enumerate(levels)}
    sd = model.state_dict()
    running = {k: sd[k].numpy().astype(np.float64) for k in sd if k.endswith(("_mean", "_variance"))}
    grads = {k: p.grad.numpy().astype(np.float64) for k, p in model.named_parameters() if p.grad is not None}
    return out, running, grads


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.fixture
def cpu_ops():
    saved = onednn_conv.conv_backend()
    assert onednn_conv.set_conv_backend("onednn") == "onednn"
    yield
    onednn_conv.set_conv_backend(saved)


def test_dla34_train_mode_matches_adelaidet(cpu_ops, monkeypatch) -> None:
    ref_model = _reference_dla()
    batch = _batch()
    # the shapes of level0..level5, from a reference forward
    with torch.no_grad():
        shapes = [tuple(f.shape) for f in ref_model.eval()(torch.from_numpy(batch)).values()]
    ref_model.train()
    rng = np.random.default_rng(5)
    projections = [(rng.normal(size=s) / np.sqrt(np.prod(s))).astype(np.float32) for s in shapes]
    state = {_to_ours(k): v.numpy() for k, v in ref_model.state_dict().items() if "num_batches" not in k}

    ref32 = _run_reference(ref_model, batch, projections, torch.float32)
    ref64 = _run_reference(ref_model, batch, projections, torch.float64)
    ours = _run_ours(state, batch, projections)
    # for the report only: the same with Paddle's batch_norm (what fcos_batch_norm replaced)
    with monkeypatch.context() as patch:
        patch.setattr("fcos.modeling.layers.cpu_batch_norm_applies", lambda layer, x: False)
        paddle_bn = _run_ours(state, batch, projections)

    report = []
    for kind, index, floor in (("feature", 0, FLOOR["feature"]), ("running", 1, FLOOR["running"])):
        for key in ref64[index]:
            theirs, mine = _rel(ref32[index][key], ref64[index][key]), _rel(ours[index][key], ref64[index][key])
            report.append((kind, key, theirs, mine))
            assert mine <= FACTOR * theirs + floor, f"{kind} {key}: ours {mine:.2e} vs AdelaiDet fp32 {theirs:.2e}"
    # the same parameters get gradients; level3/4.project (never used by the two-level trees) get none in torch
    # and zeros here
    assert set(ref64[2]) <= set(ours[2]) and len(ref64[2]) > 100
    for key in set(ours[2]) - set(ref64[2]):
        assert ".project." in key and not ours[2][key].any(), key
    for key in ref64[2]:
        theirs, mine = _rel(ref32[2][key], ref64[2][key]), _rel(ours[2][key], ref64[2][key])
        report.append(("grad", key, theirs, mine))
        assert mine <= FACTOR * theirs + FLOOR["grad"], f"grad {key}: ours {mine:.2e} vs AdelaiDet fp32 {theirs:.2e}"
    worst = {}
    for kind, key, theirs, mine in report:
        if kind not in worst or mine > worst[kind][2]:
            worst[kind] = (key, theirs, mine)
    print("relative L2 error against AdelaiDet float64: ours | AdelaiDet float32 | ours with Paddle's batch_norm")
    index = {"feature": 0, "running": 1, "grad": 2}
    for kind, key, theirs, mine in report:
        if kind == "feature":
            before = _rel(paddle_bn[0][key], ref64[0][key])
            print(f"  {key}: {mine:.2e} | {theirs:.2e} | {before:.2e}")
    for kind, (key, theirs, mine) in worst.items():
        before = max(_rel(paddle_bn[index[kind]][k], ref64[index[kind]][k]) for k in ref64[index[kind]])
        print(f"  worst {kind} ({key}): {mine:.2e} | {theirs:.2e} | worst {before:.2e}")
