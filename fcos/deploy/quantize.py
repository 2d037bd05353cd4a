"""Post-training int8 quantization of an export directory, calibrated on the user's images.

    report = quantize_export("output/export/rt_dla34", "photos/", "output/export/rt_dla34_int8", backend="openvino")

Calibration images go through the project's own preprocessing (:func:`fcos.data.preprocess.preprocess`
with the export's ``infer_cfg.yml`` input section), one image per call, as the predictor feeds them.
The quantization itself is done by the backend's own, maintained tool:

* ``openvino``: NNCF ``nncf.quantize`` on the OpenVINO model converted from the export's ONNX graph
  (writes ``model.xml`` + ``model.bin``);
* ``onnxruntime``: ONNX Runtime ``quantize_static`` (QDQ, per-channel int8 weights, uint8
  activations; writes ``model.onnx``).

Both quantize the convolutions only; GroupNorm, the box decoding and NMS stay fp32 (neither tool
has int8 kernels for them), and so do the last predictors of the head (the class, box and
centerness convolutions: their outputs are the scores and box distances themselves, so an int8
rounding there moves every score and box edge; they are 3 of ~70 convolutions, ~3 % of the
multiply-adds at 512/736 for rt_dla34). Everything is written to a temporary directory next to the
output and renamed into place at the end: a failure leaves no partial output behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import yaml

from fcos.config import InputConfig
from fcos.data.preprocess import preprocess
from fcos.deploy.precision_match import MatchRow, precision_match
from fcos.deploy.predictor import AUTO, INFER_CFG_NAME, DeployError, InferCfg, load_infer_cfg
from fcos.utils.signal_stack import preserve_signal_stack

logger = logging.getLogger(__name__)

QUANT_BACKENDS = ("openvino", "onnxruntime")
MATCH_THRESHOLDS = (0.05, 0.3, 0.5)

_HEADER = """\
# fcos-paddle int8 model, written by tools/quantize.py from an fp32 export; read by fcos.deploy
# (tools/deploy_infer.py, tools/eval.py --model_dir). runtime.backend and runtime.precision say how it runs;
# preprocess / draw_threshold / cpu_threads may be edited as for any export. quantization: how it was made.
"""


class QuantizeError(ValueError):
    """Unusable quantization input (calibration folder, model directory, output path); the message names it."""


@dataclass
class QuantizeReport:
    """What :func:`quantize_export` did: output directory, backend, images used / skipped, the layers
    left in fp32 and the int8-vs-fp32 match rate on the calibration images."""

    output: str
    backend: str
    model_file: str
    num_images: int
    skipped: list[str] = field(default_factory=list)
    fp32_layers: list[str] = field(default_factory=list)
    match: list[MatchRow] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# Calibration input
# ------------------------------------------------------------------------------------------------


def load_calibration_images(image_dir: str, num_images: int) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Up to ``num_images`` readable images of ``image_dir`` (sorted, BGR uint8) with their paths, and
    the unreadable files skipped (``"path: reason"``). Raises :class:`QuantizeError` when the folder is
    missing, holds no image files, or none of them can be read."""
    from fcos.inference.sources import IMAGE_EXTS, iter_images, list_images

    if num_images < 1:
        raise QuantizeError(f"--num-images must be >= 1, got {num_images}")
    if not os.path.isdir(image_dir):
        raise QuantizeError(f"{image_dir}: calibration image folder not found")
    paths = list_images(image_dir, recursive=True)
    if not paths:
        raise QuantizeError(
            f"{image_dir}: no calibration images (looked for {', '.join(IMAGE_EXTS)}, also in sub-folders)"
        )
    images, used, skipped = [], [], []
    for item in iter_images(paths):
        if item.image is None:
            skipped.append(f"{item.path}: {item.error}")
            continue
        images.append(item.image)
        used.append(item.path)
        if len(images) >= num_images:
            break
    if not images:
        listed = "; ".join(skipped[:3]) + (f"; ... ({len(skipped)} files)" if len(skipped) > 3 else "")
        raise QuantizeError(f"{image_dir}: none of the calibration images can be read ({listed})")
    return images, used, skipped


def calibration_feeds(
    images: Sequence[np.ndarray], input_cfg: InputConfig, progress: bool = True, desc: str = "calibration"
) -> Iterator[dict[str, np.ndarray]]:
    """The predictor's feeds (image (1, 3, H, W) float32, im_shape (1, 2), scale_factor (1, 2)) for each
    image, preprocessed lazily by :func:`preprocess` with a tqdm progress bar when ``progress``."""
    from tqdm import tqdm

    for img in tqdm(images, desc=desc, unit="img", disable=not progress, leave=False):
        batch = preprocess([img], input_cfg)
        yield {"image": batch.images, "im_shape": batch.im_shape, "scale_factor": batch.scale_factor}


# ------------------------------------------------------------------------------------------------
# Which convolutions stay fp32
# ------------------------------------------------------------------------------------------------


def final_convs(nodes: Sequence[tuple[str, str, list[str]]]) -> list[str]:
    """Names of the convolutions from which no other convolution can be reached: the head's last
    predictors (class logits, box distances, centerness). ``nodes``: (name, "conv" or "", names of the
    consumers) for every node of a graph in topological order (as ONNX graphs and OpenVINO's
    ``get_ordered_ops`` list them)."""
    is_conv = {name: kind == "conv" for name, kind, _ in nodes}
    reaches: dict[str, bool] = {}
    for name, _, consumers in reversed(nodes):
        reaches[name] = any(is_conv.get(c, False) or reaches.get(c, False) for c in consumers)
    return [name for name, kind, _ in nodes if kind == "conv" and not reaches[name]]


def downstream(nodes: Sequence[tuple[str, str, list[str]]], starts: Sequence[str]) -> list[str]:
    """``starts`` and every node reachable from them (the box decoding and NMS after the final
    convolutions), in graph order; ``nodes`` as for :func:`final_convs`."""
    hit = set(starts)
    for name, _, consumers in nodes:  # topological order: a node's producers come first
        if name in hit:
            hit.update(consumers)
    return [name for name, _, _ in nodes if name in hit]


def _onnx_nodes(model: Any) -> list[tuple[str, str, list[str]]]:
    by_input: dict[str, list[str]] = {}
    for node in model.graph.node:
        for t in node.input:
            by_input.setdefault(t, []).append(node.name)
    return [
        (node.name, "conv" if node.op_type == "Conv" else "", [c for t in node.output for c in by_input.get(t, [])])
        for node in model.graph.node
    ]


def _openvino_nodes(model: Any) -> list[tuple[str, str, list[str]]]:
    out = []
    for op in model.get_ordered_ops():
        consumers = [t.get_node().get_friendly_name() for o in op.outputs() for t in o.get_target_inputs()]
        kind = "conv" if op.get_type_name() in ("Convolution", "GroupConvolution") else ""
        out.append((op.get_friendly_name(), kind, consumers))
    return out


# ------------------------------------------------------------------------------------------------
# Backends
# ------------------------------------------------------------------------------------------------


def _ensure_onnx(model_dir: str, work_dir: str) -> str:
    """The export's model.onnx, or a conversion of its Paddle program into ``work_dir``."""
    path = os.path.join(model_dir, "model.onnx")
    if os.path.isfile(path):
        return path
    from fcos.export import export_onnx

    try:
        return export_onnx(model_dir, os.path.join(work_dir, "fp32.onnx"))
    except RuntimeError as e:
        raise QuantizeError(f"{model_dir}: {e}") from e


# Elementwise ops NNCF would otherwise quantize (residual and FPN adds, GroupNorm's MVN and affine,
# upsampling, concatenation); ONNX Runtime's quantize_static leaves them in fp32 as well.
_OPENVINO_FP32_TYPES = ["Add", "Multiply", "Subtract", "Divide", "MVN", "Interpolate", "Concat", "ReduceMean"]


def quantize_openvino(onnx_file: str, feeds: Callable[[], Iterator[dict]], num: int, out_dir: str) -> tuple[str, list]:
    """NNCF post-training quantization of ``onnx_file`` (as an OpenVINO model): convolutions int8
    (weights per output channel with 7-bit range ("overflow fix": CPUs without VNNI multiply u8 x s8
    pairs with 16-bit saturation), activations per tensor, asymmetric, over the calibration min..max);
    the final predictor convolutions, everything after them and elementwise ops stay fp32. Writes
    ``out_dir/model.xml`` + ``.bin``; returns (file name, convolutions kept fp32)."""
    try:
        import nncf
        import openvino as ov
        from nncf.quantization.advanced_parameters import OverflowFix
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    except ImportError as e:
        raise QuantizeError('--backend openvino needs OpenVINO and NNCF: pip install "fcos-paddle[openvino]"') from e
    from fcos.deploy.openvino_predictor import read_openvino_model

    nncf.set_log_level(logging.WARNING)  # otherwise one INFO line per op it leaves alone
    model = read_openvino_model(onnx_file)
    nodes = _openvino_nodes(model)
    keep = final_convs(nodes)
    # NNCF also quantizes Add/Multiply inputs; in the decoding (points * stride, distances) int8 would
    # move every box, so nothing after the final convolutions is touched.
    with preserve_signal_stack():  # NNCF's temporary ov.Core objects swap it (fcos.utils.signal_stack)
        quantized = nncf.quantize(
            model,
            nncf.Dataset(_Reiterable(feeds, num)),
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=num,
            ignored_scope=nncf.IgnoredScope(names=downstream(nodes, keep), types=_OPENVINO_FP32_TYPES, validate=False),
            advanced_parameters=nncf.AdvancedQuantizationParameters(
                activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX, overflow_fix=OverflowFix.ENABLE
            ),
        )
    ov.save_model(quantized, os.path.join(out_dir, "model.xml"), compress_to_fp16=False)
    return "model.xml", keep


class _Reiterable:
    """A fresh pass over the feeds on every ``iter()`` (NNCF may read the data more than once)."""

    def __init__(self, feeds: Callable[[], Iterator[dict]], num: int) -> None:
        self._feeds, self._num = feeds, num

    def __iter__(self) -> Iterator[dict]:
        return self._feeds()

    def __len__(self) -> int:
        return self._num


class _Reader:
    """ONNX Runtime CalibrationDataReader over the feeds."""

    def __init__(self, feeds: Iterator[dict]) -> None:
        self._it = feeds

    def get_next(self) -> Optional[dict]:
        return next(self._it, None)


def quantize_onnxruntime(
    onnx_file: str, feeds: Callable[[], Iterator[dict]], num: int, out_dir: str
) -> tuple[str, list]:
    """ONNX Runtime static quantization (QDQ, per-channel int8 weights in a 7-bit range, uint8
    activations, MinMax calibration) of the convolutions after ONNX Runtime's pre-processing (BatchNorm
    folded into Conv), the final predictor convolutions excluded. Writes ``out_dir/model.onnx``; returns
    (file name, layers kept fp32)."""
    try:
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise QuantizeError('--backend onnxruntime needs ONNX Runtime: pip install "fcos-paddle[onnx]"') from e

    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # paddle2onnx graphs carry unused initializers: one warning each
    # ONNX Runtime's pre-processing first: it folds each BatchNorm into its Conv. Quantized as exported,
    # the convolutions keep their BatchNorm in fp32 behind a DequantizeLinear and nothing fuses.
    prepared = os.path.join(out_dir, "prepared_fp32.onnx")
    quant_pre_process(onnx_file, prepared, skip_symbolic_shape=True)
    keep = final_convs(_onnx_nodes(onnx.load(prepared)))
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(feeds())
    out = os.path.join(out_dir, "model.onnx")
    quantize_static(
        prepared,
        out,
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        reduce_range=True,  # 7-bit weights: u8 x s8 on CPUs without VNNI saturates at 16 bits
        nodes_to_exclude=keep,
    )
    os.remove(prepared)
    return "model.onnx", keep


# ------------------------------------------------------------------------------------------------
# The whole job
# ------------------------------------------------------------------------------------------------


def _check_output(output: str, model_dir: str, overwrite: bool) -> None:
    if os.path.abspath(output) == os.path.abspath(model_dir):
        raise QuantizeError(f"{output}: the output must differ from the fp32 export directory")
    if os.path.exists(output):
        if not os.path.isdir(output):
            raise QuantizeError(f"{output}: exists and is not a directory")
        if os.listdir(output) and not overwrite:
            raise QuantizeError(f"{output}: exists and is not empty (pass --overwrite to replace it)")


def _write_infer_cfg(src: InferCfg, model_dir: str, out_dir: str, info: dict[str, Any]) -> None:
    with open(os.path.join(model_dir, INFER_CFG_NAME), encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    data["model_file"] = info["model_file"]
    data.pop("params_file", None)
    runtime = dict(data.get("runtime") or {})
    runtime.update({"backend": info["backend"], "precision": "int8", "device": "cpu"})
    runtime.pop("use_tensorrt", None)
    data["runtime"] = runtime
    data["quantization"] = {k: v for k, v in info.items() if k not in ("model_file", "backend")}
    with open(os.path.join(out_dir, INFER_CFG_NAME), "w", encoding="utf-8") as f:
        f.write(_HEADER)
        yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True, default_flow_style=None, width=120)


def quantize_export(
    model_dir: str,
    image_dir: str,
    output: str,
    backend: str = "openvino",
    num_images: int = 100,
    overwrite: bool = False,
    progress: bool = True,
    cpu_threads: int = 0,
) -> QuantizeReport:
    """Quantize the fp32 export ``model_dir`` to int8 for ``backend`` (see module doc), calibrated on up
    to ``num_images`` images of ``image_dir``, into ``output`` (infer_cfg.yml + the backend's model);
    then compare int8 with fp32 (Paddle Inference) on the calibration images. Raises
    :class:`QuantizeError` (bad input; nothing written) or :class:`DeployError` (model directory)."""
    if backend not in QUANT_BACKENDS:
        raise QuantizeError(f"--backend must be one of {', '.join(QUANT_BACKENDS)}, got {backend!r}")
    try:
        src = load_infer_cfg(model_dir)
    except DeployError as e:
        raise QuantizeError(f"{model_dir} is not a usable export directory: {e}") from e
    if src.runtime.precision == "int8":
        raise QuantizeError(f"{model_dir} is already an int8 model; quantize the fp32 export it came from")
    if src.runtime.backend not in ("paddle", AUTO):
        raise QuantizeError(f"{model_dir}: expected an fp32 export of tools/export.py (Paddle program + infer_cfg.yml)")
    _check_output(output, model_dir, overwrite)
    images, used, skipped = load_calibration_images(image_dir, num_images)
    for s in skipped:
        logger.warning("skipping unreadable calibration image %s", s)
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output))}.tmp-", dir=parent)
    try:
        staging = os.path.join(work, "model")
        os.makedirs(staging)
        onnx_file = _ensure_onnx(model_dir, work)

        def feeds() -> Iterator[dict]:
            return calibration_feeds(images, src.input, progress=progress)

        quantizer = quantize_openvino if backend == "openvino" else quantize_onnxruntime
        model_file, keep = quantizer(onnx_file, feeds, len(images), staging)
        info = {
            "model_file": model_file,
            "backend": backend,
            "source": os.path.abspath(model_dir),
            "calibration_images": len(images),
            "calibration_dir": os.path.abspath(image_dir),
            "tool": "NNCF nncf.quantize" if backend == "openvino" else "ONNX Runtime quantize_static (QDQ)",
            "fp32_layers": ["GroupNorm", "box decoding + NMS"] + [f"final predictor conv {k}" for k in keep],
        }
        _write_infer_cfg(src, model_dir, staging, info)
        match = _match_on(model_dir, staging, images, cpu_threads)
        if os.path.isdir(output):
            shutil.rmtree(output)
        os.replace(staging, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return QuantizeReport(
        output=output,
        backend=backend,
        model_file=model_file,
        num_images=len(images),
        skipped=skipped,
        fp32_layers=keep,
        match=match,
    )


def _match_on(
    fp32_dir: str, int8_dir: str, images: Sequence[np.ndarray], cpu_threads: int, thresholds: Sequence[float] = ()
) -> list[MatchRow]:
    """int8 (its own backend) vs fp32 (Paddle Inference) detections on ``images``."""
    from fcos.deploy.factory import create_predictor

    ref = create_predictor(fp32_dir, backend="paddle", precision="fp32", cpu_threads=cpu_threads)
    got = create_predictor(int8_dir, cpu_threads=cpu_threads)
    a = [ref.predict([img], keep_images=False)[0] for img in images]
    b = [got.predict([img], keep_images=False)[0] for img in images]
    draw = float(ref.draw_threshold)
    return precision_match(a, b, sorted({*(thresholds or MATCH_THRESHOLDS), draw}))
