"""Trainer checkpoint files: round trip, atomic/durable writes under SIGKILL/SIGTERM, fallback on a broken file."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from fcos.engine.checkpoint import (
    CheckpointError,
    find_best_weights,
    list_step_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Writes step_<n>.safetensors forever (keeping the newest 2); every tensor of step n is filled with n,
# so a loaded file is consistent iff all its values equal its step. ~24 MB per file so that a write
# takes long enough to be interrupted.
WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from fcos.engine.checkpoint import list_step_checkpoints, save_checkpoint
    if sys.argv[2] == "term":
        def _exit(signum, frame):
            raise SystemExit(143)
        signal.signal(signal.SIGTERM, _exit)
    d = sys.argv[1]
    step = len(list_step_checkpoints(d)) and int(list_step_checkpoints(d)[-1][-19:-12])
    print("ready", flush=True)
    while True:
        step += 1
        tensors = {f"model.w{i}": np.full((1_000_000,), step, dtype=np.float32) for i in range(6)}
        save_checkpoint(os.path.join(d, f"step_{step:07d}.safetensors"), tensors, {"train": {"global_step": step}})
        for old in list_step_checkpoints(d)[:-2]:
            os.remove(old)
    """
)


def _temp_files(d: str) -> list[str]:
    return glob.glob(os.path.join(d, ".*.tmp"))


def _newest_step(d: str) -> int:
    files = list_step_checkpoints(d)
    return int(os.path.basename(files[-1])[5:12]) if files else 0


def _kill_during_write(d: str, sig: int, after: int = 1) -> bool:
    """Start the writer; once it has finished ``after`` more files, send ``sig`` as soon as a temp file
    exists. Returns True if a temp file existed at the kill."""
    target = _newest_step(d) + after
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    mode = "term" if sig == signal.SIGTERM else "kill"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, d, mode], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.time() + 30
        saw_temp = False
        while time.time() < deadline:
            if _newest_step(d) >= target and _temp_files(d):
                saw_temp = True
                break
            time.sleep(0.001)
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return saw_temp


def _check_newest_consistent(d: str) -> int:
    found = load_latest_checkpoint(d)
    assert found is not None
    path, tensors, state = found
    step = state["train"]["global_step"]
    assert path == list_step_checkpoints(d)[-1], "the newest file must be the readable one"
    assert all(np.all(v == step) for v in tensors.values())
    return step


def test_round_trip(tmp_path):
    p = str(tmp_path / "ck" / "step_0000003.safetensors")
    tensors = {"model.a": np.arange(6, dtype=np.float32).reshape(2, 3), "optim.a/velocity_0": np.ones(2)}
    state = {"train": {"global_step": 3, "best_metric": None}, "x": [1, 2.5, "s"], "nan": float("nan")}
    save_checkpoint(p, tensors, state)
    t2, s2 = load_checkpoint(p)
    assert set(t2) == set(tensors)
    np.testing.assert_array_equal(t2["model.a"], tensors["model.a"])
    assert s2["train"] == state["train"] and s2["x"] == state["x"] and np.isnan(s2["nan"])
    assert _temp_files(str(tmp_path / "ck")) == []


def test_sigkill_during_save_leaves_a_loadable_newest_checkpoint(tmp_path):
    d = str(tmp_path)
    steps, interrupted = [], 0
    for after in (1, 3, 2, 1):
        interrupted += _kill_during_write(d, signal.SIGKILL, after)
        steps.append(_check_newest_consistent(d))
        # the next run removes what the killed one left behind
        remove_stale_temp_files(d)
        assert _temp_files(d) == []
    assert interrupted >= 3, "the kills should land while a temp file was being written"
    assert steps == sorted(steps) and steps[-1] > steps[0]  # each restart continued after the newest file


def test_sigterm_during_save_cleans_up_immediately(tmp_path):
    d = str(tmp_path)
    for after in (1, 2, 1, 1):
        _kill_during_write(d, signal.SIGTERM, after)
        _check_newest_consistent(d)
        assert _temp_files(d) == [], "an interrupted write must remove its temp file"


def test_truncated_newest_falls_back_to_previous(tmp_path, caplog):
    d = str(tmp_path)
    for step in (1, 2):
        save_checkpoint(
            os.path.join(d, f"step_{step:07d}.safetensors"),
            {"model.w": np.full(10, step, np.float32)},
            {"train": {"global_step": step}},
        )
    newest = list_step_checkpoints(d)[-1]
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    with pytest.raises(CheckpointError, match="step_0000002.safetensors is unreadable"):
        load_checkpoint(newest)
    with caplog.at_level("WARNING"):
        path, tensors, state = load_latest_checkpoint(d)
    assert path.endswith("step_0000001.safetensors") and state["train"]["global_step"] == 1
    assert "falling back to the previous checkpoint" in caplog.text and "step_0000002" in caplog.text


def test_not_a_trainer_checkpoint(tmp_path):
    from fcos.checkpoint.weights import save_weights

    p = str(tmp_path / "w.safetensors")
    save_weights(p, {"a": np.zeros(2, np.float32)})
    with pytest.raises(CheckpointError, match="use -w/--weights"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "missing.safetensors"))


def test_find_best_weights(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        find_best_weights(str(run))
    ck = run / "checkpoints"
    save_checkpoint(str(ck / "step_0000010.safetensors"), {"model.w": np.zeros(1)}, {})
    save_checkpoint(str(ck / "step_0000020.safetensors"), {"model.w": np.zeros(1)}, {})
    assert find_best_weights(str(run)).endswith("step_0000020.safetensors")
    (ck / "best.safetensors").write_bytes(b"x")
    assert find_best_weights(str(run)).endswith("best.safetensors")
