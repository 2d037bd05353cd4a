"""Issue 14 item 5: the train-time data pipeline equals each reference's (``make test-reference``).

For the same random draws (short side, flip) our ``train_transform`` gives the reference's resized, normalised
image and transformed boxes:

* rt_dla34 / rt_r50: AdelaiDet's own training mapper ``DatasetMapperWithBasis(cfg, is_train=True)`` (detectron2
  ``read_image`` -> ``ResizeShortestEdge(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, "choice")`` (Pillow bilinear on uint8) ->
  ``RandomFlip`` -> ``transform_instance_annotations`` (clip) -> ``filter_empty_instances``), its augmentation list
  replaced by one with the draw fixed;
* tv_r50: torchvision's recipe: references/detection/presets.py ``DetectionPresetTrain("hflip")`` =
  ``RandomHorizontalFlip(0.5)`` (transforms.py: ``F.hflip(image)``, ``boxes[:, [0, 2]] = width - boxes[:, [2, 0]]``)
  -> ``PILToTensor`` -> ``ConvertImageDtype(float)``, then the model's ``GeneralizedRCNNTransform`` in training
  mode (normalise, resize the float image, min_size (800,), max 1333) — flip before resize there, after it here;
* r50_ms_2x: PaddleDetection's TrainReader sample_transforms of fcos_r50_fpn_multiscale_2x_coco.yml (Decode ->
  RandomResize (cv2 INTER_LINEAR, keep_ratio) -> NormalizeImage -> RandomFlip) in .venv-ppdet.

And the draws follow the reference's distribution: seeded samples of our short side and flip against the
reference's own sampler (chi-square: uniform over the sizes, flip probability 0.5, and ours vs theirs).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
stats = pytest.importorskip("scipy.stats")

from parity import recipe_config, synthetic_bgr  # noqa: E402

from fcos.data.preprocess import normalize_image  # noqa: E402
from fcos.data.transforms import train_transform  # noqa: E402

P_MIN = 1e-3  # statistical tests
N_DRAWS = 3000
BOX_ATOL = 2e-3  # px (float32 scaling on both sides, up to 1333 px)
# (h, w): landscape, portrait, and an elongated one where the long-side cap binds for every recipe
SIZES = [(480, 640), (640, 427), (300, 1000)]


def _boxes(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """xyxy boxes: ordinary, touching the right/bottom border, tiny (0.6 px), an overlapping pair, the whole width,
    a sliver."""
    b = np.array(
        [
            [10.0, 20.0, 110.5, 140.25],
            [w - 50.0, h - 60.0, w, h],
            [33.3, 44.4, 33.9, 45.0],
            [100.0, 100.0, 200.0, 180.0],
            [150.0, 120.0, 260.0, 230.0],
            [0.0, 0.0, w, h / 2],
            [60.0, 70.0, 60.001, 90.0],  # 1e-3 px wide: every reference keeps it
        ],
        np.float32,
    )
    return b, np.array([0, 5, 12, 3, 3, 79, 7], np.int64)


def _ours(recipe: str, img: np.ndarray, boxes: np.ndarray, labels: np.ndarray, short: int, flip: bool):
    cfg = recipe_config(recipe)
    inp = dataclasses.replace(cfg.input, train_shorts=[short])
    image, b, lab, _ = train_transform(img, boxes, labels, np.random.default_rng(0), inp, 1.0 if flip else 0.0)
    return image, b, lab


def _assert_sample(
    name: str, ours: tuple, ref_img: np.ndarray, ref_boxes: np.ndarray, ref_labels: np.ndarray, img_atol: float
) -> tuple[float, float]:
    image, boxes, labels = ours
    assert image.shape == ref_img.shape, f"{name}: image {image.shape} vs reference {ref_img.shape}"
    img_diff = float(np.abs(image - ref_img).max())
    assert img_diff <= img_atol, f"{name}: image differs by {img_diff:.3g}"
    assert np.array_equal(labels, ref_labels), f"{name}: labels {labels} vs {ref_labels}"
    box_diff = float(np.abs(boxes - ref_boxes).max()) if len(boxes) else 0.0
    assert boxes.shape == ref_boxes.shape and box_diff <= BOX_ATOL, f"{name}: boxes\n{boxes}\nvs\n{ref_boxes}"
    return img_diff, box_diff


def _assert_distribution(
    name: str, shorts: list, our_s: np.ndarray, our_f: np.ndarray, ref_s: np.ndarray, ref_f: np.ndarray
) -> dict:
    """Uniform sizes, flip p = 0.5 (each side), and our counts vs the reference's (contingency chi-square)."""
    out = {}
    for who, s, f in (("ours", our_s, our_f), ("reference", ref_s, ref_f)):
        assert set(np.unique(s)) <= set(shorts), f"{name}: {who} drew sizes {sorted(set(np.unique(s)) - set(shorts))}"
        counts = np.array([(s == v).sum() for v in shorts])
        if len(shorts) > 1:
            p = float(stats.chisquare(counts).pvalue)
            assert p >= P_MIN, f"{name}: {who} short sides not uniform: {dict(zip(shorts, counts))}, p={p:.3g}"
            out[f"{who}_size_p"] = p
        pf = float(stats.binomtest(int(f.sum()), len(f), 0.5).pvalue)
        assert pf >= P_MIN, f"{name}: {who} flips {f.sum()}/{len(f)}, p={pf:.3g}"
        out[f"{who}_flip_p"] = pf
    if len(shorts) > 1:
        table = np.array([[(our_s == v).sum() for v in shorts], [(ref_s == v).sum() for v in shorts]])
        p = float(stats.chi2_contingency(table).pvalue)
        assert p >= P_MIN, f"{name}: size distribution differs from the reference's: {table}, p={p:.3g}"
        out["ours_vs_ref_size_p"] = p
    table = np.array([[our_f.sum(), len(our_f) - our_f.sum()], [ref_f.sum(), len(ref_f) - ref_f.sum()]])
    out["ours_vs_ref_flip_p"] = float(stats.chi2_contingency(table).pvalue)
    assert out["ours_vs_ref_flip_p"] >= P_MIN, f"{name}: flip rate differs from the reference's: {table}"
    return out


def _our_draws(recipe: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Our sampler as the dataset drives it (one generator per sample), on a small square image (no long-side cap)
    with an asymmetric box."""
    cfg = recipe_config(recipe)
    img = np.zeros((8, 8, 3), np.uint8)
    box, lab = np.array([[0.0, 0.0, 1.0, 8.0]], np.float32), np.array([0])
    shorts, flips = [], []
    for i in range(n):
        image, b, _, _ = train_transform(img, box, lab, np.random.default_rng([seed, i]), cfg.input, cfg.data.flip_prob)
        shorts.append(min(image.shape[1:]))
        flips.append(bool(b[0, 0] > 0))
    return np.asarray(shorts), np.asarray(flips)


# --------------------------------------------------------------------------------------------
# AdelaiDet / detectron2
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["rt_dla34", "rt_r50"])
def test_train_pipeline_equals_adelaidet(recipe: str, tmp_path) -> None:
    t0 = time.time()
    from adelaidet_models import adelaidet_cfg
    from envs import import_adet

    import_adet()  # the adet._C stub first
    from adet.data.dataset_mapper import DatasetMapperWithBasis
    from detectron2.data import transforms as T
    from detectron2.structures import BoxMode

    cfg_ref = adelaidet_cfg(recipe)
    cfg = recipe_config(recipe)
    mapper = DatasetMapperWithBasis(cfg_ref, is_train=True)
    resize, flip = mapper.augmentation
    assert isinstance(resize, T.ResizeShortestEdge) and isinstance(flip, T.RandomFlip)
    assert tuple(resize.short_edge_length) == tuple(cfg.input.train_shorts) and resize.sample_style == "choice"
    assert resize.max_size == cfg.input.train_max
    assert flip.horizontal and not flip.vertical and flip.prob == cfg.data.flip_prob
    assert cfg_ref.INPUT.FORMAT == cfg.input.channel_order

    worst = [0.0, 0.0]
    n = 0
    for k, (h, w) in enumerate(SIZES):
        img = synthetic_bgr(h, w, seed=k)
        path = str(tmp_path / f"img{k}.png")
        cv2.imwrite(path, img)
        boxes, labels = _boxes(h, w)
        for short in cfg.input.train_shorts:
            for do_flip in (False, True):
                mapper.augmentation = [
                    T.ResizeShortestEdge((short,), resize.max_size, "choice"),
                    T.RandomFlip(prob=1.0 if do_flip else 0.0),
                ]
                annos = [
                    {"bbox": b.tolist(), "bbox_mode": BoxMode.XYXY_ABS, "category_id": int(c), "iscrowd": 0}
                    for b, c in zip(boxes, labels)
                ]
                out = mapper({"file_name": path, "height": h, "width": w, "image_id": k, "annotations": annos})
                ref_img = normalize_image(out["image"].numpy().transpose(1, 2, 0), cfg.input)
                inst = out["instances"]
                d = _assert_sample(
                    f"{recipe} {h}x{w} short {short} flip {do_flip}",
                    _ours(recipe, img, boxes, labels, short, do_flip),
                    ref_img,
                    inst.gt_boxes.tensor.numpy(),
                    inst.gt_classes.numpy(),
                    img_atol=0.0,
                )
                worst = [max(a, b) for a, b in zip(worst, d)]
                n += 1

    # the reference's sampler: its augmentation list on a small image, np.random seeded
    np.random.seed(0)
    aug = T.AugmentationList([resize, flip])
    ref_s, ref_f = [], []
    for _ in range(N_DRAWS):
        inp = T.AugInput(np.zeros((8, 8, 3), np.uint8), boxes=np.array([[0.0, 0.0, 1.0, 8.0]]))
        tf = aug(inp)
        ref_s.append(min(inp.image.shape[:2]))
        ref_f.append(any(isinstance(t, T.HFlipTransform) for t in tf.transforms))
    dist = _assert_distribution(
        recipe, list(cfg.input.train_shorts), *_our_draws(recipe, N_DRAWS, 0), np.asarray(ref_s), np.asarray(ref_f)
    )
    print(
        f"\n{recipe} train pipeline vs AdelaiDet: {n} samples, max image diff {worst[0]:.3g}, "
        f"max box diff {worst[1]:.3g} px; sampling {dist}; {time.time() - t0:.1f} s"
    )


# --------------------------------------------------------------------------------------------
# torchvision
# --------------------------------------------------------------------------------------------


def test_train_pipeline_equals_torchvision() -> None:
    t0 = time.time()
    import torchvision.transforms as TT
    import torchvision.transforms.functional as F
    from PIL import Image
    from test_train_solver import _torchvision_fcos_as_trained

    recipe = "tv_r50"
    cfg = recipe_config(recipe)
    transform = _torchvision_fcos_as_trained(0).transform
    transform.train()
    assert tuple(transform.min_size) == tuple(cfg.input.train_shorts) == (800,)
    assert transform.max_size == cfg.input.train_max
    assert np.allclose(transform.image_mean, cfg.input.mean) and np.allclose(transform.image_std, cfg.input.std)

    worst = [0.0, 0.0]
    n = 0
    for k, (h, w) in enumerate(SIZES):
        img = synthetic_bgr(h, w, seed=k)
        boxes, labels = _boxes(h, w)
        for do_flip in (False, True):
            pil = Image.fromarray(np.ascontiguousarray(img[:, :, ::-1]))
            b = torch.from_numpy(boxes.copy())
            if do_flip:  # references/detection/transforms.py RandomHorizontalFlip
                pil = F.hflip(pil)
                b[:, [0, 2]] = w - b[:, [2, 0]]
            t = F.convert_image_dtype(F.pil_to_tensor(pil), torch.float)  # PILToTensor, ConvertImageDtype(float)
            images, targets = transform([t], [{"boxes": b, "labels": torch.from_numpy(labels)}])
            rh, rw = images.image_sizes[0]
            ref_img = images.tensors[0, :, :rh, :rw].numpy()
            d = _assert_sample(
                f"{recipe} {h}x{w} flip {do_flip}",
                _ours(recipe, img, boxes, labels, 800, do_flip),
                ref_img,
                targets[0]["boxes"].numpy(),
                targets[0]["labels"].numpy(),
                # cv2 float INTER_LINEAR vs F.interpolate on the normalised image: fp32 weight rounding, measured
                # 2.2e-4 (= 5e-5 of a [0, 1] pixel value, 1/80 of a uint8 level)
                img_atol=5e-4,
            )
            worst = [max(a, c) for a, c in zip(worst, d)]
            n += 1

    torch.manual_seed(0)
    hflip = TT.RandomHorizontalFlip(0.5)  # the reference's class draws ``torch.rand(1) < p`` like this base class
    x = torch.zeros(1, 1, 2)
    x[..., 0] = 1.0
    ref_f = np.array([bool(hflip(x)[0, 0, 0] == 0) for _ in range(N_DRAWS)])
    ref_s = np.full(N_DRAWS, 800)  # torch_choice over min_size (800,)
    dist = _assert_distribution(recipe, [800], *_our_draws(recipe, N_DRAWS, 0), ref_s, ref_f)
    print(
        f"\n{recipe} train pipeline vs torchvision: {n} samples, max image diff {worst[0]:.3g}, "
        f"max box diff {worst[1]:.3g} px; sampling {dist}; {time.time() - t0:.1f} s"
    )


# --------------------------------------------------------------------------------------------
# PaddleDetection
# --------------------------------------------------------------------------------------------


def test_train_pipeline_equals_paddledetection(ppdet_worker: Any, tmp_path) -> None:
    t0 = time.time()
    recipe = "r50_ms_2x"
    cfg = recipe_config(recipe)
    conf = ppdet_worker.call("ppdet_tasks:train_reader_config")
    ops = dict((name, args) for name, args in conf["ops"])
    assert [name for name, _ in conf["ops"]] == ["Decode", "RandomResize", "NormalizeImage", "RandomFlip"]
    rr = ops["RandomResize"]
    assert sorted(min(t) for t in rr["target_size"]) == sorted(cfg.input.train_shorts)
    assert {max(t) for t in rr["target_size"]} == {cfg.input.train_max}
    assert rr["keep_ratio"] and rr["interp"] == cv2.INTER_LINEAR and not rr.get("random_interp", False)
    assert not rr.get("random_range", False) and rr.get("random_size", True)
    assert ops["RandomFlip"].get("prob", 0.5) == cfg.data.flip_prob
    norm = ops["NormalizeImage"]
    assert np.allclose(norm["mean"], cfg.input.mean) and np.allclose(norm["std"], cfg.input.std)
    assert norm["is_scale"] == cfg.input.to_unit and cfg.input.channel_order == "RGB"  # Decode gives RGB
    assert conf["batch_size"] * 8 == cfg.data.batch_size and conf["drop_last"]  # 8 GPUs x 2
    assert conf["pad_to_stride"] == [cfg.input.size_divisor]

    worst = [0.0, 0.0]
    n = 0
    for k, (h, w) in enumerate(SIZES):
        img = synthetic_bgr(h, w, seed=k)
        path = str(tmp_path / f"img{k}.png")
        cv2.imwrite(path, img)
        boxes, labels = _boxes(h, w)
        for short in cfg.input.train_shorts:
            for do_flip in (False, True):
                out = ppdet_worker.call(
                    "ppdet_tasks:train_sample",
                    im_file=path,
                    gt_bbox=boxes,
                    gt_class=labels,
                    short=int(short),
                    flip=do_flip,
                )
                d = _assert_sample(
                    f"{recipe} {h}x{w} short {short} flip {do_flip}",
                    _ours(recipe, img, boxes, labels, short, do_flip),
                    np.ascontiguousarray(out["image"].transpose(2, 0, 1)),
                    out["gt_bbox"],
                    labels,
                    img_atol=1e-5,  # float64 (PaddleDetection) vs float32 normalisation
                )
                worst = [max(a, c) for a, c in zip(worst, d)]
                n += 1

    ref = ppdet_worker.call("ppdet_tasks:train_sampling", n=N_DRAWS, seed=0)
    dist = _assert_distribution(
        recipe, list(cfg.input.train_shorts), *_our_draws(recipe, N_DRAWS, 0), ref["shorts"], ref["flips"].astype(bool)
    )
    print(
        f"\n{recipe} train pipeline vs PaddleDetection: {n} samples, max image diff {worst[0]:.3g}, "
        f"max box diff {worst[1]:.3g} px; sampling {dist}; {time.time() - t0:.1f} s"
    )
