"""`make demo` end to end at a tiny size: every step runs as the user's command and leaves its outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from fcos.inference.video import count_frames

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "tools/demo.py",
            "--output",
            str(out),
            "--steps",
            "4",
            "--train-images",
            "16",
            "--val-images",
            "6",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "=== Done in" in proc.stdout
    metrics = json.loads((out / "train" / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["bbox_mAP"] <= 1.0
    assert (out / "detections.jpg").stat().st_size > 0
    assert (out / "train" / "results.png").is_file() and any((out / "train" / "vdl").iterdir())
    assert (out / "export" / "infer_cfg.yml").is_file()
    assert len(os.listdir(out / "deploy" / "images")) == 6
    assert count_frames(str(out / "deploy" / "video" / "demo_video.mp4")) == count_frames(str(out / "demo_video.mp4"))
