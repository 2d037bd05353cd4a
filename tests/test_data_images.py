"""Image loading robustness: colour models, bit depths, EXIF orientation (one rule everywhere),
non-ASCII paths, and broken files reported by path and never rewritten."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from fcos.config import DatasetSplit, InputConfig
from fcos.data.dataset import DetectionDataset
from fcos.data.image_io import ImageReadError, read_image, read_image_size
from fcos.data.txt_format import txt_to_coco


def _save(img: Image.Image, path, **kw) -> str:
    img.save(str(path), **kw)
    return str(path)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    arr = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    out = read_image(_save(Image.fromarray(arr, "L"), tmp_path / "g.png"))
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], arr)


def test_bilevel_image(tmp_path):
    img = Image.new("1", (8, 6), 0)
    img.putpixel((2, 3), 1)
    out = read_image(_save(img, tmp_path / "b.png"))
    assert out.shape == (6, 8, 3) and out[3, 2].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped_and_colours_kept(tmp_path, mode):
    rgba = Image.new("RGBA", (7, 5), (200, 100, 50, 0))  # fully transparent, colour must survive
    if mode == "LA":
        img = Image.new("LA", (7, 5), (90, 10))
        expected = [90, 90, 90]
    else:
        img = rgba
        expected = [50, 100, 200]  # BGR
    out = read_image(_save(img, tmp_path / f"{mode}.png"))
    assert out.shape == (5, 7, 3)
    assert out[2, 3].tolist() == expected


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (6, 4), 1)
    img.putpalette([0, 0, 0, 10, 20, 30] + [0] * (256 * 3 - 6))
    out = read_image(_save(img, tmp_path / "p.png", transparency=0))
    assert out.shape == (4, 6, 3) and out[0, 0].tolist() == [30, 20, 10]


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits(tmp_path):
    arr = np.array([[0, 257 * 100], [65535, 257 * 7]], dtype=np.uint16)
    img = Image.fromarray(arr)  # mode I;16
    out = read_image(_save(img, tmp_path / "g16.png"))
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[:, :, 0], [[0, 100], [255, 7]])


def test_cmyk_jpeg_becomes_bgr(tmp_path):
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = read_image(_save(img, tmp_path / "cmyk.jpg", quality=95))
    assert out.shape == (16, 16, 3)
    b, g, r = out[8, 8].astype(int)
    assert r > 230 and g < 25 and b < 25


def test_tiny_image_is_fine(tmp_path):
    out = read_image(_save(Image.new("RGB", (1, 1), (1, 2, 3)), tmp_path / "t.png"))
    assert out.tolist() == [[[3, 2, 1]]]


def _exif_image(path, orientation: int) -> np.ndarray:
    """A 20x30 (w x h) RGB PNG with an EXIF orientation tag; returns the stored pixels (RGB)."""
    arr = np.zeros((30, 20, 3), np.uint8)
    arr[0:5, 0:10] = (255, 0, 0)  # a red block at the stored top-left
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(str(path), exif=exif)
    return arr


def test_exif_orientation_is_applied(tmp_path):
    stored = _exif_image(tmp_path / "o6.png", 6)  # 6: rotate 90 degrees clockwise to display
    out = read_image(str(tmp_path / "o6.png"))
    expected = np.rot90(stored, k=-1)[:, :, ::-1]  # clockwise, RGB -> BGR
    np.testing.assert_array_equal(out, expected)
    assert read_image_size(str(tmp_path / "o6.png")) == (20, 30)
    stored3 = _exif_image(tmp_path / "o3.png", 3)  # 3: rotate 180
    np.testing.assert_array_equal(read_image(str(tmp_path / "o3.png")), np.rot90(stored3, 2)[:, :, ::-1])


def test_one_exif_rule_in_conversion_training_and_inference(tmp_path):
    """The converter's sizes, the dataset's images and the inference reader all see the rotated frame."""
    from fcos.inference.sources import iter_images

    _exif_image(tmp_path / "rot.png", 6)  # displayed as 30 wide x 20 high
    (tmp_path / "classes.txt").write_text("thing\n")
    (tmp_path / "ann.txt").write_text("rot.png 25,0,30,10,0\n")  # the red block, in the displayed frame
    coco, _ = txt_to_coco(str(tmp_path / "ann.txt"), str(tmp_path), str(tmp_path / "classes.txt"))
    assert (coco["images"][0]["height"], coco["images"][0]["width"]) == (20, 30)
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(coco))
    cfg = InputConfig(test_short=20, test_max=1000, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], channel_order="BGR")
    sample = DetectionDataset(DatasetSplit(str(tmp_path), str(ann_file)), cfg, train=False)[0]
    assert sample.orig_shape == (20, 30)
    x1, y1, x2, y2 = sample.boxes[0].astype(int)
    assert (x1, y1, x2, y2) == (25, 0, 30, 10)
    assert (sample.image[2, y1:y2, x1:x2] == 255).all()  # red channel (BGR index 2) under the box
    assert sample.image[2].sum() == 255 * 50  # and nowhere else
    item = next(iter_images([str(tmp_path / "rot.png")]))
    assert item.image.shape == (20, 30, 3)
    assert (item.image[0:10, 25:30, 2] == 255).all() and item.image[10:, :, 2].max() == 0


def test_non_ascii_file_names(tmp_path):
    path = _save(Image.new("RGB", (9, 7), (10, 20, 30)), tmp_path / "图像 é ü.png")
    assert read_image(path).shape == (7, 9, 3)
    (tmp_path / "classes.txt").write_text("a\n", encoding="utf-8")
    (tmp_path / "ann.txt").write_text("图像 é ü.png 1,1,5,5,0\n", encoding="utf-8")
    coco, report = txt_to_coco(str(tmp_path / "ann.txt"), str(tmp_path), str(tmp_path / "classes.txt"))
    assert coco["images"][0]["file_name"] == "图像 é ü.png" and len(coco["annotations"]) == 1


def _broken_files(tmp_path) -> dict[str, str]:
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(str(good))
    data = good.read_bytes()
    files = {
        "truncated": tmp_path / "truncated.jpg",
        "empty": tmp_path / "empty.png",
        "text": tmp_path / "notes.jpg",
    }
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not an image\n")
    return {k: str(v) for k, v in files.items()}


@pytest.mark.parametrize("kind,reason", [("truncated", "truncated"), ("empty", "empty"), ("text", "not an image")])
def test_broken_files_raise_with_the_path_and_stay_untouched(tmp_path, kind, reason):
    path = _broken_files(tmp_path)[kind]
    before = open(path, "rb").read()
    with pytest.raises(ImageReadError) as e:
        read_image(path)
    assert str(e.value).startswith(path) and reason in str(e.value)
    assert open(path, "rb").read() == before


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_image(str(tmp_path / "nope.jpg"))
    with pytest.raises(ImageReadError, match="directory"):
        read_image(str(tmp_path))


def test_converter_skips_broken_images_and_counts_them(tmp_path):
    files = _broken_files(tmp_path)
    (tmp_path / "classes.txt").write_text("a\n")
    lines = ["good.jpg 1,1,10,10,0"] + [f"{os.path.basename(p)} 1,1,10,10,0" for p in files.values()]
    (tmp_path / "ann.txt").write_text("\n".join(lines) + "\n")
    coco, report = txt_to_coco(str(tmp_path / "ann.txt"), str(tmp_path), str(tmp_path / "classes.txt"))
    assert [i["file_name"] for i in coco["images"]] == ["good.jpg"]
    assert report.counts["skipped image (unreadable)"] == 3
    text = report.summary()
    for p in files.values():
        assert p in text
