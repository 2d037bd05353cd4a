"""Train an FCOS detector.

Examples:
    python tools/train.py -c configs/demo_shapes.yml
    python tools/train.py -c configs/rt_dla34.yml -o data.batch_size=8 train.output_dir=output/dla_bs8
    python tools/train.py -c configs/rt_dla34.yml --resume                 # newest checkpoint of the run
    python tools/train.py -c configs/rt_dla34.yml --resume output/rt_dla34/checkpoints/step_0005000.safetensors
    python tools/train.py -c configs/my_data.yml -w weights/rt_dla34.safetensors   # fine-tune (weights only)
    python -m paddle.distributed.launch --gpus 0,1,2,3 tools/train.py -c configs/rt_dla34.yml

Run directory (train.output_dir): config.yml, env.json, train.log, metrics.csv, results.png, vdl/
(visualdl --logdir DIR/vdl --language en), eval/ (metrics.json, pr_curve.png), checkpoints/
(step_*.safetensors for --resume, best.safetensors = weights for eval/infer/export).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _stop_on_sigterm() -> None:
    """Turn SIGTERM (job schedulers, docker stop) into a normal exception, so files being written are
    cleaned up and the callbacks' on_exception runs."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", required=True, help="YAML config, e.g. configs/rt_dla34.yml")
    ap.add_argument("-o", "--opt", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CKPT",
        help="continue exactly: the newest readable checkpoint of the run directory, or CKPT",
    )
    ap.add_argument("-w", "--weights", default=None, help="initial weights only (fine-tuning); prints a load report")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the (resumed or -w) weights and exit")
    ap.add_argument("--no-visualdl", action="store_true", help="do not write VisualDL logs")
    args = ap.parse_args(argv)

    from fcos.config import ConfigError, load_config
    from fcos.engine.build import build_trainer
    from fcos.utils.user_errors import user_errors

    try:
        cfg = load_config(args.config, overrides=args.opt)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _stop_on_sigterm()
    try:
        trainer = build_trainer(cfg, resume=args.resume, weights=args.weights, visualdl=not args.no_visualdl)
        if args.eval_only:
            if args.resume:
                trainer.resume(args.resume)
            metrics = trainer.evaluate()
            return 0 if metrics or not trainer.is_main else 1
        state = trainer.fit()
    except user_errors() as e:  # bad config, data, weights or checkpoint: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    if trainer.is_main:
        print(f"finished at step {state.global_step}/{state.max_steps}; run directory: {trainer.run_dir}")
        if state.best_metric is not None:
            print(f"best {cfg.train.monitor} = {state.best_metric:.4f} at step {state.best_step}")
    return 1 if state.stop_reason.startswith("non-finite") else 0


if __name__ == "__main__":
    sys.exit(main())
