"""``Results``: the detections of one image, the one object every consumer uses.

The infer/deploy tools, the Trainer's VisualDL images and the public ``fcos.Detector`` all
produce and read this class. Pure numpy + OpenCV (no Paddle), so the deploy predictor can use it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from fcos.inference.visualize import class_name, draw_detections


@dataclass
class Results:
    """Detections of one image.

    boxes: (k, 4) float32 x1, y1, x2, y2 in original image pixels; scores: (k,) float32, sorted
    descending; labels: (k,) int64 contiguous class index 0..C-1; names: the class name of every
    label (index = label); image: the original BGR uint8 image when kept; path: where it came from
    (a file path, or "video.mp4#frame12"); orig_shape: (h, w) of the original image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str] = field(default_factory=list)
    image: Optional[np.ndarray] = None
    path: str = ""
    orig_shape: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not (len(self.boxes) == len(self.scores) == len(self.labels)):
            raise ValueError(
                f"Results: boxes ({len(self.boxes)}), scores ({len(self.scores)}) and labels ({len(self.labels)}) "
                "must have the same length"
            )
        if self.orig_shape == (0, 0) and self.image is not None:
            self.orig_shape = (int(self.image.shape[0]), int(self.image.shape[1]))

    def __len__(self) -> int:
        return len(self.scores)

    def __repr__(self) -> str:
        return f"Results(path={self.path!r}, detections={len(self)}, orig_shape={self.orig_shape})"

    @property
    def class_names(self) -> list[str]:
        """The class name of each detection (k,)."""
        return [class_name(self.names, int(lb)) for lb in self.labels]

    def filter(self, threshold: float) -> Results:
        """A copy holding only detections with ``score >= threshold``."""
        keep = self.scores >= threshold
        return Results(
            boxes=self.boxes[keep],
            scores=self.scores[keep],
            labels=self.labels[keep],
            names=self.names,
            image=self.image,
            path=self.path,
            orig_shape=self.orig_shape,
        )

    def plot(
        self, threshold: float = 0.0, image: Optional[np.ndarray] = None, line_width: Optional[int] = None
    ) -> np.ndarray:
        """The image (``image`` or the kept one) with detections ``>= threshold`` drawn; BGR uint8."""
        base = image if image is not None else self.image
        if base is None:
            raise ValueError(f"Results.plot: no image kept for {self.path!r}; pass image=")
        return draw_detections(base, self.boxes, self.scores, self.labels, self.names, threshold, line_width)

    def to_dicts(self, threshold: float = 0.0) -> list[dict[str, Any]]:
        """One dict per detection: name, label, score, box [x1, y1, x2, y2] (original pixels)."""
        out = []
        for b, s, lb in zip(self.boxes, self.scores, self.labels):
            if s < threshold:
                continue
            out.append(
                {
                    "name": class_name(self.names, int(lb)),
                    "label": int(lb),
                    "score": round(float(s), 5),
                    "box": [round(float(v), 2) for v in b],
                }
            )
        return out

    def to_json(self, threshold: float = 0.0) -> str:
        """JSON text of ``{"path", "orig_shape", "detections": to_dicts(threshold)}``."""
        return json.dumps(
            {"path": self.path, "orig_shape": list(self.orig_shape), "detections": self.to_dicts(threshold)}
        )

    def to_coco(
        self,
        image_id: Optional[int] = None,
        category_ids: Optional[Sequence[int]] = None,
        threshold: float = 0.0,
        file_name: Optional[str] = None,
    ) -> list[dict[str, Any]]:
        """COCO result records: category_id = ``category_ids[label]`` (label + 1 when not given),
        bbox = [x, y, w, h] in original pixels, score; plus image_id and/or file_name when given."""
        recs = []
        for b, s, lb in zip(self.boxes, self.scores, self.labels):
            if s < threshold:
                continue
            lb = int(lb)
            if category_ids is not None:
                if not 0 <= lb < len(category_ids):
                    raise ValueError(f"label {lb} has no category id (only {len(category_ids)} given)")
                cat = int(category_ids[lb])
            else:
                cat = lb + 1
            x1, y1, x2, y2 = (float(v) for v in b)
            rec: dict[str, Any] = {}
            if image_id is not None:
                rec["image_id"] = int(image_id)
            if file_name is not None:
                rec["file_name"] = file_name
            rec["category_id"] = cat
            rec["bbox"] = [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]
            rec["score"] = round(float(s), 5)
            recs.append(rec)
        return recs

    def save_txt(self, path: str, threshold: float = 0.0) -> None:
        """Write one line per detection: ``label score x1 y1 x2 y2 name`` (original pixels).

        An image without detections gets an empty file, so "nothing found" is distinguishable
        from "not processed".
        """
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for d in self.to_dicts(threshold):
                x1, y1, x2, y2 = d["box"]
                f.write(f"{d['label']} {d['score']:.5f} {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} {d['name']}\n")
