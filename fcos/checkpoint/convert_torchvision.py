"""torchvision checkpoints -> this project's Paddle state dicts (numpy in, numpy out; no torch needed).

* :func:`convert_torchvision_fcos`: ``fcos_resnet50_fpn`` (e.g. ``fcos_resnet50_fpn_coco-99b0c9b7.pth``) into
  ``configs/tv_r50.yml``. Its classifier has 91 rows indexed by COCO category id (0 = background, 11 unused
  ids); the 80 rows of the real categories become our contiguous classes 0..79.
* :func:`convert_torchvision_resnet50`: an ImageNet ``resnet50`` (``resnet50-0676ba61.pth`` / ``-11ad3fa6.pth``)
  into the ``backbone.*`` keys of any ResNet-50 recipe (``fc`` is dropped).

Both fold torchvision's input normalisation (RGB, /255, ImageNet mean/std) into the first conv when the
recipe normalises differently (see :func:`fold_input_normalization`), so the converted network sees the
same values whatever ``input.*`` says. Conv weights are OIHW in both frameworks; BatchNorm
``running_mean/var`` become ``_mean/_variance``; ``num_batches_tracked`` is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fcos.checkpoint.convert_common import (
    COCO_CATEGORY_IDS,
    Conversion,
    ConversionError,
    StateMapper,
    bn_suffix,
    model_target_shapes,
)
from fcos.config import Config, InputConfig

__all__ = [
    "TORCHVISION_INPUT",
    "convert_torchvision_fcos",
    "convert_torchvision_resnet50",
    "fold_input_normalization",
]

# What torchvision's ImageNet and detection models expect: RGB in [0, 1], ImageNet mean/std.
TORCHVISION_INPUT = InputConfig(
    channel_order="RGB", to_unit=True, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
)

_RESNET50_BLOCKS = (3, 4, 6, 3)
_TV_FCOS_CLASSES = 91


def _rgb_unit_affine(inp: InputConfig) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) with network input channel k = a[k] * value + b[k], where value is that channel's colour in [0, 1]
    and channels are ordered R, G, B (i.e. ``a``/``b`` are indexed by RGB colour, not by input channel)."""
    unit = 1.0 if inp.to_unit else 255.0  # pixel value in the recipe's units = unit * [0, 1] value
    mean = np.asarray(inp.mean, dtype=np.float64)
    std = np.asarray(inp.std, dtype=np.float64)
    if inp.channel_order == "BGR":
        mean, std = mean[::-1], std[::-1]
    return unit / std, -mean / std


def fold_input_normalization(
    weight: np.ndarray, source: InputConfig, target: InputConfig, key: str = "first conv"
) -> tuple[np.ndarray, list[str]]:
    """First-conv weight (O, 3, kh, kw) trained on ``source``-normalised input, rewritten for ``target`` input.

    Per colour c the source feeds x_s = a_s[c] * v + b_s[c] and the target x_t = a_t[c] * v + b_t[c] (v in
    [0, 1]). Then x_s = (a_s/a_t) * x_t + (b_s - b_t * a_s/a_t): an exact rewrite when the offset term is 0
    (same mean in different units, e.g. 0-255 BGR minus [103.53, 116.28, 123.675] vs ImageNet RGB mean), i.e.
    the input channels are reordered and scaled. A non-zero offset cannot be folded exactly (zero padding at
    the borders) and raises :class:`ConversionError` naming ``input.mean``. Returns (weight, notes).
    """
    a_s, b_s = _rgb_unit_affine(source)
    a_t, b_t = _rgb_unit_affine(target)
    ratio = a_s / a_t
    offset = b_s - b_t * ratio
    if np.any(np.abs(offset) > 1e-4 * np.maximum(1.0, np.abs(b_s))):
        raise ConversionError(
            f"{key}: cannot fold the input normalisation exactly: the weights expect {source.channel_order} "
            f"to_unit={source.to_unit} mean={list(source.mean)} std={list(source.std)} but input.mean={list(target.mean)} "
            f"(to_unit={target.to_unit}) is not the same mean; set input.mean accordingly"
        )
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 4 or w.shape[1] != 3:
        raise ConversionError(f"{key}: expected a (O, 3, kh, kw) first conv, got shape {list(w.shape)}")
    src_channel = {"RGB": [0, 1, 2], "BGR": [2, 1, 0]}  # colour (R, G, B) -> input channel index
    out = np.empty_like(w)
    for colour in range(3):
        out[:, src_channel[target.channel_order][colour]] = (
            w[:, src_channel[source.channel_order][colour]] * ratio[colour]
        )
    notes = []
    if source.channel_order != target.channel_order:
        notes.append(f"{key}: input channels swapped ({source.channel_order} weights, {target.channel_order} input)")
    if not np.allclose(ratio, 1.0, rtol=1e-6):
        notes.append(f"{key}: input scale folded into the weights (x{np.round(ratio, 6).tolist()} per R, G, B)")
    return out.astype(np.float32), notes


def _bn(m: StateMapper, src: str, dst: str) -> None:
    """Map a torch BatchNorm / FrozenBatchNorm2d (weight, bias, running_mean, running_var[, num_batches_tracked])."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        m.take(f"{src}.{name}", f"{dst}.{bn_suffix(name)}")
    if f"{src}.num_batches_tracked" in m.source:
        m.ignore(f"{src}.num_batches_tracked", "BatchNorm step counter (not a weight)")


def _resnet50_body(m: StateMapper, src: str, dst: str, first_conv: tuple[InputConfig, InputConfig]) -> None:
    """torchvision ResNet-50 body (conv1 .. layer4) under prefix ``src`` -> our ResNet under ``dst``."""
    m.take(f"{src}conv1.weight", f"{dst}conv1.weight", transform=lambda w: _fold(m, w, *first_conv))
    _bn(m, f"{src}bn1", f"{dst}bn1")
    for stage, blocks in enumerate(_RESNET50_BLOCKS, start=1):
        for b in range(blocks):
            s, d = f"{src}layer{stage}.{b}", f"{dst}layer{stage}.{b}"
            for i in (1, 2, 3):
                m.take(f"{s}.conv{i}.weight", f"{d}.conv{i}.weight")
                _bn(m, f"{s}.bn{i}", f"{d}.bn{i}")
            if b == 0:
                m.take(f"{s}.downsample.0.weight", f"{d}.downsample.0.weight")
                _bn(m, f"{s}.downsample.1", f"{d}.downsample.1")


def _fold(m: StateMapper, w: np.ndarray, source: InputConfig, target: InputConfig) -> np.ndarray:
    folded, notes = fold_input_normalization(w, source, target, key="conv1.weight")
    m.notes.extend(notes)
    return folded


def _check_resnet50(cfg: Config, source_name: str) -> None:
    bb = cfg.model.backbone
    if bb.name != "resnet50" or bb.depth != 50:
        raise ConversionError(
            f"{source_name}: needs a ResNet-50 recipe, but model.backbone.name={bb.name!r} depth={bb.depth}"
        )


def convert_torchvision_resnet50(src: Mapping[str, np.ndarray], cfg: Config) -> Conversion:
    """ImageNet ``torchvision.models.resnet50`` state dict -> ``backbone.*`` keys of ``build_model(cfg)``.

    ``src`` holds bare keys (``conv1.weight``, ``layer1.0.bn1.running_mean``, ``fc.weight``, ...). The
    classifier ``fc`` is ignored. Raises :class:`ConversionError` listing every unmapped, missing or
    mis-shaped tensor.
    """
    name = "torchvision resnet50"
    _check_resnet50(cfg, name)
    m = StateMapper(src, name)
    _resnet50_body(m, "", "backbone.", (TORCHVISION_INPUT, cfg.input))
    for key in ("fc.weight", "fc.bias"):
        if key in m.source:
            m.ignore(key, "ImageNet classifier (not part of the detector)")
    if cfg.model.backbone.stride_in_1x1:
        m.notes.append(
            "torchvision ResNet-50 puts the stride in the 3x3 conv but model.backbone.stride_in_1x1 is true: "
            "the weights load, yet the network differs from the one they were trained in"
        )
    return m.finish(model_target_shapes(cfg), only_prefix="backbone.")


def _fpn_conv(m: StateMapper, src: str, dst: str) -> None:
    """FPN conv: ``<src>.0.weight`` (Conv2dNormActivation, torchvision >= 0.13) or ``<src>.weight`` (older)."""
    inner = f"{src}.0" if f"{src}.0.weight" in m.source else src
    m.take(f"{inner}.weight", f"{dst}.weight")
    m.take(f"{inner}.bias", f"{dst}.bias")


def convert_torchvision_fcos(src: Mapping[str, np.ndarray], cfg: Config) -> Conversion:
    """``torchvision.models.detection.fcos_resnet50_fpn`` state dict -> ``build_model(cfg)`` state dict.

    ``cfg`` is ``configs/tv_r50.yml`` (or a variant: ResNet-50, P3-P7 from P5, 4-conv GN head). With
    ``model.num_classes`` 80 the classifier rows of the 80 COCO category ids are kept in
    :data:`~fcos.checkpoint.convert_common.COCO_CATEGORY_IDS` order; with 91 all rows are copied.
    torchvision has no per-level Scale: if the recipe has one (``head.use_scale``) it is set to 1.
    """
    name = "torchvision fcos_resnet50_fpn"
    _check_resnet50(cfg, name)
    mc = cfg.model
    if mc.fpn.num_extra_levels != 2 or mc.fpn.extra_source != "p5" or not mc.fpn.relu_before_extra:
        raise ConversionError(
            f"{name}: needs P3-P7 with P6 from P5 and ReLU before P7 (model.fpn.num_extra_levels=2, "
            f"extra_source=p5, relu_before_extra=true)"
        )
    if mc.head.num_share_convs != 0 or not mc.head.centerness_on_reg or mc.head.norm != "gn":
        raise ConversionError(
            f"{name}: needs model.head.num_share_convs=0, centerness_on_reg=true and norm=gn (torchvision's head)"
        )
    m = StateMapper(src, name)
    _resnet50_body(m, "backbone.body.", "backbone.", (TORCHVISION_INPUT, cfg.input))
    for level in range(3):
        _fpn_conv(m, f"backbone.fpn.inner_blocks.{level}", f"fpn.lateral_convs.{level}")
        _fpn_conv(m, f"backbone.fpn.layer_blocks.{level}", f"fpn.output_convs.{level}")
    for p in ("p6", "p7"):
        m.take(f"backbone.fpn.extra_blocks.{p}.weight", f"fpn.{p}.weight")
        m.take(f"backbone.fpn.extra_blocks.{p}.bias", f"fpn.{p}.bias")

    for src_head, dst_tower in (("classification_head", "cls_tower"), ("regression_head", "bbox_tower")):
        for i in range(mc.head.num_convs):
            for idx in (3 * i, 3 * i + 1):  # conv, GroupNorm (the ReLU at 3 * i + 2 has no tensors)
                m.take(f"head.{src_head}.conv.{idx}.weight", f"head.{dst_tower}.{idx}.weight")
                m.take(f"head.{src_head}.conv.{idx}.bias", f"head.{dst_tower}.{idx}.bias")

    rows = _class_rows(src, mc.num_classes, name)
    m.take("head.classification_head.cls_logits.weight", "head.cls_logits.weight", transform=lambda w: w[rows])
    m.take("head.classification_head.cls_logits.bias", "head.cls_logits.bias", transform=lambda b: b[rows])
    if mc.num_classes == 80:
        m.notes.append(
            "classifier: 91 COCO-id rows -> 80 contiguous classes (rows 0 'background' and the 10 unused "
            "ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 dropped)"
        )
    m.take("head.regression_head.bbox_reg.weight", "head.bbox_pred.weight")
    m.take("head.regression_head.bbox_reg.bias", "head.bbox_pred.bias")
    m.take("head.regression_head.bbox_ctrness.weight", "head.ctrness.weight")
    m.take("head.regression_head.bbox_ctrness.bias", "head.ctrness.bias")
    if mc.head.use_scale:
        for level in range(len(mc.strides)):
            m.derive(f"head.scales.{level}.scale", np.ones([1], np.float32), "torchvision has no per-level Scale")
    if not mc.head.grid_strides:
        m.notes.append(
            "model.head.grid_strides is off: P6/P7 points follow the nominal stride, not torchvision's "
            "padded-size // feature-size (differs on inputs that are not multiples of 128)"
        )
    return m.finish(model_target_shapes(cfg))


def _class_rows(src: Mapping[str, np.ndarray], num_classes: int, name: str) -> list[int]:
    key = "head.classification_head.cls_logits.bias"
    if key not in src:
        return []  # reported as a missing source key by the mapper
    rows = int(np.shape(src[key])[0])
    if rows != _TV_FCOS_CLASSES:
        raise ConversionError(f"{name}: {key} has {rows} classes, expected {_TV_FCOS_CLASSES} (COCO category ids)")
    if num_classes == 80:
        return list(COCO_CATEGORY_IDS)
    if num_classes == _TV_FCOS_CLASSES:
        return list(range(_TV_FCOS_CLASSES))
    raise ConversionError(
        f"{name}: model.num_classes must be 80 (COCO classes) or 91 (torchvision ids), got {num_classes}"
    )
