"""Training and validation loaders: ``paddle.io.DataLoader`` over :class:`DetectionDataset` -> :class:`Batch`.

Training data is a pure function of (``train.seed``, global step, rank): the sample stream is an
endless sequence of epoch permutations (epoch ``e`` shuffled by ``default_rng([seed, e])``); global
step ``s`` takes the ``G = batch_size`` positions ``s*G .. s*G+G-1``, rank ``r`` of ``W`` gets the
slice ``r*G/W .. (r+1)*G/W``, and each position ``p`` has its own augmentation seed derived from
(seed, p). Resuming at step ``k`` therefore replays exactly the batches an uninterrupted run would
have seen, whatever the number of workers, and all ranks together see each epoch once.

With ``data.aspect_ratio_grouping`` (detectron2's and torchvision's recipes) each per-device batch holds images of
one aspect-ratio group: :class:`fcos.data.grouping.GroupedBatchStream` turns the same epoch permutations into
per-device batches, and rank ``r`` of ``W`` takes batch ``step * W + r`` of that stream, again a pure function of
(seed, step, rank, world size), so resume stays exact.

Worker processes (``data.num_workers``, 0 = load in the main process) are seeded per worker for any
code that uses the global random state. When ``/dev/shm`` is too small for the batches in flight
(Docker's 64 MB default), shared memory is switched off with a warning; if a worker still dies (bus
error), the error says what to change instead of leaving a bare crash.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Optional

import cv2
import numpy as np
import paddle

from fcos.config import Config
from fcos.data.batch import Batch, NumpyBatch, Sample, collate_samples
from fcos.data.dataset import DetectionDataset
from fcos.data.grouping import GroupedBatchStream, group_ids

logger = logging.getLogger(__name__)

_PREFETCH_FACTOR = 2
_SHM_HINT = (
    "a DataLoader worker died (often a bus error: /dev/shm, the shared memory the workers hand batches "
    "through, is too small; Docker gives 64 MB by default). Fix: set data.num_workers=0 or lower it, set "
    "data.use_shared_memory=false, lower data.batch_size, or give the container more shared memory "
    "(docker run --shm-size=8g)"
)
_WORKER_ERROR_WORDS = (
    "bus error",
    "shared memory",
    "shm",
    "killed by signal",
    "exit unexpectedly",
    "exited unexpectedly",
)


# --------------------------------------------------------------------------------------------
# Which samples a step uses
# --------------------------------------------------------------------------------------------


def epoch_permutation(seed: int, epoch: int, num_samples: int) -> np.ndarray:
    """The sample order of ``epoch``: a permutation of 0..num_samples-1 seeded by (seed, epoch)."""
    return np.random.default_rng([int(seed), 0x5EED, int(epoch)]).permutation(num_samples)


def augmentation_seed(seed: int, position: int) -> int:
    """The augmentation seed of sample-stream position ``position`` (a 63-bit int)."""
    hi, lo = np.random.SeedSequence([int(seed), 0xA06, int(position)]).generate_state(2)
    return (int(hi) << 31 | int(lo)) & (2**63 - 1)


def step_keys(
    seed: int, step: int, rank: int, world_size: int, per_device: int, num_samples: int
) -> list[tuple[int, int]]:
    """Dataset keys ``(index, aug_seed)`` of global step ``step`` on ``rank``: a pure function of its arguments."""
    if num_samples < 1:
        raise ValueError("the training set is empty")
    global_batch = per_device * world_size
    keys = []
    for j in range(per_device):
        p = step * global_batch + rank * per_device + j
        epoch, offset = divmod(p, num_samples)
        keys.append((int(epoch_permutation(seed, epoch, num_samples)[offset]), augmentation_seed(seed, p)))
    return keys


class TrainBatchSampler:
    """Endless batch sampler yielding :func:`step_keys` for steps ``start_step, start_step + 1, ...``.

    ``groups`` (N,) (aspect-ratio group per sample, see :mod:`fcos.data.grouping`): each per-device batch is
    batch ``step * world_size + rank`` of the :class:`GroupedBatchStream` over the same epoch permutations, every
    image in it from one group; the augmentation seed follows the image's position in the sample stream.
    """

    def __init__(
        self,
        num_samples: int,
        per_device: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
        groups: Optional[np.ndarray] = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.num_samples, self.per_device, self.seed = int(num_samples), int(per_device), int(seed)
        self.start_step, self.rank, self.world_size = int(start_step), int(rank), int(world_size)
        self._perm_cache: dict[int, np.ndarray] = {}
        self.stream: Optional[GroupedBatchStream] = None
        if groups is not None:
            if len(groups) != self.num_samples:
                raise ValueError(f"{len(groups)} group ids for {self.num_samples} samples")
            self.stream = GroupedBatchStream(
                groups, self.per_device, functools.partial(epoch_permutation, self.seed, num_samples=self.num_samples)
            )

    def _index(self, p: int) -> int:
        epoch, offset = divmod(p, self.num_samples)
        perm = self._perm_cache.get(epoch)
        if perm is None:
            self._perm_cache = {epoch: epoch_permutation(self.seed, epoch, self.num_samples)}
            perm = self._perm_cache[epoch]
        return int(perm[offset])

    def keys(self, step: int) -> list[tuple[int, int]]:
        """The same keys as :func:`step_keys`, with the epoch permutation cached (or the grouped batch)."""
        if self.stream is not None:
            batch = self.stream.batch(step * self.world_size + self.rank)
            return [(index, augmentation_seed(self.seed, position)) for index, position in batch]
        base = step * self.per_device * self.world_size + self.rank * self.per_device
        return [(self._index(base + j), augmentation_seed(self.seed, base + j)) for j in range(self.per_device)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield self.keys(step)
            step += 1


# --------------------------------------------------------------------------------------------
# Collation across the worker boundary
# --------------------------------------------------------------------------------------------


def collate_to_dict(samples: Sequence[Optional[Sample]], size_divisor: int) -> dict[str, Any]:
    """Worker-side collate: pad images and boxes into arrays paddle can pass between processes.

    Unreadable images (None) are left out; ``num`` is the number of images kept (0: skip the batch).
    gt_boxes (N, M, 4) float32 xyxy and gt_labels (N, M) int64 are padded to M = max(1, max boxes),
    gt_count (N,) says how many rows are real.
    """
    kept = [s for s in samples if s is not None]
    if not kept:
        return {"num": 0}
    nb = collate_samples(kept, size_divisor)
    m = max([1] + [len(b) for b in nb.boxes])
    gt_boxes = np.zeros((len(kept), m, 4), dtype=np.float32)
    gt_labels = np.zeros((len(kept), m), dtype=np.int64)
    for i, (b, lab) in enumerate(zip(nb.boxes, nb.labels)):
        gt_boxes[i, : len(b)] = b
        gt_labels[i, : len(lab)] = lab
    return {
        "num": len(kept),
        "images": nb.images,
        "im_shape": nb.im_shape,
        "scale_factor": nb.scale_factor,
        "orig_shape": nb.orig_shape,
        "image_ids": np.asarray(nb.image_ids, dtype=np.int64),
        "gt_boxes": gt_boxes,
        "gt_labels": gt_labels,
        "gt_count": np.asarray([len(b) for b in nb.boxes], dtype=np.int64),
        "paths": list(nb.paths),
    }


def _np(x: Any) -> np.ndarray:
    return x.numpy() if isinstance(x, paddle.Tensor) else np.asarray(x)


def dict_to_batch(d: dict[str, Any]) -> Batch:
    """Main-process side of :func:`collate_to_dict` -> :class:`Batch` of paddle tensors."""
    count = _np(d["gt_count"]).reshape(-1)
    boxes, labels = _np(d["gt_boxes"]), _np(d["gt_labels"])
    nb = NumpyBatch(
        images=_np(d["images"]),
        im_shape=_np(d["im_shape"]).astype(np.float32),
        scale_factor=_np(d["scale_factor"]).astype(np.float32),
        boxes=[boxes[i, : int(c)] for i, c in enumerate(count)],
        labels=[labels[i, : int(c)] for i, c in enumerate(count)],
        image_ids=[int(v) for v in _np(d["image_ids"]).reshape(-1)],
        orig_shape=_np(d["orig_shape"]).astype(np.int64),
        paths=[str(p) for p in d["paths"]],
    )
    return nb.to_paddle()


def _worker_init(worker_id: int, seed: int) -> None:
    """Seed the global random states of a worker process (the augmentations use explicit generators)."""
    s = (int(seed) * 1000 + int(worker_id)) % (2**32)
    random.seed(s)
    np.random.seed(s)


# --------------------------------------------------------------------------------------------
# Shared memory
# --------------------------------------------------------------------------------------------


def shared_memory_free(path: str = "/dev/shm") -> Optional[int]:
    """Free bytes in ``path`` (None where there is no such filesystem, e.g. macOS or Windows)."""
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return int(st.f_bavail) * int(st.f_frsize)


def choose_shared_memory(requested: bool, num_workers: int, batch_bytes: int, free: Optional[int]) -> bool:
    """Use shared memory only when asked, with workers, and when /dev/shm holds twice the batches in flight."""
    if not requested or num_workers <= 0:
        return False
    need = 2 * num_workers * _PREFETCH_FACTOR * batch_bytes
    if free is not None and free < need:
        logger.warning(
            "/dev/shm has %.0f MB free but %d workers may need %.0f MB for batches in flight; "
            "loading without shared memory (slower). Give the container more (docker run --shm-size=8g) "
            "or lower data.num_workers / data.batch_size to silence this.",
            free / 2**20,
            num_workers,
            need / 2**20,
        )
        return False
    return True


def _guard_workers(it: Iterator[Any], endless: bool) -> Iterator[Any]:
    """Re-raise worker deaths (bus errors from a full /dev/shm) with a message that names the fix."""
    while True:
        try:
            item = next(it)
        except StopIteration:
            if endless:
                raise RuntimeError(f"the training DataLoader stopped unexpectedly: {_SHM_HINT}") from None
            return
        except (RuntimeError, SystemError, OSError) as e:
            text = str(e).lower()
            if any(w in text for w in _WORKER_ERROR_WORDS):
                raise RuntimeError(f"{_SHM_HINT}. Original error: {e}") from e
            raise
        yield item


def _make_loader(
    dataset: DetectionDataset, batch_sampler: Iterable, cfg: Config, batch_bytes: int
) -> paddle.io.DataLoader:
    workers = max(0, int(cfg.data.num_workers))
    use_shm = choose_shared_memory(cfg.data.use_shared_memory, workers, batch_bytes, shared_memory_free())
    kwargs: dict[str, Any] = {}
    if workers > 0:
        # Workers are the parallelism. OpenCV's thread pool must be off BEFORE the fork: a forked worker
        # that touches a pool the parent had used (even cv2.setNumThreads) can deadlock.
        cv2.setNumThreads(1)
        kwargs = {
            "worker_init_fn": functools.partial(_worker_init, seed=cfg.train.seed),
            "prefetch_factor": _PREFETCH_FACTOR,
        }
    return paddle.io.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=functools.partial(collate_to_dict, size_divisor=cfg.input.size_divisor),
        num_workers=workers,
        use_shared_memory=use_shm,
        return_list=True,
        **kwargs,
    )


def _batch_bytes(per_device: int, max_side: int, divisor: int) -> int:
    side = math.ceil(max_side / divisor) * divisor
    return per_device * 3 * side * side * 4


# --------------------------------------------------------------------------------------------
# Public builders
# --------------------------------------------------------------------------------------------


def build_train_dataset(cfg: Config) -> DetectionDataset:
    """The training :class:`DetectionDataset` from ``cfg.data.train`` (labels checked against the model)."""
    ds = DetectionDataset(
        cfg.data.train,
        cfg.input,
        train=True,
        flip_prob=cfg.data.flip_prob,
        albumentations=cfg.data.albumentations or None,
        class_names=cfg.data.class_names or None,
        drop_images_without_boxes=cfg.data.drop_images_without_boxes,
        empty_image_rule=cfg.data.empty_image_rule,
        drop_zero_area=cfg.data.drop_zero_area,
        box_decimals=cfg.data.box_decimals,
    )
    _check_num_classes(ds, cfg)
    return ds


def build_val_dataset(cfg: Config, label_map: Any = None) -> DetectionDataset:
    """The validation :class:`DetectionDataset` (test transform); pass the training label map to share labels."""
    ds = DetectionDataset(
        cfg.data.val, cfg.input, train=False, label_map=label_map, class_names=cfg.data.class_names or None
    )
    _check_num_classes(ds, cfg)
    return ds


def _check_num_classes(ds: DetectionDataset, cfg: Config) -> None:
    if ds.num_classes != cfg.model.num_classes:
        raise ValueError(
            f"{ds.split.ann_file} has {ds.num_classes} categories {ds.class_names} but model.num_classes is "
            f"{cfg.model.num_classes}; set model.num_classes={ds.num_classes} (and data.class_names) in the config"
        )


def build_train_loader(
    cfg: Config,
    dataset: Optional[DetectionDataset] = None,
    start_step: int = 0,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
) -> Iterator[Batch]:
    """Endless iterator of training :class:`Batch` es, starting at global step ``start_step``.

    Per-device batch = ``cfg.data.batch_size // world_size``; batch ``k`` of the iterator is global step
    ``start_step + k`` and depends only on (``cfg.train.seed``, step, rank). rank / world_size default to
    the running distributed job (0 / 1 in a single process).
    """
    from fcos.utils import dist

    rank = dist.get_rank() if rank is None else int(rank)
    world_size = dist.get_world_size() if world_size is None else int(world_size)
    ds = dataset if dataset is not None else build_train_dataset(cfg)
    if len(ds) == 0:
        raise ValueError(f"{ds.split.ann_file}: the training set has no images")
    per_device = cfg.data.batch_size // world_size
    if per_device < 1:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} is smaller than the number of devices ({world_size})")
    if cfg.data.batch_size % world_size:
        logger.warning(
            "data.batch_size=%d is not divisible by %d devices; using %d per device (total %d)",
            cfg.data.batch_size,
            world_size,
            per_device,
            per_device * world_size,
        )
    sampler = TrainBatchSampler(
        len(ds), per_device, cfg.train.seed, start_step, rank, world_size, groups=train_groups(ds, cfg)
    )
    max_side = max(cfg.input.train_max, max(cfg.input.train_shorts))
    loader = _make_loader(ds, sampler, cfg, _batch_bytes(per_device, max_side, cfg.input.size_divisor))
    return _train_batches(loader)


def train_groups(ds: DetectionDataset, cfg: Config) -> Optional[np.ndarray]:
    """Aspect-ratio group per training sample for ``data.aspect_ratio_grouping`` (None: no grouping), from the
    image sizes in the annotation file; the group sizes are logged."""
    mode = cfg.data.aspect_ratio_grouping
    if mode == "none":
        return None
    groups = group_ids(mode, ds.image_sizes(), cfg.data.aspect_ratio_group_factor)
    values, counts = np.unique(groups, return_counts=True)
    logger.info(
        "aspect-ratio grouping %s: images per group %s",
        mode,
        {int(v): int(c) for v, c in zip(values, counts)},
    )
    return groups


def _train_batches(loader: paddle.io.DataLoader) -> Iterator[Batch]:
    for d in _guard_workers(iter(loader), endless=True):
        yield dict_to_batch(d)


class ValLoader:
    """Re-iterable validation loader: every image in file order (unreadable ones left out and logged).

    Batches of ``data.val_batch_size`` at the test size, no augmentation; ``image_ids`` and ``orig_shape``
    are set so detections map back to the COCO ground truth. ``rank`` / ``world_size`` (see
    :meth:`shard`) keep every ``world_size``-th batch starting at ``rank``: in a distributed
    evaluation each process reads and decodes only its own images.
    """

    def __init__(self, cfg: Config, dataset: DetectionDataset, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"ValLoader: rank {rank} outside world size {world_size}")
        self.cfg = cfg
        self.dataset = dataset
        self.batch_size = max(1, int(cfg.data.val_batch_size))
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return len(self.batch_keys())

    def shard(self, rank: int, world_size: int) -> ValLoader:
        """The same loader restricted to batches ``rank, rank + world_size, ...`` of the full order."""
        return ValLoader(self.cfg, self.dataset, rank, world_size)

    def batch_keys(self) -> list[list[int]]:
        n = len(self.dataset)
        keys = [list(range(i, min(i + self.batch_size, n))) for i in range(0, n, self.batch_size)]
        return keys[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[Batch]:
        if not self.batch_keys():
            return
        max_side = max(self.cfg.input.test_max, self.cfg.input.test_short)
        loader = _make_loader(
            self.dataset,
            self.batch_keys(),
            self.cfg,
            _batch_bytes(self.batch_size, max_side, self.cfg.input.size_divisor),
        )
        for d in _guard_workers(iter(loader), endless=False):
            if int(_np(d["num"]).reshape(-1)[0]) > 0:
                yield dict_to_batch(d)


def build_val_loader(cfg: Config, dataset: Optional[DetectionDataset] = None) -> ValLoader:
    """Validation loader over ``cfg.data.val`` (or ``dataset``); see :class:`ValLoader`."""
    return ValLoader(cfg, dataset if dataset is not None else build_val_dataset(cfg))
