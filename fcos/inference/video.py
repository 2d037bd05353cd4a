"""Video input and output with OpenCV: frame-by-frame reading (flat memory) and a writer that
always finalizes its file, even when the input ends early or the reader fails.

Pitfalls handled here: ``CAP_PROP_FRAME_COUNT`` can be 0, -1 or wrong (only used for progress);
``isOpened()`` can be True for a damaged file whose first ``read()`` fails (checked at open);
an absent webcam can block inside ``VideoCapture`` (opened with a time limit); a writer opened
with the wrong size or a missing codec writes an empty file (size comes from the first frame and
the opened writer is checked).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from typing import Optional, Union

import cv2
import numpy as np


class VideoError(RuntimeError):
    """A video file or camera cannot be opened, read or written; the message says which and why."""


# Codec to try first for an output extension; MJPG in .avi is the fallback every OpenCV build has.
_FOURCC_BY_EXT = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def _open_capture(target: Union[str, int], timeout_s: float) -> cv2.VideoCapture:
    """``cv2.VideoCapture(target)`` with a time limit (an absent camera can block for minutes)."""
    box: dict[str, cv2.VideoCapture] = {}

    def _open() -> None:
        box["cap"] = cv2.VideoCapture(target)

    t = threading.Thread(target=_open, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        what = f"camera {target}" if isinstance(target, int) else target
        raise VideoError(f"{what}: opening did not finish within {timeout_s:.0f} s")
    return box["cap"]


class VideoReader:
    """Iterate the frames of a video file or a camera, one BGR uint8 (H, W, 3) array at a time.

    Opening fails fast with :class:`VideoError` when the file does not exist, is empty, cannot be
    decoded, or the camera is absent. ``fps``, ``size`` (w, h) and ``frame_count`` (as reported by
    the container; may be 0 or wrong) are known after opening. After iteration, ``frames_read``
    holds the frames delivered and ``ended_early`` says whether the stream stopped before the
    reported frame count (damaged file).
    """

    def __init__(self, source: Union[str, int], open_timeout_s: float = 10.0, read_timeout_s: float = 10.0) -> None:
        self.source = source
        self.is_camera = isinstance(source, int)
        self.read_timeout_s = read_timeout_s
        self.name = f"camera {source}" if self.is_camera else str(source)
        if not self.is_camera:
            path = str(source)
            if not os.path.exists(path):
                raise VideoError(f"{path}: video file not found")
            if os.path.isdir(path):
                raise VideoError(f"{path}: is a directory, not a video file")
            if os.path.getsize(path) == 0:
                raise VideoError(f"{path}: video file is empty (0 bytes)")
        elif sys.platform.startswith("linux") and not os.path.exists(f"/dev/video{source}"):
            raise VideoError(
                f"camera {source}: no such device (/dev/video{source} does not exist). "
                "Check that a webcam is connected and visible to this machine/container, or pass a video file."
            )
        self._cap = _open_capture(source, open_timeout_s)
        if not self._cap.isOpened():
            self._cap.release()
            if self.is_camera:
                raise VideoError(f"camera {source}: cannot be opened (absent, busy, or no permission)")
            raise VideoError(f"{source}: cannot be opened as a video (unknown format, damaged, or codec missing)")
        ok, first = self._read_with_timeout()
        if not ok or first is None or first.size == 0:
            self._cap.release()
            raise VideoError(f"{self.name}: opened but no frame could be decoded (empty or damaged video)")
        self._first: Optional[np.ndarray] = first
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.5 < fps < 1000 else 25.0
        self.fps_reported = fps
        self.size = (int(first.shape[1]), int(first.shape[0]))
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 and not self.is_camera else 0
        self.frames_read = 0
        self.ended_early = False

    def _read_with_timeout(self) -> tuple[bool, Optional[np.ndarray]]:
        if not self.is_camera:
            return self._cap.read()
        box: dict[str, tuple[bool, Optional[np.ndarray]]] = {}
        t = threading.Thread(target=lambda: box.setdefault("r", self._cap.read()), daemon=True)
        t.start()
        t.join(self.read_timeout_s)
        if t.is_alive():
            raise VideoError(f"{self.name}: no frame within {self.read_timeout_s:.0f} s (camera stalled)")
        return box["r"]

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            if self._first is not None:
                frame, self._first = self._first, None
                self.frames_read += 1
                yield self._to_bgr(frame)
            while True:
                ok, frame = self._read_with_timeout()
                if not ok or frame is None:
                    break
                self.frames_read += 1
                yield self._to_bgr(frame)
        finally:
            if self.frame_count and self.frames_read < self.frame_count:
                self.ended_early = True
            self.release()

    @staticmethod
    def _to_bgr(frame: np.ndarray) -> np.ndarray:
        if frame.ndim == 2:
            return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        if frame.shape[2] == 4:
            return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
        if frame.dtype != np.uint8:
            frame = cv2.convertScaleAbs(frame, alpha=255.0 / max(1.0, float(frame.max())))
        return frame

    def release(self) -> None:
        if self._cap is not None:
            self._cap.release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class VideoWriter:
    """Write BGR uint8 frames to ``path`` at ``fps``; frame size is taken from the first frame.

    The codec follows the extension (.mp4: mp4v, .avi: MJPG); when that codec is unavailable the
    writer falls back to MJPG in an .avi next to the requested path (``self.path`` tells which).
    Frames of another size are resized to the first frame's size. ``close()`` (also on ``with``
    exit and on errors) finalizes the file so partial output stays playable.
    """

    def __init__(self, path: str, fps: float) -> None:
        self.requested_path = path
        self.path = path
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.size: Optional[tuple[int, int]] = None
        self.frames_written = 0
        self._writer: Optional[cv2.VideoWriter] = None

    def _open(self, w: int, h: int) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)) or ".", exist_ok=True)
        stem, ext = os.path.splitext(self.requested_path)
        candidates = [(self.requested_path, _FOURCC_BY_EXT.get(ext.lower(), "mp4v"))]
        if candidates[0][1] != "MJPG":
            candidates.append((stem + ".avi", "MJPG"))
        for path, fourcc in candidates:
            writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), self.fps, (w, h))
            if writer.isOpened():
                self._writer, self.path, self.size = writer, path, (w, h)
                return
            writer.release()
        raise VideoError(f"{self.requested_path}: cannot open a video writer (tried {[c[1] for c in candidates]})")

    def write(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if self._writer is None:
            self._open(w, h)
        assert self.size is not None and self._writer is not None
        if (w, h) != self.size:
            frame = cv2.resize(frame, self.size)
        self._writer.write(np.ascontiguousarray(frame))
        self.frames_written += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def count_frames(path: str) -> int:
    """Count decodable frames by reading the whole file (the container's count can be wrong)."""
    cap = cv2.VideoCapture(path)
    n = 0
    try:
        while True:
            ok, _ = cap.read()
            if not ok:
                break
            n += 1
    finally:
        cap.release()
    return n


def make_test_video(path: str, num_frames: int = 12, size: tuple[int, int] = (160, 120), fps: float = 10.0) -> str:
    """Write a small synthetic video (a moving filled rectangle) and return its path; for tests and demos."""
    w, h = size
    with VideoWriter(path, fps) as writer:
        for i in range(num_frames):
            frame = np.full((h, w, 3), 40, dtype=np.uint8)
            x = int((w - w // 4) * i / max(1, num_frames - 1))
            cv2.rectangle(frame, (x, h // 3), (x + w // 4, h // 3 + h // 4), (0, 200, 255), -1)
            writer.write(frame)
        out = writer.path
    return out


def probe_stream(target: Union[str, int], open_timeout_s: float = 10.0) -> None:
    """Fail fast (before a model is loaded) when a video file or camera cannot be used.

    Video files are opened and their first frame decoded, then released; cameras are only checked
    for their device node (opening a webcam twice can be slow). Raises :class:`VideoError`.
    """
    if isinstance(target, int):
        if sys.platform.startswith("linux") and not os.path.exists(f"/dev/video{target}"):
            raise VideoError(
                f"camera {target}: no such device (/dev/video{target} does not exist). "
                "Check that a webcam is connected and visible to this machine/container, or pass a video file."
            )
        return
    VideoReader(target, open_timeout_s=open_timeout_s).release()
