"""Repeated timed runs of a predictor on fixed images: warm-up, then ``repeats`` timed calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def benchmark_predictor(
    predictor: Any, images: Sequence[np.ndarray], warmup: int = 5, repeats: int = 20
) -> dict[str, float]:
    """Reset ``predictor.timer``, call ``predict(images)`` ``warmup + repeats`` times (the timer skips the
    warm-up calls) and return the median milliseconds per stage (``pre``, ``infer``, ``post``)."""
    predictor.timer.warmup = int(warmup)
    predictor.timer.reset()
    for _ in range(int(warmup) + int(repeats)):
        predictor.predict(list(images), keep_images=False)
    return predictor.timer.median_ms()
