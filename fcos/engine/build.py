"""Explicit wiring of a training run: config -> model, optimizer, loaders, evaluator, callbacks -> Trainer.

    cfg = load_config("configs/demo_shapes.yml", overrides=["schedule.max_steps=100"])
    trainer = build_trainer(cfg, resume=True)
    trainer.fit()

Everything is built here in plain code (no registries), in the order a reader would follow.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import sys
from collections.abc import Iterable
from typing import Any, Optional, Union

import numpy as np
import paddle

from fcos.config import Config, dump_config
from fcos.engine.callbacks.base import Callback
from fcos.engine.callbacks.defaults import build_default_callbacks
from fcos.engine.optim import build_optimizer, resolve_epoch_schedule
from fcos.engine.trainer import Trainer, attach_file_log, detach_file_log
from fcos.evaluation.coco_eval import CocoEvaluator
from fcos.utils import dist
from fcos.utils.runtime import setup_cpu_runtime

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and Paddle (model initialisation is then the same on every rank)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    paddle.seed(seed)


def write_run_info(run_dir: str, cfg: Config, runtime: dict[str, Any]) -> None:
    """``config.yml`` (the resolved config) and ``env.json`` (versions, devices, command line)."""
    os.makedirs(run_dir, exist_ok=True)
    dump_config(cfg, os.path.join(run_dir, "config.yml"))
    env = {
        "command": sys.argv,
        "python": sys.version.split()[0],
        "paddle": paddle.__version__,
        "cuda": bool(paddle.is_compiled_with_cuda()),
        "device": paddle.get_device(),
        "platform": platform.platform(),
        "world_size": dist.get_world_size(),
        "cpu_runtime": runtime,
        "config_source": cfg.source,
    }
    with open(os.path.join(run_dir, "env.json"), "w", encoding="utf-8") as f:
        json.dump(env, f, indent=2, default=str)


def check_training_data(cfg: Config, run_dir: str) -> None:
    """``data.check_on_start``: run the dataset checks on the training split; errors stop the run."""
    from fcos.data.checks import check_dataset
    from fcos.data.coco import DatasetError

    split = cfg.data.train
    report = check_dataset(split.ann_file, split.image_dir, out_dir=os.path.join(run_dir, "dataset_check"))
    for w in report.warnings[:20]:
        logger.warning("dataset check: %s", w)
    if not report.ok:
        raise DatasetError(
            f"dataset check of {split.ann_file} failed:\n{report.summary()}\n"
            "fix the data (tools/check_dataset.py shows the details) or set data.check_on_start=false"
        )
    logger.info("dataset check of %s passed", split.ann_file)


def validation_image_paths(evaluator: CocoEvaluator, image_dir: str, limit: int) -> dict[int, str]:
    """The first ``limit`` validation images (image id -> file), drawn with predictions in VisualDL."""
    out: dict[int, str] = {}
    for image_id in sorted(evaluator.coco_gt.getImgIds())[: max(0, limit)]:
        info = evaluator.coco_gt.imgs[image_id]
        out[int(image_id)] = os.path.join(image_dir, info["file_name"])
    return out


def build_trainer(
    cfg: Config,
    resume: Union[bool, str, None] = False,
    weights: Optional[str] = None,
    callbacks: Optional[Iterable[Callback]] = None,
    visualdl: bool = True,
) -> Trainer:
    """A ready-to-``fit`` :class:`Trainer` for ``cfg``.

    Args:
        cfg: resolved config; the run directory is ``cfg.train.output_dir``.
        resume: True: continue from the newest readable checkpoint of the run directory (start fresh if
            there is none); a path: that checkpoint; False/None: start at step 0.
        weights: weights-only initialisation (fine-tuning) through
            :func:`fcos.checkpoint.weights.load_weights`, its report printed; default ``train.init_weights``.
            Ignored for the parameters a resumed checkpoint restores.
        callbacks: extra callbacks, after the defaults (monitoring ones still run last).
        visualdl: write VisualDL logs.
    """
    from fcos.checkpoint.weights import WeightsError, load_weights
    from fcos.data.loader import build_train_dataset, build_train_loader, build_val_dataset, build_val_loader
    from fcos.modeling import build_model

    runtime = setup_cpu_runtime(cfg.train.num_threads, cfg.train.cpu_conv)
    world_size = dist.init_distributed()
    rank = dist.get_rank()
    run_dir = cfg.train.output_dir
    try:
        if rank == 0:
            attach_file_log(run_dir)
            write_run_info(run_dir, cfg, runtime)
            if cfg.data.check_on_start:
                check_training_data(cfg, run_dir)
        dist.barrier()
        seed_everything(cfg.train.seed)

        train_ds = build_train_dataset(cfg)
        cfg = resolve_epoch_schedule(cfg, len(train_ds))  # epoch-based recipes: steps from the dataset's size
        val_ds = build_val_dataset(cfg, label_map=train_ds.label_map) if cfg.data.val.ann_file else None
        class_names = list(train_ds.class_names)
        category_ids = [int(c) for c in train_ds.label_map.category_ids]

        model = build_model(cfg)
        init = weights or cfg.train.init_weights
        if init:
            report = load_weights(model, init)
            logger.info("%s", report)
            if not report.loaded:
                raise WeightsError(f"-w/--weights {init}: no tensor matches the model ({cfg.source})")
        optimizer = build_optimizer(model, cfg)
        if world_size > 1:
            model = paddle.DataParallel(model)

        evaluator = val_loader = None
        image_paths: dict[int, str] = {}
        if val_ds is not None:
            evaluator = CocoEvaluator(cfg.data.val.ann_file, category_ids=category_ids, class_names=class_names)
            val_loader = build_val_loader(cfg, val_ds)
            image_paths = validation_image_paths(evaluator, cfg.data.val.image_dir, cfg.train.vis_images)

        all_callbacks = build_default_callbacks(cfg, run_dir, image_paths, class_names, visualdl=visualdl)
        all_callbacks += list(callbacks or [])
        return Trainer(
            cfg,
            model,
            optimizer,
            train_loader_fn=lambda start: build_train_loader(cfg, train_ds, start_step=start),
            val_loader=val_loader,
            evaluator=evaluator,
            callbacks=all_callbacks,
            run_dir=run_dir,
            class_names=class_names,
            category_ids=category_ids,
            resume_from=resume,
        )
    except BaseException:
        detach_file_log()  # a failed build leaves no handler (and no open train.log) behind
        raise
