"""oneDNN convolutions for Paddle dygraph on CPU: a custom operator built on first use.

Paddle's dygraph CPU ``conv2d`` is im2col + GEMM; ``fcos_conv2d`` (``onednn_conv.cc``) runs the same
convolution, forward and backward, on the oneDNN library that Paddle's CPU wheel already ships
(``paddle/libs/libdnnl.so.3``). Measured on 2 cores (benchmarks/train_speed.py): a tv_r50 training step
at batch 2, 512x512 takes 3.7 s instead of 5.7 s. Only convolutions with a kernel larger than 1x1 go
through it: a 1x1 convolution is a plain GEMM in Paddle already, and the layout reorders would cost more.

Building needs a C++ compiler and oneDNN's C++ headers of the same major.minor version as Paddle's
bundled library (Paddle's wheel ships only stubs). ``make install`` installs them from PyPI
(``onednn-devel``, headers only); ``$FCOS_ONEDNN_INCLUDE`` points elsewhere. The build (about 15 s)
lands in ``~/.cache/fcos-paddle/ops`` (``$FCOS_OPS_CACHE``) under a file lock, once per source and
Paddle version.

The same build holds ``fcos_group_norm`` (``group_norm.cc``, see :mod:`fcos.ops.group_norm`): Paddle's CPU
GroupNorm kernels are 3-6x slower than memory bandwidth allows, and the FCOS head has 8 of them per level;
and ``fcos_batch_norm`` (``batch_norm.cc``, see :mod:`fcos.ops.batch_norm`): Paddle's CPU train-mode
BatchNorm accumulates its statistics in float, too imprecisely for DLA-34's full-resolution BatchNorms.
The backend switch below covers all three.

Backends (:func:`set_conv_backend`, ``train.cpu_conv``, ``$FCOS_CPU_CONV``): ``auto`` uses oneDNN when
the operator builds and says once why not otherwise; ``onednn`` insists (an error if it cannot build);
``paddle`` never uses it. The operator only runs in dygraph on CPU float32 tensors: export
(``paddle.jit.to_static``), GPU and other dtypes always take Paddle's own kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import logging
import os
import re
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from typing import Any, Optional, Union

import paddle

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onednn", "paddle")
_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(_HERE, "onednn_conv.cc")
# Built into the same module: the GroupNorm kernel of fcos/ops/group_norm.py and the train-mode
# BatchNorm kernel of fcos/ops/batch_norm.py (no oneDNN needed, but one build, one cache entry and one
# backend switch for all).
SOURCES = [SOURCE, os.path.join(_HERE, "group_norm.cc"), os.path.join(_HERE, "batch_norm.cc")]
MODULE_NAME = "fcos_onednn_conv"
# OpenMP: GNU libgomp, the runtime Paddle's libdnnl.so.3 already uses (one thread pool).
CXX_FLAGS = ("-O2", "-fopenmp")
LD_FLAGS = ("-l:libdnnl.so.3", "-lgomp")
BUILT_MARKER = "build-complete"  # written after a successful build; its absence means "build again"

_active = "paddle"  # the backend in use: "onednn" or "paddle"
_module: Any = None
_build_error: Optional[str] = None
_warned = False
_loaded: dict[str, Any] = {}  # build directory -> module (Paddle registers a custom op once per process)


class ConvBackendError(RuntimeError):
    """The oneDNN operator was required (backend ``onednn``) but cannot be built or loaded."""


# ------------------------------------------------------------------------------------------------
# Finding headers and the library
# ------------------------------------------------------------------------------------------------


def paddle_libs_dir() -> str:
    return os.path.join(os.path.dirname(paddle.__file__), "libs")


def library_version() -> tuple[int, int, int]:
    """(major, minor, patch) of the oneDNN library bundled with Paddle."""

    class _Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int)]

    path = os.path.join(paddle_libs_dir(), "libdnnl.so.3")
    if not os.path.exists(path):
        raise ConvBackendError(f"this Paddle build has no bundled oneDNN ({path} not found)")
    lib = ctypes.CDLL(path)
    lib.dnnl_version.restype = ctypes.POINTER(_Version)
    v = lib.dnnl_version().contents
    return v.major, v.minor, v.patch


def _include_candidates() -> list[str]:
    dirs = [os.environ.get("FCOS_ONEDNN_INCLUDE", "")]
    dirs += [os.path.join(sysconfig.get_paths()["data"], "include"), os.path.join(sys.prefix, "include")]
    # A venv with --system-site-packages (Paddle installed outside it) sees the base interpreter's.
    dirs += [os.path.join(sys.base_prefix, "include")]
    dirs += ["/usr/local/include", "/usr/include"]
    return [d for d in dirs if d]


def header_version(include_dir: str) -> tuple[int, int, int]:
    path = os.path.join(include_dir, "oneapi", "dnnl", "dnnl_version.h")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    found = {k: int(v) for k, v in re.findall(r"#define DNNL_VERSION_(MAJOR|MINOR|PATCH) (\d+)", text)}
    if len(found) != 3:
        raise ConvBackendError(f"{path}: no DNNL_VERSION_MAJOR/MINOR/PATCH")
    return found["MAJOR"], found["MINOR"], found["PATCH"]


def find_headers(want: tuple[int, int, int]) -> str:
    """An include directory holding ``oneapi/dnnl/dnnl.hpp`` of oneDNN ``want``'s major.minor."""
    seen = []
    for d in _include_candidates():
        if not os.path.exists(os.path.join(d, "oneapi", "dnnl", "dnnl.hpp")):
            continue
        got = header_version(d)
        if got[:2] == want[:2]:
            return d
        seen.append(f"{d} has {got[0]}.{got[1]}")
    hint = f"pip install --no-deps 'onednn-devel=={_onednn_devel_for(want)}'"
    raise ConvBackendError(
        f"no oneDNN {want[0]}.{want[1]} C++ headers found ({'; '.join(seen) or 'none found'}); "
        f"install them with `{hint}` (or `make install`), or set FCOS_ONEDNN_INCLUDE"
    )


def _onednn_devel_for(version: tuple[int, int, int]) -> str:
    """The PyPI ``onednn-devel`` release carrying oneDNN ``version`` (oneAPI numbering)."""
    known = {(3, 6): "2025.0.1", (3, 7): "2025.1.0", (3, 8): "2025.2.0", (3, 5): "2024.2.1"}
    return known.get(version[:2], f"<the oneAPI release with oneDNN {version[0]}.{version[1]}>")


def _prepare_includes(src_include: str, dst: str) -> str:
    """``dst``/oneapi/dnnl: the headers of ``src_include`` with a config for an OpenMP CPU-only build.

    PyPI's headers are configured for a SYCL runtime; Paddle's library is built with OpenMP, and the
    C++ API must be compiled with the same runtime settings.
    """
    out_dir = os.path.join(dst, "oneapi", "dnnl")
    os.makedirs(out_dir, exist_ok=True)
    src_dir = os.path.join(src_include, "oneapi", "dnnl")
    for name in os.listdir(src_dir):
        with open(os.path.join(src_dir, name), encoding="utf-8") as f:
            text = f.read()
        if name == "dnnl_config.h":
            text = re.sub(r"#define DNNL_CPU_RUNTIME \w+", "#define DNNL_CPU_RUNTIME DNNL_RUNTIME_OMP", text)
            text = re.sub(
                r"#define DNNL_CPU_THREADING_RUNTIME \w+", "#define DNNL_CPU_THREADING_RUNTIME DNNL_RUNTIME_OMP", text
            )
            text = re.sub(r"#define DNNL_GPU_RUNTIME \w+", "#define DNNL_GPU_RUNTIME DNNL_RUNTIME_NONE", text)
            text = re.sub(r"(?m)^#define DNNL_WITH_SYCL\b.*$", "", text)
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            f.write(text)
    return dst


# ------------------------------------------------------------------------------------------------
# Building and loading
# ------------------------------------------------------------------------------------------------


def cache_dir() -> str:
    return os.environ.get("FCOS_OPS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fcos-paddle", "ops")


def build_onednn_conv() -> Any:
    """Build (once) and load the operator module; raises :class:`ConvBackendError` with the reason."""
    lib_version = library_version()
    headers = find_headers(lib_version)
    source = b""
    for path in SOURCES:
        with open(path, "rb") as f:
            source += f.read()
    flags = repr((CXX_FLAGS, LD_FLAGS)).encode()
    key = hashlib.sha256(source + flags + paddle.__version__.encode() + repr(lib_version).encode()).hexdigest()[:12]
    build_dir = os.path.join(cache_dir(), f"onednn_conv-{key}")
    if build_dir in _loaded:
        return _loaded[build_dir]
    try:
        os.makedirs(build_dir, exist_ok=True)
        lock = open(os.path.join(build_dir, ".lock"), "w")  # noqa: SIM115 - closed by the with below
    except OSError as e:
        raise ConvBackendError(
            f"cannot write the operator build directory {build_dir} ({e.strerror or e}); "
            "point FCOS_OPS_CACHE at a writable directory"
        ) from e
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # ranks of a distributed run build one after another
        module = _load_built(build_dir)
        if module is None:
            module = _build(build_dir, headers)
    _loaded[build_dir] = module
    return module


def _build(build_dir: str, headers: str) -> Any:
    """Compile with Paddle's ``cpp_extension.load`` and mark the build directory as complete."""
    from paddle.utils.cpp_extension import load

    include = _prepare_includes(headers, os.path.join(build_dir, "include"))
    libs = paddle_libs_dir()
    logger.info("building the oneDNN convolution operator (once, about 15 s) in %s", build_dir)
    try:
        # The build runs a Python child that imports Paddle: keep its start-up warnings (OMP_NUM_THREADS,
        # no ccache) out of the user's console (fcos/__init__.py filters the ccache one in this process).
        with _quiet_paddle_logs(), _environ(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"):
            module = load(
                name=MODULE_NAME,
                sources=SOURCES,
                extra_include_paths=[include],
                extra_cxx_cflags=list(CXX_FLAGS),
                extra_ldflags=[f"-L{libs}", *LD_FLAGS, f"-Wl,-rpath,{libs}"],
                build_directory=build_dir,
                verbose=False,
            )
    except Exception as e:  # compiler missing, headers broken, ...
        raise ConvBackendError(f"building {', '.join(SOURCES)} failed: {str(e).strip()[-600:]}") from e
    with open(os.path.join(build_dir, BUILT_MARKER), "w", encoding="utf-8") as f:
        f.write(f"{MODULE_NAME}.so built for Paddle {paddle.__version__}\n")
    return module


def _load_built(build_dir: str) -> Any:
    """The module of a complete earlier build, loaded without Paddle's rebuild check (which starts a
    Python child process on every call, about 1.4 s, and prints Paddle's start-up warnings); None when
    there is no complete build or loading it fails (then the caller rebuilds)."""
    so_dir = os.path.join(build_dir, MODULE_NAME)
    if not (
        os.path.isfile(os.path.join(build_dir, BUILT_MARKER))
        and os.path.isfile(os.path.join(so_dir, f"{MODULE_NAME}.so"))
    ):
        return None
    try:
        from paddle.utils.cpp_extension import extension_utils

        with _quiet_paddle_logs():
            return extension_utils._import_module_from_library(MODULE_NAME, so_dir, False)
    except Exception as e:  # a Paddle without this internal function, a damaged library, ...
        logger.debug("loading the built operator from %s failed (%s); rebuilding", so_dir, e)
        return None


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block (for child processes), then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_paddle_logs() -> Iterator[None]:
    """Silence INFO lines that Paddle's cpp_extension always logs ("using custom operator only")."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(previous)


def load_onednn_conv() -> Any:
    """The operator module, building it on first use; None (with :func:`build_error` set) if impossible."""
    global _module, _build_error
    if _module is None and _build_error is None:
        try:
            _module = build_onednn_conv()
        except ConvBackendError as e:
            _build_error = str(e)
    return _module


def build_error() -> Optional[str]:
    return _build_error


def set_conv_backend(name: str = "auto") -> str:
    """Choose the dygraph CPU convolution backend (see the module docstring); returns the active one.

    ``auto`` is overridden by ``$FCOS_CPU_CONV`` when set. Raises ValueError for unknown names and
    :class:`ConvBackendError` when ``onednn`` is required but unavailable.
    """
    global _active, _warned
    if name not in BACKENDS:
        raise ValueError(f"cpu_conv must be one of {list(BACKENDS)}, got {name!r}")
    if name == "auto":
        env = os.environ.get("FCOS_CPU_CONV", "").strip()
        if env:
            if env not in BACKENDS:
                raise ValueError(f"$FCOS_CPU_CONV must be one of {list(BACKENDS)}, got {env!r}")
            name = env
    if name == "paddle" or (name == "auto" and paddle.get_device().startswith("gpu")):
        _active = "paddle"
        return _active
    if load_onednn_conv() is None:
        if name == "onednn":
            raise ConvBackendError(f"cpu_conv 'onednn' is unavailable: {_build_error}")
        if not _warned:
            logger.warning("using Paddle's slower CPU convolutions: %s", _build_error)
            _warned = True
        _active = "paddle"
        return _active
    _active = "onednn"
    return _active


def conv_backend() -> str:
    """The dygraph CPU convolution backend in use: ``onednn`` or ``paddle``."""
    return _active


# ------------------------------------------------------------------------------------------------
# The convolution
# ------------------------------------------------------------------------------------------------


def _pair(v: Union[int, Sequence[int]]) -> Optional[list[int]]:
    if isinstance(v, int):
        return [v, v]
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return [int(i) for i in v]
    return None


def onednn_conv_applies(layer: paddle.nn.Conv2D, x: paddle.Tensor) -> bool:
    """True when ``layer(x)`` should run through the oneDNN operator (backend on, dygraph, CPU fp32, k > 1)."""
    return (
        _active == "onednn"
        and paddle.in_dynamic_mode()
        and max(layer._kernel_size) > 1
        and layer._padding_mode == "zeros"
        and layer._data_format == "NCHW"
        and _pair(layer._padding) is not None
        and x.dtype == paddle.float32
        and x.place.is_cpu_place()
    )


def onednn_conv2d(
    x: paddle.Tensor,
    weight: paddle.Tensor,
    bias: Optional[paddle.Tensor],
    stride: Sequence[int],
    padding: Union[int, Sequence[int]],
    dilation: Sequence[int],
    groups: int,
) -> paddle.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups)`` through oneDNN.

    x (N, C, H, W) float32 on CPU, weight (O, C/groups, kh, kw), bias (O,) or None; symmetric zero
    padding (an int or [ph, pw]). Returns (N, O, H', W'). Differentiable in x, weight and bias.
    """
    module = load_onednn_conv()
    if module is None:
        raise ConvBackendError(f"the oneDNN convolution operator is unavailable: {_build_error}")
    pads = _pair(padding)
    if pads is None:
        raise ValueError(f"onednn_conv2d: padding must be an int or two ints, got {padding!r}")
    need_x = not x.stop_gradient
    need_w = not weight.stop_gradient or (bias is not None and not bias.stop_gradient)
    attrs = (list(stride), pads, list(dilation), int(groups), need_x, need_w)
    if bias is None:
        return module.fcos_conv2d(x, weight, *attrs)
    return module.fcos_conv2d_bias(x, weight, bias, *attrs)
