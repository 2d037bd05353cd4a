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
from fcos.deploy.predictor import INFER_CFG_NAME, DeployPredictor, find_model_files

MODEL_PREFIX = "model"


class InferenceModel(paddle.nn.Layer):
    """The exported computation: ``forward(image, im_shape, scale_factor)``.

    image (N, 3, H, W) float32 padded; im_shape (N, 2) resized (h, w); scale_factor (N, 2) (sy, sx).
    With ``with_nms`` returns (bboxes [K, 6], bbox_num [N] int32) like ``FCOS`` in eval mode; without,
    the raw head outputs (per level cls logits, box regression, centerness logits), which benchmarks
    use to time the network apart from decoding + NMS.
    """

    def __init__(self, model: paddle.nn.Layer, with_nms: bool = True) -> None:
        super().__init__()
        self.model = model
        self.with_nms = with_nms

    def forward(self, image: paddle.Tensor, im_shape: paddle.Tensor, scale_factor: paddle.Tensor) -> Any:
        if self.with_nms:
            return self.model(image, im_shape, scale_factor)
        cls_logits, bbox_reg, ctr_logits = self.model.forward_head(image)
        return tuple(cls_logits) + tuple(bbox_reg) + tuple(ctr_logits)


def input_spec() -> list[paddle.static.InputSpec]:
    """Dynamic batch and image size: image [None, 3, None, None], im_shape and scale_factor [None, 2]."""
    return [
        paddle.static.InputSpec([None, 3, None, None], "float32", "image"),
        paddle.static.InputSpec([None, 2], "float32", "im_shape"),
        paddle.static.InputSpec([None, 2], "float32", "scale_factor"),
    ]


_HEADER = """\
# fcos-paddle inference config, read by fcos.deploy.DeployPredictor (tools/deploy_infer.py).
# Edit freely; changes take effect without re-exporting:
#   preprocess.target_size / max_size: resize short side / cap long side (any size works: the graph is dynamic)
#   draw_threshold: minimum score drawn and written by the tools
#   runtime.device cpu|gpu, runtime.use_mkldnn (oneDNN on CPU), runtime.cpu_threads (0 = all cores),
#   runtime.precision fp32|bf16 (CPU with AVX512-BF16/AMX)|fp16 (GPU TensorRT), runtime.use_tensorrt
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
            "channel_order": inp.channel_order,
            "to_unit": bool(inp.to_unit),
            "mean": [float(v) for v in inp.mean],
            "std": [float(v) for v in inp.std],
        },
        "runtime": {
            "device": "cpu",
            "use_mkldnn": True,
            "cpu_threads": 0,
            "precision": "fp32",
            "use_tensorrt": False,
            "trt_min_subgraph_size": 3,
        },
        "postprocess": {
            "score_thresh": float(pp.score_thresh),
            "nms_thresh": float(pp.nms_thresh),
            "max_dets": int(pp.max_dets),
            "pre_nms_topk": int(pp.pre_nms_topk),
        },
        "inputs": {"image": [-1, 3, -1, -1], "im_shape": [-1, 2], "scale_factor": [-1, 2]},
        "outputs": {"bboxes": "[K, 6] label, score, x1, y1, x2, y2 (original pixels)", "bbox_num": "[N] int32"},
        "class_names": [str(n) for n in class_names],
        "category_ids": [int(c) for c in category_ids],
    }


def write_infer_cfg(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(_HEADER)
        yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True, default_flow_style=None, width=120)


def export_model(
    model: paddle.nn.Layer,
    cfg: Config,
    output_dir: str,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    with_nms: bool = True,
) -> str:
    """Trace ``model`` with dynamic shapes, save ``output_dir/model.*`` and ``infer_cfg.yml``; returns output_dir.

    Must run with ``FLAGS_use_mkldnn`` off (to_static with it on segfaults in Paddle 3.3).
    """
    if os.environ.get("FLAGS_use_mkldnn", "0").lower() in ("1", "true"):
        raise RuntimeError("export: unset FLAGS_use_mkldnn (paddle.jit.to_static crashes with it on)")
    os.makedirs(output_dir, exist_ok=True)
    model.eval()
    wrapper = InferenceModel(model, with_nms=with_nms)
    wrapper.eval()
    static = paddle.jit.to_static(wrapper, input_spec=input_spec(), full_graph=True)
    paddle.jit.save(static, os.path.join(output_dir, MODEL_PREFIX))
    prog, params = find_model_files(output_dir)
    data = build_infer_cfg(cfg, class_names, category_ids, os.path.basename(prog), os.path.basename(params), with_nms)
    write_infer_cfg(os.path.join(output_dir, INFER_CFG_NAME), data)
    return output_dir


# ------------------------------------------------------------------------------------------------
# Checking an export against dygraph
# ------------------------------------------------------------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of xyxy boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


@dataclass
class MatchStats:
    """How well detections ``b`` reproduce reference ``a`` (greedy, same label, IoU >= iou_thresh)."""

    num_ref: int
    num_other: int
    matched: int
    max_score_diff: float
    max_box_diff: float

    @property
    def recall(self) -> float:
        """Matched fraction of the reference detections (1.0 when both are empty)."""
        return self.matched / self.num_ref if self.num_ref else (1.0 if self.num_other == 0 else 0.0)

    @property
    def precision(self) -> float:
        return self.matched / self.num_other if self.num_other else (1.0 if self.num_ref == 0 else 0.0)


def match_detections(a: Any, b: Any, iou_thresh: float = 0.9, min_score: float = 0.0) -> MatchStats:
    """Greedy one-to-one matching of two detection sets (objects with boxes/scores/labels, e.g. Results),
    strongest reference first; only detections with ``score >= min_score`` take part."""
    ka, kb = a.scores >= min_score, b.scores >= min_score
    ab, asc, al = a.boxes[ka], a.scores[ka], a.labels[ka]
    bb, bsc, bl = b.boxes[kb], b.scores[kb], b.labels[kb]
    iou = box_iou(ab, bb)
    used = np.zeros(len(bb), dtype=bool)
    matched, max_sd, max_bd = 0, 0.0, 0.0
    for i in np.argsort(-asc):
        cand = np.where((bl == al[i]) & ~used & (iou[i] >= iou_thresh))[0] if len(bb) else []
        if len(cand) == 0:
            continue
        j = cand[np.argmax(iou[i, cand])]
        used[j] = True
        matched += 1
        max_sd = max(max_sd, abs(float(asc[i]) - float(bsc[j])))
        max_bd = max(max_bd, float(np.abs(ab[i] - bb[j]).max()))
    return MatchStats(len(ab), len(bb), matched, max_sd, max_bd)


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
    """Result of :func:`check_export`: one line per (size, batch) case and whether all passed."""

    lines: list[str] = field(default_factory=list)
    passed: bool = True

    def __str__(self) -> str:
        return "\n".join(self.lines + [f"export check: {'PASSED' if self.passed else 'FAILED'}"])


def check_export(
    model: paddle.nn.Layer,
    cfg: Config,
    model_dir: str,
    images: Optional[Sequence[np.ndarray]] = None,
    sizes: Optional[Sequence[tuple[int, int]]] = None,
    use_mkldnn: bool = False,
    min_score: float = 0.05,
    score_tol: float = 2e-3,
    box_tol: float = 1.0,
) -> ExportCheck:
    """Reload ``model_dir`` with Paddle Inference and compare it with dygraph ``model`` on ``images``
    at several (short, max) ``sizes`` (default: the config's test size and one not a multiple of 32),
    batch 1 and 2. Detections with score >= ``min_score`` must match one-to-one (same label,
    IoU >= 0.99, |score diff| <= score_tol, coordinates within box_tol pixels)."""
    from fcos.modeling.postprocess import split_detections

    images = list(images) if images is not None else make_check_images()
    inp = cfg.input
    if sizes is None:
        sizes = [(inp.test_short, inp.test_max), (inp.test_short * 3 // 4 + 5, inp.test_max * 3 // 4 + 7)]
    predictor = DeployPredictor(model_dir, use_mkldnn=use_mkldnn, precision="fp32")
    check = ExportCheck()
    model.eval()
    for short, max_size in sizes:
        predictor.cfg.input.test_short, predictor.cfg.input.test_max = short, max_size
        for batch_size in (1, 2):
            worst = None
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                batch = preprocess(chunk, inp, short=short, max_size=max_size)
                with paddle.no_grad():
                    bboxes, bbox_num = model(
                        paddle.to_tensor(batch.images),
                        paddle.to_tensor(batch.im_shape),
                        paddle.to_tensor(batch.scale_factor),
                    )
                ref = split_detections(bboxes, bbox_num)
                got = predictor.predict(chunk, keep_images=False)
                for r, g in zip(ref, got):
                    ref_r = _as_results(r)
                    stats = match_detections(ref_r, g, iou_thresh=0.99, min_score=min_score)
                    back = match_detections(g, ref_r, iou_thresh=0.99, min_score=min_score + 2 * score_tol)
                    ok = (
                        stats.matched == stats.num_ref
                        and back.matched == back.num_ref
                        and stats.max_score_diff <= score_tol
                        and stats.max_box_diff <= box_tol
                    )
                    if worst is None or not ok or stats.max_box_diff > worst[1].max_box_diff:
                        worst = (ok and (worst is None or worst[0]), stats)
            assert worst is not None
            passed, stats = worst
            check.passed &= passed
            check.lines.append(
                f"size {short}/{max_size} batch {batch_size}: {'ok' if passed else 'MISMATCH'} "
                f"(e.g. {stats.matched}/{stats.num_ref} dygraph detections >= {min_score} matched, "
                f"max |score diff| {stats.max_score_diff:.2e}, max box diff {stats.max_box_diff:.3f} px)"
            )
    return check


def _as_results(det: dict[str, np.ndarray]) -> Any:
    from fcos.inference.results import Results

    return Results(det["boxes"], det["scores"], det["labels"])


# ------------------------------------------------------------------------------------------------
# ONNX (optional extra: pip install "fcos-paddle[onnx]")
# ------------------------------------------------------------------------------------------------


def export_onnx(model_dir: str, onnx_path: Optional[str] = None, opset: int = 16) -> str:
    """Convert an export directory to ONNX with paddle2onnx (offline: no optimizer download step)."""
    try:
        import paddle2onnx
    except ImportError as e:
        raise RuntimeError('ONNX export needs paddle2onnx: pip install "fcos-paddle[onnx]"') from e
    prog, params = find_model_files(model_dir)
    onnx_path = onnx_path or os.path.join(model_dir, "model.onnx")
    paddle2onnx.export(
        prog, params, save_file=onnx_path, opset_version=opset, enable_onnx_checker=True, optimize_tool="None"
    )
    return onnx_path
