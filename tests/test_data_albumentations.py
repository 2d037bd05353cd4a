"""The real albumentations path (installed with the dev extras): boxes follow the pixels, and the
result depends only on the seed the loader passes (exact resume)."""

from __future__ import annotations

import numpy as np

from fcos.data.transforms import build_albumentations


def _image_with_box(h: int = 120, w: int = 160) -> tuple[np.ndarray, np.ndarray]:
    img = np.zeros((h, w, 3), np.uint8)
    img[30:70, 20:90] = 255  # box x1=20, y1=30, x2=90, y2=70
    return img, np.array([[20.0, 30.0, 90.0, 70.0]], np.float32)


def _frame(img: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(img[:, :, 0] > 127)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def test_geometric_albumentations_keep_boxes_on_the_pixels():
    album = build_albumentations([{"name": "HorizontalFlip", "p": 1.0}, {"name": "VerticalFlip", "p": 1.0}])
    img, boxes = _image_with_box()
    out, out_boxes, labels = album(img, boxes, np.array([2]), seed=7)
    # flipped both ways by hand: x -> 160 - x, y -> 120 - y
    np.testing.assert_allclose(out_boxes, [[70.0, 50.0, 140.0, 90.0]], atol=1e-4)
    np.testing.assert_allclose(out_boxes[0], _frame(out), atol=1.0)
    assert labels.tolist() == [2]


def test_random_albumentations_depend_only_on_the_seed():
    specs = [{"name": "RandomBrightnessContrast", "p": 0.5}, {"name": "Affine", "scale": [0.7, 1.3], "p": 1.0}]
    album = build_albumentations(specs)
    img, boxes = _image_with_box()
    img = img.copy()
    img[:, :, 1] = np.arange(160, dtype=np.uint8)[None, :]  # texture so that changes show
    runs = {s: [album(img, boxes, np.array([0]), seed=s) for _ in range(2)] for s in (1, 2)}
    for seed in (1, 2):
        a, b = runs[seed]
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(runs[1][0][0], runs[2][0][0])
