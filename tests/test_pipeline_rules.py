"""Per-recipe pipeline rules (input.resize_backend, input.size_rounding, model.postprocess.box_rule)
on hand-computed cases. The raw-photo comparisons with the reference code itself are in
tests/reference (make test-reference)."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import yaml

from fcos.config import ConfigError, InputConfig, PostprocessConfig, load_config
from fcos.data.preprocess import prepare_image, resize_to, resized_shape
from fcos.deploy.predictor import DeployError, load_infer_cfg
from fcos.modeling.points import compute_points
from fcos.modeling.postprocess import postprocess_detections
from fcos.utils.detections import drops_empty_boxes, split_detections

# ------------------------------------------------------------------------------------------
# Resized size
# ------------------------------------------------------------------------------------------


def test_round_vs_floor_sizes():
    # 300x451 at 800/1333: 451 * 800 / 300 = 1202.67 -> detectron2 int(x + 0.5) = 1203, torchvision floor 1202
    assert resized_shape(300, 451, 800, 1333, "round") == (800, 1203)
    assert resized_shape(300, 451, 800, 1333, "floor") == (800, 1202)
    # long side capped: 100x1000 at 512/736 -> scale 0.736: 73.6 x 736 -> round 74, floor 73
    assert resized_shape(100, 1000, 512, 736, "round") == (74, 736)
    assert resized_shape(100, 1000, 512, 736, "floor") == (73, 736)
    # torchvision multiplies in double precision: 3 * (800 / 3) == 800.0, but 97 * (800 / 97) = 799.9999...
    # so a 97-pixel short side becomes 799, not 800
    assert 3 * (800 / 3) == 800 and 97 * (800 / 97) < 800
    assert resized_shape(97, 120, 800, 1333, "floor") == (799, 989)  # 120 * 8.247 = 989.69
    assert resized_shape(97, 120, 800, 1333, "round") == (800, 990)
    with pytest.raises(ValueError, match="size rounding"):
        resized_shape(10, 10, 8, 8, "ceil")


# ------------------------------------------------------------------------------------------
# Resize backends
# ------------------------------------------------------------------------------------------


def _column_image() -> np.ndarray:
    """2 x 8 uint8 image (3 channels), column 1 at 255, the rest 0."""
    img = np.zeros((2, 8, 3), np.uint8)
    img[:, 1] = 255
    return img


def test_pil_widens_its_filter_when_shrinking():
    # Pillow bilinear at 2x shrink: a triangle filter of support 2 source pixels around each output centre
    # (2 * dst + 1), weights normalised over the pixels inside the image. Output 0 (centre 1) sees
    # pixels 0, 1, 2 with weights 0.75, 0.75, 0.25 -> 255 * 0.75 / 1.75 = 109.3; output 1 (centre 3)
    # sees pixels 1..4 with 0.25, 0.75, 0.75, 0.25 -> 255 * 0.25 / 2 = 31.9.
    out = resize_to(_column_image(), 2, 4, "pil", "bilinear")
    assert out.dtype == np.uint8 and out.shape == (2, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], [109, 32, 0, 0])


def test_opencv_samples_two_pixels_when_shrinking():
    # OpenCV INTER_LINEAR: src = (dst + 0.5) * 2 - 0.5 -> pixels 0,1 (0.5 each) for output 0, pixels 2,3 for 1.
    out = resize_to(_column_image(), 2, 4, "opencv", "bilinear")
    np.testing.assert_array_equal(out[0, :, 0], [128, 0, 0, 0])  # 127.5 rounded by the fixed-point weights


def test_torch_float_is_half_pixel_bilinear_on_floats():
    x = np.zeros((1, 2, 1), np.float32)
    x[0, 1, 0] = 1.0
    # 2 -> 4 columns: src = (dst + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (last pixel)
    out = resize_to(x, 1, 4, "torch_float", "bilinear")
    np.testing.assert_allclose(out.reshape(-1), [0.0, 0.25, 0.75, 1.0], atol=1e-6)
    with pytest.raises(ValueError, match="bilinear only"):
        resize_to(x, 1, 4, "torch_float", "nearest")
    with pytest.raises(ValueError, match="uint8"):
        resize_to(x, 1, 4, "pil", "bilinear")


def test_prepare_image_normalises_before_a_float_resize():
    """torch_float keeps 127.5 where the uint8 backends round the resized pixel first."""
    img = _column_image()
    base = dict(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], interp="bilinear", size_rounding="round")
    out, (sy, sx) = prepare_image(img, InputConfig(resize_backend="torch_float", **base), short=1, max_size=4)
    assert out.shape == (3, 1, 4) and (sy, sx) == (0.5, 0.5)
    np.testing.assert_allclose(out[0, 0], [127.5, 0.0, 0.0, 0.0])
    out, _ = prepare_image(img, InputConfig(resize_backend="opencv", **base), short=1, max_size=4)
    np.testing.assert_allclose(out[0, 0], [128.0, 0.0, 0.0, 0.0])
    # with to_unit and a mean the float path gives (x / 255 - mean) / std of the interpolated value
    cfg = InputConfig(
        resize_backend="torch_float", to_unit=True, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], channel_order="RGB"
    )
    out, _ = prepare_image(img, cfg, short=1, max_size=4)
    np.testing.assert_allclose(out[:, 0, 0], [(0.5 - 0.5) / 0.25] * 3, atol=1e-6)
    np.testing.assert_allclose(out[:, 0, 1], [(0.0 - 0.5) / 0.25] * 3, atol=1e-6)


@pytest.mark.parametrize(
    "recipe,backend,rounding,box_rule",
    [
        ("rt_dla34", "pil", "round", "clip_drop_empty"),
        ("rt_r50", "pil", "round", "clip_drop_empty"),
        ("tv_r50", "torch_float", "floor", "clip_keep"),
        ("r50_ms_2x", "opencv", "round", "none"),
    ],
)
def test_each_recipe_uses_its_references_rules(recipe, backend, rounding, box_rule):
    cfg = load_config(f"configs/{recipe}.yml")
    assert (cfg.input.resize_backend, cfg.input.size_rounding) == (backend, rounding)
    assert cfg.model.postprocess.box_rule == box_rule


def test_bad_rule_names_are_config_errors():
    with pytest.raises(ConfigError, match="input.resize_backend"):
        load_config("configs/rt_dla34.yml", overrides=["input.resize_backend=cv2"])
    with pytest.raises(ConfigError, match="model.postprocess.box_rule"):
        load_config("configs/rt_dla34.yml", overrides=["model.postprocess.box_rule=clip"])
    with pytest.raises(ConfigError, match="input.interp"):
        load_config("configs/tv_r50.yml", overrides=["input.interp=nearest"])


# ------------------------------------------------------------------------------------------
# Box rules
# ------------------------------------------------------------------------------------------


def _two_boxes(box_rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Resized image 24 x 32 (h, w), scale 2 (original 12 x 16), one stride-8 level of 3 x 4 points.

    A (class 0, point (28, 12), ltrb 4,4,12,4): [24, 8, 40, 16], reaching past the right edge.
    B (class 1, point (28, 20), ltrb -8,2,16,2): [36, 18, 44, 22], wholly right of the image.
    """
    cls = np.full((1, 2, 3, 4), -30.0, np.float32)
    reg = np.zeros((1, 4, 3, 4), np.float32)
    ctr = np.full((1, 1, 3, 4), 30.0, np.float32)
    cls[0, 0, 1, 3], reg[0, :, 1, 3] = 3.0, [4, 4, 12, 4]
    cls[0, 1, 2, 3], reg[0, :, 2, 3] = 2.0, [-8, 2, 16, 2]
    points = compute_points([(3, 4)], [8], offset=0.5)
    bboxes, bbox_num = postprocess_detections(
        [paddle.to_tensor(cls)],
        [paddle.to_tensor(reg)],
        [paddle.to_tensor(ctr)],
        points,
        [8],
        paddle.to_tensor(np.array([[24.0, 32.0]], np.float32)),
        paddle.to_tensor(np.array([[2.0, 2.0]], np.float32)),
        PostprocessConfig(box_rule=box_rule),
        False,
    )
    return bboxes.numpy(), bbox_num.numpy()


@pytest.mark.parametrize(
    "box_rule,expected",
    [
        # detectron2: scale to 12 x 16, clip to it, drop B (zero width after clipping)
        ("clip_drop_empty", [[12, 4, 16, 8]]),
        # torchvision: clip in the resized frame, scale back, keep B as a zero-width box on the border
        ("clip_keep", [[12, 4, 16, 8], [16, 9, 16, 11]]),
        # PaddleDetection: only divide by the scale factor
        ("none", [[12, 4, 20, 8], [18, 9, 22, 11]]),
    ],
)
def test_box_rules(box_rule, expected):
    bboxes, bbox_num = _two_boxes(box_rule)
    assert bbox_num.tolist() == [2]
    drop = drops_empty_boxes(box_rule)  # also what the deploy predictor does with infer_cfg.yml's box_rule
    assert drop == (box_rule == "clip_drop_empty")
    det = split_detections(bboxes, bbox_num, drop_empty=drop)[0]
    np.testing.assert_allclose(det["boxes"], expected, atol=1e-5)


# ------------------------------------------------------------------------------------------
# infer_cfg.yml carries the rules to every backend
# ------------------------------------------------------------------------------------------


def _write_export(tmp_path, preprocess: dict, postprocess: dict) -> str:
    (tmp_path / "model.json").write_text("{}")
    (tmp_path / "model.pdiparams").write_bytes(b"")
    data = {
        "model_file": "model.json",
        "params_file": "model.pdiparams",
        "preprocess": {"target_size": 512, "max_size": 736, **preprocess},
        "postprocess": postprocess,
        "class_names": ["a"],
        "category_ids": [1],
    }
    (tmp_path / "infer_cfg.yml").write_text(yaml.safe_dump(data))
    return str(tmp_path)


def test_infer_cfg_rules_round_trip_and_legacy_default(tmp_path):
    d = _write_export(tmp_path, {"resize_backend": "torch_float", "size_rounding": "floor"}, {"box_rule": "clip_keep"})
    cfg = load_infer_cfg(d)
    assert (cfg.input.resize_backend, cfg.input.size_rounding, cfg.box_rule) == ("torch_float", "floor", "clip_keep")
    # an export written before these keys existed resized with OpenCV, rounded, and dropped empty boxes
    d = _write_export(tmp_path, {}, {})
    cfg = load_infer_cfg(d)
    assert (cfg.input.resize_backend, cfg.input.size_rounding, cfg.box_rule) == ("opencv", "round", "clip_drop_empty")


@pytest.mark.parametrize(
    "pre,post,message",
    [
        ({"resize_backend": "cv2"}, {}, "preprocess: key 'resize_backend'"),
        ({"size_rounding": "ceil"}, {}, "preprocess: key 'size_rounding'"),
        ({}, {"box_rule": "drop"}, "postprocess: key 'box_rule'"),
        ({"interp": "cubic"}, {}, "preprocess: key 'interp' must be one of bilinear, nearest, area, got 'cubic'"),
        ({"channel_order": "bgr"}, {}, "preprocess: key 'channel_order' must be one of BGR, RGB"),
    ],
)
def test_infer_cfg_bad_rules_name_the_key(tmp_path, pre, post, message):
    d = _write_export(tmp_path, pre, post)
    with pytest.raises(DeployError, match=message):
        load_infer_cfg(d)


@pytest.mark.parametrize("keeps_empty,expected_count", [(True, 3), (False, 2)])
def test_zero_area_boxes_in_nms(keeps_empty, expected_count):
    """Two zero-width boxes of one class on the same line: torchvision's batched_nms keeps both (IoU 0/0 is NaN,
    and NaN > thresh is false); Paddle's multiclass_nms keeps one (NaN <= thresh is false too)."""
    cls = np.full((1, 1, 1, 3), -30.0, np.float32)
    reg = np.zeros((1, 4, 1, 3), np.float32)
    ctr = np.full((1, 1, 1, 3), 30.0, np.float32)
    cls[0, 0, 0, :] = [3.0, 2.0, 1.0]
    reg[0, :, 0, 0] = [0, 2, 0, 2]  # point (4, 4) -> [4, 2, 4, 6], zero width
    reg[0, :, 0, 1] = [8, 1, -8, 1]  # point (12, 4) -> [4, 3, 4, 5], zero width, on the same line
    reg[0, :, 0, 2] = [2, 2, 2, 2]  # point (20, 4) -> [18, 2, 22, 6]
    cfg = PostprocessConfig(box_rule="clip_keep", nms_keeps_empty=keeps_empty, sqrt_score=False)
    bboxes, bbox_num = postprocess_detections(
        [paddle.to_tensor(cls)],
        [paddle.to_tensor(reg)],
        [paddle.to_tensor(ctr)],
        compute_points([(1, 3)], [8], offset=0.5),
        [8],
        paddle.to_tensor(np.array([[8.0, 24.0]], np.float32)),
        paddle.to_tensor(np.array([[1.0, 1.0]], np.float32)),
        cfg,
        False,
    )
    rows = bboxes.numpy()
    assert bbox_num.numpy().tolist() == [expected_count]
    # the kept rows carry the candidates' own coordinates (not the ones moved apart for NMS)
    np.testing.assert_allclose(rows[0, 2:], [4, 2, 4, 6], atol=1e-5)
    np.testing.assert_allclose(rows[-1, 2:], [18, 2, 22, 6], atol=1e-5)
    if keeps_empty:
        np.testing.assert_allclose(rows[1, 2:], [4, 3, 4, 5], atol=1e-5)


def test_recipes_nms_rule():
    for recipe, keeps in [("rt_dla34", True), ("rt_r50", True), ("tv_r50", True), ("r50_ms_2x", False)]:
        assert load_config(f"configs/{recipe}.yml").model.postprocess.nms_keeps_empty is keeps, recipe


@pytest.mark.parametrize("box_rule", ["clip_keep", "none"])
def test_every_box_rule_exports_and_matches_dygraph(tmp_path, box_rule):
    """paddle.jit.save rejects an input the graph does not use; "none" uses no image size, yet the export keeps
    the one signature (image, im_shape, scale_factor) of every recipe, on Paddle Inference and in ONNX. The
    reloaded model equals dygraph, and ONNX Runtime equals Paddle Inference."""
    import fcos
    from fcos.deploy.onnx_predictor import OnnxPredictor
    from fcos.deploy.predictor import DeployPredictor
    from fcos.export import InferenceModel, check_export, check_onnx, export_model, export_onnx
    from fcos.inference.synthetic_weights import make_detection_rich

    cfg = load_config("configs/demo_shapes.yml", [f"model.postprocess.box_rule={box_rule}"])
    paddle.seed(0)
    model = fcos.build_model(cfg)
    make_detection_rich(model, seed=1)
    model.eval()
    assert InferenceModel(model).ties_im_shape == (box_rule == "none")  # clip_keep reads im_shape anyway
    out = str(tmp_path / box_rule)
    export_model(model, cfg, out, cfg.data.class_names, [1, 2, 3, 4])
    assert load_infer_cfg(out).box_rule == box_rule
    signature = ["image", "im_shape", "scale_factor"]
    assert DeployPredictor(out, use_mkldnn=False).input_names == signature
    check = check_export(model, cfg, out, sizes=[(160, 224)], runtime={"use_mkldnn": False})
    assert check.passed and check.compared > 50, str(check)
    onnx_file = export_onnx(out)
    assert OnnxPredictor(out, onnx_file=onnx_file).input_names == signature
    onnx_check = check_onnx(out, onnx_file)
    assert onnx_check.passed and onnx_check.compared > 50, str(onnx_check)
