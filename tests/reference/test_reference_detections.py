"""Same detections as AdelaiDet (FCOS_RT DLA-34, R-50) and PaddleDetection (FCOS R50 ms 2x) on images already at
the test size (``make test-reference``).

The reference model is built by its own code with seeded random weights that give many detections of varied
sizes; its state dict goes through our converter into ``fcos.build_model`` of the recipe. Both models see the
same network input: AdelaiDet's ``preprocess_image`` output (BGR minus the mean, padded to 32), or
PaddleDetection's test-reader steps after the resize (RGB /255, ImageNet mean/std, padded to 128), built here
by ``normalize_image`` + ``pad_batch``. Agreement: ``parity.assert_same_detections`` (every detection matched
both ways: same class, IoU >= 0.99 or all coordinates within 0.05 px, |score difference| <= 2e-3, except within
5e-3 of the lowest kept score). Raw images of any size through each reference's own pipeline are not tested here.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from parity import (  # noqa: E402
    assert_same_detections,
    our_detections,
    our_model,
    photo_bgr,
    recipe_config,
    synthetic_bgr,
    to_test_size,
)

from fcos.checkpoint.convert_adelaidet import convert_adelaidet  # noqa: E402
from fcos.checkpoint.convert_paddledet import convert_paddledet  # noqa: E402
from fcos.data.preprocess import normalize_image, pad_batch  # noqa: E402

IMAGES = {"photo": photo_bgr, "synthetic": lambda: synthetic_bgr(480, 640)}


@pytest.fixture(scope="module")
def adelaidet_pair(adelaidet_model):
    pairs = {}

    def get(recipe: str):
        if recipe not in pairs:
            ref = adelaidet_model(recipe)
            state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
            pairs[recipe] = ref, our_model(recipe, convert_adelaidet(state, recipe_config(recipe)).state)
        return pairs[recipe]

    return get


@pytest.mark.parametrize("image", sorted(IMAGES))
@pytest.mark.parametrize("recipe", ["rt_dla34", "rt_r50"])
def test_adelaidet_detections_match(adelaidet_pair, recipe: str, image: str) -> None:
    from adelaidet_models import adelaidet_detections, adelaidet_inputs

    ref_model, model = adelaidet_pair(recipe)
    cfg = recipe_config(recipe)
    img = to_test_size(IMAGES[image](), cfg.input.test_short, cfg.input.test_max)
    ref = adelaidet_detections(ref_model, img)
    images, size = adelaidet_inputs(ref_model, img)
    assert size == img.shape[:2]
    ours = our_detections(model, images, size)
    stats = assert_same_detections(ref, ours, f"AdelaiDet {recipe} on {image} {img.shape[:2]}")
    print(f"AdelaiDet {recipe} parity on {image} {img.shape[:2]}: {stats}")


@pytest.fixture(scope="module")
def paddledet_model(ppdet_worker, ppdet_fcos):
    state = ppdet_worker.call("ppdet_tasks:state_dict", name=ppdet_fcos["name"])
    return our_model("r50_ms_2x", convert_paddledet(state, recipe_config("r50_ms_2x")).state)


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_paddledet_detections_match(ppdet_worker, ppdet_fcos, paddledet_model, image: str) -> None:
    cfg = recipe_config("r50_ms_2x")
    img = to_test_size(IMAGES[image](), cfg.input.test_short, cfg.input.test_max)
    h, w = img.shape[:2]
    images = pad_batch([normalize_image(img, cfg.input)], cfg.input.size_divisor)
    out = ppdet_worker.call(
        "ppdet_tasks:forward",
        name=ppdet_fcos["name"],
        image=images,
        im_shape=np.array([[h, w]], np.float32),
        scale_factor=np.array([[1.0, 1.0]], np.float32),
    )
    rows = out["bbox"]
    assert out["bbox_num"].tolist() == [len(rows)]
    ref = {"boxes": rows[:, 2:6], "scores": rows[:, 1], "labels": rows[:, 0].astype(np.int64)}
    ours = our_detections(paddledet_model, images, (h, w))
    stats = assert_same_detections(ref, ours, f"PaddleDetection on {image} {img.shape[:2]}")
    print(f"PaddleDetection r50_ms_2x parity on {image} {img.shape[:2]}: {stats}")
