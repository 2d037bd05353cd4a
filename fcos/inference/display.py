"""An OpenCV window for ``--show``, with a clear reason when no display can be used."""

from __future__ import annotations

import os
import sys
from typing import Optional

import cv2
import numpy as np

ESC = 27


def display_unavailable_reason() -> Optional[str]:
    """None when a window can be opened, else why not (no X/Wayland display, or OpenCV without GUI)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display: neither DISPLAY nor WAYLAND_DISPLAY is set (headless machine, SSH without -X, container)"
    try:
        cv2.namedWindow("fcos-probe", cv2.WINDOW_NORMAL)
        cv2.destroyWindow("fcos-probe")
    except cv2.error as e:
        return f"OpenCV cannot open windows ({str(e).strip().splitlines()[-1]}); opencv-python-headless has no GUI"
    return None


class Display:
    """Shows BGR frames in one window; ``show`` returns False once the user pressed ESC or closed it."""

    def __init__(self, title: str = "fcos") -> None:
        reason = display_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"--show: {reason}")
        self.title = title
        cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)

    def show(self, frame: np.ndarray, wait_ms: int = 1) -> bool:
        """Draw ``frame``; wait ``wait_ms`` ms (0: until a key). False when ESC was pressed or the window closed."""
        cv2.imshow(self.title, frame)
        key = cv2.waitKey(wait_ms) & 0xFF
        if key == ESC:
            return False
        try:
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:
            return False

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass
