"""The predictor for an export directory on the backend its infer_cfg.yml names (``runtime.backend``)
or the caller asks for: Paddle Inference, ONNX Runtime or OpenVINO. All three share preprocessing,
detection splitting, :class:`Results` and stage timing (:class:`DeployPredictor`)."""

from __future__ import annotations

from typing import Optional

from fcos.deploy.onnx_predictor import OnnxPredictor
from fcos.deploy.openvino_predictor import OpenVinoPredictor
from fcos.deploy.predictor import BACKENDS, DeployError, DeployPredictor, load_infer_cfg


def create_predictor(
    model_dir: str,
    backend: Optional[str] = None,
    device: Optional[str] = None,
    use_mkldnn: Optional[bool] = None,
    cpu_threads: Optional[int] = None,
    precision: Optional[str] = None,
    use_tensorrt: Optional[bool] = None,
    target_size: Optional[int] = None,
    max_size: Optional[int] = None,
    draw_threshold: Optional[float] = None,
    warmup: int = 0,
) -> DeployPredictor:
    """A predictor for ``model_dir`` on ``backend`` (default: infer_cfg.yml ``runtime.backend``, else
    ``paddle``). Options a backend cannot honour raise :class:`DeployError` (GPU and oneDNN switches are
    Paddle Inference options; an int8 model runs only on the backend it was quantized for)."""
    cfg = load_infer_cfg(model_dir)
    backend = backend or cfg.runtime.backend
    if backend not in BACKENDS:
        raise DeployError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if cfg.runtime.precision == "int8" and backend != cfg.runtime.backend:
        raise DeployError(
            f"{model_dir} is an int8 model for {cfg.runtime.backend}; it cannot run on {backend} "
            f"(quantize again with tools/quantize.py --backend {backend})"
        )
    if precision == "int8" and cfg.runtime.precision != "int8":
        raise DeployError(f"{model_dir} is a {cfg.runtime.precision} model: create an int8 one with tools/quantize.py")
    if backend == "paddle":
        return DeployPredictor(
            model_dir,
            device=device,
            use_mkldnn=use_mkldnn,
            cpu_threads=cpu_threads,
            precision=precision,
            use_tensorrt=use_tensorrt,
            target_size=target_size,
            max_size=max_size,
            draw_threshold=draw_threshold,
            warmup=warmup,
        )
    if device == "gpu" or use_tensorrt:
        raise DeployError(f"backend {backend} runs on CPU here; GPU and TensorRT are Paddle Inference options")
    if backend == "onnxruntime":
        if precision not in (None, "fp32", cfg.runtime.precision):
            raise DeployError(f"ONNX Runtime runs the model's own precision ({cfg.runtime.precision}), not {precision}")
        return OnnxPredictor(
            model_dir,
            cpu_threads=cpu_threads,
            target_size=target_size,
            max_size=max_size,
            draw_threshold=draw_threshold,
            warmup=warmup,
        )
    return OpenVinoPredictor(
        model_dir,
        cpu_threads=cpu_threads,
        precision=precision,
        target_size=target_size,
        max_size=max_size,
        draw_threshold=draw_threshold,
        warmup=warmup,
    )
