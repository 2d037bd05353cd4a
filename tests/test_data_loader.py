"""Training/validation loaders: determinism in (seed, step, rank), exact resume, sharding, the model
accepts the batches, validation keeps every image, and worker deaths get a helpful message."""

from __future__ import annotations

import logging
import os

import numpy as np
import paddle
import pytest

import fcos
from fcos.config import config_from_dict
from fcos.data import loader as loader_mod
from fcos.data.batch import Batch
from fcos.data.loader import (
    TrainBatchSampler,
    build_train_loader,
    build_val_loader,
    choose_shared_memory,
    epoch_permutation,
    step_keys,
)
from fcos.data.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_synthetic_dataset(str(tmp_path_factory.mktemp("shapes")), 10, 5, seed=2)


def _cfg(paths, **data):
    d = {
        "model": {
            "num_classes": 4,
            "backbone": {"name": "dla34", "dla_levels": [1, 1, 1, 1, 1, 1], "dla_channels": [8, 8, 16, 16, 32, 32]},
            "fpn": {"out_channels": 32},
            "head": {"num_convs": 1, "gn_groups": 8},
        },
        "input": {"test_short": 128, "test_max": 160, "train_shorts": [96, 128], "train_max": 160},
        "data": {
            "train": {"image_dir": paths["train_image_dir"], "ann_file": paths["train_ann_file"]},
            "val": {"image_dir": paths["val_image_dir"], "ann_file": paths["val_ann_file"]},
            "batch_size": 4,
            "val_batch_size": 2,
            "num_workers": 0,
            **data,
        },
        "train": {"seed": 7},
    }
    return config_from_dict(d)


def _same(a: Batch, b: Batch) -> None:
    assert a.image_ids == b.image_ids
    np.testing.assert_array_equal(a.images.numpy(), b.images.numpy())
    np.testing.assert_array_equal(a.im_shape.numpy(), b.im_shape.numpy())
    for ta, tb in zip(a.targets, b.targets):
        np.testing.assert_array_equal(ta["boxes"].numpy(), tb["boxes"].numpy())
        np.testing.assert_array_equal(ta["labels"].numpy(), tb["labels"].numpy())


def test_step_keys_cover_each_epoch_once_across_ranks():
    n, per_device, world = 12, 2, 3  # global batch 6: two steps per epoch
    seen = []
    for step in range(2):
        for rank in range(world):
            seen += [k[0] for k in step_keys(0, step, rank, world, per_device, n)]
    assert sorted(seen) == list(range(n))
    assert list(epoch_permutation(0, 0, n)) == seen
    # the next epoch is another permutation
    nxt = [k[0] for s in (2, 3) for r in range(world) for k in step_keys(0, s, r, world, per_device, n)]
    assert sorted(nxt) == list(range(n)) and nxt != seen


def test_step_keys_are_a_pure_function_and_the_sampler_agrees():
    a = step_keys(3, 17, 1, 2, 4, 10)
    assert a == step_keys(3, 17, 1, 2, 4, 10)
    assert a != step_keys(4, 17, 1, 2, 4, 10)
    assert a != step_keys(3, 17, 0, 2, 4, 10)
    sampler = TrainBatchSampler(10, 4, 3, start_step=15, rank=1, world_size=2)
    it = iter(sampler)
    assert [next(it) for _ in range(3)][2] == a
    assert len({k[1] for k in a}) == len(a)  # each sample has its own augmentation seed


def test_same_seed_same_batches_and_resume_equals_continuation(shapes):
    cfg = _cfg(shapes)
    run = build_train_loader(cfg, start_step=0, rank=0, world_size=1)
    full = [next(run) for _ in range(5)]  # 20 samples over 10 images: crosses an epoch boundary
    again = build_train_loader(cfg, start_step=0, rank=0, world_size=1)
    _same(full[0], next(again))
    resumed = build_train_loader(cfg, start_step=3, rank=0, world_size=1)
    _same(full[3], next(resumed))
    _same(full[4], next(resumed))
    other_seed = _cfg(shapes)
    other_seed.train.seed = 8
    other = next(build_train_loader(other_seed, start_step=0, world_size=1))
    assert other.image_ids != full[0].image_ids or not np.array_equal(other.images.numpy(), full[0].images.numpy())


def test_ranks_split_the_global_batch(shapes):
    cfg = _cfg(shapes)
    single = next(build_train_loader(cfg, start_step=2, rank=0, world_size=1))
    r0 = next(build_train_loader(cfg, start_step=2, rank=0, world_size=2))
    r1 = next(build_train_loader(cfg, start_step=2, rank=1, world_size=2))
    assert len(r0) == len(r1) == 2
    assert r0.image_ids + r1.image_ids == single.image_ids


def test_worker_processes_give_the_same_batches(shapes):
    base = next(build_train_loader(_cfg(shapes), start_step=1, world_size=1))
    with_workers = next(build_train_loader(_cfg(shapes, num_workers=1), start_step=1, world_size=1))
    _same(base, with_workers)
    assert with_workers.paths == base.paths and all(isinstance(p, str) and p.endswith(".jpg") for p in base.paths)
    np.testing.assert_array_equal(with_workers.orig_shape, base.orig_shape)


def test_batch_goes_through_the_model_in_train_mode(shapes):
    cfg = _cfg(shapes)
    batch = next(build_train_loader(cfg, world_size=1))
    assert batch.images.shape[2] % cfg.input.size_divisor == 0 and batch.images.shape[3] % cfg.input.size_divisor == 0
    assert str(batch.targets[0]["labels"].dtype).endswith("int64")
    assert str(batch.targets[0]["boxes"].dtype).endswith("float32")
    model = fcos.build_model(cfg)
    model.train()
    losses = model(batch.images, batch.im_shape, batch.scale_factor, batch.targets)
    assert set(losses) >= {"loss", "loss_cls", "loss_box", "loss_ctr"}
    assert np.isfinite(float(losses["loss"]))


def test_val_loader_keeps_every_image_in_order(shapes):
    cfg = _cfg(shapes)
    val = build_val_loader(cfg)
    assert len(val) == 3
    batches = list(val)
    ids = [i for b in batches for i in b.image_ids]
    assert ids == [1, 2, 3, 4, 5]
    b = batches[0]
    assert b.orig_shape.tolist() == [[256, 320], [256, 320]]
    np.testing.assert_allclose(b.im_shape.numpy(), [[128, 160], [128, 160]])
    np.testing.assert_allclose(b.scale_factor.numpy(), [[0.5, 0.5], [0.5, 0.5]])
    assert [i for b in val for i in b.image_ids] == ids  # re-iterable, same order


def test_val_loader_shards_split_the_batches_between_ranks(shapes):
    val = build_val_loader(_cfg(shapes))  # batches [1, 2], [3, 4], [5]
    shards = [val.shard(r, 2) for r in range(2)]
    assert [len(s) for s in shards] == [2, 1]
    assert [[i for b in s for i in b.image_ids] for s in shards] == [[1, 2, 5], [3, 4]]
    assert [i for b in val.shard(2, 3) for i in b.image_ids] == [5]
    assert list(val.shard(1, 4)) and not list(val.shard(3, 4))  # more ranks than batches: empty shards
    with pytest.raises(ValueError, match="rank 2 outside world size 2"):
        val.shard(2, 2)


def test_distributed_evaluation_reads_only_the_images_of_its_rank(shapes, monkeypatch):
    """run_evaluation on rank 1 of 2 decodes only its shard's images and predicts only its batches."""
    from fcos.evaluation import loop

    val = build_val_loader(_cfg(shapes))
    read = []
    real_getitem = type(val.dataset).__getitem__
    monkeypatch.setattr(type(val.dataset), "__getitem__", lambda ds, k: read.append(k) or real_getitem(ds, k))
    monkeypatch.setattr(loop, "predict_batch", lambda model, batch: [{} for _ in batch.image_ids])

    class Evaluator:
        processed: list = []

        def reset(self):
            self.processed = []

        def process(self, image_ids, detections):
            self.processed += list(image_ids)

        def evaluate(self):
            return {"images": float(len(self.processed))}

    ev = Evaluator()
    out = loop.run_evaluation(paddle.nn.Linear(1, 1), val, ev, rank=1, world_size=2)
    assert ev.processed == [3, 4] and out == {"images": 2.0}
    assert sorted({k if isinstance(k, int) else k[0] for k in read}) == [2, 3]  # dataset indices of ids 3, 4


def test_val_loader_leaves_out_an_unreadable_image_with_its_path(tmp_path, caplog):
    paths = make_synthetic_dataset(str(tmp_path / "d"), 1, 3, seed=0)
    broken = os.path.join(paths["val_image_dir"], "000002.jpg")
    with open(broken, "wb") as f:
        f.write(b"not an image")
    cfg = _cfg(paths)
    with caplog.at_level(logging.WARNING, logger="fcos.data.dataset"):
        ids = [i for b in build_val_loader(cfg) for i in b.image_ids]
    assert ids == [1, 3]
    assert broken in caplog.text


def test_train_loader_replaces_an_unreadable_image(tmp_path, caplog):
    paths = make_synthetic_dataset(str(tmp_path / "d"), 3, 1, seed=0)
    broken = os.path.join(paths["train_image_dir"], "000002.jpg")
    open(broken, "wb").close()  # empty file
    cfg = _cfg(paths, batch_size=3)
    with caplog.at_level(logging.WARNING, logger="fcos.data.dataset"):
        batch = next(build_train_loader(cfg, world_size=1))
    assert 2 not in batch.image_ids and len(batch) == 3
    assert broken in caplog.text
    with open(broken, "rb") as f:
        assert f.read() == b""  # never rewritten


def test_class_count_mismatch_is_a_clear_error(shapes):
    cfg = _cfg(shapes)
    cfg.model.num_classes = 5
    with pytest.raises(ValueError, match="model.num_classes"):
        build_train_loader(cfg, world_size=1)


def test_small_shared_memory_switches_it_off(caplog):
    with caplog.at_level(logging.WARNING, logger="fcos.data.loader"):
        assert choose_shared_memory(True, 4, 100 * 2**20, free=64 * 2**20) is False
    assert "--shm-size" in caplog.text
    assert choose_shared_memory(True, 4, 2**20, free=8 * 2**30) is True
    assert choose_shared_memory(True, 0, 2**20, free=8 * 2**30) is False  # no workers, no shared memory
    assert choose_shared_memory(False, 4, 2**20, free=None) is False


def test_worker_death_is_reported_with_the_fix():
    def dying():
        yield {"num": 0}
        raise SystemError("(Fatal) DataLoader process (pid 123) exited is killed by signal: Bus error")

    it = loader_mod._guard_workers(dying(), endless=True)
    next(it)
    with pytest.raises(RuntimeError, match="num_workers") as e:
        next(it)
    assert "use_shared_memory" in str(e.value) and "Bus error" in str(e.value)
    with pytest.raises(RuntimeError, match="stopped unexpectedly"):
        next(loader_mod._guard_workers(iter([]), endless=True))

    def other_error():
        raise ValueError("other")
        yield

    with pytest.raises(ValueError, match="other"):  # unrelated errors pass through unchanged
        next(loader_mod._guard_workers(other_error(), endless=True))
