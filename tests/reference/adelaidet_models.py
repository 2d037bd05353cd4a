"""AdelaiDet FCOS_RT models (detectron2 ``OneStageDetector``) with seeded random weights, in ``.venv-ref``.

* ``ADELAIDET_CONFIGS``: our recipe -> AdelaiDet config file (relative to the AdelaiDet tree).
* ``adelaidet_cfg(recipe)``: ``adet.config.get_cfg()`` + that file + ``MODEL.DEVICE cpu`` + plain ``BN`` for the
  SyncBN backbones (SyncBN needs a process group; the state-dict keys are the same).
* ``build_adelaidet_model(recipe, seed)``: ``detectron2.modeling.build_model(cfg)`` in eval mode, weights
  randomised by ``randomize_fcos`` so that scores spread and boxes have varied sizes.
* ``adelaidet_inputs(model, img_bgr)``: the reference's own network input for an image already at the test size
  (as ``ProposalNetwork.forward`` makes it: normalise, pad to the backbone's size divisibility) as numpy, with
  its image size.
* ``adelaidet_detections(model, img_bgr)``: the reference forward (``model([{"image", "height", "width"}])``,
  i.e. detector_postprocess at the input size) as ``{"boxes" (k, 4) xyxy, "scores" (k,), "labels" (k,)}``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from envs import import_adet

ADELAIDET_CONFIGS = {
    "rt_dla34": "configs/FCOS-Detection/FCOS_RT/MS_DLA_34_4x_syncbn.yaml",
    "rt_r50": "configs/FCOS-Detection/FCOS_RT/MS_R_50_4x_syncbn.yaml",
}


def adelaidet_src() -> str:
    """The AdelaiDet source tree (the parent of the imported ``adet`` package)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(import_adet().__file__)))


def adelaidet_cfg(recipe: str):
    """The detectron2 CfgNode of ``recipe`` ("rt_dla34" or "rt_r50") on CPU with plain BN."""
    import_adet()
    from adet.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(adelaidet_src(), ADELAIDET_CONFIGS[recipe]))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.DLA.NORM", "BN", "MODEL.RESNETS.NORM", "BN"])
    cfg.freeze()
    return cfg


def randomize_fcos(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN/FrozenBN statistics and affine parameters, GN affine, conv biases (FPN, towers), per-level
    scales (so a level mix-up shows) and predictors (no degenerate boxes, scores spread well below saturation, box sizes set per level)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(shape, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(shape, generator=gen) * (hi - lo) + lo

    def randn(shape, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std + mean

    head = model.proposal_generator.fcos_head
    predictors = {id(head.cls_logits), id(head.bbox_pred), id(head.ctrness)}
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "running_mean") and hasattr(m, "running_var"):  # BatchNorm2d, FrozenBatchNorm2d
                n = m.running_mean.shape[0]
                m.running_mean.copy_(randn(n, 0.1))
                m.running_var.copy_(rand(n, 0.75, 1.25))
                m.weight.copy_(rand(n, 0.75, 1.25))
                m.bias.copy_(randn(n, 0.1))
            elif isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(rand(m.num_channels, 0.75, 1.25))
                m.bias.copy_(randn(m.num_channels, 0.1))
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None and id(m) not in predictors:
                m.bias.copy_(randn(m.bias.shape, 0.05))
        # a low prior keeps the sigmoid unsaturated: the kept scores spread over ~0.45-0.8 instead of piling up at 0.95
        head.cls_logits.weight.copy_(randn(head.cls_logits.weight.shape, 0.03))
        head.cls_logits.bias.copy_(randn(head.cls_logits.bias.shape, 0.5, -4.5))
        head.bbox_pred.weight.copy_(randn(head.bbox_pred.weight.shape, 0.03))
        head.bbox_pred.bias.copy_(randn(head.bbox_pred.bias.shape, 0.5, 2.5))
        head.ctrness.weight.copy_(randn(head.ctrness.weight.shape, 0.03))
        head.ctrness.bias.copy_(randn(head.ctrness.bias.shape, 0.3))
        for scale in head.scales:
            scale.scale.copy_(rand(scale.scale.shape, 0.75, 1.25))


def build_adelaidet_model(recipe: str, seed: int = 0) -> torch.nn.Module:
    """The AdelaiDet ``OneStageDetector`` of ``recipe`` in eval mode with ``randomize_fcos(seed)`` weights."""
    from detectron2.modeling import build_model

    torch.manual_seed(seed)
    model = build_model(adelaidet_cfg(recipe))
    randomize_fcos(model, seed)
    return model.eval()


def adelaidet_inputs(model: torch.nn.Module, img_bgr: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """(1, 3, Hp, Wp) float32 network input (BGR minus the pixel mean, zero-padded) and the image's (h, w)."""
    from detectron2.structures import ImageList

    image = torch.from_numpy(np.ascontiguousarray(img_bgr.transpose(2, 0, 1)))
    with torch.no_grad():  # the first lines of ProposalNetwork.forward (detectron2/modeling/meta_arch/rcnn.py)
        images = ImageList.from_tensors(
            [(image.to(model.pixel_mean.device) - model.pixel_mean) / model.pixel_std],
            model.backbone.size_divisibility,
            padding_constraints=model.backbone.padding_constraints,
        )
    return images.tensor.numpy(), tuple(int(v) for v in images.image_sizes[0])


def adelaidet_detections(model: torch.nn.Module, img_bgr: np.ndarray) -> dict[str, np.ndarray]:
    """AdelaiDet's detections for an image already at the test size (postprocessed to that same size)."""
    h, w = img_bgr.shape[:2]
    image = torch.from_numpy(np.ascontiguousarray(img_bgr.transpose(2, 0, 1)))
    with torch.no_grad():
        inst = model([{"image": image, "height": h, "width": w}])[0]["instances"]
    return {
        "boxes": inst.pred_boxes.tensor.numpy(),
        "scores": inst.scores.numpy(),
        "labels": inst.pred_classes.numpy().astype(np.int64),
    }
