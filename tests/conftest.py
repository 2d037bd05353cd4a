"""Shared fixtures. Tests run on CPU with small data the tests generate themselves."""

from __future__ import annotations

import os
import shutil
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


@pytest.fixture(scope="session")
def demo_category_ids() -> list[int]:
    """The COCO category ids stored with ``demo_weights`` (not 1..4, so that their use shows)."""
    return [3, 5, 7, 9]


@pytest.fixture(scope="session")
def demo_weights(tmp_path_factory, demo_category_ids) -> str:
    """configs/demo_shapes.yml's model with seeded random weights that produce many detections,
    saved as safetensors with class names and ``demo_category_ids``."""
    import fcos
    from fcos.checkpoint.weights import save_weights
    from fcos.inference.synthetic_weights import make_detection_rich

    cfg = fcos.load_config(os.path.join(ROOT, "configs", "demo_shapes.yml"))
    paddle.seed(0)
    model = fcos.build_model(cfg)
    make_detection_rich(model, seed=0)
    path = str(tmp_path_factory.mktemp("w") / "demo.safetensors")
    save_weights(path, model.state_dict(), {"class_names": cfg.data.class_names, "category_ids": demo_category_ids})
    return path


@pytest.fixture(scope="session")
def demo_export(tmp_path_factory) -> str:
    """configs/demo_shapes.yml's model with seeded detection-rich weights (``make_detection_rich`` seed 1),
    exported once per session with category ids 1..4 (``model.json``, ``model.pdiparams``, ``infer_cfg.yml``).
    Shared: a test module works on its own ``shutil.copytree`` of it, so no module's edits reach another."""
    import fcos
    from fcos.export import export_model
    from fcos.inference.synthetic_weights import make_detection_rich

    cfg = fcos.load_config(os.path.join(ROOT, "configs", "demo_shapes.yml"))
    paddle.seed(0)
    model = fcos.build_model(cfg)
    make_detection_rich(model, seed=1)
    out = str(tmp_path_factory.mktemp("demo_export") / "model")
    export_model(model, cfg, out, cfg.data.class_names, [1, 2, 3, 4])
    return out


@pytest.fixture(scope="session")
def demo_export_onnx(demo_export, tmp_path_factory) -> str:
    """A copy of ``demo_export`` with ``model.onnx`` (paddle2onnx), converted once per session for the
    ONNX Runtime and OpenVINO tests. Read-only for them: a test that edits it works on its own copy."""
    from fcos.export import export_onnx

    out = str(tmp_path_factory.mktemp("demo_export_onnx") / "model")
    shutil.copytree(demo_export, out)
    export_onnx(out)
    return out


@pytest.fixture(scope="session")
def load_tool():
    """``load_tool("infer")``: tools/infer.py loaded as a fresh module (its ``main`` takes an argv list)."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
