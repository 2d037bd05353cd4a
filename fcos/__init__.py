"""fcos-paddle: FCOS and FCOS_RT object detectors on PaddlePaddle.

import fcos
cfg = fcos.load_config("configs/rt_dla34.yml")
model = fcos.build_model(cfg)
det = fcos.Detector(cfg, weights="weights/rt_dla34.safetensors")
results = det.predict(["image.jpg"])
"""

from __future__ import annotations

import warnings
from typing import Any

# Paddle prints these on every import / training step; they are not actionable for users of fcos.
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
warnings.filterwarnings("ignore", message="When training, we now always track global mean", category=UserWarning)

# Before anything loads Paddle (and with it libgomp, which reads its settings once): see fcos.utils.runtime.
from fcos.utils.runtime import preset_openmp_env  # noqa: E402

preset_openmp_env()

from fcos.config import Config, ConfigError, load_config  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "Detector", "build_model", "load_config", "__version__"]


def build_model(cfg: Config) -> Any:
    """Build the FCOS ``paddle.nn.Layer`` described by ``cfg.model`` (see :mod:`fcos.modeling`)."""
    from fcos.modeling import build_model as _build

    return _build(cfg)


def __getattr__(name: str) -> Any:
    if name == "Detector":
        from fcos.inference.detector import Detector

        return Detector
    raise AttributeError(f"module 'fcos' has no attribute {name!r}")
