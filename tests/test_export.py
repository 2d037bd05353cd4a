"""tools/export.py: jit.save with dynamic shapes and NMS in the graph, reload equality with dygraph,
editable infer_cfg.yml, and the optional ONNX export."""

from __future__ import annotations

import os
import shutil

import numpy as np
import paddle
import pytest
import yaml

import fcos
from fcos.checkpoint.weights import save_weights
from fcos.data.preprocess import preprocess
from fcos.deploy.predictor import DeployError, DeployPredictor, load_infer_cfg
from fcos.export import check_export, check_onnx, make_check_images
from fcos.inference.detector import Detector
from fcos.inference.synthetic_weights import make_detection_rich
from fcos.utils.detections import drops_empty_boxes, split_detections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "demo_shapes.yml")
CATEGORY_IDS = [2, 4, 6, 8]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, load_tool):
    """(detector, export dir, tool output) from running tools/export.py once on detection-rich weights."""
    cfg = fcos.load_config(CONFIG)
    paddle.seed(0)
    model = fcos.build_model(cfg)
    make_detection_rich(model, seed=3)
    base = tmp_path_factory.mktemp("export")
    weights = str(base / "w.safetensors")
    save_weights(weights, model.state_dict(), {"class_names": cfg.data.class_names, "category_ids": CATEGORY_IDS})
    out = str(base / "model")
    rc = load_tool("export").main(["-c", CONFIG, "-w", weights, "--output", out])
    assert rc == 0  # the tool's own reload check passed (native and oneDNN runtimes)
    return Detector(cfg, weights=weights), out


def _dygraph(det: Detector, images, short: int, max_size: int):
    batch = preprocess(images, det.cfg.input, short=short, max_size=max_size)
    with paddle.no_grad():
        bboxes, bbox_num = det.model(
            paddle.to_tensor(batch.images), paddle.to_tensor(batch.im_shape), paddle.to_tensor(batch.scale_factor)
        )
    return batch, bboxes.numpy(), bbox_num.numpy()


def test_export_directory_and_infer_cfg(exported):
    det, out = exported
    assert {"model.json", "model.pdiparams", "infer_cfg.yml"} <= set(os.listdir(out))
    data = yaml.safe_load(open(os.path.join(out, "infer_cfg.yml")))
    assert data["paddle_version"] == paddle.__version__
    assert data["class_names"] == ["circle", "square", "triangle", "star"]
    assert data["category_ids"] == CATEGORY_IDS
    assert data["preprocess"]["target_size"] == det.cfg.input.test_short
    assert data["preprocess"]["mean"] == pytest.approx(det.cfg.input.mean)
    assert data["runtime"]["use_mkldnn"] is True and data["runtime"]["precision"] == "fp32"
    assert data["draw_threshold"] == pytest.approx(det.cfg.export.draw_threshold)


@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("short, max_size", [(192, 256), (157, 203)])  # 157x203 -> input not a multiple of 32
def test_exported_graph_equals_dygraph(exported, batch_size, short, max_size):
    det, out = exported
    images = make_check_images(seed=5)[:batch_size]  # 240x320 and 301x437 originals
    batch, ref_rows, ref_num = _dygraph(det, images, short, max_size)
    pred = DeployPredictor(out, use_mkldnn=False)
    rows, num = pred._pick_outputs(pred.run_arrays(
        {"image": batch.images, "im_shape": batch.im_shape, "scale_factor": batch.scale_factor}
    ))  # fmt: skip
    np.testing.assert_array_equal(num, ref_num)
    assert ref_num.sum() > 20 * batch_size  # a real comparison, not of empty sets
    np.testing.assert_array_equal(rows[:, 0], ref_rows[:, 0])  # labels, in the same order
    # fp32 noise between Paddle Inference's native kernels and dygraph's oneDNN convolutions: ~1e-6 relative
    np.testing.assert_allclose(rows[:, 1:], ref_rows[:, 1:], rtol=1e-5, atol=1e-4)


def test_check_export_compares_real_detections_and_can_fail(exported):
    det, out = exported
    good = check_export(det.model, det.cfg, out, runtime={"use_mkldnn": False})
    assert good.passed and good.compared > 100
    assert len([line for line in good.lines if "batch 2" in line]) == 2
    other = fcos.build_model(det.cfg)
    make_detection_rich(other, seed=99)  # different head weights: the export no longer matches
    bad = check_export(other, det.cfg, out, runtime={"use_mkldnn": False})
    assert not bad.passed and "MISMATCH" in str(bad)


def test_infer_cfg_edits_take_effect_without_re_export(exported, tmp_path, load_tool):
    det, out = exported
    edited = tmp_path / "edited"
    edited.mkdir()
    for name in ("model.json", "model.pdiparams"):
        shutil.copy(os.path.join(out, name), edited / name)
    data = yaml.safe_load(open(os.path.join(out, "infer_cfg.yml")))
    data["draw_threshold"] = 0.37
    data["preprocess"]["target_size"] = 128
    data["preprocess"]["max_size"] = 160
    data["runtime"]["use_mkldnn"] = False
    (edited / "infer_cfg.yml").write_text(yaml.safe_dump(data))

    pred = DeployPredictor(str(edited))
    assert pred.draw_threshold == pytest.approx(0.37) and pred.engine().endswith("(no oneDNN)")
    images = make_check_images(seed=2)[:1]  # 240 x 320
    got = pred.predict(images)[0]
    assert pred.last_input_shape == (1, 3, 128, 160)  # 240x320 -> 120x160 -> padded to /32
    _, ref_rows, _ = _dygraph(det, images, 128, 160)
    drop_empty = drops_empty_boxes(det.cfg.model.postprocess.box_rule)
    ref = split_detections(ref_rows, np.array([len(ref_rows)]), drop_empty=drop_empty)[0]
    np.testing.assert_allclose(got.boxes, ref["boxes"], atol=1e-3)

    out_dir = tmp_path / "drawn"
    rc = load_tool("deploy_infer").main(["--model_dir", str(edited), "--image_file", _save(images[0], tmp_path),
                                "--output_dir", str(out_dir), "--save_txt", "--quiet"])  # fmt: skip
    assert rc == 0
    lines = (out_dir / "labels" / "img.txt").read_text().splitlines()
    assert len(lines) == int((got.scores >= 0.37).sum()) and all(float(x.split()[1]) >= 0.37 for x in lines)


def _save(image: np.ndarray, folder) -> str:
    import cv2

    path = str(folder / "img.png")
    cv2.imwrite(path, image)
    return path


def test_load_infer_cfg_reports_bad_keys(exported, tmp_path):
    _, out = exported
    data = yaml.safe_load(open(os.path.join(out, "infer_cfg.yml")))
    data["preprocess"]["target_size"] = "big"
    d = tmp_path / "bad"
    d.mkdir()
    for name in ("model.json", "model.pdiparams"):
        (d / name).write_bytes(b"")
    (d / "infer_cfg.yml").write_text(yaml.safe_dump(data))
    with pytest.raises(DeployError, match=r"infer_cfg.yml preprocess: key 'target_size' must be int"):
        load_infer_cfg(str(d))
    data["preprocess"]["target_size"] = 256
    data["runtime"]["use_mkdnn"] = False  # typo
    (d / "infer_cfg.yml").write_text(yaml.safe_dump(data))
    with pytest.raises(DeployError, match=r"runtime: unknown key 'use_mkdnn' \(did you mean 'use_mkldnn'\?\)"):
        load_infer_cfg(str(d))


def test_onnx_export_runs_and_matches_the_network(exported, tmp_path):
    # paddle2onnx and onnxruntime are in the dev extra (make install), so this runs in CI.
    import onnxruntime as ort

    from fcos.deploy.onnx_predictor import OnnxPredictor
    from fcos.export import export_model, export_onnx

    det, out = exported
    # The network alone (no NMS): ONNX Runtime reproduces Paddle's raw outputs.
    head_dir = str(tmp_path / "head")
    export_model(det.model, det.cfg, head_dir, det.class_names, det.category_ids, with_nms=False)
    onnx_head = export_onnx(head_dir, opset=16)
    batch = preprocess(make_check_images(seed=4)[:2], det.cfg.input)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(onnx_head, opts, providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": batch.images})
    with paddle.no_grad():
        cls, reg, ctr = det.model.forward_head(paddle.to_tensor(batch.images))
    for g, r in zip(got, cls + reg + ctr):
        np.testing.assert_allclose(g, r.numpy(), atol=1e-4)  # fails without the GroupNorm epsilon fix-up
    # The full graph (NMS inside): same detections as Paddle Inference, batch 1 and 2.
    onnx_full = export_onnx(out, str(tmp_path / "full.onnx"))
    results = OnnxPredictor(out, onnx_file=onnx_full).predict(make_check_images(seed=4)[:2])
    assert len(results) == 2 and all(len(r) > 20 for r in results)  # fails without the NMS fix-up
    check = check_onnx(out, onnx_full, images=make_check_images(seed=4), min_recall=1.0)
    assert check.passed and check.compared > 100, str(check)
