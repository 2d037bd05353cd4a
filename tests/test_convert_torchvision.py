"""torchvision FCOS / ResNet-50 and timm DLA-34 converters on synthetic source state dicts (no torch needed).

The source dicts carry every key name and shape of the real checkpoints, derived here from the module
definitions (``tests/reference/test_source_keys.py`` checks them against torchvision and timm). Each tensor
holds distinct random values, so checking ``converted[rename(src)] == transform(source[src])`` for every
source key proves each tensor lands in the right place; ``rename`` is written independently of the converter.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import fcos
from fcos.checkpoint.convert_common import COCO_CATEGORY_IDS, ConversionError
from fcos.checkpoint.convert_timm import convert_timm_dla34
from fcos.checkpoint.convert_torchvision import (
    convert_torchvision_fcos,
    convert_torchvision_resnet50,
    fold_input_normalization,
)
from fcos.checkpoint.weights import load_weights
from fcos.config import InputConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BN = ("weight", "bias", "running_mean", "running_var")
CLS_BIAS = "head.classification_head.cls_logits.bias"


# --------------------------------------------------------------------------------------------
# Source key lists (from the module definitions)
# --------------------------------------------------------------------------------------------


def _bn_keys(prefix: str, c: int, tracked: bool) -> dict[str, tuple]:
    keys = {f"{prefix}.{n}": (c,) for n in BN}
    if tracked:
        keys[f"{prefix}.num_batches_tracked"] = ()
    return keys


def tv_resnet50_shapes(prefix: str = "", tracked: bool = True, fc: bool = True) -> dict[str, tuple]:
    """torchvision ``resnet50`` state dict shapes (``tracked``: BatchNorm2d; False: FrozenBatchNorm2d)."""
    s = {f"{prefix}conv1.weight": (64, 3, 7, 7), **_bn_keys(f"{prefix}bn1", 64, tracked)}
    in_c = 64
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        w = 64 * 2 ** (stage - 1)
        for b in range(blocks):
            p = f"{prefix}layer{stage}.{b}"
            s[f"{p}.conv1.weight"] = (w, in_c, 1, 1)
            s.update(_bn_keys(f"{p}.bn1", w, tracked))
            s[f"{p}.conv2.weight"] = (w, w, 3, 3)
            s.update(_bn_keys(f"{p}.bn2", w, tracked))
            s[f"{p}.conv3.weight"] = (4 * w, w, 1, 1)
            s.update(_bn_keys(f"{p}.bn3", 4 * w, tracked))
            if b == 0:
                s[f"{p}.downsample.0.weight"] = (4 * w, in_c, 1, 1)
                s.update(_bn_keys(f"{p}.downsample.1", 4 * w, tracked))
            in_c = 4 * w
    if fc:
        s[f"{prefix}fc.weight"] = (1000, 2048)
        s[f"{prefix}fc.bias"] = (1000,)
    return s


def tv_fcos_shapes(old_fpn_keys: bool = False) -> dict[str, tuple]:
    """torchvision ``fcos_resnet50_fpn`` (released checkpoint: FrozenBN, 91 classes) state dict shapes."""
    s = tv_resnet50_shapes("backbone.body.", tracked=False, fc=False)
    sub = "" if old_fpn_keys else ".0"
    for i, c in enumerate((512, 1024, 2048)):
        s[f"backbone.fpn.inner_blocks.{i}{sub}.weight"] = (256, c, 1, 1)
        s[f"backbone.fpn.inner_blocks.{i}{sub}.bias"] = (256,)
        s[f"backbone.fpn.layer_blocks.{i}{sub}.weight"] = (256, 256, 3, 3)
        s[f"backbone.fpn.layer_blocks.{i}{sub}.bias"] = (256,)
    for p in ("p6", "p7"):
        s[f"backbone.fpn.extra_blocks.{p}.weight"] = (256, 256, 3, 3)
        s[f"backbone.fpn.extra_blocks.{p}.bias"] = (256,)
    for head in ("classification_head", "regression_head"):
        for i in range(4):
            s[f"head.{head}.conv.{3 * i}.weight"] = (256, 256, 3, 3)
            s[f"head.{head}.conv.{3 * i}.bias"] = (256,)
            s[f"head.{head}.conv.{3 * i + 1}.weight"] = (256,)
            s[f"head.{head}.conv.{3 * i + 1}.bias"] = (256,)
    s["head.classification_head.cls_logits.weight"] = (91, 256, 3, 3)
    s["head.classification_head.cls_logits.bias"] = (91,)
    s["head.regression_head.bbox_reg.weight"] = (4, 256, 3, 3)
    s["head.regression_head.bbox_reg.bias"] = (4,)
    s["head.regression_head.bbox_ctrness.weight"] = (1, 256, 3, 3)
    s["head.regression_head.bbox_ctrness.bias"] = (1,)
    return s


def _dla_tree_shapes(s: dict, prefix: str, levels: int, in_c: int, out_c: int, root_dim: int, level_root: bool,
                     timm_layout: bool) -> None:  # fmt: skip
    if root_dim == 0:
        root_dim = 2 * out_c
    if level_root:
        root_dim += in_c
    if levels == 1:
        for block, cin in (("tree1", in_c), ("tree2", out_c)):
            s[f"{prefix}.{block}.conv1.weight"] = (out_c, cin, 3, 3)
            s.update(_bn_keys(f"{prefix}.{block}.bn1", out_c, True))
            s[f"{prefix}.{block}.conv2.weight"] = (out_c, out_c, 3, 3)
            s.update(_bn_keys(f"{prefix}.{block}.bn2", out_c, True))
        s[f"{prefix}.root.conv.weight"] = (out_c, root_dim, 1, 1)
        s.update(_bn_keys(f"{prefix}.root.bn", out_c, True))
    else:
        _dla_tree_shapes(s, f"{prefix}.tree1", levels - 1, in_c, out_c, 0, False, timm_layout)
        _dla_tree_shapes(s, f"{prefix}.tree2", levels - 1, out_c, out_c, root_dim + out_c, False, timm_layout)
    # timm's DlaTree has a project only in one-level trees; the original DLA also in the two-level ones.
    if in_c != out_c and (levels == 1 or not timm_layout):
        s[f"{prefix}.project.0.weight"] = (out_c, in_c, 1, 1)
        s.update(_bn_keys(f"{prefix}.project.1", out_c, True))


def timm_dla34_shapes(timm_layout: bool = True) -> dict[str, tuple]:
    """timm ``dla34`` state dict shapes (``timm_layout=False``: with the original level3/4 projects)."""
    ch = [16, 32, 64, 128, 256, 512]
    s = {"base_layer.0.weight": (16, 3, 7, 7), **_bn_keys("base_layer.1", 16, True)}
    s["level0.0.weight"] = (16, 16, 3, 3)
    s.update(_bn_keys("level0.1", 16, True))
    s["level1.0.weight"] = (32, 16, 3, 3)
    s.update(_bn_keys("level1.1", 32, True))
    for level, levels in zip(range(2, 6), (1, 2, 2, 1)):
        _dla_tree_shapes(s, f"level{level}", levels, ch[level - 1], ch[level], 0, level > 2, timm_layout)
    s["fc.weight"] = (1000, 512, 1, 1)
    s["fc.bias"] = (1000,)
    return s


def random_state(shapes: dict[str, tuple], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    out = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = np.asarray(1234, dtype=np.int64)
        elif k.endswith("running_var"):
            out[k] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            out[k] = rng.standard_normal(shape).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------
# Independent renaming rules
# --------------------------------------------------------------------------------------------


def _bn_rename(key: str) -> str:
    return key.replace("running_mean", "_mean").replace("running_var", "_variance")


def tv_fcos_rename(key: str) -> str:
    key = _bn_rename(key)
    key = key.replace("backbone.body.", "backbone.")
    key = re.sub(r"backbone\.fpn\.inner_blocks\.(\d)(\.0)?\.", r"fpn.lateral_convs.\1.", key)
    key = re.sub(r"backbone\.fpn\.layer_blocks\.(\d)(\.0)?\.", r"fpn.output_convs.\1.", key)
    key = key.replace("backbone.fpn.extra_blocks.", "fpn.")
    key = key.replace("head.classification_head.conv.", "head.cls_tower.")
    key = key.replace("head.regression_head.conv.", "head.bbox_tower.")
    key = key.replace("head.classification_head.cls_logits.", "head.cls_logits.")
    key = key.replace("head.regression_head.bbox_reg.", "head.bbox_pred.")
    return key.replace("head.regression_head.bbox_ctrness.", "head.ctrness.")


def _cfg(name: str, overrides: list[str] | None = None):
    return fcos.load_config(os.path.join(ROOT, "configs", name), overrides)


def _assert_round_trip(conversion, src, rename, special=None) -> None:
    special = special or {}
    seen = set()
    for key, value in src.items():
        if key.endswith("num_batches_tracked") or key.startswith("fc."):
            continue
        dst = rename(key)
        assert dst in conversion.state, f"{key} -> {dst} missing"
        expected = special[key](value) if key in special else value
        np.testing.assert_array_equal(conversion.state[dst], expected, err_msg=f"{key} -> {dst}")
        seen.add(dst)
    return seen


# --------------------------------------------------------------------------------------------
# torchvision FCOS
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("old_fpn_keys", [False, True], ids=["tv>=0.13", "tv<0.13"])
def test_torchvision_fcos_round_trip(old_fpn_keys: bool) -> None:
    cfg = _cfg("tv_r50.yml")
    src = random_state(tv_fcos_shapes(old_fpn_keys))
    conversion = convert_torchvision_fcos(src, cfg)
    rows = np.asarray(COCO_CATEGORY_IDS)
    special = {
        "head.classification_head.cls_logits.weight": lambda w: w[rows],
        "head.classification_head.cls_logits.bias": lambda b: b[rows],
    }
    seen = _assert_round_trip(conversion, src, tv_fcos_rename, special)
    assert seen == set(conversion.state)  # nothing derived: every target has a source tensor
    assert len(conversion.mapped) == len(src) and not conversion.ignored and not conversion.derived
    # person (COCO id 1) is class 0, toothbrush (id 90) class 79
    np.testing.assert_array_equal(conversion.state["head.cls_logits.bias"][[0, 79]], src[CLS_BIAS][[1, 90]])
    model = fcos.build_model(cfg)
    report = load_weights(model, conversion.state, strict=True)
    assert report.ok and len(report.loaded) == len(model.state_dict())
    assert "80 contiguous classes" in conversion.summary()


def test_torchvision_fcos_91_classes_keeps_all_rows_and_scales_derived() -> None:
    cfg = _cfg("tv_r50.yml", ["model.num_classes=91", "model.head.use_scale=true"])
    src = random_state(tv_fcos_shapes())
    conversion = convert_torchvision_fcos(src, cfg)
    np.testing.assert_array_equal(
        conversion.state["head.cls_logits.weight"], src["head.classification_head.cls_logits.weight"]
    )
    assert {k for k, _ in conversion.derived} == {f"head.scales.{i}.scale" for i in range(5)}
    for i in range(5):
        np.testing.assert_array_equal(conversion.state[f"head.scales.{i}.scale"], [1.0])


def test_torchvision_fcos_errors_name_the_keys() -> None:
    cfg = _cfg("tv_r50.yml")
    src = random_state(tv_fcos_shapes())
    extra = dict(src, **{"head.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ConversionError, match=r"head\.extra\.weight.*neither mapped nor ignored"):
        convert_torchvision_fcos(extra, cfg)
    missing = {k: v for k, v in src.items() if k != "backbone.body.layer3.2.conv2.weight"}
    with pytest.raises(ConversionError, match=r"layer3\.2\.conv2\.weight"):
        convert_torchvision_fcos(missing, cfg)
    wrong = dict(src, **{"backbone.fpn.extra_blocks.p6.weight": np.zeros((256, 2048, 3, 3), np.float32)})
    with pytest.raises(ConversionError, match=r"shape mismatch for 'fpn\.p6\.weight'.*\[256, 2048, 3, 3\]"):
        convert_torchvision_fcos(wrong, cfg)
    with pytest.raises(ConversionError, match="model.num_classes must be 80"):
        convert_torchvision_fcos(src, _cfg("tv_r50.yml", ["model.num_classes=20"]))
    with pytest.raises(ConversionError, match="num_extra_levels"):
        convert_torchvision_fcos(src, _cfg("rt_r50.yml"))
    with pytest.raises(ConversionError, match="ResNet-50"):
        convert_torchvision_fcos(src, _cfg("rt_dla34.yml"))


# --------------------------------------------------------------------------------------------
# torchvision ResNet-50 (ImageNet backbone)
# --------------------------------------------------------------------------------------------


def test_torchvision_resnet50_round_trip_rgb_recipe() -> None:
    cfg = _cfg("tv_r50.yml")
    src = random_state(tv_resnet50_shapes())
    conversion = convert_torchvision_resnet50(src, cfg)
    seen = _assert_round_trip(conversion, src, lambda k: "backbone." + _bn_rename(k))
    assert seen == set(conversion.state) and all(k.startswith("backbone.") for k in seen)
    reasons = {reason for _, reason in conversion.ignored}
    assert len(conversion.ignored) == 53 + 2 and len(reasons) == 2  # 53 BN counters, fc weight + bias
    assert not conversion.notes  # same normalisation: conv1 copied as is


def test_torchvision_resnet50_into_bgr_255_recipe_folds_first_conv() -> None:
    cfg = _cfg("rt_r50.yml")  # BGR, 0-255, mean [103.53, 116.28, 123.675], std 1; stride in the 1x1 conv
    src = random_state(tv_resnet50_shapes())
    conversion = convert_torchvision_resnet50(src, cfg)
    w = src["conv1.weight"]
    std_rgb = np.array([0.229, 0.224, 0.225])
    # BGR input channel k holds colour 2-k, in 0-255 with the same mean: scale by 1 / (255 * std of that colour)
    expected = np.stack([w[:, 2] / (255 * std_rgb[2]), w[:, 1] / (255 * std_rgb[1]), w[:, 0] / (255 * std_rgb[0])], 1)
    np.testing.assert_allclose(conversion.state["backbone.conv1.weight"], expected, rtol=1e-6)
    notes = " ".join(conversion.notes)
    assert "channels swapped" in notes and "scale folded" in notes and "stride_in_1x1" in notes


def test_fold_input_normalization_refuses_a_different_mean() -> None:
    w = np.ones((4, 3, 1, 1), np.float32)
    src = InputConfig(channel_order="RGB", to_unit=True, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    dst = InputConfig(channel_order="BGR", to_unit=False, mean=[0, 0, 0], std=[1, 1, 1])
    with pytest.raises(ConversionError, match=r"input\.mean"):
        fold_input_normalization(w, src, dst)
    same, notes = fold_input_normalization(w, src, src)
    np.testing.assert_array_equal(same, w)
    assert notes == []


def test_folded_first_conv_gives_the_same_response() -> None:
    """A linear 1x1 conv on one pixel: folded weights on the recipe's input == source weights on the source's."""
    rng = np.random.RandomState(3)
    w = rng.standard_normal((5, 3, 1, 1)).astype(np.float32)
    src = InputConfig(channel_order="RGB", to_unit=True, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    dst = InputConfig(channel_order="BGR", to_unit=False, mean=[103.53, 116.28, 123.675], std=[57.375, 57.12, 58.395])
    folded, _ = fold_input_normalization(w, src, dst)
    rgb = np.array([200.0, 30.0, 90.0])
    x_src = (rgb / 255 - np.array(src.mean)) / np.array(src.std)
    x_dst = (rgb[::-1] - np.array(dst.mean)) / np.array(dst.std)
    np.testing.assert_allclose(folded[:, :, 0, 0] @ x_dst, w[:, :, 0, 0] @ x_src, rtol=1e-5, atol=1e-5)


def test_torchvision_resnet50_needs_a_resnet_recipe() -> None:
    with pytest.raises(ConversionError, match="model.backbone.name='dla34'"):
        convert_torchvision_resnet50(random_state(tv_resnet50_shapes()), _cfg("rt_dla34.yml"))


# --------------------------------------------------------------------------------------------
# timm DLA-34
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("timm_layout", [True, False], ids=["timm", "original_with_level3_4_project"])
def test_timm_dla34_round_trip(timm_layout: bool) -> None:
    cfg = _cfg("rt_dla34.yml", ["input.channel_order=RGB", "input.to_unit=true", "input.mean=[0.485,0.456,0.406]",
                                "input.std=[0.229,0.224,0.225]"])  # fmt: skip
    shapes = timm_dla34_shapes(timm_layout)
    src = random_state(shapes)
    conversion = convert_timm_dla34(src, cfg)
    seen = _assert_round_trip(conversion, src, lambda k: "backbone." + _bn_rename(k))
    derived = set(conversion.state) - seen
    if timm_layout:
        assert derived == {
            f"backbone.level{i}.project.{j}"
            for i in (3, 4)
            for j in ("0.weight", "1.weight", "1.bias", "1._mean", "1._variance")
        }
        assert not conversion.state["backbone.level3.project.0.weight"].any()
        np.testing.assert_array_equal(conversion.state["backbone.level4.project.1._variance"], 1.0)
    else:
        assert not derived
    model = fcos.build_model(cfg)
    report = load_weights(model, conversion.state)
    assert not report.shape_mismatch and not report.unexpected
    assert not [k for k in report.missing if k.startswith("backbone.")]


def test_timm_dla34_into_rt_dla34_swaps_and_scales_base_conv() -> None:
    src = random_state(timm_dla34_shapes())
    conversion = convert_timm_dla34(src, _cfg("rt_dla34.yml"))
    w = src["base_layer.0.weight"]
    std_rgb = np.array([0.229, 0.224, 0.225])
    expected = np.stack([w[:, 2 - k] / (255 * std_rgb[2 - k]) for k in range(3)], 1)
    np.testing.assert_allclose(conversion.state["backbone.base_layer.0.weight"], expected, rtol=1e-6)


def test_timm_dla34_needs_dla34_recipe() -> None:
    with pytest.raises(ConversionError, match="dla_channels"):
        convert_timm_dla34(random_state(timm_dla34_shapes()), _cfg("demo_shapes.yml"))
