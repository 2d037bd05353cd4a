"""PaddleDetection fcos_r50_fpn_multiscale_2x: synthetic 0.x (static names, affine_channel) and 2.x
(dygraph sublayer names, BN) parameter files with every key and shape, derived here from
PaddleDetection's module definitions, converted and checked tensor by tensor."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from fcos.checkpoint.convert import convert_file
from fcos.checkpoint.convert_common import ConversionError
from fcos.checkpoint.weights import read_weights
from fcos.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = [(2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512)]  # (stage, blocks, width) of ResNet-50
EPS = 1e-5


def _units() -> list[tuple[int, str, str, tuple, int, int]]:
    """(stage, block letter, branch, conv shape, stage index, block index) of every ResNet-50 conv after the stem."""
    out, cin = [], 64
    for stage, blocks, width in STAGES:
        cout = 4 * width
        for b in range(blocks):
            letter = "abcdef"[b]
            out.append((stage, letter, "branch2a", (width, cin, 1, 1), stage - 1, b))
            out.append((stage, letter, "branch2b", (width, width, 3, 3), stage - 1, b))
            out.append((stage, letter, "branch2c", (cout, width, 1, 1), stage - 1, b))
            if b == 0:
                out.append((stage, letter, "branch1", (cout, cin, 1, 1), stage - 1, b))
            cin = cout
    return out


# PaddleDetection lists the levels from P7 down (fpn_stride[::-1]); the keys carry the level name.
SCALE_NAMES = ["fpn_7", "fpn_6", "fpn_res5_sum", "fpn_res4_sum", "fpn_res3_sum"]
SCALE_LEVEL = {"fpn_res3_sum": 0, "fpn_res4_sum": 1, "fpn_res5_sum": 2, "fpn_6": 3, "fpn_7": 4}
OUR_CONV = {"branch2a": ("conv1", "bn1"), "branch2b": ("conv2", "bn2"), "branch2c": ("conv3", "bn3")}


def _our_unit(stage_index: int, block: int, branch: str) -> tuple[str, str]:
    p = f"backbone.layer{stage_index}.{block}."
    if branch in ("branch1", "short"):
        return p + "downsample.0", p + "downsample.1"
    conv, bn = OUR_CONV[branch]
    return p + conv, p + bn


def v0_params() -> tuple[dict[str, tuple], dict[str, str]]:
    """0.x names -> shape, and 0.x name -> our key (None-free: statistics are derived)."""
    shapes, target = {}, {}

    def put(name: str, shape: tuple, dst: str) -> None:
        shapes[name], target[name] = shape, dst

    put("conv1_weights", (64, 3, 7, 7), "backbone.conv1.weight")
    put("bn_conv1_scale", (64,), "backbone.bn1.weight")
    put("bn_conv1_offset", (64,), "backbone.bn1.bias")
    for stage, letter, branch, shape, si, b in _units():
        conv, bn = _our_unit(si, b, branch)
        put(f"res{stage}{letter}_{branch}_weights", shape, conv + ".weight")
        put(f"bn{stage}{letter}_{branch}_scale", shape[:1], bn + ".weight")
        put(f"bn{stage}{letter}_{branch}_offset", shape[:1], bn + ".bias")
    for name, cin, dst in (
        ("fpn_inner_res5_sum", 2048, "fpn.lateral_convs.2"),
        ("fpn_inner_res4_sum_lateral", 1024, "fpn.lateral_convs.1"),
        ("fpn_inner_res3_sum_lateral", 512, "fpn.lateral_convs.0"),
    ):
        put(f"{name}_w", (256, cin, 1, 1), dst + ".weight")
        put(f"{name}_b", (256,), dst + ".bias")
    for name, dst in (
        ("fpn_res5_sum", "fpn.output_convs.2"),
        ("fpn_res4_sum", "fpn.output_convs.1"),
        ("fpn_res3_sum", "fpn.output_convs.0"),
        ("fpn_6", "fpn.p6"),
        ("fpn_7", "fpn.p7"),
    ):
        put(f"{name}_w", (256, 256, 3, 3), dst + ".weight")
        put(f"{name}_b", (256,), dst + ".bias")
    for branch, tower in (("cls", "cls_tower"), ("reg", "bbox_tower")):
        for i in range(4):
            p = f"fcos_head_{branch}_tower_conv_{i}"
            put(f"{p}_weights", (256, 256, 3, 3), f"head.{tower}.{3 * i}.weight")
            put(f"{p}_bias", (256,), f"head.{tower}.{3 * i}.bias")
            put(f"{p}_norm_scale", (256,), f"head.{tower}.{3 * i + 1}.weight")
            put(f"{p}_norm_offset", (256,), f"head.{tower}.{3 * i + 1}.bias")
    for name, c, dst in (("cls", 80, "cls_logits"), ("reg", 4, "bbox_pred"), ("centerness", 1, "ctrness")):
        put(f"fcos_head_{name}_weights", (c, 256, 3, 3), f"head.{dst}.weight")
        put(f"fcos_head_{name}_bias", (c,), f"head.{dst}.bias")
    for name in SCALE_NAMES:
        put(f"{name}_scale_on_reg", (1,), f"head.scales.{SCALE_LEVEL[name]}.scale")
    return shapes, target


def v2_params() -> tuple[dict[str, tuple], dict[str, str]]:
    """2.x dygraph names (ConvNormLayer .conv/.norm, Blocks res{n}.res{n}{x}, FPN add_sublayer names)."""
    shapes, target = {}, {}

    def put(name: str, shape: tuple, dst: str) -> None:
        shapes[name], target[name] = shape, dst

    def conv_norm(prefix: str, shape: tuple, conv: str, bn: str) -> None:
        put(f"{prefix}.conv.weight", shape, conv + ".weight")
        for part in ("weight", "bias", "_mean", "_variance"):
            put(f"{prefix}.norm.{part}", shape[:1], f"{bn}.{part}")

    conv_norm("backbone.conv1.conv1", (64, 3, 7, 7), "backbone.conv1", "backbone.bn1")
    for stage, letter, branch, shape, si, b in _units():
        name = "short" if branch == "branch1" else branch
        conv_norm(f"backbone.res{stage}.res{stage}{letter}.{name}", shape, *_our_unit(si, b, name))
    for name, cin, dst in (
        ("fpn_inner_res5_sum", 2048, "fpn.lateral_convs.2"),
        ("fpn_inner_res4_sum_lateral", 1024, "fpn.lateral_convs.1"),
        ("fpn_inner_res3_sum_lateral", 512, "fpn.lateral_convs.0"),
    ):
        put(f"neck.{name}.weight", (256, cin, 1, 1), dst + ".weight")
        put(f"neck.{name}.bias", (256,), dst + ".bias")
    for name, dst in (
        ("fpn_res3_sum", "fpn.output_convs.0"),
        ("fpn_res4_sum", "fpn.output_convs.1"),
        ("fpn_res5_sum", "fpn.output_convs.2"),
        ("fpn_6", "fpn.p6"),
        ("fpn_7", "fpn.p7"),
    ):
        put(f"neck.{name}.weight", (256, 256, 3, 3), dst + ".weight")
        put(f"neck.{name}.bias", (256,), dst + ".bias")
    for i in range(4):
        for branch, tower in (("cls", "cls_tower"), ("reg", "bbox_tower")):
            p = f"fcos_head.fcos_feat.fcos_head_{branch}_tower_conv_{i}"
            put(f"{p}.conv.weight", (256, 256, 3, 3), f"head.{tower}.{3 * i}.weight")
            put(f"{p}.conv.bias", (256,), f"head.{tower}.{3 * i}.bias")
            put(f"{p}.norm.weight", (256,), f"head.{tower}.{3 * i + 1}.weight")
            put(f"{p}.norm.bias", (256,), f"head.{tower}.{3 * i + 1}.bias")
    for name, c, dst in (("cls", 80, "cls_logits"), ("reg", 4, "bbox_pred"), ("centerness", 1, "ctrness")):
        put(f"fcos_head.fcos_head_{name}.weight", (c, 256, 3, 3), f"head.{dst}.weight")
        put(f"fcos_head.fcos_head_{name}.bias", (c,), f"head.{dst}.bias")
    for level in range(3, 8):
        put(f"fcos_head.p{level}_feat.scale_reg", (1,), f"head.scales.{level - 3}.scale")
    return shapes, target


def _random(shapes: dict[str, tuple], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        k: (rng.uniform(0.5, 2.0, s) if k.endswith("_variance") else rng.standard_normal(s)).astype(np.float32)
        for k, s in shapes.items()
    }


def test_v0_static_names_round_trip(tmp_path):
    from fcos.checkpoint.weights import load_weights
    from fcos.modeling import build_model

    shapes, target = v0_params()
    assert len(shapes) == 218
    state = _random(shapes, 0)
    src, out_path = str(tmp_path / "fcos_r50_fpn_multiscale_2x.pdparams"), str(tmp_path / "r50_ms_2x.safetensors")
    with open(src, "wb") as f:  # fluid.save: a protocol-2 pickle of {name: ndarray}
        pickle.dump(state, f, protocol=2)
    conv = convert_file("paddledet", src, out_path)
    assert conv.recipe == "r50_ms_2x" and len(conv.mapped) == 218 and not conv.ignored
    assert len(conv.derived) == 2 * 53  # mean and variance of the 53 affine_channel norms
    out, meta = read_weights(out_path)
    assert len(out) == 324
    for k, v in state.items():
        np.testing.assert_array_equal(out[target[k]], v, err_msg=k)
    for dst in set(out) - set(target.values()):
        assert dst.endswith(("._mean", "._variance")), dst
        expected = 0.0 if dst.endswith("_mean") else 1.0 - EPS
        np.testing.assert_array_equal(out[dst], np.full(out[dst].shape, expected, np.float32))
    assert out["head.scales.0.scale"][0] == state["fpn_res3_sum_scale_on_reg"][0]
    assert out["head.scales.4.scale"][0] == state["fpn_7_scale_on_reg"][0]
    assert meta["input"]["channel_order"] == "RGB" and meta["input"]["to_unit"] is True
    assert meta["recipe"] == "r50_ms_2x" and len(meta["category_ids"]) == 80

    # the derived statistics make the frozen BN compute exactly x * scale + offset
    import paddle

    model = build_model(load_config(os.path.join(ROOT, "configs", "r50_ms_2x.yml")))
    assert load_weights(model, out_path, strict=True).ok
    model.eval()
    x = np.random.default_rng(1).standard_normal((1, 64, 5, 5)).astype(np.float32)
    y = model.backbone.bn1(paddle.to_tensor(x)).numpy()
    ref = x * state["bn_conv1_scale"].reshape(1, -1, 1, 1) + state["bn_conv1_offset"].reshape(1, -1, 1, 1)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_v2_dygraph_names_round_trip(tmp_path):
    import paddle

    shapes, target = v2_params()
    state = _random(shapes, 2)
    src, out_path = str(tmp_path / "fcos_r50_fpn_multiscale_2x_coco.pdparams"), str(tmp_path / "v2.safetensors")
    paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, src)  # the real paddle.save format
    conv = convert_file("paddledet", src, out_path)
    assert len(conv.mapped) == len(state) == 324 and not conv.derived and not conv.ignored
    assert "PaddleDetection 2.x parameter names" in conv.notes
    out, _ = read_weights(out_path)
    assert set(out) == set(target.values())
    for k, v in state.items():
        np.testing.assert_array_equal(out[target[k]], v, err_msg=k)


def test_bgr_config_swaps_first_conv_and_wrong_backbone_is_refused(tmp_path):
    shapes, _ = v0_params()
    state = _random(shapes, 3)
    src = str(tmp_path / "m.pdparams")
    with open(src, "wb") as f:
        pickle.dump(state, f, protocol=2)
    cfg_path = os.path.join(ROOT, "configs", "r50_ms_2x.yml")
    bgr = load_config(
        cfg_path,
        overrides=["input.channel_order=BGR", "input.mean=[0.406,0.456,0.485]", "input.std=[0.225,0.224,0.229]"],
    )
    conv = convert_file("paddledet", src, str(tmp_path / "bgr.safetensors"), config=bgr)
    np.testing.assert_array_equal(conv.state["backbone.conv1.weight"], state["conv1_weights"][:, ::-1])
    rt = load_config(os.path.join(ROOT, "configs", "rt_r50.yml"))
    with pytest.raises(ConversionError, match="variant b"):
        convert_file("paddledet", src, str(tmp_path / "x.safetensors"), config=rt)


def test_unknown_parameter_is_reported(tmp_path):
    shapes, _ = v0_params()
    state = _random(shapes, 4)
    state["fcos_head_iou_weights"] = np.zeros((1, 256, 3, 3), np.float32)
    del state["bn3a_branch2b_offset"]
    src = str(tmp_path / "m.pdparams")
    with open(src, "wb") as f:
        pickle.dump(state, f, protocol=2)
    with pytest.raises(ConversionError) as e:
        convert_file("paddledet", src, str(tmp_path / "x.safetensors"))
    assert "'fcos_head_iou_weights' (1, 256, 3, 3) is neither mapped nor ignored" in str(e.value)
    assert "backbone.layer2.0.bn2 lacks its scale or offset" in str(e.value)
