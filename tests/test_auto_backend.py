"""``backend: auto``: the fastest engine that can run an export, timed side by side and remembered.

The choice logic runs on fake engines with a fake clock (so the fastest is known by construction);
the demo export then goes through create_predictor, infer_cfg.yml and tools/deploy_infer.py with the
real engines (onnxruntime, openvino and paddle2onnx are in the dev extra, installed by make install)."""

from __future__ import annotations

import json
import logging
import os
import shutil

import cv2
import numpy as np
import pytest
import yaml

from fcos.deploy.auto_backend import (
    CHOICE_FILE,
    auto_candidates,
    choice_key,
    choose_backend,
    measure_side_by_side,
    timing_image,
)
from fcos.deploy.factory import create_predictor
from fcos.deploy.predictor import DeployError, DeployPredictor, load_infer_cfg
from fcos.export import compare_detections, make_check_images
from fcos.inference.timing import StageTimer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeEngine:
    """``predict`` takes ``ms`` on the fake clock (the first ``slow_calls`` calls take 10x longer:
    warm-up); ``fail`` makes it raise instead."""

    def __init__(self, name: str, ms: float, clock: FakeClock, fail: str = "", slow_calls: int = 0) -> None:
        self.name, self.ms, self.clock, self.fail, self.slow_calls = name, ms, clock, fail, slow_calls
        self.calls = 0
        self.timer = StageTimer(0)
        self.timer.record({"pre": 1.0}, 1)
        self.notes: list[str] = []

    def predict(self, images, keep_images=True):
        self.calls += 1
        if self.fail:
            raise RuntimeError(self.fail)
        self.clock.now += self.ms / 1e3 * (10 if self.calls <= self.slow_calls else 1)
        return []


class Factory:
    def __init__(self, clock: FakeClock, speeds: dict[str, float], fails: dict[str, Exception] | None = None):
        self.clock, self.speeds, self.fails = clock, speeds, fails or {}
        self.built: list[str] = []
        self.engines: dict[str, FakeEngine] = {}

    def __call__(self, name: str) -> FakeEngine:
        self.built.append(name)
        if name in self.fails:
            raise self.fails[name]
        self.engines[name] = FakeEngine(name, self.speeds[name], self.clock, slow_calls=1)
        return self.engines[name]


IMAGE = np.zeros((8, 8, 3), np.uint8)
ENGINES = ["paddle", "onnxruntime", "openvino"]


def test_the_fastest_engine_wins_and_the_choice_is_remembered(tmp_path):
    clock, cache = FakeClock(), str(tmp_path / "c" / CHOICE_FILE)
    make = Factory(clock, {"paddle": 120.0, "onnxruntime": 90.0, "openvino": 100.0})
    pred, choice = choose_backend(ENGINES, make, IMAGE, "k1", cache_file=cache, warmup=1, runs=3, clock=clock)
    assert (choice.backend, pred.name, choice.cached) == ("onnxruntime", "onnxruntime", False)
    # the warm-up call (10x slower) is not counted: medians are the steady times
    assert {t.backend: t.ms for t in choice.timings} == pytest.approx(
        {"paddle": 120, "onnxruntime": 90, "openvino": 100}
    )
    assert all(e.calls == 8 for e in make.engines.values())  # (1 warm-up + 3 timed rounds) x 2 calls
    assert pred.timer.calls == 0  # the timing calls are not the user's
    with open(cache, encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["k1"]["backend"] == "onnxruntime"
    assert saved["k1"]["ms"] == pytest.approx({"paddle": 120, "onnxruntime": 90, "openvino": 100})
    assert "onnxruntime 90.0 ms" in choice.summary() and "measured now" in choice.summary()

    # same key: only the winner is built, nothing is run
    again = Factory(clock, {"paddle": 1.0, "onnxruntime": 90.0, "openvino": 1.0})
    pred, choice = choose_backend(ENGINES, again, IMAGE, "k1", cache_file=cache, clock=clock)
    assert again.built == ["onnxruntime"] and pred.calls == 0 and choice.cached
    assert "remembered in" in choice.summary()
    # remeasure, or another key (new model, CPU, size...): timed again, and the new winner is kept
    for kwargs in ({"remeasure": True}, {}):
        make = Factory(clock, {"paddle": 10.0, "onnxruntime": 90.0, "openvino": 100.0})
        key = "k1" if kwargs else "k2"
        pred, choice = choose_backend(ENGINES, make, IMAGE, key, cache_file=cache, clock=clock, **kwargs)
        assert make.built == ENGINES and choice.backend == "paddle" and not choice.cached
    with open(cache, encoding="utf-8") as f:
        assert {k: v["backend"] for k, v in json.load(f).items()} == {"k1": "paddle", "k2": "paddle"}


def test_engines_are_timed_in_rounds_one_call_each():
    """Side by side: every round gives each engine two calls and times the second (the first runs
    with cold caches), so a burst of load on a shared machine slows the same round of every engine,
    and the median drops it."""
    clock, order = FakeClock(), []
    engines = {n: FakeEngine(n, ms, clock) for n, ms in (("a", 10.0), ("b", 11.0))}
    for name, engine in engines.items():
        plain = engine.predict

        def predict(images, keep_images=True, _plain=plain, _name=name):
            order.append(_name)
            call = len(order)
            if call in (9, 10, 11, 12):  # a burst of load in round 2 (of 0..3) slows both engines 5x
                clock.now += 4 * engines[_name].ms / 1e3
            if call % 2 == 1:  # the first call of a turn runs with caches the other engine used
                clock.now += 3 * engines[_name].ms / 1e3
            return _plain(images, keep_images)

        engine.predict = predict
    ms, failed = measure_side_by_side(engines, IMAGE, warmup=1, runs=3, clock=clock, calls_per_round=2)
    assert order == ["a", "a", "b", "b"] * 4 and failed == {}
    assert ms == pytest.approx({"a": 10.0, "b": 11.0})


def test_engines_that_fail_are_reported_and_skipped(tmp_path):
    clock, cache = FakeClock(), str(tmp_path / CHOICE_FILE)
    make = Factory(clock, {"paddle": 50.0, "onnxruntime": 10.0, "openvino": 20.0},
                   fails={"onnxruntime": DeployError("model.onnx: not found")})  # fmt: skip
    orig = make.__call__

    def broken_openvino(name):
        engine = orig(name)
        if name == "openvino":
            engine.fail = "CPU plugin: unsupported op\nsecond line"
        return engine

    pred, choice = choose_backend(ENGINES, broken_openvino, IMAGE, "k", skipped={"x": "not installed"},
                                  cache_file=cache, clock=clock)  # fmt: skip
    assert choice.backend == "paddle"
    reasons = {t.backend: (t.ms, t.reason) for t in choice.timings}
    assert reasons["onnxruntime"] == (None, "model.onnx: not found")
    assert reasons["openvino"] == (None, "CPU plugin: unsupported op")
    assert reasons["x"] == (None, "not installed")
    with open(cache, encoding="utf-8") as f:
        assert json.load(f)["k"]["ms"] == pytest.approx({"paddle": 50.0})

    everything_fails = Factory(clock, {}, fails={n: RuntimeError(f"{n} broke") for n in ENGINES})
    with pytest.raises(DeployError) as e:
        choose_backend(ENGINES, everything_fails, IMAGE, "k3", cache_file=cache, clock=clock)
    assert all(f"{n}: {n} broke" in str(e.value) for n in ENGINES)
    with pytest.raises(DeployError, match="onnxruntime: no model.onnx"):
        choose_backend([], everything_fails, IMAGE, "k4", skipped={"onnxruntime": "no model.onnx"}, cache_file=cache)


def test_a_remembered_engine_that_fails_now_is_measured_again(tmp_path):
    clock, cache = FakeClock(), str(tmp_path / CHOICE_FILE)
    choose_backend(ENGINES, Factory(clock, {"paddle": 3.0, "onnxruntime": 2.0, "openvino": 1.0}), IMAGE, "k",
                   cache_file=cache, clock=clock)  # fmt: skip
    make = Factory(clock, {"paddle": 3.0, "onnxruntime": 2.0}, fails={"openvino": ImportError("no openvino")})
    pred, choice = choose_backend(ENGINES, make, IMAGE, "k", cache_file=cache, clock=clock)
    assert make.built == ["openvino", *ENGINES] and choice.backend == "onnxruntime" and not choice.cached


def test_a_single_engine_is_built_without_timing_calls(tmp_path):
    clock, cache = FakeClock(), str(tmp_path / CHOICE_FILE)
    make = Factory(clock, {"openvino": 5.0})
    pred, choice = choose_backend(["openvino"], make, IMAGE, "k", skipped={"paddle": "int8 for openvino"},
                                  cache_file=cache, clock=clock)  # fmt: skip
    assert pred.calls == 0 and choice.backend == "openvino" and not os.path.exists(cache)
    assert "paddle: int8 for openvino" in choice.summary()


@pytest.mark.parametrize("damage", ["garbage", "list", "directory"])
def test_a_broken_cache_costs_a_measurement_not_an_error(damage, tmp_path, caplog):
    clock = FakeClock()
    cache = tmp_path / CHOICE_FILE
    if damage == "garbage":
        cache.write_text("{not json")
    elif damage == "list":
        cache.write_text("[1, 2]")
    else:  # the cache file's directory is a file: the choice cannot be written
        (tmp_path / "blocked").write_text("x")
        cache = tmp_path / "blocked" / CHOICE_FILE
    make = Factory(clock, {"paddle": 3.0, "onnxruntime": 2.0, "openvino": 1.0})
    with caplog.at_level(logging.WARNING, logger="fcos.deploy.auto_backend"):
        pred, choice = choose_backend(ENGINES, make, IMAGE, "k", cache_file=str(cache), clock=clock)
    assert choice.backend == "openvino" and not choice.cached
    assert str(cache) in caplog.text
    if damage != "directory":  # rewritten as a valid file
        assert json.loads(cache.read_text())["k"]["backend"] == "openvino"


# -- the real engines on the demo export -----------------------------------------------------------


@pytest.fixture(scope="module")
def export_dir(demo_export_onnx) -> str:
    """The session's demo export with model.onnx (conftest ``demo_export_onnx``); read-only here."""
    return demo_export_onnx


def test_candidates_follow_the_files_precision_and_device(export_dir, tmp_path):
    cfg = load_infer_cfg(export_dir)
    assert auto_candidates(cfg, "cpu", "fp32") == (ENGINES, {})
    usable, skipped = auto_candidates(cfg, "cpu", "bf16")
    assert usable == ["paddle", "openvino"] and "bf16" in skipped["onnxruntime"]
    assert auto_candidates(cfg, "gpu", "fp32")[0] == ["paddle"]
    bare = str(tmp_path / "bare")
    shutil.copytree(export_dir, bare)
    os.remove(os.path.join(bare, "model.onnx"))
    usable, skipped = auto_candidates(load_infer_cfg(bare), "cpu", "fp32")
    assert usable == ["paddle"]
    assert "tools/export.py --onnx" in skipped["onnxruntime"] and "tools/export.py --onnx" in skipped["openvino"]
    cfg.runtime.precision, cfg.runtime.backend = "int8", "onnxruntime"
    assert auto_candidates(cfg, "cpu", "int8")[0] == ["onnxruntime"]


def test_engines_that_are_not_installed_are_skipped_with_the_install_command(export_dir, monkeypatch):
    import fcos.deploy.auto_backend as ab

    real = ab._installed
    monkeypatch.setattr(ab, "_installed", lambda dist: None if dist == "openvino" else real(dist))
    usable, skipped = auto_candidates(load_infer_cfg(export_dir), "cpu", "fp32")
    assert usable == ["paddle", "onnxruntime"]
    assert skipped == {"openvino": 'not installed (pip install "fcos-paddle[openvino]")'}


def test_choice_key_changes_with_what_changes_the_winner(export_dir, tmp_path):
    d = str(tmp_path / "m")
    shutil.copytree(export_dir, d)
    cfg = load_infer_cfg(d)
    key = choice_key(cfg, "fp32", 2)
    assert choice_key(load_infer_cfg(d), "fp32", 2) == key
    assert choice_key(cfg, "bf16", 2) != key
    assert choice_key(cfg, "fp32", 1) != key
    cfg.input.test_short += 32
    assert choice_key(cfg, "fp32", 2) != key
    onnx = os.path.join(d, "model.onnx")
    st = os.stat(onnx)
    os.utime(onnx, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a re-exported model
    assert choice_key(load_infer_cfg(d), "fp32", 2) != key
    img = timing_image(load_infer_cfg(d))
    assert img.shape == (cfg.input.test_short - 32, round((cfg.input.test_short - 32) * 4 / 3), 3)


def test_auto_picks_a_real_engine_that_reproduces_paddle_inference(export_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FCOS_CACHE_DIR", str(tmp_path / "cache"))
    pred = create_predictor(export_dir, backend="auto", cpu_threads=1)
    note = pred.notes[-1]
    assert note.startswith("backend auto -> ") and "measured now" in note
    with open(tmp_path / "cache" / CHOICE_FILE, encoding="utf-8") as f:
        (entry,) = json.load(f).values()
    assert set(entry["ms"]) == set(ENGINES) and entry["ms"][entry["backend"]] == min(entry["ms"].values())
    assert f"-> {entry['backend']} " in note
    ref = DeployPredictor(export_dir, use_mkldnn=False, cpu_threads=1)
    compared = 0
    for img in make_check_images(seed=3):
        r, g = ref.predict([img])[0], pred.predict([img])[0]
        ok, stats = compare_detections(r, g, 100, 0.05, 2e-3, 0.5, iou_thresh=0.9, min_recall=0.98)
        assert ok, stats
        compared += stats.num_ref
    assert compared > 20
    again = create_predictor(export_dir, backend="auto", cpu_threads=1)
    assert type(again) is type(pred) and "remembered in" in again.notes[-1]


def test_infer_cfg_backend_auto_through_deploy_infer(export_dir, tmp_path, monkeypatch, capsys, load_tool):
    monkeypatch.setenv("FCOS_CACHE_DIR", str(tmp_path / "cache"))
    d = str(tmp_path / "m")
    shutil.copytree(export_dir, d)
    path = os.path.join(d, "infer_cfg.yml")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    data["runtime"]["backend"] = "auto"
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f)
    images = tmp_path / "imgs"
    images.mkdir()
    for i, img in enumerate(make_check_images(seed=5)):
        cv2.imwrite(str(images / f"{i}.png"), img)
    rc = load_tool("deploy_infer").main(
        ["--model_dir", d, "--image_dir", str(images), "--output_dir", str(tmp_path / "out"), "--quiet",
         "--cpu_threads", "1"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "note: backend auto -> " in out and "measured now" in out
    data["runtime"]["backend"] = "fastest"
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f)
    with pytest.raises(DeployError, match="backend.*auto"):
        load_infer_cfg(d)
