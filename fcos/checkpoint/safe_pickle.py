"""The one loader for every pickle-based file the project opens, without running pickled code.

``safe_load(path)`` reads

* Paddle ``paddle.save`` files (``.pdparams``, ``.pdopt``, pickle protocols 2-4, including the
  ``(builtins.eval, ("data", {"data": array}))`` form ``paddle.save`` uses for DenseTensors --
  recognised structurally, ``eval`` is never called -- and the ``name@@.i`` slices of big tensors),
* PyTorch ``torch.save`` files, both the zip format (``<name>/data.pkl`` + ``<name>/data/<key>``
  storages) and the legacy sequential format (magic number, protocol, sys info, pickle, storages),
  without importing torch,
* plain numpy pickles (Detectron / detectron2 ``.pkl``, PaddleDetection 0.x ``fluid.save``),
  including Python 2 pickles (``encoding="latin1"``),

and returns the same structure with every tensor as a ``numpy.ndarray``.

Only an allow-list of globals can be loaded: plain containers (dict, OrderedDict, list, tuple, set),
numpy array/dtype/scalar reconstruction and torch tensor/storage reconstruction, each mapped to a
function written here. Any other global (``os.system``, ``builtins.exec``, a class, ...) makes the
load fail with :class:`UnsafeFileError` naming the file and the global, before anything is called.
The objects handed to the pickle (storage types, tensor specs, function wrappers) are immutable
tuples, so the pickle's BUILD opcode cannot rewire them; tensor data is only ever read from the
file's own storage records with bounds checks.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

__all__ = ["UnsafeFileError", "safe_load", "safe_loads"]


class UnsafeFileError(pickle.UnpicklingError):
    """A pickle-based file refers to something other than tensors/arrays and plain containers."""


# --------------------------------------------------------------------------------------------
# Torch storages and tensors as plain data (immutable records)
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
}


def _itemsize(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


class _StorageType(NamedTuple):
    """Stand-in for a ``torch.<X>Storage`` class: only its name matters (the dtype comes from our table)."""

    name: str


class _StorageRef(NamedTuple):
    """A persistent id resolved: storage ``key`` (element dtype ``dtype``) seen from element ``offset``."""

    key: str
    dtype: str
    offset: int
    numel: int


class _TensorSpec(NamedTuple):
    """Result of ``torch._utils._rebuild_tensor_v2``: where the tensor's elements are; read after unpickling."""

    ref: _StorageRef
    storage_offset: int
    size: tuple
    stride: tuple


class _SafeCall(tuple):
    """An immutable wrapper around one function of this module (what ``find_class`` hands out)."""

    __slots__ = ()

    def __new__(cls, fn: Callable[..., Any]) -> _SafeCall:
        return super().__new__(cls, (fn,))

    def __call__(self, *args: Any) -> Any:
        return self[0](*args)


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise pickle.UnpicklingError(f"{what} must be an integer, got {type(value).__name__}")
    return int(value)


def _int_tuple(value: Any, what: str) -> tuple:
    if not isinstance(value, (tuple, list)):
        raise pickle.UnpicklingError(f"{what} must be a tuple, got {type(value).__name__}")
    return tuple(_int(v, what) for v in value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *rest: Any) -> _TensorSpec:
    """``torch._utils._rebuild_tensor_v2`` / ``_rebuild_tensor`` without torch."""
    if type(storage) is not _StorageRef:
        raise UnsafeFileError(f"tensor rebuilt from {type(storage).__name__}, expected a storage")
    size_t = _int_tuple(size, "tensor size")
    stride_t = _int_tuple(stride, "tensor stride")
    if len(size_t) != len(stride_t):
        raise pickle.UnpicklingError(f"tensor size {size_t} and stride {stride_t} differ in length")
    return _TensorSpec(storage, _int(storage_offset, "storage offset"), size_t, stride_t)


def _rebuild_parameter(data: Any, requires_grad: Any = None, backward_hooks: Any = None, *rest: Any) -> Any:
    """``torch._utils._rebuild_parameter[_with_state]``: a Parameter is just its data here."""
    if type(data) is not _TensorSpec:
        raise UnsafeFileError(f"parameter rebuilt from {type(data).__name__}, expected a tensor")
    return data


# --------------------------------------------------------------------------------------------
# numpy / builtins replacements
# --------------------------------------------------------------------------------------------


def _np_dtype(*args: Any) -> np.dtype:
    if not args or not isinstance(args[0], str):
        raise UnsafeFileError("numpy dtype must be given by a type string")
    dt = np.dtype(args[0])
    if dt.hasobject:
        raise UnsafeFileError(f"numpy dtype {dt} holds Python objects")
    return dt


def _checked_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafeFileError(f"array dtype {dtype!r:.80} is not a plain numeric dtype")
    return dtype


def _np_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise UnsafeFileError(f"array subtype {subtype!r:.80} is not numpy.ndarray")
    if not isinstance(dtype, (bytes, str)):
        raise UnsafeFileError("numpy _reconstruct expects a placeholder dtype code")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    """``numpy._core.numeric._frombuffer`` (pickle protocol 5)."""
    dt = _checked_dtype(dtype)
    if isinstance(buf, pickle.PickleBuffer):
        buf = buf.raw()
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise UnsafeFileError("numpy _frombuffer without an in-band byte buffer")
    if order not in ("C", "F"):
        raise pickle.UnpicklingError(f"array order {order!r:.20}")
    shape_t = _int_tuple(shape, "array shape")
    return np.frombuffer(bytes(buf), dtype=dt).reshape(shape_t, order=order).copy()


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    dt = _checked_dtype(dtype)
    if isinstance(data, str):  # Python 2 pickles: bytes decoded as latin1
        data = data.encode("latin1")
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafeFileError("numpy scalar without raw bytes")
    return np.frombuffer(bytes(data), dtype=dt, count=1)[0]


def _codecs_encode(text: Any, encoding: Any = "utf-8", *rest: Any) -> bytes:
    """``_codecs.encode`` as used by protocol-2 pickles of ``bytes``: (str, 'latin1') only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or rest:
        raise UnsafeFileError("_codecs.encode is only allowed as (str, 'latin1')")
    return text.encode("latin1")


def _paddle_eval(expr: Any, namespace: Any = None, *rest: Any) -> Any:
    """``paddle.save`` writes DenseTensors as ``eval('data', {'data': array})``: return the array, never eval."""
    if (
        expr == "data"
        and not rest
        and type(namespace) is dict
        and set(namespace) == {"data"}
        and isinstance(namespace["data"], np.ndarray)
    ):
        return namespace["data"]
    raise UnsafeFileError(f"builtins.eval called with {expr!r:.80}; only the paddle.save tensor form is allowed")


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
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("numpy", "ndarray"): np.ndarray,
}
# Functions written in this module, wrapped in an immutable :class:`_SafeCall`.
_SAFE_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("builtins", "eval"): _paddle_eval,
    ("__builtin__", "eval"): _paddle_eval,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}
_STORAGE_MODULES = ("torch", "torch.storage")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the allow-listed globals; torch persistent ids become :class:`_StorageRef`.

    ``storages`` (torch files only) collects ``key -> (dtype, numel)`` of every storage the pickle uses.
    """

    def __init__(self, file: Any, source: str, storages: Optional[dict[str, tuple[str, int]]] = None) -> None:
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
            return _StorageType(name)
        raise UnsafeFileError(
            f"{self.source}: refusing to load global '{module}.{name}': only tensors/arrays and plain "
            "containers are allowed (the file may run code when unpickled; re-save it as .safetensors)"
        )

    def persistent_load(self, pid: Any) -> Any:
        if self.storages is None:
            raise UnsafeFileError(f"{self.source}: unexpected persistent id {pid!r:.80} in a non-torch pickle")
        if type(pid) is not tuple or len(pid) not in (5, 6) or pid[0] != "storage":
            raise UnsafeFileError(f"{self.source}: unsupported persistent id {pid!r:.80}")
        stype, key, numel = pid[1], pid[2], _int(pid[4], "storage size")
        if type(stype) is not _StorageType or stype.name not in _TORCH_STORAGE_DTYPES:
            raise UnsafeFileError(f"{self.source}: persistent id names storage type {stype!r:.80}")
        if not isinstance(key, (str, int)) or numel < 0:
            raise pickle.UnpicklingError(f"{self.source}: malformed persistent id {pid!r:.80}")
        key, dtype = str(key), _TORCH_STORAGE_DTYPES[stype.name]
        known = self.storages.setdefault(key, (dtype, numel))
        if known != (dtype, numel):
            raise pickle.UnpicklingError(f"{self.source}: storage {key!r} is used with two dtypes or sizes")
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return _StorageRef(key, dtype, 0, numel)
        # legacy format: (view_key, offset, size) of a view into the root storage
        if type(view) is not tuple or len(view) != 3:
            raise pickle.UnpicklingError(f"{self.source}: malformed storage view {view!r:.80}")
        offset, size = _int(view[1], "view offset"), _int(view[2], "view size")
        if offset < 0 or size < 0 or offset + size > numel:
            raise pickle.UnpicklingError(f"{self.source}: storage view {view!r:.80} exceeds storage {key!r}")
        return _StorageRef(key, dtype, offset, size)


# --------------------------------------------------------------------------------------------
# Result handling
# --------------------------------------------------------------------------------------------


def _bytes_to_array(raw: bytes, dtype: str, little_endian: bool = True) -> np.ndarray:
    if dtype == "bfloat16":
        u16 = np.frombuffer(raw, dtype="<u2" if little_endian else ">u2").astype(np.uint32)
        return (u16 << 16).view(np.float32)
    dt = np.dtype(dtype).newbyteorder("<" if little_endian else ">")
    return np.frombuffer(raw, dtype=dt).astype(np.dtype(dtype))


def _materialize(spec: _TensorSpec, data: dict[str, np.ndarray], source: str) -> np.ndarray:
    ref = spec.ref
    base = data[ref.key][ref.offset : ref.offset + ref.numel]
    size, stride, offset = spec.size, spec.stride, spec.storage_offset
    if any(s < 0 for s in size) or any(st < 0 for st in stride) or offset < 0:
        raise pickle.UnpicklingError(f"{source}: tensor with negative size/stride/offset {size} {stride} {offset}")
    if 0 in size:
        return np.zeros(size, dtype=base.dtype)
    last = offset + sum((s - 1) * st for s, st in zip(size, stride))
    if last >= base.size:
        raise pickle.UnpicklingError(
            f"{source}: tensor (offset {offset}, size {size}, stride {stride}) exceeds its storage of "
            f"{base.size} elements"
        )
    item = base.itemsize
    view = np.lib.stride_tricks.as_strided(
        base[offset:], shape=size, strides=tuple(st * item for st in stride), writeable=False
    )
    return np.array(view, copy=True)


def _finalize(obj: Any, source: str, data: Optional[dict[str, np.ndarray]] = None, depth: int = 0) -> Any:
    """Turn tensor specs into arrays, refuse object arrays, merge Paddle's big-tensor slices."""
    if depth > 200:
        raise pickle.UnpicklingError(f"{source}: containers nested deeper than 200 levels")
    if type(obj) is _TensorSpec:
        if data is None:
            raise UnsafeFileError(f"{source}: torch tensor outside a torch file")
        return _materialize(obj, data, source)
    if type(obj) is _StorageRef:
        if data is None:
            raise UnsafeFileError(f"{source}: torch storage outside a torch file")
        return data[obj.key][obj.offset : obj.offset + obj.numel].copy()
    if type(obj) in (_StorageType, _SafeCall) or isinstance(obj, type):
        raise UnsafeFileError(f"{source}: the pickle returns a type or function ({obj!r:.80}), not data")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafeFileError(f"{source}: array of Python objects")
        return obj
    if isinstance(obj, dict):
        items = [(k, _finalize(v, source, data, depth + 1)) for k, v in obj.items()]
        out = OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
        return _merge_paddle_slices(out, source)
    if isinstance(obj, list):
        return [_finalize(v, source, data, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_finalize(v, source, data, depth + 1) for v in obj)
    if isinstance(obj, (set, frozenset)):
        return type(obj)(_finalize(v, source, data, depth + 1) for v in obj)
    return obj


def _merge_paddle_slices(d: dict, source: str) -> dict:
    """``paddle.save`` (protocol 2/3) splits tensors > 1 GB into ``name@@.i`` slices described by ``UnpackBigParamInfor@@``."""
    info = d.get("UnpackBigParamInfor@@")
    if not isinstance(info, dict):
        return d
    d = type(d)(d)
    del d["UnpackBigParamInfor@@"]
    for key, spec in info.items():
        try:
            parts = [d.pop(p) for p in spec["slices"]]
            d[key] = np.concatenate([np.asarray(p).ravel() for p in parts]).reshape(spec["OriginShape"])
        except (KeyError, TypeError, ValueError) as e:
            raise pickle.UnpicklingError(f"{source}: broken big-tensor slices for {key!r}: {e}") from e
    return d


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _load_torch_zip(path: str, zf: zipfile.ZipFile) -> Any:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise pickle.UnpicklingError(f"{path}: zip file is not a torch checkpoint (no single <name>/data.pkl)")
    prefix = pkl[0][: -len("data.pkl")]
    little = True
    if prefix + "byteorder" in names:
        little = zf.read(prefix + "byteorder").decode("ascii", "replace").strip() != "big"
    storages: dict[str, tuple[str, int]] = {}
    obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), path, storages).load()
    data: dict[str, np.ndarray] = {}
    for key, (dtype, numel) in storages.items():
        entry = f"{prefix}data/{key}"
        if entry not in names:
            raise pickle.UnpicklingError(f"{path}: storage {entry} is missing from the archive")
        nbytes = numel * _itemsize(dtype)
        raw = zf.read(entry)
        if len(raw) < nbytes:
            raise pickle.UnpicklingError(f"{path}: storage {entry} has {len(raw)} bytes, expected {nbytes}")
        data[key] = _bytes_to_array(raw[:nbytes], dtype, little)
    return _finalize(obj, path, data)


def _load_torch_legacy(path: str, f: Any) -> Any:
    magic = _RestrictedUnpickler(f, path).load()
    if magic != _TORCH_LEGACY_MAGIC:
        raise pickle.UnpicklingError(f"{path}: not a torch legacy checkpoint")
    _RestrictedUnpickler(f, path).load()  # protocol version
    sys_info = _RestrictedUnpickler(f, path).load()
    little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    storages: dict[str, tuple[str, int]] = {}
    obj = _RestrictedUnpickler(f, path, storages).load()
    keys = _RestrictedUnpickler(f, path).load()
    if not isinstance(keys, list):
        raise pickle.UnpicklingError(f"{path}: legacy storage key list is a {type(keys).__name__}")
    data: dict[str, np.ndarray] = {}
    for key in keys:
        key = str(key)
        if key not in storages:
            raise pickle.UnpicklingError(f"{path}: storage {key!r} listed but never referenced")
        dtype, numel = storages[key]
        header = f.read(8)
        if len(header) != 8:
            raise pickle.UnpicklingError(f"{path}: truncated storage {key!r}")
        (stored,) = struct.unpack("<q" if little else ">q", header)
        if stored != numel:
            raise pickle.UnpicklingError(f"{path}: storage {key!r} has {stored} elements, the pickle says {numel}")
        nbytes = numel * _itemsize(dtype)
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise pickle.UnpicklingError(f"{path}: truncated storage {key!r}")
        data[key] = _bytes_to_array(raw, dtype, little)
    missing = sorted(set(storages) - set(data))
    if missing:
        raise pickle.UnpicklingError(f"{path}: storages {missing[:5]} are referenced but not stored")
    return _finalize(obj, path, data)


_MALFORMED = (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error, RecursionError)


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Restricted unpickling of one in-memory pickle (numpy arrays and plain containers only)."""
    try:
        return _finalize(_RestrictedUnpickler(io.BytesIO(data), source).load(), source)
    except pickle.UnpicklingError:
        raise
    except _MALFORMED as e:
        raise pickle.UnpicklingError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from e


def safe_load(path: str) -> Any:
    """Load a pickle-based file (``.pdparams``, ``.pdopt``, ``.pth``, ``.pkl``) with tensors as numpy arrays.

    Raises :class:`UnsafeFileError` (message: file and offending global) for anything that is not
    tensors/arrays and plain containers; ``FileNotFoundError`` / ``pickle.UnpicklingError`` for
    missing or malformed files.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
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
    except UnsafeFileError as e:
        if path not in str(e):
            raise UnsafeFileError(f"{path}: {e}") from None
        raise
    except pickle.UnpicklingError:
        raise
    except _MALFORMED as e:
        raise pickle.UnpicklingError(f"{path}: not a readable pickle/torch file ({type(e).__name__}: {e})") from e
