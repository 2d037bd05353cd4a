"""Atomic writers (weights, checkpoints, JSON) leave ordinary files, not mkstemp's private 0600 ones."""

from __future__ import annotations

import os
import stat

import numpy as np

from fcos.checkpoint.weights import save_weights
from fcos.data.annotations import write_json


def test_atomic_writers_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_weights(str(tmp_path / "w.safetensors"), {"a": np.zeros(3, np.float32)}, {"recipe": "x"})
        write_json({"images": []}, str(tmp_path / "a.json"))
    finally:
        os.umask(old)
    for name in ("w.safetensors", "a.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name
    assert sorted(os.listdir(tmp_path)) == ["a.json", "w.safetensors"]  # no temp files left
