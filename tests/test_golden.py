"""Seeded golden test of the tiny demo model: refactors must not silently change the numbers.

The numbers in ``tests/golden/demo_shapes.json`` were produced once by ``tests/golden/make_golden.py``
(see there; regenerating is a deliberate act). Compared within 1e-5 relative.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _make_golden():
    spec = importlib.util.spec_from_file_location(
        "make_golden", os.path.join(ROOT, "tests", "golden", "make_golden.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flatten(obj, prefix: str = "") -> dict[str, float]:
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _flatten(val, f"{prefix}.{key}").items()}
    if isinstance(obj, list):
        return {k: v for i, val in enumerate(obj) for k, v in _flatten(val, f"{prefix}[{i}]").items()}
    return {prefix: float(obj)}


def test_demo_model_matches_golden_numbers() -> None:
    module = _make_golden()
    with open(module.GOLDEN_PATH, encoding="utf-8") as f:
        golden = json.load(f)
    assert golden["made_by"] == "python tests/golden/make_golden.py"
    expected = _flatten(golden["numbers"])
    actual = _flatten(module.compute())
    assert actual.keys() == expected.keys()
    assert sum(golden["numbers"]["detections"]["bbox_num"]) > 10  # the numbers cover real detections
    bad = {
        k: (actual[k], expected[k]) for k in expected if not np.isclose(actual[k], expected[k], rtol=1e-5, atol=1e-6)
    }
    assert not bad, f"{len(bad)} numbers changed (regenerate only deliberately): {dict(list(bad.items())[:8])}"


def test_golden_weights_do_not_depend_on_paddle_rng() -> None:
    import paddle

    import fcos

    module = _make_golden()
    cfg = fcos.load_config(os.path.join(ROOT, "configs", "demo_shapes.yml"))
    paddle.seed(1)
    a = module.deterministic_state(fcos.build_model(cfg))
    paddle.seed(2)
    b = module.deterministic_state(fcos.build_model(cfg))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
