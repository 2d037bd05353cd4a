"""The source runner with a stand-in predictor (no model): interruption, failures and memory on videos."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from fcos.inference.results import Results
from fcos.inference.runner import RunOptions, run_source
from fcos.inference.sources import resolve_source
from fcos.inference.timing import StageTimer
from fcos.inference.video import count_frames, make_test_video


class FakePredictor:
    """One fixed detection per image; raises ``exc`` on call number ``fail_at`` (1-based)."""

    def __init__(self, fail_at: int = 0, exc: type = RuntimeError) -> None:
        self.calls, self.fail_at, self.exc = 0, fail_at, exc
        self.timer = StageTimer()

    def predict(self, images, paths=None, keep_images=True):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.exc("stop here")
        return [
            Results(
                boxes=np.array([[1, 2, 11, 22]], np.float32),
                scores=np.array([0.9], np.float32),
                labels=np.array([1]),
                names=["a", "b"],
                image=img,
                path=(paths or [""])[i],
                category_ids=[5, 6],
            )  # fmt: skip
            for i, img in enumerate(images)
        ]


def test_ctrl_c_finalizes_video_and_json(tmp_path):
    src = make_test_video(str(tmp_path / "in.mp4"), num_frames=12, size=(64, 48))
    opts = RunOptions(save_dir=str(tmp_path / "out"), save_json=str(tmp_path / "d.json"), progress=False)
    summary = run_source(FakePredictor(fail_at=6, exc=KeyboardInterrupt), resolve_source(src), opts)
    assert summary.stopped_by_user and summary.processed == 5 and summary.exit_code == 0
    assert count_frames(str(tmp_path / "out" / "in.mp4")) == 5
    recs = json.loads((tmp_path / "d.json").read_text())
    assert [r["file_name"] for r in recs] == [f"in.mp4#frame{i}" for i in range(5)]
    assert recs[0]["category_id"] == 6 and recs[0]["bbox"] == [1.0, 2.0, 10.0, 20.0]


def test_a_failing_frame_propagates_but_outputs_are_finalized(tmp_path):
    src = make_test_video(str(tmp_path / "in.avi"), num_frames=10, size=(64, 48))
    opts = RunOptions(save_dir=str(tmp_path / "out"), save_json=str(tmp_path / "d.json"), progress=False)
    with pytest.raises(RuntimeError, match="stop here"):
        run_source(FakePredictor(fail_at=4), resolve_source(src), opts)
    assert count_frames(str(tmp_path / "out" / "in.avi")) == 3
    assert len(json.loads((tmp_path / "d.json").read_text())) == 3


def test_max_frames_and_no_save(tmp_path):
    src = make_test_video(str(tmp_path / "in.mp4"), num_frames=10, size=(64, 48))
    opts = RunOptions(save_dir=str(tmp_path / "out"), save_images=False, max_frames=4, progress=False)
    summary = run_source(FakePredictor(), resolve_source(src), opts)
    assert summary.processed == 4 and not summary.ended_early and summary.exit_code == 0
    assert not (tmp_path / "out").exists()


def test_long_video_memory_stays_flat(tmp_path):
    src = make_test_video(str(tmp_path / "long.avi"), num_frames=150, size=(160, 120))
    opts = RunOptions(save_dir=str(tmp_path / "out"), progress=False)
    tracemalloc.start()
    summary = run_source(FakePredictor(), resolve_source(src), opts)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert summary.processed == 150
    frame_bytes = 160 * 120 * 3
    assert peak < 30 * frame_bytes  # keeping the frames (or their drawings) would need >= 150 frames' worth
