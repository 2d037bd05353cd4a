"""AdelaiDet FCOS_RT checkpoints: synthetic .pth files with every key and shape of the released ones
(derived here from AdelaiDet's module definitions, independently of our model code), converted through
the tool, checked tensor by tensor."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from test_safe_loading import tensors, write_torch_legacy, write_torch_zip

from fcos.checkpoint.convert import convert_file
from fcos.checkpoint.convert_common import ConversionError
from fcos.checkpoint.weights import read_weights
from fcos.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BN_RENAME = {"running_mean": "_mean", "running_var": "_variance"}


def _bn(prefix: str, c: int, tracked: bool = True) -> list[tuple[str, tuple]]:
    keys = [(f"{prefix}.{n}", (c,)) for n in ("weight", "bias", "running_mean", "running_var")]
    return keys + ([(f"{prefix}.num_batches_tracked", ())] if tracked else [])


def _conv(prefix: str, cout: int, cin: int, k: int) -> list[tuple[str, tuple]]:
    return [(f"{prefix}.weight", (cout, cin, k, k))]


def ad_dla34_keys() -> list[tuple[str, tuple]]:
    """AdelaiDet DLA-34 (``adet/modeling/backbone/dla.py``): base_layer, level0/1, Tree/Root/project."""
    keys = _conv("base_layer.0", 16, 3, 7) + _bn("base_layer.1", 16)
    keys += _conv("level0.0", 16, 16, 3) + _bn("level0.1", 16)
    keys += _conv("level1.0", 32, 16, 3) + _bn("level1.1", 32)

    def block(p: str, cin: int, cout: int) -> list:
        return (
            _conv(f"{p}.conv1", cout, cin, 3)
            + _bn(f"{p}.bn1", cout)
            + _conv(f"{p}.conv2", cout, cout, 3)
            + _bn(f"{p}.bn2", cout)
        )

    def tree(p: str, levels: int, cin: int, cout: int, level_root: bool, root_dim: int = 0) -> list:
        root_dim = root_dim or 2 * cout
        if level_root:
            root_dim += cin
        if levels == 1:
            out = block(f"{p}.tree1", cin, cout) + block(f"{p}.tree2", cout, cout)
            out += _conv(f"{p}.root.conv", cout, root_dim, 1) + _bn(f"{p}.root.bn", cout)
        else:
            out = tree(f"{p}.tree1", levels - 1, cin, cout, False)
            out += tree(f"{p}.tree2", levels - 1, cout, cout, False, root_dim + cout)
        if cin != cout:
            out += _conv(f"{p}.project.0", cout, cin, 1) + _bn(f"{p}.project.1", cout)
        return out

    keys += tree("level2", 1, 32, 64, False) + tree("level3", 2, 64, 128, True)
    keys += tree("level4", 2, 128, 256, True) + tree("level5", 1, 256, 512, True)
    return [("backbone.bottom_up." + k, s) for k, s in keys]


def ad_r50_keys() -> list[tuple[str, tuple]]:
    """detectron2 ResNet-50 (stem + res2 FrozenBN, res3-5 SyncBN), ``shortcut`` in block 0."""
    keys = _conv("stem.conv1", 64, 3, 7) + _bn("stem.conv1.norm", 64, tracked=False)
    cin = 64
    for stage, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], start=2):
        cout, tracked = width * 4, stage > 2
        for b in range(blocks):
            p = f"res{stage}.{b}"
            if b == 0:
                keys += _conv(f"{p}.shortcut", cout, cin, 1) + _bn(f"{p}.shortcut.norm", cout, tracked)
            keys += _conv(f"{p}.conv1", width, cin, 1) + _bn(f"{p}.conv1.norm", width, tracked)
            keys += _conv(f"{p}.conv2", width, width, 3) + _bn(f"{p}.conv2.norm", width, tracked)
            keys += _conv(f"{p}.conv3", cout, width, 1) + _bn(f"{p}.conv3.norm", cout, tracked)
            cin = cout
    return [("backbone.bottom_up." + k, s) for k, s in keys]


def ad_fpn_head_keys(in_channels: list[int], num_classes: int = 80) -> list[tuple[str, tuple]]:
    keys = []
    for level, c in zip((3, 4, 5), in_channels):
        keys += [(f"backbone.fpn_lateral{level}.weight", (256, c, 1, 1)), (f"backbone.fpn_lateral{level}.bias", (256,))]
        keys += [(f"backbone.fpn_output{level}.weight", (256, 256, 3, 3)), (f"backbone.fpn_output{level}.bias", (256,))]
    h = "proposal_generator.fcos_head."
    for tower in ("cls_tower", "bbox_tower"):
        for i in range(4):
            keys += [(f"{h}{tower}.{3 * i}.weight", (256, 256, 3, 3)), (f"{h}{tower}.{3 * i}.bias", (256,))]
            keys += [(f"{h}{tower}.{3 * i + 1}.weight", (256,)), (f"{h}{tower}.{3 * i + 1}.bias", (256,))]
    for name, c in (("cls_logits", num_classes), ("bbox_pred", 4), ("ctrness", 1)):
        keys += [(f"{h}{name}.weight", (c, 256, 3, 3)), (f"{h}{name}.bias", (c,))]
    keys += [(f"{h}scales.{i}.scale", (1,)) for i in range(3)]
    return keys


def expected_target(key: str, recipe: str) -> str | None:
    """Where an AdelaiDet key must land (None: ignored), written out rule by rule."""
    if key.endswith("num_batches_tracked") or key in ("pixel_mean", "pixel_std"):
        return None
    parts = key.split(".")
    if parts[-1] in BN_RENAME:
        parts[-1] = BN_RENAME[parts[-1]]
    if key.startswith("backbone.fpn_"):
        kind, level = parts[1][4:-1], int(parts[1][-1])
        return f"fpn.{'lateral_convs' if kind == 'lateral' else 'output_convs'}.{level - 3}.{parts[2]}"
    if key.startswith("proposal_generator.fcos_head."):
        return "head." + ".".join(parts[2:])
    rest = parts[2:]  # below backbone.bottom_up
    if recipe == "rt_dla34":
        return "backbone." + ".".join(rest)
    if rest[0] == "stem":  # stem.conv1.weight / stem.conv1.norm.X
        return "backbone." + ("conv1.weight" if rest[2] == "weight" else f"bn1.{rest[3]}")
    layer = f"layer{int(rest[0][3:]) - 1}.{rest[1]}"
    unit = rest[2]
    if unit == "shortcut":
        return f"backbone.{layer}." + ("downsample.0.weight" if rest[3] == "weight" else f"downsample.1.{rest[4]}")
    i = unit[-1]
    return f"backbone.{layer}." + (f"conv{i}.weight" if rest[3] == "weight" else f"bn{i}.{rest[4]}")


def make_state(keys: list[tuple[str, tuple]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = {}
    for k, shape in keys:
        if k.endswith("num_batches_tracked"):
            state[k] = np.array(12345, np.int64)
        elif k.endswith("running_var"):
            state[k] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            state[k] = rng.standard_normal(shape).astype(np.float32)
    return state


DLA_KEYS = ad_fpn_head_keys([128, 256, 512]) + ad_dla34_keys()
R50_KEYS = ad_fpn_head_keys([512, 1024, 2048]) + ad_r50_keys()


def test_derived_key_lists_match_the_published_counts():
    """fcos_spec.md 4.1: DLA ~287 keys (248 without num_batches_tracked), R-50 ~360 (318)."""
    for keys, total, without in ((DLA_KEYS, 287, 248), (R50_KEYS, 360, 318)):
        names = [k for k, _ in keys]
        assert len(names) == len(set(names)) == total
        assert len([k for k in names if not k.endswith("num_batches_tracked")]) == without
    shapes = dict(DLA_KEYS)
    assert shapes["backbone.bottom_up.level3.tree2.root.conv.weight"] == (128, 448, 1, 1)
    assert shapes["backbone.bottom_up.level5.root.conv.weight"] == (512, 1280, 1, 1)
    assert shapes["backbone.bottom_up.level4.tree1.project.0.weight"] == (256, 128, 1, 1)


def _check_round_trip(state: dict[str, np.ndarray], out: dict[str, np.ndarray], recipe: str) -> None:
    landed = {}
    for k, v in state.items():
        dst = expected_target(k, recipe)
        if dst is None:
            continue
        assert dst in out, f"{k} -> {dst} missing"
        np.testing.assert_array_equal(out[dst], v, err_msg=f"{k} -> {dst}")
        landed[dst] = k
    assert set(landed) == set(out), sorted(set(out) - set(landed))[:5]


@pytest.mark.parametrize("recipe", ["rt_dla34", "rt_r50"])
def test_convert_adelaidet_round_trip(tmp_path, recipe):
    import paddle

    from fcos.checkpoint.weights import load_weights
    from fcos.modeling import build_model

    keys = DLA_KEYS if recipe == "rt_dla34" else R50_KEYS
    state = make_state(keys)
    state["pixel_mean"] = np.array([103.53, 116.28, 123.675], np.float32).reshape(3, 1, 1)
    state["pixel_std"] = np.ones((3, 1, 1), np.float32)
    src, out_path = str(tmp_path / f"FCOS_RT_{recipe}.pth"), str(tmp_path / f"{recipe}.safetensors")
    if recipe == "rt_dla34":
        write_torch_zip(src, tensors(state))  # flat state dict, zip format
    else:
        write_torch_legacy(src, {"model": tensors(state), "iteration": 359999})  # D2 checkpointer layout

    conv = convert_file("adelaidet", src, out_path)  # recipe detected from the keys
    assert conv.recipe == recipe
    nbt = sum(k.endswith("num_batches_tracked") for k in state)
    assert len(conv.ignored) == nbt + 2 and len(conv.mapped) == len(state) - nbt - 2 and not conv.derived
    out, meta = read_weights(out_path)
    _check_round_trip(state, out, recipe)
    # scales keep their order (both index P3 first) -- spelled out
    for i in range(3):
        assert out[f"head.scales.{i}.scale"][0] == state[f"proposal_generator.fcos_head.scales.{i}.scale"][0]
    assert meta["recipe"] == recipe and meta["category_ids"][:3] == [1, 2, 3] and meta["category_ids"][-1] == 90
    assert meta["class_names"][0] == "person" and meta["input"]["channel_order"] == "BGR"
    assert meta["input"]["mean"] == [103.53, 116.28, 123.675] and meta["input"]["std"] == [1.0, 1.0, 1.0]
    model = build_model(load_config(os.path.join(ROOT, "configs", f"{recipe}.yml")))
    report = load_weights(model, out_path, strict=True)
    assert report.ok and len(report.loaded) == len(out)
    key = "backbone.level3.tree2.root.bn._variance" if recipe == "rt_dla34" else "backbone.layer1.0.bn2._variance"
    np.testing.assert_array_equal(model.state_dict()[key].numpy(), out[key])
    assert isinstance(model.state_dict()[key], paddle.Tensor)


def test_rgb_config_swaps_first_conv_channels_and_other_inputs_are_refused(tmp_path):
    state = make_state(DLA_KEYS, seed=1)
    src = str(tmp_path / "dla.pth")
    write_torch_zip(src, tensors(state))
    cfg_path = os.path.join(ROOT, "configs", "rt_dla34.yml")
    rgb = load_config(cfg_path, overrides=["input.channel_order=RGB", "input.mean=[123.675,116.28,103.53]"])
    conv = convert_file("adelaidet", src, str(tmp_path / "rgb.safetensors"), config=rgb)
    w = state["backbone.bottom_up.base_layer.0.weight"]
    np.testing.assert_array_equal(conv.state["backbone.base_layer.0.weight"], w[:, [2, 1, 0]])
    assert any("swapped" in n for n in conv.notes)
    other = load_config(cfg_path, overrides=["input.to_unit=true"])
    with pytest.raises(ConversionError, match="input section"):
        convert_file("adelaidet", src, str(tmp_path / "bad.safetensors"), config=other)
    assert not os.path.exists(tmp_path / "bad.safetensors")


def test_unexpected_missing_and_misshaped_keys_fail_with_names(tmp_path):
    state = make_state(DLA_KEYS, seed=2)
    state["backbone.bottom_up.fc.weight"] = np.zeros((1000, 512, 1, 1), np.float32)  # unexpected backbone key
    state["roi_heads.box_predictor.weight"] = np.zeros((81, 1024), np.float32)  # unexpected anything
    del state["proposal_generator.fcos_head.ctrness.bias"]  # missing
    state["backbone.fpn_output4.bias"] = np.zeros((128,), np.float32)  # wrong shape
    src, out = str(tmp_path / "bad.pth"), str(tmp_path / "bad.safetensors")
    write_torch_zip(src, tensors(state))
    with pytest.raises(ConversionError) as e:
        convert_file("adelaidet", src, out)
    msg = str(e.value)
    assert "'roi_heads.box_predictor.weight' (81, 1024) is neither mapped nor ignored" in msg
    assert "'backbone.fc.weight' (from 'backbone.bottom_up.fc.weight') does not exist in the model" in msg
    assert "'head.ctrness.bias' [1] is not filled" in msg
    assert "shape mismatch for 'fpn.output_convs.1.bias'" in msg and "[128]" in msg
    assert not os.path.exists(out)


def test_r50_weights_need_stride_in_1x1(tmp_path):
    state = make_state(R50_KEYS, seed=3)
    src = str(tmp_path / "r50.pth")
    write_torch_zip(src, tensors(state))
    tv = load_config(os.path.join(ROOT, "configs", "rt_r50.yml"), overrides=["model.backbone.stride_in_1x1=false"])
    with pytest.raises(ConversionError, match="stride_in_1x1"):
        convert_file("adelaidet", src, str(tmp_path / "x.safetensors"), config=tv)


def test_tool_prints_summary(tmp_path):
    state = make_state(DLA_KEYS, seed=4)
    src, out = str(tmp_path / "FCOS_RT_MS_DLA_34_4x_syncbn.pth"), str(tmp_path / "rt_dla34.safetensors")
    write_torch_zip(src, tensors(state))
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "convert_weights.py"), "--src", "adelaidet", src, out],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "248 mapped, 39 ignored, 0 derived, 0 missing, 248 target tensors (recipe rt_dla34)" in proc.stdout
    assert "ignored 39 (BN update counter" in proc.stdout and f"wrote {out}" in proc.stdout
    out_state, _ = read_weights(out)
    _check_round_trip(state, out_state, "rt_dla34")
