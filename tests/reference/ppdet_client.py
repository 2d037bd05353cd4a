"""Client side of ``ppdet_worker.py``: call PaddleDetection code in ``.venv-ppdet`` from a test in ``.venv-ref``.

    worker = PpdetWorker()                        # starts .venv-ppdet/bin/python tests/reference/ppdet_worker.py
    info = worker.call("ppdet_tasks:build_fcos", name="fcos", seed=0)
    out = worker.call("ppdet_tasks:forward", name="fcos", image=x, im_shape=s, scale_factor=f)
    out["bbox"], out["bbox_num"]                  # numpy arrays; JSON values come back as they were
    worker.close()

Keyword arguments that are numpy arrays travel in an npz file, the others as JSON; the answer merges the
returned arrays and JSON values into one dict. Task functions are ``f(ctx, **kwargs) -> dict`` in any module
importable from tests/reference (``ppdet_tasks.py`` holds the common ones) or a ``/path/file.py:function``;
``ctx`` persists for the worker's life. A failing task raises ``PpdetTaskError`` with the worker's traceback;
the worker keeps running. Its other output is in ``log_path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from typing import Any, Optional

import numpy as np
from envs import PPDET_PYTHON

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ppdet_worker.py")


class PpdetTaskError(RuntimeError):
    """A task failed inside the PaddleDetection worker (message: its traceback) or the worker died."""


class PpdetWorker:
    """A long-lived ``.venv-ppdet`` Python process serving ``call``s (one at a time)."""

    def __init__(self, python: str = PPDET_PYTHON, workdir: Optional[str] = None, omp_threads: int = 2) -> None:
        self.workdir = workdir or tempfile.mkdtemp(prefix="ppdet_worker_")
        os.makedirs(self.workdir, exist_ok=True)
        self.log_path = os.path.join(self.workdir, "worker.log")
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, OMP_NUM_THREADS=str(omp_threads), PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)  # nothing of .venv-ref leaks into .venv-ppdet
        self._proc = subprocess.Popen(
            [python, WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=self.workdir,
            env=env,
            text=True,
        )
        self._n = 0

    def call(self, fn: str, **kwargs: Any) -> dict[str, Any]:
        """Run ``fn`` ("module:function") in the worker; returns its arrays and JSON values in one dict."""
        self._n += 1
        arrays = {k: np.asarray(v) for k, v in kwargs.items() if isinstance(v, np.ndarray)}
        plain = {k: v for k, v in kwargs.items() if k not in arrays}
        inputs = os.path.join(self.workdir, f"in_{self._n}.npz") if arrays else None
        output = os.path.join(self.workdir, f"out_{self._n}.npz")
        if inputs:
            np.savez(inputs, **arrays)
        request = {"call": fn, "kwargs": plain, "inputs": inputs, "output": output}
        if self._proc.poll() is not None:
            raise PpdetTaskError(f"the PaddleDetection worker has exited ({self._proc.returncode}); {self._tail()}")
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise PpdetTaskError(f"the PaddleDetection worker died during {fn}; {self._tail()}")
        answer = json.loads(line)
        if not answer["ok"]:
            raise PpdetTaskError(f"{fn} failed in .venv-ppdet:\n{answer['error']}")
        result: dict[str, Any] = dict(answer["json"])
        with np.load(output, allow_pickle=False) as npz:
            result.update({k: npz[k] for k in npz.files})
        for path in (inputs, output):
            if path:
                os.remove(path)
        return result

    def _tail(self, n: int = 3000) -> str:
        self._log.flush()
        with open(self.log_path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        return f"last output ({self.log_path}):\n{text[-n:]}"

    def close(self) -> None:
        """End the worker (closing stdin lets it finish its loop)."""
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
