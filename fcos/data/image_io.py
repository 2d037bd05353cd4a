"""Image reading that copes with what real datasets contain.

One rule everywhere (conversion, training, evaluation, inference): **the EXIF orientation tag is
applied**, so pixels and boxes live in the frame an image viewer shows. Every mode Pillow opens is
turned into the network's 3-channel 8-bit BGR input:

- grayscale (``1``, ``L``, ``I``, ``I;16``, ``F``) is replicated to 3 channels; 16-bit and 32-bit
  values are scaled to 0..255;
- alpha (``RGBA``, ``LA``, ``PA``, palette transparency) is dropped, as ``cv2.imread`` does;
- palette, CMYK (including Adobe-inverted JPEGs) and YCbCr are converted to RGB by Pillow.

Broken files (missing, empty, truncated, not an image) raise :class:`ImageReadError` whose message
holds the path; the file is never modified. Paths may contain any Unicode characters (files are read
through Python, never through ``cv2.imread``).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# EXIF orientation values that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION_TAG = 0x0112


class ImageReadError(OSError):
    """An image file is missing, empty, truncated or not an image; the message names the path."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _open(path: str) -> Image.Image:
    if not os.path.exists(path):
        raise ImageReadError(path, "file not found")
    if os.path.isdir(path):
        raise ImageReadError(path, "is a directory, not an image")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageReadError(path, f"cannot read file ({e.strerror or e})") from e
    if not data:
        raise ImageReadError(path, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise ImageReadError(path, "not an image file (unrecognised format)") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageReadError(path, f"cannot open image ({e})") from e


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation value (1..8) of an opened image; 1 when absent or invalid."""
    try:
        value = int(img.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # corrupt EXIF blocks must not make the image unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def _to_uint8_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img)
        arr = arr.astype(np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.size and arr.max() > 255):
            # 16-bit data (Pillow opens 16-bit grayscale PNG/TIFF as I;16 or I): full range 0..65535
            arr = arr / 257.0
        elif mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    try:
        rgb = img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ValueError(f"unsupported colour mode {mode!r} ({e})") from e
    return np.asarray(rgb, dtype=np.uint8)


def read_image(path: str) -> np.ndarray:
    """Read an image file as BGR ``uint8`` (H, W, 3), EXIF orientation applied.

    Raises :class:`ImageReadError` (message starts with the path) for missing, empty, truncated or
    undecodable files and unsupported modes.
    """
    path = os.fspath(path)
    img = _open(path)
    try:
        img.load()  # full decode: truncated files fail here ("image file is truncated")
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        if exif_orientation(img) != 1:
            img = ImageOps.exif_transpose(img)
        rgb = _to_uint8_rgb(img)
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise ImageReadError(path, f"cannot decode image ({e})") from e
    if rgb.ndim != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ImageReadError(path, f"decoded to an empty array of shape {rgb.shape}")
    return np.ascontiguousarray(rgb[:, :, ::-1])


def read_image_size(path: str) -> tuple[int, int]:
    """(height, width) after EXIF orientation, read from the header only (no pixel decode).

    Raises :class:`ImageReadError` for missing, empty and non-image files. Truncated pixel data is
    only detected by :func:`read_image`.
    """
    path = os.fspath(path)
    img = _open(path)
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageReadError(path, f"image has an empty side ({w}x{h})")
    if exif_orientation(img) in _SWAPPING_ORIENTATIONS:
        w, h = h, w
    return int(h), int(w)


def read_raw_size(path: str) -> tuple[int, int]:
    """(height, width) as stored, ignoring EXIF orientation (used to explain size mismatches)."""
    path = os.fspath(path)
    img = _open(path)
    w, h = img.size
    return int(h), int(w)
