"""The FCOS detector: backbone -> FPN -> head, plus target assignment and losses (training) or
decoding and NMS (evaluation).

Training returns ``dict(loss_cls, loss_box, loss_ctr, loss)``; evaluation returns ``(bboxes, bbox_num)``
with rows [label, score, x1, y1, x2, y2] in original-image pixels (see :meth:`FCOS.forward`).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import paddle
import paddle.nn as nn

from fcos.config import ModelConfig
from fcos.modeling.assigner import assign_targets
from fcos.modeling.fpn import FPN
from fcos.modeling.head import FCOSHead
from fcos.modeling.losses import MovingFgNormalizer, fcos_losses
from fcos.modeling.points import compute_points
from fcos.modeling.postprocess import postprocess_detections


def _flatten_levels(outputs: list[paddle.Tensor], channels: int) -> paddle.Tensor:
    """Per-level (N, K, H_l, W_l) -> (N, sum_l H_l*W_l, K), row-major (y, x) within each level."""
    flat = [o.transpose([0, 2, 3, 1]).reshape([0, -1, channels]) for o in outputs]
    return paddle.concat(flat, axis=1)


def _feature_size(feat: paddle.Tensor) -> tuple[Any, Any]:
    """(H, W) of an (N, C, H, W) map: Python ints in dygraph, int tensors under ``paddle.jit.to_static``."""
    if paddle.in_dynamic_mode():
        return int(feat.shape[2]), int(feat.shape[3])
    shape = paddle.shape(feat)
    return shape[2], shape[3]


class FCOS(nn.Layer):
    """FCOS one-stage detector.

    Args:
        backbone: layer mapping images (N, 3, H, W) to [C3, C4, C5], with ``out_channels`` and ``strides``.
        fpn: :class:`~fcos.modeling.fpn.FPN`.
        head: :class:`~fcos.modeling.head.FCOSHead`.
        cfg: the model section of the config (strides, assigner, loss, postprocess, head options).
        grid_strides: place the points of each level every (H // H_l, W // W_l) pixels of the padded input
            instead of every stride, as torchvision does (see :func:`~fcos.modeling.points.compute_points`);
            regression is still scaled by the nominal stride (torchvision's anchor size).

    Attributes: ``strides`` (per level, P3 first), ``num_classes``, ``cfg``, ``grid_strides``,
    ``moving_fg`` (the foreground-count EMA when ``loss.cls_normalizer == "moving_fg"``, else None).
    """

    def __init__(
        self, backbone: nn.Layer, fpn: FPN, head: FCOSHead, cfg: ModelConfig, grid_strides: bool = False
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.fpn = fpn
        self.head = head
        self.cfg = cfg
        self.grid_strides = bool(grid_strides)
        self.num_classes = int(cfg.num_classes)
        self.strides = [int(s) for s in cfg.strides]
        self.moving_fg = MovingFgNormalizer() if cfg.loss.cls_normalizer == "moving_fg" else None
        fpn_strides = list(backbone.strides) + [backbone.strides[-1] * 2**k for k in range(1, fpn.num_extra_levels + 1)]
        if fpn_strides != self.strides:
            raise ValueError(f"FCOS: model.strides {self.strides} do not match the backbone + FPN levels {fpn_strides}")

    def forward_head(
        self, images: paddle.Tensor
    ) -> tuple[list[paddle.Tensor], list[paddle.Tensor], list[paddle.Tensor]]:
        """Images (N, 3, H, W) -> per-level lists of cls logits (N, C, H_l, W_l), box regression (N, 4, H_l, W_l)
        (ReLU'd and scaled; stride units when ``norm_reg_targets``) and centerness logits (N, 1, H_l, W_l)."""
        return self.head(self.fpn(self.backbone(images)))

    def forward(
        self,
        images: paddle.Tensor,
        im_shape: Optional[paddle.Tensor] = None,
        scale_factor: Optional[paddle.Tensor] = None,
        targets: Optional[list[dict[str, paddle.Tensor]]] = None,
    ) -> Union[dict[str, paddle.Tensor], tuple[paddle.Tensor, paddle.Tensor]]:
        """Train mode: loss dict; eval mode: detections.

        Args:
            images: (N, 3, H, W) float32, normalised and padded.
            im_shape: (N, 2) float32 (h, w) of each resized image before padding (default: padded size).
            scale_factor: (N, 2) float32 (sy, sx) = resized / original (default: 1).
            targets: training only; per image dict(boxes=(M, 4) float32 xyxy in the network-input frame,
                labels=(M,) int64 in [0, num_classes)). M may be 0.

        Returns:
            train: dict(loss_cls, loss_box, loss_ctr, loss) of scalar tensors, ``loss`` being their sum.
            eval: (bboxes (K, 6) float32 [label, score, x1, y1, x2, y2] in original pixels, sorted by score per
            image, images in order; bbox_num (N,) int32).
        """
        cls_logits, bbox_reg, ctr_logits = self.forward_head(images)
        feat_sizes = [_feature_size(f) for f in cls_logits]
        image_size = _feature_size(images) if self.grid_strides else None
        points = compute_points(feat_sizes, self.strides, self.cfg.head.point_offset, image_size)
        if self.training:
            if targets is None:
                raise ValueError("FCOS.forward: targets are required in train mode (call model.eval() for inference)")
            if len(targets) != images.shape[0]:
                raise ValueError(f"FCOS.forward: {len(targets)} targets for a batch of {images.shape[0]} images")
            return self.losses(cls_logits, bbox_reg, ctr_logits, points, targets)
        if im_shape is None:
            shape = paddle.shape(images)
            hw = paddle.stack([shape[2], shape[3]]).astype("float32").reshape([1, 2])
            im_shape = paddle.tile(hw, [shape[0], 1])
        if scale_factor is None:
            scale_factor = paddle.ones_like(im_shape)
        return postprocess_detections(
            cls_logits,
            bbox_reg,
            ctr_logits,
            points,
            self.strides,
            im_shape,
            scale_factor,
            self.cfg.postprocess,
            self.cfg.head.norm_reg_targets,
        )

    def losses(
        self,
        cls_logits: list[paddle.Tensor],
        bbox_reg: list[paddle.Tensor],
        ctr_logits: list[paddle.Tensor],
        points: list[paddle.Tensor],
        targets: list[dict[str, paddle.Tensor]],
    ) -> dict[str, paddle.Tensor]:
        """Assign targets to the points and compute the three FCOS losses and their sum ``loss``."""
        labels, reg_targets = assign_targets(
            points, self.strides, targets, self.cfg.assigner, self.num_classes, self.cfg.head.norm_reg_targets
        )
        losses = fcos_losses(
            _flatten_levels(cls_logits, self.num_classes),
            _flatten_levels(bbox_reg, 4),
            _flatten_levels(ctr_logits, 1).squeeze(-1),
            labels,
            reg_targets,
            self.cfg.loss,
            self.num_classes,
            moving_fg=self.moving_fg,
        )
        out = dict(losses)
        out["loss"] = losses["loss_cls"] + losses["loss_box"] + losses["loss_ctr"]
        return out
