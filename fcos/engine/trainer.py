"""An iteration-based training loop; every side job lives in a callback.

``Trainer.fit`` runs ``state.max_steps`` optimizer steps. One step: forward under autocast, loss
terms in fp32, backward (scaled with fp16), unscale, optimizer step (skipped on overflow), zero
grads. Logging, LR, evaluation, checkpoints, NaN handling, EMA and early stopping are callbacks
(:mod:`fcos.engine.callbacks`), dispatched in list order with monitoring callbacks last.

    trainer = Trainer(cfg, model, optimizer, train_loader_fn=lambda start: build_train_loader(cfg, ds, start),
                      val_loader=val_loader, evaluator=evaluator, callbacks=callbacks, run_dir="output/run")
    trainer.fit(resume=True)
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Optional, Union

import numpy as np
import paddle

from fcos.checkpoint.convert_common import weights_metadata
from fcos.checkpoint.weights import save_weights
from fcos.config import Config, config_to_dict
from fcos.engine.amp import MixedPrecision
from fcos.engine.callbacks.base import Callback, order_callbacks
from fcos.engine.checkpoint import (
    BEST_FILE,
    CheckpointError,
    list_step_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    load_model_tensors,
    load_optimizer_tensors,
    model_tensors,
    optimizer_tensors,
    save_checkpoint,
)
from fcos.engine.state import TrainState
from fcos.evaluation.coco_eval import CocoEvaluator
from fcos.evaluation.loop import run_evaluation
from fcos.utils import dist

logger = logging.getLogger(__name__)


def step_seed(seed: int, step: int) -> int:
    """The paddle seed of step ``step``: a function of (seed, step) only, so resumed steps draw the
    same random numbers as an uninterrupted run without saving generator state."""
    return (seed * 1_000_003 + step * 7_919 + 12_345) % (2**31 - 1)


_ATTACHED: list[logging.Handler] = []


def attach_file_log(run_dir: str, name: str = "train.log") -> logging.Handler:
    """Send the ``fcos`` loggers' INFO output to ``<run_dir>/<name>`` and to stderr in a short format,
    not through the root handler Paddle installs (which would print every line twice). Undone by
    :func:`detach_file_log` when training ends."""
    detach_file_log()
    os.makedirs(run_dir, exist_ok=True)
    root = logging.getLogger("fcos")
    root.setLevel(logging.INFO)
    root.propagate = False
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler = logging.FileHandler(os.path.join(run_dir, name), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    for h in (console, handler):
        root.addHandler(h)
        _ATTACHED.append(h)
    return handler


def detach_file_log() -> None:
    """Remove the handlers :func:`attach_file_log` added and let ``fcos`` records propagate again."""
    root = logging.getLogger("fcos")
    while _ATTACHED:
        h = _ATTACHED.pop()
        root.removeHandler(h)
        h.close()
    root.propagate = True


class Trainer:
    """Owns the model, optimizer, AMP and the typed state; callbacks do the rest.

    Args:
        cfg: resolved config (saved in every checkpoint).
        model: the FCOS layer, possibly wrapped in ``paddle.DataParallel`` (``module`` is the inner layer).
        optimizer: from :func:`fcos.engine.optim.build_optimizer`.
        train_loader_fn: ``start_step -> iterator of Batch``; called once, after a resume.
        val_loader: iterable of ``Batch`` for ``validate`` (every rank iterates it; batches are shared out).
        evaluator: a :class:`CocoEvaluator` (``None``: no evaluation).
        callbacks: see :mod:`fcos.engine.callbacks`; monitoring ones run last.
        run_dir: where checkpoints (``run_dir/checkpoints``) and logs go.
        amp: mixed precision policy (default from ``cfg.train.amp``).
        max_steps: default ``cfg.schedule.max_steps``.
        class_names, category_ids: the dataset's label map (contiguous label -> name / COCO id), stored
            with the best weights; default ``cfg.data.class_names`` and ids 1..C.
        resume_from: default of ``fit(resume=...)``.
    """

    def __init__(
        self,
        cfg: Config,
        model: paddle.nn.Layer,
        optimizer: paddle.optimizer.Optimizer,
        train_loader_fn: Callable[[int], Iterable[Any]],
        val_loader: Optional[Iterable[Any]] = None,
        evaluator: Optional[CocoEvaluator] = None,
        callbacks: Iterable[Callback] = (),
        run_dir: str = "output/run",
        amp: Optional[MixedPrecision] = None,
        max_steps: Optional[int] = None,
        class_names: Optional[list[str]] = None,
        category_ids: Optional[list[int]] = None,
        resume_from: Union[bool, str, None] = None,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.module: paddle.nn.Layer = getattr(model, "_layers", model)
        self.optimizer = optimizer
        self.train_loader_fn = train_loader_fn
        self.val_loader = val_loader
        self.evaluator = evaluator
        self.callbacks = order_callbacks(list(callbacks))
        self.run_dir = run_dir
        self.ckpt_dir = os.path.join(run_dir, "checkpoints")
        self.amp = amp if amp is not None else MixedPrecision(cfg.train.amp, cfg.train.amp_dtype)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_main = self.rank == 0
        self.state = TrainState(
            max_steps=int(max_steps if max_steps is not None else cfg.schedule.max_steps),
            batch_size=cfg.data.batch_size,
            world_size=self.world_size,
            seed=cfg.train.seed,
        )
        self.metrics: dict[str, float] = {}
        self._timer: Optional[tuple[float, int]] = None
        n = cfg.model.num_classes
        self.class_names = list(class_names or cfg.data.class_names or [f"class_{i}" for i in range(n)])
        self.category_ids = [int(c) for c in (category_ids or range(1, n + 1))]
        self.resume_from = resume_from

    # ------------------------------------------------------------------------------------------
    # hooks
    # ------------------------------------------------------------------------------------------

    def call(self, hook: str, *args: Any) -> None:
        """Call ``hook(self, *args)`` on every callback in order."""
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # ------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------

    def _refuse_to_overwrite_a_previous_run(self) -> None:
        """A fresh run would overwrite the step checkpoints and ``best`` already in ``ckpt_dir``."""
        existing = list_step_checkpoints(self.ckpt_dir) if os.path.isdir(self.ckpt_dir) else []
        if os.path.isfile(os.path.join(self.ckpt_dir, BEST_FILE)):
            existing.append(os.path.join(self.ckpt_dir, BEST_FILE))
        if existing:
            names = ", ".join(os.path.basename(p) for p in existing[:4]) + (" ..." if len(existing) > 4 else "")
            raise CheckpointError(
                f"{self.ckpt_dir} already holds checkpoints of a previous run ({names}); nothing was "
                "overwritten. Continue that run with --resume, or start a new one in another directory "
                "with -o train.output_dir=DIR"
            )

    def fit(self, resume: Union[bool, str, None] = None) -> TrainState:
        """Train until ``state.max_steps`` or a callback sets ``state.should_stop``.

        ``resume``: a checkpoint path, or True for the newest readable one in ``run_dir/checkpoints``
        (starting fresh when there is none); default ``self.resume_from``.
        """
        if resume is None:
            resume = self.resume_from
        if not resume:
            self._refuse_to_overwrite_a_previous_run()
        self.call("setup", "fit")
        try:
            if resume:
                self.resume(resume)
            self.state.start_step = self.state.global_step
            loader: Iterator[Any] = iter(self.train_loader_fn(self.state.global_step))
            self.model.train()
            self.call("on_fit_start")
            self._timer = (time.perf_counter(), self.state.global_step)
            while self.state.global_step < self.state.max_steps and not self.state.should_stop:
                step = self.state.global_step
                batch = next(loader)
                paddle.seed(step_seed(self.state.seed, step))
                self.call("on_train_batch_start", batch, step)
                outputs = self.training_step(batch)
                self.state.global_step = step + 1
                self._update_metrics(outputs)
                self.call("on_train_batch_end", outputs, batch, step)
                self._sync_should_stop()
            if self.state.should_stop and self.state.stop_reason:
                logger.info("training stopped at step %d: %s", self.state.global_step, self.state.stop_reason)
            self.call("on_fit_end")
        except BaseException as exc:
            self.call("on_exception", exc)
            raise
        finally:
            self.call("teardown", "fit")
            detach_file_log()
        return self.state

    def training_step(self, batch: Any) -> dict[str, float]:
        """One optimizer step; returns the loss terms as floats (averaged over ranks)."""
        with self.amp.autocast():
            losses = self.model(batch.images, batch.im_shape, batch.scale_factor, batch.targets)
        losses = {k: v.astype("float32") for k, v in losses.items()}
        self.call("on_before_backward", losses)
        # every rank must take the same branch: the backward pass all-reduces gradients
        self.state.skip_step = self._any_rank(self.state.skip_step)
        if not self.state.skip_step:
            self.amp.backward(losses["loss"])
            self.call("on_after_backward")
            self.amp.unscale(self.optimizer)
            self.call("on_before_optimizer_step", self.optimizer)
        if self.state.skip_step or not self.amp.step(self.optimizer):
            self.state.skipped_steps += 1
        self.state.skip_step = False
        self.optimizer.clear_grad()
        return self._reduce_losses(losses)

    def _reduce_losses(self, losses: dict[str, paddle.Tensor]) -> dict[str, float]:
        names = sorted(losses)
        stacked = paddle.stack([losses[k].detach().reshape([]) for k in names])
        stacked = dist.all_reduce_mean(stacked)
        return dict(zip(names, stacked.numpy().tolist()))

    def _update_metrics(self, outputs: dict[str, float]) -> None:
        for k, v in outputs.items():
            self.metrics[f"train/{k}"] = float(v)
        now, step = time.perf_counter(), self.state.global_step
        if self._timer is not None and step > self._timer[1]:
            t0, s0 = self._timer
            rate = (step - s0) * self.state.batch_size / max(now - t0, 1e-9)
            prev = self.metrics.get("train/images_per_sec")
            self.metrics["train/images_per_sec"] = rate if prev is None else 0.9 * prev + 0.1 * rate
        self._timer = (now, step)

    def _any_rank(self, flag: bool) -> bool:
        """True if ``flag`` is True on any rank (``flag`` itself with one process)."""
        if self.world_size == 1:
            return bool(flag)
        return float(dist.all_reduce_sum(paddle.to_tensor([1.0 if flag else 0.0])).item()) > 0

    def _sync_should_stop(self) -> None:
        self.state.should_stop = self._any_rank(self.state.should_stop)

    # ------------------------------------------------------------------------------------------
    # validation
    # ------------------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Evaluation outside ``fit`` (``tools/train.py --eval-only``): the validation hooks run with
        ``setup``/``teardown`` stage "validate" (checkpoint callbacks do not save in this stage)."""
        self.call("setup", "validate")
        try:
            return self.validate()
        finally:
            self.call("teardown", "validate")
            detach_file_log()

    def validate(self) -> dict[str, float]:
        """Evaluate ``val_loader`` with ``evaluator``; updates ``metrics`` and calls the validation hooks.

        Every rank must call it; results are gathered on rank 0 and the metrics sent to all ranks.
        """
        if self.evaluator is None or self.val_loader is None:
            return {}
        self.call("on_validation_start")
        was_training = self.module.training
        try:
            metrics = run_evaluation(
                self.module,
                self.val_loader,
                self.evaluator,
                on_batch=lambda dets, batch, i: self.call("on_validation_batch_end", dets, batch, i),
                rank=self.rank,
                world_size=self.world_size,
                progress=f"eval @ step {self.state.global_step}",
            )
        finally:
            if was_training:
                self.model.train()
        metrics = dist.broadcast_object(metrics, src=0)
        self.metrics.update(metrics)
        self.state.last_eval_step = self.state.global_step
        self.call("on_validation_end", metrics)
        return metrics

    # ------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------

    def checkpoint_dict(self) -> dict[str, Any]:
        """``{"tensors": {...}, "state": {...}}`` of the current moment (after ``on_save_checkpoint``)."""
        tensors = model_tensors(self.module)
        optim_tensors, optim_extras = optimizer_tensors(self.optimizer, self.module)
        tensors.update(optim_tensors)
        np_state = np.random.get_state()
        py_state = random.getstate()
        state = {
            "train": self.state.to_dict(),
            "optimizer": optim_extras,
            "amp": self.amp.state_dict(),
            "rng": {
                "python": [py_state[0], list(py_state[1]), py_state[2]],
                "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            },
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
            "metrics": dict(self.metrics),
            "config": config_to_dict(self.cfg),
            "class_names": list(self.class_names),
            "category_ids": list(self.category_ids),
            "paddle_version": paddle.__version__,
        }
        ckpt = {"tensors": tensors, "state": state}
        self.call("on_save_checkpoint", ckpt)
        return ckpt

    def save_checkpoint(self, path: str) -> None:
        """Write everything needed for an exact resume to ``path`` (atomic, durable)."""
        ckpt = self.checkpoint_dict()
        save_checkpoint(path, ckpt["tensors"], ckpt["state"])

    def save_weights(self, path: str, extra: Optional[dict[str, Any]] = None) -> None:
        """Write the weights that were just evaluated (EMA weights when EMA is on) as a weights-only
        ``.safetensors`` with the metadata ``-c CONFIG -w FILE`` tools need (classes, category ids, input)."""
        ckpt = self.checkpoint_dict()
        tensors = ckpt["tensors"]
        prefix = "ema." if any(k.startswith("ema.") for k in tensors) else "model."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        meta = weights_metadata(
            self.cfg,
            recipe=os.path.splitext(os.path.basename(self.cfg.source))[0] if self.cfg.source else "custom",
            source=f"trained with fcos-paddle, step {self.state.global_step}",
            class_names=self.class_names,
            category_ids=self.category_ids,
            extra={"step": self.state.global_step, "ema": prefix == "ema.", **(extra or {})},
        )
        save_weights(path, state, meta)

    def resume(self, source: Union[bool, str]) -> Optional[str]:
        """Restore everything from ``source`` (a path, or True: newest readable in ``ckpt_dir``)."""
        if source is True or source == "auto":
            found = load_latest_checkpoint(self.ckpt_dir)
            if found is None:
                logger.info("no checkpoint in %s: starting from step 0", self.ckpt_dir)
                return None
            path, tensors, state = found
        else:
            path = str(source)
            tensors, state = load_checkpoint(path)
        self.load_checkpoint_dict({"tensors": tensors, "state": state}, path)
        logger.info("resumed from %s at step %d", path, self.state.global_step)
        return path

    def load_checkpoint_dict(self, ckpt: dict[str, Any], path: str = "<checkpoint>") -> None:
        tensors, state = ckpt["tensors"], ckpt["state"]
        self._check_compatible(state, path)
        load_model_tensors(self.module, tensors)
        load_optimizer_tensors(self.optimizer, self.module, tensors, state.get("optimizer", {}))
        max_steps = self.state.max_steps
        self.state.load_dict(state.get("train", {}))
        self.state.max_steps = max_steps  # the config decides how long to train (extending a run works)
        self.state.world_size, self.state.batch_size = self.world_size, self.cfg.data.batch_size
        self.amp.load_state_dict(state.get("amp", {}))
        rng = state.get("rng", {})
        if "python" in rng:
            v, internal, gauss = rng["python"]
            random.setstate((v, tuple(internal), gauss))
        if "numpy" in rng:
            name, keys, pos, has_gauss, cached = rng["numpy"]
            np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        cb_states = state.get("callbacks", {})
        for cb in self.callbacks:
            if cb.state_key in cb_states:
                cb.load_state_dict(cb_states[cb.state_key])
        self.metrics.update(state.get("metrics", {}))
        self.call("on_load_checkpoint", ckpt)

    def _check_compatible(self, state: dict[str, Any], path: str) -> None:
        old = state.get("config", {})
        old_names = state.get("class_names") or []
        if old_names and list(old_names) != list(self.class_names):
            raise CheckpointError(
                f"{path} was trained on classes {old_names}, this run has {self.class_names}; "
                "to fine-tune on new classes use -w/--weights instead of --resume"
            )
        old_batch = old.get("data", {}).get("batch_size")
        old_world = state.get("train", {}).get("world_size")
        if old_batch is not None and old_batch != self.cfg.data.batch_size:
            logger.warning(
                "resuming with data.batch_size %s (checkpoint: %s): the data order and LR differ from the original run",
                self.cfg.data.batch_size,
                old_batch,
            )
        if old_world is not None and old_world != self.world_size:
            logger.warning("resuming on %d device(s), the checkpoint was written by %s", self.world_size, old_world)
