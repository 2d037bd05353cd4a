"""Raw image files end to end: each reference's own test-time pipeline vs ours (``make test-reference``).

The files are of odd sizes that every recipe must resize (up and down): a real JPEG photo, a JPEG scene, a
greyscale PNG, an RGBA PNG and a tiny PNG whose short side hits torchvision's floored size (97 px -> 799, not 800).
The reference side is the reference's real entry point:

* AdelaiDet FCOS_RT DLA-34 / R-50: detectron2 ``read_image(path, "BGR")`` -> ``DefaultPredictor`` (ResizeShortestEdge
  with Pillow bilinear on uint8, the model, ``detector_postprocess`` to the original size: clip, drop empty boxes);
* torchvision ``fcos_resnet50_fpn``: ``PIL.Image.open(path).convert("RGB")`` -> tensor in [0, 1] ->
  ``model([tensor])`` (its GeneralizedRCNNTransform: normalise, bilinear resize of the float image at a floored
  size; boxes clipped to the resized image and scaled back, zero-area boxes kept);
* PaddleDetection FCOS R50 ms 2x: its TestReader (Decode with OpenCV -> Resize -> NormalizeImage -> Permute ->
  PadBatch) -> the model's post-processing (boxes divided by scale_factor, neither clipped nor dropped).

Ours runs from the converted reference weights (a file written by our converter) twice: ``tools/infer.py
--save-json`` (dygraph) and ``tools/export.py`` -> the exported Paddle Inference predictor (what
``tools/deploy_infer.py`` runs). Agreement: ``parity.assert_same_detections``.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import cv2  # noqa: E402
from parity import ROOT, assert_same_detections, convert_checkpoint, photo_bgr, synthetic_bgr  # noqa: E402
from PIL import Image  # noqa: E402

from fcos.checkpoint.convert_common import COCO_CATEGORY_IDS  # noqa: E402
from fcos.data.image_io import read_image  # noqa: E402
from fcos.deploy.predictor import DeployPredictor  # noqa: E402

RECIPES = ["rt_dla34", "rt_r50", "tv_r50", "r50_ms_2x"]
MIN_DETECTIONS = 30  # per file (the tiny image has fewer large-enough regions)


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory) -> str:
    """The raw files: name -> written with the format's own encoder (Pillow)."""
    d = tmp_path_factory.mktemp("raw")
    shutil.copy(os.path.join(_matplotlib_data(), "grace_hopper.jpg"), d / "photo.jpg")  # 600 x 512 real JPEG
    Image.fromarray(synthetic_bgr(301, 451, seed=11)[:, :, ::-1]).save(d / "scene_301x451.jpg", quality=90)
    grey = cv2.cvtColor(synthetic_bgr(333, 517, seed=12), cv2.COLOR_BGR2GRAY)
    Image.fromarray(grey, mode="L").save(d / "grey_333x517.png")
    rgb = synthetic_bgr(250, 397, seed=13)[:, :, ::-1]
    alpha = np.tile(np.linspace(40, 255, 397, dtype=np.uint8), (250, 1))[:, :, None]
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), mode="RGBA").save(d / "rgba_250x397.png")
    Image.fromarray(cv2.resize(photo_bgr(), (120, 97))[:, :, ::-1]).save(d / "tiny_97x120.png")
    assert Image.open(d / "grey_333x517.png").mode == "L" and Image.open(d / "rgba_250x397.png").mode == "RGBA"
    return str(d)


def _matplotlib_data() -> str:
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "sample_data")


def _files(raw_dir: str) -> list[str]:
    return sorted(os.path.join(raw_dir, n) for n in os.listdir(raw_dir))


def _coco_ids(labels: np.ndarray) -> np.ndarray:
    return np.asarray(COCO_CATEGORY_IDS)[np.asarray(labels, dtype=np.int64)]


# --------------------------------------------------------------------------------------------
# Reference pipelines, each returning {file: {"boxes", "scores", "labels" (COCO ids)}} in original pixels
# --------------------------------------------------------------------------------------------


def _adelaidet_reference(recipe: str, model, files: list[str]) -> dict[str, dict]:
    from adelaidet_models import adelaidet_cfg
    from detectron2.data.detection_utils import read_image as d2_read_image
    from detectron2.engine import DefaultPredictor

    cfg = adelaidet_cfg(recipe).clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""  # nothing to download: the seeded model is put in below
    predictor = DefaultPredictor(cfg)
    predictor.model = model
    out = {}
    for path in files:
        with torch.no_grad():
            inst = predictor(d2_read_image(path, format="BGR"))["instances"]
        out[path] = {
            "boxes": inst.pred_boxes.tensor.numpy(),
            "scores": inst.scores.numpy(),
            "labels": _coco_ids(inst.pred_classes.numpy()),
        }
    return out


def _torchvision_reference(model, files: list[str]) -> dict[str, dict]:
    from torchvision.transforms.functional import pil_to_tensor

    out = {}
    for path in files:
        image = pil_to_tensor(Image.open(path).convert("RGB")).float() / 255.0
        with torch.no_grad():
            det = model([image])[0]
        out[path] = {k: det[k].numpy() for k in ("boxes", "scores", "labels")}
    return out


def _paddledet_reference(worker, name: str, files: list[str]) -> dict[str, dict]:
    res = worker.call("ppdet_raw_tasks:detect_files", name=name, paths=files)
    out = {}
    for i, path in enumerate(files):
        rows = res[f"bbox_{i}"]
        out[path] = {"boxes": rows[:, 2:6], "scores": rows[:, 1], "labels": _coco_ids(rows[:, 0])}
    return out


# --------------------------------------------------------------------------------------------
# Our pipelines
# --------------------------------------------------------------------------------------------


def _ours_infer_tool(load_tool, recipe: str, weights: str, raw_dir: str, tmp) -> dict[str, dict]:
    out_json = os.path.join(tmp, f"{recipe}_infer.json")
    rc = load_tool("infer").main(
        ["-c", os.path.join(ROOT, "configs", f"{recipe}.yml"), "-w", weights, "--source", raw_dir]
        + ["--save-json", out_json, "--no-save", "--quiet"]
    )
    assert rc == 0, f"tools/infer.py exited with {rc}"
    records = json.load(open(out_json))
    out = {}
    for path in _files(raw_dir):
        recs = [r for r in records if r["file_name"] == os.path.basename(path)]
        boxes = np.array([r["bbox"] for r in recs], np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        out[path] = {
            "boxes": boxes,
            "scores": np.array([r["score"] for r in recs], np.float64),
            "labels": np.array([r["category_id"] for r in recs], np.int64),
        }
    return out


def _ours_predictor(load_tool, recipe: str, weights: str, files: list[str], tmp) -> dict[str, dict]:
    export_dir = os.path.join(tmp, f"{recipe}_export")
    rc = load_tool("export").main(
        ["-c", os.path.join(ROOT, "configs", f"{recipe}.yml"), "-w", weights, "--output", export_dir, "--no-check"]
    )
    assert rc == 0, f"tools/export.py exited with {rc}"
    predictor = DeployPredictor(export_dir)
    out = {}
    for path in files:
        res = predictor.predict([read_image(path)], keep_images=False)[0]
        cat = np.asarray(predictor.category_ids)
        out[path] = {"boxes": res.boxes, "scores": res.scores, "labels": cat[np.asarray(res.labels, np.int64)]}
    return out


# --------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_and_weights(request, raw_dir, tmp_path_factory):
    """recipe -> (reference detections per file, our converted weights file)."""
    cache: dict[str, tuple[dict, str]] = {}

    def get(recipe: str) -> tuple[dict, str]:
        if recipe in cache:
            return cache[recipe]
        tmp = tmp_path_factory.mktemp(f"raw_{recipe}")
        files = _files(raw_dir)
        if recipe in ("rt_dla34", "rt_r50"):
            from adelaidet_models import build_adelaidet_model

            model = build_adelaidet_model(recipe, seed=0)
            ckpt = str(tmp / "reference.pth")
            torch.save(model.state_dict(), ckpt)
            ref = _adelaidet_reference(recipe, model, files)
            source = "adelaidet"
        elif recipe == "tv_r50":
            from test_parity import _torchvision_fcos

            model = _torchvision_fcos(seed=0)
            ckpt = str(tmp / "reference.pth")
            torch.save(model.state_dict(), ckpt)
            ref = _torchvision_reference(model, files)
            source = "torchvision"
        else:
            worker = request.getfixturevalue("ppdet_worker")
            fcos_info = request.getfixturevalue("ppdet_fcos")
            ckpt = fcos_info["pdparams"]
            ref = _paddledet_reference(worker, fcos_info["name"], files)
            source = "paddledet"
        weights = str(tmp / "converted.safetensors")
        conversion = convert_checkpoint(source, ckpt, weights, recipe)  # raises on any unaccounted key
        assert conversion.category_ids in (None, list(COCO_CATEGORY_IDS)), conversion.category_ids
        cache[recipe] = ref, weights
        return cache[recipe]

    return get


@pytest.mark.parametrize("engine", ["infer_tool", "predictor"])
@pytest.mark.parametrize("recipe", RECIPES)
def test_raw_files_match_the_reference_pipeline(reference_and_weights, load_tool, raw_dir, tmp_path, recipe, engine):
    ref, weights = reference_and_weights(recipe)
    files = _files(raw_dir)
    if engine == "infer_tool":
        ours = _ours_infer_tool(load_tool, recipe, weights, raw_dir, str(tmp_path))
    else:
        ours = _ours_predictor(load_tool, recipe, weights, files, str(tmp_path))
    for path in files:
        name = f"{recipe} {engine} {os.path.basename(path)}"
        stats = assert_same_detections(ref[path], ours[path], name, min_count=MIN_DETECTIONS)
        print(f"{name}: {stats}")
