"""Bookkeeping shared by the checkpoint converters: nothing is silently dropped.

A converter walks the source state dict and, for every source tensor, either maps it to a target
key (optionally transformed), or ignores it with a stated reason. Target tensors that have no
source (e.g. the running statistics of an affine-only frozen BN) are *derived* with a reason.
:meth:`StateMapper.finish` then checks the result against the Paddle model's state dict: every
source key accounted for, every target key filled exactly once, every shape equal. Any problem
raises :class:`ConversionError` with the full summary.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np

from fcos.config import Config, config_to_dict
from fcos.data.coco_names import COCO_CATEGORY_IDS as _COCO_IDS
from fcos.data.coco_names import COCO_CLASS_NAMES as _COCO_NAMES

__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASS_NAMES",
    "Conversion",
    "ConversionError",
    "D2_BGR_INPUT",
    "IMAGENET_RGB_INPUT",
    "InputSpec",
    "StateMapper",
    "first_conv_transform",
    "frozen_affine",
    "load_recipe",
    "source_state",
    "model_target_shapes",
    "weights_metadata",
]

# Re-exported for converters: the 80 COCO classes in contiguous-label order and their category ids.
COCO_CLASS_NAMES: list[str] = list(_COCO_NAMES)
COCO_CATEGORY_IDS: list[int] = list(_COCO_IDS)


class ConversionError(ValueError):
    """The source checkpoint does not convert cleanly; the message lists every problem."""


Transform = Callable[[np.ndarray], np.ndarray]


@dataclass
class Conversion:
    """A finished conversion: target ``state`` plus the accounting of every key."""

    source: str
    state: dict[str, np.ndarray]
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (source key, target key)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (source key, reason)
    derived: list[tuple[str, str]] = field(default_factory=list)  # (target key, reason)
    notes: list[str] = field(default_factory=list)
    backbone_only: bool = False  # ImageNet backbone: only ``backbone.*`` targets
    recipe: str = ""  # config recipe the state fits (set by fcos.checkpoint.convert.convert_file)
    class_names: Optional[list[str]] = None  # per output class, when the source defines them
    category_ids: Optional[list[int]] = None  # dataset category id per output class (e.g. COCO ids)

    def summary(self) -> str:
        what = "backbone tensors" if self.backbone_only else "target tensors"
        lines = [
            f"converted {self.source}: {len(self.mapped)} mapped, {len(self.ignored)} ignored, "
            f"{len(self.derived)} derived, 0 missing, {len(self.state)} {what}"
            + (f" (recipe {self.recipe})" if self.recipe else "")
        ]
        for reason, keys in _group(self.ignored).items():
            lines.append(f"  ignored {len(keys)} ({reason}): {_abbrev(keys)}")
        for reason, keys in _group(self.derived).items():
            lines.append(f"  derived {len(keys)} ({reason}): {_abbrev(keys)}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _group(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, reason in pairs:
        out.setdefault(reason, []).append(key)
    return out


def _abbrev(keys: list[str], limit: int = 6) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


class StateMapper:
    """Collects the mapping of one source state dict onto target keys and checks it is complete."""

    def __init__(self, source: Mapping[str, np.ndarray], source_name: str) -> None:
        self.source = dict(source)
        self.source_name = source_name
        self.out: dict[str, np.ndarray] = {}
        self.origin: dict[str, str] = {}  # target key -> source key or "derived"
        self.mapped: list[tuple[str, str]] = []
        self.ignored: list[tuple[str, str]] = []
        self.derived: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self.errors: list[str] = []
        self._used: set[str] = set()

    def _mark(self, src: str) -> None:
        if src not in self.source:
            self.errors.append(f"source key {src!r} does not exist")
        elif src in self._used:
            self.errors.append(f"source key {src!r} used twice")
        self._used.add(src)

    def _put(self, dst: str, value: np.ndarray, origin: str) -> None:
        if dst in self.out:
            self.errors.append(f"target key {dst!r} filled twice (from {self.origin[dst]!r} and {origin!r})")
            return
        self.out[dst] = np.ascontiguousarray(np.asarray(value, dtype=np.float32))
        self.origin[dst] = origin

    def take(self, src: str, dst: str, transform: Optional[Transform] = None) -> None:
        """Map source tensor ``src`` to target ``dst`` (after ``transform``)."""
        self._mark(src)
        if src not in self.source:
            return
        value = np.asarray(self.source[src])
        if transform is not None:
            value = transform(value)
        self._put(dst, value, src)
        self.mapped.append((src, dst))

    def ignore(self, src: str, reason: str) -> None:
        """Declare that source tensor ``src`` has no place in the target (with the reason)."""
        self._mark(src)
        self.ignored.append((src, reason))

    def derive(self, dst: str, value: np.ndarray, reason: str) -> None:
        """Fill target ``dst`` without a source tensor (with the reason)."""
        self._put(dst, value, "derived")
        self.derived.append((dst, reason))

    def error(self, message: str) -> None:
        self.errors.append(message)

    def unused(self) -> list[str]:
        """Source keys neither mapped nor ignored so far."""
        return [k for k in self.source if k not in self._used]

    def finish(self, target_shapes: Mapping[str, tuple], only_prefix: str = "") -> Conversion:
        """Check the mapping against the model's ``{key: shape}``; raise :class:`ConversionError` on any problem.

        ``only_prefix`` restricts the target to keys starting with it (backbone-only conversions).
        """
        targets = {k: tuple(v) for k, v in target_shapes.items() if k.startswith(only_prefix)}
        errors = list(self.errors)
        for src in self.unused():
            errors.append(f"source key {src!r} {tuple(np.shape(self.source[src]))} is neither mapped nor ignored")
        for dst, value in self.out.items():
            if dst not in targets:
                errors.append(f"target key {dst!r} (from {self.origin[dst]!r}) does not exist in the model")
            elif tuple(value.shape) != targets[dst]:
                errors.append(
                    f"shape mismatch for {dst!r} (from {self.origin[dst]!r}): converted {list(value.shape)}, "
                    f"model {list(targets[dst])}"
                )
        missing = [k for k in targets if k not in self.out]
        errors.extend(f"target key {k!r} {list(targets[k])} is not filled" for k in missing)
        if errors:
            head = (
                f"{self.source_name}: conversion failed with {len(errors)} problem(s) "
                f"({len(self.mapped)} mapped, {len(self.ignored)} ignored, {len(missing)} missing):"
            )
            shown = errors[:60] + ([f"... {len(errors) - 60} more"] if len(errors) > 60 else [])
            raise ConversionError("\n  ".join([head, *shown]))
        ordered = {k: self.out[k] for k in targets}
        return Conversion(
            self.source_name,
            ordered,
            self.mapped,
            self.ignored,
            self.derived,
            self.notes,
            backbone_only=bool(only_prefix),
        )


def bn_suffix(name: str) -> Optional[str]:
    """torch BN parameter name -> Paddle name (``running_mean`` -> ``_mean``); None for ``num_batches_tracked``."""
    return {"weight": "weight", "bias": "bias", "running_mean": "_mean", "running_var": "_variance"}.get(name)


# detectron2 / torchvision BN tensor suffix -> Paddle suffix
TORCH_BN_SUFFIX: dict[str, str] = {
    "weight": "weight",
    "bias": "bias",
    "running_mean": "_mean",
    "running_var": "_variance",
}
NUM_BATCHES_TRACKED = "BN update counter (not used at inference)"


def frozen_affine(
    mapper: StateMapper,
    dst: str,
    scale: str,
    offset: str,
    mean: Optional[str] = None,
    var: Optional[str] = None,
    epsilon: float = 1e-5,
) -> None:
    """Fill the BN ``dst.{weight,bias,_mean,_variance}`` from an affine (scale, offset) or a full BN.

    An affine channel ``y = x * scale + offset`` (PaddleDetection ``affine_channel``, Caffe2 ``_bn_s/_b``)
    has no statistics: they are derived as mean 0 and variance ``1 - epsilon`` so the BN computes
    exactly ``x * scale + offset``. When the source has statistics (``mean``/``var`` present) they are used.
    """
    mapper.take(scale, f"{dst}.weight")
    mapper.take(offset, f"{dst}.bias")
    if mean is not None and var is not None and mean in mapper.source and var in mapper.source:
        mapper.take(mean, f"{dst}._mean")
        mapper.take(var, f"{dst}._variance")
        return
    n = int(np.shape(mapper.source[scale])[0]) if scale in mapper.source else 0
    reason = "affine-only norm: mean 0, variance 1 - eps (BN == x * scale + offset)"
    mapper.derive(f"{dst}._mean", np.zeros([n], np.float32), reason)
    mapper.derive(f"{dst}._variance", np.full([n], 1.0 - epsilon, np.float32), reason)


@dataclass(frozen=True)
class InputSpec:
    """The input a source checkpoint was trained with: channel order, /255 or not, mean and std (in that order)."""

    channel_order: str
    to_unit: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def describe(self) -> str:
        scale = "0-1" if self.to_unit else "0-255"
        return f"{self.channel_order} {scale}, mean {list(self.mean)}, std {list(self.std)}"


# detectron2 / AdelaiDet / MSRA Caffe2 models: BGR 0-255 minus the mean, std 1.
D2_BGR_INPUT = InputSpec("BGR", False, (103.53, 116.28, 123.675), (1.0, 1.0, 1.0))
# torchvision / PaddleDetection / timm ImageNet models: RGB 0-1, ImageNet mean and std.
IMAGENET_RGB_INPUT = InputSpec("RGB", True, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _same(a: Any, b: Any) -> bool:
    return np.allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-4, atol=1e-6)


def first_conv_transform(source: InputSpec, cfg: Config, where: str) -> tuple[Optional[Transform], str]:
    """How to adapt the first conv (O, 3, kh, kw) to ``cfg.input``: (None, "") when the input matches,
    (swap input channels 0 <-> 2, note) when only the channel order differs.

    Any other difference (scale, mean, std) cannot be folded exactly into a zero-padded conv: raises
    :class:`ConversionError` naming ``where`` and both normalisations.
    """
    inp = cfg.input
    order = str(inp.channel_order).upper()
    target = InputSpec(order, bool(inp.to_unit), tuple(inp.mean), tuple(inp.std))
    if order not in ("RGB", "BGR"):
        raise ConversionError(f"{where}: config input.channel_order must be RGB or BGR, got {inp.channel_order!r}")
    swap = order != source.channel_order
    mean, std = (source.mean[::-1], source.std[::-1]) if swap else (source.mean, source.std)
    if target.to_unit != source.to_unit or not _same(target.mean, mean) or not _same(target.std, std):
        raise ConversionError(
            f"{where}: the weights expect input {source.describe()} but the config's input section is "
            f"{target.describe()}; use a config whose input section matches (only the channel order may "
            "differ: the first conv's input channels are then swapped)"
        )
    if not swap:
        return None, ""
    note = (
        f"first conv input channels swapped ({source.channel_order} -> {order}) so the model takes "
        f"{order} input with mean {list(target.mean)}"
    )
    return (lambda w: np.ascontiguousarray(w[:, ::-1])), note


def check_pixel_stats(mapper: StateMapper, source: InputSpec, mean_key: str, std_key: str) -> None:
    """Ignore detectron2's ``pixel_mean``/``pixel_std`` buffers after checking they equal ``source``."""
    for key, expected in ((mean_key, source.mean), (std_key, source.std)):
        if key not in mapper.source:
            continue
        value = np.asarray(mapper.source[key], np.float64).reshape(-1)
        if value.size != 3 or not _same(value, expected):
            mapper.error(f"source key {key!r} is {value.tolist()} but these weights are converted for {list(expected)}")
            mapper.ignore(key, "input normalisation buffer (checked against the config)")
        else:
            mapper.ignore(key, "input normalisation buffer (equal to the config's input section)")


def repo_config_path(recipe: str) -> str:
    """``configs/<recipe>.yml`` of this repository (the package is installed editable from the checkout)."""
    import fcos

    root = os.path.dirname(os.path.dirname(os.path.abspath(fcos.__file__)))
    return os.path.join(root, "configs", f"{recipe}.yml")


def load_recipe(recipe: str) -> Config:
    """The config ``configs/<recipe>.yml``; :class:`ConversionError` if it cannot be found."""
    from fcos.config import load_config

    path = repo_config_path(recipe)
    if not os.path.isfile(path):
        raise ConversionError(f"recipe config {path} not found; pass --config explicitly")
    return load_config(path)


def recipe_name(cfg: Config) -> str:
    """Recipe name of a config: its file name without extension (``configs/rt_dla34.yml`` -> ``rt_dla34``)."""
    src = getattr(cfg, "source", "") or ""
    return os.path.splitext(os.path.basename(src))[0] if src else "custom"


def source_state(src: Union[str, Mapping[str, Any]], name: Optional[str] = None) -> tuple[dict[str, np.ndarray], str]:
    """``(flat {key: array}, name)`` of a converter input: a path read by
    :func:`fcos.checkpoint.weights.read_weights` (never runs pickled code; unwraps ``{"model": ...}``)
    or an already-read mapping."""
    if isinstance(src, (str, os.PathLike)):
        from fcos.checkpoint.weights import read_weights

        state, _ = read_weights(os.fspath(src))
        return state, name or os.fspath(src)
    return {k: np.asarray(v) for k, v in src.items()}, name or "<state dict>"


_SHAPES_CACHE: dict[str, dict[str, tuple]] = {}


def model_target_shapes(cfg: Config) -> dict[str, tuple]:
    """``{state_dict key: shape}`` of the Paddle model ``build_model(cfg)`` (the conversion target).

    Cached per model section (building a model takes seconds)."""
    import json

    cache_key = json.dumps(config_to_dict(cfg)["model"], sort_keys=True, default=str)
    if cache_key not in _SHAPES_CACHE:
        _SHAPES_CACHE[cache_key] = _build_target_shapes(cfg)
    return dict(_SHAPES_CACHE[cache_key])


def _build_target_shapes(cfg: Config) -> dict[str, tuple]:
    import paddle

    from fcos.modeling import build_model

    cfg_no_pretrained = cfg
    if cfg.model.backbone.pretrained:
        import copy

        cfg_no_pretrained = copy.deepcopy(cfg)
        cfg_no_pretrained.model.backbone.pretrained = None
    with paddle.no_grad():
        model = build_model(cfg_no_pretrained)
    return {k: tuple(int(s) for s in v.shape) for k, v in model.state_dict().items()}


def weights_metadata(
    cfg: Config,
    recipe: str,
    source: str,
    class_names: Optional[list[str]] = None,
    category_ids: Optional[list[int]] = None,
    extra: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Metadata stored with converted weights: enough to run them with only ``-c CONFIG -w FILE``."""
    inp = cfg.input
    meta: dict[str, Any] = {
        "recipe": recipe,
        "source": source,
        "num_classes": cfg.model.num_classes,
        "input": {
            "channel_order": inp.channel_order,
            "to_unit": inp.to_unit,
            "mean": list(inp.mean),
            "std": list(inp.std),
            "test_short": inp.test_short,
            "test_max": inp.test_max,
            "size_divisor": inp.size_divisor,
        },
        "model": config_to_dict(cfg)["model"],
    }
    if class_names is not None:
        meta["class_names"] = list(class_names)
    if category_ids is not None:
        meta["category_ids"] = [int(c) for c in category_ids]
    if extra:
        meta.update(extra)
    return meta
