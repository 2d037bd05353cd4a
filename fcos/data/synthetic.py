"""A synthetic COCO-format dataset of shapes (and a demo video) that needs no download.

Four classes, ``circle, square, triangle, star`` (COCO category ids 1..4, the order of
``configs/demo_shapes.yml``), drawn in several colours and sizes (16..160 px) over textured, noisy
backgrounds with clutter lines; objects may overlap (each keeps at least ``MIN_VISIBLE`` of its
pixels) and may be cut by the image border; some images have no objects at all.

Boxes are **exact**: every shape is rasterised into an object-id map (no anti-aliasing), and its box
is the tight pixel-edge box ``[x_min, y_min, x_max + 1, y_max + 1]`` around its visible pixels.

Everything is a function of the seed: image ``i`` of a split is drawn from
``np.random.default_rng([seed, split, i])``, so the same seed gives identical files and JSON, and
adding images to a split does not change the existing ones.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

import cv2
import numpy as np
from tqdm import tqdm

from fcos.data.annotations import write_json

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star")
SHAPE_CATEGORY_IDS: tuple[int, ...] = (1, 2, 3, 4)
MIN_VISIBLE = 0.6  # fraction of an object's pixels that must stay visible (occlusion and image border)
PARAMS_FILE = "synthetic.json"
DEFAULT_SCENE: dict[str, Any] = {"max_objects": 6, "empty_prob": 0.08}  # render_scene options of the tool
_SPLIT_CODE = {"train": 0, "val": 1}

# Saturated BGR colours; each object gets one of them with a random jitter.
_PALETTE = np.array(
    [
        [40, 40, 220],  # red
        [40, 200, 40],  # green
        [220, 80, 30],  # blue
        [30, 210, 230],  # yellow
        [200, 40, 200],  # magenta
        [220, 220, 40],  # cyan
        [20, 120, 240],  # orange
        [245, 245, 245],  # white
        [25, 25, 25],  # black
    ],
    dtype=np.float32,
)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A (h, w, 3) float32 textured background: smooth colour field + optional stripes + clutter lines."""
    grid = rng.uniform(60, 190, size=(int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3)).astype(np.float32)
    img = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    kind = int(rng.integers(0, 3))
    if kind == 1:  # stripes
        period = float(rng.uniform(6, 30))
        angle = float(rng.uniform(0, math.pi))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period))
        img += (float(rng.uniform(8, 25)) * wave)[:, :, None]
    elif kind == 2:  # blotchy texture
        coarse = rng.normal(0, 1, size=(h // 8 + 1, w // 8 + 1, 1)).astype(np.float32)
        blot = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
        img += float(rng.uniform(8, 20)) * blot[:, :, None]
    for _ in range(int(rng.integers(0, 5))):  # clutter: thin lines that belong to no class
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        colour = tuple(float(c) for c in rng.uniform(30, 230, size=3))
        cv2.line(img, p1, p2, colour, int(rng.integers(1, 3)), lineType=cv2.LINE_8)
    return img


def _shape_mask(rng: np.random.Generator, label: int, size: float, cx: float, cy: float, h: int, w: int) -> np.ndarray:
    """Boolean (h, w) mask of one shape of extent ``size`` px centred at (cx, cy) (may leave the canvas)."""
    mask = np.zeros((h, w), dtype=np.uint8)
    r = size / 2.0
    angle = float(rng.uniform(0, 2 * math.pi))
    name = SHAPE_CLASSES[label]
    if name == "circle":
        cv2.circle(mask, (int(round(cx)), int(round(cy))), max(int(round(r)), 1), 1, thickness=-1, lineType=cv2.LINE_8)
    else:
        if name == "square":
            angle = float(rng.uniform(-math.pi / 6, math.pi / 6))
            k, radii = 4, [r] * 4
            angle += math.pi / 4
        elif name == "triangle":
            k, radii = 3, [r] * 3
        else:  # star
            k, radii = 10, [r if i % 2 == 0 else r * 0.42 for i in range(10)]
        pts = [
            (
                cx + radii[i] * math.cos(angle + 2 * math.pi * i / k),
                cy + radii[i] * math.sin(angle + 2 * math.pi * i / k),
            )
            for i in range(k)
        ]
        poly = np.round(np.array(pts)).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(mask, [poly], 1, lineType=cv2.LINE_8)
    return mask.astype(bool)


def render_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    max_objects: int = 6,
    empty_prob: float = 0.08,
    min_size: int = 16,
    max_size: int = 160,
    noise: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one scene. Returns (BGR uint8 image (H, W, 3), boxes (M, 4) float32 xyxy pixel edges, labels (M,) int64).

    Labels index :data:`SHAPE_CLASSES`. Each box is tight around the object's visible pixels.
    """
    img = _background(rng, height, width)
    ids = np.full((height, width), -1, dtype=np.int32)  # visible object index per pixel
    full_area: list[int] = []
    labels: list[int] = []
    colours: list[np.ndarray] = []
    n_obj = 0 if rng.random() < empty_prob else int(rng.integers(1, max_objects + 1))
    big = min(max_size, min(height, width))
    for _ in range(n_obj):
        for _attempt in range(8):
            label = int(rng.integers(0, len(SHAPE_CLASSES)))
            size = float(math.exp(rng.uniform(math.log(min_size), math.log(big))))
            cx = float(rng.uniform(-0.15 * size, width + 0.15 * size))
            cy = float(rng.uniform(-0.15 * size, height + 0.15 * size))
            pad = int(size) + 2
            canvas = _shape_mask(rng, label, size, cx + pad, cy + pad, height + 2 * pad, width + 2 * pad)
            area = int(canvas.sum())
            mask = canvas[pad : pad + height, pad : pad + width]
            if area < 16 or mask.sum() < MIN_VISIBLE * area:
                continue
            covered = np.bincount(ids[mask] + 1, minlength=len(labels) + 1)[1:]
            visible = np.bincount(ids.ravel() + 1, minlength=len(labels) + 1)[1:]
            if any(visible[j] - covered[j] < MIN_VISIBLE * full_area[j] for j in range(len(labels))):
                continue
            ids[mask] = len(labels)
            full_area.append(area)
            labels.append(label)
            base = _PALETTE[int(rng.integers(0, len(_PALETTE)))]
            colours.append(np.clip(base + rng.uniform(-25, 25, size=3), 0, 255).astype(np.float32))
            break
    boxes = []
    for j, colour in enumerate(colours):
        m = ids == j
        img[m] = colour
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    if noise:
        img += rng.normal(0, float(rng.uniform(3, 10)), size=img.shape).astype(np.float32)
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return (
        out,
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
    )


def _write_image(path: str, img: np.ndarray, quality: int) -> None:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"{path}: JPEG encoding failed")
    with open(path, "wb") as f:  # through Python: works for any path
        f.write(buf.tobytes())


def _make_split(
    out_dir: str, split: str, num: int, seed: int, image_size: tuple[int, int], quality: int, **scene: Any
) -> dict:
    image_dir = os.path.join(out_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    height, width = image_size
    images, anns = [], []
    for i in tqdm(range(num), desc=f"synthetic {split}", unit="img", leave=False, disable=num < 50):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
        img, boxes, labels = render_scene(rng, height, width, **scene)
        file_name = f"{i + 1:06d}.jpg"
        _write_image(os.path.join(image_dir, file_name), img, quality)
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for box, label in zip(boxes, labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": SHAPE_CATEGORY_IDS[int(label)],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": f"fcos-paddle synthetic shapes, {split}, seed {seed}"},
        "images": images,
        "annotations": anns,
        "categories": [
            {"id": cid, "name": name, "supercategory": "shape"} for cid, name in zip(SHAPE_CATEGORY_IDS, SHAPE_CLASSES)
        ],
    }


def synthetic_paths(out_dir: str) -> dict[str, str]:
    """Where :func:`make_synthetic_dataset` writes: image dirs and annotation files of both splits."""
    return {
        "root": out_dir,
        "train_image_dir": os.path.join(out_dir, "train"),
        "train_ann_file": os.path.join(out_dir, "annotations", "train.json"),
        "val_image_dir": os.path.join(out_dir, "val"),
        "val_ann_file": os.path.join(out_dir, "annotations", "val.json"),
        "params": os.path.join(out_dir, PARAMS_FILE),
    }


def synthetic_params(num_train: int, num_val: int, seed: int, image_size: tuple[int, int], **scene: Any) -> dict:
    """The parameters recorded in ``DIR/synthetic.json`` (used to skip regenerating an identical dataset)."""
    return {
        "version": 1,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "seed": int(seed),
        "image_size": [int(image_size[0]), int(image_size[1])],
        **scene,
    }


def existing_synthetic_params(out_dir: str) -> Optional[dict]:
    """The parameters of a complete dataset already in ``out_dir``, or None (absent, partial or unreadable)."""
    paths = synthetic_paths(out_dir)
    if not all(os.path.exists(paths[k]) for k in ("params", "train_ann_file", "val_ann_file")):
        return None
    try:
        with open(paths["params"], encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def make_synthetic_dataset(
    out_dir: str,
    num_train: int,
    num_val: int,
    seed: int = 0,
    image_size: tuple[int, int] = (256, 320),
    max_objects: int = DEFAULT_SCENE["max_objects"],
    empty_prob: float = DEFAULT_SCENE["empty_prob"],
    jpeg_quality: int = 92,
) -> dict[str, str]:
    """Write the shapes dataset to ``out_dir``; returns :func:`synthetic_paths` (plus nothing else).

    Layout: ``out_dir/{train,val}/NNNNNN.jpg``, ``out_dir/annotations/{train,val}.json`` (COCO, bbox
    [x, y, w, h] in pixels, ids from 1), ``out_dir/synthetic.json`` (the parameters). image_size is
    (height, width). Existing files are overwritten; the parameters file is written last, so an
    interrupted run is never mistaken for a complete one.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"image counts must be >= 0, got train={num_train} val={num_val}")
    paths = synthetic_paths(out_dir)
    if os.path.exists(paths["params"]):
        os.remove(paths["params"])
    scene = {"max_objects": int(max_objects), "empty_prob": float(empty_prob)}
    for split, num in (("train", num_train), ("val", num_val)):
        coco = _make_split(out_dir, split, num, seed, image_size, jpeg_quality, **scene)
        write_json(coco, paths[f"{split}_ann_file"])
    write_json(synthetic_params(num_train, num_val, seed, image_size, **scene), paths["params"])
    return paths


def make_demo_video(
    path: str,
    num_frames: int = 48,
    size: tuple[int, int] = (320, 256),
    fps: float = 12,
    seed: int = 0,
    image_dir: Optional[str] = None,
) -> str:
    """Write an mp4 (``mp4v``) of shapes moving over a textured background; returns ``path``.

    size is (width, height). With ``image_dir`` the frames instead pan sideways across the images of
    that directory (e.g. the synthetic val split) placed side by side, so the scenes' objects move.
    """
    w, h = int(size[0]), int(size[1])
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    rng = np.random.default_rng([seed, 7])
    frames_fn = _pan_frames(image_dir, w, h, num_frames) if image_dir else _moving_shapes_frames(rng, w, h, num_frames)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise OSError(f"{path}: cannot open a video writer (codec mp4v, {w}x{h} @ {fps} fps)")
    try:
        for frame in frames_fn:
            writer.write(frame)
    finally:
        writer.release()
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise OSError(f"{path}: the video writer produced no data")
    return path


def _moving_shapes_frames(rng: np.random.Generator, w: int, h: int, num_frames: int):
    background = _background(rng, h, w)
    objects = []
    for _ in range(int(rng.integers(3, 6))):
        label = int(rng.integers(0, len(SHAPE_CLASSES)))
        size = float(rng.uniform(28, min(96, min(w, h) / 2)))
        pos = np.array([rng.uniform(size, w - size), rng.uniform(size, h - size)])
        vel = rng.uniform(-6, 6, size=2)
        colour = np.clip(_PALETTE[int(rng.integers(0, len(_PALETTE) - 2))] + rng.uniform(-20, 20, 3), 0, 255)
        objects.append([label, size, pos, vel, colour, int(rng.integers(0, 2**31 - 1))])
    for _ in range(num_frames):
        img = background.copy()
        for label, size, pos, vel, colour, shape_seed in objects:
            # the shape's own rng is re-seeded every frame, so its orientation stays fixed while it moves
            mask = _shape_mask(np.random.default_rng(shape_seed), label, size, pos[0], pos[1], h, w)
            img[mask] = colour
            pos += vel
            for k, lim in ((0, w), (1, h)):
                if pos[k] < size / 2 or pos[k] > lim - size / 2:
                    vel[k] = -vel[k]
        img += rng.normal(0, 4, size=img.shape).astype(np.float32)
        yield np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _pan_frames(image_dir: str, w: int, h: int, num_frames: int):
    from fcos.data.image_io import read_image

    names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith((".jpg", ".jpeg", ".png", ".bmp")))[:4]
    if not names:
        raise FileNotFoundError(f"{image_dir}: no images to build the demo video from")
    tiles = [cv2.resize(read_image(os.path.join(image_dir, n)), (w, h), interpolation=cv2.INTER_AREA) for n in names]
    strip = np.concatenate(tiles + tiles[:1], axis=1)
    span = strip.shape[1] - w
    for t in range(num_frames):
        x = int(round(span * t / max(num_frames - 1, 1)))
        yield np.ascontiguousarray(strip[:, x : x + w])
