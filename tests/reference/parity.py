"""Shared pieces of the reference comparisons: test images, our side of a comparison, and the agreement rule.

* ``photo_bgr()``, ``synthetic_bgr(h, w, seed)``: a real photo (matplotlib's grace_hopper.jpg) and a seeded scene.
* ``to_test_size(img, short, max_size)``: an image resized (OpenCV) so the recipe's test resize keeps it as is.
* ``our_model(recipe, state)``: ``fcos.build_model`` of ``configs/<recipe>.yml`` with ``state`` loaded strictly.
* ``our_detections(model, images, im_shape)``: eval forward on a network input shared with the reference (already
  normalised and padded, (1, 3, H, W)) through ``split_detections`` with the recipe's box rule (as evaluation and
  inference do); ``{"boxes" (k, 4) xyxy, "scores" (k,), "labels" (k,) contiguous}``.
* ``assert_same_detections(ref, ours, name)``: the agreement rule of the parity tests (see its docstring).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import paddle

import fcos
from fcos.checkpoint.weights import load_weights
from fcos.inference.matching import box_iou
from fcos.utils.detections import drops_empty_boxes, split_detections

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IOU_MIN = 0.99
COORD_TOL = 0.05  # px; a pair matches with IoU >= IOU_MIN or all coordinates within this
SCORE_TOL = 2e-3
CUT_MARGIN = 5e-3  # detections this close to the lowest kept score may lack a partner (top-k / threshold cut)
MIN_DETECTIONS = 50
NMS_FLIP_IOU = 0.5  # overlap of two candidates one of which NMS (threshold 0.6) may keep instead of the other
MAX_NMS_FLIPS = 4  # per comparison at least; or 3 % of the detections of both sides


def photo_bgr() -> np.ndarray:
    import cv2
    import matplotlib

    img = cv2.imread(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))
    assert img is not None, "matplotlib's sample photo grace_hopper.jpg is missing"
    return img


def synthetic_bgr(h: int = 480, w: int = 640, seed: int = 7) -> np.ndarray:
    """Smooth gradients, filled rectangles and circles, noise: uint8 BGR (h, w, 3)."""
    import cv2

    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w * 200, yy / h * 180 + 30, (xx + yy) / (w + h) * 150 + 50], axis=2)
    for _ in range(12):
        color = tuple(int(c) for c in rng.randint(0, 255, 3))
        x1, y1 = int(rng.randint(0, w - 60)), int(rng.randint(0, h - 60))
        x2, y2 = x1 + int(rng.randint(30, 200)), y1 + int(rng.randint(30, 200))
        if rng.rand() < 0.5:
            cv2.rectangle(img, (x1, y1), (x2, y2), color, -1)
        else:
            cv2.circle(img, ((x1 + x2) // 2, (y1 + y2) // 2), (x2 - x1) // 2, color, -1)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def to_test_size(img: np.ndarray, short: int, max_size: int) -> np.ndarray:
    """``img`` resized (OpenCV bilinear) to the size the recipe's test resize maps it to, so that size is kept."""
    import cv2

    h, w = img.shape[:2]
    scale = min(short / min(h, w), max_size / max(h, w))
    size = (int(round(w * scale)), int(round(h * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)


def recipe_config(recipe: str, overrides: list[str] | None = None) -> Any:
    return fcos.load_config(os.path.join(ROOT, "configs", f"{recipe}.yml"), overrides or [])


def our_model(recipe: str, state: Any) -> Any:
    """Our dygraph model of ``recipe`` in eval mode, ``state`` (dict or weights file) loaded strictly."""
    model = fcos.build_model(recipe_config(recipe))
    report = load_weights(model, state, strict=True)
    assert not report.missing and not report.unexpected and not report.shape_mismatch, report
    model.eval()
    return model


def our_detections(model: Any, images: np.ndarray, im_shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Our detections for the shared network input ``images`` (1, 3, H, W), image size ``im_shape`` (h, w)."""
    with paddle.no_grad():
        bboxes, bbox_num = model(
            paddle.to_tensor(images),
            paddle.to_tensor([list(im_shape)], dtype="float32"),
            paddle.to_tensor([[1.0, 1.0]], dtype="float32"),
        )
    # the model's rows become results as everywhere in the library (the box rule may drop empty boxes here)
    drop_empty = drops_empty_boxes(model.cfg.postprocess.box_rule)
    return split_detections(bboxes.numpy(), bbox_num.numpy(), drop_empty=drop_empty)[0]


def _one_way(a: dict, b: dict) -> tuple[np.ndarray, float, float]:
    """Greedy one-to-one matching of ``a`` onto ``b``, strongest first: same label, IoU >= IOU_MIN or all
    coordinates within COORD_TOL, |score difference| <= SCORE_TOL. Returns a's matched mask and the largest
    coordinate and score differences of the pairs."""
    iou = box_iou(a["boxes"], b["boxes"])
    coord = np.abs(a["boxes"][:, None, :] - b["boxes"][None, :, :]).max(axis=2) if len(b["boxes"]) else iou
    dscore = np.abs(a["scores"][:, None] - b["scores"][None, :])
    ok = (a["labels"][:, None] == b["labels"][None, :]) & ((iou >= IOU_MIN) | (coord <= COORD_TOL))
    ok &= dscore <= SCORE_TOL
    used = np.zeros(len(b["scores"]), dtype=bool)
    matched = np.zeros(len(a["scores"]), dtype=bool)
    max_coord, max_score = 0.0, 0.0
    for i in np.argsort(-a["scores"], kind="stable"):
        cand = np.where(ok[i] & ~used)[0]
        if len(cand) == 0:
            continue
        j = cand[np.argmin(dscore[i, cand] + coord[i, cand])]
        used[j] = matched[i] = True
        max_coord = max(max_coord, float(coord[i, j]))
        max_score = max(max_score, float(dscore[i, j]))
    return matched, max_coord, max_score


def assert_same_detections(ref: dict, ours: dict, name: str, min_count: int = MIN_DETECTIONS) -> dict:
    """Every detection of each side has a partner on the other (same class; IoU >= 0.99 or all coordinates within
    0.05 px; |score difference| <= 2e-3), except detections within 5e-3 of the lowest score kept on their own side,
    which a top-k or threshold cut may keep on one side only, and a few NMS order flips between candidates whose
    scores tie to float noise (see below; counted in the statistics). ``ref`` / ``ours``: boxes (k, 4) xyxy, scores
    (k,), labels (k,) in the same class numbering. Returns the statistics (printed by the tests)."""
    n_ref, n_ours = len(ref["scores"]), len(ours["scores"])
    assert n_ref >= min_count, f"{name}: only {n_ref} reference detections; the test needs at least {min_count}"
    assert n_ours, f"{name}: we give no detections, the reference {n_ref}"
    # a detection may lack a partner only near the lowest score its own side kept
    cut_ref = float(ref["scores"].min()) + CUT_MARGIN
    cut_ours = float(ours["scores"].min()) + CUT_MARGIN
    m_ref, coord_a, score_a = _one_way(ref, ours)
    m_ours, coord_b, score_b = _one_way(ours, ref)
    lost_ref = np.where(~m_ref & (ref["scores"] > cut_ref))[0]
    lost_ours = np.where(~m_ours & (ours["scores"] > cut_ours))[0]
    # NMS order flips: two overlapping candidates of one class with scores equal to float noise are ranked one way
    # by the reference and the other way by us, so each side keeps a different one (and what it suppresses
    # differs). Such unmatched detections come in overlapping same-class groups across the two sides with scores
    # within CUT_MARGIN; a few of them are excused, a systematic difference (many unmatched) is not.
    flip_ref = _nms_flips(ref, lost_ref, ours, np.where(~m_ours)[0])
    flip_ours = _nms_flips(ours, lost_ours, ref, np.where(~m_ref)[0])
    flips = len(flip_ref) + len(flip_ours)
    if flips <= max(MAX_NMS_FLIPS, int(0.03 * (n_ref + n_ours))):
        lost_ref = np.setdiff1d(lost_ref, flip_ref)
        lost_ours = np.setdiff1d(lost_ours, flip_ours)

    def show(d: dict, idx: np.ndarray) -> str:
        return "; ".join(
            f"cls {d['labels'][i]} score {d['scores'][i]:.4f} box {np.round(d['boxes'][i], 2).tolist()}"
            for i in idx[:5]
        )

    stats = {
        "reference": n_ref,
        "ours": n_ours,
        "unmatched_reference": int((~m_ref).sum()),
        "unmatched_ours": int((~m_ours).sum()),
        "max_coord_diff_px": max(coord_a, coord_b),
        "max_score_diff": max(score_a, score_b),
        "nms_flips_excused": flips,
        "box_sizes_px": [float(np.percentile(np.sqrt(_areas(ref["boxes"])), q)) for q in (5, 50, 95)],
    }
    assert not len(lost_ref) and not len(lost_ours), (
        f"{name}: {len(lost_ref)} reference detections above {cut_ref:.4f} and {len(lost_ours)} of ours above "
        f"{cut_ours:.4f} have no partner ({stats}); reference: {show(ref, lost_ref)}; ours: {show(ours, lost_ours)}"
    )
    return stats


def _nms_flips(a: dict, idx: np.ndarray, b: dict, b_unmatched: np.ndarray) -> np.ndarray:
    """The detections ``idx`` of ``a`` that overlap (IoU >= NMS_FLIP_IOU) an unmatched detection of ``b`` of the
    same class whose score is within CUT_MARGIN."""
    if not len(idx) or not len(b_unmatched):
        return np.zeros(0, dtype=np.int64)
    iou = box_iou(a["boxes"][idx], b["boxes"][b_unmatched])
    same = a["labels"][idx][:, None] == b["labels"][b_unmatched][None, :]
    close = np.abs(a["scores"][idx][:, None] - b["scores"][b_unmatched][None, :]) <= CUT_MARGIN
    return idx[(same & close & (iou >= NMS_FLIP_IOU)).any(axis=1)]


def _areas(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def convert_checkpoint(source: str, checkpoint: str, output: str, recipe: str) -> Any:
    """Convert a checkpoint file written by the reference code with our converter (``tools/convert_weights.py``'s
    ``convert_file``) for ``configs/<recipe>.yml``; writes ``output`` and returns the ``Conversion``."""
    from fcos.checkpoint.convert import convert_file

    return convert_file(source, checkpoint, output, config=os.path.join(ROOT, "configs", f"{recipe}.yml"))
