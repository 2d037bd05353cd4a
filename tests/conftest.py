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
