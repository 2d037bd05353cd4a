"""Several images in flight (``runtime.streams`` > 1 on the OpenVINO backend): ``predict_stream`` returns
the same detections, in order, as one image after the other; folders, videos and ``eval --model_dir``
go through it; other engines refuse the option with a clear message."""

from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest
import yaml

from fcos.deploy.factory import create_predictor
from fcos.deploy.predictor import DeployError, load_infer_cfg
from fcos.export import make_check_images
from fcos.inference.video import count_frames, make_test_video


@pytest.fixture(scope="module")
def export_dir(demo_export_onnx) -> str:
    """The session's demo export with model.onnx (conftest ``demo_export_onnx``); read-only here."""
    return demo_export_onnx


def _same(a, b) -> None:
    assert a.path == b.path
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_predict_stream_keeps_order_and_equals_one_by_one(export_dir):
    images = make_check_images(seed=1) + make_check_images(seed=2)
    one = create_predictor(export_dir, backend="openvino", cpu_threads=2)
    two = create_predictor(export_dir, backend="openvino", cpu_threads=2, streams=2)
    assert len(two.requests) == 2 and two.compiled.get_property("NUM_STREAMS") == 2
    jobs = [([img], [f"img{i}"], i) for i, img in enumerate(images)]
    jobs.insert(2, ([], None, "empty"))  # a chunk whose images were all unreadable
    jobs += [(images[:2], ["a", "b"], "pair"), (images[:3], ["a", "b", "c"], "three")]  # 3 > 2 streams
    got = list(two.predict_stream(jobs))
    assert [tag for tag, _ in got] == [tag for _, _, tag in jobs]
    by_tag = dict(got)
    assert by_tag["empty"] == []
    assert sum(len(r.boxes) for _, rs in got for r in rs) > 20
    for i, img in enumerate(images):
        _same(one.predict([img], paths=[f"img{i}"])[0], by_tag[i][0])
    for tag, n in (("pair", 2), ("three", 3)):
        ref = one.predict(images[:n], paths=["a", "b", "c"][:n])
        assert len(by_tag[tag]) == n
        for r, g in zip(ref, by_tag[tag]):
            _same(r, g)
    assert two.timer.images == sum(len(j[0]) for j in jobs)  # every image timed once
    # ending with images still in flight on both streams: drained in order
    tail = list(two.predict_stream([([img], [f"img{i}"], i) for i, img in enumerate(images)]))
    assert [tag for tag, _ in tail] == list(range(len(images)))
    for tag, (res,) in tail:
        _same(by_tag[tag][0], res)
    # stopping early leaves no request running: the predictor is usable at once
    stream = two.predict_stream(jobs)
    next(stream)
    stream.close()
    _same(one.predict([images[0]])[0], two.predict([images[0]])[0])


def test_deploy_infer_folder_and_video_with_two_streams(export_dir, tmp_path, capsys, load_tool):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(make_check_images(seed=4) + make_check_images(seed=5)):
        cv2.imwrite(str(folder / f"{i}.png"), img)
    records = {}
    for streams in ("1", "2"):
        js = tmp_path / f"s{streams}.json"
        rc = load_tool("deploy_infer").main(
            ["--model_dir", export_dir, "--image_dir", str(folder), "--backend", "openvino", "--streams", streams,
             "--output_dir", str(tmp_path / f"out{streams}"), "--save_json", str(js), "--quiet"]
        )  # fmt: skip
        text = capsys.readouterr().out
        assert rc == 0, text
        assert "throughput: " in text and "images/s by the wall clock (6 in" in text
        with open(js, encoding="utf-8") as f:
            records[streams] = json.load(f)
    assert ("images in flight" in text) and len(os.listdir(tmp_path / "out2")) == 6
    assert len(records["1"]) > 20 and len(records["1"]) == len(records["2"])
    for a, b in zip(records["1"], records["2"]):
        assert (a["file_name"], a["category_id"]) == (b["file_name"], b["category_id"])
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-2) and a["score"] == pytest.approx(b["score"], abs=1e-4)

    video = make_test_video(str(tmp_path / "clip.avi"), num_frames=7, size=(112, 80), fps=6.0)
    for max_frames, frames in (("0", 7), ("5", 5)):
        out = tmp_path / f"video{max_frames}"
        rc = load_tool("deploy_infer").main(
            ["--model_dir", export_dir, "--video_file", video, "--backend", "openvino", "--streams", "3",
             "--output_dir", str(out), "--max_frames", max_frames, "--quiet"]
        )  # fmt: skip
        text = capsys.readouterr().out
        assert rc == 0, text
        assert count_frames(str(out / "clip.avi")) == frames and f"processed {frames} image(s)/frame(s)" in text


def test_eval_model_dir_with_two_streams_equals_one(export_dir, tmp_path):
    import fcos
    from fcos.data.synthetic import make_synthetic_dataset
    from fcos.deploy.evaluate import evaluate_export

    paths = make_synthetic_dataset(str(tmp_path / "shapes"), 0, 4, seed=3)
    cfg = fcos.load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "demo_shapes.yml"))
    cfg.data.val.image_dir, cfg.data.val.ann_file = paths["val_image_dir"], paths["val_ann_file"]
    d2 = str(tmp_path / "two")
    shutil.copytree(export_dir, d2)
    with open(os.path.join(d2, "infer_cfg.yml"), encoding="utf-8") as f:
        data = yaml.safe_load(f)
    data["runtime"]["streams"] = 2
    with open(os.path.join(d2, "infer_cfg.yml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f)
    one = evaluate_export(cfg, export_dir, str(tmp_path / "e1"), backend="openvino", progress=False)
    two = evaluate_export(cfg, d2, str(tmp_path / "e2"), backend="openvino", progress=False)
    assert two.metrics == pytest.approx(one.metrics, abs=1e-4)
    with open(two.metrics_path, encoding="utf-8") as f:
        assert json.load(f)["num_images"] == 4


def test_streams_on_other_engines_and_bad_values_are_refused(export_dir, tmp_path, load_tool, capsys):
    for backend in ("paddle", "onnxruntime"):
        with pytest.raises(DeployError, match="openvino backend only"):
            create_predictor(export_dir, backend=backend, streams=2)
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), make_check_images()[0])
    rc = load_tool("deploy_infer").main(["--model_dir", export_dir, "--image_file", str(img), "--streams", "2"])
    assert rc == 2 and "runtime.streams 2: several images in flight run on the openvino backend only" in (
        capsys.readouterr().err
    )
    d = str(tmp_path / "m")
    shutil.copytree(export_dir, d)
    path = os.path.join(d, "infer_cfg.yml")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    data["runtime"]["streams"] = 0
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f)
    with pytest.raises(DeployError, match=r"infer_cfg.yml runtime: key 'streams' must be >= 1, got 0"):
        load_infer_cfg(d)
