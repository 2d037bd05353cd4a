"""The restricted loader: malicious pickles are refused at every entry point, benign torch/paddle/numpy
files load with exact values, and no code path unpickles outside ``safe_pickle.py``.

Torch files are written here without torch: ``TorchWriter`` emits the zip format (``archive/data.pkl``
with persistent ids + ``archive/data/<key>`` raw storages) and the legacy format (magic, protocol, sys
info, pickle, storage keys, raw storages) from numpy storages. Other test files import it.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from fcos.checkpoint.safe_pickle import UnsafeFileError, safe_load, safe_loads
from fcos.checkpoint.weights import load_weights, read_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --------------------------------------------------------------------------------------------
# A torch-free writer of torch.save files
# --------------------------------------------------------------------------------------------

_STORAGE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class Global:
    """Written as the pickle GLOBAL opcode ``module\\nname`` (no import needed)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's save_reduce insists on a callable; never called
        raise AssertionError("Global markers are only written")


class Storage:
    """A flat numpy array standing for a torch storage with key ``key``."""

    def __init__(self, key: str, data: np.ndarray) -> None:
        self.key, self.data = key, np.ascontiguousarray(data).reshape(-1)


class Tensor:
    """A tensor view (``offset``, ``size``, ``stride`` in elements) into a :class:`Storage`."""

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    @classmethod
    def of(cls, key: str, array: np.ndarray) -> Tensor:
        a = np.ascontiguousarray(array)
        strides = tuple(s // a.itemsize for s in a.strides) if a.ndim else ()
        return cls(Storage(key, a), 0, a.shape, strides)

    def expected(self) -> np.ndarray:
        """The values torch would give: element [i] = storage[offset + sum(i_k * stride_k)] (plain loops)."""
        out = np.empty(self.size, dtype=self.storage.data.dtype)
        for idx in np.ndindex(*self.size):
            out[idx] = self.storage.data[self.offset + sum(i * s for i, s in zip(idx, self.stride))]
        return out


class _TorchPickler(pickle._Pickler):
    """Pure-python pickler that writes :class:`Global` markers as GLOBAL and tensors as torch does."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, legacy: bool) -> None:
        super().__init__(file, protocol=2)
        self.legacy = legacy
        self.storages: dict[str, Storage] = {}

    def _save_global_marker(self, obj: Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))

    dispatch[Global] = _save_global_marker

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            self.storages.setdefault(obj.key, obj)
            stype = Global("torch", _STORAGE_NAMES[obj.data.dtype])
            pid = ("storage", stype, obj.key, "cpu", int(obj.data.size))
            return pid + (None,) if self.legacy else pid
        return None

    def reducer_override(self, obj):
        if isinstance(obj, Tensor):
            args = (obj.storage, obj.offset, obj.size, obj.stride, False, OrderedDict())
            return Global("torch._utils", "_rebuild_tensor_v2"), args
        if isinstance(obj, StateDict):  # OrderedDict with torch's ``_metadata`` attribute (BUILD)
            return (Global("collections", "OrderedDict"), (), {"_metadata": obj.metadata}, None, iter(obj.items()))
        return NotImplemented


class StateDict(OrderedDict):
    """An OrderedDict pickled like torch's state dicts (with a ``_metadata`` attribute)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.metadata = OrderedDict([("", {"version": 1})])


def write_torch_zip(path: str, obj, prefix: str = "archive") -> None:
    """``torch.save(obj, path)`` (zip format) for objects made of dicts/lists/:class:`Tensor`."""
    buf = io.BytesIO()
    pickler = _TorchPickler(buf, legacy=False)
    pickler.dump(obj)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", buf.getvalue())
        zf.writestr(f"{prefix}/byteorder", "little")
        for key, st in pickler.storages.items():
            zf.writestr(f"{prefix}/data/{key}", st.data.astype(st.data.dtype.newbyteorder("<")).tobytes())
        zf.writestr(f"{prefix}/version", "3\n")


def write_torch_legacy(path: str, obj) -> None:
    """``torch.save(obj, path, _use_new_zipfile_serialization=False)`` without torch."""
    with open(path, "wb") as f:
        for header in (TORCH_LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        pickler = _TorchPickler(f, legacy=True)
        pickler.dump(obj)
        keys = list(pickler.storages)
        pickle.dump(keys, f, protocol=2)
        for key in keys:
            data = pickler.storages[key].data
            f.write(struct.pack("<q", data.size))
            f.write(data.tobytes())


def tensors(state: dict) -> StateDict:
    """{name: ndarray} -> a torch-style state dict with one storage per tensor."""
    return StateDict((k, Tensor.of(str(i), v)) for i, (k, v) in enumerate(state.items()))


# --------------------------------------------------------------------------------------------
# Malicious payloads
# --------------------------------------------------------------------------------------------


class _OsSystem:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Exec(_OsSystem):
    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


class _Subprocess(_OsSystem):
    def __reduce__(self):
        return subprocess.call, (["touch", self.marker],)


class _Eval(_OsSystem):
    def __reduce__(self):  # looks like paddle.save's eval form, with code instead of 'data'
        return eval, (f"__import__('os').system('touch {self.marker}')",)


PAYLOADS = {"os.system": _OsSystem, "builtins.exec": _Exec, "subprocess.call": _Subprocess, "builtins.eval": _Eval}
PAYLOAD_GLOBALS = {"os.system": "system", "builtins.exec": "exec", "subprocess.call": "call", "builtins.eval": "eval"}


def write_malicious(path: str, fmt: str, payload) -> None:
    """A weights-looking file whose unpickling would run ``payload`` (next to a real tensor)."""
    weight = np.ones((2, 2), np.float32)
    if fmt in ("pkl", "pdparams", "pdopt"):
        with open(path, "wb") as f:
            pickle.dump({"weight": weight, "bias": payload}, f, protocol=2 if fmt == "pkl" else 4)
    elif fmt == "zip":
        write_torch_zip(path, StateDict([("weight", Tensor.of("0", weight)), ("bias", payload)]))
    elif fmt == "legacy":
        write_torch_legacy(path, StateDict([("weight", Tensor.of("0", weight)), ("bias", payload)]))
    else:
        raise ValueError(fmt)


FORMATS = {
    "pkl": "evil.pkl",
    "zip": "evil.pth",
    "legacy": "evil_legacy.pth",
    "pdparams": "evil.pdparams",
    "pdopt": "x.pdopt",
}


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_payloads_really_run_with_plain_pickle(tmp_path, payload):
    """Control: the payloads are live (plain pickle runs them), so the refusals below mean something."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(PAYLOADS[payload](str(marker)), protocol=2))
    assert marker.exists()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_safe_load_and_read_weights_refuse_malicious_files(tmp_path, fmt, payload):
    import paddle

    marker = tmp_path / "marker"
    path = str(tmp_path / FORMATS[fmt])
    write_malicious(path, fmt, PAYLOADS[payload](str(marker)))
    with pytest.raises(UnsafeFileError) as e:
        safe_load(path)
    assert path in str(e.value) and PAYLOAD_GLOBALS[payload] in str(e.value)
    with pytest.raises(UnsafeFileError):
        read_weights(path)
    with pytest.raises(UnsafeFileError):
        load_weights(paddle.nn.Linear(2, 2), path)
    assert not marker.exists()


def test_detector_backbone_and_trainer_checkpoint_refuse_malicious_weights(tmp_path):
    import copy

    from fcos.config import load_config
    from fcos.engine.checkpoint import CheckpointError, load_checkpoint
    from fcos.inference.detector import Detector
    from fcos.modeling import build_model

    marker = tmp_path / "marker"
    path = str(tmp_path / "evil.pth")
    write_malicious(path, "zip", _OsSystem(str(marker)))
    cfg = load_config(os.path.join(ROOT, "configs", "demo_shapes.yml"))
    with pytest.raises(UnsafeFileError, match="refusing to load global 'posix.system'"):
        Detector(cfg, weights=path)
    cfg_bb = copy.deepcopy(cfg)
    cfg_bb.model.backbone.pretrained = path
    with pytest.raises(UnsafeFileError):
        build_model(cfg_bb)
    with pytest.raises(CheckpointError):  # trainer checkpoints are safetensors only: a pickle is not read at all
        load_checkpoint(path)
    assert not marker.exists()


def test_converter_tool_refuses_malicious_file(tmp_path):
    marker = tmp_path / "marker"
    src, out = str(tmp_path / "FCOS_RT_MS_DLA_34_4x_syncbn.pth"), str(tmp_path / "out.safetensors")
    write_malicious(src, "legacy", _Subprocess(str(marker)))
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "convert_weights.py"), "--src", "adelaidet", src, out],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 1
    # protocol 2 writes subprocess.call under its Python 2 name 'commands.call'
    assert "refusing to load global 'commands.call'" in proc.stderr and src in proc.stderr
    assert not marker.exists() and not os.path.exists(out)


def test_build_opcode_cannot_rewire_allowed_objects(tmp_path):
    """A pickle that BUILDs new state into an allow-listed function wrapper fails without calling anything."""
    marker = tmp_path / "marker"
    # GLOBAL numpy.dtype; then BUILD (None, {"0": os.system}) -- needs os.system, refused; and a variant
    # with an allowed value (dict) -- the wrapper is immutable, BUILD fails.
    evil = pickle.PROTO + b"\x02" + pickle.GLOBAL + b"numpy\ndtype\n" + pickle.NONE + pickle.EMPTY_DICT
    evil += pickle.BINUNICODE + struct.pack("<I", 2) + b"fn" + pickle.GLOBAL + b"builtins\ndict\n" + pickle.SETITEM
    evil += pickle.TUPLE2 + pickle.BUILD + pickle.STOP
    with pytest.raises(pickle.UnpicklingError):
        safe_loads(evil, "rewire.pkl")
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Benign files load exactly
# --------------------------------------------------------------------------------------------


def _benign_tensors() -> dict[str, Tensor]:
    rng = np.random.default_rng(0)
    shared = Storage("7", np.arange(40, dtype=np.float32) * 0.5)
    return {
        "f32": Tensor.of("0", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        "f16": Tensor.of("1", rng.standard_normal((5,)).astype(np.float16)),
        "i64": Tensor.of("2", np.array([-(2**40), 3, 7], np.int64)),
        "f64": Tensor.of("3", np.array([[1e-300, 2.5]], np.float64)),
        "u8": Tensor.of("4", np.array([0, 255, 7], np.uint8)),
        "scalar": Tensor(Storage("5", np.array([1.25], np.float32)), 0, (), ()),
        "transposed": Tensor(shared, 2, (3, 4), (1, 3)),  # non-contiguous view with a storage offset
        "sliced": Tensor(shared, 11, (2, 2), (10, 2)),  # same storage, other offset and strides
        "empty": Tensor(Storage("6", np.zeros([0], np.float32)), 0, (0, 3), (3, 1)),
    }


@pytest.mark.parametrize("writer", [write_torch_zip, write_torch_legacy])
def test_benign_torch_files_load_exactly(tmp_path, writer):
    ts = _benign_tensors()
    obj = {"model": StateDict(ts), "iteration": 7, "names": ["a", "b"], "nested": {"lr": 0.01}}
    path = str(tmp_path / "ok.pth")
    writer(path, obj)
    out = safe_load(path)
    assert out["iteration"] == 7 and out["names"] == ["a", "b"] and out["nested"] == {"lr": 0.01}
    assert list(out["model"]) == list(ts)
    for k, t in ts.items():
        got = out["model"][k]
        assert isinstance(got, np.ndarray) and got.dtype == t.storage.data.dtype, k
        assert got.shape == t.size and np.array_equal(got, t.expected()), k
    assert out["model"]["transposed"][2, 1] == (2 + 2 * 1 + 1 * 3) * 0.5  # by hand: storage[7] = 3.5
    state, meta = read_weights(path)
    assert meta["container_key"] == "model" and np.array_equal(state["f32"], ts["f32"].expected())


def test_torch_zip_out_of_bounds_view_is_refused(tmp_path):
    path = str(tmp_path / "bad.pth")
    write_torch_zip(path, {"w": Tensor(Storage("0", np.zeros(4, np.float32)), 2, (2, 2), (2, 1))})
    with pytest.raises(pickle.UnpicklingError, match="exceeds its storage"):
        safe_load(path)


def test_paddle_save_files_load_exactly(tmp_path):
    import paddle

    layer = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.BatchNorm2D(4))
    for protocol in (2, 4):
        path = str(tmp_path / f"m{protocol}.pdparams")
        paddle.save(layer.state_dict(), path, protocol=protocol)
        out = safe_load(path)
        for k, v in layer.state_dict().items():
            assert np.array_equal(out[k], v.numpy()) and out[k].dtype == np.float32
        state, _ = read_weights(path)
        assert "StructuredToParameterName@@" not in state and set(state) == set(layer.state_dict())
    opt = paddle.optimizer.Momentum(learning_rate=0.1, parameters=layer.parameters())
    layer(paddle.ones([1, 3, 5, 5])).sum().backward()
    opt.step()
    paddle.save(opt.state_dict(), str(tmp_path / "m.pdopt"))
    velocities = {k: v for k, v in safe_load(str(tmp_path / "m.pdopt")).items() if "velocity" in k}
    assert velocities and all(isinstance(v, np.ndarray) for v in velocities.values())


def test_numpy_pickles_all_protocols(tmp_path):
    obj = {"blobs": {"conv1_w": np.arange(6, dtype=np.float32).reshape(1, 2, 3), "s": np.float64(2.5)}}
    for protocol in (2, 3, 4, 5):
        out = safe_loads(pickle.dumps(obj, protocol=protocol))
        assert np.array_equal(out["blobs"]["conv1_w"], obj["blobs"]["conv1_w"]) and out["blobs"]["s"] == 2.5
    with pytest.raises(UnsafeFileError, match="Python objects"):
        safe_loads(pickle.dumps(np.array([1, "x"], dtype=object)))


def test_python2_numpy_pickle_like_detectron_blobs():
    """Detectron's R-50.pkl is a Python 2 pickle: array bytes are py2 ``str`` (SHORT_BINSTRING), read as latin1."""
    data = np.array([1.5, -2.0, 3.0e-3], "<f4").tobytes()
    raw = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
    raw += b"(K\x01K\x03\x85cnumpy\ndtype\nU\x02f4K\x00K\x01\x87R"
    raw += b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    raw += b"\x89U" + bytes([len(data)]) + data + b"tb."
    arr = safe_loads(raw, "R-50.pkl")
    assert arr.dtype == np.float32 and arr.tolist() == [1.5, -2.0, np.float32(3.0e-3)]


# --------------------------------------------------------------------------------------------
# No other code path unpickles
# --------------------------------------------------------------------------------------------

_FORBIDDEN_CALLS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("cPickle", "load"),
    ("cPickle", "loads"),
    ("paddle", "load"),
    ("torch", "load"),
    ("dill", "load"),
    ("dill", "loads"),
    ("joblib", "load"),
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def unpickling_calls(source: str, filename: str) -> list[str]:
    """``file:line: call`` for every direct unpickling call in ``source`` (by the AST, so comments don't count)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "cPickle", "dill", "joblib", "torch"):
            for alias in node.names:
                if (node.module, alias.name) in _FORBIDDEN_CALLS:
                    found.append(f"{filename}:{node.lineno}: from {node.module} import {alias.name}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        parts = name.split(".")
        if len(parts) >= 2 and (parts[0], parts[-1]) in _FORBIDDEN_CALLS:
            found.append(f"{filename}:{node.lineno}: {name}(...)")
        if parts[-1] == "load" and parts[0] in ("np", "numpy"):
            for kw in node.keywords:
                if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append(f"{filename}:{node.lineno}: {name}(allow_pickle=...)")
    return found


def test_scanner_finds_unpickling_calls():
    bad = (
        "import pickle, paddle, numpy as np\nfrom pickle import loads\n"
        "a = pickle.load(f)\nb = paddle.load('x')\nc = np.load('x', allow_pickle=True)\n"
        "d = np.load('x', allow_pickle=False)  # fine\n# pickle.load(f) in a comment is fine\n"
    )
    found = unpickling_calls(bad, "bad.py")
    assert [f.split(":")[1] for f in found] == ["2", "3", "4", "5"], found


def test_no_code_path_unpickles_outside_safe_pickle():
    found = []
    for top in ("fcos", "tools"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for fn in files:
                path = os.path.join(dirpath, fn)
                if not fn.endswith(".py") or path.endswith(os.path.join("checkpoint", "safe_pickle.py")):
                    continue
                with open(path, encoding="utf-8") as f:
                    found.extend(unpickling_calls(f.read(), os.path.relpath(path, ROOT)))
    assert not found, "unpickling outside fcos/checkpoint/safe_pickle.py:\n" + "\n".join(found)
