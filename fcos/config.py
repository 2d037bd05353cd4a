"""Typed configuration: dataclasses loaded from YAML with strict keys and dotted overrides.

A config file is a YAML mapping whose sections mirror :class:`Config`. One level of
``_base_`` inheritance is allowed (a path relative to the file); mappings merge key by key,
lists and scalars replace. Unknown keys are errors that name the key and the file, so a
typo never silently falls back to a default.

    cfg = load_config("configs/rt_dla34.yml", overrides=["train.max_steps=10", "data.batch_size=2"])
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the file."""


# The pipeline rules' choices, one definition for the config check, the code that applies them and infer_cfg.yml
RESIZE_BACKENDS = ("pil", "opencv", "torch_float")  # input.resize_backend (fcos/data/preprocess.py)
SIZE_ROUNDINGS = ("round", "floor")  # input.size_rounding (fcos/data/preprocess.py)
BOX_RULES = ("clip_drop_empty", "clip_keep", "none")  # model.postprocess.box_rule (fcos/modeling/postprocess.py)
CHANNEL_ORDERS = ("BGR", "RGB")  # input.channel_order
INTERPOLATIONS = ("bilinear", "nearest", "area")  # input.interp (fcos/data/preprocess.py)
EMPTY_IMAGE_RULES = ("valid_box", "any_annotation", "box_over_1px", "positive_box")  # data.empty_image_rule (coco.py)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class BackboneConfig:
    """Backbone returning C3, C4, C5 (strides 8, 16, 32)."""

    name: str = "dla34"  # "dla34" | "resnet50"
    norm: str = "bn"  # "bn" | "syncbn" (BN, converted to SyncBatchNorm on multi-GPU CUDA) | "frozen_bn"
    freeze_at: int = -1  # -1: nothing frozen; 1: stem; 2: stem + first stage (detectron2 semantics)
    stride_in_1x1: bool = (
        False  # ResNet: stride in the 1x1 conv (detectron2 MSRA) or the 3x3 (torchvision, PaddleDetection)
    )
    depth: int = 50  # ResNet depth: 50 | 101
    dla_levels: list[int] = field(default_factory=lambda: [1, 1, 1, 2, 2, 1])
    dla_channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256, 512])
    pretrained: Optional[str] = None  # converted ImageNet weights (.safetensors / .npz / .pdparams)


@dataclass
class FPNConfig:
    out_channels: int = 256
    num_extra_levels: int = 0  # 0: P3-P5 (FCOS_RT); 2: P6, P7
    extra_source: str = "p5"  # "p5" | "c5": input of the P6 conv
    relu_before_extra: bool = True  # ReLU between P6 and P7


@dataclass
class HeadConfig:
    num_convs: int = 4  # convs in each of the cls and bbox towers
    num_share_convs: int = 0  # convs in a tower shared by both branches (AdelaiDet NUM_SHARE_CONVS)
    norm: str = "gn"  # "gn" | "bn" (one BN per level) | "none"
    gn_groups: int = 32
    centerness_on_reg: bool = True  # centerness predicted from the bbox tower (False: cls tower)
    use_scale: bool = True  # learnable per-level Scale on the regression output
    norm_reg_targets: bool = True  # regression in units of the level stride, ReLU (False: exp)
    prior_prob: float = 0.01
    point_offset: float = 0.5  # point = k * stride + point_offset * stride (AdelaiDet 0.5, torchvision 0.0)
    grid_strides: bool = False  # torchvision: points every padded-size // feature-size pixels (P6/P7 differ)


@dataclass
class AssignerConfig:
    sizes_of_interest: list[float] = field(default_factory=lambda: [64.0, 128.0])
    inclusive_bounds: bool = True  # AdelaiDet: lo <= max(ltrb) <= hi; PaddleDetection/torchvision: lo < m < hi
    center_sampling_radius: float = 1.5  # 0 disables center sampling
    # > 0: rank candidate boxes by float32(area_rank_offset - area) as torchvision does with 1e8 (areas within
    # float32 rounding there, 8 px^2, tie and the first box wins); 0: exact smallest area (AdelaiDet, PaddleDetection)
    area_rank_offset: float = 0.0


@dataclass
class LossConfig:
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss: str = "giou"  # "giou" | "iou" | "linear_iou"
    iou_smooth: float = 1.0  # AdelaiDet (inter + 1) / (union + 1); torchvision 0 (eps only)
    box_weight_by_ctr: bool = True  # weight box loss by centerness targets, normalise by their sum
    reduce_across_devices: bool = (
        True  # all-reduce normalisers (AdelaiDet); False: per device (PaddleDetection, torchvision)
    )
    cls_normalizer: str = "fg"  # "fg" | "moving_fg"


@dataclass
class PostprocessConfig:
    score_thresh: float = 0.05
    thresh_with_ctr: bool = False  # threshold the final score (cls*ctr or its sqrt) instead of cls alone
    sqrt_score: bool = True  # final score sqrt(cls * ctr) (AdelaiDet, torchvision) or cls * ctr
    pre_nms_topk: int = 1000  # per level and image
    nms_thresh: float = 0.6
    max_dets: int = 100
    clip_before_nms: bool = False  # torchvision clips boxes to the image before NMS; AdelaiDet after
    # What happens to boxes after NMS, as each reference does it (fcos/modeling/postprocess.py):
    # "clip_drop_empty": scale to the original image, clip to it, drop zero-area boxes (detectron2 detector_postprocess)
    # "clip_keep": clip to the resized image, scale back, keep zero-area boxes (torchvision)
    # "none": scale back only; boxes may reach outside the image (PaddleDetection)
    box_rule: str = "clip_drop_empty"
    # torchvision's batched_nms (AdelaiDet, torchvision) never lets a zero-area box suppress or be suppressed:
    # the IoU of two of them is 0/0, and NaN > thresh is false. Paddle's multiclass_nms (PaddleDetection) keeps a
    # box only if IoU <= thresh, also false for NaN, so it drops a zero-area box under another of its class.
    nms_keeps_empty: bool = True


@dataclass
class ModelConfig:
    num_classes: int = 80
    strides: list[int] = field(default_factory=lambda: [8, 16, 32])
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    assigner: AssignerConfig = field(default_factory=AssignerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)


@dataclass
class InputConfig:
    """Preprocessing shared by training, evaluation, inference and deployment."""

    channel_order: str = "BGR"  # channel order the network expects: "BGR" | "RGB"
    to_unit: bool = False  # divide pixel values by 255 before mean/std
    mean: list[float] = field(default_factory=lambda: [103.53, 116.28, 123.675])  # in channel_order
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    test_short: int = 512
    test_max: int = 736
    train_shorts: list[int] = field(default_factory=lambda: list(range(256, 609, 32)))
    train_max: int = 900
    size_divisor: int = 32
    interp: str = "bilinear"  # "bilinear" | "nearest" | "area"
    # How the image is resized, as each reference does it (fcos/data/preprocess.py):
    # "pil": Pillow on the uint8 image (detectron2 ResizeTransform; antialiased when shrinking)
    # "opencv": cv2.resize on the uint8 image (PaddleDetection)
    # "torch_float": bilinear, half-pixel centres, no antialias, on the normalised float image
    #   (torchvision GeneralizedRCNNTransform: F.interpolate(..., recompute_scale_factor=True))
    resize_backend: str = "pil"
    # Resized size: "round" int(x + 0.5) with the short side exactly test_short (detectron2, PaddleDetection);
    # "floor" floor(side * scale), scale = min(short / min side, max / max side) (torchvision)
    size_rounding: str = "round"
    # Training: a box whose width or height is <= this many pixels after the train transform (resize, flip,
    # clip) is dropped. detectron2 (rt_*): 1e-5 (filter_empty_instances, Boxes.nonempty); torchvision and
    # PaddleDetection drop none after resizing, which 0.0 follows (only boxes clipped to nothing go).
    train_min_box_size: float = 1e-5


@dataclass
class DatasetSplit:
    image_dir: str = ""
    ann_file: str = ""


@dataclass
class DataConfig:
    train: DatasetSplit = field(default_factory=DatasetSplit)
    val: DatasetSplit = field(default_factory=DatasetSplit)
    class_names: list[str] = field(default_factory=list)  # empty: taken from the dataset / weights (COCO 80)
    batch_size: int = 16  # total over all devices
    val_batch_size: int = 1
    num_workers: int = 4  # DataLoader worker processes; 0 loads in the training process
    use_shared_memory: bool = True  # hand batches over through /dev/shm (switched off automatically when too small)
    flip_prob: float = 0.5
    # train split: leave out images without (non-crowd) boxes, as detectron2 (FILTER_EMPTY_ANNOTATIONS), torchvision's
    # recipe (_coco_remove_images_without_annotations) and PaddleDetection (allow_empty False) do; False keeps them
    # as background images
    drop_images_without_boxes: bool = False
    # Per-device training batches of one aspect-ratio group (fcos/data/grouping.py): "none" (PaddleDetection),
    # "orientation" (detectron2 ASPECT_RATIO_GROUPING: width > height or not), "quantized" (torchvision
    # --aspect-ratio-group-factor: 2 * aspect_ratio_group_factor + 2 log-spaced width/height bins)
    aspect_ratio_grouping: str = "none"
    # with drop_images_without_boxes, which images count as empty (fcos/data/coco.py): "valid_box" no box left after
    # loading; "any_annotation" no non-crowd annotation (detectron2); "box_over_1px" no annotation, crowd included,
    # with a JSON bbox > 1 px both ways (torchvision); "positive_box" no non-crowd bbox > 1e-5 px (PaddleDetection)
    empty_image_rule: str = "valid_box"
    drop_zero_area: bool = False  # leave out annotations whose JSON area is <= 0 (PaddleDetection COCODataSet)
    box_decimals: int = -1  # round loaded box corners to this many decimals (PaddleDetection COCODataSet: 3); -1: no
    aspect_ratio_group_factor: int = 3
    albumentations: list[dict[str, Any]] = field(default_factory=list)  # [{name: Blur, p: 0.1, ...}]
    check_on_start: bool = True  # run the dataset checks before training


@dataclass
class OptimConfig:
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    bias_lr_factor: float = 1.0
    # LR factor on the biases of the head's tower convs only (PaddleDetection FCOSFeat: ConvNormLayer lr_scale 2.0)
    tower_bias_lr_factor: float = 1.0
    clip_grad_norm: Optional[float] = None
    base_batch_size: int = 16  # batch the lr was tuned for; linear scaling rule when data.batch_size differs
    scale_lr: bool = True


@dataclass
class ScheduleConfig:
    max_steps: int = 360000
    milestones: list[int] = field(default_factory=lambda: [300000, 340000])
    gamma: float = 0.1
    warmup_steps: int = 1000
    warmup_factor: float = 0.001
    # Epoch-based recipes (torchvision, PaddleDetection): > 0 trains this many epochs of the training set, with the
    # LR steps at ``milestone_epochs``; max_steps and milestones then follow the dataset (images // batch_size
    # steps per epoch, the last partial batch dropped) and the values given for them are replaced.
    epochs: int = 0
    milestone_epochs: list[int] = field(default_factory=list)
    # Step-based recipes: when data.batch_size differs from optim.base_batch_size (optim.scale_lr on), also divide
    # max_steps, milestones, warmup_steps, train.eval_every and train.ckpt_every by k = batch_size / base_batch_size
    # (int(round(x / k))) while the LR is multiplied by k: detectron2's DefaultTrainer.auto_scale_workers (active when
    # SOLVER.REFERENCE_WORLD_SIZE != 0). False: only the LR scales. Epoch-based schedules follow the batch already.
    scale_steps: bool = False


@dataclass
class TrainConfig:
    output_dir: str = "output/run"
    seed: int = 0
    amp: bool = False
    amp_dtype: str = "float16"  # "float16" | "bfloat16"
    log_every: int = 20  # steps between log lines / metrics.csv rows / VisualDL scalars
    eval_every: int = 5000  # steps between COCO evaluations (0: only after the last step)
    ckpt_every: int = 5000  # steps between checkpoints/step_*.safetensors (0: only after the last step)
    keep_checkpoints: int = 3  # newest step checkpoints kept (best.safetensors is kept separately)
    monitor: str = "val/bbox_mAP"  # metric deciding best.safetensors (and early stopping)
    monitor_mode: str = "max"
    init_weights: Optional[str] = None  # weights-only load (fine-tuning)
    ema: bool = False
    ema_decay: float = 0.9998
    early_stopping_patience: int = 0  # evaluations without improvement; 0 = off
    nan_policy: str = "stop"  # "stop" | "skip"
    num_threads: int = 0  # CPU math threads; 0 = all cores
    cpu_conv: str = "auto"  # dygraph CPU convs (k > 1) + GroupNorm: "auto" | "onednn" | "paddle" (fcos/ops)
    vis_images: int = 4  # validation images drawn into VisualDL


@dataclass
class ExportConfig:
    """``tools/export.py`` options; the runtime keys are written to ``infer_cfg.yml`` (editable later)."""

    draw_threshold: float = 0.3  # minimum score drawn / written by the infer and deploy tools
    with_nms: bool = True  # box decoding + NMS inside the exported graph
    use_mkldnn: bool = True  # runtime default: oneDNN kernels on CPU
    cpu_threads: int = 0  # runtime default: math threads (0 = all cores)
    precision: str = "fp32"  # runtime default: "fp32" | "bf16" (CPU with AVX512-BF16/AMX) | "fp16" (GPU TensorRT)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    source: str = ""  # the file this config was loaded from (informational)


# --------------------------------------------------------------------------------------------
# YAML <-> dataclasses
# --------------------------------------------------------------------------------------------


def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _convert(value: Any, tp: Any, key: str, src: str) -> Any:
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{src}: key '{key}' may not be null")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: key '{key}' must be a mapping, got {value!r}")
        return _build(tp, value, key, src)
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{src}: key '{key}' must be a list, got {value!r}")
        return [_convert(v, item_tp, f"{key}[{i}]", src) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{src}: key '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{src}: key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{src}: key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{src}: key '{key}' must be a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: dict, prefix: str, src: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        full = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            close = difflib.get_close_matches(str(k), sorted(names), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(sorted(names))})"
            raise ConfigError(f"{src}: unknown key '{full}'{hint}")
        kwargs[k] = _convert(v, hints[k], full, src)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.subkey=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def config_from_dict(data: dict, src: str = "<dict>", overrides: Optional[list[str]] = None) -> Config:
    """Build a :class:`Config` from a nested dict, then apply ``key.sub=value`` overrides."""
    data = dict(data)
    data.pop("_base_", None)
    for ov in overrides or []:
        keys, value = _parse_override(ov)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if not isinstance(nxt, dict):
                nxt = {}
                node[k] = nxt
            node = nxt
        node[keys[-1]] = value
    where = src if not overrides else f"{src} (with overrides {' '.join(overrides)})"
    cfg = _build(Config, data, "", where)
    cfg.source = src
    validate_config(cfg, where)
    return cfg


def load_config(path: str, overrides: Optional[list[str]] = None) -> Config:
    """Load a YAML config with one level of ``_base_`` and apply dotted ``overrides``."""
    data = _read_yaml(path)
    base = data.pop("_base_", None)
    if base is not None:
        base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
        base_data = _read_yaml(base_path)
        if "_base_" in base_data:
            raise ConfigError(f"{base_path}: only one level of _base_ is allowed")
        data = _merge(base_data, data)
    return config_from_dict(data, src=path, overrides=overrides)


def config_to_dict(cfg: Config) -> dict:
    d = dataclasses.asdict(cfg)
    d.pop("source", None)
    return d


def dump_config(cfg: Config, path: str) -> None:
    """Write the resolved config (no ``_base_``) as YAML."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)


_CHOICES = {
    "model.backbone.name": ("dla34", "resnet50"),
    "model.backbone.norm": ("bn", "syncbn", "frozen_bn"),
    "model.fpn.extra_source": ("p5", "c5"),
    "model.head.norm": ("gn", "bn", "none"),
    "model.loss.box_loss": ("giou", "iou", "linear_iou"),
    "model.loss.cls_normalizer": ("fg", "moving_fg"),
    "input.channel_order": CHANNEL_ORDERS,
    "input.interp": INTERPOLATIONS,
    "input.resize_backend": RESIZE_BACKENDS,
    "input.size_rounding": SIZE_ROUNDINGS,
    "model.postprocess.box_rule": BOX_RULES,
    "data.aspect_ratio_grouping": ("none", "orientation", "quantized"),
    "data.empty_image_rule": EMPTY_IMAGE_RULES,
    "train.amp_dtype": ("float16", "bfloat16"),
    "train.monitor_mode": ("max", "min"),
    "train.nan_policy": ("stop", "skip"),
    "train.cpu_conv": ("auto", "onednn", "paddle"),
    "export.precision": ("fp32", "bf16", "fp16"),
}


def validate_config(cfg: Config, src: str = "<config>") -> None:
    """Cross-field checks; raises :class:`ConfigError` naming the key."""
    for key, choices in _CHOICES.items():
        obj: Any = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        if obj not in choices:
            raise ConfigError(f"{src}: key '{key}' must be one of {list(choices)}, got {obj!r}")
    if not cfg.input.train_min_box_size >= 0:
        raise ConfigError(f"{src}: key 'input.train_min_box_size' must be >= 0, got {cfg.input.train_min_box_size}")
    m = cfg.model
    n_levels = 3 + m.fpn.num_extra_levels
    if len(m.strides) != n_levels:
        raise ConfigError(
            f"{src}: key 'model.strides' has {len(m.strides)} entries but the FPN gives {n_levels} levels "
            f"(P3-P{2 + n_levels})"
        )
    if len(m.assigner.sizes_of_interest) != n_levels - 1:
        raise ConfigError(
            f"{src}: key 'model.assigner.sizes_of_interest' needs {n_levels - 1} bounds for {n_levels} levels, "
            f"got {len(m.assigner.sizes_of_interest)}"
        )
    if m.num_classes < 1:
        raise ConfigError(f"{src}: key 'model.num_classes' must be >= 1")
    if cfg.data.class_names and len(cfg.data.class_names) != m.num_classes:
        raise ConfigError(
            f"{src}: key 'data.class_names' has {len(cfg.data.class_names)} names but model.num_classes is {m.num_classes}"
        )
    for k in ("mean", "std"):
        if len(getattr(cfg.input, k)) != 3:
            raise ConfigError(f"{src}: key 'input.{k}' must have 3 values")
    if any(s == 0 for s in cfg.input.std):
        raise ConfigError(f"{src}: key 'input.std' may not contain 0")
    if cfg.input.resize_backend == "torch_float" and cfg.input.interp != "bilinear":
        raise ConfigError(f"{src}: key 'input.interp' must be 'bilinear' with input.resize_backend 'torch_float'")
    if cfg.input.size_divisor < 1:
        raise ConfigError(f"{src}: key 'input.size_divisor' must be >= 1")
    if cfg.schedule.milestone_epochs and cfg.schedule.epochs <= 0:
        raise ConfigError(f"{src}: key 'schedule.milestone_epochs' needs schedule.epochs > 0")
    if any(not 0 < e <= cfg.schedule.epochs for e in cfg.schedule.milestone_epochs):
        raise ConfigError(f"{src}: key 'schedule.milestone_epochs' must lie in 1..schedule.epochs")
    if cfg.data.box_decimals < -1:
        raise ConfigError(f"{src}: key 'data.box_decimals' must be -1 (no rounding) or >= 0")
    if cfg.data.aspect_ratio_group_factor < 0:
        raise ConfigError(f"{src}: key 'data.aspect_ratio_group_factor' must be >= 0")
    if cfg.schedule.scale_steps and cfg.schedule.epochs > 0:
        raise ConfigError(
            f"{src}: key 'schedule.scale_steps' is for step-based schedules; with schedule.epochs > 0 the steps "
            "already follow data.batch_size"
        )
    if list(cfg.schedule.milestones) != sorted(cfg.schedule.milestones):
        raise ConfigError(f"{src}: key 'schedule.milestones' must be increasing")
    if m.head.norm == "gn" and m.fpn.out_channels % m.head.gn_groups:
        raise ConfigError(
            f"{src}: key 'model.head.gn_groups' ({m.head.gn_groups}) must divide model.fpn.out_channels ({m.fpn.out_channels})"
        )
