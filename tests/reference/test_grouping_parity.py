"""Aspect-ratio grouping equals detectron2's ``AspectRatioGroupedDataset`` (``make test-reference``).

detectron2 (AdelaiDet's FCOS_RT recipes, ``DATALOADER.ASPECT_RATIO_GROUPING`` True) puts each image of its shuffled
sample stream into bucket ``0 if width > height else 1`` and yields a per-device batch when a bucket is full.
Fed the same sample stream (our epoch permutations one after another, as detectron2's infinite TrainingSampler
would give them), detectron2's own class must yield exactly our batches, batch for batch, for image sizes with
landscape, portrait and square images and groups smaller than a batch. The sample order itself comes from different
RNGs in the two projects (only the rule is compared).

torchvision's rule (``create_aspect_ratio_groups`` / ``GroupedBatchSampler`` in references/detection/
group_by_aspect_ratio.py) is not in the torchvision wheel, so it cannot be imported here; its bins are checked
against hand-computed values in tests/test_data_grouping.py (edges ``2 ** linspace(-1, 1, 7)`` of width / height,
``bisect_right``).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytest.importorskip("torch")

from fcos.data.grouping import GroupedBatchStream, orientation_groups  # noqa: E402
from fcos.data.loader import TrainBatchSampler, epoch_permutation  # noqa: E402


def _sizes(n: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    common = [(480, 640), (640, 480), (427, 640), (640, 427), (500, 500), (375, 500), (333, 500), (640, 640)]
    return [
        common[i] if i < len(common) else (int(rng.integers(50, 900)), int(rng.integers(50, 900))) for i in range(n)
    ]


@pytest.mark.parametrize("n, batch", [(300, 2), (97, 4), (7, 8)])
def test_orientation_batches_equal_detectron2(n: int, batch: int) -> None:
    from detectron2.data.common import AspectRatioGroupedDataset

    sizes = _sizes(n, n)
    records = [{"index": i, "height": h, "width": w} for i, (h, w) in enumerate(sizes)]
    seed = 11
    stream = GroupedBatchStream(orientation_groups(sizes), batch, lambda e: epoch_permutation(seed, e, n))
    num = stream.batches_before(5) + 2

    def samples():
        for e in itertools.count():
            for i in epoch_permutation(seed, e, n):
                yield records[int(i)]

    theirs = AspectRatioGroupedDataset(samples(), batch)
    ref = [[d["index"] for d in b] for b in itertools.islice(iter(theirs), num)]
    ours = [[i for i, _ in stream.batch(t)] for t in range(num)]
    assert ours == ref
    # the sampler of one device draws the same batches (step t = batch t)
    sampler = TrainBatchSampler(n, batch, seed, groups=orientation_groups(sizes))
    assert [[i for i, _ in sampler.keys(t)] for t in range(num)] == ref
    # both orientations occur (so the test can fail on a swapped rule)
    assert len({0 if w > h else 1 for h, w in sizes}) == 2
