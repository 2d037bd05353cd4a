"""Aspect-ratio grouping of training batches: every per-device batch holds images of one group only.

The references pad a batch to its largest image; batching wide with wide and tall with tall images saves
padding (speed and memory) and is part of their training recipe:

* ``orientation`` (detectron2 ``DATALOADER.ASPECT_RATIO_GROUPING``, AdelaiDet's FCOS_RT): two groups,
  ``0 if width > height else 1`` (a square image is in group 1), ``AspectRatioGroupedDataset``.
* ``quantized`` (torchvision references/detection ``--aspect-ratio-group-factor k``, 3 for FCOS):
  ``create_aspect_ratio_groups``: bins ``2 ** linspace(-1, 1, 2k + 1)`` and group
  ``bisect_right(bins, width / height)``, i.e. 2k + 2 groups; ``GroupedBatchSampler``.
* ``none`` (PaddleDetection's FCOS reader: plain shuffled batches).

Both references fill one bucket per group from the shuffled sample stream and emit a batch when a bucket holds
``batch_size`` images. :class:`GroupedBatchStream` applies that rule to our endless stream of epoch
permutations (buckets carry over epoch boundaries, as detectron2's infinite stream does), but computes batch
``t`` directly from (seed, t): the number of batches completed by the end of epoch ``e`` is
``sum_g floor(e * n_g / B)`` (``n_g`` images in group ``g``), and the ``k``-th image of group ``g``'s stream is
image ``k mod n_g`` of that group in the order of epoch ``k // n_g``'s permutation. Resuming at any step therefore
replays exactly the batches an uninterrupted run would have drawn, and every image is used once per epoch
(up to ``B - 1`` images per group waiting in a bucket). Group sizes come from the annotation file (COCO
width/height), never from decoding images. torchvision's end-of-epoch rule (fill the last partial batches with
repeats of the group's first images) is not followed: our leftovers wait for the next epoch instead.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import numpy as np


def orientation_groups(sizes: Sequence[tuple[int, int]]) -> np.ndarray:
    """Group ids (N,) int64 for (height, width) sizes: 0 for landscape (w > h), 1 otherwise (detectron2)."""
    hw = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    return np.where(hw[:, 1] > hw[:, 0], 0, 1).astype(np.int64)


def quantized_bins(factor: int) -> list[float]:
    """torchvision's aspect-ratio bin edges: ``2 ** linspace(-1, 1, 2 * factor + 1)`` (``[1.0]`` for factor 0)."""
    return (2 ** np.linspace(-1, 1, 2 * factor + 1)).tolist() if factor > 0 else [1.0]


def quantized_groups(sizes: Sequence[tuple[int, int]], factor: int) -> np.ndarray:
    """Group ids (N,) int64 for (height, width) sizes: ``bisect_right(bins, width / height)`` (torchvision)."""
    bins = sorted(quantized_bins(factor))
    hw = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    return np.asarray([bisect.bisect_right(bins, float(w) / float(h)) for h, w in hw], dtype=np.int64)


def group_ids(mode: str, sizes: Sequence[tuple[int, int]], factor: int = 3) -> np.ndarray:
    """Group id per image for ``data.aspect_ratio_grouping`` ``mode`` (all zeros for "none")."""
    if mode == "none":
        return np.zeros(len(sizes), dtype=np.int64)
    if mode == "orientation":
        return orientation_groups(sizes)
    if mode == "quantized":
        return quantized_groups(sizes, factor)
    raise ValueError(f"unknown aspect-ratio grouping {mode!r} (data.aspect_ratio_grouping)")


class GroupedBatchStream:
    """The endless stream of per-device batches of ``batch_size`` images, each from one group.

    ``permutation(epoch)`` gives epoch ``epoch``'s sample order (a permutation of 0..N-1); the stream is the
    bucket rule applied to the concatenation of those permutations. ``batch(t)`` returns the ``batch_size``
    pairs ``(image index, stream position)`` of batch ``t`` (stream position = epoch * N + offset in that
    epoch's permutation, unique per draw), a pure function of ``t``.
    """

    def __init__(self, groups: np.ndarray, batch_size: int, permutation: Callable[[int], np.ndarray]) -> None:
        self.groups = np.asarray(groups, dtype=np.int64).reshape(-1)
        if len(self.groups) == 0:
            raise ValueError("the training set is empty")
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.n = len(self.groups)
        self.batch_size = int(batch_size)
        self.permutation = permutation
        self.group_list = [int(g) for g in np.unique(self.groups)]
        self.group_sizes = {g: int(np.sum(self.groups == g)) for g in self.group_list}
        self._epochs: dict[int, tuple[dict[int, np.ndarray], dict[int, np.ndarray], np.ndarray]] = {}

    def batches_before(self, epoch: int) -> int:
        """Number of batches completed before epoch ``epoch`` starts: ``sum_g floor(epoch * n_g / B)``."""
        return sum((epoch * n) // self.batch_size for n in self.group_sizes.values())

    def epoch_of(self, t: int) -> int:
        """The epoch in which batch ``t`` completes (``batches_before(e) <= t < batches_before(e + 1)``)."""
        e = max(0, t * self.batch_size // self.n)  # batches_before(e) <= e * N / B <= t
        while self.batches_before(e) > t:
            e -= 1
        while self.batches_before(e + 1) <= t:
            e += 1
        return e

    def _epoch(self, epoch: int) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], np.ndarray]:
        """(members per group in this epoch's order, their offsets in the permutation, completions (K, 2) =
        (group, chunk) of the batches completed in this epoch, in completion order)."""
        cached = self._epochs.get(epoch)
        if cached is not None:
            return cached
        perm = np.asarray(self.permutation(epoch), dtype=np.int64)
        g_of = self.groups[perm]
        members, offsets, done = {}, {}, []
        for g in self.group_list:
            offs = np.nonzero(g_of == g)[0]
            members[g], offsets[g] = perm[offs], offs
            count = epoch * self.group_sizes[g] + np.arange(1, len(offs) + 1)  # group-stream count after each
            full = count % self.batch_size == 0
            done.append(np.stack([offs[full], np.full(int(full.sum()), g), count[full] // self.batch_size - 1], 1))
        comp = np.concatenate(done, axis=0) if done else np.zeros((0, 3), np.int64)
        comp = comp[np.argsort(comp[:, 0], kind="stable")][:, 1:]
        if len(self._epochs) >= 8:
            self._epochs.clear()
        self._epochs[epoch] = (members, offsets, comp)
        return self._epochs[epoch]

    def batch(self, t: int) -> list[tuple[int, int]]:
        """Batch ``t``: ``batch_size`` pairs (image index, stream position), all images of one group."""
        e = self.epoch_of(int(t))
        _, _, comp = self._epoch(e)
        g, chunk = (int(v) for v in comp[int(t) - self.batches_before(e)])
        n_g = self.group_sizes[g]
        out = []
        for k in range(chunk * self.batch_size, (chunk + 1) * self.batch_size):
            ek, j = divmod(k, n_g)
            members, offsets, _ = self._epoch(ek)
            out.append((int(members[g][j]), ek * self.n + int(offsets[g][j])))
        return out
