"""Export an FCOS model for deployment: ``paddle.jit.to_static`` + ``paddle.jit.save`` + ``infer_cfg.yml``.

The exported graph takes the three inputs of :func:`input_spec` (dynamic batch and image size) and
returns ``(bboxes [K, 6], bbox_num [N])`` with box decoding and NMS inside the graph, rows
[label, score, x1, y1, x2, y2] in original image pixels. ``infer_cfg.yml`` holds everything the
deploy predictor needs (preprocessing, sizes, threshold, class names, category ids, runtime
options); editing it takes effect without re-exporting.

Paddle 3 writes ``model.json`` + ``model.pdiparams``; Paddle 2 wrote ``model.pdmodel``. Both load.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import cv2
import numpy as np
import paddle
import yaml

import fcos
from fcos.config import Config
from fcos.data.preprocess import preprocess
from fcos.deploy.predictor import INFER_CFG_NAME, find_model_files
from fcos.inference.matching import MatchStats, match_detections
from fcos.modeling.postprocess import reads_im_shape
from fcos.utils.detections import drops_empty_boxes, split_detections

MODEL_PREFIX = "model"


class InferenceModel(paddle.nn.Layer):
    """The exported computation: ``forward(image, im_shape, scale_factor)`` -> (bboxes [K, 6], bbox_num [N]).

    image (N, 3, H, W) float32 normalised and padded; im_shape (N, 2) resized (h, w) before padding;
    scale_factor (N, 2) (sy, sx) = resized / original. Returns what ``FCOS`` returns in eval mode:
    rows [label, score, x1, y1, x2, y2] in original pixels, and int32 detections per image.

    Every recipe exports this one signature, but paddle.jit.save rejects an input the graph does not use.
    When the recipe's postprocessing never reads im_shape (box rule "none" without clipping before NMS),
    ``ties_im_shape`` is set and forward adds ``0 * sum(im_shape)`` to the rows: a few flops, and x + 0 == x
    for the finite sizes an image has.
    """

    def __init__(self, model: paddle.nn.Layer) -> None:
        super().__init__()
        self.model = model
        self.ties_im_shape = not reads_im_shape(model.cfg.postprocess)

    def forward(self, image: paddle.Tensor, im_shape: paddle.Tensor, scale_factor: paddle.Tensor) -> Any:
        bboxes, bbox_num = self.model(image, im_shape, scale_factor)
        if self.ties_im_shape:
            bboxes = bboxes + im_shape.sum() * 0.0
        return bboxes, bbox_num


class HeadOnlyModel(paddle.nn.Layer):
    """``forward(image)`` -> per-level cls logits, then box regressions, then centerness logits
    (3 x num_levels tensors, no decoding or NMS); benchmarks use it to time the network alone."""

    def __init__(self, model: paddle.nn.Layer) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: paddle.Tensor) -> Any:
        cls_logits, bbox_reg, ctr_logits = self.model.forward_head(image)
        return tuple(cls_logits) + tuple(bbox_reg) + tuple(ctr_logits)


def input_spec(with_nms: bool = True) -> list[paddle.static.InputSpec]:
    """Dynamic batch and image size: image [None, 3, None, None] (+ im_shape, scale_factor [None, 2] with NMS)."""
    spec = [paddle.static.InputSpec([None, 3, None, None], "float32", "image")]
    if with_nms:
        spec += [
            paddle.static.InputSpec([None, 2], "float32", "im_shape"),
            paddle.static.InputSpec([None, 2], "float32", "scale_factor"),
        ]
    return spec


_HEADER = """\
# fcos-paddle inference config, read by fcos.deploy.DeployPredictor (tools/deploy_infer.py).
# Edit freely; changes take effect without re-exporting:
#   preprocess.target_size / max_size: resize short side / cap long side (any size works: the graph is dynamic)
#   draw_threshold: minimum score drawn and written by the tools
#   runtime.device cpu|gpu, runtime.use_mkldnn (oneDNN on CPU), runtime.cpu_threads (0 = all cores),
#   runtime.precision fp32|bf16 (CPU with AVX512-BF16/AMX)|fp16 (GPU TensorRT), runtime.use_tensorrt
#   runtime.backend paddle|onnxruntime|openvino (need model.onnx: tools/export.py --onnx)|auto (the fastest here)
#   runtime.streams: images in flight on the openvino backend (folders, videos, eval; default 1)
# Score threshold, NMS IoU and max detections (postprocess:) are baked into the graph: informational only.
"""


def build_infer_cfg(
    cfg: Config,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    model_file: str,
    params_file: str,
    with_nms: bool = True,
) -> dict[str, Any]:
    """The infer_cfg.yml content as a dict."""
    inp = cfg.input
    pp = cfg.model.postprocess
    return {
        "arch": "FCOS",
        "model_file": model_file,
        "params_file": params_file,
        "with_nms": with_nms,
        "paddle_version": paddle.__version__,
        "fcos_version": fcos.__version__,
        "exported_from": cfg.source,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "num_classes": int(cfg.model.num_classes),
        "draw_threshold": float(cfg.export.draw_threshold),
        "preprocess": {
            "target_size": int(inp.test_short),
            "max_size": int(inp.test_max),
            "size_divisor": int(inp.size_divisor),
            "interp": inp.interp,
            "resize_backend": inp.resize_backend,
            "size_rounding": inp.size_rounding,
            "channel_order": inp.channel_order,
            "to_unit": bool(inp.to_unit),
            "mean": [float(v) for v in inp.mean],
            "std": [float(v) for v in inp.std],
        },
        "runtime": {
            "device": "cpu",
            "use_mkldnn": bool(cfg.export.use_mkldnn),
            "cpu_threads": int(cfg.export.cpu_threads),
            "precision": cfg.export.precision,
            "use_tensorrt": False,
            "trt_min_subgraph_size": 3,
            "ir_optim": True,
            "onednn_cache_capacity": 10,
        },
        "postprocess": {
            "score_thresh": float(pp.score_thresh),
            "nms_thresh": float(pp.nms_thresh),
            "max_dets": int(pp.max_dets),
            "pre_nms_topk": int(pp.pre_nms_topk),
            "box_rule": pp.box_rule,  # in the graph, except dropping empty boxes (the predictor does that)
        },
        "inputs": {"image": [-1, 3, -1, -1], "im_shape": [-1, 2], "scale_factor": [-1, 2]},
        "outputs": {"bboxes": "[K, 6] label, score, x1, y1, x2, y2 (original pixels)", "bbox_num": "[N] int32"},
        "class_names": [str(n) for n in class_names],
        "category_ids": [int(c) for c in category_ids],
    }


def write_infer_cfg(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` as YAML with a header explaining which keys may be edited."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(_HEADER)
        yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True, default_flow_style=None, width=120)


def export_model(
    model: paddle.nn.Layer,
    cfg: Config,
    output_dir: str,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    with_nms: Optional[bool] = None,
) -> str:
    """Trace ``model`` with dynamic shapes, save ``output_dir/model.*`` and ``infer_cfg.yml``; returns output_dir.

    ``with_nms`` (default ``cfg.export.with_nms``): the graph ends with decoding + NMS (the deployable
    model); False saves the raw head outputs of :class:`HeadOnlyModel` (for benchmarks).
    Must run with ``FLAGS_use_mkldnn`` off (to_static with it on crashes in Paddle 3.3).
    """
    if os.environ.get("FLAGS_use_mkldnn", "0").lower() in ("1", "true"):
        raise RuntimeError("export: unset FLAGS_use_mkldnn (paddle.jit.to_static crashes with it on)")
    with_nms = cfg.export.with_nms if with_nms is None else with_nms
    os.makedirs(output_dir, exist_ok=True)
    model.eval()
    wrapper = InferenceModel(model) if with_nms else HeadOnlyModel(model)
    wrapper.eval()
    static = paddle.jit.to_static(wrapper, input_spec=input_spec(with_nms), full_graph=True)
    paddle.jit.save(static, os.path.join(output_dir, MODEL_PREFIX))
    prog, params = find_model_files(output_dir)
    data = build_infer_cfg(cfg, class_names, category_ids, os.path.basename(prog), os.path.basename(params), with_nms)
    write_infer_cfg(os.path.join(output_dir, INFER_CFG_NAME), data)
    return output_dir


# ------------------------------------------------------------------------------------------------
# Checking an export against dygraph
# ------------------------------------------------------------------------------------------------


def make_check_images(seed: int = 0) -> list[np.ndarray]:
    """Three deterministic BGR test images of different sizes (none a multiple of 32 on both sides)
    with textured shapes, so even a random-weight model yields detections to compare."""
    rng = np.random.default_rng(seed)
    images = []
    for h, w in ((240, 320), (301, 437), (415, 263)):
        img = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        for _ in range(6):
            x1, y1 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            x2, y2 = x1 + int(rng.integers(20, min(160, w - x1))), y1 + int(rng.integers(20, min(160, h - y1)))
            color = tuple(int(c) for c in rng.integers(60, 255, size=3))
            if rng.random() < 0.5:
                cv2.rectangle(img, (x1, y1), (x2, y2), color, -1)
            else:
                cv2.ellipse(
                    img, ((x1 + x2) // 2, (y1 + y2) // 2), ((x2 - x1) // 2, (y2 - y1) // 2), 0, 0, 360, color, -1
                )
        images.append(img)
    return images


@dataclass
class ExportCheck:
    """Result of :func:`check_export`: one line per (size, batch) case, whether all passed, and how
    many reference detections were compared (0 means the check proved nothing: use other images)."""

    lines: list[str] = field(default_factory=list)
    passed: bool = True
    compared: int = 0

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        if self.passed and self.compared == 0:
            verdict += " (but no detections were compared: pass real images)"
        return "\n".join(self.lines + [f"export check: {verdict}"])


def compare_detections(
    ref: Any,
    got: Any,
    max_dets: int,
    min_score: float,
    score_tol: float,
    box_tol: float,
    iou_thresh: float = 0.99,
    min_recall: float = 1.0,
) -> tuple[bool, MatchStats]:
    """Do ``got`` detections reproduce ``ref`` (both with boxes/scores/labels)?

    Every reference detection with score >= ``min_score`` needs a partner (same label, IoU >=
    ``iou_thresh``, |score diff| <= score_tol, coordinates within box_tol px) and vice versa; with
    ``min_recall`` < 1 that fraction of partners suffices both ways (different kernels can flip an NMS
    decision between boxes whose IoU is right at the NMS threshold). When a set is full
    (``max_dets`` detections), its weakest detections are exempt: tiny score differences legitimately
    change which detection is the ``max_dets``-th.
    """
    floor = float(min_score)
    for det in (ref, got):
        if len(det.scores) >= max_dets:
            floor = max(floor, float(det.scores.min()) + 2 * score_tol)
    fwd = match_detections(ref, got, iou_thresh=iou_thresh, min_score=floor, other_min_score=floor - 2 * score_tol)
    back = match_detections(
        got, ref, iou_thresh=iou_thresh, min_score=floor + 2 * score_tol, other_min_score=floor - 4 * score_tol
    )
    ok = (
        fwd.recall >= min_recall
        and back.recall >= min_recall
        and fwd.max_score_diff <= score_tol
        and fwd.max_box_diff <= box_tol
    )
    return ok, fwd


def check_export(
    model: paddle.nn.Layer,
    cfg: Config,
    model_dir: str,
    images: Optional[Sequence[np.ndarray]] = None,
    sizes: Optional[Sequence[tuple[int, int]]] = None,
    runtime: Optional[dict[str, Any]] = None,
    min_score: float = 0.05,
    score_tol: float = 2e-3,
    box_tol: float = 0.5,
) -> ExportCheck:
    """Reload ``model_dir`` with Paddle Inference and compare it with dygraph ``model``.

    Runs ``images`` (default :func:`make_check_images`, sizes not multiples of 32) at several
    (short, max) ``sizes`` (default: the config's test size and a smaller odd one), batch 1 and 2,
    through both and requires :func:`compare_detections` to pass for every image. ``runtime``
    overrides DeployPredictor options (default: those in infer_cfg.yml, i.e. what users run).
    """
    from fcos.deploy.predictor import DeployPredictor

    images = list(images) if images is not None else make_check_images()
    inp = cfg.input
    if sizes is None:
        sizes = [(inp.test_short, inp.test_max), (inp.test_short * 3 // 4 + 5, inp.test_max * 3 // 4 + 7)]
    predictor = DeployPredictor(model_dir, **(runtime or {}))
    max_dets = int(cfg.model.postprocess.max_dets)
    drop_empty = drops_empty_boxes(cfg.model.postprocess.box_rule)
    check = ExportCheck()
    model.eval()
    for short, max_size in sizes:
        predictor.cfg.input.test_short, predictor.cfg.input.test_max = short, max_size
        for batch_size in (1, 2):
            case_ok, compared, worst_sd, worst_bd = True, 0, 0.0, 0.0
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                batch = preprocess(chunk, inp, short=short, max_size=max_size)
                with paddle.no_grad():
                    bboxes, bbox_num = model(
                        paddle.to_tensor(batch.images),
                        paddle.to_tensor(batch.im_shape),
                        paddle.to_tensor(batch.scale_factor),
                    )
                ref = split_detections(bboxes.numpy(), bbox_num.numpy(), drop_empty=drop_empty)
                got = predictor.predict(chunk, keep_images=False)
                for r, g in zip(ref, got):
                    ok, stats = compare_detections(_as_results(r), g, max_dets, min_score, score_tol, box_tol)
                    case_ok &= ok
                    compared += stats.num_ref
                    worst_sd = max(worst_sd, stats.max_score_diff)
                    worst_bd = max(worst_bd, stats.max_box_diff)
            check.passed &= case_ok
            check.compared += compared
            check.lines.append(
                f"  size {short}/{max_size} batch {batch_size}: {'ok' if case_ok else 'MISMATCH'} "
                f"({compared} dygraph detections compared, max |score diff| {worst_sd:.2e}, "
                f"max box diff {worst_bd:.3f} px)"
            )
    check.lines.insert(0, f"export check: dygraph vs {predictor.describe()}")  # after the runs: fallbacks known
    return check


def _as_results(det: dict[str, np.ndarray]) -> Any:
    from fcos.inference.results import Results

    return Results(det["boxes"], det["scores"], det["labels"])


# ------------------------------------------------------------------------------------------------
# ONNX (optional extra: pip install "fcos-paddle[onnx]")
# ------------------------------------------------------------------------------------------------


def export_onnx(model_dir: str, onnx_path: Optional[str] = None, opset: int = 16) -> str:
    """Convert an export directory to ONNX (``model_dir/model.onnx`` unless ``onnx_path``) with paddle2onnx.

    NMS becomes ONNX ``NonMaxSuppression`` (opset >= 11). Raises RuntimeError when paddle2onnx is missing.
    """
    try:
        import paddle2onnx
    except ImportError as e:
        raise RuntimeError('ONNX export needs paddle2onnx: pip install "fcos-paddle[onnx]"') from e
    prog, params = find_model_files(model_dir)
    onnx_path = onnx_path or os.path.join(model_dir, "model.onnx")
    paddle2onnx.export(
        prog, params, save_file=onnx_path, opset_version=opset, enable_onnx_checker=True, optimize_tool="None"
    )
    _fix_onnx(onnx_path, _group_norm_epsilon(prog))
    return onnx_path


def _group_norm_epsilon(program_file: str, default: float = 1e-5) -> float:
    """The ``epsilon`` of the group_norm ops in a Paddle 3 ``model.json`` (``default`` when absent or
    for Paddle 2 programs). Raises ValueError when the ops disagree (the ONNX fix-up needs one value)."""
    if not program_file.endswith(".json"):
        return default
    import json

    with open(program_file, encoding="utf-8") as f:
        program = json.load(f)
    values = set()
    for region in program.get("program", {}).get("regions", []):
        for block in region.get("blocks", []):
            for op in block.get("ops", []):
                if str(op.get("#", "")).endswith("group_norm"):
                    for attr in op.get("A") or []:
                        if isinstance(attr, dict) and attr.get("N") == "epsilon":
                            values.add(float(attr["AT"]["D"]))
    if len(values) > 1:
        raise ValueError(f"{program_file}: group_norm ops use different epsilons {sorted(values)}")
    return values.pop() if values else default


def _fix_onnx(onnx_path: str, group_norm_eps: float) -> dict[str, int]:
    """Repair two paddle2onnx 2.1 conversion faults in place; returns how many nodes were fixed.

    * group_norm becomes InstanceNormalization with an uninitialised ``epsilon`` (a different random
      value on every conversion: NaN or wrong outputs); it is set to ``group_norm_eps``.
    * Paddle's ``nms_top_k=-1`` ("no limit") becomes ``max_output_boxes_per_class=-1``, which ONNX
      Runtime reads as "select nothing"; it is set to the int64 maximum.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(onnx_path)
    fixed = {"InstanceNormalization": 0, "NonMaxSuppression": 0}
    for node in model.graph.node:
        if node.op_type != "InstanceNormalization":
            continue
        attrs = [a for a in node.attribute if a.name == "epsilon"]
        if attrs:
            attrs[0].f = float(group_norm_eps)
        else:
            node.attribute.append(onnx.helper.make_attribute("epsilon", float(group_norm_eps)))
        fixed["InstanceNormalization"] += 1
    producers = {out: node for node in model.graph.node for out in node.output}
    inits = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "NonMaxSuppression" or len(node.input) < 3 or not node.input[2]:
            continue
        name = node.input[2]
        big = numpy_helper.from_array(np.array([np.iinfo(np.int64).max], dtype=np.int64), name)
        if name in inits and numpy_helper.to_array(inits[name]).min() < 0:
            inits[name].CopyFrom(big)
            fixed["NonMaxSuppression"] += 1
        elif name in producers and producers[name].op_type == "Constant":
            attr = producers[name].attribute[0]
            if attr.name == "value" and numpy_helper.to_array(attr.t).min() < 0:
                attr.t.CopyFrom(big)
                fixed["NonMaxSuppression"] += 1
    onnx.save(model, onnx_path)
    return fixed


def check_onnx(
    model_dir: str,
    onnx_file: Optional[str] = None,
    images: Optional[Sequence[np.ndarray]] = None,
    min_score: float = 0.05,
    score_tol: float = 2e-3,
    box_tol: float = 0.5,
    min_recall: float = 0.98,
) -> ExportCheck:
    """Compare ONNX Runtime on ``onnx_file`` with Paddle Inference (native fp32) on the same export,
    at the infer_cfg.yml size, batch 1 and 2: :func:`compare_detections` at IoU >= 0.9 with at
    least ``min_recall`` of the detections matched both ways."""
    from fcos.deploy.onnx_predictor import OnnxPredictor
    from fcos.deploy.predictor import DeployPredictor

    images = list(images) if images is not None else make_check_images()
    paddle_pred = DeployPredictor(model_dir, use_mkldnn=False, precision="fp32")
    onnx_pred = OnnxPredictor(model_dir, onnx_file=onnx_file)
    max_dets = int((paddle_pred.cfg.extra.get("postprocess") or {}).get("max_dets", 100))
    check = ExportCheck(lines=[f"ONNX check: {onnx_pred.onnx_file} on ONNX Runtime vs Paddle Inference"])
    for batch_size in (1, 2):
        case_ok, compared, worst = True, 0, 1.0
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            for r, g in zip(paddle_pred.predict(chunk, keep_images=False), onnx_pred.predict(chunk, keep_images=False)):
                ok, stats = compare_detections(r, g, max_dets, min_score, score_tol, box_tol, 0.9, min_recall)
                case_ok &= ok
                compared += stats.num_ref
                worst = min(worst, stats.recall)
        check.passed &= case_ok
        check.compared += compared
        check.lines.append(
            f"  batch {batch_size}: {'ok' if case_ok else 'MISMATCH'} ({compared} detections compared, "
            f"lowest per-image match rate {worst:.1%})"
        )
    return check
