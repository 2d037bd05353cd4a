"""ONNX Runtime predictor for an export directory converted with :func:`fcos.export.export_onnx`
(fp32 ``model.onnx``) or quantized by tools/quantize.py (int8 QDQ model named in infer_cfg.yml).

Same interface, preprocessing (infer_cfg.yml) and stage timing as :class:`DeployPredictor`; only
the engine differs. Needs the optional extra: ``pip install "fcos-paddle[onnx]"``.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from fcos.deploy.predictor import DeployError, DeployPredictor, check_single_stream, resolve_threads

ONNX_NAME = "model.onnx"


def feeds_of_image(feeds: dict[str, np.ndarray], names: list[str], i: int) -> dict[str, np.ndarray]:
    """Image ``i`` of a batch of graph inputs, as a batch of 1."""
    return {k: np.ascontiguousarray(feeds[k][i : i + 1]) for k in names}


def concat_per_image(per_image: list[list[np.ndarray]]) -> list[np.ndarray]:
    """The outputs of a batch from its images' batch-1 outputs: detections (2-D, [K, 6]) stacked,
    per-image counts (1-D) joined."""
    return [
        np.concatenate([outs[j] for outs in per_image], axis=0)
        if per_image[0][j].ndim == 2
        else np.concatenate([outs[j].reshape(-1) for outs in per_image])
        for j in range(len(per_image[0]))
    ]


class OnnxPredictor(DeployPredictor):
    """``model_dir/model.onnx`` (or ``onnx_file``) on ONNX Runtime's CPU provider with ``cpu_threads``
    intra-op threads (0: all cores); preprocessing and class names from ``model_dir/infer_cfg.yml``."""

    def __init__(
        self,
        model_dir: str,
        onnx_file: Optional[str] = None,
        cpu_threads: Optional[int] = None,
        target_size: Optional[int] = None,
        max_size: Optional[int] = None,
        draw_threshold: Optional[float] = None,
        warmup: int = 0,
        streams: Optional[int] = None,
    ) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise DeployError('ONNX Runtime is not installed: pip install "fcos-paddle[onnx]"') from e
        self.onnx_file = onnx_file
        # infer_cfg.yml and the overrides as for Paddle Inference; _create_runtime below opens the session
        super().__init__(
            model_dir,
            cpu_threads=cpu_threads,
            target_size=target_size,
            max_size=max_size,
            draw_threshold=draw_threshold,
            warmup=warmup,
            streams=streams,
        )

    def _model_path(self, exts: tuple[str, ...], default: str, hint: str) -> str:
        """The explicit file, else infer_cfg.yml's ``model_file`` when it has one of ``exts`` (an int8
        model from tools/quantize.py names it), else ``model_dir/default``; DeployError when absent."""
        named = self.cfg.model_file
        path = self.onnx_file or (named if named.endswith(exts) else os.path.join(self.cfg.model_dir, default))
        if not os.path.isfile(path):
            raise DeployError(f"{path}: not found ({hint})")
        return path

    def _create_runtime(self, onednn_placement: bool = True) -> None:
        import onnxruntime as ort

        self.onnx_file = self._model_path((".onnx",), ONNX_NAME, "create it with tools/export.py --onnx")
        check_single_stream(self.cfg.runtime, "ONNX Runtime")
        if self.cfg.runtime.precision != "int8":
            self.cfg.runtime.precision = "fp32"  # an fp32 graph runs in fp32 here, whatever the export asked
        opts = ort.SessionOptions()
        threads = resolve_threads(self.cfg.runtime.cpu_threads)
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only (paddle2onnx graphs carry unused initializers)
        self.session = ort.InferenceSession(self.onnx_file, sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run_arrays(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise DeployError(f"{self.onnx_file}: model expects inputs {missing}, got {sorted(feeds)}")
        # paddle2onnx (2.1) converts multiclass_nms3 for batch 1 only (a batch of 2 fails in a Concat),
        # so a batch runs image by image on the same padded tensors; outputs are concatenated.
        n = int(feeds[self.input_names[0]].shape[0])
        return concat_per_image([self._run_one(feeds_of_image(feeds, self.input_names, i)) for i in range(n)])

    def _run_one(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One image (batch 1) through the session; outputs in graph order."""
        return self.session.run(None, feeds)

    def engine(self) -> str:
        return f"ONNX Runtime CPU {self.cfg.runtime.precision}"
