"""The reference side of the training-parity tests in ``.venv-ref``: AdelaiDet (detectron2) and torchvision.

* ``adelaidet_targets(recipe, batch, padded_hw)``: AdelaiDet's own ``FCOSOutputs._get_ground_truth`` on the
  points of ``adet.utils.comm.compute_locations`` -> labels (N, P), reg (N, P, 4) divided by the stride, ctr
  (N, P) from ``compute_ctrness_targets`` (0 at background), in our (image, level, y, x) order.
* ``adelaidet_step(model, batch, dtype)``: ``model.train(); losses = model(batched_inputs)`` of a copy of the
  reference model in ``dtype`` + backward of the summed losses: losses, the normalisers (foreground count,
  centerness sum, captured from ``FCOSOutputs.fcos_losses``), every parameter gradient, the frozen parameters and
  the normalised, padded network input (float32) that our model gets.
* ``torchvision_targets`` / ``torchvision_step``: the same through ``FCOS.compute_loss`` (``FCOSHead.compute_loss``).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from adelaidet_models import adelaidet_cfg
from envs import import_adet
from train_parity import TrainBatch, _feature_sizes


def _image_tensor(img_bgr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img_bgr.transpose(2, 0, 1)))


def _instances(batch: TrainBatch, i: int, dtype: torch.dtype) -> Any:
    from detectron2.structures import Boxes, Instances

    inst = Instances(batch.sizes[i])
    inst.gt_boxes = Boxes(torch.from_numpy(batch.boxes[i].reshape(-1, 4)).to(dtype))
    inst.gt_classes = torch.from_numpy(batch.labels[i])
    return inst


def _level_first_to_image_first(x: torch.Tensor, num_images: int, level_sizes: list[int]) -> np.ndarray:
    """(sum_l N*P_l, ...) in AdelaiDet's level, image, point order -> (N, P, ...) in ours (image, level, point)."""
    parts, beg = [], 0
    for n in level_sizes:
        parts.append(x[beg : beg + num_images * n].reshape(num_images, n, *x.shape[1:]))
        beg += num_images * n
    return torch.cat(parts, dim=1).numpy()


def adelaidet_targets(recipe: str, batch: TrainBatch, padded_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """AdelaiDet's training targets for ``batch`` on a padded input of ``padded_hw`` (see the module doc)."""
    import_adet()
    from adet.modeling.fcos.fcos_outputs import FCOSOutputs, compute_ctrness_targets
    from adet.utils.comm import compute_locations

    cfg = adelaidet_cfg(recipe)
    outputs = FCOSOutputs(cfg)
    strides = list(cfg.MODEL.FCOS.FPN_STRIDES)
    sizes = _feature_sizes(*padded_hw, strides)
    locations = [compute_locations(h, w, s, "cpu") for (h, w), s in zip(sizes, strides)]
    gt = [_instances(batch, i, torch.float32) for i in range(len(batch.images))]
    t = outputs._get_ground_truth(locations, gt)
    n = len(batch.images)
    level_sizes = [h * w for h, w in sizes]
    labels = _level_first_to_image_first(torch.cat([x.reshape(-1) for x in t["labels"]]), n, level_sizes)
    reg = _level_first_to_image_first(torch.cat([x.reshape(-1, 4) for x in t["reg_targets"]]), n, level_sizes)
    pos = labels != cfg.MODEL.FCOS.NUM_CLASSES
    ctr = np.zeros(labels.shape, np.float32)
    ctr[pos] = compute_ctrness_targets(torch.from_numpy(reg[pos])).numpy()
    return {"labels": labels.astype(np.int64), "reg": reg, "ctr": ctr, "level_sizes": np.asarray(level_sizes)}


def adelaidet_step(
    model: torch.nn.Module, batch: TrainBatch, dtype: torch.dtype, perturb: float = 0.0
) -> dict[str, Any]:
    """One AdelaiDet training forward + backward (see the module doc); ``perturb``: the normalised input scaled
    by 1 + perturb (through ``pixel_std``), for the spread of the reference's float32 gradients."""
    m = copy.deepcopy(model).to(dtype).train()
    if perturb:
        with torch.no_grad():
            m.pixel_std.div_(1.0 + perturb)
    outputs = m.proposal_generator.fcos_outputs
    captured: dict[str, Any] = {}
    original = outputs.fcos_losses

    def fcos_losses(instances):
        extras, losses = original(instances)
        captured["num_pos"] = int((instances.labels != outputs.num_classes).sum())
        captured["loss_denorm"] = float(extras["loss_denorm"])
        return extras, losses

    outputs.fcos_losses = fcos_losses
    inputs = [
        {"image": _image_tensor(im), "instances": _instances(batch, i, dtype)} for i, im in enumerate(batch.images)
    ]
    losses = m(inputs)
    sum(losses.values()).backward()
    with torch.no_grad():  # ProposalNetwork.forward's own preprocessing
        from detectron2.structures import ImageList

        images = ImageList.from_tensors(
            [(x["image"] - m.pixel_mean) / m.pixel_std for x in inputs],
            m.backbone.size_divisibility,
            padding_constraints=m.backbone.padding_constraints,
        )
    grads, frozen = {}, []
    for name, p in m.named_parameters():
        if not p.requires_grad:
            frozen.append(name)
            assert p.grad is None, name
        elif p.grad is not None:
            grads[name] = p.grad.double().numpy()
    return {
        "losses": {k: float(v) for k, v in losses.items()},
        "grads": grads,
        "frozen": frozen,
        "images": images.tensor.float().numpy(),
        "image_sizes": [tuple(s) for s in images.image_sizes],
        **captured,
    }


# ------------------------------------------------------------------------------------------------
# torchvision
# ------------------------------------------------------------------------------------------------


def torchvision_targets_and_losses(
    model: torch.nn.Module,
    images: np.ndarray,
    batch: TrainBatch,
    image_sizes: list[tuple[int, int]],
    dtype: Any,
    matched: Any = None,
) -> dict[str, Any]:
    """torchvision's ``FCOS`` training path without its transform (the input is already normalised and padded):
    backbone -> head -> anchor generator -> ``FCOS.compute_loss`` (matching) -> ``FCOSHead.compute_loss``, in a
    train-mode copy of ``model`` in ``dtype``, then backward of the summed losses. Returns ``losses``, ``grads``
    (reference names; cls_logits rows as the model has them), ``frozen``, ``targets`` (labels (N, P) contiguous
    0..79 with 80 = background, reg (N, P, 4) = ``box_coder.encode``, ctr (N, P) 0 at background) and
    ``num_foreground``, ``matched`` (the per-image matched box indices). Box labels are COCO category ids on the
    torchvision side. ``matched`` given: those indices replace the matching (the float64 run takes the float32
    run's: torchvision trains in float32, where it ranks boxes by float32(1e8 - area), and the float64 run only
    measures rounding)."""
    from torchvision.models.detection.image_list import ImageList

    from fcos.checkpoint.convert_common import COCO_CATEGORY_IDS

    m = copy.deepcopy(model).to(dtype).train()
    captured: dict[str, Any] = {}
    head_loss = m.head.compute_loss

    def compute_loss(targets, head_outputs, anchors, matched_idxs):
        if matched is not None:
            matched_idxs = [x.clone() for x in matched]
        captured["matched"] = [x.clone() for x in matched_idxs]
        captured["anchors"] = [a.clone() for a in anchors]
        return head_loss(targets, head_outputs, anchors, matched_idxs)

    m.head.compute_loss = compute_loss
    x = torch.from_numpy(images).to(dtype)
    image_list = ImageList(x, list(image_sizes))
    ids = torch.as_tensor(COCO_CATEGORY_IDS)
    targets = [
        {"boxes": torch.from_numpy(b.reshape(-1, 4)).to(dtype), "labels": ids[torch.from_numpy(lab)]}
        for b, lab in zip(batch.boxes, batch.labels)
    ]
    features = list(m.backbone(x).values())
    head_outputs = m.head(features)
    anchors = m.anchor_generator(image_list, features)
    num_anchors_per_level = [f.size(2) * f.size(3) for f in features]
    losses = m.compute_loss(targets, head_outputs, anchors, num_anchors_per_level)
    sum(losses.values()).backward()
    grads, frozen = {}, []
    for name, p in m.named_parameters():
        if not p.requires_grad:
            frozen.append(name)
            assert p.grad is None, name
        elif p.grad is not None:
            grads[name] = p.grad.double().numpy()
    # targets as FCOSHead.compute_loss forms them
    labels, regs, ctrs = [], [], []
    for t, matched, anchors_i in zip(targets, captured["matched"], captured["anchors"]):
        lab = torch.full(matched.shape, 80, dtype=torch.int64)
        box = torch.zeros((len(matched), 4), dtype=dtype)
        if len(t["labels"]):
            contiguous = torch.as_tensor([COCO_CATEGORY_IDS.index(int(c)) for c in t["labels"]])
            lab = torch.where(matched >= 0, contiguous[matched.clip(min=0)], lab)
            box = t["boxes"][matched.clip(min=0)]
        reg = m.head.box_coder.encode(anchors_i, box)
        lr, tb = reg[:, [0, 2]], reg[:, [1, 3]]
        ctr = torch.sqrt((lr.min(dim=-1)[0] / lr.max(dim=-1)[0]) * (tb.min(dim=-1)[0] / tb.max(dim=-1)[0]))
        pos = matched >= 0
        labels.append(lab)
        regs.append(torch.where(pos[:, None], reg, torch.zeros_like(reg)))
        ctrs.append(torch.where(pos, ctr, torch.zeros_like(ctr)))
    return {
        "losses": {k: float(v) for k, v in losses.items()},
        "grads": grads,
        "frozen": frozen,
        "targets": {
            "labels": torch.stack(labels).numpy(),
            "reg": torch.stack(regs).detach().float().numpy(),
            "ctr": torch.stack(ctrs).detach().float().numpy(),
            "level_sizes": np.asarray(num_anchors_per_level),
        },
        "num_foreground": int(sum(int((mi >= 0).sum()) for mi in captured["matched"])),
        "matched": captured["matched"],
    }
