"""fcos.checkpoint.weights: every -w format reads through read_weights, metadata round-trips, and
load_weights reports missing / unexpected / shape-mismatched keys instead of crashing."""

from __future__ import annotations

import json
import os

import numpy as np
import paddle
import pytest
from test_safe_loading import tensors, write_torch_legacy, write_torch_zip

from fcos.checkpoint.weights import LoadReport, WeightsError, load_weights, read_weights, save_weights
from fcos.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Tiny(paddle.nn.Layer):
    """conv (4, 3, 3, 3) + BN(4) + classifier conv (num_classes, 4, 1, 1)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 3)
        self.bn = paddle.nn.BatchNorm2D(4)
        self.cls = paddle.nn.Conv2D(4, num_classes, 1)


def _numpy_state(model: paddle.nn.Layer) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


def test_save_and_read_metadata_round_trip(tmp_path):
    state = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int64)}
    meta = {"recipe": "rt_dla34", "class_names": ["a", "b"], "category_ids": [1, 3], "number_string": "123", "n": 5}
    path = str(tmp_path / "w.safetensors")
    save_weights(path, state, meta)
    got, got_meta = read_weights(path)
    assert set(got) == {"a", "b"} and got["b"].dtype == np.int64 and np.array_equal(got["a"], state["a"])
    assert got_meta["class_names"] == ["a", "b"] and got_meta["category_ids"] == [1, 3]
    assert got_meta["number_string"] == "123" and got_meta["n"] == 5 and got_meta["format"] == "fcos-weights"
    no_suffix = str(tmp_path / "weights_file")  # safetensors recognised by content
    os.replace(path, no_suffix)
    assert np.array_equal(read_weights(no_suffix)[0]["a"], state["a"])
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # atomic write leaves no temp file


@pytest.mark.parametrize("fmt", ["safetensors", "npz", "pdparams", "pth-zip", "pth-legacy"])
def test_every_weights_format_loads_into_a_model(tmp_path, fmt):
    src = Tiny()
    state = _numpy_state(src)
    path = str(tmp_path / ("w." + fmt.split("-")[0]))
    if fmt == "safetensors":
        save_weights(path, state)
    elif fmt == "npz":
        np.savez(path, __metadata__=np.array(json.dumps({"recipe": "x"})), **state)
    elif fmt == "pdparams":
        paddle.save(src.state_dict(), path)
    elif fmt == "pth-zip":
        write_torch_zip(path, tensors(state))
    else:
        write_torch_legacy(path, {"state_dict": tensors(state)})
    dst = Tiny()
    report = load_weights(dst, path, strict=True)
    assert report.ok and sorted(report.loaded) == sorted(state)
    for k, v in dst.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), state[k], err_msg=k)
    if fmt == "npz":
        assert report.metadata["recipe"] == "x"


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = str(tmp_path / "evil.npz")
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(WeightsError, match="npz with pickled objects is refused"):
        read_weights(path)


def test_fine_tuning_with_other_class_count_reports_instead_of_crashing(tmp_path):
    src = Tiny(num_classes=80)
    path = str(tmp_path / "coco.safetensors")
    save_weights(path, _numpy_state(src) | {"extra.weight": np.zeros(2, np.float32)})
    dst = Tiny(num_classes=5)
    before = dst.cls.weight.numpy().copy()
    report = load_weights(dst, path)
    assert isinstance(report, LoadReport) and not report.ok
    assert report.shape_mismatch == [("cls.weight", (80, 4, 1, 1), (5, 4, 1, 1)), ("cls.bias", (80,), (5,))]
    assert report.unexpected == ["extra.weight"] and report.missing == []
    assert "cls.weight" not in report.loaded and "conv.weight" in report.loaded
    np.testing.assert_array_equal(dst.cls.weight.numpy(), before)  # kept its init
    np.testing.assert_array_equal(dst.conv.weight.numpy(), src.conv.weight.numpy())
    text = str(report)
    assert "2 shape mismatches" in text and "cls.weight: file [80, 4, 1, 1] vs model [5, 4, 1, 1]" in text
    assert "unexpected (ignored): extra.weight" in text

    partial = {k: v for k, v in _numpy_state(src).items() if not k.startswith("bn.")}
    report = load_weights(Tiny(num_classes=80), partial)
    assert sorted(report.missing) == ["bn._mean", "bn._variance", "bn.bias", "bn.weight"]


def test_strict_load_raises_and_changes_nothing(tmp_path):
    dst = Tiny(num_classes=5)
    before = _numpy_state(dst)
    with pytest.raises(WeightsError, match="shape mismatch"):
        load_weights(dst, _numpy_state(Tiny(num_classes=80)), strict=True)
    for k, v in _numpy_state(dst).items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_prefix_adaptation_and_dtype_cast():
    src = Tiny()
    wrapped = {"model." + k: v.astype(np.float64) for k, v in _numpy_state(src).items()}
    dst = Tiny()
    report = load_weights(dst, wrapped)
    assert report.ok and "removed the key prefix 'model.'" in report.prefix_note
    assert dst.conv.weight.dtype == paddle.float32
    np.testing.assert_allclose(dst.conv.weight.numpy(), src.conv.weight.numpy())


def test_full_detector_fine_tuning_report(tmp_path):
    """A COCO (80-class) demo-sized detector loaded into a 4-class one: only the classifier differs."""
    from fcos.modeling import build_model

    cfg80 = load_config(
        os.path.join(ROOT, "configs", "demo_shapes.yml"), overrides=["model.num_classes=80", "data.class_names=[]"]
    )
    path = str(tmp_path / "coco.safetensors")
    save_weights(path, _numpy_state(build_model(cfg80)), {"class_names": [f"c{i}" for i in range(80)]})
    model = build_model(load_config(os.path.join(ROOT, "configs", "demo_shapes.yml")))
    report = load_weights(model, path)
    assert [k for k, _, _ in report.shape_mismatch] == ["head.cls_logits.weight", "head.cls_logits.bias"]
    assert not report.missing and not report.unexpected and len(report.loaded) == len(model.state_dict()) - 2


def test_trainer_checkpoint_and_errors(tmp_path):
    src = Tiny()
    ckpt = str(tmp_path / "step_10.safetensors")
    tensors_ = {"model." + k: v for k, v in _numpy_state(src).items()}
    tensors_["optim.conv.weight/velocity"] = np.zeros((4, 3, 3, 3), np.float32)
    save_weights(ckpt, tensors_, {"format": "fcos-train-checkpoint", "state": {"step": 10}})
    state, meta = read_weights(ckpt)
    assert set(state) == set(src.state_dict()) and meta["state"] == {"step": 10}
    with pytest.raises(WeightsError, match="weights file not found"):
        read_weights(str(tmp_path / "missing.pdparams"))
    with pytest.raises(WeightsError, match="is a directory"):
        read_weights(str(tmp_path))
    bad = str(tmp_path / "bad.safetensors")
    with open(bad, "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        read_weights(bad)
