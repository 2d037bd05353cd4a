"""Bookkeeping shared by the checkpoint converters: nothing is silently dropped.

A converter walks the source state dict and, for every source tensor, either maps it to a target
key (optionally transformed), or ignores it with a stated reason. Target tensors that have no
source (e.g. the running statistics of an affine-only frozen BN) are *derived* with a reason.
:meth:`StateMapper.finish` then checks the result against the Paddle model's state dict: every
source key accounted for, every target key filled exactly once, every shape equal. Any problem
raises :class:`ConversionError` with the full summary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from fcos.config import Config, config_to_dict

__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASS_NAMES",
    "Conversion",
    "ConversionError",
    "StateMapper",
    "model_target_shapes",
    "weights_metadata",
]

# The 80 COCO detection classes in contiguous-label order and their category ids.
COCO_CLASS_NAMES: list[str] = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]  # fmt: skip
COCO_CATEGORY_IDS: list[int] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
]  # fmt: skip


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

    def summary(self) -> str:
        lines = [
            f"converted {self.source}: {len(self.mapped)} mapped, {len(self.ignored)} ignored, "
            f"{len(self.derived)} derived, 0 missing, {len(self.state)} target tensors"
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
        return Conversion(self.source_name, ordered, self.mapped, self.ignored, self.derived, self.notes)


def bn_suffix(name: str) -> Optional[str]:
    """torch BN parameter name -> Paddle name (``running_mean`` -> ``_mean``); None for ``num_batches_tracked``."""
    return {"weight": "weight", "bias": "bias", "running_mean": "_mean", "running_var": "_variance"}.get(name)


def model_target_shapes(cfg: Config) -> dict[str, tuple]:
    """``{state_dict key: shape}`` of the Paddle model ``build_model(cfg)`` (the conversion target)."""
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
