"""The synthetic shapes dataset: determinism, exact boxes, content, the demo video and the tool."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np

from fcos.data import synthetic
from fcos.data.image_io import read_image
from fcos.data.synthetic import SHAPE_CLASSES, make_demo_video, make_synthetic_dataset, render_scene


def _tree_bytes(root: str) -> dict[str, bytes]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def test_same_seed_identical_bytes_different_seed_differs(tmp_path):
    a = make_synthetic_dataset(str(tmp_path / "a"), 6, 3, seed=5)
    b = make_synthetic_dataset(str(tmp_path / "b"), 6, 3, seed=5)
    c = make_synthetic_dataset(str(tmp_path / "c"), 6, 3, seed=6)
    ta, tb, tc = _tree_bytes(a["root"]), _tree_bytes(b["root"]), _tree_bytes(c["root"])
    assert len(ta) == 6 + 3 + 3  # images, two JSON files, synthetic.json
    assert ta == tb
    assert ta["train/000001.jpg"] != tc["train/000001.jpg"]
    assert ta[os.path.join("annotations", "train.json")] != tc[os.path.join("annotations", "train.json")]


def test_existing_images_do_not_change_when_the_split_grows(tmp_path):
    small = make_synthetic_dataset(str(tmp_path / "s"), 3, 1, seed=1)
    big = make_synthetic_dataset(str(tmp_path / "b"), 5, 2, seed=1)
    for name in ("000001.jpg", "000003.jpg"):
        with (
            open(os.path.join(small["train_image_dir"], name), "rb") as f1,
            open(os.path.join(big["train_image_dir"], name), "rb") as f2,
        ):
            assert f1.read() == f2.read()


def test_coco_layout_and_content(tmp_path):
    paths = make_synthetic_dataset(str(tmp_path / "d"), 60, 10, seed=0)
    with open(paths["train_ann_file"], encoding="utf-8") as f:
        coco = json.load(f)
    assert [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])] == list(SHAPE_CLASSES)
    assert {c["id"] for c in coco["categories"]} == {1, 2, 3, 4}
    assert len(coco["images"]) == 60
    assert min(a["id"] for a in coco["annotations"]) == 1  # id 0 never emitted
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    with_boxes = {a["image_id"] for a in coco["annotations"]}
    assert len(with_boxes) < 60, "some images must have no objects"
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2, 3, 4}
    widths = [max(a["bbox"][2], a["bbox"][3]) for a in coco["annotations"]]
    assert min(widths) < 32 and max(widths) > 100  # small and large objects
    img = coco["images"][0]
    arr = read_image(os.path.join(paths["train_image_dir"], img["file_name"]))
    assert arr.shape == (img["height"], img["width"], 3) == (256, 320, 3)
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 320 and y + h <= 256
        assert a["area"] == w * h


def _grey_background(rng, h, w):
    return np.full((h, w, 3), 128.0, dtype=np.float32)


def test_boxes_are_tight_around_the_drawn_pixels(monkeypatch):
    # plain background and no noise: an object pixel is any pixel that is not grey (no palette colour is grey)
    monkeypatch.setattr(synthetic, "_background", _grey_background)
    for i in range(30):
        rng = np.random.default_rng([3, i])
        img, boxes, labels = render_scene(
            rng, 96, 128, max_objects=1, empty_prob=0.0, min_size=16, max_size=60, noise=False
        )
        fg = np.any(img != 128, axis=2)
        ys, xs = np.nonzero(fg)
        assert len(boxes) == 1 and labels[0] in range(4)
        np.testing.assert_array_equal(boxes[0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_overlapping_objects_boxes_cover_and_touch_their_pixels(monkeypatch):
    monkeypatch.setattr(synthetic, "_background", _grey_background)
    for i in range(20):
        rng = np.random.default_rng([4, i])
        img, boxes, _ = render_scene(rng, 128, 160, max_objects=6, empty_prob=0.0, noise=False)
        fg = np.any(img != 128, axis=2)
        covered = np.zeros_like(fg)
        for x1, y1, x2, y2 in boxes.astype(int):
            covered[y1:y2, x1:x2] = True
            # each edge row/column of a tight box holds a pixel of some object
            assert fg[y1, x1:x2].any() and fg[y2 - 1, x1:x2].any()
            assert fg[y1:y2, x1].any() and fg[y1:y2, x2 - 1].any()
        assert not (fg & ~covered).any()


def test_demo_video_has_the_frames_and_size(tmp_path):
    path = make_demo_video(str(tmp_path / "v.mp4"), num_frames=10, size=(160, 128), fps=10, seed=0)
    cap = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 10
    assert frames[0].shape == (128, 160, 3)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 1.0  # things move


def test_demo_video_from_an_image_dir(tmp_path):
    paths = make_synthetic_dataset(str(tmp_path / "d"), 0, 3, seed=0)
    path = make_demo_video(str(tmp_path / "pan.mp4"), num_frames=6, size=(160, 128), image_dir=paths["val_image_dir"])
    cap = cv2.VideoCapture(path)
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 6


def test_tool_is_idempotent_and_force_regenerates(tmp_path, capsys):
    import tools.make_synthetic as tool

    out = str(tmp_path / "shapes")
    assert tool.main(["--output", out, "--train", "4", "--val", "2", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert "wrote 4 train + 2 val" in first
    assert tool.main(["--output", out, "--train", "4", "--val", "2", "--seed", "3"]) == 0
    assert "already exists; skipping" in capsys.readouterr().out
    assert tool.main(["--output", out, "--train", "4", "--val", "2", "--seed", "4"]) == 0
    assert "wrote" in capsys.readouterr().out  # other parameters: regenerated
    assert tool.main(["--output", out, "--train", "4", "--val", "2", "--seed", "4", "--force"]) == 0
    assert "wrote" in capsys.readouterr().out
    with open(os.path.join(out, "synthetic.json"), encoding="utf-8") as f:
        assert json.load(f)["seed"] == 4
