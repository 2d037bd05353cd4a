"""FCOS inference: head outputs -> scored, class-aware-NMS'd boxes in original image pixels.

Steps (AdelaiDet order; the torchvision / PaddleDetection variants are config switches):
  1. per level: cls = sigmoid(cls_logits), ctr = sigmoid(ctr_logits); final score = sqrt(cls*ctr)
     (``sqrt_score``) or cls*ctr;
  2. candidates: cls > score_thresh, or final score > score_thresh when ``thresh_with_ctr``;
  3. per level and image keep the ``pre_nms_topk`` candidates with the highest cls*ctr;
  4. decode: box = point -/+ reg (* stride when ``norm_reg_targets``); optionally clip to the resized
     image (``clip_before_nms``, torchvision);
  5. all levels together: class-aware NMS (IoU without the +1 pixel offset, as detectron2 and
     torchvision), keep the best ``max_dets`` per image, sorted by score;
  6. back to the original image by ``box_rule``, as each reference does it:
     "clip_drop_empty" (detectron2 ``detector_postprocess``): divide by scale_factor (x by sx, y by sy),
     clip to the original size round(im_shape / scale_factor), and
     :func:`fcos.utils.detections.split_detections` drops boxes of zero width or height; "clip_keep"
     (torchvision): clip to the resized image, divide, keep every box; "none" (PaddleDetection):
     divide only, so boxes may reach outside the image.

Everything is fixed-shape tensor ops (top-k on masked scores instead of boolean indexing, Paddle's
batched ``multiclass_nms3``), so it runs in dygraph and under ``paddle.jit.to_static`` with dynamic
batch and image sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import paddle
import paddle.nn.functional as F

from fcos.config import BOX_RULES, PostprocessConfig

_INVALID_SCORE = -1.0  # score of non-candidates; NMS drops everything at or below _NMS_SCORE_FLOOR
_NMS_SCORE_FLOOR = -0.5


def _select_level(
    cls_logits: paddle.Tensor,
    bbox_reg: paddle.Tensor,
    ctr_logits: paddle.Tensor,
    points: paddle.Tensor,
    stride: int,
    cfg: PostprocessConfig,
    norm_reg_targets: bool,
) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """Top candidates of one level.

    cls_logits (N,C,H,W), bbox_reg (N,4,H,W), ctr_logits (N,1,H,W), points (H*W,2) x,y.
    Returns boxes (N,k,4) xyxy resized-frame pixels, scores (N,k) final score or -1 for non-candidates,
    labels (N,k) int64; k = pre_nms_topk (fixed; levels with fewer candidates are padded with -1 scores).
    """
    num_classes = cls_logits.shape[1]
    cls_prob = F.sigmoid(cls_logits.astype("float32")).flatten(2).transpose([0, 2, 1])  # (N,HW,C)
    ctr_prob = F.sigmoid(ctr_logits.astype("float32")).flatten(1)  # (N,HW)
    reg = bbox_reg.astype("float32").flatten(2).transpose([0, 2, 1])  # (N,HW,4)

    rank_score = cls_prob * ctr_prob.unsqueeze(2)  # (N,HW,C)
    final_score = paddle.sqrt(rank_score) if cfg.sqrt_score else rank_score
    gate = final_score if cfg.thresh_with_ctr else cls_prob
    candidate = gate > cfg.score_thresh
    masked = paddle.where(candidate, rank_score, paddle.full_like(rank_score, _INVALID_SCORE)).flatten(1)

    # Pad to at least k entries so top-k has a fixed size even on tiny levels.
    k = int(cfg.pre_nms_topk)
    padding = paddle.zeros_like(masked[:, :1]).tile([1, k]) + _INVALID_SCORE
    top_rank, top_index = paddle.topk(paddle.concat([masked, padding], axis=1), k=k, axis=1)  # (N,k)
    valid = top_rank > _NMS_SCORE_FLOOR
    top_index = paddle.where(valid, top_index, paddle.zeros_like(top_index))
    point_index = top_index // num_classes
    labels = top_index % num_classes

    top_final = paddle.take_along_axis(final_score.flatten(1), top_index, axis=1)
    scores = paddle.where(valid, top_final, paddle.full_like(top_final, _INVALID_SCORE))

    top_reg = paddle.take_along_axis(reg, point_index.unsqueeze(2).tile([1, 1, 4]), axis=1)  # (N,k,4)
    if norm_reg_targets:
        top_reg = top_reg * float(stride)
    top_points = paddle.gather(points.astype("float32"), point_index.flatten()).reshape([-1, k, 2])
    boxes = paddle.concat([top_points - top_reg[:, :, :2], top_points + top_reg[:, :, 2:]], axis=2)
    return boxes, scores, labels


def _clip_boxes(boxes: paddle.Tensor, height_width: paddle.Tensor) -> paddle.Tensor:
    """Clip (..., 4) xyxy boxes to [0, w] x [0, h]; height_width broadcastable to (..., 2) as (h, w)."""
    upper = paddle.concat([height_width[..., 1:2], height_width[..., 0:1]], axis=-1).tile([1] * (boxes.ndim - 1) + [2])
    return paddle.clip(paddle.minimum(boxes, upper), min=0.0)


_EMPTY_BOX_SPACING = 1.0e5  # px between separated zero-area boxes: far beyond any image and any other box


def _separate_empty_boxes(boxes: paddle.Tensor) -> paddle.Tensor:
    """(N, K, 4) xyxy boxes for NMS in which zero-area boxes overlap nothing.

    A box with x2 <= x1 or y2 <= y1 moves by (k + 1) * 1e5 px along both axes (k: its candidate index), so
    no two of them touch and none touches a real box: Paddle's NMS then neither suppresses them nor lets
    them suppress, as torchvision's ``batched_nms`` does (their IoU is 0/0 there). They stay zero-area.
    """
    empty = (boxes[:, :, 2] <= boxes[:, :, 0]) | (boxes[:, :, 3] <= boxes[:, :, 1])  # (N,K)
    index = paddle.cumsum(paddle.ones_like(boxes[:, :, 0]), axis=1)  # (N,K) 1..K
    shift = paddle.where(empty, index * _EMPTY_BOX_SPACING, paddle.zeros_like(index))
    return boxes + shift.unsqueeze(2)


def reads_im_shape(cfg: PostprocessConfig) -> bool:
    """Whether :func:`postprocess_detections` uses ``im_shape``: to clip before NMS or by the box rule
    ("none" only divides by ``scale_factor``)."""
    return cfg.clip_before_nms or cfg.box_rule != "none"


def postprocess_detections(
    cls_logits: Sequence[paddle.Tensor],
    bbox_reg: Sequence[paddle.Tensor],
    ctr_logits: Sequence[paddle.Tensor],
    points: Sequence[paddle.Tensor],
    strides: Sequence[int],
    im_shape: paddle.Tensor,
    scale_factor: paddle.Tensor,
    cfg: PostprocessConfig,
    norm_reg_targets: bool,
) -> tuple[paddle.Tensor, paddle.Tensor]:
    """Detections of a batch from per-level head outputs.

    Args:
        cls_logits / bbox_reg / ctr_logits: per level (N,C,H,W) / (N,4,H,W) / (N,1,H,W) (head layout;
            bbox_reg l,t,r,b >= 0, in stride units when norm_reg_targets, else pixels).
        points: per level (H*W, 2) x,y (``compute_points``).
        strides: per level stride.
        im_shape: (N,2) float32 (h, w) of the resized image before padding.
        scale_factor: (N,2) float32 (sy, sx) = resized / original.
        cfg: ``model.postprocess``.

    Returns:
        bboxes (K,6) float32 rows [label, score, x1, y1, x2, y2] in original-image pixels, per image sorted
        by score (descending), images in batch order; bbox_num (N,) int32 detections per image.
    """
    im_shape = im_shape.astype("float32")
    scale_factor = scale_factor.astype("float32")
    level_boxes, level_scores, level_labels = [], [], []
    for level_cls, level_reg, level_ctr, level_points, stride in zip(cls_logits, bbox_reg, ctr_logits, points, strides):
        boxes, scores, labels = _select_level(
            level_cls, level_reg, level_ctr, level_points, stride, cfg, norm_reg_targets
        )
        level_boxes.append(boxes)
        level_scores.append(scores)
        level_labels.append(labels)
    boxes = paddle.concat(level_boxes, axis=1)  # (N,K,4)
    scores = paddle.concat(level_scores, axis=1)  # (N,K)
    labels = paddle.concat(level_labels, axis=1)  # (N,K)
    if cfg.clip_before_nms:
        boxes = _clip_boxes(boxes, im_shape.unsqueeze(1))

    num_classes = cls_logits[0].shape[1]
    num_candidates = boxes.shape[1]
    # Class-major score matrix (N,C,K): each candidate scores only in its own class row.
    in_class = F.one_hot(labels, num_classes) > 0  # (N,K,C)
    class_scores = paddle.where(
        in_class, scores.unsqueeze(2).tile([1, 1, num_classes]), paddle.full_like(in_class, _INVALID_SCORE, "float32")
    ).transpose([0, 2, 1])
    nms_boxes = _separate_empty_boxes(boxes) if cfg.nms_keeps_empty else boxes
    detections, keep_index, bbox_num = paddle._C_ops.multiclass_nms3(
        nms_boxes,
        class_scores,
        None,
        _NMS_SCORE_FLOOR,  # score_threshold: only real candidates pass
        -1,  # nms_top_k: no per-class cap (pre_nms_topk per level already applied)
        int(cfg.max_dets),  # keep_top_k per image over all classes
        float(cfg.nms_thresh),
        True,  # normalized: IoU without the +1 pixel offset
        1.0,  # nms_eta
        -1,  # background_label: none
    )
    bbox_num = bbox_num.astype("int32")

    # multiclass_nms3 groups rows by class; order them by image, then score (descending).
    image_index = keep_index.reshape([-1]) // num_candidates  # (K,) int
    det_scores = detections[:, 1]
    order = paddle.argsort(image_index.astype("float32") * 4.0 - det_scores)  # scores lie in [0, 1]
    detections = paddle.gather(detections, order)
    image_index = paddle.gather(image_index, order)
    if cfg.nms_keeps_empty:  # the kept candidates' own coordinates, not the ones moved apart for NMS
        candidate_index = paddle.gather(keep_index.reshape([-1]), order)
        det_boxes = paddle.gather(boxes.reshape([-1, 4]), candidate_index)
    else:
        det_boxes = detections[:, 2:6]

    row_scale = paddle.gather(scale_factor, image_index)  # (K,2) sy,sx
    scale_xyxy = paddle.concat([row_scale[:, 1:2], row_scale[:, 0:1]], axis=1).tile([1, 2])
    if cfg.box_rule == "clip_keep":
        det_boxes = _clip_boxes(det_boxes, paddle.gather(im_shape, image_index)) / scale_xyxy
    elif cfg.box_rule == "clip_drop_empty":
        original_shape = paddle.round(im_shape / scale_factor)
        det_boxes = _clip_boxes(det_boxes / scale_xyxy, paddle.gather(original_shape, image_index))
    elif cfg.box_rule == "none":
        det_boxes = det_boxes / scale_xyxy
    else:
        raise ValueError(f"model.postprocess.box_rule must be one of {', '.join(BOX_RULES)}, got {cfg.box_rule!r}")
    bboxes = paddle.concat([detections[:, 0:2], det_boxes], axis=1)
    return bboxes, bbox_num
