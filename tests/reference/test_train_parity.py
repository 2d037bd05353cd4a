"""Training parity: targets, losses and gradients of one step against the reference training code
(``make test-reference``; issue 14 items 1-3).

Per recipe, from the same weights (the reference model with seeded random weights, converted by our converter)
and the same batch (``train_parity.train_batch``: three images of different sizes padded together, one without
boxes, tiny boxes, boxes at the size-range borders, a tie and a near tie, boxes touching the image border):

* ``test_targets_*``: per-point labels equal exactly, regression and centerness targets within 1e-6, at every
  point of the padded batch (padding included), from the reference's own target code.
* ``test_losses_*``: each loss term within 2e-5 relative of the reference's float32 run, and the normalisers
  (foreground count, centerness-target sum) equal.
* ``test_gradients_*``: every parameter gradient (reference name -> ours through the converter's key map):
  head predictors/towers within 1e-4 relative L2 of the reference's float32 gradient, the total norm within 1e-3,
  deeper layers within 4x the reference's own float32-vs-float64 spread (+1e-5, at least 1e-4) of its float64
  gradient; frozen parameters get no gradient on either side.

Recipes: rt_dla34 and rt_r50 against AdelaiDet on detectron2 (``model.train(); losses = model(batched_inputs)``;
trainable BatchNorm in train mode in DLA-34 and in R-50's res3-res5, FREEZE_AT 2).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from parity import convert_checkpoint, recipe_config  # noqa: E402
from test_parity import _torchvision_fcos  # noqa: E402
from train_parity import (  # noqa: E402
    NOISE_SEEDS,
    PERTURB,
    assert_same_targets,
    case_labels,
    compare_gradients,
    noisy_input,
    our_step,
    our_targets,
    pad_batch,
    print_report,
    rel,
    train_batch,
)
from train_reference import adelaidet_step, adelaidet_targets, torchvision_targets_and_losses  # noqa: E402

from fcos.checkpoint.convert_adelaidet import convert_adelaidet  # noqa: E402
from fcos.checkpoint.convert_common import COCO_CATEGORY_IDS  # noqa: E402
from fcos.checkpoint.convert_torchvision import convert_torchvision_fcos  # noqa: E402

LOSS_TOL = 2e-5
ADELAIDET_RECIPES = ["rt_dla34", "rt_r50"]
AD_LOSS_NAMES = {"loss_fcos_cls": "loss_cls", "loss_fcos_loc": "loss_box", "loss_fcos_ctr": "loss_ctr"}


@pytest.fixture(scope="module")
def adelaidet_runs(adelaidet_model):
    """Per recipe (computed on first use): the batch, AdelaiDet's float32 and float64 steps, our step, the
    converter's key map and the run times."""
    cache: dict[str, dict] = {}

    def get(recipe: str) -> dict:
        if recipe in cache:
            return cache[recipe]
        model = adelaidet_model(recipe)
        batch = train_batch(point_offset=0.5)
        t0 = time.time()
        ref32 = adelaidet_step(model, batch, torch.float32)
        t1 = time.time()
        ref64 = adelaidet_step(model, batch, torch.float64)
        t2 = time.time()
        ref32p = [adelaidet_step(model, batch, torch.float32, perturb=PERTURB)]
        conv = convert_adelaidet({k: v.numpy() for k, v in model.state_dict().items()}, None, recipe)
        ours = our_step(recipe, conv.state, ref32["images"], batch)
        t3 = time.time()
        ours64 = our_step(recipe, conv.state, ref32["images"], batch, dtype="float64")
        t4 = time.time()
        cache[recipe] = {
            "ref32p": ref32p,
            "batch": batch,
            "ref32": ref32,
            "ref64": ref64,
            "ours": ours,
            "ours64": ours64,
            "key_map": dict(conv.mapped),
            "seconds": {"reference fp32": t1 - t0, "reference fp64": t2 - t1, "ours": t3 - t2, "ours fp64": t4 - t3},
        }
        return cache[recipe]

    return get


@pytest.mark.parametrize("recipe", ADELAIDET_RECIPES)
def test_targets_adelaidet(recipe: str) -> None:
    batch = train_batch(point_offset=0.5)
    padded = batch.padded_size(32)
    ref = adelaidet_targets(recipe, batch, padded)
    ours = our_targets(recipe, padded, batch)
    assert ref["level_sizes"].tolist() == ours["level_sizes"].tolist()
    stats = assert_same_targets(ref, ours, num_classes=80)
    # the batch exercises what it is meant to (facts of AdelaiDet's assigner, read from its own targets):
    # inclusive size ranges at both borders, the first of two equal-area boxes, the smaller of a near tie
    cases = case_labels(ref, padded, [8, 16, 32], 0.5)
    labels = batch.labels
    assert cases == {
        "border64": labels[0][0],
        "border128": labels[0][1],
        "tie": labels[0][2],
        "near_tie": labels[1][1],
    }, cases
    assert stats["positives_per_image"][0] > 0 and stats["positives_per_image"][1] > 0
    assert stats["positives_per_image"][2] == 0
    stats["cases"] = cases
    print_report(f"{recipe} targets vs AdelaiDet", stats)


@pytest.mark.parametrize("recipe", ADELAIDET_RECIPES)
def test_losses_adelaidet(recipe: str, adelaidet_runs) -> None:
    run = adelaidet_runs(recipe)
    ref, ref64, ours = run["ref32"], run["ref64"], run["ours"]
    batch = run["batch"]
    padded = ref["images"].shape[2:]
    targets = our_targets(recipe, padded, batch)
    num_pos = int((targets["labels"] < 80).sum())
    assert num_pos == ref["num_pos"], (num_pos, ref["num_pos"])
    assert float(targets["ctr"].sum()) == pytest.approx(ref["loss_denorm"], rel=1e-6)
    report = {"num_pos": num_pos, "ctr_sum": (float(targets["ctr"].sum()), ref["loss_denorm"])}
    for ad_name, name in AD_LOSS_NAMES.items():
        r = rel(ours["losses"][name], ref["losses"][ad_name])
        r64 = rel(run["ours64"]["losses"][name], ref64["losses"][ad_name])
        spread = rel(ref["losses"][ad_name], ref64["losses"][ad_name])
        report[name] = (
            f"ours {ours['losses'][name]:.8g} ref {ref['losses'][ad_name]:.8g} rel {r:.2e}; float64 runs {r64:.2e}; "
            f"ref fp32 vs fp64 {spread:.2e}"
        )
        assert r <= LOSS_TOL, f"{name}: {report[name]}"
        assert r64 <= LOSS_TOL, f"{name}: {report[name]}"
    report["seconds"] = {k: round(v, 1) for k, v in run["seconds"].items()}
    print_report(f"{recipe} losses vs AdelaiDet", report)


@pytest.mark.parametrize("recipe", ADELAIDET_RECIPES)
def test_gradients_adelaidet(recipe: str, adelaidet_runs) -> None:
    run = adelaidet_runs(recipe)
    stats = compare_gradients(
        run["ours"]["grads"],
        run["ours64"]["grads"],
        run["ref32"]["grads"],
        run["ref64"]["grads"],
        run["key_map"],
        run["ref32"]["frozen"],
        run["ours"]["frozen"],
        # DLA-34's level3/level4 ``project`` only feeds ``residual.sum() * 0`` in AdelaiDet's training forward
        unused_ok=lambda name: ".project." in name,
        ref32_perturbed=[r["grads"] for r in run["ref32p"]],
    )
    assert set(run["ref32"]["grads"]) == set(run["ref64"]["grads"])
    print_report(f"{recipe} gradients vs AdelaiDet", stats)


# --------------------------------------------------------------------------------------------
# tv_r50 vs torchvision (FCOS.compute_loss / FCOSHead.compute_loss)
# --------------------------------------------------------------------------------------------

TV_LOSS_NAMES = {"classification": "loss_cls", "bbox_regression": "loss_box", "bbox_ctrness": "loss_ctr"}
TV_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TV_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _tv_normalize(img_bgr: np.ndarray) -> np.ndarray:
    rgb = img_bgr[:, :, ::-1].astype(np.float32) / 255.0
    return ((rgb - TV_MEAN) / TV_STD).transpose(2, 0, 1)


def _tv_rows(grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torchvision's 91 class rows -> the 80 COCO rows our converter keeps (the other 11 never get targets)."""
    out = dict(grads)
    for key in ("head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias"):
        if key in out:
            out[key] = out[key][list(COCO_CATEGORY_IDS)]
    return out


@pytest.fixture(scope="module")
def torchvision_run():
    model = _torchvision_fcos(seed=0)
    batch = train_batch(point_offset=0.0)
    images = pad_batch(batch, _tv_normalize, 32)
    t0 = time.time()
    ref32 = torchvision_targets_and_losses(model, images, batch, batch.sizes, torch.float32)
    t1 = time.time()
    ref64 = torchvision_targets_and_losses(model, images, batch, batch.sizes, torch.float64, ref32["matched"])
    t2 = time.time()
    # float32 runs on rounding-sized changes of the input (a few seconds each): the P7 ReLU kink (train_parity)
    perturbed = [(images * np.float32(1.0 + PERTURB)).astype(np.float32)]
    perturbed += [noisy_input(images, seed) for seed in NOISE_SEEDS]
    ref32p = [
        torchvision_targets_and_losses(model, x, batch, batch.sizes, torch.float32, ref32["matched"]) for x in perturbed
    ]
    conv = convert_torchvision_fcos({k: v.numpy() for k, v in model.state_dict().items()}, recipe_config("tv_r50"))
    ours = our_step("tv_r50", conv.state, images, batch)
    t3 = time.time()
    ours64 = our_step("tv_r50", conv.state, images, batch, dtype="float64")
    t4 = time.time()
    for r in (ref32, ref64, *ref32p):
        r["grads"] = _tv_rows(r["grads"])
    return {
        "ref32p": ref32p,
        "batch": batch,
        "images": images,
        "ref32": ref32,
        "ref64": ref64,
        "ours": ours,
        "ours64": ours64,
        "key_map": dict(conv.mapped),
        "seconds": {"reference fp32": t1 - t0, "reference fp64": t2 - t1, "ours": t3 - t2, "ours fp64": t4 - t3},
    }


def test_targets_torchvision(torchvision_run) -> None:
    run = torchvision_run
    ref = run["ref32"]["targets"]
    ours = our_targets("tv_r50", run["images"].shape[2:], run["batch"])
    assert ref["level_sizes"].tolist() == ours["level_sizes"].tolist()
    stats = assert_same_targets(ref, ours, num_classes=80)
    # torchvision's assigner, read from its own targets: strict size ranges (neither border box is positive at its
    # border point), the first of two equal-area boxes
    cases = case_labels(ref, run["images"].shape[2:], [8, 16, 32, 64, 128], 0.0)
    labels = run["batch"].labels
    assert cases["border64"] != labels[0][0] and cases["border128"] != labels[0][1], cases
    assert cases["tie"] == labels[0][2], cases
    # float32(1e8 - area) ties the near tie (10000 vs 9999 px^2): the first box wins (model.assigner.area_rank_offset)
    assert cases["near_tie"] == labels[1][0], cases
    assert stats["positives_per_image"][0] > 0 and stats["positives_per_image"][1] > 0
    assert stats["positives_per_image"][2] == 0
    stats["cases"] = cases
    print_report("tv_r50 targets vs torchvision", stats)


def test_losses_torchvision(torchvision_run) -> None:
    run = torchvision_run
    ref, ref64, ours = run["ref32"], run["ref64"], run["ours"]
    targets = our_targets("tv_r50", run["images"].shape[2:], run["batch"])
    num_pos = int((targets["labels"] < 80).sum())
    assert num_pos == ref["num_foreground"]
    report = {"num_foreground": num_pos}
    for tv_name, name in TV_LOSS_NAMES.items():
        r = rel(ours["losses"][name], ref["losses"][tv_name])
        r64 = rel(run["ours64"]["losses"][name], ref64["losses"][tv_name])
        spread = rel(ref["losses"][tv_name], ref64["losses"][tv_name])
        report[name] = (
            f"ours {ours['losses'][name]:.8g} ref {ref['losses'][tv_name]:.8g} rel {r:.2e}; float64 runs {r64:.2e}; "
            f"ref fp32 vs fp64 {spread:.2e}"
        )
        assert r <= LOSS_TOL, f"{name}: {report[name]}"
        assert r64 <= LOSS_TOL, f"{name}: {report[name]}"
    report["seconds"] = {k: round(v, 1) for k, v in run["seconds"].items()}
    print_report("tv_r50 losses vs torchvision", report)


def test_gradients_torchvision(torchvision_run) -> None:
    run = torchvision_run
    stats = compare_gradients(
        run["ours"]["grads"],
        run["ours64"]["grads"],
        run["ref32"]["grads"],
        run["ref64"]["grads"],
        run["key_map"],
        run["ref32"]["frozen"],
        run["ours"]["frozen"],
        ref32_perturbed=[r["grads"] for r in run["ref32p"]],
    )
    print_report("tv_r50 gradients vs torchvision", stats)


# --------------------------------------------------------------------------------------------
# r50_ms_2x vs PaddleDetection (PadBatch + Gt2FCOSTarget + FCOSHead.get_loss / FCOSLoss), through the worker
# --------------------------------------------------------------------------------------------

PPDET_LOSS_NAMES = {"loss_cls": "loss_cls", "loss_box": "loss_box", "loss_quality": "loss_ctr"}


def _ppdet_targets(out: dict, num_images: int) -> dict[str, np.ndarray]:
    """The worker's per-level (N, h, w, c) targets -> ours: labels (N, P) 0-based with 80 = background."""
    labels, reg, ctr, sizes = [], [], [], []
    level = 0
    while f"labels{level}" in out:
        lab = out[f"labels{level}"].reshape(num_images, -1)
        labels.append(np.where(lab > 0, lab - 1, 80))
        reg.append(out[f"reg_target{level}"].reshape(num_images, -1, 4))
        ctr.append(out[f"centerness{level}"].reshape(num_images, -1))
        sizes.append(lab.shape[1])
        level += 1
    return {
        "labels": np.concatenate(labels, axis=1).astype(np.int64),
        "reg": np.concatenate(reg, axis=1).astype(np.float32),
        "ctr": np.concatenate(ctr, axis=1).astype(np.float32),
        "level_sizes": np.asarray(sizes),
    }


@pytest.fixture(scope="module")
def ppdet_run(ppdet_worker, ppdet_fcos, tmp_path_factory):
    batch = train_batch(point_offset=0.5)
    kwargs: dict = {"num_images": len(batch.images)}
    for i, (im, boxes, labels) in enumerate(zip(batch.images, batch.boxes, batch.labels)):
        kwargs[f"image_{i}"] = _tv_normalize(im)  # PaddleDetection: RGB, /255, ImageNet mean/std (as tv)
        kwargs[f"gt_bbox_{i}"] = boxes
        kwargs[f"gt_class_{i}"] = labels
    t0 = time.time()
    ref32 = ppdet_worker.call("ppdet_train_tasks:train_step", name=ppdet_fcos["name"], dtype="float32", **kwargs)
    t1 = time.time()
    ref64 = ppdet_worker.call("ppdet_train_tasks:train_step", name=ppdet_fcos["name"], dtype="float64", **kwargs)
    t2 = time.time()
    perturbed = {
        k: (v * np.float32(1.0 + PERTURB)).astype(np.float32) if k.startswith("image_") else v
        for k, v in kwargs.items()
    }
    ref32p = [ppdet_worker.call("ppdet_train_tasks:train_step", name=ppdet_fcos["name"], dtype="float32", **perturbed)]
    out = str(tmp_path_factory.mktemp("ppdet_train") / "r50_ms_2x.npz")
    conv = convert_checkpoint("paddledet", ppdet_fcos["pdparams"], out, "r50_ms_2x")
    images = ref32["image"]
    ours = our_step("r50_ms_2x", conv.state, images, batch)
    t3 = time.time()
    ours64 = our_step("r50_ms_2x", conv.state, images, batch, dtype="float64")
    t4 = time.time()
    for r in (ref32, ref64, *ref32p):
        r["grads"] = {k[len("grad/") :]: v for k, v in r.items() if k.startswith("grad/")}
    return {
        "ref32p": ref32p,
        "batch": batch,
        "images": images,
        "ref32": ref32,
        "ref64": ref64,
        "ours": ours,
        "ours64": ours64,
        "key_map": dict(conv.mapped),
        "seconds": {"reference fp32": t1 - t0, "reference fp64": t2 - t1, "ours": t3 - t2, "ours fp64": t4 - t3},
    }


def test_targets_paddledet(ppdet_run) -> None:
    run = ppdet_run
    batch = run["batch"]
    ref = _ppdet_targets(run["ref32"], len(batch.images))
    assert run["ref32"]["empty_images"] == [2]
    ours = our_targets("r50_ms_2x", run["images"].shape[2:], batch)
    assert ref["level_sizes"].tolist() == ours["level_sizes"].tolist()
    stats = assert_same_targets(ref, ours, num_classes=80)
    # PaddleDetection's Gt2FCOSTarget, read from its own targets: strict size ranges, the first of two
    # equal-area boxes, the smaller of a near tie
    cases = case_labels(ref, run["images"].shape[2:], [8, 16, 32, 64, 128], 0.5)
    labels = batch.labels
    assert cases["border64"] != labels[0][0] and cases["border128"] != labels[0][1], cases
    assert cases["tie"] == labels[0][2] and cases["near_tie"] == labels[1][1], cases
    assert stats["positives_per_image"][0] > 0 and stats["positives_per_image"][1] > 0
    stats["cases"] = cases
    print_report("r50_ms_2x targets vs PaddleDetection Gt2FCOSTarget", stats)


def test_losses_paddledet(ppdet_run) -> None:
    run = ppdet_run
    ref, ref64, ours = run["ref32"], run["ref64"], run["ours"]
    report = {}
    for pd_name, name in PPDET_LOSS_NAMES.items():
        r = rel(ours["losses"][name], ref[pd_name])
        r64 = rel(run["ours64"]["losses"][name], ref64[pd_name])
        spread = rel(ref[pd_name], ref64[pd_name])
        report[name] = (
            f"ours {ours['losses'][name]:.8g} ref {ref[pd_name]:.8g} rel {r:.2e}; float64 runs {r64:.2e}; "
            f"ref fp32 vs fp64 {spread:.2e}"
        )
        assert r <= LOSS_TOL, f"{name}: {report[name]}"
        assert r64 <= LOSS_TOL, f"{name}: {report[name]}"
    report["seconds"] = {k: round(v, 1) for k, v in run["seconds"].items()}
    print_report("r50_ms_2x losses vs PaddleDetection", report)


def test_gradients_paddledet(ppdet_run) -> None:
    run = ppdet_run
    stats = compare_gradients(
        run["ours"]["grads"],
        run["ours64"]["grads"],
        run["ref32"]["grads"],
        run["ref64"]["grads"],
        run["key_map"],
        list(run["ref32"]["frozen"]),
        run["ours"]["frozen"],
        ref32_perturbed=[r["grads"] for r in run["ref32p"]],
    )
    print_report("r50_ms_2x gradients vs PaddleDetection", stats)
