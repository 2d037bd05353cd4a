"""GUI tests: ``tools/infer.py --show`` in a real OpenCV window. Run with ``make test-gui``
(``bash tests/gui/run.sh``), which provides a virtual X server (Xvfb), xdotool, xwd and the GUI build of
OpenCV in ``.venv-gui``; the default test run deselects them (``-m "not gui"`` in setup.cfg).

When run without that environment (no DISPLAY, headless cv2, no xdotool) the tests fail with the reason
instead of being skipped: a skipped GUI test would look like a passing one."""

from __future__ import annotations

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "demo_shapes.yml")
CATEGORY_IDS = [3, 5, 7, 9]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gui: a real OpenCV window on a virtual X server (make test-gui)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/gui/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.gui)


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> str:
    """The demo config's model with seeded random weights that produce many detections (as in
    tests/test_inference_tools.py), saved as safetensors."""
    import paddle

    import fcos
    from fcos.checkpoint.weights import save_weights
    from fcos.inference.synthetic_weights import make_detection_rich

    cfg = fcos.load_config(CONFIG)
    paddle.seed(0)
    model = fcos.build_model(cfg)
    make_detection_rich(model, seed=0)
    path = str(tmp_path_factory.mktemp("w") / "demo.safetensors")
    save_weights(path, model.state_dict(), {"class_names": cfg.data.class_names, "category_ids": CATEGORY_IDS})
    return path
