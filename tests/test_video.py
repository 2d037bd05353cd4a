"""Video reading/writing: frame-exact round trip, and fast clear failures on unusable inputs."""

from __future__ import annotations

import sys
import time

import cv2
import numpy as np
import pytest

from fcos.inference.video import VideoError, VideoReader, VideoWriter, count_frames, make_test_video, probe_stream


def test_writer_reader_round_trip_keeps_count_size_fps(tmp_path):
    path = make_test_video(str(tmp_path / "clip.mp4"), num_frames=9, size=(96, 64), fps=7.0)
    reader = VideoReader(path)
    assert reader.size == (96, 64) and reader.fps == pytest.approx(7.0) and reader.frame_count == 9
    frames = list(reader)
    assert len(frames) == 9 and frames[0].shape == (64, 96, 3) and frames[0].dtype == np.uint8
    assert reader.frames_read == 9 and not reader.ended_early
    assert count_frames(path) == 9


def test_writer_resizes_odd_frames_and_finalizes_on_error(tmp_path):
    path = str(tmp_path / "out.avi")
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(path, fps=5) as w:
            w.write(np.zeros((40, 60, 3), np.uint8))
            w.write(np.zeros((30, 30, 3), np.uint8))  # resized to the first frame's size
            raise RuntimeError("boom")
    assert w.frames_written == 2
    cap = cv2.VideoCapture(w.path)
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (60, 40)
    cap.release()
    assert count_frames(w.path) == 2


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "video file not found"),
        (b"", r"empty \(0 bytes\)"),
        (b"this is not a video\n" * 20, "cannot be opened as a video"),
    ],
)
def test_unusable_files_fail_fast_with_the_path(tmp_path, content, message):
    path = tmp_path / "bad.mp4"
    if content is not None:
        path.write_bytes(content)
    t0 = time.perf_counter()
    with pytest.raises(VideoError, match=message) as info:
        VideoReader(str(path))
    assert str(path) in str(info.value)
    assert time.perf_counter() - t0 < 5


def test_truncated_mp4_is_refused(tmp_path):
    good = make_test_video(str(tmp_path / "good.mp4"), num_frames=10)
    bad = tmp_path / "trunc.mp4"
    bad.write_bytes(open(good, "rb").read()[:1500])  # mp4v writes its index (moov) last: it is gone
    with pytest.raises(VideoError, match="trunc.mp4"):
        probe_stream(str(bad))


def test_damaged_avi_ends_early_and_says_so(tmp_path):
    good = make_test_video(str(tmp_path / "good.avi"), num_frames=20, size=(96, 64))
    bad = tmp_path / "damaged.avi"
    data = open(good, "rb").read()
    bad.write_bytes(data[: len(data) // 2])
    reader = VideoReader(str(bad))
    n = sum(1 for _ in reader)
    assert 0 < n < 20 and reader.frame_count == 20 and reader.ended_early


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="device nodes are a Linux notion")
def test_absent_camera_fails_fast():
    t0 = time.perf_counter()
    with pytest.raises(VideoError, match="camera 63: no such device"):
        VideoReader(63)
    with pytest.raises(VideoError, match="camera 63"):
        probe_stream(63)
    assert time.perf_counter() - t0 < 2
