"""How closely a reduced-precision model (bf16, int8) reproduces the fp32 detections of the same images.

For each score threshold: the fp32 detections with score >= threshold, how many found a partner in
the other set with the same label and IoU >= ``iou_thresh`` (candidates down to half the threshold
take part, so a detection at the cut is not lost to a small score change), and the largest score
change of the pairs. Used by tools/quantize.py (on the calibration images) and
benchmarks/precision_match.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fcos.inference.matching import match_detections


@dataclass
class MatchRow:
    """One score threshold: ``matched`` of ``total`` reference detections reproduced."""

    min_score: float
    total: int
    matched: int
    max_score_diff: float

    @property
    def rate(self) -> float:
        """Matched fraction (1.0 when there was nothing to match)."""
        return self.matched / self.total if self.total else 1.0


def precision_match(
    reference: Sequence[Any], other: Sequence[Any], thresholds: Sequence[float], iou_thresh: float = 0.9
) -> list[MatchRow]:
    """Per threshold, how many ``reference`` detections (per image: boxes (k, 4) xyxy, scores, labels,
    e.g. :class:`Results`) ``other`` reproduces; the two sequences hold the same images in order."""
    if len(reference) != len(other):
        raise ValueError(f"precision_match: {len(reference)} reference images but {len(other)} others")
    rows = []
    for thr in thresholds:
        total = matched = 0
        max_sd = 0.0
        for ref, got in zip(reference, other):
            m = match_detections(ref, got, iou_thresh=iou_thresh, min_score=thr, other_min_score=thr / 2)
            total, matched, max_sd = total + m.num_ref, matched + m.matched, max(max_sd, m.max_score_diff)
        rows.append(MatchRow(float(thr), total, matched, max_sd))
    return rows


def format_match_table(rows: Sequence[MatchRow], name: str, iou_thresh: float = 0.9) -> str:
    """A markdown table of :func:`precision_match` rows; ``name`` is the compared precision (e.g. int8)."""
    lines = [
        f"| min score | fp32 detections | matched by {name} (IoU >= {iou_thresh:g}, same label) | max score change |",
        "|---|---|---|---|",
    ]
    for r in rows:
        share = f"{r.rate:.1%}" if r.total else "-"
        lines.append(f"| {r.min_score:g} | {r.total} | {r.matched} ({share}) | {r.max_score_diff:.3f} |")
    return "\n".join(lines)
