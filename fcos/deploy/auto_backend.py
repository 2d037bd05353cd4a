"""``backend: auto``: run an export on whichever installed engine is fastest on this machine.

Which engine is fastest depends on the CPU and the model: on an AVX2 Zen 3, ONNX Runtime led Paddle
Inference by 5 to 27 % on rt_dla34 and OpenVINO led on rt_r50, while on an AVX-512 Zen 4 Paddle
Inference led (README, "int8 on CPU"). ``auto`` times every engine that can run the export side by
side on a synthetic image at the export's input size (end-to-end median over rounds in which the
engines take turns, :func:`measure_side_by_side`), keeps the fastest predictor, and remembers the choice in ``backend_choice.json`` under the cache root
(:func:`fcos.deploy.engine_cache.cache_root`). The key covers the model files (path, size, mtime), the
CPU, the thread count, the precision, the input size and the engine versions, so the next start
builds only the winner, and a new model, machine or engine measures again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from fcos.deploy.engine_cache import cache_root
from fcos.deploy.predictor import BACKENDS, DeployError, InferCfg, resolve_threads
from fcos.utils.runtime import cpu_name

logger = logging.getLogger(__name__)

CHOICE_FILE = "backend_choice.json"
_DISTRIBUTIONS = {"paddle": "paddlepaddle", "onnxruntime": "onnxruntime", "openvino": "openvino"}
_EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino"}  # pip install "fcos-paddle[<extra>]"
# What a candidate engine may raise while loading or running a model it cannot handle.
_ENGINE_ERRORS = (DeployError, ImportError, RuntimeError, ValueError, OSError, NotImplementedError)


@dataclass
class EngineTiming:
    """One engine's result: ``ms`` is the median end-to-end time of a call (pre + network + NMS + post),
    ``None`` when the engine could not run the export (``reason`` says why)."""

    backend: str
    ms: Optional[float]
    reason: str = ""


@dataclass
class AutoChoice:
    """The engine ``auto`` picked, every engine's timing, and whether the choice came from the cache."""

    backend: str
    timings: list[EngineTiming]
    cached: bool
    cache_file: str

    def summary(self) -> str:
        """One line for logs and reports, e.g. ``backend auto -> onnxruntime (onnxruntime 343 ms, ...)``."""
        parts = [f"{t.backend} {t.ms:.1f} ms" if t.ms is not None else f"{t.backend}: {t.reason}" for t in self.timings]
        how = f"remembered in {self.cache_file}" if self.cached else "measured now"
        return f"backend auto -> {self.backend} ({'; '.join(parts)}; {how})"


def _installed(distribution: str) -> Optional[str]:
    """The installed version of a distribution, or None (without importing it)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def auto_candidates(cfg: InferCfg, device: str, precision: str) -> tuple[list[str], dict[str, str]]:
    """The engines ``auto`` may try for ``cfg`` in order, and the reason each other engine is skipped.

    An int8 model runs only on the engine it was quantized for; GPU runs only on Paddle Inference; bf16
    runs on Paddle Inference and OpenVINO; ONNX Runtime and OpenVINO need their package and the
    export's ``model.onnx`` (``tools/export.py --onnx``) or an OpenVINO IR.
    """
    if cfg.runtime.precision == "int8":
        return [cfg.runtime.backend], {
            b: "the int8 model was quantized for another engine" for b in BACKENDS if b != cfg.runtime.backend
        }
    if device == "gpu":
        return ["paddle"], {b: "GPU runs on Paddle Inference only" for b in BACKENDS if b != "paddle"}
    files = set(os.listdir(cfg.model_dir))
    usable, skipped = [], {}
    for backend in BACKENDS:
        if backend != "paddle" and _installed(_DISTRIBUTIONS[backend]) is None:
            skipped[backend] = f'not installed (pip install "fcos-paddle[{_EXTRAS[backend]}]")'
        elif backend == "onnxruntime" and precision != "fp32":
            skipped[backend] = f"runs fp32 or int8 models, not {precision}"
        elif backend == "onnxruntime" and "model.onnx" not in files:
            skipped[backend] = "no model.onnx (tools/export.py --onnx)"
        elif backend == "openvino" and not files & {"model.onnx", "model.xml"}:
            skipped[backend] = "no model.onnx or model.xml (tools/export.py --onnx)"
        else:
            usable.append(backend)
    return usable, skipped


def choice_key(cfg: InferCfg, precision: str, cpu_threads: int) -> str:
    """A hex digest naming one auto decision: model files (path, size, mtime), CPU, threads, precision,
    input size and engine versions. Anything that can change which engine is fastest changes it."""
    files = []
    for name in sorted(os.listdir(cfg.model_dir)):
        path = os.path.join(cfg.model_dir, name)
        if os.path.isfile(path) and name.endswith((".json", ".pdmodel", ".pdiparams", ".onnx", ".xml", ".bin")):
            st = os.stat(path)
            files.append([name, st.st_size, st.st_mtime_ns])
    blob = json.dumps(
        {
            "model_dir": os.path.realpath(cfg.model_dir),
            "files": files,
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "threads": resolve_threads(cpu_threads),
            "precision": precision,
            "size": [cfg.input.test_short, cfg.input.test_max, cfg.input.size_divisor],
            "versions": {b: _installed(d) for b, d in _DISTRIBUTIONS.items()},
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def timing_image(cfg: InferCfg, seed: int = 0) -> np.ndarray:
    """A BGR uint8 (H, W, 3) image whose resized size is the export's input size: short side
    ``target_size``, 4:3 (capped by ``max_size``)."""
    h = int(cfg.input.test_short)
    w = int(round(h * 4 / 3))
    if cfg.input.test_max > 0:
        w = min(w, int(cfg.input.test_max))
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


def read_choices(path: str) -> dict[str, Any]:
    """The remembered choices in ``path``; an unreadable or malformed file counts as empty (warning)."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        logger.warning("%s: unreadable (%s); measuring the engines again", path, e)
        return {}
    if not isinstance(data, dict):
        logger.warning("%s: not a JSON object; measuring the engines again", path)
        return {}
    return data


def _remember(path: str, key: str, entry: dict[str, Any]) -> None:
    """Add ``entry`` under ``key`` to ``path`` atomically (temporary file + rename); a cache that cannot
    be written only costs a new measurement next time."""
    try:
        data = read_choices(path)
        data[key] = entry
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".choice-", dir=os.path.dirname(path) or ".")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("could not remember the backend choice in %s: %s", path, e)


def measure_side_by_side(
    predictors: dict[str, Any],
    image: np.ndarray,
    warmup: int,
    runs: int,
    clock: Callable[[], float],
    calls_per_round: int = 2,
) -> tuple[dict[str, float], dict[str, str]]:
    """Median ms of ``predict([image])`` per engine over ``runs`` rounds, after ``warmup`` rounds.

    Each round gives every engine ``calls_per_round`` consecutive calls and times the last: the
    engines take turns, so a burst of load on a shared machine hits the same round of each, and the
    untimed call first brings the engine's weights back into the caches the other engines used (one
    engine alone, as in deployment, runs with warm caches). Returns (ms per engine, error per engine
    that failed to run)."""
    failed: dict[str, str] = {}
    times: dict[str, list[float]] = {name: [] for name in predictors}
    for round_ in range(warmup + runs):
        for name, predictor in predictors.items():
            if name in failed:
                continue
            try:
                for _ in range(max(1, calls_per_round)):
                    t0 = clock()
                    predictor.predict([image], keep_images=False)
                    ms = (clock() - t0) * 1e3
            except _ENGINE_ERRORS as e:
                failed[name] = _first_line(e)
                continue
            if round_ >= warmup:
                times[name].append(ms)
    return {n: float(statistics.median(t)) for n, t in times.items() if n not in failed}, failed


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e).strip() else type(e).__name__


def choose_backend(
    candidates: list[str],
    make: Callable[[str], Any],
    image: np.ndarray,
    key: str,
    skipped: Optional[dict[str, str]] = None,
    cache_file: Optional[str] = None,
    warmup: int = 1,
    runs: int = 3,
    remeasure: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[Any, AutoChoice]:
    """The predictor ``make(backend)`` of the fastest of ``candidates`` and how it was chosen.

    A choice remembered under ``key`` in ``cache_file`` (default ``<cache root>/backend_choice.json``)
    is built directly unless ``remeasure``; otherwise every candidate is built and timed on ``image``
    side by side (:func:`measure_side_by_side`), the losers are released, and the choice is remembered. A candidate that fails to
    build or run is reported with its error; :class:`DeployError` when none runs.
    """
    cache_file = cache_file or os.path.join(cache_root(), CHOICE_FILE)
    skipped = dict(skipped or {})
    if not candidates:
        raise DeployError(
            "backend auto: no engine can run this export (" + "; ".join(f"{b}: {r}" for b, r in skipped.items()) + ")"
        )
    if len(candidates) == 1:  # nothing to choose: no timing calls, nothing remembered
        only = EngineTiming(candidates[0], None, "the only engine that can run this export")
        timings = [only] + [EngineTiming(b, None, r) for b, r in skipped.items()]
        return make(candidates[0]), AutoChoice(candidates[0], timings, False, cache_file)
    known = read_choices(cache_file).get(key) if not remeasure else None
    if isinstance(known, dict) and known.get("backend") in candidates:
        try:
            predictor = make(known["backend"])
        except _ENGINE_ERRORS as e:
            logger.warning("backend auto: the remembered %s fails now (%s); measuring again", known["backend"], e)
        else:
            ms = known.get("ms") if isinstance(known.get("ms"), dict) else {}
            timings = [EngineTiming(b, ms.get(b), "" if ms.get(b) is not None else "not measured") for b in candidates]
            return predictor, AutoChoice(known["backend"], timings, True, cache_file)
    built, failed = {}, {}
    for backend in candidates:
        try:
            built[backend] = make(backend)
        except _ENGINE_ERRORS as e:
            failed[backend] = _first_line(e)
    ms, run_failed = measure_side_by_side(built, image, warmup, runs, clock)
    failed.update(run_failed)
    timings = [EngineTiming(b, ms.get(b), failed.get(b, "")) for b in candidates]
    for t in timings:
        logger.info("backend auto: %s %s", t.backend, f"{t.ms:.1f} ms per image" if t.ms is not None else t.reason)
    winner = min(ms, key=ms.__getitem__) if ms else None
    chosen = built.get(winner) if winner else None
    built.clear()  # the losers' memory goes here
    timings += [EngineTiming(b, None, r) for b, r in skipped.items()]
    if winner is None:
        raise DeployError(
            "backend auto: no engine could run this export ("
            + "; ".join(f"{t.backend}: {t.reason}" for t in timings)
            + ")"
        )
    _remember(
        cache_file,
        key,
        {
            "backend": winner,
            "ms": {t.backend: t.ms for t in timings if t.ms is not None},
            "cpu": cpu_name(),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    if hasattr(chosen, "timer"):
        chosen.timer.reset()  # the timing calls are not the user's
    return chosen, AutoChoice(winner, timings, False, cache_file)
