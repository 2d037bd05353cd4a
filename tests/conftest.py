"""Shared fixtures. Tests run on CPU with small data the tests generate themselves."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ.setdefault("FLAGS_use_mkldnn", "0")

import paddle  # noqa: E402
import pytest  # noqa: E402

paddle.set_device("cpu")


@pytest.fixture
def repo_root() -> str:
    return ROOT


@pytest.fixture(autouse=True)
def _seed():
    paddle.seed(0)
    import numpy as np

    np.random.seed(0)
    yield


@pytest.fixture
def conv_backend_state():
    """Restore the fcos CPU operators' backend state (active backend, module, build error) after a test."""
    from fcos.ops import onednn_conv as ops

    saved = (ops._active, ops._module, ops._build_error, ops._warned)
    yield
    ops._active, ops._module, ops._build_error, ops._warned = saved


@pytest.fixture
def backend(conv_backend_state):
    """Activate the fcos CPU operators (oneDNN conv, GroupNorm) for one test; restore the state afterwards."""
    from fcos.ops import onednn_conv as ops

    assert ops.set_conv_backend("onednn") == "onednn"
