"""Reference tests: compare against torchvision / timm, AdelaiDet on detectron2 and PaddleDetection. Run with
``make test-reference`` (``bash tests/reference/run.sh``), which builds the environments (see run.sh) and runs
pytest in ``.venv-ref``; the default test run deselects them (``-m "not reference"`` in setup.cfg).

Fixtures (a missing environment fails the test under ``make test-reference``, and skips it elsewhere):

* ``adelaidet_model(recipe, seed=0)`` -> the AdelaiDet ``OneStageDetector`` of "rt_dla34" / "rt_r50" in eval mode
  with seeded random weights that give many detections (``adelaidet_models.py``; cached per session, so treat it
  as read-only or build your own with ``adelaidet_models.build_adelaidet_model``).
* ``ppdet_worker`` -> a ``ppdet_client.PpdetWorker``: ``ppdet_worker.call("module:function", **kwargs)`` runs a
  task in ``.venv-ppdet`` (arrays travel as npz); ``ppdet_tasks.py`` builds/saves/runs PaddleDetection's FCOS.
  One worker per session; models it builds stay in it under the ``name`` given.

Helpers: ``parity.py`` (test images, our model from a converted state, the detection agreement rule),
``envs.py`` (``import_adet``, ``require``), ``adelaidet_models.py``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from typing import Any, Callable

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reference: compares against torchvision/timm/AdelaiDet/PaddleDetection (make test-reference)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reference/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.reference)


# Without torch (CI, plain `make test`) these modules are not even collected, so they neither run nor show as skipped.
if importlib.util.find_spec("torch") is None:
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def adelaidet_model() -> Callable[..., Any]:
    """``adelaidet_model(recipe, seed=0)``: the seeded AdelaiDet reference model of ``recipe`` (cached)."""
    from envs import require

    require("detectron2 in .venv-ref", importlib.util.find_spec("detectron2") is not None)
    require("AdelaiDet on sys.path of .venv-ref", importlib.util.find_spec("adet") is not None)
    from adelaidet_models import build_adelaidet_model

    cache: dict[tuple[str, int], Any] = {}

    def get(recipe: str, seed: int = 0) -> Any:
        if (recipe, seed) not in cache:
            cache[(recipe, seed)] = build_adelaidet_model(recipe, seed)
        return cache[(recipe, seed)]

    return get


@pytest.fixture(scope="session")
def ppdet_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A ``PpdetWorker`` running PaddleDetection in .venv-ppdet for the whole session."""
    from envs import PPDET_PYTHON, require

    require("PaddleDetection venv", os.path.exists(PPDET_PYTHON), f"{PPDET_PYTHON} does not exist")
    from ppdet_client import PpdetWorker

    worker = PpdetWorker(workdir=str(tmp_path_factory.mktemp("ppdet_worker")))
    try:
        worker.call("ppdet_tasks:ping")
    except Exception as e:  # noqa: BLE001 - reported as a missing environment
        worker.close()
        require("PaddleDetection importable in .venv-ppdet", False, str(e))
    yield worker
    worker.close()


@pytest.fixture(scope="session")
def ppdet_fcos(ppdet_worker: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """PaddleDetection's FCOS R50 multiscale 2x (``ppdet_tasks.build_fcos``, seed 0) built once in the worker under
    the name ``"fcos"``, its state dict saved by ``paddle.save``. Returns ``name``, ``pdparams`` (that file),
    ``keys`` (state-dict order) and ``num_params``."""
    pdparams = str(tmp_path_factory.mktemp("ppdet_fcos") / "fcos_r50_ms_2x_seed0.pdparams")
    info = ppdet_worker.call("ppdet_tasks:build_fcos", name="fcos", seed=0, save=pdparams)
    return {"name": "fcos", "pdparams": pdparams, **info}
