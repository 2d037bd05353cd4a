"""Model weights on disk: a safetensors file plus JSON metadata, and a tolerant loader.

* :func:`save_weights` writes ``.safetensors`` (no pickle) atomically and durably; the metadata
  records what a user needs to run the weights: recipe, class names, COCO category ids, input
  normalisation and where the weights came from.
* :func:`read_weights` reads ``.safetensors`` (plain weights or trainer checkpoints), ``.npz``
  (``allow_pickle=False``) and pickle-based files (``.pdparams``, ``.pth``, ``.pkl``) through
  :func:`fcos.checkpoint.safe_pickle.safe_load`.
* :func:`load_weights` copies matching tensors into a ``paddle.nn.Layer`` and reports missing,
  unexpected and shape-mismatched keys instead of crashing (e.g. fine-tuning with another class
  count).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from fcos.checkpoint.safe_pickle import safe_load
from fcos.utils.files import default_file_mode

__all__ = [
    "LoadReport",
    "WeightsError",
    "TRAIN_CHECKPOINT_FORMAT",
    "WEIGHTS_FORMAT",
    "flatten_state",
    "load_weights",
    "read_weights",
    "save_weights",
    "write_file_atomic",
]

WEIGHTS_FORMAT = "fcos-weights"
TRAIN_CHECKPOINT_FORMAT = "fcos-train-checkpoint"


class WeightsError(ValueError):
    """A weights file cannot be read or does not fit the model; the message names the file and key."""


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_file_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync, ``os.replace``, fsync dir."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp creates 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _encode_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    """safetensors metadata is str -> str: non-strings (and strings that look like JSON) are JSON-encoded."""
    out: dict[str, str] = {}
    for k, v in metadata.items():
        if not isinstance(k, str):
            raise WeightsError(f"metadata key {k!r} must be a string")
        if isinstance(v, str):
            try:
                json.loads(v)
            except ValueError:
                out[k] = v  # plain text stays readable
                continue
        out[k] = json.dumps(v)
    return out


def _decode_metadata(raw: Optional[Mapping[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (raw or {}).items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def save_weights(path: str, state: Mapping[str, Any], metadata: Optional[Mapping[str, Any]] = None) -> None:
    """Write ``state`` (name -> array-like) to a ``.safetensors`` file with JSON-able ``metadata``.

    Typical metadata: ``recipe``, ``class_names``, ``category_ids``, ``input`` (channel_order, to_unit,
    mean, std), ``source``. ``format`` defaults to ``"fcos-weights"``.
    """
    from safetensors.numpy import save as st_save

    arrays: dict[str, np.ndarray] = {}
    for k, v in state.items():
        arr = _to_numpy(v)
        if arr.dtype.hasobject:
            raise WeightsError(f"{path}: tensor {k!r} has dtype object")
        arrays[k] = np.ascontiguousarray(arr)
    meta = dict(metadata or {})
    meta.setdefault("format", WEIGHTS_FORMAT)
    write_file_atomic(path, st_save(arrays, metadata=_encode_metadata(meta)))


def _to_numpy(v: Any) -> np.ndarray:
    if isinstance(v, np.ndarray):
        return v
    if hasattr(v, "numpy"):  # paddle.Tensor
        return np.asarray(v.numpy())
    return np.asarray(v)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def flatten_state(obj: Any, prefix: str = "") -> tuple[dict[str, np.ndarray], list[str]]:
    """Nested dicts of arrays -> flat ``{"a.b.c": array}``; also returns the names of non-array leaves."""
    arrays: dict[str, np.ndarray] = {}
    other: list[str] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            name = f"{prefix}{k}"
            if isinstance(v, np.ndarray):
                arrays[name] = v
            elif isinstance(v, Mapping):
                sub, sub_other = flatten_state(v, name + ".")
                arrays.update(sub)
                other.extend(sub_other)
            else:
                other.append(name)
    elif isinstance(obj, np.ndarray):
        arrays[prefix.rstrip(".") or "tensor"] = obj
    else:
        other.append(prefix.rstrip(".") or "<root>")
    return arrays, other


def _read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            metadata = _decode_metadata(f.metadata())
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise WeightsError(f"{path}: not a readable safetensors file: {e}") from e
    if metadata.get("format") == TRAIN_CHECKPOINT_FORMAT:
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        if not state:
            raise WeightsError(f"{path}: trainer checkpoint has no 'model.' tensors")
    return state, metadata


def _read_npz(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            state = {k: z[k] for k in z.files}
    except ValueError as e:
        raise WeightsError(f"{path}: npz with pickled objects is refused ({e})") from e
    metadata: dict[str, Any] = {}
    meta = state.pop("__metadata__", None)
    if meta is not None:
        metadata = json.loads(str(meta))
    return state, metadata


def _read_pickled(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    obj = safe_load(path)
    metadata: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        # detectron2 Checkpointer {"model": ...}, Detectron {"blobs": ...}, generic {"state_dict": ...}
        for key in ("model", "state_dict", "blobs"):
            if isinstance(obj.get(key), Mapping):
                metadata["container_key"] = key
                obj = obj[key]
                break
        obj = {k: v for k, v in obj.items() if k != "StructuredToParameterName@@"}
    state, other = flatten_state(obj)
    if other:
        metadata["non_tensor_keys"] = other
    if not state:
        raise WeightsError(f"{path}: no tensors found")
    return state, metadata


def read_weights(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a weights file into ``(state, metadata)`` with numpy arrays; never runs pickled code.

    Formats by suffix: ``.safetensors`` (trainer checkpoints -> their ``model.`` tensors), ``.npz``
    (``allow_pickle=False``; optional JSON ``__metadata__`` entry), anything else through the safe
    pickle loader (``.pdparams``, ``.pth``, ``.pkl``, ...).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise WeightsError(
            f"{path} is a directory; give a weights file (.safetensors, .npz, .pdparams, .pth, .pkl). "
            "Published checkpoints are converted with tools/convert_weights.py"
        )
    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {path}")
    lower = path.lower()
    if lower.endswith(".safetensors"):
        return _read_safetensors(path)
    if lower.endswith(".npz"):
        return _read_npz(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":  # safetensors: u64 header length, then the JSON header
        return _read_safetensors(path)
    return _read_pickled(path)


# --------------------------------------------------------------------------------------------
# Loading into a model
# --------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What :func:`load_weights` did. ``str(report)`` is a readable summary."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, file shape, model shape)
    metadata: dict[str, Any] = field(default_factory=dict)
    prefix_note: str = ""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def __str__(self) -> str:
        lines = [
            f"weights {self.source}: loaded {len(self.loaded)} tensors, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.shape_mismatch)} shape mismatches"
        ]
        if self.prefix_note:
            lines.append(f"  {self.prefix_note}")
        for k, fs, ms in self.shape_mismatch:
            lines.append(f"  shape mismatch (kept model init): {k}: file {list(fs)} vs model {list(ms)}")
        if self.missing:
            lines.append("  missing (kept model init): " + _abbrev(self.missing))
        if self.unexpected:
            lines.append("  unexpected (ignored): " + _abbrev(self.unexpected))
        return "\n".join(lines)


def _abbrev(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _adapt_prefix(state: dict[str, np.ndarray], model_keys: set[str]) -> tuple[dict[str, np.ndarray], str]:
    """If no key matches, try removing or adding one leading ``name.`` component (e.g. ``backbone.``)."""
    if not state or any(k in model_keys for k in state):
        return state, ""
    heads = {k.split(".", 1)[0] for k in state if "." in k}
    if len(heads) == 1:
        head = heads.pop()
        stripped = {k.split(".", 1)[1]: v for k, v in state.items() if "." in k}
        if any(k in model_keys for k in stripped):
            return stripped, f"removed the key prefix '{head}.' to match the model"
    model_heads = {k.split(".", 1)[0] for k in model_keys if "." in k}
    if len(model_heads) == 1:
        head = model_heads.pop()
        added = {f"{head}.{k}": v for k, v in state.items()}
        if any(k in model_keys for k in added):
            return added, f"added the key prefix '{head}.' to match the model"
    return state, ""


def load_weights(model: Any, path_or_state: Union[str, Mapping[str, Any]], strict: bool = False) -> LoadReport:
    """Copy tensors from a file or ``{name: array}`` into ``model`` (a ``paddle.nn.Layer``) by name.

    Tensors whose shape differs from the model's are skipped and reported (e.g. a head with another
    number of classes); missing and unexpected keys are reported. With ``strict=True`` any of these
    raises :class:`WeightsError` (after nothing has been changed).
    """
    if isinstance(path_or_state, (str, os.PathLike)):
        source = os.fspath(path_or_state)
        state, metadata = read_weights(source)
    else:
        source = "<state dict>"
        state = {k: _to_numpy(v) for k, v in path_or_state.items()}
        metadata = {}
    model_state = model.state_dict()
    state, note = _adapt_prefix(dict(state), set(model_state))
    report = LoadReport(source=source, metadata=metadata, prefix_note=note)
    to_set: dict[str, Any] = {}
    for key, param in model_state.items():
        if key not in state:
            report.missing.append(key)
            continue
        value = state[key]
        model_shape = tuple(param.shape)
        if tuple(value.shape) != model_shape:
            report.shape_mismatch.append((key, tuple(value.shape), model_shape))
            continue
        to_set[key] = value
    report.unexpected = [k for k in state if k not in model_state]
    if strict and not report.ok:
        raise WeightsError(str(report))
    for key, value in to_set.items():
        param = model_state[key]
        arr = np.asarray(value)
        target_dtype = _paddle_dtype_name(param)
        if target_dtype is not None and arr.dtype != np.dtype(target_dtype):
            arr = arr.astype(target_dtype)
        param.set_value(arr)
        report.loaded.append(key)
    return report


def _paddle_dtype_name(param: Any) -> Optional[str]:
    """numpy dtype name of a paddle tensor, or None for dtypes numpy lacks (bfloat16)."""
    name = str(param.dtype).replace("paddle.", "")
    try:
        np.dtype(name)
    except TypeError:
        return None
    return name
