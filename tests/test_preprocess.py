import numpy as np
import pytest

from fcos.config import InputConfig
from fcos.data.preprocess import normalize_image, pad_batch, preprocess, resized_shape


def test_resized_shape_follows_detectron2_rule():
    # 480x640 at 512/736: scale 512/480 -> 512 x 682.67 -> int(x + 0.5) = 683
    assert resized_shape(480, 640, 512, 736) == (512, 683)
    # a wide image hits the max side: 100x1000 -> 512x5120 -> capped to 73.6 x 736
    assert resized_shape(100, 1000, 512, 736) == (74, 736)
    # portrait
    assert resized_shape(640, 480, 800, 1333) == (1067, 800)
    with pytest.raises(ValueError):
        resized_shape(0, 10, 512, 736)


def test_normalize_channel_order_and_unit_scale():
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30  # B, G, R
    bgr = normalize_image(img, InputConfig(channel_order="BGR", mean=[1, 2, 3], std=[1, 2, 3]))
    assert bgr.shape == (3, 2, 3)
    np.testing.assert_allclose(bgr[:, 0, 0], [9, 9, 9])
    rgb = normalize_image(img, InputConfig(channel_order="RGB", to_unit=True, mean=[0, 0, 0], std=[0.5, 1, 1]))
    np.testing.assert_allclose(rgb[:, 0, 0], [30 / 255 / 0.5, 20 / 255, 10 / 255], rtol=1e-6)


def test_pad_batch_to_divisor():
    a = np.ones((3, 5, 7), np.float32)
    b = np.ones((3, 9, 3), np.float32)
    out = pad_batch([a, b], 4)
    assert out.shape == (2, 3, 12, 8)
    assert out[0, :, :5, :7].min() == 1 and out[0, :, 5:, :].max() == 0 and out[0, :, :, 7:].max() == 0


def test_preprocess_batch_metadata():
    imgs = [np.full((480, 640, 3), 128, np.uint8), np.full((100, 150, 3), 7, np.uint8)]
    cfg = InputConfig(test_short=256, test_max=320, size_divisor=32)
    b = preprocess(imgs, cfg)
    assert b.images.shape[0] == 2 and b.images.shape[2] % 32 == 0 and b.images.shape[3] % 32 == 0
    np.testing.assert_allclose(b.im_shape[0], [240, 320])
    np.testing.assert_allclose(b.scale_factor[0], [0.5, 0.5])
    np.testing.assert_allclose(b.im_shape[1], [213, 320])
    assert b.orig_shape.tolist() == [[480, 640], [100, 150]]
    with pytest.raises(ValueError, match="BGR uint8"):
        preprocess([np.zeros((4, 4), np.uint8)], cfg)
