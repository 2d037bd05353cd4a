"""The training pipeline keeps boxes on their pixels through resize, flip and padding."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from fcos.config import DatasetSplit, InputConfig
from fcos.data.dataset import DetectionDataset
from fcos.data.loader import collate_to_dict, dict_to_batch
from fcos.data.transforms import hflip_with_boxes, resize_with_boxes, train_transform


def _drawn_box(img: np.ndarray, thresh: int = 128) -> np.ndarray:
    """Tight pixel-edge box around the bright pixels of an (H, W[, C]) image."""
    m = img if img.ndim == 2 else img.max(axis=2)
    ys, xs = np.nonzero(m > thresh)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def _canvas(h=120, w=200, box=(30, 20, 90, 70)):
    img = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 255
    return img, np.array([box], dtype=np.float32)


def test_hflip_maps_x_to_w_minus_x():
    img, boxes = _canvas()
    out, b = hflip_with_boxes(img, boxes)
    np.testing.assert_array_equal(b[0], [200 - 90, 20, 200 - 30, 70])
    np.testing.assert_array_equal(_drawn_box(out), b[0])


_RULES = [("opencv", "nearest", "round"), ("pil", "nearest", "round"), ("pil", "bilinear", "round")]
_RULES += [("torch_float", "bilinear", "floor")]


def _pixels_cfg(backend: str, interp: str, rounding: str, **kw) -> InputConfig:
    """Network input == BGR pixel values (mean 0, std 1), so drawn boxes can be read back."""
    return InputConfig(
        mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], interp=interp, resize_backend=backend, size_rounding=rounding, **kw
    )


@pytest.mark.parametrize("backend,interp,rounding", _RULES)
@pytest.mark.parametrize("short,max_size", [(60, 1000), (240, 1000), (333, 400), (97, 150)])
def test_resize_keeps_the_box_on_its_pixels(short, max_size, backend, interp, rounding):
    img, boxes = _canvas()
    out, b, (sy, sx) = resize_with_boxes(img, boxes, short, max_size, _pixels_cfg(backend, interp, rounding))
    assert out.dtype == np.float32 and out.shape[0] == 3
    assert abs(out.shape[1] - 120 * sy) < 1e-6 and abs(out.shape[2] - 200 * sx) < 1e-6
    np.testing.assert_allclose(b[0], _drawn_box(out.transpose(1, 2, 0)), atol=1.0)


@pytest.mark.parametrize("backend,interp,rounding", _RULES)
@pytest.mark.parametrize("seed", range(6))
def test_train_transform_resize_flip_alignment(seed, backend, interp, rounding):
    img, boxes = _canvas(box=(5, 50, 61, 117))
    rng = np.random.default_rng(seed)
    cfg = _pixels_cfg(backend, interp, rounding, train_shorts=[64, 100, 150], train_max=260)
    out, b, labels, (sy, sx) = train_transform(img, boxes, np.array([2]), rng, cfg, 0.5)
    assert labels.tolist() == [2]
    assert abs(out.shape[1] - 120 * sy) < 1e-6 and abs(out.shape[2] - 200 * sx) < 1e-6
    np.testing.assert_allclose(b[0], _drawn_box(out.transpose(1, 2, 0)), atol=1.0)


def test_dataset_and_padding_keep_boxes_aligned(tmp_path):
    """Through the real dataset (file -> read -> resize -> flip -> normalise) and the padded batch."""
    h, w = 90, 150
    rects = [(10, 10, 40, 50), (100, 30, 149, 89)]
    entries, anns = [], []
    for i, (x1, y1, x2, y2) in enumerate(rects, start=1):
        img = np.zeros((h + 10 * i, w, 3), np.uint8)  # two sizes so the batch needs padding
        img[y1:y2, x1:x2] = 255
        name = f"im{i}.png"
        cv2.imwrite(str(tmp_path / name), img)
        entries.append({"id": i, "file_name": name, "height": h + 10 * i, "width": w})
        anns.append({"id": i, "image_id": i, "category_id": 7, "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": entries, "annotations": anns, "categories": [{"id": 7, "name": "box"}]}))
    cfg = InputConfig(
        mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], train_shorts=[64, 77, 128], train_max=200, interp="nearest"
    )
    ds = DetectionDataset(DatasetSplit(str(tmp_path), str(ann)), cfg, train=True, flip_prob=0.5)
    flips = set()
    for seed in range(8):
        samples = [ds[(0, seed)], ds[(1, seed + 100)]]
        batch = dict_to_batch(collate_to_dict(samples, size_divisor=32))
        images = batch.images.numpy()
        assert images.shape[2] % 32 == 0 and images.shape[3] % 32 == 0
        for k in range(2):
            box = batch.targets[k]["boxes"].numpy()[0]
            drawn = _drawn_box(images[k].transpose(1, 2, 0))
            np.testing.assert_allclose(box, drawn, atol=1.0)
            hh, ww = batch.im_shape.numpy()[k]
            assert not (images[k][:, int(hh) :, :] != 0).any() and not (images[k][:, :, int(ww) :] != 0).any()
            flips.add(bool(box[0] > ww / 2))
        assert batch.targets[0]["labels"].numpy().tolist() == [0]  # category 7 -> contiguous label 0
    assert flips == {True, False}  # both flipped and unflipped samples were checked


def test_same_key_same_sample(tmp_path):
    from fcos.data.synthetic import make_synthetic_dataset

    p = make_synthetic_dataset(str(tmp_path / "d"), 2, 0, seed=0)
    ds = DetectionDataset(DatasetSplit(p["train_image_dir"], p["train_ann_file"]), InputConfig(), train=True)
    a, b = ds[(1, 42)], ds[(1, 42)]
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert a.path == os.path.join(p["train_image_dir"], "000002.jpg")
    others = [ds[(1, s)].image for s in range(43, 48)]
    assert any(o.shape != a.image.shape or not np.array_equal(o, a.image) for o in others)


def test_albumentations_missing_package_or_bad_spec_is_a_clear_error(monkeypatch):
    import sys
    import types

    from fcos.data.transforms import build_albumentations

    assert build_albumentations([]) is None  # nothing configured: albumentations is never imported
    monkeypatch.setitem(sys.modules, "albumentations", None)  # simulate "not installed"
    with pytest.raises(ImportError, match="pip install albumentations"):
        build_albumentations([{"name": "Blur"}])
    fake = types.ModuleType("albumentations")
    fake.Compose = lambda transforms, bbox_params: transforms
    fake.BboxParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "albumentations", fake)
    with pytest.raises(ValueError, match=r"data.albumentations\[0\].*'NoSuchTransform'"):
        build_albumentations([{"name": "NoSuchTransform"}])
    with pytest.raises(ValueError, match=r"data.albumentations\[0\] must be a mapping with a 'name'"):
        build_albumentations([{"p": 0.5}])
