"""Drawing detections on BGR images (OpenCV only, no Paddle)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import cv2
import numpy as np

# 20 well-separated BGR colours; label i uses _PALETTE[i % 20].
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207),
    (10, 249, 72), (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0),
    (168, 153, 44), (255, 194, 0), (147, 69, 52), (255, 115, 100), (236, 24, 0),
    (255, 56, 132), (133, 0, 82), (255, 56, 203), (200, 149, 255), (199, 55, 255),
)  # fmt: skip


def label_color(label: int) -> tuple[int, int, int]:
    """The BGR colour used for class ``label``."""
    return _PALETTE[int(label) % len(_PALETTE)]


def class_name(names: Sequence[str], label: int) -> str:
    """``names[label]``, or ``class_<label>`` when the label is outside the name list."""
    label = int(label)
    return names[label] if 0 <= label < len(names) else f"class_{label}"


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    threshold: float = 0.0,
    line_width: Optional[int] = None,
) -> np.ndarray:
    """Return a copy of ``image`` (BGR uint8, (H, W, 3)) with boxes (k, 4) xyxy pixels drawn.

    Only detections with ``score >= threshold`` are drawn; each gets a coloured rectangle and a
    "name score" tag above it (inside the image when the box touches the top border).
    """
    canvas = np.ascontiguousarray(image.copy())
    h, w = canvas.shape[:2]
    lw = line_width or max(1, int(round(0.002 * (h + w))))
    font_scale = max(0.35, lw / 3.0)
    font_thick = max(1, lw - 1)
    order = np.argsort(np.asarray(scores))  # draw strongest last so it stays on top
    for i in order:
        score = float(scores[i])
        if score < threshold:
            continue
        x1, y1, x2, y2 = (int(round(float(v))) for v in boxes[i])
        x1, x2 = max(0, min(x1, w - 1)), max(0, min(x2, w - 1))
        y1, y2 = max(0, min(y1, h - 1)), max(0, min(y2, h - 1))
        color = label_color(int(labels[i]))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, lw, cv2.LINE_AA)
        text = f"{class_name(names, int(labels[i]))} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, font_thick)
        above = y1 - th - base - 2 >= 0
        ty1 = y1 - th - base - 2 if above else y1
        ty1 = min(ty1, max(0, h - th - base - 2))
        tx1 = min(x1, max(0, w - tw - 2))
        cv2.rectangle(canvas, (tx1, ty1), (tx1 + tw + 2, ty1 + th + base + 2), color, -1)
        cv2.putText(
            canvas,
            text,
            (tx1 + 1, ty1 + th + 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (255, 255, 255),
            font_thick,
            cv2.LINE_AA,
        )
    return canvas
