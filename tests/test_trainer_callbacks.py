"""Callbacks one by one: gradient clipping, EMA, early stopping, progress output, AMP fallback and
overflow skipping, callback ordering, metrics.csv/results.png."""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np
import paddle
import pytest

from fcos.engine.amp import MixedPrecision
from fcos.engine.callbacks.base import Callback, order_callbacks
from fcos.engine.callbacks.checkpointing import ModelCheckpoint
from fcos.engine.callbacks.early_stopping import EarlyStopping
from fcos.engine.callbacks.ema import EMA
from fcos.engine.callbacks.grad_clip import GradientClip, global_grad_norm
from fcos.engine.callbacks.plots import MetricsCSV
from fcos.engine.callbacks.progress import ProgressBar, format_eta
from fcos.engine.state import TrainState


class FakeTrainer:
    """The attributes callbacks read."""

    def __init__(self, module: paddle.nn.Layer | None = None, max_steps: int = 10) -> None:
        self.module = module
        self.state = TrainState(max_steps=max_steps, batch_size=2)
        self.metrics: dict[str, float] = {}
        self.is_main = True
        self.rank = 0
        self.amp = MixedPrecision(False)


def test_gradient_clip_by_hand():
    lin = paddle.nn.Linear(2, 1, bias_attr=False)
    lin.weight.set_value(np.zeros((2, 1), np.float32))
    x = paddle.to_tensor([[3.0, 4.0]])
    (lin(x).sum()).backward()  # grad = (3, 4): norm 5
    assert global_grad_norm([lin.weight]) == pytest.approx(5.0)
    tr = FakeTrainer(lin)
    GradientClip(max_norm=1.0).on_before_optimizer_step(tr, None)
    assert tr.metrics["train/grad_norm"] == pytest.approx(5.0)  # the norm before clipping is recorded
    np.testing.assert_allclose(lin.weight.grad.numpy().ravel(), [0.6, 0.8], rtol=1e-5)
    GradientClip(max_norm=10.0).on_before_optimizer_step(tr, None)  # below the limit: unchanged
    np.testing.assert_allclose(lin.weight.grad.numpy().ravel(), [0.6, 0.8], rtol=1e-5)


def test_ema_by_hand():
    lin = paddle.nn.Linear(1, 1, bias_attr=False)
    lin.weight.set_value(np.array([[0.0]], np.float32))
    tr = FakeTrainer(lin)
    ema = EMA(decay=0.5, ramp_steps=1)
    ema.on_fit_start(tr)
    lin.weight.set_value(np.array([[1.0]], np.float32))
    ema.on_train_batch_end(tr, {}, None, 0)
    d = 0.5 * (1 - math.exp(-1))
    assert ema.shadow["weight"].item() == pytest.approx(d * 0.0 + (1 - d) * 1.0, rel=1e-6)
    # validation runs on the EMA weights, training weights come back afterwards
    ema.on_validation_start(tr)
    assert lin.weight.item() == pytest.approx(1 - d, rel=1e-6)
    ema.on_validation_end(tr, {})
    assert lin.weight.item() == pytest.approx(1.0)


def test_early_stopping_and_state_round_trip():
    tr = FakeTrainer()
    es = EarlyStopping("val/bbox_mAP", "max", patience=2)
    for v in (0.1, 0.3, 0.29):
        es.on_validation_end(tr, {"val/bbox_mAP": v})
    assert not tr.state.should_stop and es.bad_evals == 1
    restored = EarlyStopping("val/bbox_mAP", "max", patience=2)
    restored.load_state_dict(es.state_dict())
    restored.on_validation_end(tr, {"val/bbox_mAP": 0.3})  # not better than 0.3
    assert tr.state.should_stop and "did not improve on 0.3000 for 2 evaluations" in tr.state.stop_reason
    low = EarlyStopping("val/loss", "min", patience=1)
    tr2 = FakeTrainer()
    low.on_validation_end(tr2, {"val/loss": 1.0})
    low.on_validation_end(tr2, {"val/loss": 0.5})
    assert not tr2.state.should_stop
    low.on_validation_end(tr2, {"val/loss": 0.7})
    assert tr2.state.should_stop


def test_monitoring_callbacks_run_last():
    class A(Callback):
        pass

    class B(Callback):
        pass

    ck, es, a, b = ModelCheckpoint("/tmp/x", 1), EarlyStopping(), A(), B()
    assert order_callbacks([ck, a, es, b]) == [a, b, ck, es]


def test_progress_lines_in_non_tty_logs(caplog):
    tr = FakeTrainer(max_steps=4)
    tr.metrics = {"train/lr": 0.01, "train/loss": 1.5, "train/loss_cls": 0.5, "train/images_per_sec": 12.5}
    bar = ProgressBar(log_every=2, use_tqdm=False)
    with caplog.at_level(logging.INFO, logger="fcos.train"):
        bar.on_fit_start(tr)
        for step in range(4):
            bar.on_train_batch_end(tr, {}, None, step)
    lines = [r.getMessage() for r in caplog.records if r.name == "fcos.train"]
    assert len(lines) == 2 and lines[0].startswith("step 2/4 eta ") and lines[1].startswith("step 4/4 eta 0:00")
    assert "lr=0.01 loss=1.5000 loss_cls=0.5000 img/s=12.5" in lines[0]
    assert "\r" not in "".join(lines)
    assert format_eta(59) == "0:59" and format_eta(3725) == "1:02:05"


def test_amp_on_cpu_falls_back_to_fp32_with_a_message(caplog):
    if paddle.is_compiled_with_cuda():
        pytest.skip("this checks the CPU fallback")
    with caplog.at_level(logging.WARNING):
        amp = MixedPrecision(True, "bfloat16")
    assert not amp.active and amp.scaler is None
    assert "mixed precision needs a CUDA GPU; training in fp32" in caplog.text
    lin = paddle.nn.Linear(2, 2)
    with amp.autocast():
        y = lin(paddle.ones([1, 2]))
    assert y.dtype == paddle.float32
    with pytest.raises(ValueError, match="train.amp_dtype"):
        MixedPrecision(True, "int8")


class FakeScaler:
    """Stands in for paddle.amp.GradScaler (which is disabled on CPU): reports an overflow on demand."""

    def __init__(self) -> None:
        self.overflow = False
        self._found_inf = paddle.to_tensor(False)
        self._scale = paddle.to_tensor(1024.0)
        self.updates = 0

    def scale(self, loss: Any) -> Any:
        return loss * 1024.0

    def unscale_(self, optimizer: Any) -> None:
        with paddle.no_grad():
            for p in optimizer._parameter_list:
                if p.grad is not None:
                    p.grad.scale_(1 / 1024.0)
        self._found_inf = paddle.to_tensor(self.overflow)

    def step(self, optimizer: Any) -> None:
        if not self.overflow:
            optimizer.step()

    def update(self) -> None:
        self.updates += 1
        if self.overflow:
            self._scale = self._scale / 2


def test_overflowing_amp_steps_are_skipped_and_weights_stay_finite():
    amp = MixedPrecision(False)
    amp.scaler = FakeScaler()
    lin = paddle.nn.Linear(2, 1)
    opt = paddle.optimizer.SGD(0.1, parameters=lin.parameters())
    w0 = lin.weight.numpy().copy()
    for overflow, expect_applied in ((True, False), (False, True)):
        amp.scaler.overflow = overflow
        amp.backward(lin(paddle.ones([1, 2])).sum())
        amp.unscale(opt)
        assert amp.step(opt) is expect_applied
        opt.clear_grad()
        if overflow:
            np.testing.assert_array_equal(lin.weight.numpy(), w0)
            assert amp.loss_scale == 512.0
    # the applied step used the unscaled gradient (1 per weight): w0 - 0.1
    np.testing.assert_allclose(lin.weight.numpy(), w0 - 0.1, rtol=1e-6)
    assert np.all(np.isfinite(lin.weight.numpy())) and amp.scaler.updates == 2


def test_metrics_csv_and_results_png(tmp_path):
    tr = FakeTrainer(max_steps=4)
    cb = MetricsCSV(str(tmp_path), log_every=2)
    cb.setup(tr, "fit")
    cb.on_fit_start(tr)
    for step in range(4):
        tr.metrics = {"train/loss": 2.0 - step * 0.25, "train/lr": 0.01}
        tr.state.global_step = step + 1
        cb.on_train_batch_end(tr, {}, None, step)
        if step == 3:
            cb.on_validation_end(tr, {"val/bbox_mAP": 0.25, "val/bbox_AP50": 0.5})
    cb.on_fit_end(tr)
    text = (tmp_path / "metrics.csv").read_text().splitlines()
    assert text[0] == "step,train/loss,train/lr,val/bbox_AP50,val/bbox_mAP"
    assert text[1:] == ["2,1.75,0.01,,", "4,1.25,0.01,0.5,0.25"]
    assert os.path.getsize(tmp_path / "results.png") > 1000


def test_progress_bar_on_a_terminal_also_logs_lines(caplog):
    import io

    tr = FakeTrainer(max_steps=2)
    tr.metrics = {"train/lr": 0.01, "train/loss": 1.5}
    bar = ProgressBar(log_every=1, use_tqdm=True)
    with caplog.at_level(logging.INFO, logger="fcos.train"):
        bar.on_fit_start(tr)
        bar._bar.fp = io.StringIO()  # keep the test output clean
        for step in range(2):
            bar.on_train_batch_end(tr, {}, None, step)
        bar.teardown(tr, "fit")
    lines = [r.getMessage() for r in caplog.records if r.name == "fcos.train"]
    assert [x.split(" eta")[0] for x in lines] == ["step 1/2", "step 2/2"]
    assert bar._bar is None and bar._redirect is None


def test_evaluation_only_runs_keep_the_training_history(tmp_path):
    tr = FakeTrainer(max_steps=2)
    cb = MetricsCSV(str(tmp_path), log_every=1)
    cb.setup(tr, "fit")
    cb.on_fit_start(tr)
    tr.metrics = {"train/loss": 1.0}
    cb.on_train_batch_end(tr, {}, None, 0)
    before = (tmp_path / "metrics.csv").read_text()
    later = MetricsCSV(str(tmp_path), log_every=1)  # tools/train.py --eval-only in a new process
    later.setup(tr, "validate")
    later.on_validation_end(tr, {"val/bbox_mAP": 0.5})
    assert (tmp_path / "metrics.csv").read_text() == before
