"""FCOS training losses: sigmoid focal loss, IoU-family box loss on l,t,r,b, centerness BCE.

All terms are computed in float32 whatever the input dtype (fp16/bf16 overflow in focal/IoU terms
produces NaN). Normalisers follow AdelaiDet by default:

* classification: sum of focal losses / num_pos, num_pos = mean over devices of the positive count
  (``reduce_across_devices``; per-device count otherwise), clamped >= 1. ``cls_normalizer="moving_fg"``
  divides by an EMA (momentum 0.9, initial value 100) of that count instead, kept in a
  :class:`MovingFgNormalizer` that the caller owns and passes in (one per model).
* box: loss weighted by the centerness targets and divided by their (device-averaged) sum
  (``box_weight_by_ctr``, AdelaiDet), or unweighted sum / num_pos (torchvision).
* centerness: BCE-with-logits sum / num_pos.

With zero positives the box and centerness terms are 0 but still depend on the predictions, so
``loss.backward()`` works (and yields zero gradients for them).
"""

from __future__ import annotations

from typing import Optional

import paddle
import paddle.nn.functional as F

from fcos.config import LossConfig
from fcos.utils.dist import all_reduce_mean

IOU_EPS = 1.0e-7


class MovingFgNormalizer:
    """EMA of the number of foreground points, for ``cls_normalizer: moving_fg`` (AdelaiDet).

    ``update(num_pos)`` sets value = momentum * value + (1 - momentum) * num_pos and returns it.
    The value is a Python float (not part of the autograd graph); save/restore it via ``state_dict``.
    """

    def __init__(self, momentum: float = 0.9, initial: float = 100.0) -> None:
        self.momentum = float(momentum)
        self.value = float(initial)

    def update(self, num_pos: float) -> float:
        self.value = self.momentum * self.value + (1.0 - self.momentum) * float(num_pos)
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "momentum": self.momentum}

    def set_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.momentum = float(state.get("momentum", self.momentum))


def sigmoid_focal_loss(
    logits: paddle.Tensor, targets: paddle.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> paddle.Tensor:
    """Summed sigmoid focal loss (Lin et al.). logits and 0/1 targets of the same shape; returns a float32 scalar.

    loss = -alpha_t * (1 - p_t)^gamma * log(p_t); alpha < 0 disables the alpha weighting.
    """
    logits = logits.astype("float32")
    targets = targets.astype("float32")
    prob = F.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1.0 - prob) * (1.0 - targets)
    loss = ce * (1.0 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
    return loss.sum()


def iou_loss(
    pred: paddle.Tensor,
    target: paddle.Tensor,
    loss_type: str = "giou",
    smooth: float = 1.0,
) -> paddle.Tensor:
    """Element-wise IoU-family loss of boxes given as distances l,t,r,b from a common point.

    pred, target: (..., 4) non-negative l,t,r,b (same units). IoU = (inter + smooth) / (union + smooth)
    (AdelaiDet smooth=1; with smooth=0 a small eps keeps the ratio finite, torchvision style).
    loss_type "iou": -log(IoU); "linear_iou": 1 - IoU; "giou": 1 - GIoU. Returns (...) float32.
    """
    pred = pred.astype("float32")
    target = target.astype("float32")
    pl, pt, pr, pb = pred[..., 0], pred[..., 1], pred[..., 2], pred[..., 3]
    tl, tt, tr, tb = target[..., 0], target[..., 1], target[..., 2], target[..., 3]
    pred_area = (pl + pr) * (pt + pb)
    target_area = (tl + tr) * (tt + tb)
    inter_w = paddle.minimum(pl, tl) + paddle.minimum(pr, tr)
    inter_h = paddle.minimum(pt, tt) + paddle.minimum(pb, tb)
    inter = inter_w * inter_h
    union = pred_area + target_area - inter
    if smooth > 0:
        ious = (inter + smooth) / (union + smooth)
    else:
        ious = inter / (union + IOU_EPS)
    if loss_type == "iou":
        return -paddle.log(paddle.clip(ious, min=IOU_EPS))
    if loss_type == "linear_iou":
        return 1.0 - ious
    if loss_type == "giou":
        enclose_w = paddle.maximum(pl, tl) + paddle.maximum(pr, tr)
        enclose_h = paddle.maximum(pt, tt) + paddle.maximum(pb, tb)
        enclose = enclose_w * enclose_h + IOU_EPS
        gious = ious - (enclose - union) / enclose
        return 1.0 - gious
    raise ValueError(f"iou_loss: model.loss.box_loss must be 'giou', 'iou' or 'linear_iou', got {loss_type!r}")


def centerness_targets(reg_targets: paddle.Tensor) -> paddle.Tensor:
    """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) of (..., 4) l,t,r,b targets (positive entries); returns (...)."""
    reg_targets = reg_targets.astype("float32")
    left_right = reg_targets[..., 0::2]
    top_bottom = reg_targets[..., 1::2]
    ratio = (left_right.min(axis=-1) / left_right.max(axis=-1)) * (top_bottom.min(axis=-1) / top_bottom.max(axis=-1))
    return paddle.sqrt(ratio)


def _normaliser(value: paddle.Tensor, reduce_across_devices: bool) -> paddle.Tensor:
    value = value.detach().astype("float32")
    return all_reduce_mean(value) if reduce_across_devices else value


def fcos_losses(
    cls_logits: paddle.Tensor,
    bbox_reg: paddle.Tensor,
    ctr_logits: paddle.Tensor,
    labels: paddle.Tensor,
    reg_targets: paddle.Tensor,
    cfg: LossConfig,
    num_classes: int,
    moving_fg: Optional[MovingFgNormalizer] = None,
) -> dict[str, paddle.Tensor]:
    """FCOS losses of a batch of flattened predictions.

    Args:
        cls_logits: (N, P, C) classification logits.
        bbox_reg: (N, P, 4) predicted l,t,r,b (same units as reg_targets, i.e. stride units when
            norm_reg_targets).
        ctr_logits: (N, P) or (N, P, 1) centerness logits.
        labels: (N, P) int64 from ``assign_targets``; background = num_classes.
        reg_targets: (N, P, 4) l,t,r,b targets (meaningful at positives only).
        cfg: ``model.loss``.
        num_classes: C.
        moving_fg: EMA state, required when ``cfg.cls_normalizer == "moving_fg"`` (the caller keeps one
            per model, e.g. ``self.moving_fg = MovingFgNormalizer()``).

    Returns:
        dict(loss_cls, loss_box, loss_ctr) of float32 scalars.
    """
    num_channels = cls_logits.shape[-1]
    if num_channels != num_classes:
        raise ValueError(f"fcos_losses: cls_logits has {num_channels} classes, model.num_classes is {num_classes}")
    cls_logits = cls_logits.astype("float32").reshape([-1, num_classes])
    bbox_reg = bbox_reg.astype("float32").reshape([-1, 4])
    ctr_logits = ctr_logits.astype("float32").reshape([-1])
    labels = labels.reshape([-1])
    reg_targets = reg_targets.astype("float32").reshape([-1, 4])

    positive = labels < num_classes  # (NP,) bool
    positive_f = positive.astype("float32")
    num_pos = _normaliser(positive_f.sum(), cfg.reduce_across_devices)
    num_pos = paddle.clip(num_pos, min=1.0)

    class_targets = F.one_hot(labels, num_classes + 1)[:, :num_classes]
    loss_cls = sigmoid_focal_loss(cls_logits, class_targets, cfg.focal_alpha, cfg.focal_gamma)
    if cfg.cls_normalizer == "moving_fg":
        if moving_fg is None:
            raise ValueError(
                "fcos_losses: model.loss.cls_normalizer is 'moving_fg' but no MovingFgNormalizer was passed "
                "(pass moving_fg=..., one instance kept by the model)"
            )
        loss_cls = loss_cls / moving_fg.update(float(num_pos))
    elif cfg.cls_normalizer == "fg":
        loss_cls = loss_cls / num_pos
    else:
        raise ValueError(
            f"fcos_losses: model.loss.cls_normalizer must be 'fg' or 'moving_fg', got {cfg.cls_normalizer!r}"
        )

    # Box and centerness terms on every point, masked to the positives: fixed shapes, no empty gathers.
    # Background entries are replaced by a harmless unit box so that no NaN/inf enters the graph.
    mask = positive.unsqueeze(1).expand([positive.shape[0], 4])
    ones = paddle.ones_like(reg_targets)
    safe_targets = paddle.where(mask, reg_targets, ones)
    safe_pred = paddle.where(mask, bbox_reg, ones)
    ctr_targets = centerness_targets(safe_targets) * positive_f

    box_losses = iou_loss(safe_pred, safe_targets, cfg.box_loss, cfg.iou_smooth)
    if cfg.box_weight_by_ctr:
        ctr_sum = _normaliser(ctr_targets.sum(), cfg.reduce_across_devices)
        loss_box = (box_losses * ctr_targets).sum() / paddle.clip(ctr_sum, min=1.0e-6)
    else:
        loss_box = (box_losses * positive_f).sum() / num_pos

    ctr_losses = F.binary_cross_entropy_with_logits(ctr_logits, ctr_targets, reduction="none")
    loss_ctr = (ctr_losses * positive_f).sum() / num_pos
    return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_ctr": loss_ctr}
