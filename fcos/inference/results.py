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
    category_ids: list[int] = field(default_factory=list)
    file_name: Optional[str] = None

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
            category_ids=self.category_ids,
            file_name=self.file_name,
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

    def coco_file_name(self) -> str:
        """The ``file_name`` of this image's COCO records: ``file_name`` if set, else basename of ``path``."""
        if self.file_name is not None:
            return self.file_name
        return os.path.basename(self.path) if self.path else ""

    def to_coco(
        self,
        image_id: Optional[int] = None,
        category_ids: Optional[Sequence[int]] = None,
        threshold: float = 0.0,
        file_name: Optional[str] = None,
    ) -> list[dict[str, Any]]:
        """COCO result records, one per detection with ``score >= threshold``:
        ``{"image_id"?, "file_name", "category_id", "bbox": [x, y, w, h] original pixels, "score"}``.

        category_id = ``category_ids[label]`` (argument, else ``self.category_ids``, else label + 1);
        file_name defaults to :meth:`coco_file_name`; image_id only when given.
        """
        cat_ids = list(category_ids) if category_ids is not None else list(self.category_ids)
        name = self.coco_file_name() if file_name is None else file_name
        recs = []
        for b, s, lb in zip(self.boxes, self.scores, self.labels):
            if s < threshold:
                continue
            lb = int(lb)
            if cat_ids:
                if not 0 <= lb < len(cat_ids):
                    raise ValueError(f"{self.path or 'Results'}: label {lb} has no category id ({len(cat_ids)} given)")
                cat = int(cat_ids[lb])
            else:
                cat = lb + 1
            x1, y1, x2, y2 = (float(v) for v in b)
            rec: dict[str, Any] = {}
            if image_id is not None:
                rec["image_id"] = int(image_id)
            rec["file_name"] = name
            rec["category_id"] = cat
            rec["bbox"] = [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)]
            rec["score"] = round(float(s), 6)
            recs.append(rec)
        return recs

    def to_json(self, threshold: float = 0.0, image_id: Optional[int] = None) -> str:
        """JSON text of :meth:`to_coco` (a list of COCO result records); :meth:`from_json` reads it back."""
        return json.dumps(self.to_coco(image_id=image_id, threshold=threshold))

    @classmethod
    def from_coco(
        cls,
        records: Sequence[dict[str, Any]],
        names: Optional[Sequence[str]] = None,
        category_ids: Optional[Sequence[int]] = None,
        path: str = "",
    ) -> Results:
        """Results from COCO result records of one image (inverse of :meth:`to_coco`).

        ``category_ids`` maps ids back to labels (label = index of the id; label = id - 1 when not
        given). Detections are sorted by score, descending.
        """
        cat_ids = [int(c) for c in category_ids] if category_ids else []
        index = {c: i for i, c in enumerate(cat_ids)}
        boxes, scores, labels = [], [], []
        file_name = None
        for i, rec in enumerate(records):
            try:
                x, y, w, h = (float(v) for v in rec["bbox"])
                cat = int(rec["category_id"])
                score = float(rec["score"])
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"COCO record {i}: needs bbox [x, y, w, h], category_id and score ({e})") from e
            if cat_ids and cat not in index:
                raise ValueError(f"COCO record {i}: category_id {cat} is not one of {cat_ids}")
            labels.append(index[cat] if cat_ids else cat - 1)
            boxes.append([x, y, x + w, y + h])
            scores.append(score)
            file_name = rec.get("file_name", file_name)
        order = np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable")
        return cls(
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[order],
            scores=np.asarray(scores, dtype=np.float32)[order],
            labels=np.asarray(labels, dtype=np.int64)[order],
            names=list(names or []),
            path=path or (file_name or ""),
            category_ids=cat_ids,
            file_name=file_name,
        )

    @classmethod
    def from_json(
        cls, text: str, names: Optional[Sequence[str]] = None, category_ids: Optional[Sequence[int]] = None
    ) -> Results:
        """Inverse of :meth:`to_json`."""
        records = json.loads(text)
        if not isinstance(records, list):
            raise ValueError("Results.from_json: expected a JSON list of COCO result records")
        return cls.from_coco(records, names=names, category_ids=category_ids)

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
