"""PaddleDetection training-parity tasks for ``ppdet_worker.py`` (run in ``.venv-ppdet``; see ``ppdet_client.py``).

* ``train_step(ctx, name, dtype, num_images, image_<i>, gt_bbox_<i>, gt_class_<i>)``: one training step of a
  copy of the model ``name`` (built by ``ppdet_tasks.build_fcos``) in ``dtype``, exactly as PaddleDetection's
  train reader and trainer feed it: the images (each (3, h, w) float32, already normalised) go through the
  config's ``PadBatch`` and ``Gt2FCOSTarget`` batch operators (instantiated from its TrainReader section), the
  model in train mode returns its loss dict (``FCOSHead.get_loss`` -> ``FCOSLoss``), ``loss`` is back-propagated.
  Returns ``loss_<term>`` values (the float64 run gets FCOSLoss's float32 one-hot labels in float64, the only
  change needed for it to run), the targets per level ``labels<l>`` / ``reg_target<l>`` / ``centerness<l>``
  (N, h_l, w_l, c) as the operator made them, the padded ``image`` and ``grad/<parameter name>`` arrays, plus
  ``frozen`` (parameters with ``stop_gradient``) and ``empty_images`` (see below).

``Gt2FCOSTarget`` cannot take an image without boxes (``points2gtarea.min(axis=1)`` of a (P, 0) array raises;
PaddleDetection's COCO reader never yields one: ``allow_empty`` is False), so such an image gets the
all-background targets (labels 0, reg_target 0, centerness 0) that the loss would see for it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from ppdet_tasks import FCOS_R50_MS_2X, PPDET_SRC, _model


def _train_reader_op(cfg: Any, name: str) -> dict:
    for op in cfg["TrainReader"]["batch_transforms"]:
        if name in op:
            return dict(op[name] or {})
    raise KeyError(f"{name} not in TrainReader.batch_transforms")


def train_step(ctx: dict, name: str = "fcos", dtype: str = "float32", num_images: int = 0, **arrays: Any) -> dict:
    import paddle
    from ppdet.core.workspace import create, load_config
    from ppdet.data.transform.batch_operators import Gt2FCOSTarget, PadBatch

    cfg = load_config(os.path.join(PPDET_SRC, FCOS_R50_MS_2X))
    samples = []
    for i in range(num_images):
        samples.append(
            {
                "image": arrays[f"image_{i}"].astype(np.float32),
                "gt_bbox": arrays[f"gt_bbox_{i}"].astype(np.float32).reshape(-1, 4),
                "gt_class": arrays[f"gt_class_{i}"].astype(np.int32).reshape(-1, 1),
            }
        )
    samples = PadBatch(**_train_reader_op(cfg, "PadBatch"))(samples)
    fcos_target = Gt2FCOSTarget(**_train_reader_op(cfg, "Gt2FCOSTarget"))
    empty = [i for i, s in enumerate(samples) if len(s["gt_bbox"]) == 0]
    with_boxes = fcos_target([s for s in samples if len(s["gt_bbox"])])
    num_levels = len(fcos_target.downsample_ratios)
    reference = with_boxes[0] if with_boxes else None
    for i in empty:
        s = samples[i]
        for lvl in range(num_levels):
            h, w = reference[f"labels{lvl}"].shape[:2]
            s[f"labels{lvl}"] = np.zeros((h, w, 1), np.int32)
            s[f"reg_target{lvl}"] = np.zeros((h, w, 4), np.float32)
            s[f"centerness{lvl}"] = np.zeros((h, w, 1), np.float32)
        s.pop("gt_bbox")
        s.pop("gt_class")
    out: dict[str, Any] = {"empty_images": empty}
    inputs = {"image": np.stack([s["image"] for s in samples])}
    for lvl in range(num_levels):
        for key in (f"labels{lvl}", f"reg_target{lvl}", f"centerness{lvl}"):
            inputs[key] = np.stack([s[key] for s in samples])
            out[key] = inputs[key]
    out["image"] = inputs["image"]

    model = create(cfg.architecture)
    model.set_state_dict(_model(ctx, name).state_dict())
    if dtype != "float32":
        model.to(dtype=dtype)
    model.train()
    feed = {}
    for k, v in inputs.items():
        if k == "image" or k.startswith("reg_target") or k.startswith("centerness"):
            v = v.astype(dtype)
        feed[k] = paddle.to_tensor(v)
    feed["im_shape"] = paddle.to_tensor(np.asarray([s["image"].shape[1:] for s in samples], dtype))
    feed["scale_factor"] = paddle.ones([num_images, 2], dtype=dtype)
    paddle.set_default_dtype(dtype)
    one_hot = paddle.nn.functional.one_hot
    if dtype != "float32":
        # FCOSLoss one-hot encodes the labels with F.one_hot, always float32, which sigmoid_focal_loss refuses
        # next to float64 logits: in the float64 run only, the one-hot comes in the run's dtype
        paddle.nn.functional.one_hot = lambda x, num_classes, name=None: one_hot(x, num_classes).astype(dtype)
    try:
        losses = model(feed)
        losses["loss"].backward()
    finally:
        paddle.set_default_dtype("float32")
        paddle.nn.functional.one_hot = one_hot
    for k, v in losses.items():
        out[f"loss_{k}" if not k.startswith("loss") else k] = float(v)
    frozen = []
    for pname, p in model.named_parameters():
        if p.stop_gradient:
            frozen.append(pname)
        elif p.grad is not None:
            out[f"grad/{pname}"] = p.grad.numpy().astype(np.float64)
    out["frozen"] = frozen
    return out
