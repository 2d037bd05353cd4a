"""int8 post-training quantization (tools/quantize.py), the OpenVINO backend and the backend choice:
the tiny demo model quantized on a few generated images runs through deploy_infer and eval --model_dir,
reproduces fp32 detections on easy images, and bad calibration input fails with a clear message and
leaves nothing behind. openvino, nncf, onnxruntime and paddle2onnx are in the dev extra (make install)."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import onnx
import pytest
import yaml

from fcos.deploy import predictor as predictor_module
from fcos.deploy.factory import create_predictor
from fcos.deploy.openvino_predictor import read_openvino_model
from fcos.deploy.precision_match import precision_match
from fcos.deploy.predictor import DeployError, DeployPredictor
from fcos.deploy.quantize import QuantizeError, downstream, final_convs, quantize_export
from fcos.export import compare_detections, make_check_images

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo_shapes.yml")


@pytest.fixture(scope="module")
def export_dir(demo_export_onnx) -> str:
    """The session's demo export with model.onnx (conftest ``demo_export_onnx``); read-only here."""
    return demo_export_onnx


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("calib")
    for seed in (0, 1):
        for i, img in enumerate(make_check_images(seed=seed)):
            cv2.imwrite(str(d / f"{seed}_{i}.png"), img)
    return str(d)


@pytest.fixture(scope="module")
def int8_dirs(export_dir, calib_dir, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("int8")
    return {
        be: quantize_export(export_dir, calib_dir, str(root / be), backend=be, progress=False).output
        for be in ("openvino", "onnxruntime")
    }


def test_final_convs_and_downstream_on_a_hand_made_graph():
    # conv1 -> relu -> conv2 -> add <- conv3 ; add -> nms ; conv1 -> conv3 (conv2, conv3 are final)
    nodes = [
        ("conv1", "conv", ["relu", "conv3"]),
        ("relu", "", ["conv2"]),
        ("conv2", "conv", ["add"]),
        ("conv3", "conv", ["add"]),
        ("points", "", ["add"]),
        ("add", "", ["nms"]),
        ("nms", "", []),
    ]
    assert final_convs(nodes) == ["conv2", "conv3"]
    assert downstream(nodes, ["conv2", "conv3"]) == ["conv2", "conv3", "add", "nms"]


def test_openvino_fp32_reproduces_paddle_inference(export_dir):
    paddle_pred = DeployPredictor(export_dir, use_mkldnn=False)
    ov_pred = create_predictor(export_dir, backend="openvino", cpu_threads=1)
    assert ov_pred.engine() == "OpenVINO CPU fp32"
    images = make_check_images(seed=5)
    compared = 0
    for batch in (images[:1], images[1:]):  # batch 1 and a padded batch of 2
        for ref, got in zip(paddle_pred.predict(batch), ov_pred.predict(batch)):
            ok, stats = compare_detections(ref, got, 100, 0.05, 2e-3, 0.5, iou_thresh=0.9, min_recall=0.98)
            assert ok, stats
            compared += stats.num_ref
    assert compared > 50


def test_int8_directories_say_precision_and_backend(int8_dirs):
    for backend, d in int8_dirs.items():
        with open(os.path.join(d, "infer_cfg.yml"), encoding="utf-8") as f:
            data = yaml.safe_load(f)
        assert data["runtime"]["backend"] == backend and data["runtime"]["precision"] == "int8"
        assert data["quantization"]["calibration_images"] == 6
        assert os.path.isfile(os.path.join(d, data["model_file"]))
        assert not os.path.exists(os.path.join(d, "model.pdiparams"))
        pred = create_predictor(d, cpu_threads=1)
        assert pred.engine().endswith("int8")
        with pytest.raises(DeployError, match="int8 model for"):
            create_predictor(d, backend="paddle")
        auto = create_predictor(d, backend="auto", cpu_threads=1)  # its own engine, nothing timed
        assert type(auto) is type(pred) and auto.timer.calls == 0
        assert "the only engine that can run this export" in auto.notes[-1]
    # the OpenVINO int8 model really holds int8 FakeQuantize nodes, but not on the final predictors
    model = read_openvino_model(os.path.join(int8_dirs["openvino"], "model.xml"))
    types = [op.get_type_name() for op in model.get_ordered_ops()]
    assert types.count("FakeQuantize") >= 20
    # ONNX Runtime's: BatchNorm folded into the convolutions before quantization (else each quantized
    # Conv keeps an fp32 BatchNorm behind it and nothing fuses), and no pre-processed model left over
    graph = onnx.load(os.path.join(int8_dirs["onnxruntime"], "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert "BatchNormalization" not in ops and ops.count("QuantizeLinear") >= 20
    assert sorted(os.listdir(int8_dirs["onnxruntime"])) == ["infer_cfg.yml", "model.onnx"]


def test_int8_reproduces_fp32_detections_on_easy_images(export_dir, int8_dirs):
    """Images the calibration never saw; the confident fp32 detections (score >= 0.3) must come back."""
    images = make_check_images(seed=7)
    ref_pred = DeployPredictor(export_dir, use_mkldnn=False)
    ref = [ref_pred.predict([img])[0] for img in images]
    for backend, d in int8_dirs.items():
        pred = create_predictor(d, cpu_threads=1)
        got = [pred.predict([img])[0] for img in images]
        (row,) = precision_match(ref, got, [0.3], iou_thresh=0.7)
        assert row.total >= 5, row
        assert row.rate >= 0.8, (backend, row)
        assert row.max_score_diff < 0.1, (backend, row)


def test_cpu_feature_checks_read_the_flags(monkeypatch):
    for flags, bf16, amx in [(set(), False, False), ({"avx512_bf16"}, True, False), ({"amx_bf16", "avx2"}, True, True)]:
        monkeypatch.setattr(predictor_module, "cpu_flags", lambda flags=flags: flags)
        assert (predictor_module.cpu_supports_bf16(), predictor_module.cpu_has_amx()) == (bf16, amx), flags


def test_quantize_tool_then_deploy_infer_and_eval_model_dir(
    export_dir, calib_dir, tmp_path, load_tool, capsys, monkeypatch
):
    from fcos.data.synthetic import make_synthetic_dataset

    out = tmp_path / "int8"
    monkeypatch.setattr(predictor_module, "cpu_has_amx", lambda: True)  # the tool then points to bf16
    rc = load_tool("quantize").main(
        ["-w", export_dir, "--calib-images", calib_dir, "--output", str(out), "--num-images", "3", "--quiet"]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "calibrated on 3 image(s)" in text and "int8 vs fp32" in text and "| 0.3 |" in text
    assert "this CPU has AMX" in text and f"--model_dir {export_dir} --backend openvino --bf16" in text
    rc = load_tool("deploy_infer").main(
        ["--model_dir", str(out), "--image_dir", calib_dir, "--output_dir", str(tmp_path / "vis"), "--quiet",
         "--cpu_threads", "1"]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "OpenVINO CPU int8" in text and len(os.listdir(tmp_path / "vis")) >= 6
    rc = load_tool("infer").main(["-w", str(out), "--source", calib_dir, "--no-save", "--quiet", "--threads", "1"])
    text = capsys.readouterr().out
    assert rc == 0 and "OpenVINO CPU int8" in text, text
    data = make_synthetic_dataset(str(tmp_path / "shapes"), 0, 4, seed=3)
    rc = load_tool("eval").main(
        ["-c", CONFIG, "--model_dir", str(out), "--output", str(tmp_path / "ev"), "--threads", "1",
         "-o", f"data.val.image_dir={data['val_image_dir']}", f"data.val.ann_file={data['val_ann_file']}"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    with open(tmp_path / "ev" / "metrics.json", encoding="utf-8") as f:
        metrics = json.load(f)
    assert metrics["num_images"] == 4 and "OpenVINO CPU int8" in metrics["engine"]


def _leftovers(parent) -> list[str]:
    return sorted(os.listdir(parent))


@pytest.mark.parametrize("case", ["empty", "unreadable", "missing", "not_export"])
def test_bad_calibration_input_fails_clearly_and_writes_nothing(case, export_dir, tmp_path, load_tool, capsys):
    calib = tmp_path / "calib"
    calib.mkdir()
    model_dir = export_dir
    if case == "unreadable":
        (calib / "a.jpg").write_bytes(b"not a jpeg")
        (calib / "b.png").write_bytes(b"")
        expected = "none of the calibration images can be read"
    elif case == "empty":
        (calib / "notes.txt").write_text("no images here")
        expected = "no calibration images"
    elif case == "missing":
        calib = tmp_path / "absent"
        expected = "calibration image folder not found"
    else:
        cv2.imwrite(str(calib / "a.png"), np.zeros((64, 64, 3), np.uint8))
        model_dir = str(tmp_path / "calib")  # a folder of images, not an export
        expected = "is not a usable export directory.*infer_cfg.yml: not found"
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    before = _leftovers(out_parent)
    rc = load_tool("quantize").main(
        ["-w", model_dir, "--calib-images", str(calib), "--output", str(out_parent / "int8"), "--quiet"]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and __import__("re").search(expected, err), err
    assert _leftovers(out_parent) == before  # no output directory, no temporary directory


def test_failure_during_quantization_leaves_no_partial_output(export_dir, calib_dir, tmp_path, monkeypatch):
    import fcos.deploy.quantize as q

    def broken(*args, **kwargs):
        raise RuntimeError("calibration crashed")

    monkeypatch.setattr(q, "_match_on", broken)  # after the model and infer_cfg.yml were written
    with pytest.raises(RuntimeError, match="calibration crashed"):
        quantize_export(export_dir, calib_dir, str(tmp_path / "int8"), backend="onnxruntime", progress=False)
    assert os.listdir(tmp_path) == []


def test_quantize_refuses_a_non_empty_output_and_an_int8_source(export_dir, calib_dir, int8_dirs, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(QuantizeError, match="not empty.*--overwrite"):
        quantize_export(export_dir, calib_dir, str(out), progress=False)
    assert os.listdir(out) == ["keep.txt"]
    with pytest.raises(QuantizeError, match="already an int8 model"):
        quantize_export(int8_dirs["onnxruntime"], calib_dir, str(tmp_path / "x"), progress=False)
