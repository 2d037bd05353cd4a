"""timm ``dla34`` ImageNet weights -> the ``backbone.*`` keys of a DLA-34 recipe (numpy in, numpy out).

timm keeps the original DLA module tree (``base_layer.{0,1}``, ``level{0,1}.{0,1}``,
``level{2..5}.tree{1,2}...conv{1,2}/bn{1,2}``, ``root.conv/root.bn``, ``project.{0,1}``), which is ours, so
tensors map by name. Differences handled here:

* ``level3.project`` and ``level4.project`` (the projections of the two-level trees, unused at inference:
  their sub-trees discard the residual) are missing from timm's own module and from checkpoints saved from
  it; when absent they are derived as a zero conv + neutral BN (they get only zero gradients).
  Checkpoints that carry them (the original ucbdrive file) have them mapped.
* ``fc`` (the 1x1-conv ImageNet classifier) is ignored.
* timm DLA expects RGB in [0, 1] with ImageNet mean/std; the recipe's normalisation (rt_dla34: BGR 0-255
  minus the mean, std 1) is folded into ``base_layer.0`` (channel swap and scale).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fcos.checkpoint.convert_common import Conversion, ConversionError, StateMapper, bn_suffix, model_target_shapes
from fcos.checkpoint.convert_torchvision import TORCHVISION_INPUT, fold_input_normalization
from fcos.config import Config

__all__ = ["TIMM_DLA_INPUT", "convert_timm_dla34"]

TIMM_DLA_INPUT = TORCHVISION_INPUT  # timm's dla34 pretrained_cfg: RGB, [0, 1], ImageNet mean / std

_DLA34_LEVELS = [1, 1, 1, 2, 2, 1]
_DLA34_CHANNELS = [16, 32, 64, 128, 256, 512]
_UNUSED_PROJECTS = ("level3.project", "level4.project")


def _bn(m: StateMapper, src: str, dst: str) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        m.take(f"{src}.{name}", f"{dst}.{bn_suffix(name)}")
    if f"{src}.num_batches_tracked" in m.source:
        m.ignore(f"{src}.num_batches_tracked", "BatchNorm step counter (not a weight)")


def _conv_bn(m: StateMapper, conv: str, bn: str) -> None:
    m.take(f"{conv}.weight", f"backbone.{conv}.weight")
    _bn(m, bn, f"backbone.{bn}")


def _tree(m: StateMapper, prefix: str, levels: int, has_project: bool) -> None:
    """Keys of one ``Tree`` (see :class:`fcos.modeling.backbones.dla.Tree`)."""
    if levels == 1:
        for block in ("tree1", "tree2"):
            for i in (1, 2):
                _conv_bn(m, f"{prefix}.{block}.conv{i}", f"{prefix}.{block}.bn{i}")
        _conv_bn(m, f"{prefix}.root.conv", f"{prefix}.root.bn")
    else:
        _tree(m, f"{prefix}.tree1", levels - 1, has_project)
        _tree(m, f"{prefix}.tree2", levels - 1, False)
    if has_project:
        if f"{prefix}.project" in _UNUSED_PROJECTS and f"{prefix}.project.0.weight" not in m.source:
            _derive_unused_project(m, f"{prefix}.project")
        else:
            _conv_bn(m, f"{prefix}.project.0", f"{prefix}.project.1")


def _derive_unused_project(m: StateMapper, prefix: str) -> None:
    out_c, in_c = {"level3.project": (128, 64), "level4.project": (256, 128)}[prefix]
    reason = "not in timm's dla34 (unused at inference: the sub-tree discards this residual)"
    m.derive(f"backbone.{prefix}.0.weight", np.zeros([out_c, in_c, 1, 1], np.float32), reason)
    for name, value in (("weight", 1.0), ("bias", 0.0), ("_mean", 0.0), ("_variance", 1.0)):
        m.derive(f"backbone.{prefix}.1.{name}", np.full([out_c], value, np.float32), reason)


def convert_timm_dla34(src: Mapping[str, np.ndarray], cfg: Config) -> Conversion:
    """timm ``dla34`` state dict (bare keys, e.g. ``level2.tree1.conv1.weight``) -> ``backbone.*`` of ``build_model(cfg)``.

    ``cfg`` must be a DLA-34 recipe (``model.backbone.name: dla34`` with the DLA-34 levels and channels).
    Raises :class:`ConversionError` listing every unmapped, missing or mis-shaped tensor.
    """
    name = "timm dla34"
    bb = cfg.model.backbone
    if bb.name != "dla34" or list(bb.dla_levels) != _DLA34_LEVELS or list(bb.dla_channels) != _DLA34_CHANNELS:
        raise ConversionError(
            f"{name}: needs a DLA-34 recipe (model.backbone.name=dla34, dla_levels={_DLA34_LEVELS}, "
            f"dla_channels={_DLA34_CHANNELS}), got name={bb.name!r} dla_levels={list(bb.dla_levels)} "
            f"dla_channels={list(bb.dla_channels)}"
        )
    m = StateMapper(src, name)

    def fold(w: np.ndarray) -> np.ndarray:
        folded, notes = fold_input_normalization(w, TIMM_DLA_INPUT, cfg.input, key="base_layer.0.weight")
        m.notes.extend(notes)
        return folded

    m.take("base_layer.0.weight", "backbone.base_layer.0.weight", transform=fold)
    _bn(m, "base_layer.1", "backbone.base_layer.1")
    _conv_bn(m, "level0.0", "level0.1")
    _conv_bn(m, "level1.0", "level1.1")
    for level in range(2, 6):
        _tree(m, f"level{level}", _DLA34_LEVELS[level], has_project=True)
    for key in ("fc.weight", "fc.bias"):
        if key in m.source:
            m.ignore(key, "ImageNet classifier (not part of the detector)")
    return m.finish(model_target_shapes(cfg), only_prefix="backbone.")
