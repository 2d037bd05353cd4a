"""What to run inference on: an image, a folder of images, a video file or a camera index.

``resolve_source("0")`` is camera 0 (the string "0" is not treated as false), an existing
directory is a folder, and files are classified by extension. Missing paths and unknown
extensions raise :class:`SourceError` with the path, before any model is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jpe", ".pgm", ".ppm")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".webm", ".ts", ".gif")


class SourceError(ValueError):
    """The requested input does not exist or is of an unsupported kind."""


@dataclass
class Source:
    """A resolved input. kind: "image" | "folder" | "video" | "camera"; target: the path or the camera
    index; images: the image files to process (image and folder kinds), sorted."""

    kind: str
    target: Union[str, int]
    images: list[str] = field(default_factory=list)


@dataclass
class ImageItem:
    """One image of an image/folder source: the BGR uint8 image, or ``error`` when it could not be read."""

    path: str
    image: Optional[np.ndarray]
    error: Optional[str] = None


def list_images(folder: str, recursive: bool = False) -> list[str]:
    """Image files (by extension, case-insensitive) in ``folder``, sorted by path."""
    found = []
    if recursive:
        for root, _, files in os.walk(folder):
            found.extend(os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTS))
    else:
        found = [
            os.path.join(folder, f)
            for f in os.listdir(folder)
            if f.lower().endswith(IMAGE_EXTS) and os.path.isfile(os.path.join(folder, f))
        ]
    return sorted(found)


def resolve_source(source: Union[str, int], recursive: bool = False) -> Source:
    """Classify ``source``: camera index (int or digit string that is not an existing file), folder,
    image file or video file. Raises :class:`SourceError` naming the path when it is unusable."""
    if isinstance(source, int):
        return Source("camera", source)
    text = str(source).strip()
    if not text:
        raise SourceError("empty source: pass an image, a folder, a video file or a camera index (e.g. 0)")
    if text.isdigit() and not os.path.exists(text):
        return Source("camera", int(text))
    if os.path.isdir(text):
        images = list_images(text, recursive)
        if not images:
            raise SourceError(f"{text}: folder contains no images (extensions {', '.join(IMAGE_EXTS)})")
        return Source("folder", text, images)
    if not os.path.exists(text):
        raise SourceError(f"{text}: no such file or directory")
    ext = os.path.splitext(text)[1].lower()
    if ext in IMAGE_EXTS:
        return Source("image", text, [text])
    if ext in VIDEO_EXTS:
        return Source("video", text)
    raise SourceError(
        f"{text}: unknown file type '{ext}'. Images: {', '.join(IMAGE_EXTS)}; videos: {', '.join(VIDEO_EXTS)}"
    )


def iter_images(paths: Sequence[str]) -> Iterator[ImageItem]:
    """Read images one at a time (EXIF-oriented BGR uint8); unreadable files yield an item with ``error``."""
    from fcos.data.image_io import read_image

    for path in paths:
        try:
            yield ImageItem(path, read_image(path))
        except Exception as e:  # ImageReadError and OS errors: report and go on with the next image
            yield ImageItem(path, None, f"{type(e).__name__}: {e}")
