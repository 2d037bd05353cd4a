"""The synthetic source state dicts of ``tests/test_convert_torchvision.py`` (used in CI, without torch) have
exactly the key names and shapes of the real torchvision / timm modules."""

from __future__ import annotations

import os
import sys

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from test_convert_torchvision import timm_dla34_shapes, tv_fcos_shapes, tv_resnet50_shapes  # noqa: E402


def _shapes(module: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_torchvision_resnet50_keys() -> None:
    assert _shapes(torchvision.models.resnet50(weights=None)) == tv_resnet50_shapes()


def test_torchvision_fcos_keys() -> None:
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    model = torchvision.models.detection.FCOS(backbone, num_classes=91)
    assert _shapes(model) == tv_fcos_shapes()


def test_timm_dla34_keys() -> None:
    assert _shapes(timm.create_model("dla34", pretrained=False)) == timm_dla34_shapes()
