"""Exact resume, NaN guard, EMA and checkpoint contents, on a tiny in-memory dataset (no data pipeline)."""

from __future__ import annotations

import csv
import glob
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import paddle
import pytest

from fcos.config import Config, load_config
from fcos.data.batch import Batch, Sample, collate_samples
from fcos.engine.callbacks.base import Callback
from fcos.engine.callbacks.defaults import build_default_callbacks
from fcos.engine.checkpoint import CheckpointError, list_step_checkpoints, load_checkpoint
from fcos.engine.optim import build_optimizer
from fcos.engine.trainer import Trainer
from fcos.modeling import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(run_dir: str, *overrides: str) -> Config:
    """The demo recipe made tiny: batch 2, short schedule, every step logged."""
    return load_config(
        os.path.join(ROOT, "configs", "demo_shapes.yml"),
        overrides=[
            f"train.output_dir={run_dir}",
            "data.batch_size=2",
            "optim.base_batch_size=2",
            "optim.lr=0.01",
            "schedule.max_steps=6",
            "schedule.milestones=[4]",
            "schedule.warmup_steps=3",
            "train.log_every=1",
            "train.eval_every=0",
            "train.ckpt_every=3",
            "train.keep_checkpoints=5",
            "data.check_on_start=false",
            *overrides,
        ],
    )


def make_samples(n: int, seed: int = 0, size: tuple[int, int] = (64, 96)) -> list[Sample]:
    """Random-noise images with 1-2 bright rectangles each; boxes and labels match the drawing."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for i in range(n):
        img = rng.normal(0, 0.3, size=(3, h, w)).astype(np.float32)
        boxes, labels = [], []
        for _ in range(rng.integers(1, 3)):
            bw, bh = rng.integers(12, 40), rng.integers(12, 40)
            x1, y1 = rng.integers(0, w - bw), rng.integers(0, h - bh)
            label = int(rng.integers(0, 4))
            img[:, y1 : y1 + bh, x1 : x1 + bw] = 1.0 + 0.5 * label
            boxes.append([x1, y1, x1 + bw, y1 + bh])
            labels.append(label)
        out.append(
            Sample(
                image=img,
                boxes=np.asarray(boxes, np.float32),
                labels=np.asarray(labels, np.int64),
                scale=(1.0, 1.0),
                orig_shape=(h, w),
                image_id=i + 1,
            )
        )
    return out


def step_batches(samples: list[Sample], batch_size: int, seed: int, start: int) -> Iterator[Batch]:
    """Batch of step s is a function of (seed, s) only, like the real loader."""
    step = start
    while True:
        idx = np.random.default_rng([seed, step]).choice(len(samples), batch_size, replace=False)
        yield collate_samples([samples[i] for i in idx], 32).to_paddle()
        step += 1


class Recorder(Callback):
    """Records the lr used by every step and the loss it produced."""

    def __init__(self) -> None:
        self.lr: dict[int, float] = {}
        self.loss: dict[int, float] = {}

    def on_train_batch_end(self, trainer: Any, outputs: dict[str, float], batch: Any, step: int) -> None:
        self.lr[step] = trainer.optimizer.get_lr()
        self.loss[step] = outputs["loss"]


def make_trainer(cfg: Config, samples: list[Sample], max_steps: int, extra: list[Callback], init_seed: int = 0):
    paddle.seed(init_seed)  # a resumed run must not depend on its own initialisation
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg)
    run_dir = cfg.train.output_dir
    callbacks = build_default_callbacks(cfg, run_dir, visualdl=True) + extra
    return Trainer(
        cfg,
        model,
        optimizer,
        train_loader_fn=lambda start: step_batches(samples, cfg.data.batch_size, cfg.train.seed, start),
        callbacks=callbacks,
        run_dir=run_dir,
        max_steps=max_steps,
    )


def _weights(trainer: Trainer) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in trainer.module.state_dict().items()}


@pytest.mark.parametrize("ema", [False, True])
def test_resume_equals_uninterrupted_run(tmp_path, ema):
    samples = make_samples(12)
    extra = [f"train.ema={str(ema).lower()}", "train.ema_decay=0.9"]
    # one go: 6 steps
    cfg_a = tiny_config(str(tmp_path / "a"), *extra)
    rec_a = Recorder()
    a = make_trainer(cfg_a, samples, 6, [rec_a])
    a.fit()
    # 3 steps, stop; a new process (fresh objects, other init) resumes and runs to 6
    cfg_b = tiny_config(str(tmp_path / "b"), *extra)
    rec_b1, rec_b2 = Recorder(), Recorder()
    make_trainer(cfg_b, samples, 3, [rec_b1]).fit()
    assert [os.path.basename(p) for p in list_step_checkpoints(str(tmp_path / "b" / "checkpoints"))] == [
        "step_0000003.safetensors"
    ]
    b = make_trainer(cfg_b, samples, 6, [rec_b2], init_seed=123)
    b.fit(resume=True)
    assert b.state.start_step == 3 and b.state.global_step == 6

    # the same LR at every step (warmup 3 steps from 0.01*0.01, then 0.01, x0.1 from step 4)
    lrs = {**rec_b1.lr, **rec_b2.lr}
    assert sorted(lrs) == list(range(6)) and sorted(rec_b2.lr) == [3, 4, 5]
    for s in range(6):
        assert lrs[s] == pytest.approx(rec_a.lr[s], rel=1e-12)
    expected = [0.01 * (0.01 * (1 - s / 3) + s / 3) if s < 3 else (0.01 if s < 4 else 0.001) for s in range(6)]
    assert [rec_a.lr[s] for s in range(6)] == pytest.approx(expected)
    # the same losses and weights (momentum buffers restored, same batches from step 3 on)
    for s in range(6):
        assert {**rec_b1.loss, **rec_b2.loss}[s] == pytest.approx(rec_a.loss[s], rel=1e-5, abs=1e-6)
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # changed at all (the comparison is not vacuous)
    paddle.seed(0)
    init = {k: v.numpy() for k, v in build_model(cfg_a).state_dict().items()}
    assert any(not np.allclose(init[k], wa[k]) for k in wa if "weight" in k)

    # the checkpoint holds everything needed
    tensors, state = load_checkpoint(list_step_checkpoints(str(tmp_path / "b" / "checkpoints"))[-1])
    assert state["train"]["global_step"] == 6
    assert any(k.startswith("optim.") and k.endswith("velocity_0") for k in tensors)
    assert {"python", "numpy"} <= set(state["rng"]) and "LRScheduleCallback" in state["callbacks"]
    assert state["config"]["train"]["output_dir"] == str(tmp_path / "b")
    assert any(k.startswith("ema.") for k in tensors) == ema
    if ema:
        ema_a = {
            k[4:]: v
            for k, v in load_checkpoint(str(tmp_path / "a/checkpoints/step_0000006.safetensors"))[0].items()
            if k.startswith("ema.")
        }
        for k, v in ema_a.items():
            np.testing.assert_allclose(tensors["ema." + k], v, rtol=1e-5, atol=1e-6, err_msg=k)

    # metrics.csv continues across the resume: one row per step, same lr column as the one-go run
    def rows(run):
        with open(tmp_path / run / "metrics.csv", newline="") as f:
            return list(csv.DictReader(f))

    ra, rb = rows("a"), rows("b")
    assert [int(r["step"]) for r in rb] == [1, 2, 3, 4, 5, 6]
    assert [float(r["train/lr"]) for r in rb] == pytest.approx([float(r["train/lr"]) for r in ra], rel=1e-5)
    # VisualDL logs of both process runs in the same directory
    assert len(glob.glob(str(tmp_path / "b" / "vdl" / "*"))) >= 1


class PoisonLoss(Callback):
    """Makes the loss of one step non-finite, as a broken batch would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_backward(self, trainer: Any, losses: dict[str, Any]) -> None:
        if trainer.state.global_step == self.step:
            losses["loss_box"] = losses["loss_box"] * float("nan")


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nan_guard(tmp_path, policy):
    samples = make_samples(8)
    cfg = tiny_config(str(tmp_path), f"train.nan_policy={policy}")
    trainer = make_trainer(cfg, samples, 5, [])
    # PoisonLoss must run before the guard: insert it first
    trainer.callbacks.insert(0, PoisonLoss(2))
    before = None

    class Snap(Callback):
        def on_train_batch_start(self, tr, batch, step):
            nonlocal before
            if step == 2:
                before = _weights(tr)

    trainer.callbacks.insert(0, Snap())
    state = trainer.fit()
    dumps = glob.glob(str(tmp_path / "nan_batches" / "step_0000002_rank0.npz"))
    assert len(dumps) == 1
    with np.load(dumps[0], allow_pickle=False) as z:
        assert z["images"].shape[0] == 2 and "target0_boxes" in z.files
    weights = _weights(trainer)
    assert all(np.all(np.isfinite(v)) for v in weights.values())
    if policy == "stop":
        assert state.global_step == 3 and state.should_stop and "non-finite loss loss_box=nan" in state.stop_reason
        # the poisoned update was not applied
        for k, v in before.items():
            np.testing.assert_array_equal(weights[k], v, err_msg=k)
    else:
        assert state.global_step == 5 and state.skipped_steps == 1 and not state.should_stop


def test_best_is_never_written_after_nan(tmp_path):
    from fcos.engine.callbacks.checkpointing import ModelCheckpoint

    samples = make_samples(4)
    cfg = tiny_config(str(tmp_path))
    trainer = make_trainer(cfg, samples, 1, [])
    ck = next(c for c in trainer.callbacks if isinstance(c, ModelCheckpoint))
    ck.setup(trainer, "fit")
    ck.on_validation_end(trainer, {"val/bbox_mAP": 0.2})
    assert os.path.isfile(ck.best_path) and trainer.state.best_metric == 0.2
    mtime = os.path.getmtime(ck.best_path)
    ck.on_validation_end(trainer, {"val/bbox_mAP": 0.1})  # worse: kept
    trainer.state.nan_seen = True
    ck.on_validation_end(trainer, {"val/bbox_mAP": 0.9})  # better, but after a NaN: kept
    ck.on_validation_end(trainer, {"val/bbox_mAP": math.nan})
    assert trainer.state.best_metric == 0.2 and os.path.getmtime(ck.best_path) == mtime
    # best.safetensors is a weights file with the metadata inference needs
    from fcos.checkpoint.weights import load_weights

    report = load_weights(build_model(cfg), ck.best_path)
    assert report.ok and report.metadata["class_names"] == ["circle", "square", "triangle", "star"]
    assert report.metadata["category_ids"] == [1, 2, 3, 4] and report.metadata["value"] == 0.2


def test_resume_rejects_other_classes(tmp_path):
    from fcos.engine.checkpoint import CheckpointError

    samples = make_samples(4)
    cfg = tiny_config(str(tmp_path), "schedule.max_steps=1")
    make_trainer(cfg, samples, 1, []).fit()
    other = tiny_config(str(tmp_path), "data.class_names=[a,b,c,d]")
    t = make_trainer(other, samples, 2, [])
    t.class_names = ["a", "b", "c", "d"]
    with pytest.raises(CheckpointError, match="use -w/--weights instead"):
        t.fit(resume=True)


def test_resume_falls_back_when_newest_is_broken(tmp_path, caplog):
    samples = make_samples(6)
    cfg = tiny_config(str(tmp_path), "train.ckpt_every=2")
    make_trainer(cfg, samples, 4, []).fit()
    ckpts = list_step_checkpoints(str(tmp_path / "checkpoints"))
    assert [os.path.basename(p) for p in ckpts] == ["step_0000002.safetensors", "step_0000004.safetensors"]
    with open(ckpts[-1], "r+b") as f:
        f.truncate(1000)
    t = make_trainer(cfg, samples, 5, [])
    with caplog.at_level("WARNING"):
        t.fit(resume=True)
    assert t.state.start_step == 2 and "falling back to the previous checkpoint" in caplog.text


def test_a_fresh_run_never_overwrites_a_previous_runs_checkpoints(tmp_path):
    samples = make_samples(8)
    cfg = tiny_config(str(tmp_path / "run"))
    make_trainer(cfg, samples, 2, []).fit()
    ckpt_dir = tmp_path / "run" / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpt_dir.iterdir()}
    assert "step_0000002.safetensors" in before
    again = make_trainer(cfg, samples, 2, [], init_seed=5)
    with pytest.raises(CheckpointError, match=r"already holds checkpoints.*--resume.*train.output_dir"):
        again.fit()
    assert {p.name: p.read_bytes() for p in ckpt_dir.iterdir()} == before
    resumed = make_trainer(cfg, samples, 3, [], init_seed=5)  # --resume continues instead
    resumed.fit(resume=True)
    assert resumed.state.global_step == 3
