"""Aspect-ratio grouping of training batches (detectron2's orientation buckets, torchvision's quantized bins):
group ids by hand, every per-device batch from one group, the bucket rule equal to a plain simulation of it on
the sample stream, each image used once per epoch, exact resume at any step, disjoint ranks, and the loader's
batches from a COCO file with mixed image sizes."""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict

import cv2
import numpy as np
import pytest

from fcos.config import ConfigError, config_from_dict
from fcos.data.dataset import DetectionDataset
from fcos.data.grouping import GroupedBatchStream, orientation_groups, quantized_bins, quantized_groups
from fcos.data.loader import TrainBatchSampler, build_train_loader, epoch_permutation, step_keys, train_groups


def test_orientation_groups_by_hand():
    # (height, width): landscape (w > h) is group 0; square and portrait group 1 (detectron2: 0 if w > h else 1)
    sizes = [(480, 640), (640, 480), (500, 500), (1, 2), (2, 1)]
    assert orientation_groups(sizes).tolist() == [0, 1, 1, 0, 1]


def test_quantized_bins_and_groups_by_hand():
    # torchvision factor 3: edges 2^(-1), 2^(-2/3), 2^(-1/3), 1, 2^(1/3), 2^(2/3), 2 (width / height), 8 groups
    edges = [0.5, 0.6299605249474366, 0.7937005259840998, 1.0, 1.2599210498948732, 1.5874010519681994, 2.0]
    assert quantized_bins(3) == pytest.approx(edges, rel=1e-12)
    assert quantized_bins(0) == [1.0]
    # group = number of edges <= width / height (bisect_right: a ratio equal to an edge goes above it)
    cases = {
        (100, 40): 0,  # 0.4
        (100, 50): 1,  # 0.5 on the edge
        (100, 62): 1,  # 0.62
        (100, 63): 2,  # 0.63 > 0.62996
        (100, 79): 2,
        (100, 80): 3,
        (100, 100): 4,  # square: 1.0 on the middle edge
        (100, 125): 4,  # 1.25 < 1.2599
        (100, 126): 5,
        (100, 158): 5,
        (100, 159): 6,
        (100, 199): 6,
        (100, 200): 7,  # 2.0 on the last edge
        (480, 640): 5,  # COCO's common 4:3 landscape (1.333)
        (640, 480): 2,  # 0.75
    }
    assert quantized_groups(list(cases), 3).tolist() == list(cases.values())
    assert quantized_groups([(100, 99), (100, 100)], 0).tolist() == [0, 1]


def _simulated_stream(groups: np.ndarray, batch: int, seed: int, num_batches: int) -> list[list[tuple[int, int]]]:
    """The bucket rule done the plain way: walk the concatenated epoch permutations, append each image to its
    group's bucket, emit the bucket when it holds ``batch`` images (buckets carry over epoch boundaries)."""
    n = len(groups)
    buckets: dict[int, list[tuple[int, int]]] = defaultdict(list)
    out: list[list[tuple[int, int]]] = []
    epoch = 0
    while len(out) < num_batches:
        perm = epoch_permutation(seed, epoch, n)
        for offset, index in enumerate(perm):
            g = int(groups[index])
            buckets[g].append((int(index), epoch * n + offset))
            if len(buckets[g]) == batch:
                out.append(buckets.pop(g))
        epoch += 1
    return out[:num_batches]


@pytest.mark.parametrize(
    "n, num_groups, batch",
    [(37, 2, 4), (50, 8, 2), (11, 3, 8), (5, 2, 8), (16, 1, 4)],  # (5, 2, 8): groups smaller than a batch
)
def test_stream_equals_the_bucket_rule_and_uses_each_image_once_per_epoch(n, num_groups, batch):
    rng = np.random.default_rng(n)
    groups = rng.integers(0, num_groups, n)
    stream = GroupedBatchStream(groups, batch, lambda e: epoch_permutation(3, e, n))
    epochs = 6
    total = stream.batches_before(epochs)
    expected = _simulated_stream(groups, batch, 3, total + 3)
    got = [stream.batch(t) for t in range(total + 3)]
    assert got == expected
    for b in got:  # one group per batch, batch_size images
        assert len(b) == batch and len({int(groups[i]) for i, _ in b}) == 1
    # by the end of epoch E group g has used U = floor(E * n_g / B) * B draws of its stream (the rest wait in its
    # bucket): each image q = U // n_g times, r = U % n_g of them once more; E times each when B divides E * n_g
    counts = Counter(i for b in got[:total] for i, _ in b)
    for g in np.unique(groups):
        members = np.nonzero(groups == g)[0]
        used = (epochs * len(members)) // batch * batch
        q, r = divmod(used, len(members))
        per_image = sorted(counts.get(int(i), 0) for i in members)
        assert per_image == [q] * (len(members) - r) + [q + 1] * r
        assert epochs * len(members) - used < batch
    # stream positions are unique draws
    positions = [p for b in got for _, p in b]
    assert len(set(positions)) == len(positions)


def test_any_batch_is_a_pure_function_of_its_index():
    groups = np.random.default_rng(0).integers(0, 8, 200)
    seq = GroupedBatchStream(groups, 2, lambda e: epoch_permutation(1, e, 200))
    reference = [seq.batch(t) for t in range(700)]  # 7 epochs
    fresh = GroupedBatchStream(groups, 2, lambda e: epoch_permutation(1, e, 200))
    for t in (699, 0, 350, 99, 100, 101, 512):  # random access, no state carried
        assert fresh.batch(t) == reference[t]


def test_sampler_resume_and_ranks():
    n, per_device, world = 23, 3, 2
    groups = np.random.default_rng(5).integers(0, 2, n)
    samplers = [TrainBatchSampler(n, per_device, 9, 0, r, world, groups=groups) for r in range(world)]
    steps = [[s.keys(step) for s in samplers] for step in range(30)]
    # exact resume: a sampler started at step 17 yields what the uninterrupted one yields from step 17 on
    resumed = TrainBatchSampler(n, per_device, 9, start_step=17, rank=1, world_size=world, groups=groups)
    it = iter(resumed)
    assert [next(it) for _ in range(5)] == [steps[s][1] for s in range(17, 22)]
    # rank r takes batch step * W + r of the one stream: ranks never share a batch, all of them together are it
    stream = GroupedBatchStream(groups, per_device, lambda e: epoch_permutation(9, e, n))
    first_epoch = stream.batches_before(1)
    flat = [idx for step in steps for keys in step for idx, _ in keys]
    assert flat[: first_epoch * per_device] == [i for t in range(first_epoch) for i, _ in stream.batch(t)]
    used = flat[: first_epoch * per_device]  # within the first epoch no image is drawn twice
    assert len(set(used)) == len(used)
    for step in steps:
        for keys in step:
            assert len({int(groups[i]) for i, _ in keys}) == 1
    # augmentation seeds differ between draws
    seeds = [s for step in steps for keys in step for _, s in keys]
    assert len(set(seeds)) == len(seeds)


def test_sampler_without_groups_is_unchanged():
    a = TrainBatchSampler(10, 4, 3, start_step=15, rank=1, world_size=2)
    assert a.stream is None and a.keys(15) == step_keys(3, 15, 1, 2, 4, 10)


def test_group_factor_must_not_be_negative():
    with pytest.raises(ConfigError, match="aspect_ratio_group_factor"):
        config_from_dict({"data": {"aspect_ratio_grouping": "quantized", "aspect_ratio_group_factor": -1}})
    with pytest.raises(ConfigError, match="aspect_ratio_grouping"):
        config_from_dict({"data": {"aspect_ratio_grouping": "wide"}})


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory):
    """A COCO file of 12 images: 7 landscape, 5 portrait/square; sizes from the JSON (one image has none)."""
    root = tmp_path_factory.mktemp("mixed")
    sizes = [(48, 64), (64, 48), (40, 80), (64, 64), (30, 90), (80, 40), (50, 60), (60, 50), (32, 96), (90, 30)]
    sizes += [(44, 66), (70, 70)]
    images, anns = [], []
    for i, (h, w) in enumerate(sizes, start=1):
        name = f"im{i}.png"
        cv2.imwrite(str(root / name), np.full((h, w, 3), 10 * i, np.uint8))
        entry = {"id": i, "file_name": name, "height": h, "width": w}
        if i == 12:
            del entry["height"], entry["width"]  # read from the PNG header
        images.append(entry)
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0})
    ann_file = root / "train.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}))
    return str(root), str(ann_file), sizes


def test_image_sizes_need_no_decoding(mixed_sizes, monkeypatch):
    image_dir, ann_file, sizes = mixed_sizes
    from fcos.config import DatasetSplit, InputConfig

    ds = DetectionDataset(DatasetSplit(image_dir, ann_file), InputConfig(), train=True)
    import fcos.data.coco as coco_mod

    def no_decode(*a, **k):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(coco_mod, "read_image", no_decode)
    assert ds.image_sizes().shape == (12, 2)
    assert os.path.isfile(os.path.join(image_dir, "im1.png"))


def test_loader_batches_follow_the_groups(mixed_sizes):
    image_dir, ann_file, sizes = mixed_sizes
    cfg = config_from_dict(
        {
            "model": {
                "num_classes": 1,
                "backbone": {"dla_levels": [1, 1, 1, 1, 1, 1], "dla_channels": [8, 8, 16, 16, 32, 32]},
                "fpn": {"out_channels": 32},
                "head": {"num_convs": 1, "gn_groups": 8},
            },
            "input": {"train_shorts": [64], "train_max": 128},
            "data": {
                "train": {"image_dir": image_dir, "ann_file": ann_file},
                "batch_size": 2,
                "num_workers": 0,
                "aspect_ratio_grouping": "orientation",
                "flip_prob": 0.0,
            },
        }
    )
    ds = DetectionDataset(cfg.data.train, cfg.input, train=True)
    assert ds.image_sizes().tolist() == [list(s) for s in sizes]
    assert train_groups(ds, cfg).tolist() == [int(not w > h) for h, w in sizes]
    loader = build_train_loader(cfg, ds, rank=0, world_size=1)
    for _ in range(8):
        batch = next(loader)
        orients = {bool(w > h) for h, w in (sizes[i - 1] for i in batch.image_ids)}
        assert len(orients) == 1, batch.image_ids
        # the resized images keep their orientation
        for h, w in batch.im_shape.numpy().tolist():
            assert (w > h) in orients
    # resume: a loader started at step 5 yields the batches of steps 5, 6 of an uninterrupted one
    fresh = build_train_loader(cfg, ds, rank=0, world_size=1)
    first = [next(fresh) for _ in range(7)]
    resumed = build_train_loader(cfg, ds, start_step=5, rank=0, world_size=1)
    for want in first[5:]:
        got = next(resumed)
        assert got.image_ids == want.image_ids
        np.testing.assert_array_equal(got.images.numpy(), want.images.numpy())
    cfg_none = config_from_dict({**_as_dict(cfg), "data": {**_as_dict(cfg)["data"], "aspect_ratio_grouping": "none"}})
    assert train_groups(ds, cfg_none) is None


def _as_dict(cfg):
    from fcos.config import config_to_dict

    return config_to_dict(cfg)
