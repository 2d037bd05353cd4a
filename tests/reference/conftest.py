"""Reference tests: compare against torch / torchvision / timm. Run with ``make test-reference``
(``bash tests/reference/run.sh``), which provides those packages in ``.venv-ref``; the default test run
deselects them (``-m "not reference"`` in setup.cfg)."""

from __future__ import annotations

import importlib.util

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reference: compares against torch/torchvision/timm (make test-reference)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reference/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.reference)


# Without torch (CI, plain `make test`) these modules are not even collected, so they neither run nor show as skipped.
if importlib.util.find_spec("torch") is None:
    collect_ignore_glob = ["test_*.py"]
