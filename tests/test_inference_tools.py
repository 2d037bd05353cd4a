"""tools/infer.py end to end on generated images and videos: outputs, COCO JSON, bad sources."""

from __future__ import annotations

import json
import os
import time

import cv2
import numpy as np
import pytest

import fcos
from fcos.export import make_check_images
from fcos.inference.detector import Detector
from fcos.inference.video import count_frames, make_test_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "demo_shapes.yml")


@pytest.fixture(scope="module")
def infer(load_tool):
    return load_tool("infer").main


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("imgs")
    images = make_check_images(seed=1)
    cv2.imwrite(str(d / "a.jpg"), images[0])
    os.makedirs(d / "sub")
    cv2.imwrite(str(d / "sub" / "b.png"), images[1])
    (d / "broken.jpg").write_bytes(b"not an image")
    return str(d)


def test_folder_json_txt_and_images_match_the_detector(
    demo_weights, demo_category_ids, infer, image_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    rc = infer(
        ["-c", CONFIG, "-w", demo_weights, "--source", image_dir, "--recursive", "--save-dir", str(out),
         "--save-json", str(out / "dets.json"), "--save-txt", "--threads", "1", "--quiet"]
    )  # fmt: skip
    text = capsys.readouterr()
    assert rc == 1  # broken.jpg failed, the others were processed
    assert "broken.jpg" in text.out and "not an image file" in text.out
    assert (out / "a.jpg").is_file() and (out / "sub" / "b.png").is_file()
    assert cv2.imread(str(out / "a.jpg")).shape == cv2.imread(os.path.join(image_dir, "a.jpg")).shape

    records = json.loads((out / "dets.json").read_text())
    det = Detector(fcos.load_config(CONFIG), weights=demo_weights)
    for name in ("a.jpg", "sub/b.png"):
        res = det.predict([os.path.join(image_dir, name)])[0]
        mine = [r for r in records if r["file_name"] == name]
        assert len(mine) == len(res) > 0
        assert {r["category_id"] for r in mine} <= set(demo_category_ids)
        for rec, box, score, label in zip(mine, res.boxes, res.scores, res.labels):
            x, y, w, h = rec["bbox"]
            np.testing.assert_allclose([x, y, x + w, y + h], box, atol=2e-3)
            assert rec["score"] == pytest.approx(float(score), abs=1e-5)
            assert rec["category_id"] == demo_category_ids[int(label)]
    lines = (out / "labels" / "sub" / "b.txt").read_text().splitlines()
    res_b = det.predict([os.path.join(image_dir, "sub", "b.png")])[0]
    assert len(lines) == int((res_b.scores >= 0.3).sum())  # the config's export.draw_threshold


def test_video_output_has_input_frame_count_size_and_fps(demo_weights, infer, tmp_path, capsys):
    src = make_test_video(str(tmp_path / "clip.mp4"), num_frames=11, size=(120, 88), fps=9.0)
    out = tmp_path / "out"
    rc = infer(["-c", CONFIG, "-w", demo_weights, "--source", src, "--save-dir", str(out), "--threads", "1", "--quiet",
                "--save-json", str(out / "v.json")])  # fmt: skip
    assert rc == 0, capsys.readouterr()
    result = out / "clip.mp4"
    cap = cv2.VideoCapture(str(result))
    size = (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    assert size == (120, 88) and fps == pytest.approx(9.0) and count_frames(str(result)) == 11
    names = {r["file_name"] for r in json.loads((out / "v.json").read_text())}
    assert names <= {f"clip.mp4#frame{i}" for i in range(11)} and "clip.mp4#frame10" in names


def test_damaged_video_finalizes_partial_output(demo_weights, infer, tmp_path, capsys):
    good = make_test_video(str(tmp_path / "good.avi"), num_frames=16, size=(96, 64))
    bad = tmp_path / "damaged.avi"
    data = open(good, "rb").read()
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    rc = infer(
        ["-c", CONFIG, "-w", demo_weights, "--source", str(bad), "--save-dir", str(out), "--threads", "1", "--quiet"]
    )
    text = capsys.readouterr().out
    assert rc == 1 and "damaged or truncated" in text
    written = count_frames(str(out / "damaged.avi"))
    assert 0 < written < 16 and f"processed {written} image(s)/frame(s)" in text


@pytest.mark.parametrize(
    "kind, message",
    [("missing", "no such file or directory"), ("empty", "is empty"), ("text", "cannot be opened as a video"),
     ("camera", "camera 63: no such device"), ("unknown", "unknown file type")],
)  # fmt: skip
def test_bad_sources_fail_fast_with_a_clear_message(infer, tmp_path, capsys, kind, message):
    source = {"missing": str(tmp_path / "nope.mp4"), "camera": "63", "unknown": str(tmp_path / "x.xyz")}.get(kind)
    if kind in ("empty", "text"):
        source = str(tmp_path / f"{kind}.mp4")
        open(source, "w").write("" if kind == "empty" else "hello\n" * 10)
    if kind == "unknown":
        open(source, "w").write("x")
    t0 = time.perf_counter()
    rc = infer(["-c", CONFIG, "--source", source, "--save-dir", str(tmp_path / "o"), "--quiet"])
    assert rc == 2 and message in capsys.readouterr().err
    assert time.perf_counter() - t0 < 5  # fails before any model is built
    assert not (tmp_path / "o").exists()


def test_show_without_display_says_so_and_still_saves(demo_weights, infer, image_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    out = tmp_path / "out"
    rc = infer(["-c", CONFIG, "-w", demo_weights, "--image", os.path.join(image_dir, "a.jpg"), "--show",
                "--save-dir", str(out), "--threads", "1", "--quiet"])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0 and "no display" in text and (out / "a.jpg").is_file()


def test_show_plays_the_video_in_a_window_until_esc(demo_weights, infer, tmp_path, capsys, monkeypatch):
    """With a display, --show draws every annotated frame in one window; ESC on the 4th frame stops the
    run there, and the partial output video is finalized with those 4 frames. OpenCV's GUI calls are
    replaced (this machine's OpenCV is headless)."""
    shown, keys = [], iter([-1, -1, -1, 27])
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(cv2, "namedWindow", lambda *a: None)
    monkeypatch.setattr(cv2, "destroyWindow", lambda *a: shown.append("closed"))
    monkeypatch.setattr(cv2, "imshow", lambda title, frame: shown.append((title, frame.shape)))
    monkeypatch.setattr(cv2, "waitKey", lambda ms: next(keys))
    monkeypatch.setattr(cv2, "getWindowProperty", lambda *a: 1.0)
    src = make_test_video(str(tmp_path / "clip.avi"), num_frames=10, size=(96, 64))
    out = tmp_path / "out"
    rc = infer(["-c", CONFIG, "-w", demo_weights, "--source", src, "--show", "--save-dir", str(out), "--threads", "1",
                "--quiet"])  # fmt: skip
    assert rc == 0, capsys.readouterr()
    frames = [e for e in shown if e != "closed"]
    assert len(frames) == 4 and {f[1] for f in frames} == {(64, 96, 3)} and len({f[0] for f in frames}) == 1
    assert shown[-1] == "closed"
    assert count_frames(str(out / "clip.avi")) == 4


def test_camera_streams_frames_into_camera_video(demo_weights, infer, tmp_path, capsys, monkeypatch):
    """--camera 0 end to end with a stand-in webcam: OpenCV's device 0 replaced by a generated clip (no
    camera on this machine). Streams until --max-frames and writes save_dir/camera0.mp4."""
    from fcos.inference import video

    clip = make_test_video(str(tmp_path / "webcam.avi"), num_frames=12, size=(96, 64))
    real_capture, real_exists = cv2.VideoCapture, os.path.exists
    opened = []
    monkeypatch.setattr(video.os.path, "exists", lambda p: p == "/dev/video0" or real_exists(p))
    monkeypatch.setattr(video.cv2, "VideoCapture", lambda t: opened.append(t) or real_capture(clip if t == 0 else t))
    out = tmp_path / "out"
    rc = infer(["-c", CONFIG, "-w", demo_weights, "--camera", "0", "--max-frames", "5", "--save-dir", str(out),
                "--threads", "1", "--quiet"])  # fmt: skip
    assert rc == 0, capsys.readouterr()
    assert 0 in opened
    assert count_frames(str(out / "camera0.mp4")) == 5


def test_exported_directory_works_as_weights(demo_weights, infer, image_dir, tmp_path, capsys):
    from fcos.export import export_model

    cfg = fcos.load_config(CONFIG)
    det = Detector(cfg, weights=demo_weights)
    export_dir = str(tmp_path / "export")
    export_model(det.model, cfg, export_dir, det.class_names, det.category_ids)
    rc = infer(["-w", export_dir, "--source", os.path.join(image_dir, "a.jpg"), "--no-save",
                "--save-json", str(tmp_path / "e.json"), "--threads", "1", "--quiet"])  # fmt: skip
    assert rc == 0, capsys.readouterr()
    recs = json.loads((tmp_path / "e.json").read_text())
    ref = det.predict([os.path.join(image_dir, "a.jpg")])[0]
    assert len(recs) == len(ref) and recs[0]["score"] == pytest.approx(float(ref.scores[0]), abs=1e-4)


class _Payload:
    """Unpickling this would run ``touch <marker>``: the tools must refuse it before that happens."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_weights_are_refused_with_a_clear_error(infer, image_dir, tmp_path, capsys):
    import pickle

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pdparams"
    with open(evil, "wb") as f:
        pickle.dump({"backbone.conv.weight": _Payload(str(marker))}, f)
    rc = infer(["-c", CONFIG, "-w", str(evil), "--source", os.path.join(image_dir, "a.jpg"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "evil.pdparams" in err and "system" in err
    assert not marker.exists()


def test_without_a_model_the_demo_export_is_used_or_the_error_says_how(
    demo_weights, infer, image_dir, tmp_path, capsys, monkeypatch
):
    """`python tools/infer.py --video clip.mp4` with no -c/-w: the export of `make demo` under the current
    directory (or the repository) when there is one, else an error that says what to pass."""
    from fcos.export import export_model
    from fcos.inference import default_model

    monkeypatch.setattr(default_model, "_REPO_ROOT", str(tmp_path / "repo"))  # no demo export there
    monkeypatch.chdir(tmp_path)
    image = os.path.join(image_dir, "a.jpg")
    assert infer(["--source", image, "--no-save", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no model given: pass -w EXPORT_DIR" in err and "make demo" in err and "output/demo/export" in err

    cfg = fcos.load_config(CONFIG)
    det = Detector(cfg, weights=demo_weights)
    export_model(det.model, cfg, str(tmp_path / "output" / "demo" / "export"), det.class_names, det.category_ids)
    rc = infer(["--source", image, "--no-save", "--save-json", "d.json", "--threads", "1", "--quiet"])
    assert rc == 0, capsys.readouterr()
    assert "using the demo model output/demo/export" in capsys.readouterr().out
    recs = json.loads((tmp_path / "d.json").read_text())
    assert len(recs) == len(det.predict([image])[0]) > 0
