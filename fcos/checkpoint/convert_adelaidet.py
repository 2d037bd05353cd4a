"""AdelaiDet FCOS checkpoints (``FCOS_RT_MS_DLA_34_4x_syncbn.pth``, ``FCOS_RT_MS_R_50_4x_syncbn.pth``) -> our FCOS.

Source keys (detectron2 module names; flat state dict or ``{"model": ...}``):

* ``backbone.fpn_lateral{3,4,5}`` / ``backbone.fpn_output{3,4,5}`` -> ``fpn.lateral_convs.{0,1,2}`` /
  ``fpn.output_convs.{0,1,2}``; ``backbone.top_block.p6/p7`` (P6/P7 models) -> ``fpn.p6/p7``.
* DLA-34 ``backbone.bottom_up.<path>`` -> ``backbone.<path>`` (same module tree).
* R-50 ``backbone.bottom_up.stem.conv1`` -> ``backbone.conv1`` / ``bn1``; ``res{n}.{b}.conv{i}`` ->
  ``backbone.layer{n-1}.{b}.conv{i}`` / ``bn{i}``; ``shortcut`` -> ``downsample.0`` / ``downsample.1``.
* ``proposal_generator.fcos_head.<path>`` -> ``head.<path>`` (towers, predictors, per-level BN);
  ``scales.{l}.scale`` -> ``head.scales.{l}.scale``: both index P3 first, so the order is kept.
* BN ``running_mean/var`` -> ``_mean/_variance``; ``num_batches_tracked`` and ``pixel_mean/std`` ignored.

The weights expect BGR 0-255 minus [103.53, 116.28, 123.675] (std 1); an RGB config gets the first conv's
input channels swapped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Optional, Union

from fcos.checkpoint.convert_common import (
    D2_BGR_INPUT,
    NUM_BATCHES_TRACKED,
    TORCH_BN_SUFFIX,
    Conversion,
    ConversionError,
    StateMapper,
    check_pixel_stats,
    first_conv_transform,
    load_recipe,
    model_target_shapes,
    source_state,
)
from fcos.config import Config

__all__ = ["adelaidet_recipe", "convert_adelaidet", "d2_resnet_key"]

_BOTTOM_UP = "backbone.bottom_up."
_HEAD = "proposal_generator.fcos_head."
_FPN = re.compile(r"^backbone\.fpn_(lateral|output)([345])\.(weight|bias)$")
_TOP = re.compile(r"^backbone\.top_block\.(p6|p7)\.(weight|bias)$")
_R50_STEM = re.compile(r"^stem\.conv1\.(weight|norm\.(\w+))$")
_R50_BLOCK = re.compile(r"^res([2-5])\.(\d+)\.(conv[123]|shortcut)\.(weight|norm\.(\w+))$")


def adelaidet_recipe(state: Mapping[str, Any]) -> str:
    """``rt_dla34`` or ``rt_r50`` from the backbone keys of an AdelaiDet state dict."""
    if any(k.startswith(_BOTTOM_UP + "level") for k in state):
        return "rt_dla34"
    if any(k.startswith(_BOTTOM_UP + "res2.") for k in state):
        return "rt_r50"
    raise ConversionError(
        "not an AdelaiDet FCOS checkpoint: no 'backbone.bottom_up.level*' (DLA-34) or "
        "'backbone.bottom_up.res2.*' (R-50) keys"
    )


def _norm_target(suffix: str) -> Optional[str]:
    """``weight``/``running_mean``/... -> Paddle suffix; None for ``num_batches_tracked`` / unknown."""
    return TORCH_BN_SUFFIX.get(suffix)


def _map_tensor(mapper: StateMapper, key: str, dst: str, transform: Any = None) -> None:
    """Map ``key`` to ``dst`` where ``dst`` may end in a torch BN suffix that needs renaming."""
    head, _, last = dst.rpartition(".")
    if last == "num_batches_tracked":
        mapper.ignore(key, NUM_BATCHES_TRACKED)
        return
    if last in ("running_mean", "running_var"):
        dst = f"{head}.{_norm_target(last)}"
    mapper.take(key, dst, transform)


def d2_resnet_key(path: str) -> Optional[str]:
    """detectron2 ResNet path (below ``bottom_up.``) -> our ResNet key (below ``backbone.``)."""
    m = _R50_STEM.match(path)
    if m:
        return "conv1.weight" if m.group(1) == "weight" else f"bn1.{m.group(2)}"
    m = _R50_BLOCK.match(path)
    if m:
        stage, block, unit, what, norm_part = m.groups()
        prefix = f"layer{int(stage) - 1}.{block}."
        if unit == "shortcut":
            return prefix + ("downsample.0.weight" if what == "weight" else f"downsample.1.{norm_part}")
        i = unit[-1]
        return prefix + (f"conv{i}.weight" if what == "weight" else f"bn{i}.{norm_part}")
    return None


def convert_adelaidet(
    src: Union[str, Mapping[str, Any]], cfg: Optional[Config] = None, name: Optional[str] = None
) -> Conversion:
    """Convert an AdelaiDet FCOS state dict (path or mapping) for ``cfg`` (default: the recipe the keys imply).

    Raises :class:`ConversionError` listing every unmapped source key, unfilled target and shape mismatch.
    """
    state, name = source_state(src, name)
    recipe = adelaidet_recipe(state)
    if cfg is None:
        cfg = load_recipe(recipe)
    backbone = cfg.model.backbone.name
    expected = {"rt_dla34": "dla34", "rt_r50": "resnet50"}[recipe]
    if backbone != expected:
        raise ConversionError(f"{name}: AdelaiDet {recipe} weights need model.backbone.name {expected}, got {backbone}")
    if recipe == "rt_r50" and not cfg.model.backbone.stride_in_1x1:
        raise ConversionError(
            f"{name}: AdelaiDet R-50 (MSRA) weights put the stride in the 1x1 conv; "
            "set model.backbone.stride_in_1x1: true (configs/rt_r50.yml)"
        )
    first_conv, note = first_conv_transform(D2_BGR_INPUT, cfg, name)
    first_src = _BOTTOM_UP + ("base_layer.0.weight" if recipe == "rt_dla34" else "stem.conv1.weight")

    mapper = StateMapper(state, name)
    if note:
        mapper.notes.append(note)
    check_pixel_stats(mapper, D2_BGR_INPUT, "pixel_mean", "pixel_std")
    for key in state:
        if key in ("pixel_mean", "pixel_std"):
            continue
        transform = first_conv if key == first_src else None
        m = _FPN.match(key)
        if m:
            kind, level, what = m.groups()
            layer = "lateral_convs" if kind == "lateral" else "output_convs"
            mapper.take(key, f"fpn.{layer}.{int(level) - 3}.{what}")
            continue
        m = _TOP.match(key)
        if m:
            mapper.take(key, f"fpn.{m.group(1)}.{m.group(2)}")
            continue
        if key.startswith(_BOTTOM_UP):
            path = key[len(_BOTTOM_UP) :]
            if path.endswith("num_batches_tracked"):
                mapper.ignore(key, NUM_BATCHES_TRACKED)
                continue
            target = path if recipe == "rt_dla34" else d2_resnet_key(path)
            if target is not None:
                _map_tensor(mapper, key, "backbone." + target, transform)
            continue  # unknown backbone keys are reported by finish()
        if key.startswith(_HEAD):
            _map_tensor(mapper, key, "head." + key[len(_HEAD) :])
    conv = mapper.finish(model_target_shapes(cfg))
    return conv
