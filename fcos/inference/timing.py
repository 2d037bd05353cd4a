"""Per-stage wall-clock timing for FPS reports: pre-processing, inference, post-processing.

Drawing and file output are never inside a timed stage; the first ``warmup`` calls are not
recorded (Paddle and oneDNN build kernels and caches on the first runs).
"""

from __future__ import annotations

import numpy as np


class StageTimer:
    """Per-stage wall times in seconds; the first ``warmup`` calls of ``record`` are not kept.

    Stages: ``pre`` (resize, normalise, pad), ``infer`` (network, box decoding and NMS in the graph,
    copies in and out), ``post`` (split per image, build ``Results``).
    """

    STAGES = ("pre", "infer", "post")

    def __init__(self, warmup: int = 0) -> None:
        self.warmup = int(warmup)
        self.calls = 0
        self.times: dict[str, list[float]] = {s: [] for s in self.STAGES}
        self.images = 0

    def record(self, stage_times: dict[str, float], num_images: int) -> None:
        """Add one call's stage times (seconds) covering ``num_images`` images."""
        self.calls += 1
        if self.calls <= self.warmup:
            return
        for k, v in stage_times.items():
            self.times.setdefault(k, []).append(float(v))
        self.images += int(num_images)

    def reset(self) -> None:
        """Forget all recorded times (the warm-up count starts again)."""
        self.calls = 0
        self.times = {s: [] for s in self.STAGES}
        self.images = 0

    @property
    def timed_calls(self) -> int:
        return len(self.times["pre"])

    def median_ms(self) -> dict[str, float]:
        """Median milliseconds per call for each stage (NaN before any timed call)."""
        return {k: float(np.median(v)) * 1e3 if v else float("nan") for k, v in self.times.items()}

    def fps(self) -> float:
        """Images per second from the summed stage medians (NaN before any timed call)."""
        n = self.timed_calls
        if n == 0:
            return float("nan")
        total_ms = sum(self.median_ms().values())
        images_per_call = self.images / n
        return 1000.0 * images_per_call / total_ms if total_ms > 0 else float("inf")

    def summary(self) -> str:
        """One line: timed calls, median ms per stage, total and FPS (drawing excluded)."""
        n = self.timed_calls
        if n == 0:
            return f"no timed calls yet ({self.calls} calls, warm-up {self.warmup})"
        med = self.median_ms()
        total = sum(med.values())
        return (
            f"{n} timed calls after {self.warmup} warm-up, {self.images / n:g} image(s) per call; median ms per call: "
            f"pre-process {med['pre']:.1f} | inference (network + decode + NMS) {med['infer']:.1f} | "
            f"post-process {med['post']:.1f} | total {total:.1f} -> {self.fps():.2f} FPS (drawing excluded)"
        )
