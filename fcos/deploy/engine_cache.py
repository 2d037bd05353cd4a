"""The fast engine straight from a checkpoint: export a config + weights once into a cache directory
and run it on Paddle Inference (``tools/infer.py --engine predictor``), with no export step for the user.

The cache key is a hash of the resolved config, the weights file (absolute path, size, modification
time), the fcos and Paddle versions; a changed checkpoint or config exports again. The export is
written to a temporary directory and renamed into place, so an interrupted run never leaves a
half-written cache entry. Cache root: ``$FCOS_CACHE_DIR`` or ``~/.cache/fcos-paddle``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Optional

from fcos.config import Config, config_to_dict


def cache_root() -> str:
    """``$FCOS_CACHE_DIR`` or ``~/.cache/fcos-paddle`` (``$XDG_CACHE_HOME`` respected)."""
    env = os.environ.get("FCOS_CACHE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fcos-paddle")


def export_key(cfg: Config, weights: Optional[str]) -> str:
    """A hex digest naming the export of ``cfg`` with ``weights`` (see module doc)."""
    import paddle

    import fcos

    data = config_to_dict(cfg)
    data.pop("source", None)
    w: Any = None
    if weights:
        st = os.stat(weights)
        w = [os.path.abspath(weights), st.st_size, st.st_mtime_ns]
    blob = json.dumps([data, w, fcos.__version__, paddle.__version__], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_export(detector: Any, weights: Optional[str], root: Optional[str] = None) -> tuple[str, bool]:
    """The export directory of ``detector`` (a :class:`fcos.inference.detector.Detector` with its weights
    loaded from ``weights``) under ``root`` (default :func:`cache_root`); exported now unless the cache
    holds it. Returns (directory, True when it was exported by this call)."""
    from fcos.export import export_model

    root = root or cache_root()
    out = os.path.join(root, "exports", export_key(detector.cfg, weights))
    if os.path.isfile(os.path.join(out, "infer_cfg.yml")):
        return out, False
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=os.path.dirname(out))
    try:
        export_model(detector.model, detector.cfg, tmp, detector.class_names, detector.category_ids)
        if os.path.isdir(out):  # another process finished first
            return out, False
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, True


def ensure_onnx(export_dir: str) -> str:
    """``export_dir/model.onnx`` for the ONNX Runtime and OpenVINO backends, converted now (paddle2onnx,
    :func:`fcos.export.export_onnx`) when missing. Written under a temporary name and renamed, so an
    interrupted conversion leaves no half-written model. RuntimeError when paddle2onnx is missing."""
    from fcos.export import export_onnx

    path = os.path.join(export_dir, "model.onnx")
    if os.path.isfile(path):
        return path
    fd, tmp = tempfile.mkstemp(prefix=".model-", suffix=".onnx", dir=export_dir)
    os.close(fd)
    try:
        export_onnx(export_dir, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
