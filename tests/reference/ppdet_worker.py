"""PaddleDetection worker: runs task functions in ``.venv-ppdet`` for tests that run in ``.venv-ref``.

PaddleDetection needs numpy < 2 and its own requirements, so it lives in its own venv, and the tests talk to
it through this process (arrays cross as ``.npz`` files, nothing else is shared; our package is not imported
here). Started by ``ppdet_client.PpdetWorker`` (the ``ppdet_worker`` fixture of ``conftest.py``); it serves
one request per line on stdin and answers one line on its original stdout::

    request:  {"call": "ppdet_tasks:forward", "kwargs": {...JSON...}, "inputs": "in.npz" | null, "output": "out.npz"}
    answer:   {"ok": true, "json": {...}}  |  {"ok": false, "error": "<traceback>"}

``call`` is ``module:function`` (a module importable from ``tests/reference``, or ``/path/to/file.py:function``).
The function is called as ``function(ctx, **kwargs, **arrays_of_inputs_npz)``; ``ctx`` is a dict that lives as
long as the worker (keep built models there). It returns a dict: its numpy arrays go to ``output`` (npz), the
rest (JSON-able) to ``json``. Everything else the process prints goes to stderr (the client's log file).

One-shot use from a shell (no client)::

    .venv-ppdet/bin/python tests/reference/ppdet_worker.py --call ppdet_tasks:build_fcos \\
        --kwargs '{"seed": 0, "save": "/tmp/fcos.pdparams"}' --output /tmp/answer.npz
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import traceback
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))


def _resolve(call: str) -> Callable[..., Any]:
    module_name, _, func_name = call.rpartition(":")
    if not module_name or not func_name:
        raise ValueError(f"call must be 'module:function' or '/path/file.py:function', got {call!r}")
    if module_name.endswith(".py"):
        name = "ppdet_task_" + os.path.splitext(os.path.basename(module_name))[0]
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, module_name)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {module_name}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    return getattr(module, func_name)


def handle(ctx: dict, request: dict) -> dict:
    """Run one request; returns the JSON part of the answer (arrays are written to ``request['output']``)."""
    import numpy as np

    kwargs = dict(request.get("kwargs") or {})
    if request.get("inputs"):
        with np.load(request["inputs"], allow_pickle=False) as npz:
            kwargs.update({k: npz[k] for k in npz.files})
    result = _resolve(request["call"])(ctx, **kwargs) or {}
    arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
    rest = {k: v for k, v in result.items() if not isinstance(v, np.ndarray)}
    if request.get("output"):
        np.savez(request["output"], **arrays)
    elif arrays:
        raise ValueError(f"{request['call']} returned arrays {sorted(arrays)} but the request has no 'output'")
    return rest


def serve() -> None:
    """Answer requests from stdin until EOF; answers go to the original stdout, all other output to stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # C-level and Python prints of PaddleDetection/Paddle no longer reach the protocol stream
    sys.stdout = sys.stderr
    ctx: dict = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = {"ok": True, "json": handle(ctx, json.loads(line))}
        except BaseException:  # noqa: BLE001 - every failure goes back to the test as text
            answer = {"ok": False, "error": traceback.format_exc()}
        proto.write(json.dumps(answer) + "\n")


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, HERE)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--call", help="module:function to run once (default: serve requests on stdin)")
    parser.add_argument("--kwargs", default="{}", help="JSON keyword arguments")
    parser.add_argument("--inputs", default=None, help="npz whose arrays are passed as keyword arguments")
    parser.add_argument("--output", default=None, help="npz receiving the returned arrays")
    args = parser.parse_args(argv)
    if args.call is None:
        serve()
        return 0
    request = {"call": args.call, "kwargs": json.loads(args.kwargs), "inputs": args.inputs, "output": args.output}
    print(json.dumps(handle({}, request)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
