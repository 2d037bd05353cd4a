"""Process-level CPU settings that decide Paddle's CPU speed, applied by the library itself.

Two measured problems (README "Performance"): importing Paddle sets ``OMP_NUM_THREADS=1`` when it is
unset, so dygraph runs on one core; and the MKL 2019 bundled with the CPU wheel takes a slow code
path on AMD processors unless ``MKL_DEBUG_CPU_TYPE=5`` is set (an undocumented switch honoured by
MKL before 2020.1; 1.8x faster convolutions on the development machine, an AMD EPYC). A third
choice is the dygraph convolution backend: Paddle's im2col kernel or the oneDNN operator of
:mod:`fcos.ops.onednn_conv` (``train.cpu_conv``). Training, evaluation, inference and the benchmarks
call :func:`setup_cpu_runtime` once, before the first heavy op.

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


def setup_cpu_runtime(num_threads: int = 0, cpu_conv: str = "auto") -> dict[str, Any]:
    """Apply the CPU settings once per process; returns what was applied.

    ``num_threads`` <= 0 picks :func:`default_num_threads`. On AMD CPUs sets ``MKL_DEBUG_CPU_TYPE=5``
    unless the user set it (set ``MKL_DEBUG_CPU_TYPE`` yourself, to any value, to opt out).
    ``cpu_conv`` picks the dygraph convolution backend (:func:`fcos.ops.set_conv_backend`; "auto"
    builds the oneDNN operator on first use and falls back to Paddle's kernel with a warning).
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
    if _APPLIED != applied:
        logger.info(
            "CPU runtime: %d math thread(s), MKL_DEBUG_CPU_TYPE=%s, dygraph convolutions: %s",
            threads,
            applied["mkl_debug_cpu_type"],
            applied["cpu_conv"],
        )
    _APPLIED = applied
    return applied


def ensure_cpu_runtime() -> None:
    """Apply the default CPU settings unless a caller already chose them (e.g. a tool's ``--threads``)."""
    if _APPLIED is None:
        setup_cpu_runtime()
