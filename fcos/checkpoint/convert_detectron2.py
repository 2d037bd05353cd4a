"""detectron2's ImageNet ResNet-50 (``R-50.pkl``, MSRA weights) -> our ResNet backbone (``backbone.*`` only).

The file is a pickle of numpy arrays, either Caffe2/Detectron blob names (``{"blobs": {...}}`` or flat) or
detectron2 names (``{"model": {...}, "__author__": ...}``); it is read by the restricted loader.

* Caffe2 names: ``conv1_w`` -> ``backbone.conv1.weight``; ``res_conv1_bn_{s,b}`` -> ``backbone.bn1``;
  ``res{n}_{b}_branch2{a,b,c}_w`` / ``_bn_{s,b}`` -> ``backbone.layer{n-1}.{b}.conv{1,2,3}`` / ``bn{1,2,3}``;
  ``res{n}_{b}_branch1_*`` -> ``downsample.0`` / ``downsample.1``. The BNs are affine-only (scale, bias):
  statistics are derived as mean 0, variance 1 - eps. ``fc1000_*`` (classifier), ``*_momentum`` (optimizer
  state) and ``conv1_b`` (a stem-conv bias detectron2 does not use) are ignored.
* detectron2 names (``stem.conv1``, ``res{n}.{b}.conv{i}``, ``shortcut``, ``.norm.*``) as for AdelaiDet R-50.

MSRA weights take BGR 0-255 input minus [103.53, 116.28, 123.675] and put the stride in the 1x1 conv
(``configs/rt_r50.yml``); an RGB config gets the first conv's input channels swapped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Optional, Union

from fcos.checkpoint.convert_adelaidet import d2_resnet_key
from fcos.checkpoint.convert_common import (
    D2_BGR_INPUT,
    NUM_BATCHES_TRACKED,
    TORCH_BN_SUFFIX,
    Conversion,
    ConversionError,
    StateMapper,
    first_conv_transform,
    frozen_affine,
    load_recipe,
    model_target_shapes,
    source_state,
)
from fcos.config import Config

__all__ = ["DETECTRON2_R50_RECIPE", "convert_detectron2_r50"]

DETECTRON2_R50_RECIPE = "rt_r50"

_C2_CONV = re.compile(r"^res([2-5])_(\d+)_(branch2[abc]|branch1)_w$")
_C2_NORM = re.compile(r"^(?:res([2-5])_(\d+)_(branch2[abc]|branch1)|res_conv1)_bn_(s|b|rm|riv)$")
_C2_SUFFIX = {"s": "weight", "b": "bias", "rm": "_mean", "riv": "_variance"}
_C2_IGNORE = {
    "fc1000_w": "ImageNet classifier",
    "fc1000_b": "ImageNet classifier",
    "pred_w": "ImageNet classifier",
    "pred_b": "ImageNet classifier",
    "conv1_b": "stem-conv bias that detectron2 does not use (the stem BN follows)",
}


def _unit(stage: str, block: str, branch: str) -> tuple[str, str]:
    prefix = f"backbone.layer{int(stage) - 1}.{int(block)}."
    if branch == "branch1":
        return prefix + "downsample.0", prefix + "downsample.1"
    i = "abc".index(branch[-1]) + 1
    return prefix + f"conv{i}", prefix + f"bn{i}"


def convert_detectron2_r50(
    src: Union[str, Mapping[str, Any]], cfg: Optional[Config] = None, name: Optional[str] = None
) -> Conversion:
    """Convert detectron2's ImageNet R-50 (path or mapping) into ``backbone.*`` tensors for ``cfg``
    (default ``configs/rt_r50.yml``). Raises :class:`ConversionError` listing every problem."""
    state, name = source_state(src, name)
    if cfg is None:
        cfg = load_recipe(DETECTRON2_R50_RECIPE)
    bb = cfg.model.backbone
    if bb.name != "resnet50" or not bb.stride_in_1x1:
        raise ConversionError(
            f"{name}: MSRA R-50 weights put the stride in the 1x1 conv; use a config with "
            f"model.backbone.name resnet50 and stride_in_1x1: true (configs/rt_r50.yml), got {bb.name} "
            f"stride_in_1x1={bb.stride_in_1x1}"
        )
    first_conv, note = first_conv_transform(D2_BGR_INPUT, cfg, name)
    mapper = StateMapper(state, name)
    if note:
        mapper.notes.append(note)
    c2_names = "conv1_w" in state
    norms: dict[str, dict[str, str]] = {}
    for key in state:
        if key.endswith("_momentum"):
            mapper.ignore(key, "optimizer state")
        elif key in _C2_IGNORE:
            mapper.ignore(key, _C2_IGNORE[key])
        elif c2_names:
            _map_c2(mapper, key, norms, first_conv)
        elif key.endswith("num_batches_tracked"):
            mapper.ignore(key, NUM_BATCHES_TRACKED)
        elif key.startswith("linear.") or key.startswith("fc."):
            mapper.ignore(key, "ImageNet classifier")
        else:
            path = key[len("backbone.bottom_up.") :] if key.startswith("backbone.bottom_up.") else key
            target = d2_resnet_key(path)
            if target is None:
                continue  # reported by finish()
            head, _, last = target.rpartition(".")
            target = f"{head}.{TORCH_BN_SUFFIX[last]}" if last in ("running_mean", "running_var") else target
            mapper.take(key, "backbone." + target, first_conv if target == "conv1.weight" else None)
    for prefix, parts in norms.items():
        if "weight" in parts and "bias" in parts:
            frozen_affine(mapper, prefix, parts["weight"], parts["bias"], parts.get("_mean"), parts.get("_variance"))
        else:
            for src_key in parts.values():
                mapper.ignore(src_key, "incomplete norm")
            mapper.error(f"norm {prefix}: source lacks its scale or bias ({sorted(parts.values())})")
    return mapper.finish(model_target_shapes(cfg), only_prefix="backbone.")


def _map_c2(mapper: StateMapper, key: str, norms: dict[str, dict[str, str]], first_conv: Any) -> None:
    if key == "conv1_w":
        mapper.take(key, "backbone.conv1.weight", first_conv)
        return
    m = _C2_CONV.match(key)
    if m:
        conv, _ = _unit(*m.groups())
        mapper.take(key, conv + ".weight")
        return
    m = _C2_NORM.match(key)
    if m:
        stage, block, branch, part = m.groups()
        prefix = "backbone.bn1" if stage is None else _unit(stage, block, branch)[1]
        norms.setdefault(prefix, {})[_C2_SUFFIX[part]] = key
