"""Deploy predictor: export-directory discovery (Paddle 2 .pdmodel / Paddle 3 .json), runtime options,
and tools/deploy_infer.py on a video with an honest FPS report."""

from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import paddle
import pytest
import yaml

import fcos
from fcos.deploy.predictor import (
    DeployError,
    DeployPredictor,
    RuntimeOptions,
    create_paddle_predictor,
    find_model_files,
)
from fcos.export import export_model, make_check_images
from fcos.inference.synthetic_weights import make_detection_rich
from fcos.inference.video import count_frames, make_test_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "demo_shapes.yml")


def _touch(folder, *names: str) -> None:
    os.makedirs(folder, exist_ok=True)
    for name in names:
        open(os.path.join(folder, name), "wb").close()


def test_find_model_files_paddle2_paddle3_and_prefixes(tmp_path):
    p2 = tmp_path / "p2"
    _touch(p2, "model.pdmodel", "model.pdiparams", "model.pdiparams.info", "infer_cfg.yml")
    assert find_model_files(str(p2)) == (str(p2 / "model.pdmodel"), str(p2 / "model.pdiparams"))
    p3 = tmp_path / "p3"
    _touch(p3, "model.json", "model.pdiparams")
    assert find_model_files(str(p3))[0] == str(p3 / "model.json")
    both = tmp_path / "both"
    _touch(both, "model.json", "model.pdmodel", "model.pdiparams")
    assert find_model_files(str(both))[0].endswith("model.json")  # Paddle 3 program first
    legacy = tmp_path / "legacy"  # PaddleDetection-style names, and another prefix next to it
    _touch(legacy, "inference.pdmodel", "inference.pdiparams", "zz.json", "zz.pdiparams")
    assert find_model_files(str(legacy))[0].endswith("inference.pdmodel")
    assert find_model_files(str(legacy), prefix="zz")[0].endswith("zz.json")


def test_find_model_files_errors_name_the_directory(tmp_path):
    with pytest.raises(DeployError, match="export directory not found"):
        find_model_files(str(tmp_path / "absent"))
    lonely = tmp_path / "lonely"
    _touch(lonely, "model.pdmodel")
    with pytest.raises(DeployError, match=r"lonely.*found \['model.pdmodel'\] without a matching .pdiparams"):
        find_model_files(str(lonely))


@pytest.fixture(scope="module")
def export_dir(demo_export, tmp_path_factory) -> str:
    """This module's copy of the shared demo export (conftest ``demo_export``)."""
    out = str(tmp_path_factory.mktemp("deploy") / "model")
    shutil.copytree(demo_export, out)
    return out


def test_stale_model_file_in_infer_cfg_falls_back_to_the_directory(export_dir, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(export_dir, moved)
    cfg_path = moved / "infer_cfg.yml"
    data = yaml.safe_load(cfg_path.read_text())
    data["model_file"] = "model.pdmodel"  # written by a Paddle 2 export, the directory now holds model.json
    cfg_path.write_text(yaml.safe_dump(data))
    pred = DeployPredictor(str(moved), use_mkldnn=False)
    assert pred.cfg.model_file.endswith("model.json")
    assert len(pred.predict(make_check_images()[:1])[0]) > 0


def test_impossible_runtime_options_are_refused(export_dir):
    prog, params = find_model_files(export_dir)
    with pytest.raises(DeployError, match="fp16"):
        create_paddle_predictor(prog, params, RuntimeOptions(precision="fp16"))
    with pytest.raises(DeployError, match="precision must be one of"):
        create_paddle_predictor(prog, params, RuntimeOptions(precision="int3"))
    with pytest.raises(DeployError, match="oneDNN"):
        create_paddle_predictor(prog, params, RuntimeOptions(precision="bf16", use_mkldnn=False))
    if not paddle.is_compiled_with_cuda():
        with pytest.raises(DeployError, match="no CUDA"):
            create_paddle_predictor(prog, params, RuntimeOptions(device="gpu"))


def test_deploy_infer_video_reports_fps_hardware_and_size(export_dir, tmp_path, capsys, load_tool):
    tool = load_tool("deploy_infer")
    video = make_test_video(str(tmp_path / "clip.avi"), num_frames=8, size=(112, 80), fps=6.0)
    out = tmp_path / "out"
    rc = tool.main(["--model_dir", export_dir, "--video_file", video, "--output_dir", str(out), "--cpu_threads", "1",
                    "--warmup", "2", "--quiet"])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    assert count_frames(str(out / "clip.avi")) == 8
    cap = cv2.VideoCapture(str(out / "clip.avi"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(6.0)
    cap.release()
    assert "6 timed calls after 2 warm-up" in text and "FPS (drawing excluded)" in text
    assert "CPU" in text and "1 threads" in text and "short side" in text
    assert "network input of the last call 1x3x" in text


def test_deploy_infer_bad_model_dir_and_camera(tmp_path, capsys, load_tool):
    tool = load_tool("deploy_infer")
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), make_check_images()[0])
    assert tool.main(["--model_dir", str(tmp_path / "none"), "--image_file", str(img)]) == 2
    assert "infer_cfg.yml: not found" in capsys.readouterr().err
    assert tool.main(["--model_dir", str(tmp_path), "--camera", "63"]) == 2
    assert "camera 63" in capsys.readouterr().err


def test_deploy_infer_without_model_dir_uses_the_demo_export(export_dir, tmp_path, capsys, monkeypatch, load_tool):
    """No --model_dir: output/demo/export (from `make demo`) when present, else an error naming the flag."""
    import shutil

    from fcos.inference import default_model

    tool = load_tool("deploy_infer")
    monkeypatch.setattr(default_model, "_REPO_ROOT", str(tmp_path / "repo"))
    monkeypatch.chdir(tmp_path)
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), make_check_images()[0])
    assert tool.main(["--image_file", str(img)]) == 2
    assert "no model given: pass --model_dir EXPORT_DIR" in capsys.readouterr().err
    shutil.copytree(export_dir, tmp_path / "output" / "demo" / "export")
    assert tool.main(["--image_file", str(img), "--output_dir", str(tmp_path / "out"), "--cpu_threads", "1"]) == 0
    assert "using the demo model output/demo/export" in capsys.readouterr().out
    assert (tmp_path / "out" / "a.png").is_file()


def test_image_without_detections_on_onednn(export_dir, tmp_path):
    """An image whose NMS keeps nothing gives an empty result on the oneDNN predictor (Paddle 3.3's
    oneDNN kernels fail on empty tensors), and later images with detections still match dygraph."""
    cfg = fcos.load_config(CONFIG)
    paddle.seed(0)
    model = fcos.build_model(cfg)
    make_detection_rich(model, seed=1)  # the model of export_dir
    pred = DeployPredictor(export_dir, use_mkldnn=True, draw_threshold=0.0)
    textured, blank = make_check_images()[0], np.zeros((120, 150, 3), np.uint8)
    # a blank image gives no detections once the class bias is lowered enough to silence flat input
    detector = fcos.Detector(cfg, model=model)
    assert len(detector.predict([textured])[0]) > 0
    with paddle.no_grad():
        model.head.cls_logits.bias.set_value(paddle.full_like(model.head.cls_logits.bias, -30.0))
    out_silent = str(tmp_path / "silent")
    export_model(model, cfg, out_silent, cfg.data.class_names, [1, 2, 3, 4])
    silent = DeployPredictor(out_silent, use_mkldnn=True)
    assert [len(r) for r in silent.predict([blank, textured])] == [0, 0]
    first = pred.predict([textured])[0]
    assert len(first) > 0
    assert len(silent.predict([blank])[0]) == 0
    again = pred.predict([textured])[0]
    np.testing.assert_allclose(again.boxes, first.boxes, atol=1e-4)
