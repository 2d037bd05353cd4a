"""Each recipe trains one optimizer step on CPU at a small size: finite losses, trainable weights move,
frozen ones (stem + first stage of the R-50 recipes, frozen BN statistics) do not."""

from __future__ import annotations

import os

import numpy as np
import paddle
import pytest

import fcos

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batch() -> tuple[paddle.Tensor, list[dict]]:
    rng = np.random.RandomState(0)
    images = paddle.to_tensor(rng.standard_normal((2, 3, 128, 160)).astype(np.float32))
    boxes = [[[8.0, 10.0, 50.0, 60.0], [30.0, 20.0, 150.0, 125.0]], [[60.0, 40.0, 100.0, 90.0]]]
    labels = [[0, 5], [17]]
    targets = [
        {"boxes": paddle.to_tensor(b, dtype="float32"), "labels": paddle.to_tensor(c, dtype="int64")}
        for b, c in zip(boxes, labels)
    ]
    return images, targets


@pytest.mark.parametrize("name", ["rt_dla34", "rt_r50", "r50_ms_2x", "tv_r50"])
def test_one_training_step(name: str) -> None:
    paddle.seed(0)
    model = fcos.build_model(fcos.load_config(os.path.join(ROOT, "configs", f"{name}.yml")))
    model.train()
    # At the random init about half of the ReLU'd regression outputs are exactly 0; at positives with t = b = 0
    # the GIoU loss is flat (loss 1, zero gradient). A bias of 1 stride starts from boxes that overlap the targets.
    with paddle.no_grad():
        model.head.bbox_pred.bias.set_value(paddle.ones_like(model.head.bbox_pred.bias))
    trainable = [p for p in model.parameters() if not p.stop_gradient]
    optimizer = paddle.optimizer.Momentum(learning_rate=0.01, momentum=0.9, parameters=trainable)
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}

    images, targets = _batch()
    losses = model(images, targets=targets)
    assert set(losses) == {"loss_cls", "loss_box", "loss_ctr", "loss"}
    values = {k: float(v) for k, v in losses.items()}
    assert all(np.isfinite(v) and v > 0 for v in values.values()), values
    assert values["loss_box"] < 1.0  # GIoU loss with overlapping boxes
    assert values["loss"] == pytest.approx(values["loss_cls"] + values["loss_box"] + values["loss_ctr"], rel=1e-6)
    losses["loss"].backward()
    optimizer.step()
    optimizer.clear_grad()

    after = model.state_dict()
    changed = {k for k in before if not np.array_equal(before[k], after[k].numpy())}
    for key in ("head.cls_logits.weight", "head.bbox_pred.weight", "head.ctrness.weight", "fpn.output_convs.0.weight"):
        assert key in changed, f"{key} did not change"
    assert any(k.startswith("backbone.") and k.endswith("weight") for k in changed)
    if name in ("rt_r50", "r50_ms_2x", "tv_r50"):  # freeze_at 2: stem + layer1 frozen
        frozen = [k for k in before if k.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1."))]
        assert frozen and not changed.intersection(frozen)
        assert "backbone.layer2.0.conv1.weight" in changed
    if name in ("r50_ms_2x", "tv_r50"):  # frozen BN everywhere: statistics never move
        assert not [k for k in changed if k.endswith(("._mean", "._variance"))]
    else:  # BatchNorm in train mode updates its running statistics
        assert any(k.endswith("._mean") for k in changed)

    with paddle.no_grad():
        again = float(model(images, targets=targets)["loss"])
    assert np.isfinite(again) and again != pytest.approx(values["loss"], rel=1e-7)
