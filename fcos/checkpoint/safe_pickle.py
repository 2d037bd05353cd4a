"""The one loader for every pickle-based file the project opens, without running pickled code.

``safe_load(path)`` reads

* Paddle ``paddle.save`` files (``.pdparams``, ``.pdopt``, any pickle protocol 2-4, including the
  ``(builtins.eval, ("data", {"data": array}))`` form that ``paddle.save`` uses for DenseTensors --
  recognised structurally, ``eval`` is never called),
* PyTorch ``torch.save`` files, both the zip format (``<name>/data.pkl`` + ``<name>/data/<key>``
  storages) and the legacy sequential format, without importing torch,
* plain numpy pickles (Detectron / detectron2 ``.pkl``, PaddleDetection 0.x ``fluid.save``),
  including Python 2 pickles,

and returns the same structure with every tensor as a ``numpy.ndarray``.

Only an allow-list of globals can be loaded: plain containers (dict, OrderedDict, list, tuple, set),
numpy array/dtype/scalar reconstruction and torch tensor/storage reconstruction, each mapped to a
function written here. Any other global (``os.system``, ``builtins.exec``, a class, ...) makes the
load fail with :class:`UnsafeFileError` naming the file and the global, before anything is called.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

__all__ = ["UnsafeFileError", "safe_load", "safe_loads"]


class UnsafeFileError(pickle.UnpicklingError):
    """A pickle-based file refers to something other than tensors/arrays and plain containers."""


# --------------------------------------------------------------------------------------------
# Torch storages and tensors as plain data
# --------------------------------------------------------------------------------------------

# torch storage class name -> numpy dtype of its elements ("bfloat16" is widened to float32 on read)
_TORCH_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "UntypedStorage": "uint8",
}


@dataclass
class _StorageType:
    """Stand-in for a ``torch.<X>Storage`` class (a fresh one per lookup): only its element dtype matters."""

    name: str
    dtype: str

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


@dataclass
class _Storage:
    """A torch storage: ``numel`` elements of ``stype``; ``data`` is filled once the bytes are read."""

    key: str
    stype: _StorageType
    numel: int
    data: Optional[np.ndarray] = None
    # legacy-format views: (root storage, element offset)
    root: Optional[_Storage] = None
    offset: int = 0

    def array(self) -> np.ndarray:
        if self.root is not None:
            base = self.root.array()
            return base[self.offset : self.offset + self.numel]
        if self.data is None:
            raise pickle.UnpicklingError(f"storage {self.key!r} has no data")
        return self.data


@dataclass
class _LazyTensor:
    """Result of ``torch._utils._rebuild_tensor_v2``; turned into an ndarray once storages are read."""

    storage: _Storage
    offset: int
    size: tuple
    stride: tuple
    extra: dict = field(default_factory=dict)

    def materialize(self) -> np.ndarray:
        base = self.storage.array()
        size = tuple(int(s) for s in self.size)
        stride = tuple(int(s) for s in self.stride)
        if len(size) != len(stride):
            raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} differ in length")
        numel = int(np.prod(size)) if size else 1
        if numel == 0:
            return np.zeros(size, dtype=base.dtype)
        last = self.offset + sum((s - 1) * st for s, st in zip(size, stride))
        if self.offset < 0 or any(st < 0 for st in stride) or last >= base.size:
            raise pickle.UnpicklingError(
                f"tensor (offset {self.offset}, size {size}, stride {stride}) exceeds its storage of {base.size} elements"
            )
        item = base.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[self.offset :], shape=size, strides=tuple(st * item for st in stride), writeable=False
        )
        return np.array(view, copy=True)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *rest: Any) -> _LazyTensor:
    """``torch._utils._rebuild_tensor_v2`` / ``_rebuild_tensor`` without torch."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"tensor rebuilt from {type(storage).__name__}, expected a storage")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        raise pickle.UnpicklingError("tensor size/stride must be tuples")
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, requires_grad: Any = None, backward_hooks: Any = None, *rest: Any) -> Any:
    """``torch._utils._rebuild_parameter[_with_state]``: a Parameter is just its data here."""
    return data


# --------------------------------------------------------------------------------------------
# numpy / builtins replacements
# --------------------------------------------------------------------------------------------


def _np_dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args)
    if dt.hasobject:
        raise UnsafeFileError(f"numpy dtype {dt} holds Python objects")
    return dt


def _np_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise UnsafeFileError(f"array subtype {subtype!r} is not numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, shape, _np_dtype(dtype))


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    dt = _np_dtype(dtype)
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafeFileError("numpy scalar without raw bytes")
    return np.frombuffer(bytes(data), dtype=dt, count=1)[0]


def _codecs_encode(text: Any, encoding: Any = "utf-8", *rest: Any) -> bytes:
    """``_codecs.encode`` as used by protocol-2 pickles of ``bytes``: (str, 'latin1') only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeFileError("_codecs.encode is only allowed as (str, 'latin1')")
    return text.encode("latin1")


def _paddle_eval(expr: Any, namespace: Any = None, *rest: Any) -> Any:
    """``paddle.save`` writes DenseTensors as ``eval('data', {'data': array})``: return the array, never eval."""
    if (
        expr == "data"
        and not rest
        and isinstance(namespace, dict)
        and set(namespace) == {"data"}
        and isinstance(namespace["data"], np.ndarray)
    ):
        return namespace["data"]
    raise UnsafeFileError(f"builtins.eval called with {expr!r:.80}; only the paddle.save tensor form is allowed")


class _SafeCall:
    """A fresh wrapper per lookup, so a pickle's BUILD opcode can only alter its own throwaway object."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


# Immutable builtin/C types: returned as they are.
_SAFE_TYPES: dict[tuple[str, str], type] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("numpy", "ndarray"): np.ndarray,
}
# Functions written in this module, wrapped in a fresh :class:`_SafeCall` per lookup.
_SAFE_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("builtins", "eval"): _paddle_eval,
    ("__builtin__", "eval"): _paddle_eval,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}
_STORAGE_MODULES = ("torch", "torch.storage")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the allow-listed globals; torch persistent ids become :class:`_Storage`."""

    def __init__(self, file: Any, source: str, storages: Optional[dict[str, _Storage]] = None) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source
        self.storages = storages  # None: persistent ids are refused (not a torch file)

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _SAFE_TYPES:
            return _SAFE_TYPES[key]
        if key in _SAFE_FUNCTIONS:
            return _SafeCall(_SAFE_FUNCTIONS[key])
        if module in _STORAGE_MODULES and name in _TORCH_STORAGE_DTYPES:
            return _StorageType(name, _TORCH_STORAGE_DTYPES[name])
        raise UnsafeFileError(
            f"{self.source}: refusing to load global '{module}.{name}': only tensors/arrays and plain "
            "containers are allowed (the file may run code when unpickled; re-save it as .safetensors)"
        )

    def persistent_load(self, pid: Any) -> Any:
        if self.storages is None:
            raise UnsafeFileError(f"{self.source}: unexpected persistent id {pid!r:.80} in a non-torch pickle")
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise UnsafeFileError(f"{self.source}: unsupported persistent id {pid!r:.80}")
        stype, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        if not isinstance(stype, _StorageType) or _TORCH_STORAGE_DTYPES.get(stype.name) != stype.dtype:
            raise UnsafeFileError(f"{self.source}: persistent id names storage type {stype!r:.80}")
        stype = _StorageType(stype.name, _TORCH_STORAGE_DTYPES[stype.name])  # detached from the pickle's object
        view = pid[5] if len(pid) > 5 else None
        root = self.storages.get(key)
        if root is None:
            root = _Storage(key, stype, numel)
            self.storages[key] = root
        if view is not None:  # legacy format: (view_key, offset, size)
            view_key, offset, size = view
            return _Storage(str(view_key), stype, int(size), root=root, offset=int(offset))
        if stype.dtype != root.stype.dtype:
            raise pickle.UnpicklingError(f"{self.source}: storage {key!r} is used with two dtypes")
        return root


# --------------------------------------------------------------------------------------------
# Result handling
# --------------------------------------------------------------------------------------------


def _bytes_to_array(raw: bytes, stype: _StorageType, little_endian: bool = True) -> np.ndarray:
    if stype.dtype == "bfloat16":
        u16 = np.frombuffer(raw, dtype="<u2" if little_endian else ">u2").astype(np.uint32)
        return (u16 << 16).view(np.float32)
    dt = np.dtype(stype.dtype).newbyteorder("<" if little_endian else ">")
    return np.frombuffer(raw, dtype=dt).astype(np.dtype(stype.dtype), copy=False)


def _finalize(obj: Any, source: str) -> Any:
    """Turn lazy tensors into arrays, refuse object arrays, drop Paddle bookkeeping keys."""
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, _Storage):
        return obj.array().copy()
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafeFileError(f"{source}: array of Python objects")
        return obj
    if isinstance(obj, dict):
        items = [(k, _finalize(v, source)) for k, v in obj.items()]
        out = OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
        return _merge_paddle_slices(out)
    if isinstance(obj, list):
        return [_finalize(v, source) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_finalize(v, source) for v in obj)
    if isinstance(obj, (set, frozenset)):
        return type(obj)(_finalize(v, source) for v in obj)
    return obj


def _merge_paddle_slices(d: dict) -> dict:
    """``paddle.save`` (protocol 2/3) splits tensors > 1 GB into ``name@@.i`` slices described by ``UnpackBigParamInfor@@``."""
    info = d.get("UnpackBigParamInfor@@")
    if not isinstance(info, dict):
        return d
    d = type(d)(d)
    del d["UnpackBigParamInfor@@"]
    for key, spec in info.items():
        parts = [d.pop(p) for p in spec["slices"]]
        d[key] = np.concatenate([np.asarray(p).ravel() for p in parts]).reshape(spec["OriginShape"])
    return d


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _load_torch_zip(path: str, zf: zipfile.ZipFile) -> Any:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise pickle.UnpicklingError(f"{path}: zip file is not a torch checkpoint (no single <name>/data.pkl)")
    prefix = pkl[0][: -len("data.pkl")]
    little = True
    if prefix + "byteorder" in names:
        little = zf.read(prefix + "byteorder").decode().strip() != "big"
    storages: dict[str, _Storage] = {}
    obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), path, storages).load()
    for key, st in storages.items():
        entry = f"{prefix}data/{key}"
        if entry not in names:
            raise pickle.UnpicklingError(f"{path}: storage {entry} is missing from the archive")
        raw = zf.read(entry)
        if len(raw) < st.numel * st.stype.itemsize:
            raise pickle.UnpicklingError(
                f"{path}: storage {entry} has {len(raw)} bytes, expected {st.numel * st.stype.itemsize}"
            )
        st.data = _bytes_to_array(raw[: st.numel * st.stype.itemsize], st.stype, little)
    return _finalize(obj, path)


def _load_torch_legacy(path: str, f: Any) -> Any:
    magic = _RestrictedUnpickler(f, path).load()
    if magic != _TORCH_LEGACY_MAGIC:
        raise pickle.UnpicklingError(f"{path}: not a torch legacy checkpoint")
    _RestrictedUnpickler(f, path).load()  # protocol version
    sys_info = _RestrictedUnpickler(f, path).load()
    little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    storages: dict[str, _Storage] = {}
    obj = _RestrictedUnpickler(f, path, storages).load()
    keys = _RestrictedUnpickler(f, path).load()
    for key in keys:
        st = storages.get(str(key))
        if st is None:
            raise pickle.UnpicklingError(f"{path}: storage {key!r} listed but never referenced")
        (numel,) = struct.unpack("<q" if little else ">q", f.read(8))
        nbytes = int(numel) * st.stype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise pickle.UnpicklingError(f"{path}: truncated storage {key!r}")
        st.data = _bytes_to_array(raw, st.stype, little)
    return _finalize(obj, path)


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Restricted unpickling of one in-memory pickle (numpy arrays and plain containers only)."""
    return _finalize(_RestrictedUnpickler(io.BytesIO(data), source).load(), source)


def safe_load(path: str) -> Any:
    """Load a pickle-based file (``.pdparams``, ``.pdopt``, ``.pth``, ``.pkl``) with tensors as numpy arrays.

    Raises :class:`UnsafeFileError` (message: file and offending global) for anything that is not
    tensors/arrays and plain containers; ``FileNotFoundError`` / ``pickle.UnpicklingError`` for
    missing or malformed files.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return _load_torch_zip(path, zf)
    with open(path, "rb") as f:
        head = f.read(512)
        f.seek(0)
        if len(head) >= 262 and head[257:262] == b"ustar":
            raise pickle.UnpicklingError(f"{path}: the tar-based torch format (torch < 0.4) is not supported")
        obj = _RestrictedUnpickler(f, path).load()
        if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
            f.seek(0)
            return _load_torch_legacy(path, f)
        return _finalize(obj, path)
