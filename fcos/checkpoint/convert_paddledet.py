"""PaddleDetection ``fcos_r50_fpn_multiscale_2x`` weights (0.x static names or 2.x dygraph names) -> our FCOS.

0.x (``fluid.save`` ``.pdparams`` or a ``save_persistables`` directory), ResNet-50 variant b:

* ``conv1_weights``, ``bn_conv1_{scale,offset}`` -> ``backbone.conv1`` / ``bn1``;
  ``res{n}{x}_branch2{a,b,c}_weights``, ``bn{n}{x}_branch2{a,b,c}_*`` -> ``backbone.layer{n-1}.{i}.conv{1,2,3}`` /
  ``bn{1,2,3}`` (block letter ``x`` = a, b, c, ... -> i = 0, 1, 2, ...; ``b1``.. for ResNet-101 res4);
  ``res{n}a_branch1_*`` -> ``downsample.0`` / ``downsample.1``. ``affine_channel`` norms have only scale and
  offset: the BN statistics are derived as mean 0, variance 1 - eps (exactly ``x * scale + offset``).
* ``fpn_inner_res5_sum_{w,b}``, ``fpn_inner_res{4,3}_sum_lateral_{w,b}`` -> ``fpn.lateral_convs.{2,1,0}``;
  ``fpn_res{3,4,5}_sum_{w,b}`` -> ``fpn.output_convs.{0,1,2}``; ``fpn_{6,7}_{w,b}`` -> ``fpn.p6`` / ``fpn.p7``.
* ``fcos_head_{cls,reg}_tower_conv_{i}_{weights,bias}`` / ``..._norm_{scale,offset}`` (GN) ->
  ``head.{cls,bbox}_tower.{3i}`` / ``{3i+1}``; ``fcos_head_{cls,reg,centerness}_*`` -> ``head.cls_logits`` /
  ``bbox_pred`` / ``ctrness``; ``{fpn_res3_sum, fpn_res4_sum, fpn_res5_sum, fpn_6, fpn_7}_scale_on_reg`` ->
  ``head.scales.{0..4}.scale`` (by level name: PaddleDetection lists the levels P7 first).

2.x: the same stems as sublayer names: ``backbone.conv1.conv1.{conv,norm}``,
``backbone.res{n}.res{n}{x}.{branch2a,branch2b,branch2c,short}.{conv,norm}``, ``neck.<fpn name>.{weight,bias}``,
``fcos_head.fcos_feat.<tower name>.{conv,norm}``, ``fcos_head.fcos_head_{cls,reg,centerness}``,
``fcos_head.p{3..7}_feat.scale_reg``.

Both take RGB 0-1 input normalised with the ImageNet mean/std (``configs/r50_ms_2x.yml``); a BGR config
gets the first conv's input channels swapped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Optional, Union

from fcos.checkpoint.convert_common import (
    IMAGENET_RGB_INPUT,
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

__all__ = ["PADDLEDET_RECIPE", "convert_paddledet"]

PADDLEDET_RECIPE = "r50_ms_2x"

_SCALE_LEVELS = {"fpn_res3_sum": 0, "fpn_res4_sum": 1, "fpn_res5_sum": 2, "fpn_6": 3, "fpn_7": 4}
_FPN_LATERAL = {"fpn_inner_res3_sum_lateral": 0, "fpn_inner_res4_sum_lateral": 1, "fpn_inner_res5_sum": 2}
_FPN_OUTPUT = {"fpn_res3_sum": 0, "fpn_res4_sum": 1, "fpn_res5_sum": 2}
_FPN_EXTRA = {"fpn_6": "p6", "fpn_7": "p7"}
_HEAD_PRED = {"fcos_head_cls": "cls_logits", "fcos_head_reg": "bbox_pred", "fcos_head_centerness": "ctrness"}
_TOWER = {"cls": "cls_tower", "reg": "bbox_tower"}
_BRANCH = {"branch2a": "conv1", "branch2b": "conv2", "branch2c": "conv3"}

# 0.x optimizer state saved next to the parameters by save_persistables
_OPTIMIZER_STATE = re.compile(r"(_velocity_\d+|_moment\d?_\d+|_beta\d_pow_acc_\d+)$|^learning_rate_\d+$|^@LR_DECAY")

# 0.x names
_V0_STEM_CONV = "conv1_weights"
_V0_CONV = re.compile(r"^res([2-5])([a-z]\d*)_(branch2[abc]|branch1)_weights$")
_V0_NORM = re.compile(r"^bn([2-5])([a-z]\d*)_(branch2[abc]|branch1)_(scale|offset|mean|variance)$")
_V0_STEM_NORM = re.compile(r"^bn_conv1_(scale|offset|mean|variance)$")
_V0_FPN = re.compile(r"^(fpn_inner_res5_sum|fpn_inner_res[34]_sum_lateral|fpn_res[345]_sum|fpn_[67])_([wb])$")
_V0_TOWER = re.compile(r"^fcos_head_(cls|reg)_tower_conv_(\d+)_(weights|bias|norm_scale|norm_offset)$")
_V0_PRED = re.compile(r"^(fcos_head_cls|fcos_head_reg|fcos_head_centerness)_(weights|bias)$")
_V0_SCALE = re.compile(r"^(fpn_res[345]_sum|fpn_[67])_scale_on_reg$")

# 2.x names
_V2_STEM = re.compile(r"^backbone\.conv1\.conv1\.(conv\.weight|norm\.(weight|bias|_mean|_variance))$")
_V2_BLOCK = re.compile(
    r"^backbone\.res([2-5])\.res\1([a-z]\d*)\.(branch2[abc]|short)\.(conv\.weight|norm\.(weight|bias|_mean|_variance))$"
)
_V2_FPN = re.compile(
    r"^neck\.(fpn_inner_res5_sum|fpn_inner_res[34]_sum_lateral|fpn_res[345]_sum|fpn_[67])\.(weight|bias)$"
)
_V2_TOWER = re.compile(r"^fcos_head\.fcos_feat\.fcos_head_(cls|reg)_tower_conv_(\d+)\.(conv|norm)\.(weight|bias)$")
_V2_PRED = re.compile(r"^fcos_head\.(fcos_head_cls|fcos_head_reg|fcos_head_centerness)\.(weight|bias)$")
_V2_SCALE = re.compile(r"^fcos_head\.p([3-7])_feat\.scale_reg$")

_NORM_SUFFIX_V0 = {"scale": "weight", "offset": "bias", "mean": "_mean", "variance": "_variance"}


def _block_index(letter: str) -> int:
    """PaddleDetection block name suffix -> index: ``a`` 0, ``b`` 1, ... and ``b1``, ``b2``, ... (R-101 res4)."""
    if len(letter) > 1:
        return int(letter[1:])
    return ord(letter) - ord("a")


def _unit_prefix(stage: str, letter: str, branch: str) -> tuple[str, str]:
    """(conv target, norm target) prefixes of a ResNet unit."""
    block = f"backbone.layer{int(stage) - 1}.{_block_index(letter)}."
    if branch in ("branch1", "short"):
        return block + "downsample.0", block + "downsample.1"
    conv = _BRANCH[branch]
    return block + conv, block + "bn" + conv[-1]


def _is_v2(state: Mapping[str, Any]) -> bool:
    return any(k.startswith(("backbone.", "neck.", "fcos_head.")) for k in state)


def convert_paddledet(
    src: Union[str, Mapping[str, Any]], cfg: Optional[Config] = None, name: Optional[str] = None
) -> Conversion:
    """Convert PaddleDetection FCOS R-50 weights (0.x or 2.x names; path or mapping) for ``cfg``
    (default ``configs/r50_ms_2x.yml``). Raises :class:`ConversionError` listing every problem."""
    state, name = source_state(src, name)
    if cfg is None:
        cfg = load_recipe(PADDLEDET_RECIPE)
    bb = cfg.model.backbone
    if bb.name != "resnet50" or bb.stride_in_1x1:
        raise ConversionError(
            f"{name}: PaddleDetection weights need model.backbone.name resnet50 with stride_in_1x1: false "
            f"(ResNet variant b), got {bb.name} stride_in_1x1={bb.stride_in_1x1}"
        )
    first_conv, note = first_conv_transform(IMAGENET_RGB_INPUT, cfg, name)
    mapper = StateMapper(state, name)
    if note:
        mapper.notes.append(note)
    version = "2.x" if _is_v2(state) else "0.x"
    mapper.notes.append(f"PaddleDetection {version} parameter names")
    norms: dict[str, dict[str, str]] = {}  # backbone norm target prefix -> {paddle suffix: source key}

    for key in state:
        if _OPTIMIZER_STATE.search(key):
            mapper.ignore(key, "optimizer state saved with the parameters")
            continue
        if version == "0.x":
            _map_v0(mapper, key, norms, first_conv)
        else:
            _map_v2(mapper, key, norms, first_conv)

    for prefix, parts in norms.items():
        if "weight" not in parts or "bias" not in parts:
            for src_key in parts.values():
                mapper.error(f"source key {src_key!r}: norm {prefix} lacks its scale or offset")
                mapper.ignore(src_key, "incomplete norm")
            continue
        frozen_affine(mapper, prefix, parts["weight"], parts["bias"], parts.get("_mean"), parts.get("_variance"))
        for suffix, src_key in parts.items():
            if suffix not in ("weight", "bias", "_mean", "_variance"):
                mapper.error(f"source key {src_key!r}: unknown norm tensor")
    return mapper.finish(model_target_shapes(cfg))


def _map_v0(mapper: StateMapper, key: str, norms: dict[str, dict[str, str]], first_conv: Any) -> None:
    if key == _V0_STEM_CONV:
        mapper.take(key, "backbone.conv1.weight", first_conv)
        return
    m = _V0_STEM_NORM.match(key)
    if m:
        norms.setdefault("backbone.bn1", {})[_NORM_SUFFIX_V0[m.group(1)]] = key
        return
    m = _V0_CONV.match(key)
    if m:
        conv, _ = _unit_prefix(*m.groups())
        mapper.take(key, conv + ".weight")
        return
    m = _V0_NORM.match(key)
    if m:
        stage, letter, branch, part = m.groups()
        _, norm = _unit_prefix(stage, letter, branch)
        norms.setdefault(norm, {})[_NORM_SUFFIX_V0[part]] = key
        return
    m = _V0_FPN.match(key)
    if m:
        mapper.take(key, _fpn_target(m.group(1)) + (".weight" if m.group(2) == "w" else ".bias"))
        return
    m = _V0_TOWER.match(key)
    if m:
        branch, i, part = m.group(1), int(m.group(2)), m.group(3)
        index = 3 * i + (1 if part.startswith("norm") else 0)
        what = "weight" if part in ("weights", "norm_scale") else "bias"
        mapper.take(key, f"head.{_TOWER[branch]}.{index}.{what}")
        return
    m = _V0_PRED.match(key)
    if m:
        mapper.take(key, f"head.{_HEAD_PRED[m.group(1)]}." + ("weight" if m.group(2) == "weights" else "bias"))
        return
    m = _V0_SCALE.match(key)
    if m:
        mapper.take(key, f"head.scales.{_SCALE_LEVELS[m.group(1)]}.scale", _as_vector)
        return
    # anything else is reported by finish()


def _map_v2(mapper: StateMapper, key: str, norms: dict[str, dict[str, str]], first_conv: Any) -> None:
    m = _V2_STEM.match(key)
    if m:
        if m.group(1) == "conv.weight":
            mapper.take(key, "backbone.conv1.weight", first_conv)
        else:
            norms.setdefault("backbone.bn1", {})[m.group(2)] = key
        return
    m = _V2_BLOCK.match(key)
    if m:
        stage, letter, branch, what, norm_part = m.groups()
        conv, norm = _unit_prefix(stage, letter, branch)
        if what == "conv.weight":
            mapper.take(key, conv + ".weight")
        else:
            norms.setdefault(norm, {})[norm_part] = key
        return
    m = _V2_FPN.match(key)
    if m:
        mapper.take(key, f"{_fpn_target(m.group(1))}.{m.group(2)}")
        return
    m = _V2_TOWER.match(key)
    if m:
        branch, i, part, what = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        mapper.take(key, f"head.{_TOWER[branch]}.{3 * i + (1 if part == 'norm' else 0)}.{what}")
        return
    m = _V2_PRED.match(key)
    if m:
        mapper.take(key, f"head.{_HEAD_PRED[m.group(1)]}.{m.group(2)}")
        return
    m = _V2_SCALE.match(key)
    if m:
        mapper.take(key, f"head.scales.{int(m.group(1)) - 3}.scale", _as_vector)
        return


def _fpn_target(stem: str) -> str:
    if stem in _FPN_LATERAL:
        return f"fpn.lateral_convs.{_FPN_LATERAL[stem]}"
    if stem in _FPN_OUTPUT:
        return f"fpn.output_convs.{_FPN_OUTPUT[stem]}"
    return f"fpn.{_FPN_EXTRA[stem]}"


def _as_vector(value: Any) -> Any:
    """Scales are stored as shape [1] (Paddle) or [] (some exports): always [1]."""
    return value.reshape([1]) if value.size == 1 else value
