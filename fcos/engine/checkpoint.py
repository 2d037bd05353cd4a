"""Trainer checkpoints: one ``.safetensors`` file, written atomically and durably.

Layout: tensors ``model.<param>``, ``optim.<param>/<slot>`` (optimizer slots keyed by the
parameter's structured name, so they survive Paddle's auto-generated names changing between
processes) and ``ema.<param>``; metadata ``{"format": "fcos-train-checkpoint", "state": <JSON>}``
with step, best metric, schedule, scaler, RNG, callback states and the resolved config. No pickle.

Writing goes through :func:`fcos.checkpoint.weights.write_file_atomic`: a temp file in the same
directory, fsynced, renamed over the target with ``os.replace``, then the directory is fsynced, so
a crash leaves either the old or the new file, never a half-written one under the final name.
Temp files of a killed process are removed when the next run starts
(:func:`remove_stale_temp_files`). Reading uses safetensors only (no pickle).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from typing import Any, Optional

import numpy as np
import paddle
from safetensors import safe_open
from safetensors.numpy import save as st_save_bytes

from fcos.checkpoint.weights import TRAIN_CHECKPOINT_FORMAT, write_file_atomic

logger = logging.getLogger(__name__)

FORMAT = TRAIN_CHECKPOINT_FORMAT  # "fcos-train-checkpoint"
STEP_FILE = re.compile(r"^step_(\d+)\.safetensors$")
BEST_FILE = "best.safetensors"
# write_file_atomic names its temp files ".<target name>.<random>.tmp" in the target's directory
TMP_PATTERN = ".*.tmp"


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable or not a trainer checkpoint; the message names the file."""


# ------------------------------------------------------------------------------------------------
# file I/O
# ------------------------------------------------------------------------------------------------


def remove_stale_temp_files(directory: str) -> int:
    """Delete temp files left by a process killed while writing; returns how many were removed."""
    n = 0
    for p in glob.glob(os.path.join(directory, TMP_PATTERN)):
        try:
            os.remove(p)
            n += 1
        except OSError:
            pass
    return n


def _to_numpy(t: Any) -> np.ndarray:
    if isinstance(t, paddle.Tensor):
        if t.dtype == paddle.bfloat16:
            t = t.astype("float32")
        return np.ascontiguousarray(t.numpy())
    return np.ascontiguousarray(np.asarray(t))


def save_checkpoint(path: str, tensors: dict[str, Any], state: dict[str, Any]) -> None:
    """Write ``tensors`` (name -> paddle/numpy array) and the JSON-able ``state`` to ``path``
    atomically and durably (temp file in the same directory, fsync, rename, fsync directory)."""
    arrays = {k: _to_numpy(v) for k, v in tensors.items()}
    metadata = {"format": FORMAT, "state": json.dumps(state, allow_nan=True)}
    data = st_save_bytes(arrays, metadata=metadata)
    try:
        write_file_atomic(path, data)
    except BaseException:
        # An interrupt (SIGTERM -> SystemExit, Ctrl-C) can land between the temp file's creation and
        # the writer's own cleanup; remove this target's temp files here as well.
        directory, name = os.path.split(os.path.abspath(path))
        for tmp in glob.glob(os.path.join(directory, glob.escape("." + name) + ".*.tmp")):
            try:
                os.remove(tmp)
            except OSError:
                pass
        raise


def load_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a trainer checkpoint -> (tensors, state). Raises :class:`CheckpointError` naming the file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a trainer checkpoint (metadata format {meta.get('format')!r}); "
            "use -w/--weights to load weights only"
        )
    try:
        state = json.loads(meta["state"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has a broken state record: {e}") from e
    return arrays, state


def list_step_checkpoints(directory: str) -> list[str]:
    """``step_*.safetensors`` in ``directory``, oldest first (by step number)."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        m = STEP_FILE.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    return [p for _, p in sorted(found)]


def find_best_weights(run_dir: str) -> str:
    """The weights to evaluate/export from a run: ``checkpoints/best.safetensors`` when an evaluation
    produced one, else the newest ``checkpoints/step_*.safetensors``. Raises ``FileNotFoundError``."""
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    best = os.path.join(ckpt_dir, BEST_FILE)
    if os.path.isfile(best):
        return best
    steps = list_step_checkpoints(ckpt_dir)
    if steps:
        return steps[-1]
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir} (train first: tools/train.py -c CONFIG)")


def load_latest_checkpoint(directory: str) -> Optional[tuple[str, dict[str, np.ndarray], dict[str, Any]]]:
    """Newest readable ``step_*.safetensors`` in ``directory`` -> (path, tensors, state), or None.

    An unreadable newest file is reported and the previous one is tried.
    """
    for path in reversed(list_step_checkpoints(directory)):
        try:
            tensors, state = load_checkpoint(path)
        except CheckpointError as e:
            logger.warning("%s; falling back to the previous checkpoint", e)
            continue
        return path, tensors, state
    return None


# ------------------------------------------------------------------------------------------------
# model / optimizer state <-> flat tensors
# ------------------------------------------------------------------------------------------------


def model_tensors(model: paddle.nn.Layer, prefix: str = "model.") -> dict[str, np.ndarray]:
    return {prefix + k: _to_numpy(v) for k, v in model.state_dict().items()}


def load_model_tensors(model: paddle.nn.Layer, tensors: dict[str, np.ndarray], prefix: str = "model.") -> None:
    """Load ``prefix``-ed tensors into ``model`` strictly (resume must restore every parameter)."""
    own = model.state_dict()
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or bad_shape:
        raise CheckpointError(
            "checkpoint does not match the model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, shape mismatch {bad_shape[:5]} "
            "(was it trained with another config? use -w to load weights only)"
        )
    model.set_state_dict({k: paddle.to_tensor(v, dtype=own[k].dtype) for k, v in state.items()})


def _param_name_map(model: paddle.nn.Layer) -> dict[str, str]:
    """Paddle's internal parameter name (``conv2d_3.w_0``) -> structured name (``backbone.conv1.weight``)."""
    return {p.name: n for n, p in model.named_parameters()}


def optimizer_tensors(
    optimizer: paddle.optimizer.Optimizer, model: paddle.nn.Layer, prefix: str = "optim."
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Optimizer state as (``optim.<structured>/<slot>`` tensors, JSON-able extras)."""
    internal_to_struct = _param_name_map(model)
    by_length = sorted(internal_to_struct, key=len, reverse=True)
    tensors: dict[str, np.ndarray] = {}
    extras: dict[str, Any] = {}
    for key, value in optimizer.state_dict().items():
        if isinstance(value, dict):
            if key == "master_weights":
                for pname, t in value.items():
                    tensors[f"{prefix}@master/{internal_to_struct.get(pname, pname)}"] = _to_numpy(t)
            else:
                extras[key] = {
                    k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in value.items()
                }
            continue
        if not isinstance(value, (paddle.Tensor, np.ndarray)):
            extras[key] = value
            continue
        owner = next((n for n in by_length if key.startswith(n + "_")), None)
        if owner is None:
            tensors[f"{prefix}@raw/{key}"] = _to_numpy(value)
        else:
            tensors[f"{prefix}{internal_to_struct[owner]}/{key[len(owner) + 1 :]}"] = _to_numpy(value)
    return tensors, extras


def load_optimizer_tensors(
    optimizer: paddle.optimizer.Optimizer,
    model: paddle.nn.Layer,
    tensors: dict[str, np.ndarray],
    extras: dict[str, Any],
    prefix: str = "optim.",
) -> None:
    """Inverse of :func:`optimizer_tensors` for the current process's parameter names."""
    struct_to_internal = {n: p.name for n, p in model.named_parameters()}
    state: dict[str, Any] = dict(extras)
    master: dict[str, paddle.Tensor] = {}
    for key, value in tensors.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if rest.startswith("@master/"):
            struct = rest[len("@master/") :]
            master[struct_to_internal.get(struct, struct)] = paddle.to_tensor(value)
        elif rest.startswith("@raw/"):
            state[rest[len("@raw/") :]] = paddle.to_tensor(value)
        else:
            struct, slot = rest.rsplit("/", 1)
            if struct not in struct_to_internal:
                raise CheckpointError(f"optimizer state for unknown parameter '{struct}'")
            state[f"{struct_to_internal[struct]}_{slot}"] = paddle.to_tensor(value)
    if master:
        state["master_weights"] = master
    optimizer.set_state_dict(state)
