"""Process-level CPU settings that decide Paddle's CPU speed, applied by the library itself.

Two measured problems (README "Performance"): importing Paddle sets ``OMP_NUM_THREADS=1`` when it is
unset, so dygraph runs on one core; and the MKL 2019 bundled with the CPU wheel takes a slow code
path on AMD processors unless ``MKL_DEBUG_CPU_TYPE=5`` is set (an undocumented switch honoured by
MKL before 2020.1; 1.8x faster convolutions on the development machine, an AMD EPYC). A third
choice is the dygraph convolution backend: Paddle's im2col kernel or the oneDNN operator of
:mod:`fcos.ops.onednn_conv` (``train.cpu_conv``). Fourth, glibc's malloc: Paddle's CPU allocator asks
malloc for every activation, and blocks above glibc's mmap threshold come back as fresh pages that
fault in on first touch; a tv_r50 training step took 1.5 million page faults. :func:`tune_malloc`
keeps freed memory in the heap for reuse (0.56 million faults, about 5 % faster steps, about 10 %
more resident memory). Fifth, OpenMP: Paddle's process holds two runtimes, Intel's (MKL) and GNU
libgomp (oneDNN, the fcos operators). libgomp's idle threads spin for about 300k iterations after each
parallel region and take the cores from the other runtime and from Python; ``GOMP_SPINCOUNT=10000``
made a tv_r50 training step about 5 % faster. libgomp reads it once, when Paddle loads it, so
``import fcos`` sets it (unless the user did) through :func:`preset_openmp_env`; an import of Paddle
before fcos leaves libgomp's default. Training, evaluation, inference and the benchmarks call
:func:`setup_cpu_runtime` once, before the first heavy op.

Thread count, first match wins: the ``num_threads`` argument (``train.num_threads``) > 0;
``$FCOS_NUM_THREADS``; ``$OMP_NUM_THREADS`` as the user started the process (read from
``/proc/self/environ``, since Paddle overwrites ``os.environ``); else the usable cores divided by
the processes per node under ``paddle.distributed.launch``.
"""

from __future__ import annotations

import logging
import os
import platform
from typing import Any, Optional

logger = logging.getLogger(__name__)

_APPLIED: Optional[dict[str, Any]] = None


def _cpuinfo_field(name: str) -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="ignore") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    """'AuthenticAMD', 'GenuineIntel' or '' when unknown."""
    return _cpuinfo_field("vendor_id")


def cpu_name() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def initial_env(name: str) -> Optional[str]:
    """The value ``name`` had when the process started (before Paddle changed ``os.environ``)."""
    try:
        with open("/proc/self/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                key, _, value = item.partition(b"=")
                if key.decode(errors="ignore") == name:
                    return value.decode(errors="ignore")
        return None
    except OSError:  # not Linux: the best we can do
        return os.environ.get(name)


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_num_threads() -> int:
    """Math threads for this process when the config does not say (see the module docstring)."""
    for var in ("FCOS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var) if var == "FCOS_NUM_THREADS" else initial_env(var)
        if value:
            try:
                n = int(value)
            except ValueError:
                logger.warning("ignoring %s=%r (not an integer)", var, value)
                continue
            if n > 0:
                return n
    local = int(os.environ.get("PADDLE_LOCAL_SIZE") or os.environ.get("PADDLE_TRAINERS_NUM") or 1)
    return max(1, usable_cores() // max(1, local))


GOMP_SPINCOUNT = "10000"


def preset_openmp_env() -> None:
    """Set ``GOMP_SPINCOUNT`` for libgomp unless the user set it or ``OMP_WAIT_POLICY`` (see above).

    Called by ``import fcos``; has an effect only if libgomp (Paddle) is not loaded yet.
    """
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT


def libgomp_spincount() -> str:
    """What libgomp of this process runs with: the value it read at load time, as far as we can tell."""
    loaded_env = initial_env("GOMP_SPINCOUNT")
    current = os.environ.get("GOMP_SPINCOUNT")
    if current is None:
        return "libgomp default"
    if _gomp_loaded_before_fcos:
        return "libgomp default (Paddle was imported before fcos)" if loaded_env is None else loaded_env
    return current


def _libgomp_loaded() -> bool:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="ignore") as f:
            return "libgomp" in f.read()
    except OSError:
        return False


_gomp_loaded_before_fcos = _libgomp_loaded()


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "LD_PRELOAD")


def tune_malloc() -> str:
    """Make glibc malloc reuse freed activation memory instead of returning it to the OS.

    Serves blocks up to 1 GiB from the heap (not fresh mmap pages), trims the heap only when 4 GiB
    at its top are free, and grows it 256 MiB at a time. Skipped, with the reason returned, when
    the user set any ``MALLOC_*`` tunable or ``LD_PRELOAD`` (e.g. jemalloc / tcmalloc),
    ``FCOS_MALLOC_TUNING=0``, or the C library is not glibc.
    """
    if os.environ.get("FCOS_MALLOC_TUNING", "1") == "0":
        return "off (FCOS_MALLOC_TUNING=0)"
    user = [k for k in _MALLOC_ENV if os.environ.get(k)]
    if user:
        return f"left to the user ({', '.join(user)} set)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "unchanged (not glibc)"
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = all(
            libc.mallopt(param, value) == 1
            for param, value in ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, 4 << 30), (_M_TOP_PAD, 256 << 20))
        )
    except (OSError, AttributeError) as e:  # pragma: no cover - a libc without mallopt
        return f"unchanged ({e})"
    return "heap reuse (mmap threshold 1 GiB)" if ok else "unchanged (mallopt refused)"


def setup_cpu_runtime(num_threads: int = 0, cpu_conv: str = "auto") -> dict[str, Any]:
    """Apply the CPU settings once per process; returns what was applied.

    ``num_threads`` <= 0 picks :func:`default_num_threads`. On AMD CPUs sets ``MKL_DEBUG_CPU_TYPE=5``
    unless the user set it (set ``MKL_DEBUG_CPU_TYPE`` yourself, to any value, to opt out).
    ``cpu_conv`` picks the dygraph convolution backend (:func:`fcos.ops.set_conv_backend`; "auto"
    builds the oneDNN operator on first use and falls back to Paddle's kernel with a warning).
    glibc malloc is tuned once per process (:func:`tune_malloc`).
    """
    global _APPLIED
    import paddle  # before OMP_NUM_THREADS changes: Paddle's import warns about any value but 1

    threads = int(num_threads) if num_threads and num_threads > 0 else default_num_threads()
    applied: dict[str, Any] = {"threads": threads, "mkl_debug_cpu_type": os.environ.get("MKL_DEBUG_CPU_TYPE")}
    if cpu_vendor() == "AuthenticAMD" and "MKL_DEBUG_CPU_TYPE" not in os.environ:
        os.environ["MKL_DEBUG_CPU_TYPE"] = "5"
        applied["mkl_debug_cpu_type"] = "5 (set by fcos: AMD CPU, bundled MKL 2019)"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        paddle.base.core.set_num_threads(threads)
    except Exception as e:  # pragma: no cover - a Paddle without set_num_threads
        logger.debug("could not set the Paddle thread count: %s", e)
    from fcos.ops.onednn_conv import set_conv_backend

    applied["cpu_conv"] = set_conv_backend(cpu_conv)
    applied["malloc"] = _APPLIED["malloc"] if _APPLIED else tune_malloc()
    applied["gomp_spincount"] = libgomp_spincount()
    if _APPLIED != applied:
        logger.info(
            "CPU runtime: %d math thread(s), MKL_DEBUG_CPU_TYPE=%s, dygraph convolutions: %s, malloc: %s, "
            "GOMP_SPINCOUNT: %s",
            threads,
            applied["mkl_debug_cpu_type"],
            applied["cpu_conv"],
            applied["malloc"],
            applied["gomp_spincount"],
        )
    _APPLIED = applied
    return applied


def ensure_cpu_runtime() -> None:
    """Apply the default CPU settings unless a caller already chose them (e.g. a tool's ``--threads``)."""
    if _APPLIED is None:
        setup_cpu_runtime()
