"""One entry point for every checkpoint source: ``convert_file(source, input, output, config=None)``.

:data:`SOURCES` maps the ``--src`` names of ``tools/convert_weights.py`` to their converter and default
recipe. The input is read by :func:`fcos.checkpoint.weights.read_weights` (no pickled code runs); the
output is a ``.safetensors`` (or ``.npz``) file whose metadata records the recipe, class names, COCO
category ids and input normalisation, so ``-c CONFIG -w OUTPUT`` needs nothing else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from fcos.checkpoint.convert_common import (
    Conversion,
    ConversionError,
    load_recipe,
    recipe_name,
    source_state,
    weights_metadata,
)
from fcos.config import Config, load_config

__all__ = ["SOURCES", "Source", "convert_file"]

Converter = Callable[[dict[str, np.ndarray], Config, str], Conversion]


@dataclass(frozen=True)
class Source:
    """A checkpoint source: its converter ``(state, cfg, name) -> Conversion``, the recipe used when no
    config is given (None: detected from the keys) and whether it yields backbone weights only."""

    convert: Converter
    recipe: Optional[str]
    backbone_only: bool
    description: str


def _adelaidet(state: dict[str, np.ndarray], cfg: Config, name: str) -> Conversion:
    from fcos.checkpoint.convert_adelaidet import convert_adelaidet

    return convert_adelaidet(state, cfg, name=name)


def _paddledet(state: dict[str, np.ndarray], cfg: Config, name: str) -> Conversion:
    from fcos.checkpoint.convert_paddledet import convert_paddledet

    return convert_paddledet(state, cfg, name=name)


def _detectron2_r50(state: dict[str, np.ndarray], cfg: Config, name: str) -> Conversion:
    from fcos.checkpoint.convert_detectron2 import convert_detectron2_r50

    return convert_detectron2_r50(state, cfg, name=name)


def _torchvision_fcos(state: dict[str, np.ndarray], cfg: Config, name: str) -> Conversion:
    from fcos.checkpoint.convert_torchvision import convert_torchvision_fcos

    return convert_torchvision_fcos(state, cfg)


def _torchvision_resnet50(state: dict[str, np.ndarray], cfg: Config, name: str) -> Conversion:
    from fcos.checkpoint.convert_torchvision import convert_torchvision_resnet50

    return convert_torchvision_resnet50(state, cfg)


def _timm_dla34(state: dict[str, np.ndarray], cfg: Config, name: str) -> Conversion:
    from fcos.checkpoint.convert_timm import convert_timm_dla34

    return convert_timm_dla34(state, cfg)


SOURCES: dict[str, Source] = {
    "adelaidet": Source(_adelaidet, None, False, "AdelaiDet FCOS_RT_MS_{DLA_34,R_50}_4x_syncbn.pth"),
    "torchvision": Source(
        _torchvision_fcos,
        "tv_r50",
        False,
        "torchvision fcos_resnet50_fpn_coco-99b0c9b7.pth",
    ),
    "paddledet": Source(_paddledet, "r50_ms_2x", False, "PaddleDetection fcos_r50_fpn_multiscale_2x (0.x or 2.x)"),
    "timm-dla34": Source(_timm_dla34, "rt_dla34", True, "timm dla34 ImageNet weights"),
    "torchvision-resnet50": Source(
        _torchvision_resnet50,
        "tv_r50",
        True,
        "torchvision resnet50 ImageNet weights",
    ),
    "detectron2-r50": Source(_detectron2_r50, "rt_r50", True, "detectron2 ImageNet R-50.pkl (MSRA)"),
}


def _resolve_config(source: str, spec: Source, state: dict[str, np.ndarray], config: Any) -> Config:
    if isinstance(config, Config):
        return config
    if config:
        return load_config(os.fspath(config))
    recipe = spec.recipe
    if recipe is None:  # adelaidet: DLA-34 or R-50 from the keys
        from fcos.checkpoint.convert_adelaidet import adelaidet_recipe

        recipe = adelaidet_recipe(state)
    return load_recipe(recipe)


def _write_npz(path: str, state: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
    import io

    from fcos.checkpoint.weights import WEIGHTS_FORMAT, write_file_atomic

    metadata = {**metadata, "format": metadata.get("format", WEIGHTS_FORMAT)}
    buf = io.BytesIO()
    np.savez(buf, __metadata__=np.array(json.dumps(metadata)), **state)
    write_file_atomic(path, buf.getvalue())


def convert_file(source: str, input: str, output: str, config: Any = None) -> Conversion:
    """Convert checkpoint ``input`` of kind ``source`` (a key of :data:`SOURCES`) and write ``output``.

    ``config``: a :class:`~fcos.config.Config`, a YAML path, or None for the source's recipe (AdelaiDet:
    detected from the keys). ``output`` ending in ``.npz`` is written as npz (+ JSON ``__metadata__``),
    anything else as safetensors. Raises :class:`ConversionError` (nothing is written) when any source
    tensor is unaccounted for, any target is unfilled or any shape differs.
    """
    if source not in SOURCES:
        raise ConversionError(f"unknown source {source!r}; choose one of {sorted(SOURCES)}")
    spec = SOURCES[source]
    state, name = source_state(input)
    cfg = _resolve_config(source, spec, state, config)
    try:
        conv = spec.convert(state, cfg, name)
    except ConversionError as e:
        if name in str(e):
            raise
        raise ConversionError(f"{name}: {e}") from None
    conv.recipe = recipe_name(cfg)
    conv.backbone_only = conv.backbone_only or spec.backbone_only
    if conv.backbone_only:
        meta = weights_metadata(cfg, conv.recipe, f"{source}:{os.path.basename(input)}", extra={"backbone_only": True})
    else:
        from fcos.data.coco_names import default_category_ids, default_class_names

        n = cfg.model.num_classes
        names = conv.class_names or default_class_names(n, list(cfg.data.class_names) or None)
        ids = conv.category_ids or default_category_ids(n)
        meta = weights_metadata(cfg, conv.recipe, f"{source}:{os.path.basename(input)}", names, ids)
    meta["conversion"] = {
        "mapped": len(conv.mapped),
        "ignored": len(conv.ignored),
        "derived": len(conv.derived),
        "notes": list(conv.notes),
    }
    if output.lower().endswith(".npz"):
        _write_npz(output, conv.state, meta)
    else:
        from fcos.checkpoint.weights import save_weights

        save_weights(output, conv.state, meta)
    return conv
