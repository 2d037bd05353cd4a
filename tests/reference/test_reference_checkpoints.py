"""Our converters on checkpoints written by the reference code itself (``make test-reference``).

Each reference model is built by its own code (AdelaiDet FCOS_RT DLA-34 / R-50 on detectron2, torchvision's
``fcos_resnet50_fpn``, PaddleDetection's FCOS R50 multiscale 2x in .venv-ppdet) and saved the way its project
saves it (``torch.save`` of the state dict or detectron2's ``Checkpointer`` file; ``paddle.save``). The file goes
through ``tools/convert_weights.py``'s conversion: every source tensor must be mapped or ignored for a stated
reason, every tensor of our model filled with the right shape, mapped values unchanged, and the written weights
must load strictly into ``fcos.build_model`` of the recipe.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from parity import convert_checkpoint, our_model  # noqa: E402

from fcos.checkpoint.weights import read_weights  # noqa: E402

# Source tensors a converter may leave out, by its stated reason (anything else ignored is a failure).
ALLOWED_IGNORED = ("num_batches_tracked", "pixel", "background", "never trained", "unused")


def _check_conversion(conv, source: dict[str, np.ndarray], name: str, transformed: set[str] = frozenset()) -> dict:
    """Accounting and values of a ``Conversion`` of ``source`` (the tensors the reference wrote)."""
    mapped = {s for s, _ in conv.mapped}
    ignored = dict(conv.ignored)
    assert mapped | set(ignored) == set(source), f"{name}: unaccounted {sorted(set(source) - mapped - set(ignored))}"
    assert not mapped & set(ignored), f"{name}: mapped and ignored: {sorted(mapped & set(ignored))[:5]}"
    bad = {k: r for k, r in ignored.items() if not any(a in r.lower() or a in k for a in ALLOWED_IGNORED)}
    assert not bad, f"{name}: source tensors dropped without an accepted reason: {bad}"
    changed = []
    for src, dst in conv.mapped:
        a, b = np.asarray(source[src], np.float32), conv.state[dst]
        if src in transformed or a.shape != b.shape or not np.array_equal(a, b):
            changed.append(src)
    assert set(changed) <= set(transformed), f"{name}: values changed by the conversion: {changed[:8]}"
    return {"source_tensors": len(source), "mapped": len(mapped), "ignored": len(ignored), "derived": len(conv.derived)}


def _torch_state(path: str) -> dict[str, np.ndarray]:
    obj = torch.load(path, map_location="cpu", weights_only=False)
    obj = obj.get("model", obj)
    return {k: v.numpy() for k, v in obj.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("fmt", ["state_dict", "detectron2_checkpointer"])
@pytest.mark.parametrize("recipe", ["rt_dla34", "rt_r50"])
def test_adelaidet_checkpoint_converts(adelaidet_model, tmp_path, recipe: str, fmt: str) -> None:
    model = adelaidet_model(recipe)
    if fmt == "state_dict":
        path = str(tmp_path / f"{recipe}.pth")
        torch.save(model.state_dict(), path)
    else:
        from detectron2.checkpoint import DetectionCheckpointer

        DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
        path = str(tmp_path / "model_final.pth")
    out = str(tmp_path / f"{recipe}.safetensors")
    conv = convert_checkpoint("adelaidet", path, out, recipe)
    print(conv.summary())
    stats = _check_conversion(conv, _torch_state(path), f"AdelaiDet {recipe} ({fmt})")
    assert stats["derived"] == 0
    assert conv.recipe == recipe
    state, meta = read_weights(out)
    assert sorted(state) == sorted(conv.state)
    our_model(recipe, out)  # strict: nothing missing, unexpected or of another shape
    print(f"AdelaiDet {recipe} ({fmt}): {stats}")


def test_convert_weights_tool_on_adelaidet_checkpoint(adelaidet_model, tmp_path, load_tool) -> None:
    """The command line converts the reference's own checkpoint file and says what it did."""
    path, out = str(tmp_path / "rt_dla34.pth"), str(tmp_path / "rt_dla34.npz")
    torch.save(adelaidet_model("rt_dla34").state_dict(), path)
    tool = load_tool("convert_weights")
    assert tool.main(["--src", "adelaidet", path, out]) == 0
    state, meta = read_weights(out)
    assert meta["recipe"] == "rt_dla34"
    our_model("rt_dla34", out)  # strict load


def test_torchvision_checkpoint_converts(tmp_path) -> None:
    from torchvision.models.detection import fcos_resnet50_fpn

    torch.manual_seed(0)
    # The released checkpoint is trained from an ImageNet backbone, i.e. FrozenBN; both ways give the same keys
    # except num_batches_tracked, which the untrained (BatchNorm2d) build adds and the converter must ignore.
    model = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    path, out = str(tmp_path / "fcos_resnet50_fpn.pth"), str(tmp_path / "tv_r50.safetensors")
    torch.save(model.state_dict(), path)
    conv = convert_checkpoint("torchvision", path, out, "tv_r50")
    print(conv.summary())
    source = _torch_state(path)
    # 91 COCO-id class rows -> our 80 classes; BN folded into frozen affine
    transformed = {k for k in source if "cls_logits" in k or ".bn" in k or "downsample.1" in k}
    stats = _check_conversion(conv, source, "torchvision fcos_resnet50_fpn", transformed)
    our_model("tv_r50", out)
    print(f"torchvision fcos_resnet50_fpn: {stats}")


def test_paddledet_checkpoint_converts(ppdet_worker, ppdet_fcos, tmp_path) -> None:
    # 324 tensors, 32,350,490 parameters (reference_envs.md) for FCOS R50-FPN with GN head
    assert len(ppdet_fcos["keys"]) == 324 and ppdet_fcos["num_params"] == 32_350_490, ppdet_fcos["num_params"]
    out = str(tmp_path / "r50_ms_2x.safetensors")
    conv = convert_checkpoint("paddledet", ppdet_fcos["pdparams"], out, "r50_ms_2x")
    print(conv.summary())
    source = {k: v for k, v in ppdet_worker.call("ppdet_tasks:state_dict", name=ppdet_fcos["name"]).items()}
    assert set(source) == set(ppdet_fcos["keys"])
    frozen = {k for k in source if k.startswith("backbone.") and ".norm." in k}  # BN -> frozen affine
    stats = _check_conversion(conv, source, "PaddleDetection fcos_r50_fpn_multiscale_2x", frozen)
    our_model("r50_ms_2x", out)
    print(f"PaddleDetection FCOS R50 ms 2x: {stats}")
