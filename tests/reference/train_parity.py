"""Training parity helpers: the shared batch, our side of a training step, and the comparison rules.

The batch (``train_batch(point_offset, size_divisor)``): three images of different sizes padded together, the
third without boxes. Boxes (xyxy, network-input pixels) are built so that the cases the assigners treat
differently occur: a box whose max(l, t, r, b) is exactly 64 at a P3 point and one exactly 128 at a P4 point
(the size-range borders: inclusive in AdelaiDet, strict in torchvision / PaddleDetection), tiny boxes (one
around a P3 point, one between points), two boxes of equal area sharing candidate points (tie: the first box),
two whose areas differ by 1 px^2 (min-area rule), nested boxes, boxes touching the image border, and points in
the padding of the smaller images. Point positions follow the recipe's offset (k*s + offset*s).

Our side: ``our_targets`` (``compute_points`` + ``assign_targets`` of ``fcos.modeling``) and ``our_step`` (one
train-mode forward + backward of ``fcos.build_model`` with converted weights: losses and every gradient).
Comparisons: ``rel_l2``, ``compare_gradients`` (per-parameter rule and report).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import paddle
from parity import recipe_config, synthetic_bgr

import fcos
from fcos.checkpoint.weights import load_weights
from fcos.modeling.assigner import assign_targets
from fcos.modeling.losses import centerness_targets
from fcos.modeling.points import compute_points
from fcos.ops import onednn_conv

# (h, w) of the three images; the third has no boxes
IMAGE_SIZES = [(288, 320), (256, 240), (224, 256)]
PREDICTOR_TOL = 1e-4  # relative L2 of predictor/tower gradients
TOTAL_NORM_TOL = 1e-3  # relative difference of the total gradient norm
SEMANTIC_TOL = 5e-6  # relative L2, ours in float64 (float32 loss arithmetic) vs the reference in float64
GROUP_FACTOR = 3.0  # towers / FPN / backbone, whole group: |ours - ref64| <= GROUP_FACTOR * |ref32 - ref64|
DEEP_FACTOR = 8.0  # per parameter: |ours - ref64| <= DEEP_FACTOR * |ref32 - ref64| + DEEP_FLOOR (relative L2)
DEEP_FLOOR = 1e-5
# More float32 reference runs on a rounding-sized change of the input show which gradients jump at a ReLU kink:
# the input scaled by 1 + PERTURB, or (``noisy_input``) each element times 1 + NOISE * N(0, 1) with seeds
# NOISE_SEEDS. The reference's float32 spread is the largest of its float32 runs' errors.
PERTURB = 2.0**-20
NOISE = 2.0**-22  # 2 float32 ulps
NOISE_SEEDS = (0, 1, 2, 3)


@dataclass
class TrainBatch:
    images: list[np.ndarray]  # uint8 BGR (h, w, 3)
    boxes: list[np.ndarray]  # (M, 4) float32 xyxy in image pixels
    labels: list[np.ndarray]  # (M,) int64, 0-based classes

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [tuple(int(v) for v in im.shape[:2]) for im in self.images]

    def padded_size(self, divisor: int) -> tuple[int, int]:
        h = max(s[0] for s in self.sizes)
        w = max(s[1] for s in self.sizes)
        return int(np.ceil(h / divisor) * divisor), int(np.ceil(w / divisor) * divisor)


def _border_box(kx: int, ky: int, stride: int, offset: float, size: float) -> list[float]:
    """A box whose max(l, t, r, b) at the point (kx, ky) of the level with ``stride`` is exactly ``size`` (its
    left side), the point one stride / 2 from the box centre (inside the center-sampling square)."""
    px, py = kx * stride + offset * stride, ky * stride + offset * stride
    return [px - size, py - 20.0, px + size - stride, py + 20.0]


def train_batch(point_offset: float) -> TrainBatch:
    """The shared training batch for a recipe whose points sit at k*s + ``point_offset``*s (strides 8 and 16 for
    the border boxes, size ranges starting [-1|0, 64], [64, 128])."""
    off = point_offset
    a = [
        _border_box(12, 10, 8, off, 64.0),  # max side 64 at a P3 point (P3/P4 border)
        _border_box(10, 13, 16, off, 128.0),  # max side 128 at a P4 point (P4/P5 border)
        [100.0, 120.0, 250.0, 230.0],  # equal areas (16500) with the next, shared P4 candidates: tie
        [120.0, 130.0, 270.0, 240.0],
        [242.5 + 8 * off - 4, 34.5 + 8 * off - 4, 246.0 + 8 * off - 4, 38.0 + 8 * off - 4],  # tiny, around a point
        [201.2, 10.3, 203.9, 12.8],  # tiny, no point inside
        [260.0, 240.0, 320.0, 288.0],  # touching the right and bottom image border
        [10.0, 10.0, 300.0, 280.0],  # large, encloses most others (min-area rule)
        [130.5, 150.25, 170.75, 190.5],  # fractional coordinates, nested in the tie pair
    ]
    b = [
        [20.0, 20.0, 120.0, 120.0],  # areas 10000 and 9999 (min-area rule on a near tie)
        [30.0, 25.0, 129.0, 126.0],
        [8.0, 160.0, 240.0, 250.0],  # touching the right image border; points to its right are padding
        [0.0, 0.0, 40.0, 30.0],  # touching the top-left corner
    ]
    boxes = [np.asarray(a, np.float32), np.asarray(b, np.float32), np.zeros((0, 4), np.float32)]
    rng = np.random.RandomState(3)
    labels = [rng.randint(0, 80, len(x)).astype(np.int64) for x in boxes]
    labels[0][3] = (labels[0][2] + 1) % 80  # the tie pair has different classes, so a wrong winner shows
    labels[1][1] = (labels[1][0] + 1) % 80
    images = [synthetic_bgr(h, w, seed=21 + i) for i, (h, w) in enumerate(IMAGE_SIZES)]
    return TrainBatch(images, boxes, labels)


def case_points(point_offset: float) -> dict[str, tuple[int, int, int, int]]:
    """The designed cases of ``train_batch``: name -> (image, level, kx, ky) of the point where it shows.

    * ``border64``: P3 point with max(l,t,r,b) == 64 for box 0 (positive for box 0 only with inclusive ranges);
    * ``border128``: P4 point with max == 128 for box 1 (likewise);
    * ``tie``: P4 point whose candidates are boxes 2 and 3 (equal areas: the first wins);
    * ``near_tie``: P3 point whose candidates are boxes 0 and 1 of image 1 (areas 10000 and 9999)."""
    near = (8, 8) if point_offset == 0.5 else (9, 9)
    return {
        "border64": (0, 0, 12, 10),
        "border128": (0, 1, 10, 13),
        "tie": (0, 1, 11, 11),
        "near_tie": (1, 0, *near),
    }


def case_labels(
    targets: dict[str, np.ndarray], padded_hw: tuple[int, int], strides: list[int], point_offset: float
) -> dict[str, int]:
    """Labels at the ``case_points`` of a (N, P) label map of a padded input of ``padded_hw``."""
    sizes = _feature_sizes(*padded_hw, strides)
    starts = np.concatenate([[0], np.cumsum([h * w for h, w in sizes])])
    out = {}
    for name, (image, level, kx, ky) in case_points(point_offset).items():
        out[name] = int(targets["labels"][image, starts[level] + ky * sizes[level][1] + kx])
    return out


def pad_batch(batch: TrainBatch, normalize: Callable[[np.ndarray], np.ndarray], divisor: int) -> np.ndarray:
    """(N, 3, H, W) float32: each image normalised by ``normalize`` ((h, w, 3) uint8 -> (3, h, w) float32) and
    zero-padded at the bottom/right to a multiple of ``divisor``."""
    hp, wp = batch.padded_size(divisor)
    out = np.zeros((len(batch.images), 3, hp, wp), np.float32)
    for i, im in enumerate(batch.images):
        x = normalize(im)
        out[i, :, : x.shape[1], : x.shape[2]] = x
    return out


def our_targets(recipe: str, padded_hw: tuple[int, int], batch: TrainBatch) -> dict[str, np.ndarray]:
    """Our targets on the padded input of size ``padded_hw``: ``labels`` (N, P) int64 (background = C),
    ``reg`` (N, P, 4) l,t,r,b as the loss sees them, ``ctr`` (N, P) centerness target (0 at background),
    ``level_sizes`` (per-level number of points)."""
    cfg = recipe_config(recipe).model
    hp, wp = padded_hw
    feat_sizes = _feature_sizes(hp, wp, cfg.strides)
    image_size = (hp, wp) if cfg.head.grid_strides else None
    points = compute_points(feat_sizes, cfg.strides, cfg.head.point_offset, image_size)
    targets = [{"boxes": b, "labels": lab} for b, lab in zip(batch.boxes, batch.labels)]
    labels, reg = assign_targets(points, cfg.strides, targets, cfg.assigner, cfg.num_classes, cfg.head.norm_reg_targets)
    labels, reg = labels.numpy(), reg.numpy()
    pos = labels < cfg.num_classes
    safe = np.where(pos[..., None], reg, 1.0).astype(np.float32)
    ctr = centerness_targets(paddle.to_tensor(safe)).numpy() * pos
    return {"labels": labels, "reg": reg, "ctr": ctr, "level_sizes": np.asarray([h * w for h, w in feat_sizes])}


def _feature_sizes(hp: int, wp: int, strides: list[int]) -> list[tuple[int, int]]:
    """Feature sizes of a padded input: ceil-halving per stride-2 conv (C3..C5 / P6 / P7 are 3x3 s2, pad 1)."""
    sizes = []
    h, w = hp, wp
    level_stride = 1
    for s in strides:
        while level_stride < s:
            h, w = (h + 1) // 2, (w + 1) // 2
            level_stride *= 2
        sizes.append((h, w))
    return sizes


def assert_same_targets(ref: dict[str, np.ndarray], ours: dict[str, np.ndarray], num_classes: int) -> dict:
    """Labels equal everywhere (exactly); regression and centerness targets within 1e-6 (absolute, in the
    loss's units) at the positives, centerness 0 at the background on both sides. Returns statistics."""
    assert ref["labels"].shape == ours["labels"].shape, (ref["labels"].shape, ours["labels"].shape)
    diff = np.argwhere(ref["labels"] != ours["labels"])
    if len(diff):
        rows = [
            f"image {i} point {p}: reference {ref['labels'][i, p]} ours {ours['labels'][i, p]}" for i, p in diff[:10]
        ]
        raise AssertionError(f"{len(diff)} labels differ:\n" + "\n".join(rows))
    pos = ref["labels"] < num_classes
    reg_err = float(np.abs(ref["reg"][pos] - ours["reg"][pos]).max()) if pos.any() else 0.0
    ctr_err = float(np.abs(ref["ctr"] - ours["ctr"]).max())
    assert reg_err <= 1e-6, f"regression targets differ by up to {reg_err:.3g}"
    assert ctr_err <= 1e-6, f"centerness targets differ by up to {ctr_err:.3g}"
    assert not ours["ctr"][~pos].any() and not ref["ctr"][~pos].any()
    per_image = pos.sum(axis=1).tolist()
    return {"positives_per_image": per_image, "max_reg_diff": reg_err, "max_ctr_diff": ctr_err}


def our_step(
    recipe: str, state: dict[str, np.ndarray], images: np.ndarray, batch: TrainBatch, dtype: str = "float32"
) -> dict[str, Any]:
    """One train-mode forward + backward of our model of ``recipe`` with ``state`` on the padded network input
    ``images`` (N, 3, H, W): ``losses`` (loss_cls, loss_box, loss_ctr as floats), ``grads`` ({parameter name:
    float64 array or None}) and ``frozen`` (names of parameters that take no gradient).

    float32 runs with the CPU operators training uses (``train.cpu_conv``: the oneDNN convolution, GroupNorm and
    the double-accumulating BatchNorm). ``dtype="float64"`` casts the model and input (Paddle's own kernels; the
    losses stay float32, see fcos.modeling.losses): it checks the model's and loss's mathematics against the
    reference's float64 run, free of float32 rounding."""
    cfg = recipe_config(recipe)
    model = fcos.build_model(cfg)
    report = load_weights(model, state, strict=True)
    assert not report.missing and not report.unexpected and not report.shape_mismatch, report
    if dtype != "float32":
        model.to(dtype=dtype)
    model.train()
    saved = onednn_conv.conv_backend()
    onednn_conv.set_conv_backend(cfg.train.cpu_conv)  # the CPU operators training uses (fcos.utils.runtime)
    try:
        return _our_step(model, images.astype(dtype), batch)
    finally:
        onednn_conv.set_conv_backend(saved)


def _our_step(model: Any, images: np.ndarray, batch: TrainBatch) -> dict[str, Any]:
    targets = [
        {"boxes": paddle.to_tensor(b.reshape(-1, 4)), "labels": paddle.to_tensor(lab)}
        for b, lab in zip(batch.boxes, batch.labels)
    ]
    out = model(paddle.to_tensor(images), targets=targets)
    out["loss"].backward()
    grads, frozen = {}, []
    for name, p in model.named_parameters():
        if p.stop_gradient:
            frozen.append(name)
            assert p.grad is None, f"frozen parameter {name} got a gradient"
        else:
            grads[name] = None if p.grad is None else p.grad.numpy().astype(np.float64)
    losses = {k: float(v) for k, v in out.items() if k != "loss"}
    return {"losses": losses, "grads": grads, "frozen": frozen}


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def param_group(our_name: str) -> str:
    """ "predictors" (cls_logits, bbox_pred, ctrness, per-level scales), "towers" (the head's conv/norm towers),
    "fpn" or "backbone"."""
    if our_name.startswith("head."):
        predictor = our_name.startswith(("head.cls_logits.", "head.bbox_pred.", "head.ctrness."))
        return "predictors" if predictor else "towers"
    return "fpn" if our_name.startswith("fpn.") else "backbone"


def _group_norm(grads: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.concatenate([grads[n].ravel() for n in names])


def noisy_input(images: np.ndarray, seed: int) -> np.ndarray:
    """``images`` (float32) with every element times 1 + NOISE * N(0, 1) (``seed``): a rounding-sized change."""
    rng = np.random.default_rng(seed)
    return (images * (1.0 + NOISE * rng.standard_normal(size=images.shape))).astype(np.float32)


def _spread(g32: np.ndarray, g64: np.ndarray, name: str, perturbed: Sequence[dict[str, np.ndarray]]) -> float:
    """The reference's own float32 error of one gradient: the largest of its float32 runs' (the plain one and
    the ``perturbed`` ones) relative L2 distances to its float64 gradient."""
    return max([rel_l2(g32, g64)] + [rel_l2(p[name], g64) for p in perturbed])


def compare_gradients(
    ours32: dict[str, Optional[np.ndarray]],
    ours64: dict[str, Optional[np.ndarray]],
    ref32: dict[str, np.ndarray],
    ref64: dict[str, np.ndarray],
    key_map: dict[str, str],
    ref_frozen: list[str],
    ours_frozen: list[str],
    unused_ok: Callable[[str], bool] = lambda name: False,
    ref32_perturbed: Sequence[dict[str, np.ndarray]] = (),
) -> dict[str, Any]:
    """Every reference gradient (``ref32`` float32 run, ``ref64`` float64 run, keyed by reference names) against
    ours (``ours32`` / ``ours64``, keyed by our names) through ``key_map`` (reference name -> our name):

    * mathematics: ours in float64 within SEMANTIC_TOL (relative L2) of the reference's float64 gradient, every
      parameter (only our float32 loss arithmetic separates them);
    * float32, predictors (cls_logits, bbox_pred, ctrness): within PREDICTOR_TOL of the reference's
      float32 gradient;
    * float32 total norm: within TOTAL_NORM_TOL of the reference's float64 norm, or GROUP_FACTOR x the
      reference's own float32 error of it when that is larger (on a DLA-34 batch the reference's float32 norm
      is 1.6e-3 off its float64 norm);
    * float32, towers (and scales) / FPN / backbone: in float32 a ReLU (or GIoU min/max) whose input is within
      rounding of its kink takes the other branch, so these gradients scatter by far more than 1e-4 in the
      reference itself (its float32 vs float64 spread, measured here per group): ours vs the float64 gradient
      within GROUP_FACTOR x that spread per group, and per parameter within DEEP_FACTOR x the larger of its own
      and its group's spread (+ DEEP_FLOOR): which elements flip is random, so one parameter's spread is noisy;
      the spread is the largest of the float32 run's and the ``ref32_perturbed`` runs' (float32 runs on a
      rounding-sized change of the input) errors against float64. On the tv_r50 batch one pre-ReLU value of the
      P7 classification tower is -5e-7 in float64, within float32 noise of its kink: our float32 run and the
      reference's run on ``noisy_input(images, 1)`` both take the other branch, and both P6/P7 gradients move by
      the same 1.6e-3 / 5.5e-3 (ours is within 2.8e-6 of that run's P6/P7 gradients; the report's
      ``max_nearest32`` per group is the largest distance of ours to the closest reference float32 run);
    * frozen parameters (reference: requires_grad False; ours: stop_gradient) map onto each other and take no
      gradient; a reference parameter that receives none must get none (or zeros, when ``unused_ok``) here.
    Returns the measurements (for the test's printout)."""
    failures, rows = [], []
    for ref_name, g32 in ref32.items():
        our_name = key_map[ref_name]
        if ours32.get(our_name) is None or ours64.get(our_name) is None:
            failures.append(f"{ref_name} -> {our_name}: the reference has a gradient, we have none")
            continue
        g64 = ref64[ref_name]
        row = {
            "name": our_name,
            "group": param_group(our_name),
            "sem": rel_l2(ours64[our_name], g64),
            "vs64": rel_l2(ours32[our_name], g64),
            "vs32": rel_l2(ours32[our_name], g32),
            "spread": _spread(g32, g64, ref_name, ref32_perturbed),
            "nearest32": min(rel_l2(ours32[our_name], r[ref_name]) for r in [ref32, *ref32_perturbed]),
        }
        rows.append(row)
        if row["sem"] > SEMANTIC_TOL:
            failures.append(f"{our_name}: float64 gradients differ by {row['sem']:.2e} (relative L2)")
        if row["group"] == "predictors":
            if row["vs32"] > PREDICTOR_TOL:
                failures.append(f"{our_name}: float32 gradient {row['vs32']:.2e} off the reference's")

    mapped = {r["name"] for r in rows}
    for name, g in ours32.items():
        if name not in mapped and g is not None and not (unused_ok(name) and not np.any(g)):
            failures.append(f"{name}: we have a gradient, the reference parameter has none")
    # Paddle keeps BatchNorm statistics as parameters without gradient; the reference's are buffers
    ref_params = {key_map[k] for k in list(ref32) + list(ref_frozen) if k in key_map}
    stats_suffix = ("._mean", "._variance")
    ref_frozen_ours = sorted(key_map[k] for k in ref_frozen if k in key_map and not key_map[k].endswith(stats_suffix))
    ours_frozen_params = sorted(n for n in ours_frozen if n in ref_params and not n.endswith(stats_suffix))
    # every reference-frozen tensor gets no gradient here (a frozen parameter, or a FrozenBatchNorm2D buffer), and
    # every parameter frozen here is frozen in the reference
    got_grad = [n for n in ref_frozen_ours if ours32.get(n) is not None]
    extra = sorted(set(ours_frozen_params) - set(ref_frozen_ours))
    if got_grad or extra:
        failures.append(f"frozen parameters differ: ours has gradients for {got_grad}, freezes {extra} in addition")
    others = [n for n in ours_frozen if n not in ref_params and not n.endswith(stats_suffix)]
    if others:
        failures.append(f"parameters frozen here that are not reference parameters: {others}")
    groups = {}
    by_ref = {key_map[k]: k for k in ref32}
    for group in ("predictors", "towers", "fpn", "backbone"):
        names = [r["name"] for r in rows if r["group"] == group]
        if not names:
            continue
        o32 = _group_norm(ours32, names)
        r32 = np.concatenate([ref32[by_ref[n]].ravel() for n in names])
        r64 = np.concatenate([ref64[by_ref[n]].ravel() for n in names])
        spread = max(
            [rel_l2(r32, r64)]
            + [rel_l2(np.concatenate([p[by_ref[n]].ravel() for n in names]), r64) for p in ref32_perturbed]
        )
        groups[group] = {
            "ours_vs64": rel_l2(o32, r64),
            "ref32_vs64": spread,
            "ours_vs32": rel_l2(o32, r32),
            "max_nearest32": max(r["nearest32"] for r in rows if r["group"] == group),
        }
        if group == "predictors":
            continue
        spread = groups[group]["ref32_vs64"]
        if groups[group]["ours_vs64"] > GROUP_FACTOR * spread:
            failures.append(
                f"{group}: float32 gradients {groups[group]} beyond {GROUP_FACTOR} x the reference's spread"
            )
        for r in rows:
            if r["group"] == group and r["vs64"] > DEEP_FACTOR * max(r["spread"], spread) + DEEP_FLOOR:
                failures.append(
                    f"{r['name']}: float32 gradient {r['vs64']:.2e} off float64; the reference's own float32 error "
                    f"{r['spread']:.2e}, in its group {spread:.2e}"
                )
    norm_ours = float(np.sqrt(sum(float((g**2).sum()) for g in ours32.values() if g is not None)))
    norm32 = float(np.sqrt(sum(float((g**2).sum()) for g in ref32.values())))
    norm64 = float(np.sqrt(sum(float((g**2).sum()) for g in ref64.values())))
    norm_limit = max(TOTAL_NORM_TOL, GROUP_FACTOR * rel(norm32, norm64))
    if rel(norm_ours, norm64) > norm_limit:
        failures.append(
            f"total gradient norm: ours {norm_ours:.7g}, reference float32 {norm32:.7g}, float64 {norm64:.7g}"
        )
    worst_ratio = max(
        (r for r in rows if r["group"] != "predictors"), key=lambda r: r["vs64"] / max(r["spread"], 1e-30), default=None
    )
    stats = {
        "parameters": len(rows),
        "frozen": len(ours_frozen),
        "max_float64_diff": max(r["sem"] for r in rows),
        "max_predictor_diff": max((r["vs32"] for r in rows if r["group"] == "predictors"), default=0.0),
        "groups": {g: {k: f"{v:.2e}" for k, v in d.items()} for g, d in groups.items()},
        "total_norm (ours, ref fp32, ref fp64)": (norm_ours, norm32, norm64),
        "total_norm_rel (ours vs ref fp32, ours vs ref fp64, ref fp32 vs fp64)": (
            rel(norm_ours, norm32),
            rel(norm_ours, norm64),
            rel(norm32, norm64),
        ),
        "worst_deep_vs_spread": worst_ratio and (worst_ratio["name"], worst_ratio["vs64"], worst_ratio["spread"]),
        # per parameter, ours against the closest of the reference's float32 runs (plain and perturbed)
        "max_nearest_ref32": max(((r["nearest32"], r["name"]) for r in rows), default=None),
    }
    assert not failures, f"{len(failures)} gradient mismatches ({stats}):\n" + "\n".join(failures[:20])
    return stats


def print_report(title: str, lines: dict[str, Any]) -> None:
    print(f"\n{title}")
    for k, v in lines.items():
        print(f"  {k}: {v}")


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
