"""The four recipes' models: per-level output shapes, parameter counts against published / derived numbers,
gradient flow (trainable vs frozen), ``fcos.Detector`` on a real photo, ``paddle.jit.to_static`` and
``tools/summary.py``."""

from __future__ import annotations

import math
import os

import numpy as np
import paddle
import pytest

import fcos
from fcos.data.coco_names import default_class_names
from fcos.data.preprocess import pad_batch, preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ["rt_dla34", "rt_r50", "r50_ms_2x", "tv_r50"]
_MODELS: dict[str, paddle.nn.Layer] = {}


def _cfg(name: str, overrides: list[str] | None = None):
    return fcos.load_config(os.path.join(ROOT, "configs", f"{name}.yml"), overrides)


def _model(name: str) -> paddle.nn.Layer:
    """One eval-mode model per recipe for the whole module (building the R-50 ones takes ~1.5 s)."""
    if name not in _MODELS:
        _MODELS.clear()  # keep at most one full-size model in memory
        paddle.seed(0)
        _MODELS[name] = fcos.build_model(_cfg(name))
    model = _MODELS[name]
    model.eval()
    return model


def _ceil_halvings(size: int, stride: int) -> int:
    """Feature size after log2(stride) stride-2 layers that each give ceil(x / 2)."""
    for _ in range(int(math.log2(stride))):
        size = (size + 1) // 2
    return size


def _photo_path() -> str:
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")


# --------------------------------------------------------------------------------------------
# Output shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize("size,pad", [((128, 160), False), ((100, 132), False), ((100, 132), True)])
def test_output_shapes_per_level(name: str, size: tuple[int, int], pad: bool) -> None:
    cfg = _cfg(name)
    model = _model(name)
    x = np.random.RandomState(0).standard_normal((3, *size)).astype(np.float32)
    images = pad_batch([x], cfg.input.size_divisor if pad else 1)
    h, w = images.shape[2:]
    with paddle.no_grad():
        cls_logits, bbox_reg, ctr_logits = model.forward_head(paddle.to_tensor(images))
    strides = cfg.model.strides
    assert len(cls_logits) == len(bbox_reg) == len(ctr_logits) == len(strides)
    for level, s in enumerate(strides):
        hw = (_ceil_halvings(h, s), _ceil_halvings(w, s))
        if pad:
            assert h % cfg.input.size_divisor == 0 and w % cfg.input.size_divisor == 0
        assert tuple(cls_logits[level].shape) == (1, cfg.model.num_classes, *hw), (level, s)
        assert tuple(bbox_reg[level].shape) == (1, 4, *hw)
        assert tuple(ctr_logits[level].shape) == (1, 1, *hw)
        assert float(bbox_reg[level].min()) >= 0.0  # ReLU'd distances


def test_odd_input_is_not_a_multiple_of_32_and_still_detects() -> None:
    model = _model("rt_dla34")
    x = paddle.to_tensor(np.random.RandomState(1).standard_normal((1, 3, 100, 132)).astype(np.float32))
    with paddle.no_grad():
        bboxes, bbox_num = model(x)
    assert bboxes.shape[1] == 6 and int(bbox_num.sum()) == bboxes.shape[0]


# --------------------------------------------------------------------------------------------
# Parameter counts
# --------------------------------------------------------------------------------------------


def _is_stat(key: str) -> bool:
    return key.endswith("._mean") or key.endswith("._variance")


def _values(layer: paddle.nn.Layer) -> int:
    """State-dict values without BN running statistics (= torch parameters + FrozenBN affine buffers)."""
    return sum(int(np.prod(v.shape)) for k, v in layer.state_dict().items() if not _is_stat(k))


def _params(layer: paddle.nn.Layer, trainable_only: bool = False) -> int:
    return sum(
        int(np.prod(p.shape))
        for k, p in layer.named_parameters()
        if not _is_stat(k) and (not trainable_only or not p.stop_gradient)
    )


def _conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cout * cin * k * k + (cout if bias else 0)


def _fpn_values(in_channels: list[int], extra: int) -> int:
    return sum(_conv(c, 256, 1) + _conv(256, 256, 3) for c in in_channels) + extra * _conv(256, 256, 3)


def _head_values(num_classes: int, levels: int, scales: bool) -> int:
    tower = 4 * (_conv(256, 256, 3) + 2 * 256)  # conv + GroupNorm weight/bias
    preds = _conv(256, num_classes, 3) + _conv(256, 4, 3) + _conv(256, 1, 3)
    return 2 * tower + preds + (levels if scales else 0)


# Published counts: torchvision resnet50 25,557,032 (fc 2048*1000+1000); fcos_resnet50_fpn 32,269,600
# (91 classes, FrozenBN buffers not counted); timm dla34 15,742,104 (fc: 1x1 conv 512->1000), which lacks the
# level3/level4 projects of the original DLA-34 (64->128 and 128->256 1x1 conv + BN) that we keep.
TV_RESNET50 = 25_557_032 - (2048 * 1000 + 1000)
RESNET50_BN_AFFINE = 2 * 26_560  # 53 BatchNorms with 26,560 channels in total
TV_FCOS_80 = 32_269_600 - 11 * _conv(256, 1, 3)  # 11 classifier rows fewer (91 -> 80)
TIMM_DLA34 = 15_742_104 - (512 * 1000 + 1000) + (64 * 128 + 2 * 128) + (128 * 256 + 2 * 256)


def test_parameter_count_tv_r50_matches_torchvision() -> None:
    model = _model("tv_r50")
    assert _params(model) == TV_FCOS_80 == 32_244_245
    # issue 2: BN running statistics aside, the state dict holds as many values as torchvision's 80-class FCOS
    assert _values(model) == TV_FCOS_80 + RESNET50_BN_AFFINE == 32_297_365
    frozen_stem_layer1 = (
        64 * 3 * 49 + (64 * 64 + 64 * 64 * 9 + 256 * 64 + 256 * 64) + 2 * (256 * 64 + 64 * 64 * 9 + 256 * 64)
    )
    assert _params(model, trainable_only=True) == TV_FCOS_80 - frozen_stem_layer1


def test_parameter_count_r50_recipes() -> None:
    assert _values(_model("r50_ms_2x")) == TV_RESNET50 + _fpn_values([512, 1024, 2048], 2) + _head_values(80, 5, True)
    model = _model("rt_r50")
    assert _values(model.backbone) == TV_RESNET50
    assert _values(model) == TV_RESNET50 + _fpn_values([512, 1024, 2048], 0) + _head_values(80, 3, True)


def test_parameter_count_rt_dla34() -> None:
    model = _model("rt_dla34")
    assert _values(model.backbone) == TIMM_DLA34 == 15_270_832
    assert _values(model) == TIMM_DLA34 + _fpn_values([128, 256, 512], 0) + _head_values(80, 3, True)
    assert _params(model, trainable_only=True) == _values(model)  # nothing frozen


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


def _targets() -> list[dict]:
    boxes = [
        [[10.0, 12.0, 60.0, 70.0], [40.0, 30.0, 150.0, 120.0], [100.0, 5.0, 118.0, 22.0]],
        [[5.0, 50.0, 90.0, 126.0]],
    ]
    labels = [[0, 1, 2], [3]]
    return [
        {"boxes": paddle.to_tensor(b, dtype="float32"), "labels": paddle.to_tensor(c, dtype="int64")}
        for b, c in zip(boxes, labels)
    ]


def _grad_check(overrides: list[str], size: tuple[int, int] = (128, 160)) -> tuple[list[str], list[str]]:
    paddle.seed(3)
    model = fcos.build_model(_cfg("demo_shapes", overrides))
    model.train()
    x = paddle.to_tensor(np.random.RandomState(2).standard_normal((2, 3, *size)).astype(np.float32))
    losses = model(x, targets=_targets())
    for k in ("loss_cls", "loss_box", "loss_ctr", "loss"):
        assert np.isfinite(float(losses[k])) and float(losses[k]) > 0, (k, float(losses[k]))
    losses["loss"].backward()
    trainable, frozen = [], []
    for name, p in model.named_parameters():
        if _is_stat(name):
            assert p.stop_gradient and p.grad is None, name  # BN running statistics are not trained
            continue
        if p.stop_gradient:
            assert p.grad is None, f"{name} is frozen but received a gradient"
            frozen.append(name)
        else:
            assert p.grad is not None, f"{name} received no gradient"
            assert float(p.grad.abs().max()) > 0, f"{name} has an all-zero gradient"
            trainable.append(name)
    return trainable, frozen


def test_gradients_reach_every_trainable_parameter_demo() -> None:
    trainable, frozen = _grad_check([])
    assert not frozen and len(trainable) > 50


def test_gradients_skip_frozen_dla_stages() -> None:
    trainable, frozen = _grad_check(["model.backbone.freeze_at=2"])
    assert frozen and all(
        n.startswith(("backbone.base_layer", "backbone.level0", "backbone.level1", "backbone.level2")) for n in frozen
    )
    assert any(n.startswith("backbone.level3") for n in trainable)


def test_gradients_skip_frozen_resnet_stages() -> None:
    overrides = ["model.backbone.name=resnet50", "model.backbone.norm=frozen_bn", "model.backbone.freeze_at=2"]
    trainable, frozen = _grad_check(overrides)
    assert sorted({n.split(".")[1] for n in frozen}) == ["conv1", "layer1"]
    assert not [n for n in frozen if ".bn" in n]  # frozen BN holds buffers, not parameters
    assert any(n.startswith("backbone.layer2") for n in trainable)


def test_dla_level3_project_gets_a_zero_gradient_only() -> None:
    """Full DLA-34: the level3/level4 projects are discarded by their sub-trees, yet stay in the graph."""
    paddle.seed(0)
    model = fcos.build_model(
        _cfg(
            "rt_dla34",
            ["model.num_classes=4", "model.fpn.out_channels=32", "model.head.gn_groups=8", "model.head.num_convs=1"],
        )
    )
    model.train()
    x = paddle.to_tensor(np.random.RandomState(4).standard_normal((2, 3, 64, 64)).astype(np.float32))
    model(x, targets=_targets())["loss"].backward()
    params = dict(model.named_parameters())
    for name in ("backbone.level3.project.0.weight", "backbone.level4.project.0.weight"):
        assert params[name].grad is not None and float(params[name].grad.abs().max()) == 0.0
    assert float(params["backbone.level3.tree1.project.0.weight"].grad.abs().max()) > 0


# --------------------------------------------------------------------------------------------
# Detector on a real photo
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RECIPES)
def test_detector_on_photo_returns_original_pixel_boxes(name: str) -> None:
    import cv2

    cfg = _cfg(name, ["input.test_short=256", "input.test_max=320"])  # small test size keeps it fast
    model = _model(name)
    with paddle.no_grad():  # random weights; an unbiased classifier gives detections above every threshold
        model.head.cls_logits.bias.set_value(paddle.zeros_like(model.head.cls_logits.bias))
    det = fcos.Detector(cfg, model=model)
    (res,) = det.predict([_photo_path()])
    img = cv2.imread(_photo_path())
    oh, ow = img.shape[:2]
    boxes, scores, labels = np.asarray(res.boxes), np.asarray(res.scores), np.asarray(res.labels)
    assert 0 < len(boxes) <= cfg.model.postprocess.max_dets
    assert boxes.shape == (len(scores), 4)
    rule = cfg.model.postprocess.box_rule  # what the recipe's reference does with boxes after NMS
    if rule != "none":  # clipped to the image (PaddleDetection's "none" leaves them as decoded)
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= ow).all() and (boxes[:, 3] <= oh).all()
    if rule == "clip_drop_empty":  # detectron2 drops empty boxes; torchvision and PaddleDetection keep them
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert (scores > 0).all() and (scores <= 1).all() and (np.diff(scores) <= 1e-6).all()
    assert ((labels >= 0) & (labels < 80)).all()
    assert list(res.names) == default_class_names(80)
    # Boxes are the network-frame boxes scaled back: x / sx, y / sy
    batch = preprocess([img], cfg.input)
    with paddle.no_grad():
        rows, _ = model(paddle.to_tensor(batch.images), paddle.to_tensor(batch.im_shape), paddle.ones([1, 2]))
    sy, sx = batch.scale_factor[0]
    resized = rows.numpy()[:, 2:6]
    keep = (resized[:, 2] > resized[:, 0]) & (resized[:, 3] > resized[:, 1])
    if rule != "clip_drop_empty":
        keep[:] = True
    np.testing.assert_allclose(boxes * np.array([sx, sy, sx, sy]), resized[keep], rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------------------------
# to_static and the summary tool
# --------------------------------------------------------------------------------------------


def test_to_static_eval_forward_matches_dygraph() -> None:
    from paddle.static import InputSpec

    paddle.seed(0)
    model = fcos.build_model(_cfg("demo_shapes"))
    model.eval()
    with paddle.no_grad():
        model.head.cls_logits.bias.set_value(paddle.zeros_like(model.head.cls_logits.bias))
    spec = [
        InputSpec([None, 3, None, None], "float32", "image"),
        InputSpec([None, 2], "float32", "im_shape"),
        InputSpec([None, 2], "float32", "scale_factor"),
    ]
    static_forward = paddle.jit.to_static(model.forward, input_spec=spec, full_graph=True)
    rng = np.random.RandomState(5)
    for shape, im_shape, scale in (
        ((2, 3, 128, 160), [[128, 160], [100, 150]], [[1.0, 1.0], [0.5, 0.5]]),
        ((1, 3, 96, 64), [[90, 64]], [[2.0, 2.0]]),
    ):
        args = (
            paddle.to_tensor(rng.standard_normal(shape).astype(np.float32)),
            paddle.to_tensor(im_shape, dtype="float32"),
            paddle.to_tensor(scale, dtype="float32"),
        )
        with paddle.no_grad():
            ref_boxes, ref_num = model(*args)
            boxes, num = static_forward(*args)
        assert int(ref_num.sum()) > 0
        np.testing.assert_array_equal(num.numpy(), ref_num.numpy())
        np.testing.assert_allclose(boxes.numpy(), ref_boxes.numpy(), rtol=1e-5, atol=1e-4)


class _Stub(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = paddle.nn.Conv2D(3, 8, 3, padding=1)
        self.fpn = paddle.nn.Conv2D(8, 4, 1, stride=2)
        self.head = paddle.nn.Linear(6, 5)

    def forward_head(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.head(self.fpn(self.backbone(x)))


def test_summary_counts_macs_by_hand(load_tool) -> None:
    tool = load_tool("summary")
    macs = tool.count_macs(_Stub(), paddle.zeros([1, 3, 10, 12]))
    # backbone: 8x10x12 outputs x 3x3x3; fpn: 4x5x6 outputs x 8; head: 4x5x5 outputs x 6 inputs
    assert macs == {"backbone": 960 * 27, "fpn": 120 * 8, "head": 100 * 6, "all": 960 * 27 + 120 * 8 + 100 * 6}


def test_summary_tool_runs(capsys: pytest.CaptureFixture, load_tool) -> None:
    tool = load_tool("summary")
    assert tool.main(["-c", os.path.join(ROOT, "configs", "demo_shapes.yml"), "--size", "64x96"]) == 0
    out = capsys.readouterr().out
    assert "input 1x3x64x96" in out
    total = [line for line in out.splitlines() if line.startswith("total")][0].split()
    paddle.seed(0)
    model = fcos.build_model(_cfg("demo_shapes"))
    assert int(total[1].replace(",", "")) == _params(model)
    assert int(total[3].replace(",", "")) == _values(model)
    assert float(total[5]) == pytest.approx(2 * float(total[4]), abs=0.011)
    with pytest.raises(SystemExit):
        tool.main(["-c", os.path.join(ROOT, "configs", "demo_shapes.yml"), "--size", "64by96"])
