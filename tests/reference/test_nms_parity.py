"""Our in-graph NMS vs torchvision's ``batched_nms`` (what AdelaiDet's ``ml_nms`` and torchvision's FCOS call), on
crowded random boxes of four classes of which a third have zero width or height (``make test-reference``).

The boxes come out of ``postprocess_detections`` exactly (hand-made head outputs decode to them), so the comparison
is of the NMS alone: the same boxes kept, in the same order, for the AdelaiDet/torchvision rule
(``nms_keeps_empty``); Paddle's own rule (PaddleDetection's) must differ on these boxes, which shows the test sees
the difference.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from fcos.config import PostprocessConfig  # noqa: E402
from fcos.modeling.points import compute_points  # noqa: E402
from fcos.modeling.postprocess import postprocess_detections  # noqa: E402

H, W, STRIDE, CLASSES = 16, 16, 8, 4


def _case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Boxes (H*W, 4), scores, labels, and head outputs that decode to them."""
    rng = np.random.default_rng(seed)
    n = H * W
    x1 = rng.uniform(20, 60, n)
    y1 = rng.uniform(20, 60, n)
    w = rng.uniform(4, 30, n)
    h = rng.uniform(4, 30, n)
    empty = rng.random(n) < 0.33
    w[empty & (rng.random(n) < 0.5)] = 0.0
    h[empty & (w > 0)] = 0.0
    boxes = np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)
    scores = rng.permutation(np.linspace(0.1, 0.9, n)).astype(np.float32)  # distinct
    labels = rng.integers(0, CLASSES, n)
    points = compute_points([(H, W)], [STRIDE], offset=0.5)[0].numpy()  # (H*W, 2) x, y
    reg = np.concatenate([points - boxes[:, :2], boxes[:, 2:] - points], axis=1)  # l, t, r, b
    cls = np.full((1, CLASSES, H, W), -30.0, np.float32)
    cls[0, labels, np.arange(n) // W, np.arange(n) % W] = np.log(scores / (1 - scores))
    head = [cls, reg.T.reshape(1, 4, H, W).astype(np.float32), np.full((1, 1, H, W), 30.0, np.float32)]
    return boxes, scores, labels, head


def _ours(head: list, keeps_empty: bool) -> np.ndarray:
    cfg = PostprocessConfig(
        score_thresh=0.05, sqrt_score=False, nms_thresh=0.6, max_dets=100, box_rule="none", nms_keeps_empty=keeps_empty
    )
    bboxes, _ = postprocess_detections(
        [paddle.to_tensor(head[0])],
        [paddle.to_tensor(head[1])],
        [paddle.to_tensor(head[2])],
        compute_points([(H, W)], [STRIDE], offset=0.5),
        [STRIDE],
        paddle.to_tensor(np.array([[1000.0, 1000.0]], np.float32)),
        paddle.to_tensor(np.array([[1.0, 1.0]], np.float32)),
        cfg,
        False,
    )
    return bboxes.numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_equals_torchvision_batched_nms(seed: int) -> None:
    boxes, scores, labels, head = _case(seed)
    keep = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.6)
    keep = keep[:100].numpy()
    ref = np.concatenate([labels[keep, None], scores[keep, None], boxes[keep]], axis=1)
    ours = _ours(head, keeps_empty=True)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    np.testing.assert_array_equal(ours[:, 0], ref[:, 0])
    np.testing.assert_allclose(ours[:, 1:], ref[:, 1:], rtol=1e-5, atol=1e-4)
    n_empty = int(((ref[:, 4] <= ref[:, 2]) | (ref[:, 5] <= ref[:, 3])).sum())
    assert n_empty >= 10, f"only {n_empty} zero-area boxes kept; the case must exercise them"
    print(f"seed {seed}: {len(ref)} kept by both, {n_empty} of them zero-area")
    # Paddle's own rule (PaddleDetection's) keeps a different set on these boxes
    paddle_rule = _ours(head, keeps_empty=False)
    assert paddle_rule.shape != ref.shape or not np.allclose(paddle_rule[:, 1:], ref[:, 1:], atol=1e-4)
