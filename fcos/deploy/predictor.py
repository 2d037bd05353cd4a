"""Paddle Inference predictor for exported FCOS models, driven by the editable ``infer_cfg.yml``.

    pred = DeployPredictor("output/export/rt_dla34")            # oneDNN, all cores, fp32
    results = pred.predict([cv2.imread("a.jpg")])               # list[Results]
    print(pred.timer.summary())                                 # pre / infer / post medians

Stages are timed separately: ``pre`` (resize, normalise, pad: :func:`fcos.data.preprocess.preprocess`),
``infer`` (copy in, network, in-graph box decoding and NMS, copy out) and ``post`` (split per image,
build :class:`Results`). Drawing is never timed.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import yaml

from fcos.config import BOX_RULES, CHANNEL_ORDERS, INTERPOLATIONS, RESIZE_BACKENDS, SIZE_ROUNDINGS, InputConfig
from fcos.data.preprocess import preprocess
from fcos.inference.results import Results
from fcos.inference.timing import StageTimer
from fcos.utils.detections import drops_empty_boxes, split_detections

logger = logging.getLogger(__name__)

INFER_CFG_NAME = "infer_cfg.yml"
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
BACKENDS = ("paddle", "onnxruntime", "openvino")
AUTO = "auto"  # the fastest of BACKENDS on this machine, measured (fcos.deploy.auto_backend)
BACKEND_CHOICES = BACKENDS + (AUTO,)
PROGRAM_EXTS = (".json", ".pdmodel")  # Paddle 3 (PIR) first, then Paddle 2

__all__ = [
    "INFER_CFG_NAME",
    "DeployError",
    "DeployPredictor",
    "InferCfg",
    "RuntimeOptions",
    "StageTimer",
    "create_paddle_predictor",
    "find_model_files",
    "load_infer_cfg",
]


class DeployError(RuntimeError):
    """The export directory or its infer_cfg.yml is unusable; the message names the file and key."""


@dataclass
class RuntimeOptions:
    """How the model runs (``runtime:`` section of infer_cfg.yml, CLI overrides).

    backend: "paddle" (Paddle Inference) | "onnxruntime" | "openvino" | "auto" (the fastest of them on
    this machine, measured once and remembered; see fcos.deploy.factory);
    device: "cpu" | "gpu"; use_mkldnn: oneDNN kernels on CPU; cpu_threads: math threads (0 = all
    cores); precision: "fp32" | "bf16" (CPU oneDNN, needs AVX512-BF16 or AMX) | "fp16" (GPU TensorRT)
    | "int8" (a model written by tools/quantize.py; the precision is in its weights, not an option);
    use_tensorrt: TensorRT subgraphs on GPU; gpu_id; trt_min_subgraph_size; trt_max_batch_size;
    streams: images in flight at once on the openvino backend (its CPU "streams", the cores split
    between them) for folders, videos and evaluation: more images per second, each one slower.
    """

    device: str = "cpu"
    backend: str = "paddle"
    use_mkldnn: bool = True
    cpu_threads: int = 0
    precision: str = "fp32"
    use_tensorrt: bool = False
    gpu_id: int = 0
    trt_min_subgraph_size: int = 3
    trt_max_batch_size: int = 1
    ir_optim: bool = True
    memory_optim: bool = True
    onednn_cache_capacity: int = 10
    streams: int = 1


@dataclass
class InferCfg:
    """Parsed infer_cfg.yml."""

    model_dir: str
    model_file: str
    params_file: str
    input: InputConfig
    class_names: list[str]
    category_ids: list[int]
    draw_threshold: float
    runtime: RuntimeOptions
    paddle_version: str = ""
    box_rule: str = "clip_drop_empty"  # postprocess.box_rule (model.postprocess.box_rule at export)
    extra: dict[str, Any] = field(default_factory=dict)


def find_model_files(model_dir: str, prefix: Optional[str] = None) -> tuple[str, str]:
    """(program file, params file) in ``model_dir``.

    Accepts Paddle 3 exports (``<prefix>.json`` + ``<prefix>.pdiparams``) and Paddle 2 exports
    (``<prefix>.pdmodel`` + ``<prefix>.pdiparams``); ``.json`` wins when both exist. ``prefix``
    (e.g. ``"model"``, ``"inference"``) restricts the search; otherwise ``model`` is tried first, then
    any other prefix in sorted order. Raises :class:`DeployError` naming the directory.
    """
    if not os.path.isdir(model_dir):
        raise DeployError(f"{model_dir}: export directory not found")
    names = set(os.listdir(model_dir))
    stems = sorted(n[: -len(".pdiparams")] for n in names if n.endswith(".pdiparams"))
    if prefix is not None:
        stems = [s for s in stems if s == prefix]
    stems.sort(key=lambda s: (s != "model", s))
    for stem in stems:
        for ext in PROGRAM_EXTS:
            if stem + ext in names:
                return os.path.join(model_dir, stem + ext), os.path.join(model_dir, stem + ".pdiparams")
    programs = sorted(n for n in names if n.endswith(PROGRAM_EXTS))
    hint = f" (found {programs} without a matching .pdiparams)" if programs else ""
    raise DeployError(
        f"{model_dir}: no exported model found: expected model.json (Paddle 3) or model.pdmodel (Paddle 2) "
        f"next to model.pdiparams{hint}; create one with tools/export.py"
    )


def _get(d: dict, key: str, typ: type, default: Any, where: str) -> Any:
    if key not in d or d[key] is None:
        return default
    v = d[key]
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if typ is int and isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, typ) or (typ is not bool and isinstance(v, bool)):
        raise DeployError(f"{where}: key '{key}' must be {typ.__name__}, got {v!r}")
    return v


def _check_choice(value: str, choices: tuple[str, ...], key: str, where: str) -> None:
    """A DeployError naming ``key`` in ``where`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise DeployError(f"{where}: key '{key}' must be one of {', '.join(choices)}, got {value!r}")


_PREPROCESS_KEYS = {
    "target_size",
    "max_size",
    "size_divisor",
    "interp",
    "resize_backend",
    "size_rounding",
    "channel_order",
    "to_unit",
    "mean",
    "std",
}
# An export written before resize_backend / size_rounding existed resized with OpenCV and rounded.
_LEGACY_RESIZE = {"resize_backend": "opencv", "size_rounding": "round"}


def _check_keys(section: Any, known: set[str], where: str) -> None:
    """A typo in an edited infer_cfg.yml must not be silently ignored."""
    if not isinstance(section, dict):
        raise DeployError(f"{where}: must be a mapping, got {section!r}")
    for key in section:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(sorted(known))})"
            raise DeployError(f"{where}: unknown key '{key}'{hint}")


def load_infer_cfg(model_dir: str) -> InferCfg:
    """Read ``model_dir/infer_cfg.yml`` (written by tools/export.py, may be edited by hand)."""
    path = os.path.join(model_dir, INFER_CFG_NAME)
    if not os.path.isfile(path):
        raise DeployError(f"{path}: not found (export the model with tools/export.py)")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise DeployError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise DeployError(f"{path}: top level must be a mapping")
    # The files named in infer_cfg.yml when present (an export copied from Paddle 2 to 3 keeps working
    # because a missing named file falls back to the directory search).
    named_prog, named_params = data.get("model_file"), data.get("params_file")
    rt_data = data.get("runtime") if isinstance(data.get("runtime"), dict) else {}
    if rt_data.get("backend", "paddle") != "paddle" and not os.path.isfile(os.path.join(model_dir, "model.pdiparams")):
        # an ONNX Runtime / OpenVINO model (e.g. int8 from tools/quantize.py): no Paddle program here;
        # the backend's predictor opens model_file itself
        prog = os.path.join(model_dir, str(named_prog or ""))
        params = os.path.join(model_dir, str(named_params or "")) if named_params else ""
    else:
        prog, params = find_model_files(model_dir)
    if (
        isinstance(named_prog, str)
        and named_prog.endswith(PROGRAM_EXTS)
        and os.path.isfile(os.path.join(model_dir, named_prog))
    ):
        prog = os.path.join(model_dir, named_prog)
        if isinstance(named_params, str) and os.path.isfile(os.path.join(model_dir, named_params)):
            params = os.path.join(model_dir, named_params)
    pp = data.get("preprocess") or {}
    where = f"{path} preprocess"
    _check_keys(pp, _PREPROCESS_KEYS, where)
    defaults = InputConfig()
    inp = InputConfig(
        channel_order=_get(pp, "channel_order", str, defaults.channel_order, where),
        to_unit=_get(pp, "to_unit", bool, defaults.to_unit, where),
        mean=[float(v) for v in pp.get("mean", defaults.mean)],
        std=[float(v) for v in pp.get("std", defaults.std)],
        test_short=_get(pp, "target_size", int, defaults.test_short, where),
        test_max=_get(pp, "max_size", int, defaults.test_max, where),
        size_divisor=_get(pp, "size_divisor", int, defaults.size_divisor, where),
        interp=_get(pp, "interp", str, defaults.interp, where),
        resize_backend=_get(pp, "resize_backend", str, _LEGACY_RESIZE["resize_backend"], where),
        size_rounding=_get(pp, "size_rounding", str, _LEGACY_RESIZE["size_rounding"], where),
    )
    _check_choice(inp.resize_backend, RESIZE_BACKENDS, "resize_backend", where)
    _check_choice(inp.size_rounding, SIZE_ROUNDINGS, "size_rounding", where)
    post = data.get("postprocess") or {}
    if not isinstance(post, dict):
        raise DeployError(f"{path} postprocess: must be a mapping, got {post!r}")
    box_rule = _get(post, "box_rule", str, "clip_drop_empty", f"{path} postprocess")
    _check_choice(box_rule, BOX_RULES, "box_rule", f"{path} postprocess")
    _check_choice(inp.channel_order, CHANNEL_ORDERS, "channel_order", where)
    _check_choice(inp.interp, INTERPOLATIONS, "interp", where)
    if len(inp.mean) != 3 or len(inp.std) != 3 or any(s == 0 for s in inp.std):
        raise DeployError(f"{where}: keys 'mean' and 'std' need 3 values each (std non-zero)")
    if inp.test_short < 1 or inp.test_max < 0:
        raise DeployError(f"{where}: key 'target_size' must be >= 1 and 'max_size' >= 0")
    rt = data.get("runtime") or {}
    where_rt = f"{path} runtime"
    _check_keys(rt, {f.name for f in dataclasses.fields(RuntimeOptions)}, where_rt)
    base = RuntimeOptions()
    runtime = RuntimeOptions(
        device=_get(rt, "device", str, base.device, where_rt),
        backend=_get(rt, "backend", str, base.backend, where_rt),
        use_mkldnn=_get(rt, "use_mkldnn", bool, base.use_mkldnn, where_rt),
        cpu_threads=_get(rt, "cpu_threads", int, base.cpu_threads, where_rt),
        precision=_get(rt, "precision", str, base.precision, where_rt),
        use_tensorrt=_get(rt, "use_tensorrt", bool, base.use_tensorrt, where_rt),
        gpu_id=_get(rt, "gpu_id", int, base.gpu_id, where_rt),
        trt_min_subgraph_size=_get(rt, "trt_min_subgraph_size", int, base.trt_min_subgraph_size, where_rt),
        trt_max_batch_size=_get(rt, "trt_max_batch_size", int, base.trt_max_batch_size, where_rt),
        ir_optim=_get(rt, "ir_optim", bool, base.ir_optim, where_rt),
        memory_optim=_get(rt, "memory_optim", bool, base.memory_optim, where_rt),
        onednn_cache_capacity=_get(rt, "onednn_cache_capacity", int, base.onednn_cache_capacity, where_rt),
        streams=_get(rt, "streams", int, base.streams, where_rt),
    )
    if runtime.streams < 1:
        raise DeployError(f"{where_rt}: key 'streams' must be >= 1, got {runtime.streams}")
    _check_choice(runtime.backend, BACKEND_CHOICES, "backend", where_rt)
    _check_choice(runtime.precision, PRECISIONS, "precision", where_rt)
    names = [str(n) for n in data.get("class_names") or []]
    num_classes = int(data.get("num_classes") or len(names))
    if not names:
        names = [f"class_{i}" for i in range(num_classes)]
    cat_ids = [int(c) for c in data.get("category_ids") or range(1, len(names) + 1)]
    if len(cat_ids) != len(names):
        raise DeployError(f"{path}: 'category_ids' has {len(cat_ids)} entries but 'class_names' has {len(names)}")
    known = {"model_file", "params_file", "preprocess", "runtime", "class_names", "category_ids", "draw_threshold"}
    return InferCfg(
        model_dir=model_dir,
        model_file=prog,
        params_file=params,
        input=inp,
        class_names=names,
        category_ids=cat_ids,
        draw_threshold=_get(data, "draw_threshold", float, 0.5, path),
        runtime=runtime,
        paddle_version=str(data.get("paddle_version", "")),
        box_rule=box_rule,
        extra={k: v for k, v in data.items() if k not in known},
    )


def resolve_threads(cpu_threads: int) -> int:
    """``cpu_threads`` when > 0, else the cores this process may run on (CPU affinity, e.g. a container
    limit), else the logical core count."""
    from fcos.utils.runtime import usable_cores

    return int(cpu_threads) if cpu_threads > 0 else usable_cores()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_supports_bf16() -> bool:
    """True when the CPU has AVX512-BF16 or AMX-BF16."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_has_amx() -> bool:
    """True when the CPU has AMX bf16 tiles (Sapphire Rapids and later Xeons)."""
    return "amx_bf16" in cpu_flags()


def check_single_stream(opts: RuntimeOptions, engine: str) -> None:
    """DeployError when ``opts.streams`` > 1 on an engine that runs one image at a time."""
    if opts.streams > 1:
        raise DeployError(
            f"runtime.streams {opts.streams}: several images in flight run on the openvino backend only, "
            f"not on {engine} (use --backend openvino, or streams 1)"
        )


def create_paddle_predictor(
    model_file: str, params_file: str, opts: RuntimeOptions, onednn_placement: bool = True
) -> Any:
    """A ``paddle.inference`` predictor for the program/params files with ``opts`` applied.

    ``onednn_placement=False`` removes the pass that moves every op with a oneDNN kernel onto oneDNN
    (a workaround for ops Paddle 3.3.1 cannot run that way). Raises :class:`DeployError` for
    impossible combinations (GPU without CUDA, bf16 on a CPU without bf16 instructions, fp16 without
    TensorRT on GPU).
    """
    import paddle
    import paddle.inference as pi

    if opts.precision not in PRECISIONS:
        raise DeployError(f"precision must be one of {PRECISIONS}, got {opts.precision!r}")
    if opts.precision == "int8":
        raise DeployError(
            "precision 'int8' on Paddle Inference is not available: quantize with tools/quantize.py "
            "--backend openvino|onnxruntime and run that directory"
        )
    if opts.device not in ("cpu", "gpu"):
        raise DeployError(f"device must be 'cpu' or 'gpu', got {opts.device!r}")
    check_single_stream(opts, "Paddle Inference")
    config = pi.Config(model_file, params_file)
    config.disable_glog_info()
    config.switch_ir_optim(opts.ir_optim)  # graph fusions (conv+bn+act, ...)
    if opts.memory_optim and not model_file.endswith(".json"):
        # Reuse buffers between ops. Only for Paddle 2 programs: with a Paddle 3 (PIR) model.json,
        # Paddle 3.3.1 fails in create_predictor ("Not find ... memory_optimize_pass").
        config.enable_memory_optim()
    if opts.device == "gpu":
        if not paddle.is_compiled_with_cuda():
            raise DeployError("device 'gpu' requested but this Paddle build has no CUDA; use --device cpu")
        config.enable_use_gpu(200, opts.gpu_id)
        if opts.use_tensorrt:
            precision = {"fp32": pi.PrecisionType.Float32, "fp16": pi.PrecisionType.Half}.get(opts.precision)
            if precision is None:
                raise DeployError(f"TensorRT supports precision fp32 or fp16, got {opts.precision!r}")
            config.enable_tensorrt_engine(
                workspace_size=1 << 30,
                max_batch_size=opts.trt_max_batch_size,
                min_subgraph_size=opts.trt_min_subgraph_size,
                precision_mode=precision,
                use_static=False,
                use_calib_mode=False,
            )
        elif opts.precision != "fp32":
            raise DeployError(f"precision {opts.precision!r} on GPU needs use_tensorrt (fp16) ")
    else:
        config.disable_gpu()
        threads = resolve_threads(opts.cpu_threads)
        config.set_cpu_math_library_num_threads(threads)
        if opts.precision == "fp16":
            raise DeployError("precision 'fp16' needs a GPU with TensorRT; on CPU use fp32 or bf16")
        if opts.use_mkldnn:
            config.enable_onednn()
            # oneDNN caches kernels per input shape; bound it so a stream of differently sized images
            # cannot grow memory without limit (0 would mean unbounded).
            config.set_onednn_cache_capacity(max(1, opts.onednn_cache_capacity))
            if opts.precision == "bf16":
                if not cpu_supports_bf16():
                    raise DeployError("precision 'bf16' needs a CPU with AVX512-BF16 or AMX; use fp32")
                config.enable_onednn_bfloat16()
            if not onednn_placement:
                config.delete_pass("onednn_placement_pass")
        elif opts.precision == "bf16":
            raise DeployError("precision 'bf16' runs through oneDNN: enable use_mkldnn")
        else:
            config.disable_mkldnn()
    return pi.create_predictor(config)


_ONEDNN_PIR_BUG = "ConvertPirAttribute2RuntimeAttribute"


class DeployPredictor:
    """Run an exported model directory on Paddle Inference.

    Any argument left ``None`` comes from infer_cfg.yml (``runtime:``, ``preprocess:`` and
    ``draw_threshold``), so editing that file changes behaviour without re-exporting.
    ``predict(images)`` takes BGR uint8 (H, W, 3) arrays and returns one :class:`Results` each
    (boxes (k, 4) xyxy in original pixels, all detections the graph kept; filter by ``draw_threshold``).
    """

    def __init__(
        self,
        model_dir: str,
        device: Optional[str] = None,
        use_mkldnn: Optional[bool] = None,
        cpu_threads: Optional[int] = None,
        precision: Optional[str] = None,
        use_tensorrt: Optional[bool] = None,
        target_size: Optional[int] = None,
        max_size: Optional[int] = None,
        draw_threshold: Optional[float] = None,
        warmup: int = 0,
        streams: Optional[int] = None,
    ) -> None:
        self.cfg = load_infer_cfg(model_dir)
        rt = self.cfg.runtime
        for name, value in (
            ("device", device),
            ("use_mkldnn", use_mkldnn),
            ("cpu_threads", cpu_threads),
            ("precision", precision),
            ("use_tensorrt", use_tensorrt),
            ("streams", streams),
        ):
            if value is not None:
                setattr(rt, name, value)
        if target_size is not None:
            self.cfg.input.test_short = int(target_size)
        if max_size is not None:
            self.cfg.input.test_max = int(max_size)
        if draw_threshold is not None:
            self.cfg.draw_threshold = float(draw_threshold)
        self.notes: list[str] = []  # runtime fallbacks taken, for reports
        self.last_input_shape: Optional[tuple[int, ...]] = None  # (N, 3, H, W) of the last call
        self._create_runtime()
        self.timer = StageTimer(warmup)

    # -- runtime ---------------------------------------------------------------------------------

    def _create_runtime(self, onednn_placement: bool = True) -> None:
        self._onednn_placement = onednn_placement
        self._empty_safe: Any = None
        self.predictor = create_paddle_predictor(
            self.cfg.model_file, self.cfg.params_file, self.cfg.runtime, onednn_placement=onednn_placement
        )
        self.input_names = list(self.predictor.get_input_names())
        self.output_names = list(self.predictor.get_output_names())

    def run_arrays(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Feed arrays by input name, run, return outputs in graph order."""
        try:
            return self._run(feeds)
        except NotImplementedError as e:
            # Paddle 3.3.1 cannot run some ops of a loaded PIR program (e.g. nearest_interp) on oneDNN.
            # Keep oneDNN's fused kernels but leave op placement to Paddle, once, and say so.
            if _ONEDNN_PIR_BUG not in str(e) or not self._onednn_placement:
                raise
            self.notes.append(
                "oneDNN could not run an op of this model (Paddle 3.3.1 PIR limitation, e.g. nearest_interp); "
                "using oneDNN without op placement (slower)"
            )
            logger.warning(self.notes[-1])
            self._create_runtime(onednn_placement=False)
            return self._run(feeds)

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self._run_on(self.predictor, feeds)
        except (DeployError, NotImplementedError):
            raise  # bad feeds; ops oneDNN cannot run at all (run_arrays drops op placement for those)
        except RuntimeError:
            if not self._placement_active():
                raise
            # Paddle 3.3's oneDNN kernels (slice/concat/clip placed after NMS) fail on empty tensors,
            # i.e. on an image with no detections. Such calls go to a second predictor without oneDNN op
            # placement; every other call keeps the fast one.
            if self._empty_safe is None:
                self._empty_safe = create_paddle_predictor(
                    self.cfg.model_file, self.cfg.params_file, self.cfg.runtime, onednn_placement=False
                )
                note = "images without detections run on a second predictor without oneDNN op placement"
                self.notes.append(note)
                logger.info(note)
            return self._run_on(self._empty_safe, feeds)

    def _placement_active(self) -> bool:
        rt = self.cfg.runtime
        return rt.device == "cpu" and bool(rt.use_mkldnn) and self._onednn_placement

    def _run_on(self, predictor: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name in self.input_names:
            if name not in feeds:
                raise DeployError(f"exported model expects input '{name}', got {sorted(feeds)}")
            handle = predictor.get_input_handle(name)
            arr = np.ascontiguousarray(feeds[name])
            handle.reshape(list(arr.shape))
            handle.copy_from_cpu(arr)
        predictor.run()
        return [predictor.get_output_handle(n).copy_to_cpu() for n in self.output_names]

    def engine(self) -> str:
        """The inference engine and precision, e.g. ``Paddle Inference oneDNN fp32``."""
        rt = self.cfg.runtime
        if rt.device == "gpu":
            return f"Paddle Inference {'TensorRT ' + rt.precision if rt.use_tensorrt else 'CUDA fp32'}"
        if rt.use_mkldnn:
            return f"Paddle Inference oneDNN {rt.precision}" + (" (no op placement)" if self.notes else "")
        return "Paddle Inference native CPU fp32 (no oneDNN)"

    # -- public API ------------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        return self.cfg.class_names

    @property
    def category_ids(self) -> list[int]:
        return self.cfg.category_ids

    @property
    def draw_threshold(self) -> float:
        return self.cfg.draw_threshold

    def describe(self) -> str:
        """Engine, hardware, threads and input size, for FPS reports."""
        from fcos.utils.runtime import cpu_name

        rt = self.cfg.runtime
        if rt.device == "gpu":
            import paddle

            hw = f"GPU {paddle.device.cuda.get_device_name(rt.gpu_id)}"
        else:
            threads = resolve_threads(rt.cpu_threads)
            hw = f"CPU {cpu_name()} ({threads} threads of {os.cpu_count()} logical cores)"
        inp = self.cfg.input
        return (
            f"{self.engine()} | {hw} | input: short side {inp.test_short}, long side <= {inp.test_max}, "
            f"padded to /{inp.size_divisor}"
        )

    def predict(
        self, images: Sequence[np.ndarray], paths: Optional[Sequence[str]] = None, keep_images: bool = True
    ) -> list[Results]:
        """Detect objects in BGR uint8 (H, W, 3) images; one :class:`Results` per image (unfiltered).

        Timed stages (``self.timer``): pre (:func:`fcos.data.preprocess.preprocess`), infer (copy in,
        network, in-graph decoding + NMS, copy out), post (split per image, build Results).
        """
        if len(images) == 0:
            return []
        t0 = time.perf_counter()
        feeds = self._feeds(images)
        t1 = time.perf_counter()
        outputs = self.run_arrays(feeds)
        t2 = time.perf_counter()
        results = self._results(outputs, images, paths, keep_images)
        self.timer.record({"pre": t1 - t0, "infer": t2 - t1, "post": time.perf_counter() - t2}, len(images))
        return results

    def predict_stream(
        self, jobs: Iterable[tuple[Sequence[np.ndarray], Optional[Sequence[str]], Any]], keep_images: bool = True
    ) -> Iterator[tuple[Any, list[Results]]]:
        """``(tag, results)`` for each ``(images, paths, tag)`` job, in order. Engines with parallel
        streams (OpenVINO, ``runtime.streams`` > 1) keep several images in flight; here one job runs
        after the other. The caller may stop iterating early; in-flight work is then dropped."""
        for images, paths, tag in jobs:
            yield tag, self.predict(images, paths=paths, keep_images=keep_images)

    def _feeds(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The graph inputs for a batch of BGR images (pre-processing of infer_cfg.yml)."""
        batch = preprocess(images, self.cfg.input)
        self.last_input_shape = tuple(int(v) for v in batch.images.shape)
        return {"image": batch.images, "im_shape": batch.im_shape, "scale_factor": batch.scale_factor}

    def _results(
        self,
        outputs: list[np.ndarray],
        images: Sequence[np.ndarray],
        paths: Optional[Sequence[str]],
        keep_images: bool,
    ) -> list[Results]:
        """One :class:`Results` per image from the graph outputs (bboxes [K, 6], bbox_num [N])."""
        bboxes, bbox_num = self._pick_outputs(outputs)
        dets = split_detections(bboxes, bbox_num, drop_empty=drops_empty_boxes(self.cfg.box_rule))
        if len(dets) != len(images):
            raise DeployError(f"exported model returned detections for {len(dets)} images, expected {len(images)}")
        return [
            Results(
                boxes=d["boxes"],
                scores=d["scores"],
                labels=d["labels"],
                names=self.cfg.class_names,
                image=img if keep_images else None,
                path=paths[i] if paths else "",
                orig_shape=(int(img.shape[0]), int(img.shape[1])),
                category_ids=self.cfg.category_ids,
            )
            for i, (d, img) in enumerate(zip(dets, images))
        ]

    @staticmethod
    def _pick_outputs(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if len(outputs) != 2:
            raise DeployError(
                f"exported model has {len(outputs)} outputs; expected (bboxes [K, 6], bbox_num [N]): "
                "export with export.with_nms=true"
            )
        a, b = outputs
        if a.ndim == 1 and b.ndim == 2:
            a, b = b, a
        return a, b
