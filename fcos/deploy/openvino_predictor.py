"""OpenVINO predictor for an export directory: the fp32 ``model.onnx`` of :func:`fcos.export.export_onnx`
(converted in memory) or an OpenVINO IR (``model.xml`` + ``model.bin``, e.g. the int8 model of
tools/quantize.py, named by infer_cfg.yml's ``model_file``).

Same interface, preprocessing (infer_cfg.yml) and stage timing as :class:`DeployPredictor`; only the
engine differs. Needs the optional extra: ``pip install "fcos-paddle[openvino]"``.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from fcos.deploy.onnx_predictor import ONNX_NAME, OnnxPredictor
from fcos.deploy.predictor import DeployError, cpu_supports_bf16, resolve_threads

IR_NAME = "model.xml"
_PRECISION_HINT = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}  # int8 lives in the model's FakeQuantize ops


def openvino_available() -> bool:
    """True when the ``openvino`` package imports."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def read_openvino_model(path: str) -> Any:
    """An ``openvino.Model`` from an IR ``.xml`` or an ``.onnx`` file (converted in memory)."""
    import openvino as ov

    if path.endswith(".xml"):
        return ov.Core().read_model(path)
    return ov.convert_model(path)


def compile_openvino_model(model: Any, threads: int, precision: str = "fp32") -> Any:
    """``model`` compiled for the CPU plugin: ``threads`` inference threads, latency mode, and the
    precision hint (f32 unless bf16 is asked: OpenVINO would otherwise pick bf16 by itself on CPUs
    with AMX/AVX512-BF16 and change the numbers behind the user's back)."""
    import openvino as ov

    hint = _PRECISION_HINT.get(precision)
    if hint is None:
        raise DeployError(f"OpenVINO runs precision fp32, bf16 or int8 on CPU, got {precision!r}")
    if precision == "bf16" and not cpu_supports_bf16():
        raise DeployError("precision 'bf16' needs a CPU with AVX512-BF16 or AMX; use fp32")
    return ov.Core().compile_model(
        model,
        "CPU",
        {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint},
    )


class OpenVinoPredictor(OnnxPredictor):
    """The export's OpenVINO IR (``model_file`` in infer_cfg.yml when it is ``.xml``, else
    ``model.xml``) or its ``model.onnx`` on OpenVINO's CPU plugin with ``cpu_threads`` threads
    (0: all cores). ``model_file`` overrides both. One image per network call, like ONNX Runtime
    (the exported NMS takes batch 1); a batch is run image by image on the same padded tensors."""

    def __init__(
        self,
        model_dir: str,
        model_file: Optional[str] = None,
        cpu_threads: Optional[int] = None,
        precision: Optional[str] = None,
        target_size: Optional[int] = None,
        max_size: Optional[int] = None,
        draw_threshold: Optional[float] = None,
        warmup: int = 0,
    ) -> None:
        if not openvino_available():
            raise DeployError('OpenVINO is not installed: pip install "fcos-paddle[openvino]"')
        self._precision_override = precision
        self.onnx_file = model_file
        super(OnnxPredictor, self).__init__(
            model_dir,
            cpu_threads=cpu_threads,
            precision=precision,
            target_size=target_size,
            max_size=max_size,
            draw_threshold=draw_threshold,
            warmup=warmup,
        )

    def _create_runtime(self, onednn_placement: bool = True) -> None:
        import os

        path = self.onnx_file
        if path is None:
            named = self.cfg.model_file
            if named.endswith((".xml", ".onnx")):
                path = named
            else:
                ir = os.path.join(self.cfg.model_dir, IR_NAME)
                path = ir if os.path.isfile(ir) else os.path.join(self.cfg.model_dir, ONNX_NAME)
        if not os.path.isfile(path):
            raise DeployError(f"{path}: not found (create model.onnx with tools/export.py --onnx)")
        self.onnx_file = path
        threads = resolve_threads(self.cfg.runtime.cpu_threads)
        self.compiled = compile_openvino_model(read_openvino_model(path), threads, self.cfg.runtime.precision)
        self.request = self.compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        self.output_names = [p.get_any_name() for p in self.compiled.outputs]

    def _run_one(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(feeds)
        return [np.array(result[out]) for out in self.compiled.outputs]

    def engine(self) -> str:
        return f"OpenVINO CPU {self.cfg.runtime.precision}"
