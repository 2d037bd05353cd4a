"""OpenVINO predictor for an export directory: the fp32 ``model.onnx`` of :func:`fcos.export.export_onnx`
(converted in memory) or an OpenVINO IR (``model.xml`` + ``model.bin``, e.g. the int8 model of
tools/quantize.py, named by infer_cfg.yml's ``model_file``).

Same interface, preprocessing (infer_cfg.yml) and stage timing as :class:`DeployPredictor`; only the
engine differs. Needs the optional extra: ``pip install "fcos-paddle[openvino]"``.
"""

from __future__ import annotations

import functools
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from fcos.deploy.onnx_predictor import ONNX_NAME, OnnxPredictor, concat_per_image, feeds_of_image
from fcos.deploy.predictor import DeployError, cpu_supports_bf16, resolve_threads
from fcos.inference.results import Results
from fcos.utils.signal_stack import preserve_signal_stack

IR_NAME = "model.xml"
_PRECISION_HINT = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}  # int8 lives in the model's FakeQuantize ops


def openvino_available() -> bool:
    """True when the ``openvino`` package imports."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core`` (OpenVINO's advice: its CPU plugin instance is shared by
    every compiled model instead of one per ``Core``)."""
    import openvino as ov

    with preserve_signal_stack():  # see fcos.utils.signal_stack
        return ov.Core()


def read_openvino_model(path: str) -> Any:
    """An ``openvino.Model`` from an IR ``.xml`` or an ``.onnx`` file (converted in memory)."""
    import openvino as ov

    if path.endswith(".xml"):
        return openvino_core().read_model(path)
    return ov.convert_model(path)


def compile_openvino_model(model: Any, threads: int, precision: str = "fp32", streams: int = 1) -> Any:
    """``model`` compiled for the CPU plugin: ``threads`` inference threads, the precision hint (f32
    unless bf16 is asked: OpenVINO would otherwise pick bf16 by itself on CPUs with AMX/AVX512-BF16
    and change the numbers behind the user's back), and latency mode, or with ``streams`` > 1
    throughput mode with that many CPU streams (the threads split between them)."""
    hint = _PRECISION_HINT.get(precision)
    if hint is None:
        raise DeployError(f"OpenVINO runs precision fp32, bf16 or int8 on CPU, got {precision!r}")
    if precision == "bf16" and not cpu_supports_bf16():
        raise DeployError("precision 'bf16' needs a CPU with AVX512-BF16 or AMX; use fp32")
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": hint}
    if streams > 1:
        config.update({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": int(streams)})
    else:
        config["PERFORMANCE_HINT"] = "LATENCY"
    with preserve_signal_stack():  # the CPU plugin swaps the thread's signal stack (fcos.utils.signal_stack)
        return openvino_core().compile_model(model, "CPU", config)


@dataclass
class _Job:
    """A job of :meth:`OpenVinoPredictor.predict_stream` in flight: its requests and start times."""

    tag: Any
    images: Sequence[np.ndarray]
    paths: Optional[Sequence[str]]
    requests: list[int]
    t0: float
    t_fed: float


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
        streams: Optional[int] = None,
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
            streams=streams,
        )

    def _create_runtime(self, onednn_placement: bool = True) -> None:
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
        streams = self.cfg.runtime.streams
        self.compiled = compile_openvino_model(read_openvino_model(path), threads, self.cfg.runtime.precision, streams)
        self.requests = [self.compiled.create_infer_request() for _ in range(max(1, streams))]
        self.request = self.requests[0]
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        self.output_names = [p.get_any_name() for p in self.compiled.outputs]

    def _run_one(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(feeds)
        return [np.array(result[out]) for out in self.compiled.outputs]

    def predict_stream(
        self, jobs: Iterable[tuple[Sequence[np.ndarray], Optional[Sequence[str]], Any]], keep_images: bool = True
    ) -> Iterator[tuple[Any, list[Results]]]:
        """``(tag, results)`` per ``(images, paths, tag)`` job, in order, with up to ``runtime.streams``
        images in flight: while OpenVINO runs them on its CPU streams, this thread pre-processes the
        next job and post-processes (and the caller draws and writes) the finished ones. Timer stages
        per job: pre, infer (submit to outputs: latency, queueing included), post."""
        n = len(self.requests)
        if n <= 1:
            yield from super().predict_stream(jobs, keep_images)
            return
        pending: deque[_Job] = deque()
        busy: set[int] = set()
        try:
            yield from self._stream(jobs, keep_images, n, pending, busy)
        finally:  # also when the caller stops early: no request may stay running
            for r in busy:
                self.requests[r].wait()

    def _stream(
        self, jobs: Iterable, keep_images: bool, n: int, pending: deque[_Job], busy: set[int]
    ) -> Iterator[tuple[Any, list[Results]]]:
        turn = 0
        for images, paths, tag in jobs:
            if len(images) > n:  # more images than streams: finish what is in flight, run this one alone
                while pending:
                    yield self._finish(pending.popleft(), busy, keep_images)
                yield tag, self.predict(images, paths=paths, keep_images=keep_images)
                continue
            t0 = time.perf_counter()
            feeds = self._feeds(images) if len(images) else {}
            job = _Job(tag, images, paths, [], t0, time.perf_counter())
            for i in range(len(images)):
                while turn in busy:  # the stream's last image belongs to the oldest jobs
                    yield self._finish(pending.popleft(), busy, keep_images)
                self.requests[turn].start_async(feeds_of_image(feeds, self.input_names, i))
                job.requests.append(turn)
                busy.add(turn)
                turn = (turn + 1) % n
            pending.append(job)
            while pending and not pending[0].requests:  # jobs without images complete at once
                yield self._finish(pending.popleft(), busy, keep_images)
        while pending:
            yield self._finish(pending.popleft(), busy, keep_images)

    def _finish(self, job: _Job, busy: set[int], keep_images: bool) -> tuple[Any, list[Results]]:
        """Wait for ``job``'s requests, copy their outputs, free them, build its Results."""
        per_image = []
        for r in job.requests:
            request = self.requests[r]
            request.wait()
            per_image.append([np.array(request.get_tensor(out).data) for out in self.compiled.outputs])
            busy.discard(r)
        t2 = time.perf_counter()
        if not job.images:
            return job.tag, []
        results = self._results(concat_per_image(per_image), job.images, job.paths, keep_images)
        t3 = time.perf_counter()
        self.timer.record({"pre": job.t_fed - job.t0, "infer": t2 - job.t_fed, "post": t3 - t2}, len(job.images))
        return job.tag, results

    def engine(self) -> str:
        return f"OpenVINO CPU {self.cfg.runtime.precision}"
