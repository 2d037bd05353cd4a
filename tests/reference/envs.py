"""Where the reference environments built by ``tests/reference/run.sh`` live, and how to import from them.

* ``require(what)``: fail (never skip) with a message saying how to build the environment when run by
  ``make test-reference``; outside it (plain pytest in some other venv) the caller's test is skipped.
* ``import_adet()``: imports AdelaiDet from its source tree (on ``sys.path`` through ``adelaidet-src.pth`` in
  ``.venv-ref``) after inserting a stub ``adet._C``: the C++ extension does not build against torch 2.14 and FCOS
  does not use it (only BezierAlign / DefROIAlign call it; the stub's functions raise).
* ``PPDET_PYTHON``: the interpreter of ``.venv-ppdet`` (PaddleDetection runs there, see ``ppdet_client.py``).

This module imports only the standard library, so the PaddleDetection worker can share it.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# run.sh exports these; the defaults are its default locations (so a plain `pytest tests/reference` in .venv-ref
# finds environments built earlier).
READY = os.environ.get("FCOS_REF_ENVS_READY") == "1"
PPDET_PYTHON = os.environ.get("FCOS_REF_PPDET_PYTHON", os.path.join(ROOT, ".venv-ppdet", "bin", "python"))
BUILD_HINT = "build the reference environments with `make test-reference` (bash tests/reference/run.sh --setup-only)"


class ReferenceEnvError(RuntimeError):
    """A reference environment (detectron2/AdelaiDet in .venv-ref, PaddleDetection in .venv-ppdet) is missing."""


def require(what: str, ok: bool, detail: str = "") -> None:
    """Raise ``ReferenceEnvError`` under ``make test-reference`` (the build should have provided ``what``);
    elsewhere skip the calling test. ``ok`` is whether it is available."""
    if ok:
        return
    msg = f"reference environment missing: {what}{': ' + detail if detail else ''}; {BUILD_HINT}"
    if READY:
        raise ReferenceEnvError(msg)
    import pytest

    pytest.skip(msg)


def _adet_c_stub() -> types.ModuleType:
    mod = types.ModuleType("adet._C")
    mod.__doc__ = "stub: AdelaiDet's C++ extension is not built (FCOS does not need it)"

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError(f"adet._C.{name}: AdelaiDet's C++ extension is not built in .venv-ref")

        return unavailable

    mod.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return mod


def import_adet() -> types.ModuleType:
    """``import adet`` with the ``adet._C`` stub in place (idempotent)."""
    sys.modules.setdefault("adet._C", _adet_c_stub())
    import adet

    return adet
