"""Golden numbers of the tiny demo model (``configs/demo_shapes.yml``) for ``tests/test_golden.py``.

    python tests/golden/make_golden.py          # rewrites tests/golden/demo_shapes.json

The weights come from a numpy RandomState keyed by the sorted state-dict names (not from Paddle's RNG or the
layers' initialisers), the input and targets are fixed, and the numbers are: the eval-mode head output
statistics per level, the detections, and the four training losses. Regenerating the file is a deliberate
act: only do it when a change of these numbers is intended (e.g. a fixed bug), and say so in the commit.
"""

from __future__ import annotations

import datetime
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN_PATH = os.path.join(ROOT, "tests", "golden", "demo_shapes.json")


def deterministic_state(model) -> dict[str, np.ndarray]:
    """Every state-dict tensor drawn from ``RandomState(0)`` in sorted-key order, scaled per kind."""
    rng = np.random.RandomState(0)
    state = {}
    for key in sorted(model.state_dict()):
        shape = tuple(model.state_dict()[key].shape)
        if key.endswith("._variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif key.endswith("._mean") or key.endswith(".bias"):
            value = rng.standard_normal(shape) * 0.1
        elif len(shape) == 4:
            value = rng.standard_normal(shape) * np.sqrt(1.0 / np.prod(shape[1:]))
        else:  # norm weights, per-level scales
            value = 1.0 + rng.standard_normal(shape) * 0.1
        state[key] = value.astype(np.float32)
    return state


def compute() -> dict:
    """The golden numbers (plain floats / ints), computed from scratch."""
    import paddle

    import fcos
    from fcos.checkpoint.weights import load_weights

    paddle.set_device("cpu")
    cfg = fcos.load_config(os.path.join(ROOT, "configs", "demo_shapes.yml"))
    model = fcos.build_model(cfg)
    report = load_weights(model, deterministic_state(model), strict=True)
    assert report.ok
    rng = np.random.RandomState(1)
    images = paddle.to_tensor(rng.standard_normal((2, 3, 128, 160)).astype(np.float32))
    im_shape = paddle.to_tensor([[128, 160], [112, 150]], dtype="float32")
    scale_factor = paddle.to_tensor([[1.0, 1.0], [0.5, 0.5]], dtype="float32")
    targets = [
        {"boxes": paddle.to_tensor([[10.0, 12.0, 60.0, 70.0], [40.0, 30.0, 150.0, 120.0]]), "labels": paddle.to_tensor([0, 2])},
        {"boxes": paddle.to_tensor([[5.0, 50.0, 90.0, 110.0]]), "labels": paddle.to_tensor([3])},
    ]  # fmt: skip

    out: dict = {"head": [], "detections": {}, "losses": {}}
    model.eval()
    with paddle.no_grad():
        cls_logits, bbox_reg, ctr_logits = model.forward_head(images)
        for level, (c, r, t) in enumerate(zip(cls_logits, bbox_reg, ctr_logits)):
            c, r, t = c.numpy().astype(np.float64), r.numpy().astype(np.float64), t.numpy().astype(np.float64)
            out["head"].append(
                {
                    "level": level,
                    "cls_mean": c.mean(), "cls_std": c.std(), "reg_mean": r.mean(), "reg_std": r.std(),
                    "ctr_mean": t.mean(), "ctr_std": t.std(),
                }
            )  # fmt: skip
        bboxes, bbox_num = model(images, im_shape, scale_factor)
    rows = bboxes.numpy().astype(np.float64)
    out["detections"] = {
        "bbox_num": [int(n) for n in bbox_num.numpy()],
        "first_rows": rows[:5].tolist(),  # [label, score, x1, y1, x2, y2], image 0, best first
        "score_sum": float(rows[:, 1].sum()),
        "box_sum": float(rows[:, 2:].sum()),
    }
    model.train()
    losses = model(images, targets=targets)
    out["losses"] = {k: float(v) for k, v in losses.items()}
    for item in out["head"]:
        for k, v in item.items():
            item[k] = float(v) if k != "level" else v
    return out


def main() -> int:
    import paddle

    numbers = compute()
    record = {
        "made_by": "python tests/golden/make_golden.py",
        "note": "regenerate only when the numbers are meant to change; see the module docstring",
        "config": "configs/demo_shapes.yml",
        "created": datetime.date.today().isoformat(),
        "paddle": paddle.__version__,
        "numpy": np.__version__,
        "numbers": numbers,
    }
    with open(GOLDEN_PATH, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"wrote {GOLDEN_PATH}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
