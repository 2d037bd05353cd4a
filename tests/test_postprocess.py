"""postprocess_detections on hand-made score maps, against a numpy NMS, and under to_static."""

from __future__ import annotations

import math
import os

import numpy as np
import paddle
import pytest

from fcos.config import PostprocessConfig
from fcos.modeling.points import compute_points
from fcos.modeling.postprocess import postprocess_detections, reads_im_shape
from fcos.utils.detections import split_detections

NEG = -30.0  # sigmoid -> ~0
POS = 30.0  # sigmoid -> 1.0 in float32


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class Level:
    """Hand-made head outputs of one level: (n,c,h,w) cls logits, (n,4,h,w) reg, (n,1,h,w) ctr logits."""

    def __init__(self, n, c, h, w, stride, reg=2.0):
        self.stride = stride
        self.cls = np.full((n, c, h, w), NEG, np.float32)
        self.reg = np.full((n, 4, h, w), reg, np.float32)
        self.ctr = np.full((n, 1, h, w), POS, np.float32)

    def set(self, image, cls_index, i, j, prob, ltrb=None, ctr=None):
        self.cls[image, cls_index, i, j] = _logit(prob)
        if ltrb is not None:
            self.reg[image, :, i, j] = ltrb
        if ctr is not None:
            self.ctr[image, 0, i, j] = _logit(ctr)


def _run(levels, cfg, norm_reg_targets=False, im_shape=None, scale_factor=None):
    n = levels[0].cls.shape[0]
    points = compute_points([lv.cls.shape[2:] for lv in levels], [lv.stride for lv in levels], offset=0.5)
    im_shape = np.full((n, 2), 1000.0, np.float32) if im_shape is None else np.asarray(im_shape, np.float32)
    scale_factor = np.ones((n, 2), np.float32) if scale_factor is None else np.asarray(scale_factor, np.float32)
    bboxes, bbox_num = postprocess_detections(
        [paddle.to_tensor(lv.cls) for lv in levels],
        [paddle.to_tensor(lv.reg) for lv in levels],
        [paddle.to_tensor(lv.ctr) for lv in levels],
        points,
        [lv.stride for lv in levels],
        paddle.to_tensor(im_shape),
        paddle.to_tensor(scale_factor),
        cfg,
        norm_reg_targets,
    )
    assert bboxes.dtype == paddle.float32 and bbox_num.dtype == paddle.int32
    assert bboxes.shape[1] == 6 and int(bbox_num.sum()) == bboxes.shape[0]
    return bboxes.numpy(), bbox_num.numpy()


@pytest.mark.parametrize(
    "thresh_with_ctr,sqrt_score,expected",
    [
        # location A: cls 0.1, ctr 0.25 -> product 0.025, sqrt 0.158; location B: cls 0.04, ctr 1 -> 0.04, sqrt 0.2
        (False, True, [math.sqrt(0.025)]),  # cls alone: A passes (0.1 > 0.05), B not (0.04)
        (False, False, [0.025]),
        (True, True, [0.2, math.sqrt(0.025)]),  # sqrt scores: both > 0.05
        (True, False, []),  # products 0.025 and 0.04 are both below 0.05
    ],
)
def test_score_threshold_cls_only_vs_with_centerness(thresh_with_ctr, sqrt_score, expected):
    level = Level(1, 2, 4, 4, stride=8)
    level.set(0, 0, 0, 0, prob=0.1, ctr=0.25)
    level.set(0, 1, 0, 2, prob=0.04)
    cfg = PostprocessConfig(score_thresh=0.05, thresh_with_ctr=thresh_with_ctr, sqrt_score=sqrt_score)
    bboxes, bbox_num = _run([level], cfg)
    assert bbox_num.tolist() == [len(expected)]
    np.testing.assert_allclose(bboxes[:, 1], expected, rtol=1e-5)


def test_per_level_topk_and_small_level():
    # Level 0 (4x4 = 32 entries) keeps only its top 2; level 1 is a 1x1 map (2 entries < pre_nms_topk).
    level0 = Level(1, 2, 4, 4, stride=8)
    level0.set(0, 0, 3, 0, 0.5)
    level0.set(0, 1, 3, 1, 0.6)
    level0.set(0, 0, 3, 2, 0.7)
    level0.set(0, 1, 3, 3, 0.8)  # point (28, 28)
    level0.set(0, 0, 2, 2, 0.9)  # point (20, 20)
    level1 = Level(1, 2, 1, 1, stride=32)
    level1.set(0, 1, 0, 0, 0.3)
    cfg = PostprocessConfig(score_thresh=0.05, sqrt_score=False, pre_nms_topk=2)
    bboxes, bbox_num = _run([level0, level1], cfg)
    assert bbox_num.tolist() == [3]
    np.testing.assert_allclose(bboxes[:, 1], [0.9, 0.8, 0.3], rtol=1e-5)
    np.testing.assert_allclose(bboxes[:, 0], [0, 1, 1])
    np.testing.assert_allclose(bboxes[0, 2:], [18, 18, 22, 22])  # point (20, 20) -/+ 2 px
    np.testing.assert_allclose(bboxes[1, 2:], [26, 26, 30, 30])  # point (28, 28)
    np.testing.assert_allclose(bboxes[2, 2:], [14, 14, 18, 18])  # point (16, 16) of the stride-32 level
    # Without the cap all six candidates survive.
    _, bbox_num = _run([level0, level1], PostprocessConfig(score_thresh=0.05, pre_nms_topk=1000))
    assert bbox_num.tolist() == [6]


@pytest.mark.parametrize("box_rule", ["clip_drop_empty", "clip_keep", "none"])
@pytest.mark.parametrize("clip_before_nms", [False, True])
def test_reads_im_shape_says_whether_the_image_size_matters(box_rule, clip_before_nms):
    """The export wrapper ties im_shape into the graph exactly when reads_im_shape is false: then the detections
    do not depend on it; otherwise a box crossing the image edge shows that they do."""
    level = Level(1, 1, 2, 2, stride=8)
    level.set(0, 0, 0, 0, 0.9, ltrb=[2, 2, 20, 20])  # point (4, 4) -> [2, 2, 24, 24]
    cfg = PostprocessConfig(box_rule=box_rule, clip_before_nms=clip_before_nms)
    large, _ = _run([level], cfg, im_shape=[[100.0, 100.0]])
    small, _ = _run([level], cfg, im_shape=[[16.0, 16.0]])
    assert reads_im_shape(cfg) == (box_rule != "none" or clip_before_nms)
    assert np.array_equal(large, small) == (not reads_im_shape(cfg))


def test_regression_scaled_by_stride_when_normalised():
    level = Level(1, 1, 2, 2, stride=16)
    level.set(0, 0, 1, 0, 0.9, ltrb=[0.5, 1.0, 1.5, 2.0])  # point (8, 24)
    bboxes, _ = _run([level], PostprocessConfig(), norm_reg_targets=True)
    np.testing.assert_allclose(bboxes[0, 2:], [8 - 8, 24 - 16, 8 + 24, 24 + 32])


@pytest.mark.parametrize(
    "second_ltrb,second_class,expected_count",
    [
        ([8, 4, 12, 16], 0, 2),  # [4,0,24,20] vs [0,0,20,20]: IoU 320/480 = 0.667 > 0.6 -> suppressed
        ([6, 4, 14, 16], 0, 3),  # [6,0,26,20]: IoU 280/520 = 0.538 -> kept
        ([8, 4, 12, 16], 2, 3),  # same boxes, different classes -> kept
    ],
)
def test_class_aware_nms(second_ltrb, second_class, expected_count):
    level = Level(1, 3, 4, 4, stride=8)
    level.set(0, 0, 0, 0, 0.9, ltrb=[4, 4, 16, 16])  # point (4, 4) -> box [0, 0, 20, 20]
    level.set(0, 1, 0, 0, 0.8)  # same box, other class: never suppressed by class 0
    level.set(0, second_class, 0, 1, 0.7, ltrb=second_ltrb)  # point (12, 4)
    bboxes, bbox_num = _run([level], PostprocessConfig(nms_thresh=0.6, sqrt_score=False))
    assert bbox_num.tolist() == [expected_count]
    np.testing.assert_allclose(bboxes[:2, :2], [[0, 0.9], [1, 0.8]], rtol=1e-5)
    np.testing.assert_allclose(bboxes[1, 2:], [0, 0, 20, 20])


def test_nms_iou_has_no_plus_one_offset():
    # [0,0,20,10] vs [0,0,20,5.9]: IoU 0.59 (kept at 0.6); with the +1 pixel convention it would be 0.627.
    level = Level(1, 1, 2, 2, stride=8)
    level.set(0, 0, 0, 0, 0.9, ltrb=[4, 4, 16, 6])  # point (4, 4)
    level.set(0, 0, 0, 1, 0.8, ltrb=[12, 4, 8, 1.9])  # point (12, 4)
    _, bbox_num = _run([level], PostprocessConfig(nms_thresh=0.6))
    assert bbox_num.tolist() == [2]
    _, bbox_num = _run([level], PostprocessConfig(nms_thresh=0.55))
    assert bbox_num.tolist() == [1]


def test_max_detections_keeps_best_sorted():
    level = Level(1, 3, 4, 4, stride=8)
    probs = [0.3, 0.9, 0.5, 0.7, 0.6, 0.8]
    for k, prob in enumerate(probs):
        level.set(0, k % 3, k // 4, k % 4, prob)
    bboxes, bbox_num = _run([level], PostprocessConfig(max_dets=3, sqrt_score=False))
    assert bbox_num.tolist() == [3]
    np.testing.assert_allclose(bboxes[:, 1], [0.9, 0.8, 0.7], rtol=1e-5)
    np.testing.assert_allclose(bboxes[:, 0], [1, 2, 0])


def test_rescale_to_original_and_clip():
    level = Level(1, 1, 4, 4, stride=8)
    level.set(0, 0, 3, 3, 0.9, ltrb=[30, 40, 10, 10])  # point (28, 28) -> [-2, -12, 38, 38]
    level.set(0, 0, 0, 0, 0.8, ltrb=[2, 2, 6, 2])  # point (4, 4) -> [2, 2, 10, 6]
    im_shape = [[24.4, 30.0]]  # resized (h, w); original = round(24.4 / 1.6, 30 / 0.5) = (15, 60)
    scale_factor = [[1.6, 0.5]]  # (sy, sx)
    bboxes, _ = _run([level], PostprocessConfig(sqrt_score=False), im_shape=im_shape, scale_factor=scale_factor)
    # clipped to [0, 30] x [0, 24.4], divided by (sx, sy), clipped to 60 x 15 (24.4 / 1.6 = 15.25 -> 15)
    np.testing.assert_allclose(bboxes[0, 2:], [0, 0, 60, 15], rtol=1e-5)
    np.testing.assert_allclose(bboxes[1, 2:], [4, 2 / 1.6, 20, 6 / 1.6], rtol=1e-5)


def test_clip_before_nms():
    # Image 20 px wide: [0,0,40,20] overlaps [0,0,20,20] with IoU 0.5 unclipped, 1.0 once clipped.
    level = Level(1, 1, 2, 2, stride=8)
    level.set(0, 0, 0, 0, 0.9, ltrb=[4, 4, 16, 16])
    level.set(0, 0, 0, 1, 0.8, ltrb=[12, 4, 28, 16])
    im_shape = [[20.0, 20.0]]
    bboxes, bbox_num = _run([level], PostprocessConfig(clip_before_nms=False), im_shape=im_shape)
    assert bbox_num.tolist() == [2]
    np.testing.assert_allclose(bboxes[1, 2:], [0, 0, 20, 20])  # clipped after NMS
    _, bbox_num = _run([level], PostprocessConfig(clip_before_nms=True), im_shape=im_shape)
    assert bbox_num.tolist() == [1]


def test_batch_with_empty_image_and_per_image_scaling():
    level = Level(2, 2, 4, 4, stride=8)
    level.set(1, 1, 1, 1, 0.9)  # image 1: point (12, 12) -> [10, 10, 14, 14]
    level.set(1, 0, 2, 3, 0.6)  # point (28, 20) -> [26, 18, 30, 22]
    bboxes, bbox_num = _run([level], PostprocessConfig(sqrt_score=False), scale_factor=[[1.0, 1.0], [2.0, 2.0]])
    assert bbox_num.tolist() == [0, 2]
    np.testing.assert_allclose(bboxes[:, :2], [[1, 0.9], [0, 0.6]], rtol=1e-5)
    np.testing.assert_allclose(bboxes[:, 2:], [[5, 5, 7, 7], [13, 9, 15, 11]])
    level.set(0, 0, 0, 0, 0.7)  # image 0 now has one detection: rows of image 0 come first
    bboxes, bbox_num = _run([level], PostprocessConfig(sqrt_score=False), scale_factor=[[1.0, 1.0], [2.0, 2.0]])
    assert bbox_num.tolist() == [1, 2]
    np.testing.assert_allclose(bboxes[:, 1], [0.7, 0.9, 0.6], rtol=1e-5)
    # Nothing anywhere: an empty (0, 6) result and zero counts.
    empty = Level(2, 2, 4, 4, stride=8)
    bboxes, bbox_num = _run([empty], PostprocessConfig())
    assert bboxes.shape == (0, 6) and bbox_num.tolist() == [0, 0]
    assert [len(d["scores"]) for d in split_detections(bboxes, bbox_num, drop_empty=True)] == [0, 0]


def _numpy_iou(box, boxes):
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def _numpy_class_aware_nms(boxes, scores, labels, iou_thresh, max_dets):
    order = np.argsort(-scores, kind="stable")
    kept = []
    for idx in order:
        same = [k for k in kept if labels[k] == labels[idx]]
        if same and (_numpy_iou(boxes[idx], boxes[same]) > iou_thresh).any():
            continue
        kept.append(idx)
    return kept[:max_dets]


def test_matches_numpy_nms_reference():
    rng = np.random.default_rng(7)
    num_classes, h, w, stride = 3, 6, 6, 8
    level = Level(1, num_classes, h, w, stride=stride)
    level.cls[:] = rng.normal(-1.0, 1.5, size=level.cls.shape).astype(np.float32)
    level.reg[:] = rng.uniform(2, 20, size=level.reg.shape).astype(np.float32)
    cfg = PostprocessConfig(score_thresh=0.05, sqrt_score=False, max_dets=25, nms_thresh=0.6)
    bboxes, bbox_num = _run([level], cfg)

    points = compute_points([(h, w)], [stride])[0].numpy()
    probs = 1.0 / (1.0 + np.exp(-level.cls[0].reshape(num_classes, -1).T.astype(np.float64)))  # (HW, C)
    loc, cls = np.nonzero(probs > 0.05)
    reg = level.reg[0].reshape(4, -1).T[loc]
    boxes = np.concatenate([points[loc] - reg[:, :2], points[loc] + reg[:, 2:]], axis=1)
    scores = probs[loc, cls]
    kept = _numpy_class_aware_nms(boxes, scores, cls, 0.6, 25)
    assert len(loc) > 40 and len(kept) == 25  # the case exercises suppression and the cap
    assert bbox_num.tolist() == [len(kept)]
    np.testing.assert_allclose(bboxes[:, 1], scores[kept], rtol=1e-5)
    np.testing.assert_array_equal(bboxes[:, 0], cls[kept])
    np.testing.assert_allclose(bboxes[:, 2:], np.clip(boxes[kept], 0, 1000), atol=1e-4)  # clipped to the image


class _PostprocessWrapper(paddle.nn.Layer):
    """Two-level head outputs -> detections, for the to_static round trip."""

    strides = (8, 16)

    def __init__(self, cfg: PostprocessConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, cls0, reg0, ctr0, cls1, reg1, ctr1, im_shape, scale_factor):
        cls_logits, bbox_reg, ctr_logits = [cls0, cls1], [reg0, reg1], [ctr0, ctr1]
        sizes = [(c.shape[2], c.shape[3]) for c in cls_logits]
        points = compute_points(sizes, list(self.strides), 0.5)
        return postprocess_detections(
            cls_logits, bbox_reg, ctr_logits, points, list(self.strides), im_shape, scale_factor, self.cfg, True
        )


def test_to_static_save_load_round_trip(tmp_path):
    num_classes = 3
    model = _PostprocessWrapper(PostprocessConfig(score_thresh=0.3, pre_nms_topk=20, max_dets=30))
    model.eval()
    spec = []
    for _ in range(2):
        spec += [
            paddle.static.InputSpec([None, num_classes, None, None], "float32"),
            paddle.static.InputSpec([None, 4, None, None], "float32"),
            paddle.static.InputSpec([None, 1, None, None], "float32"),
        ]
    spec += [paddle.static.InputSpec([None, 2], "float32"), paddle.static.InputSpec([None, 2], "float32")]
    static_model = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    prefix = os.path.join(str(tmp_path), "postprocess")
    paddle.jit.save(static_model, prefix)
    assert os.path.exists(prefix + ".json") or os.path.exists(prefix + ".pdmodel")
    loaded = paddle.jit.load(prefix)

    rng = np.random.default_rng(0)
    for batch, (h, w), empty in [(1, (6, 7), False), (2, (3, 5), False), (2, (1, 1), False), (2, (4, 4), True)]:
        inputs = []
        for hh, ww in [(h, w), ((h + 1) // 2, (w + 1) // 2)]:
            cls = rng.normal(size=(batch, num_classes, hh, ww)).astype(np.float32) - (40.0 if empty else 0.0)
            inputs += [
                paddle.to_tensor(cls),
                paddle.to_tensor(rng.uniform(0, 3, size=(batch, 4, hh, ww)).astype(np.float32)),
                paddle.to_tensor(rng.normal(size=(batch, 1, hh, ww)).astype(np.float32)),
            ]
        im_shape = paddle.to_tensor(np.array([[h * 8, w * 8]] * batch, np.float32))
        scale_factor = paddle.to_tensor(np.array([[1.5, 2.0]] * batch, np.float32))
        eager_boxes, eager_num = model(*inputs, im_shape, scale_factor)
        static_boxes, static_num = loaded(*inputs, im_shape, scale_factor)
        np.testing.assert_array_equal(eager_num.numpy(), static_num.numpy())
        np.testing.assert_allclose(eager_boxes.numpy(), static_boxes.numpy(), rtol=1e-5, atol=1e-5)
        assert (int(eager_num.numpy().sum()) == 0) == empty
