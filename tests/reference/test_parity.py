"""Parity with the reference implementations, from converted random weights (``make test-reference``).

* torchvision ``fcos_resnet50_fpn`` (FrozenBN ResNet-50, 91 COCO-id classes, seeded random weights that give
  many detections) -> ``convert_torchvision_fcos`` -> ``configs/tv_r50.yml``: the same detections on a real
  photo and a synthetic image (boxes within 0.05 px, scores within 1e-3).
* torchvision ``resnet50`` and timm ``dla34`` -> backbone converters: the same C3-C5 features, both with the
  reference's own input normalisation and with a BGR 0-255 recipe (first-conv folding).

Both models see the same network input: torchvision's ``model.transform`` output (resize, normalise, pad),
with its ``image_sizes`` as ``im_shape``; the comparison is of the networks and post-processing.
"""

from __future__ import annotations

import os

import numpy as np
import paddle
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

from parity import photo_bgr, synthetic_bgr  # noqa: E402

import fcos  # noqa: E402
from fcos.checkpoint.convert_common import COCO_CATEGORY_IDS  # noqa: E402
from fcos.checkpoint.convert_timm import convert_timm_dla34  # noqa: E402
from fcos.checkpoint.convert_torchvision import convert_torchvision_fcos, convert_torchvision_resnet50  # noqa: E402
from fcos.checkpoint.weights import load_weights  # noqa: E402
from fcos.data.preprocess import normalize_image  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOX_TOL = 0.05  # px
SCORE_TOL = 1e-3
BGR_255 = [
    "input.channel_order=BGR",
    "input.to_unit=false",
    "input.mean=[103.53,116.28,123.675]",
    "input.std=[1.0,1.0,1.0]",
]


def _to_numpy_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def _randomize_bn_stats(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BN / FrozenBN statistics and affine parameters (fresh ones are 0/1)."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d)):
            n = m.running_mean.shape[0]
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


def _paddle_model(cfg, state: dict[str, np.ndarray]):
    model = fcos.build_model(cfg)
    report = load_weights(model, state, strict=True)
    assert not report.missing and not report.unexpected and not report.shape_mismatch, report
    model.eval()
    return model


# --------------------------------------------------------------------------------------------
# torchvision FCOS
# --------------------------------------------------------------------------------------------


def _torchvision_fcos(seed: int = 0) -> torch.nn.Module:
    """fcos_resnet50_fpn as the released checkpoint is built (FrozenBN, 3 trainable stages, 91 classes),
    with seeded random weights: larger head weights so boxes span a few strides and scores spread out."""
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    model = torchvision.models.detection.FCOS(backbone, num_classes=91)
    _randomize_bn_stats(model, gen)
    head = model.head
    with torch.no_grad():
        for layer in list(head.classification_head.conv) + list(head.regression_head.conv):
            if isinstance(layer, torch.nn.GroupNorm):
                layer.weight.copy_(torch.rand(256, generator=gen) * 0.5 + 0.75)
                layer.bias.copy_(torch.randn(256, generator=gen) * 0.1)
            elif isinstance(layer, torch.nn.Conv2d):
                layer.bias.copy_(torch.randn(256, generator=gen) * 0.05)
        cls = head.classification_head.cls_logits
        cls.weight.copy_(torch.randn(cls.weight.shape, generator=gen) * 0.03)
        cls.bias.copy_(torch.randn(91, generator=gen) * 0.5 - 1.0)  # many scores above 0.2
        unused_ids = sorted(set(range(91)) - set(COCO_CATEGORY_IDS))  # background + 10 N/A ids: never trained
        cls.bias[unused_ids] = -30.0  # positive, so the trained checkpoint never detects them either
        reg = head.regression_head.bbox_reg
        reg.weight.copy_(torch.randn(reg.weight.shape, generator=gen) * 0.03)
        reg.bias.fill_(1.5)  # boxes a few strides wide
        ctr = head.regression_head.bbox_ctrness
        ctr.weight.copy_(torch.randn(ctr.weight.shape, generator=gen) * 0.03)
    return model.eval()


def _tv_cfg():
    return fcos.load_config(os.path.join(ROOT, "configs", "tv_r50.yml"))


def _run_both(tv_model, pd_model, img_bgr: np.ndarray) -> tuple[dict, dict]:
    rgb = torch.from_numpy(np.ascontiguousarray(img_bgr[:, :, ::-1])).permute(2, 0, 1).float() / 255.0
    with torch.no_grad():
        tv_out = tv_model([rgb])[0]
        image_list, _ = tv_model.transform([rgb])
    h, w = image_list.image_sizes[0]
    oh, ow = img_bgr.shape[:2]
    images = paddle.to_tensor(image_list.tensors.numpy())
    im_shape = paddle.to_tensor([[h, w]], dtype="float32")
    scale_factor = paddle.to_tensor([[h / oh, w / ow]], dtype="float32")
    with paddle.no_grad():
        bboxes, _ = pd_model(images, im_shape, scale_factor)
    rows = bboxes.numpy()
    pd_out = {"boxes": rows[:, 2:6], "scores": rows[:, 1], "labels": rows[:, 0].astype(np.int64)}
    tv_np = {k: v.numpy() for k, v in tv_out.items()}
    return tv_np, pd_out


def _compare_detections(tv: dict, pd: dict, name: str) -> dict:
    n = len(tv["scores"])
    assert n >= 50, f"{name}: only {n} torchvision detections; the test needs many"
    assert len(pd["scores"]) == n, f"{name}: {len(pd['scores'])} Paddle vs {n} torchvision detections"
    tv_labels = tv["labels"]  # COCO ids
    pd_labels = np.asarray(COCO_CATEGORY_IDS)[pd["labels"]]
    order_tv = np.lexsort((tv["boxes"][:, 0], -np.round(tv["scores"], 4)))
    order_pd = np.lexsort((pd["boxes"][:, 0], -np.round(pd["scores"], 4)))
    box_diff = np.abs(tv["boxes"][order_tv] - pd["boxes"][order_pd]).max()
    score_diff = np.abs(tv["scores"][order_tv] - pd["scores"][order_pd]).max()
    assert np.array_equal(tv_labels[order_tv], pd_labels[order_pd]), f"{name}: labels differ"
    assert box_diff <= BOX_TOL, f"{name}: boxes differ by {box_diff:.4f} px"
    assert score_diff <= SCORE_TOL, f"{name}: scores differ by {score_diff:.2e}"
    return {"detections": n, "max_box_diff_px": float(box_diff), "max_score_diff": float(score_diff)}


@pytest.fixture(scope="module")
def fcos_pair():
    tv_model = _torchvision_fcos()
    src = _to_numpy_state(tv_model)
    conversion = convert_torchvision_fcos(src, _tv_cfg())
    print(conversion.summary())
    return tv_model, _paddle_model(_tv_cfg(), conversion.state)


@pytest.mark.parametrize("image", ["photo", "synthetic"])
def test_torchvision_fcos_detections_match(fcos_pair, image: str) -> None:
    tv_model, pd_model = fcos_pair
    img = photo_bgr() if image == "photo" else synthetic_bgr()
    tv, pd = _run_both(tv_model, pd_model, img)
    stats = _compare_detections(tv, pd, image)
    print(f"torchvision FCOS parity on {image} {img.shape[:2]}: {stats}")


# --------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------


def _input_pair(img_bgr: np.ndarray, cfg) -> tuple[torch.Tensor, paddle.Tensor]:
    """The reference input (RGB [0,1] ImageNet-normalised) and the recipe's input, both (1, 3, H, W)."""
    rgb = img_bgr[:, :, ::-1].astype(np.float32) / 255.0
    ref = (rgb - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    ref_t = torch.from_numpy(np.ascontiguousarray(ref.transpose(2, 0, 1)))[None]
    ours = paddle.to_tensor(normalize_image(img_bgr, cfg.input)[None])
    return ref_t, ours


def _crop(img: np.ndarray, h: int = 256, w: int = 320) -> np.ndarray:
    return np.ascontiguousarray(img[:h, :w])


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(1e-6, np.abs(a).max()))


@pytest.mark.parametrize("overrides", [[], BGR_255], ids=["rgb_imagenet", "bgr_255"])
def test_torchvision_resnet50_features_match(overrides: list[str]) -> None:
    torch.manual_seed(1)
    ref = torchvision.models.resnet50(weights=None)
    _randomize_bn_stats(ref, torch.Generator().manual_seed(1))
    ref.eval()
    cfg = fcos.load_config(os.path.join(ROOT, "configs", "tv_r50.yml"), overrides)
    conversion = convert_torchvision_resnet50(_to_numpy_state(ref), cfg)
    print(conversion.summary())
    model = fcos.build_model(cfg)
    report = load_weights(model, conversion.state)
    assert not report.shape_mismatch and not [k for k in report.missing if k.startswith("backbone.")]
    model.eval()
    x_ref, x_pd = _input_pair(_crop(photo_bgr()), cfg)
    with torch.no_grad():
        x = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x_ref))))
        c2 = ref.layer1(x)
        c3 = ref.layer2(c2)
        c4 = ref.layer3(c3)
        c5 = ref.layer4(c4)
    with paddle.no_grad():
        ours = model.backbone(x_pd)
    diffs = [_max_rel(r.numpy(), o.numpy()) for r, o in zip((c3, c4, c5), ours)]
    print(f"ResNet-50 C3-C5 max relative difference ({'+'.join(overrides) or 'RGB ImageNet'}): {diffs}")
    assert max(diffs) < 1e-4, diffs


@pytest.mark.parametrize("overrides", [[], ["input.channel_order=RGB", "input.to_unit=true",
                                               "input.mean=[0.485,0.456,0.406]", "input.std=[0.229,0.224,0.225]"]],
                         ids=["rt_dla34_bgr_255", "rgb_imagenet"])  # fmt: skip
def test_timm_dla34_features_match(overrides: list[str]) -> None:
    torch.manual_seed(2)
    ref = timm.create_model("dla34", pretrained=False)
    _randomize_bn_stats(ref, torch.Generator().manual_seed(2))
    ref.eval()
    cfg = fcos.load_config(os.path.join(ROOT, "configs", "rt_dla34.yml"), overrides)
    conversion = convert_timm_dla34(_to_numpy_state(ref), cfg)
    print(conversion.summary())
    model = fcos.build_model(cfg)
    report = load_weights(model, conversion.state)
    assert not report.shape_mismatch and not [k for k in report.missing if k.startswith("backbone.")]
    model.eval()
    x_ref, x_pd = _input_pair(_crop(photo_bgr()), cfg)
    with torch.no_grad():
        x = ref.base_layer(x_ref)
        feats = []
        for i in range(6):
            x = getattr(ref, f"level{i}")(x)
            if i >= 3:
                feats.append(x.numpy())
    with paddle.no_grad():
        ours = [o.numpy() for o in model.backbone(x_pd)]
    diffs = [_max_rel(r, o) for r, o in zip(feats, ours)]
    print(f"DLA-34 level3-5 max relative difference ({'+'.join(overrides) or 'rt_dla34 BGR 0-255'}): {diffs}")
    assert max(diffs) < 1e-4, diffs
