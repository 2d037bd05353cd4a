"""The alternate signal stack survives OpenVINO: its CPU plugin swaps the thread's sigaltstack and, when
two plugin instances die in creation order, leaves it on unmapped memory, so the next Python signal
handler (e.g. Paddle DataLoader's SIGCHLD) kills the process with SIGSEGV (fcos.utils.signal_stack)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

import pytest

from fcos.utils import signal_stack
from fcos.utils.signal_stack import current_signal_stack, preserve_signal_stack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import faulthandler, signal, subprocess, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import openvino as ov
from fcos.deploy.openvino_predictor import compile_openvino_model
from fcos.utils.signal_stack import current_signal_stack

faulthandler.enable()  # as under pytest: the thread has an alternate stack of its own
start = current_signal_stack()
param = ov.opset13.parameter([1, 3, 8, 8], np.float32)
model = ov.Model([ov.opset13.relu(param)], [param])
if sys.argv[2] == "raw":
    first, second = ov.Core().compile_model(model, "CPU"), ov.Core().compile_model(model, "CPU")
else:
    first, second = compile_openvino_model(model, 1), compile_openvino_model(model, 1)
del first  # destroyed in creation order
del second
print("same stack" if current_signal_stack() == start else "stack changed", flush=True)
signal.signal(signal.SIGCHLD, lambda *_: None)  # installed with SA_ONSTACK, like DataLoader's
print("child exit", subprocess.run(["true"]).returncode, flush=True)
"""


def _run(mode: str) -> subprocess.CompletedProcess:
    pytest.importorskip("openvino")
    return subprocess.run(
        [sys.executable, "-c", _CHILD, ROOT, mode], capture_output=True, text=True, timeout=120, check=False
    )


def test_openvino_alone_leaves_a_dangling_signal_stack():
    """The OpenVINO behaviour the guard exists for; if a release fixes it, this fails and says so."""
    proc = _run("raw")
    assert proc.returncode == -signal.SIGSEGV, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert "stack changed" in proc.stdout


def test_fcos_openvino_models_keep_the_signal_stack_and_signals_work():
    proc = _run("fcos")
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert proc.stdout.split("\n")[:2] == ["same stack", "child exit 0"]


@pytest.mark.skipif(current_signal_stack() is None, reason="no sigaltstack on this platform")
def test_preserve_signal_stack_puts_back_the_callers_stack():
    before = current_signal_stack()
    size = 64 * 1024
    buffer = ctypes.create_string_buffer(size)
    with preserve_signal_stack():
        signal_stack._set_signal_stack(ctypes.addressof(buffer), size, 0)
        assert current_signal_stack() == (ctypes.addressof(buffer), size, 0)
    assert current_signal_stack() == before
