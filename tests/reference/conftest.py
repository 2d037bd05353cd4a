"""Reference tests: compare against torch / torchvision / timm. Run with ``make test-reference``
(``bash tests/reference/run.sh``), which provides those packages in ``.venv-ref``; the default test run
deselects them (``-m "not reference"`` in setup.cfg)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reference: compares against torch/torchvision/timm (make test-reference)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reference/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.reference)
