"""``tools/infer.py --show`` in a real OpenCV window on the virtual X server of tests/gui/run.sh: the window
appears and shows the annotated frames while the video plays; ESC, or closing the window, stops playback
and the partial output video is finalized. Windows are found with xdotool, captured with xwd and sent keys
(xdotool) or the window manager's close request (WM_DELETE_WINDOW)."""

from __future__ import annotations

import ctypes
import ctypes.util
import inspect
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Optional

import cv2
import numpy as np
import pytest

from fcos.inference.display import Display, display_unavailable_reason

pytestmark = pytest.mark.gui

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "demo_shapes.yml")
TITLE = inspect.signature(Display.__init__).parameters["title"].default  # the runner opens Display()
SIZE = (160, 128)  # w, h
FPS = 10.0
NUM_FRAMES = 600  # ~15 s of processing at --threads 1: ESC / close arrive mid-video
RED, GREEN = (0, 0, 255), (0, 255, 0)  # BGR colours of the moving rectangles
SCREENSHOT_COPY = "/tmp/gui_show_screenshot.png"


def opencv_gui_backend() -> str:
    """The "GUI:" entry of OpenCV's build information: QT5, GTK3, ... or NONE (opencv-python-headless)."""
    m = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.M)
    return m.group(1) if m else "NONE"


def require_gui_environment() -> None:
    """Fail (not skip: a skipped GUI test would look like a passing one) without an X display, a GUI
    build of OpenCV, xdotool and xwd."""
    hint = "run the GUI tests with `make test-gui` (bash tests/gui/run.sh)"
    display = os.environ.get("DISPLAY")
    assert display, f"DISPLAY is not set; {hint}"
    backend = opencv_gui_backend()
    assert backend != "NONE", f"{cv2.__file__} is OpenCV without GUI (GUI: {backend}); {hint}"
    for tool in ("xdotool", "xwd"):
        assert shutil.which(tool), f"{tool} is not installed; {hint}"


def make_video(path: str, num_frames: int = NUM_FRAMES) -> str:
    """A dark video with a red and a green rectangle moving in opposite directions (mp4v)."""
    w, h = SIZE
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    assert writer.isOpened(), f"cannot write {path}"
    for i in range(num_frames):
        frame = np.full((h, w, 3), 30, np.uint8)
        x = (i * 3) % (w - 40)
        cv2.rectangle(frame, (x, 16), (x + 40, 56), RED, -1)
        cv2.rectangle(frame, (w - 40 - x, 72), (w - x, 112), GREEN, -1)
        writer.write(frame)
    writer.release()
    return path


def video_info(path: str) -> tuple[int, tuple[int, int], float]:
    """(frames decoded, (w, h), fps) of a video file."""
    cap = cv2.VideoCapture(path)
    assert cap.isOpened(), f"{path} cannot be opened"
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    return frames, size, fps


class InferRun:
    """A tool playing a video in a window, as a subprocess of this (GUI OpenCV) Python:
    ``tools/infer.py --show`` (``weights`` a weights file) or ``tools/deploy_infer.py --play_video``
    (``model_dir`` an export directory)."""

    def __init__(self, tmp_path, weights: Optional[str] = None, model_dir: Optional[str] = None) -> None:
        self.src = make_video(str(tmp_path / "clip.mp4"))
        self.out_dir = tmp_path / "out"
        self.output = self.out_dir / "clip.mp4"
        self.log_path = tmp_path / "infer.log"
        if model_dir is None:
            cmd = [sys.executable, os.path.join(ROOT, "tools", "infer.py"), "-c", CONFIG, "-w", weights,
                   "--source", self.src, "--show", "--save-dir", str(self.out_dir), "--threads", "1"]  # fmt: skip
        else:
            cmd = [sys.executable, os.path.join(ROOT, "tools", "deploy_infer.py"), "--model_dir", model_dir,
                   "--play_video", self.src, "--output_dir", str(self.out_dir), "--cpu_threads", "1"]  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def log(self, tail: int = 40) -> str:
        """Its output so far (the last ``tail`` lines; 0: all), each progress bar line at its last update."""
        self._log.flush()
        lines = [line.rsplit("\r", 1)[-1] for line in self.log_path.read_bytes().decode(errors="replace").split("\n")]
        return "\n".join(lines[-tail:] if tail else lines)

    def assert_mid_video(self, what: str) -> None:
        rc = self.proc.poll()
        assert rc is None, f"tools/infer.py ended ({rc}) before {what}; make NUM_FRAMES larger? Output:\n{self.log()}"

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"tools/infer.py still runs {timeout:.0f} s later; its output:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def find_window(self, timeout: float = 120.0) -> int:
        """``xdotool search --sync --onlyvisible`` for the window titled exactly TITLE; fails early when
        tools/infer.py exits first (model loading takes a few seconds)."""
        search = subprocess.Popen(
            ["xdotool", "search", "--sync", "--onlyvisible", "--name", f"^{TITLE}$"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + timeout
        try:
            while search.poll() is None:
                if self.proc.poll() is not None:
                    pytest.fail(
                        f"tools/infer.py exited ({self.proc.returncode}) before a window appeared:\n{self.log()}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail(f"no visible window titled {TITLE!r} within {timeout:.0f} s; output:\n{self.log()}")
                time.sleep(0.1)
        finally:
            if search.poll() is None:
                search.kill()
            out = search.communicate()[0]
        ids = out.split()
        assert search.returncode == 0 and len(ids) == 1, f"xdotool search found {ids!r}"
        return int(ids[0])


@pytest.fixture(scope="module")
def demo_export(demo_weights, tmp_path_factory) -> str:
    """``demo_weights`` exported for Paddle Inference (tools/deploy_infer.py)."""
    import fcos
    from fcos.export import export_model
    from fcos.inference.detector import Detector

    cfg = fcos.load_config(CONFIG)
    det = Detector(cfg, weights=demo_weights)
    out = str(tmp_path_factory.mktemp("export") / "demo")
    export_model(det.model, cfg, out, det.class_names, det.category_ids)
    return out


@pytest.fixture
def infer_run(demo_weights, tmp_path):
    runs: list[InferRun] = []

    def start(model_dir: Optional[str] = None) -> InferRun:
        require_gui_environment()
        runs.append(InferRun(tmp_path, weights=demo_weights, model_dir=model_dir))
        return runs[-1]

    yield start
    for run in runs:
        run.stop()


def xwd_capture(window: int) -> np.ndarray:
    """The window's current content as a BGR image (``xwd -id``; ZPixmap, 32 bits per pixel)."""
    data = subprocess.run(["xwd", "-silent", "-id", str(window)], capture_output=True, check=True, timeout=10).stdout
    header = np.frombuffer(data[:100], ">u4").astype(np.int64)  # 25 big-endian CARD32 (XWDFileHeader)
    header_size, width, height, byte_order, bits_per_pixel, bytes_per_line = (
        header[0], header[4], header[5], header[7], header[11], header[12]
    )  # fmt: skip
    red_mask, green_mask, blue_mask, ncolors = header[14], header[15], header[16], header[19]
    assert bits_per_pixel == 32, f"xwd: {bits_per_pixel} bits per pixel (expected a 24-bit screen)"
    offset = int(header_size + 12 * ncolors)  # the XWDColor table (12 bytes each) precedes the pixels
    rows = np.frombuffer(data, np.uint8, count=int(height * bytes_per_line), offset=offset)
    rows = rows.reshape(int(height), int(bytes_per_line))[:, : int(width) * 4]
    pixels = np.ascontiguousarray(rows).view("<u4" if byte_order == 0 else ">u4")

    def channel(mask: int) -> np.ndarray:
        shift = (mask & -mask).bit_length() - 1
        return ((pixels >> np.uint32(shift)) & np.uint32(mask >> shift)).astype(np.uint8)

    return np.dstack([channel(int(blue_mask)), channel(int(green_mask)), channel(int(red_mask))])


def colour_pixels(image: np.ndarray, bgr: tuple[int, int, int], tol: int = 40) -> int:
    return int((np.abs(image.astype(np.int16) - np.array(bgr, np.int16)).max(axis=2) <= tol).sum())


def wait_for_playing_frames(run: InferRun, window: int, timeout: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Screenshots until the window shows a video frame (both rectangle colours, a non-uniform image)
    and then a different one (the video plays); returns (first, later) screenshot."""
    deadline = time.monotonic() + timeout
    first: Optional[np.ndarray] = None
    while time.monotonic() < deadline:
        assert run.proc.poll() is None, f"tools/infer.py exited ({run.proc.returncode}) while playing:\n{run.log()}"
        shot = xwd_capture(window)
        # a frame of the 160x128 video, drawn at least 1:1: each rectangle is 40x40 px
        drawn = colour_pixels(shot, RED) >= 800 and colour_pixels(shot, GREEN) >= 800 and shot.std() > 20
        if drawn and first is None:
            first = shot
        elif drawn and first is not None and shot.shape == first.shape and np.abs(shot - first.astype(int)).max() > 100:
            return first, shot
        time.sleep(0.2)
    if first is None:
        pytest.fail(f"window {window} never showed a video frame within {timeout:.0f} s; output:\n{run.log()}")
    pytest.fail(f"window {window} showed one frame but did not change within {timeout:.0f} s; output:\n{run.log()}")


def save_screenshot(image: np.ndarray, path, copy_to: Optional[str] = None) -> None:
    assert cv2.imwrite(str(path), image)
    print(f"screenshot of the --show window: {path}")
    if copy_to:
        shutil.copyfile(str(path), copy_to)
        print(f"  copied to {copy_to}")


def assert_partial_output_finalized(run: InferRun, rc: int) -> int:
    """Exit code 0, and the output video holds 1..N-1 frames of the input's size and fps; returns the count."""
    log = run.log(tail=0)
    assert rc == 0, f"tools/infer.py exit code {rc}; output:\n{log}"
    assert run.output.is_file(), f"{run.output} was not written; output:\n{log}"
    frames, size, fps = video_info(str(run.output))
    assert 1 <= frames < NUM_FRAMES, f"{frames} frames written of {NUM_FRAMES}: playback was not stopped mid-video"
    assert size == SIZE and fps == pytest.approx(FPS)
    assert f"processed {frames} image(s)/frame(s)" in log, log
    return frames


def send_wm_delete_window(window: int) -> None:
    """What a window manager sends when the user clicks a window's close button: a WM_PROTOCOLS client
    message with WM_DELETE_WINDOW (libX11 through ctypes). xdotool 3.2016 has no such command: its
    ``windowclose`` destroys the X window behind the toolkit's back (Qt keeps drawing into it, unnoticed)
    and ``windowkill`` kills the X connection (the process dies with exit code 1)."""
    lib = ctypes.util.find_library("X11")
    assert lib, "libX11 not found"
    x11 = ctypes.CDLL(lib)

    class XClientMessageEvent(ctypes.Structure):
        _fields_ = [("type", ctypes.c_int), ("serial", ctypes.c_ulong), ("send_event", ctypes.c_int),
                    ("display", ctypes.c_void_p), ("window", ctypes.c_ulong), ("message_type", ctypes.c_ulong),
                    ("format", ctypes.c_int), ("data", ctypes.c_long * 5)]  # fmt: skip

    class XEvent(ctypes.Union):
        _fields_ = [("xclient", XClientMessageEvent), ("pad", ctypes.c_long * 24)]

    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XInternAtom.restype = ctypes.c_ulong
    x11.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    x11.XSendEvent.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_long, ctypes.POINTER(XEvent)]
    x11.XFlush.argtypes = [ctypes.c_void_p]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    display = x11.XOpenDisplay(None)
    assert display, f"cannot open X display {os.environ.get('DISPLAY')!r}"
    try:
        event = XEvent()
        event.xclient.type = 33  # ClientMessage
        event.xclient.window = window
        event.xclient.message_type = x11.XInternAtom(display, b"WM_PROTOCOLS", 0)
        event.xclient.format = 32
        event.xclient.data[0] = x11.XInternAtom(display, b"WM_DELETE_WINDOW", 0)
        event.xclient.data[1] = 0  # CurrentTime
        assert x11.XSendEvent(display, window, 0, 0, ctypes.byref(event)), "XSendEvent failed"
        x11.XFlush(display)
    finally:
        x11.XCloseDisplay(display)


def test_display_is_available_with_the_gui_opencv():
    """Under Xvfb with opencv-python (not -headless) a window can be opened."""
    require_gui_environment()
    assert opencv_gui_backend() in ("QT5", "QT6", "GTK2", "GTK3", "GTK", "WAYLAND"), opencv_gui_backend()
    assert display_unavailable_reason() is None


def test_show_plays_the_video_in_a_real_window_until_esc(infer_run, tmp_path):
    run = infer_run()
    window = run.find_window()
    first, later = wait_for_playing_frames(run, window)
    save_screenshot(first, tmp_path / "window.png", copy_to=SCREENSHOT_COPY)
    save_screenshot(later, tmp_path / "window_later.png")
    run.assert_mid_video("ESC")
    subprocess.run(["xdotool", "key", "--window", str(window), "Escape"], check=True, timeout=10, capture_output=True)
    t0 = time.monotonic()
    rc = run.wait(timeout=15)
    frames = assert_partial_output_finalized(run, rc)
    print(f"ESC: exited {time.monotonic() - t0:.2f} s later, after {frames} of {NUM_FRAMES} frames")


def test_closing_the_window_stops_playback(infer_run, tmp_path):
    run = infer_run()
    window = run.find_window()
    first, _ = wait_for_playing_frames(run, window)
    save_screenshot(first, tmp_path / "window.png")
    run.assert_mid_video("the close request")
    send_wm_delete_window(window)
    t0 = time.monotonic()
    rc = run.wait(timeout=15)
    frames = assert_partial_output_finalized(run, rc)
    print(f"close: exited {time.monotonic() - t0:.2f} s later, after {frames} of {NUM_FRAMES} frames")


def test_deploy_play_video_shows_the_exported_model_until_esc(infer_run, demo_export, tmp_path):
    """tools/deploy_infer.py --play_video: the same window on Paddle Inference; ESC stops it and the video
    written with --output_dir is finalized."""
    run = infer_run(model_dir=demo_export)
    window = run.find_window()
    first, _ = wait_for_playing_frames(run, window)
    save_screenshot(first, tmp_path / "deploy_window.png")
    run.assert_mid_video("ESC")
    subprocess.run(["xdotool", "key", "--window", str(window), "Escape"], check=True, timeout=10, capture_output=True)
    rc = run.wait(timeout=15)
    frames = assert_partial_output_finalized(run, rc)
    print(f"deploy ESC: stopped after {frames} of {NUM_FRAMES} frames")
