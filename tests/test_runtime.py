"""Process-level CPU settings (fcos.utils.runtime): glibc malloc tuning."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from fcos.utils import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocate, touch and free a 64 MiB buffer ten times and count the minor page faults it took.
_FAULTS = r"""
import ctypes, resource, sys
sys.path.insert(0, sys.argv[1])
from fcos.utils.runtime import tune_malloc
print(tune_malloc())
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env_update: dict[str, str]) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    env.update(env_update)
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, ROOT], env=env, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    return out[0], int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc tuning")
def test_tuned_malloc_reuses_freed_memory_instead_of_faulting_in_fresh_pages():
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    status, untuned = _faults({"FCOS_MALLOC_TUNING": "0"})
    assert status == "off (FCOS_MALLOC_TUNING=0)"
    assert untuned >= 9 * pages  # glibc mmaps a 64 MiB block afresh every time
    status, tuned = _faults({})
    assert status.startswith("heap reuse")
    assert tuned <= 2 * pages  # faulted in once, then reused


def test_user_malloc_settings_are_left_alone(monkeypatch):
    monkeypatch.delenv("FCOS_MALLOC_TUNING", raising=False)
    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")
    assert runtime.tune_malloc() == "left to the user (MALLOC_TOP_PAD_ set)"
    monkeypatch.delenv("MALLOC_TOP_PAD_")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert "LD_PRELOAD" in runtime.tune_malloc()


_SPIN = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "paddle-first":
    import paddle
import fcos
from fcos.utils.runtime import libgomp_spincount
print(os.environ.get("GOMP_SPINCOUNT"), "|", libgomp_spincount())
"""


@pytest.mark.parametrize(
    "env,order,expected",
    [
        ({}, "fcos-first", "10000 | 10000"),
        ({"GOMP_SPINCOUNT": "5"}, "fcos-first", "5 | 5"),  # the user's value wins
        ({"OMP_WAIT_POLICY": "passive"}, "fcos-first", "None | libgomp default"),
        ({}, "paddle-first", "10000 | libgomp default (Paddle was imported before fcos)"),
    ],
)
def test_import_fcos_presets_libgomp_spin_count(env, order, expected):
    """libgomp reads GOMP_SPINCOUNT once, when Paddle loads it: import fcos sets it unless the user did,
    and the runtime reports when Paddle came first and the setting could not take effect."""
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run(
        [sys.executable, "-c", _SPIN, ROOT, order], env={**base, **env}, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == expected
