"""tools/convert_weights.py and fcos.checkpoint.convert.convert_file: the source table, detectron2's
ImageNet R-50.pkl (Caffe2 and detectron2 names), npz output, and converted weights used by
``Detector(cfg, weights=...)`` / ``model.backbone.pretrained`` with nothing else."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from test_convert_adelaidet import DLA_KEYS, make_state
from test_safe_loading import tensors, write_torch_zip

from fcos.checkpoint.convert import SOURCES, convert_file
from fcos.checkpoint.convert_common import ConversionError
from fcos.checkpoint.weights import read_weights
from fcos.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 1e-5


def c2_r50_blobs(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """MSRA R-50.pkl blobs (Caffe2 names, affine BN ``_bn_s``/``_bn_b``) and where each must land."""
    rng = np.random.default_rng(seed)
    blobs, target = {}, {}

    def put(name: str, shape: tuple, dst: str | None) -> None:
        blobs[name] = rng.standard_normal(shape).astype(np.float32)
        if dst:
            target[name] = dst

    put("conv1_w", (64, 3, 7, 7), "backbone.conv1.weight")
    put("conv1_b", (64,), None)
    put("res_conv1_bn_s", (64,), "backbone.bn1.weight")
    put("res_conv1_bn_b", (64,), "backbone.bn1.bias")
    cin = 64
    for stage, blocks, width in ((2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512)):
        for b in range(blocks):
            p, q = f"res{stage}_{b}_", f"backbone.layer{stage - 1}.{b}."
            units = [
                ("branch2a", (width, cin, 1, 1), "conv1", "bn1"),
                ("branch2b", (width, width, 3, 3), "conv2", "bn2"),
            ]
            units.append(("branch2c", (4 * width, width, 1, 1), "conv3", "bn3"))
            if b == 0:
                units.append(("branch1", (4 * width, cin, 1, 1), "downsample.0", "downsample.1"))
            for branch, shape, conv, bn in units:
                put(f"{p}{branch}_w", shape, q + conv + ".weight")
                put(f"{p}{branch}_bn_s", shape[:1], q + bn + ".weight")
                put(f"{p}{branch}_bn_b", shape[:1], q + bn + ".bias")
            cin = 4 * width
    put("fc1000_w", (1000, 2048), None)
    put("fc1000_b", (1000,), None)
    put("conv1_w_momentum", (64, 3, 7, 7), None)
    return blobs, target


def test_source_table_and_errors(tmp_path):
    assert set(SOURCES) == {
        "adelaidet",
        "torchvision",
        "paddledet",
        "timm-dla34",
        "torchvision-resnet50",
        "detectron2-r50",
    }
    assert [k for k, s in SOURCES.items() if s.backbone_only] == [
        "timm-dla34",
        "torchvision-resnet50",
        "detectron2-r50",
    ]
    with pytest.raises(ConversionError, match="unknown source 'caffe'"):
        convert_file("caffe", "x.pth", str(tmp_path / "y.safetensors"))


def test_detectron2_r50_pkl_via_tool_and_backbone_pretrained(tmp_path):
    from fcos.modeling import build_model

    blobs, target = c2_r50_blobs()
    src, out = str(tmp_path / "R-50.pkl"), str(tmp_path / "R-50_msra.safetensors")
    with open(src, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "convert_weights.py"), "--src", "detectron2-r50", src, out],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "159 mapped, 4 ignored, 106 derived, 0 missing, 265 backbone tensors (recipe rt_r50)" in proc.stdout
    assert "ImageNet classifier" in proc.stdout and "optimizer state" in proc.stdout
    state, meta = read_weights(out)
    assert meta["backbone_only"] is True and meta["recipe"] == "rt_r50" and "class_names" not in meta
    assert len(state) == 265 and all(k.startswith("backbone.") for k in state)
    for k, dst in target.items():
        np.testing.assert_array_equal(state[dst], blobs[k], err_msg=k)
    for dst in set(state) - set(target.values()):
        expected = 0.0 if dst.endswith("._mean") else 1.0 - EPS
        assert dst.endswith(("._mean", "._variance")) and np.all(state[dst] == np.float32(expected)), dst

    cfg = load_config(os.path.join(ROOT, "configs", "rt_r50.yml"), overrides=[f"model.backbone.pretrained={out}"])
    model = build_model(cfg)
    np.testing.assert_array_equal(model.backbone.layer3[5].conv2.weight.numpy(), blobs["res4_5_branch2b_w"])
    np.testing.assert_array_equal(model.backbone.bn1.weight.numpy(), blobs["res_conv1_bn_s"])


def test_detectron2_names_and_npz_output(tmp_path):
    from test_convert_adelaidet import R50_KEYS

    d2 = make_state(R50_KEYS, seed=5)
    backbone = {k[len("backbone.bottom_up.") :]: v for k, v in d2.items() if k.startswith("backbone.bottom_up.")}
    src, out = str(tmp_path / "R-50-d2.pkl"), str(tmp_path / "r50.npz")
    with open(src, "wb") as f:
        pickle.dump({"model": backbone, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}, f)
    conv = convert_file("detectron2-r50", src, out, config=os.path.join(ROOT, "configs", "rt_r50.yml"))
    assert conv.backbone_only and not conv.derived
    state, meta = read_weights(out)
    assert meta["backbone_only"] is True and meta["format"] == "fcos-weights"
    np.testing.assert_array_equal(state["backbone.layer4.2.bn3._variance"], backbone["res5.2.conv3.norm.running_var"])
    np.testing.assert_array_equal(state["backbone.layer1.0.downsample.0.weight"], backbone["res2.0.shortcut.weight"])
    assert set(state) == set(conv.state)


def test_converted_weights_run_with_config_only(tmp_path):
    """``-c configs/rt_dla34.yml -w converted``: class names and COCO ids come from the file."""
    from fcos.inference.detector import Detector

    state = make_state(DLA_KEYS, seed=6)
    src, out = str(tmp_path / "FCOS_RT_MS_DLA_34_4x_syncbn.pth"), str(tmp_path / "rt_dla34.safetensors")
    write_torch_zip(src, tensors(state))
    convert_file("adelaidet", src, out)
    cfg = load_config(
        os.path.join(ROOT, "configs", "rt_dla34.yml"), overrides=["input.test_short=64", "input.test_max=96"]
    )
    det = Detector(cfg, weights=out)
    assert det.class_names[0] == "person" and det.class_names[-1] == "toothbrush"
    assert det.category_ids[11] == 13 and det.category_ids[-1] == 90
    np.testing.assert_array_equal(
        det.model.head.ctrness.weight.numpy(), state["proposal_generator.fcos_head.ctrness.weight"]
    )
    results = det.predict([np.zeros((48, 64, 3), np.uint8)])
    assert len(results) == 1
