"""The predictor for an export directory on the backend its infer_cfg.yml names (``runtime.backend``)
or the caller asks for: Paddle Inference, ONNX Runtime, OpenVINO, or ``auto`` (the fastest of them on this
machine). All three share preprocessing, detection splitting, :class:`Results` and stage timing
(:class:`DeployPredictor`)."""

from __future__ import annotations

import logging
from typing import Any, Optional

from fcos.deploy.auto_backend import auto_candidates, choice_key, choose_backend, timing_image
from fcos.deploy.onnx_predictor import OnnxPredictor
from fcos.deploy.openvino_predictor import OpenVinoPredictor
from fcos.deploy.predictor import AUTO, BACKEND_CHOICES, DeployError, DeployPredictor, InferCfg, load_infer_cfg

logger = logging.getLogger(__name__)


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
    remeasure: bool = False,
    streams: Optional[int] = None,
) -> DeployPredictor:
    """A predictor for ``model_dir`` on ``backend`` (default: infer_cfg.yml ``runtime.backend``, else
    ``paddle``). Options a backend cannot honour raise :class:`DeployError` (GPU and oneDNN switches are
    Paddle Inference options; an int8 model runs only on the backend it was quantized for).

    ``backend="auto"`` builds the fastest engine that can run the export on this machine
    (:mod:`fcos.deploy.auto_backend`; the choice is remembered, ``remeasure`` times them again) and
    adds the timings to ``predictor.notes``. ``streams`` > 1 (OpenVINO only) keeps that many images in
    flight in :meth:`~fcos.deploy.predictor.DeployPredictor.predict_stream`."""
    cfg = load_infer_cfg(model_dir)
    backend = backend or cfg.runtime.backend
    if backend not in BACKEND_CHOICES:
        raise DeployError(f"backend must be one of {', '.join(BACKEND_CHOICES)}, got {backend!r}")
    if precision == "int8" and cfg.runtime.precision != "int8":
        raise DeployError(f"{model_dir} is a {cfg.runtime.precision} model: create an int8 one with tools/quantize.py")
    options = dict(
        device=device,
        use_mkldnn=use_mkldnn,
        cpu_threads=cpu_threads,
        precision=precision,
        use_tensorrt=use_tensorrt,
        target_size=target_size,
        max_size=max_size,
        draw_threshold=draw_threshold,
        warmup=warmup,
        streams=streams,
    )
    if backend != AUTO:
        return _create_on(backend, model_dir, cfg, **options)
    # auto: time the engines that can run this export on an image of its input size (see auto_backend)
    if target_size is not None:
        cfg.input.test_short = int(target_size)
    if max_size is not None:
        cfg.input.test_max = int(max_size)
    want = precision or cfg.runtime.precision
    where = "gpu" if (device or cfg.runtime.device) == "gpu" or use_tensorrt else "cpu"
    candidates, skipped = auto_candidates(cfg, where, want)
    threads = cfg.runtime.cpu_threads if cpu_threads is None else cpu_threads
    predictor, choice = choose_backend(
        candidates,
        lambda name: _create_on(name, model_dir, cfg, **options),
        timing_image(cfg),
        choice_key(cfg, want, threads),
        skipped=skipped,
        remeasure=remeasure,
    )
    predictor.notes.append(choice.summary())
    logger.info(choice.summary())
    return predictor


def _create_on(backend: str, model_dir: str, cfg: InferCfg, **options: Any) -> DeployPredictor:
    """The predictor for ``model_dir`` on one named backend (``cfg`` is its infer_cfg.yml; ``options``
    are :func:`create_predictor`'s overrides, None = infer_cfg.yml's value)."""
    if cfg.runtime.precision == "int8" and backend != cfg.runtime.backend:
        raise DeployError(
            f"{model_dir} is an int8 model for {cfg.runtime.backend}; it cannot run on {backend} "
            f"(quantize again with tools/quantize.py --backend {backend})"
        )
    if backend == "paddle":
        return DeployPredictor(model_dir, **options)
    if options.pop("device") == "gpu" or options.pop("use_tensorrt"):
        raise DeployError(f"backend {backend} runs on CPU here; GPU and TensorRT are Paddle Inference options")
    options.pop("use_mkldnn")  # a Paddle Inference switch; the other engines have their own CPU kernels
    if backend == "onnxruntime":
        precision = options.pop("precision")
        if precision not in (None, "fp32", cfg.runtime.precision):
            raise DeployError(f"ONNX Runtime runs the model's own precision ({cfg.runtime.precision}), not {precision}")
        return OnnxPredictor(model_dir, **options)
    return OpenVinoPredictor(model_dir, **options)
