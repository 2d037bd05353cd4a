"""Training-step speed and peak memory per recipe at a fixed input size (a benchmark, not a test).

    python benchmarks/train_speed.py                      # all recipes, batch 2, 512x512, CPU or GPU
    python benchmarks/train_speed.py --recipes tv_r50 --size 512 --batch 2 --steps 5
    python benchmarks/train_speed.py --threads 2           # CPU math threads (default: fcos's choice)
    python benchmarks/train_speed.py --recipes tv_r50 --cpu-conv paddle onednn   # both conv backends

Each recipe runs in its own process (so peak memory is per recipe), with the CPU settings the library
applies itself (fcos.utils.runtime). ``--cpu-conv`` picks the dygraph convolution backend
(fcos/ops/onednn_conv.py; "auto" is what training uses). A step is forward + loss + backward + SGD update on random images
with a few random boxes. For tv_r50 the same step of torchvision's ``fcos_resnet50_fpn`` (frozen BN,
3 trainable stages, like the recipe) is measured side by side when torch/torchvision are importable.
Numbers on a shared machine vary by +-20 %; compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

RECIPES = ["demo_shapes", "rt_dla34", "rt_r50", "r50_ms_2x", "tv_r50"]


def _boxes(rng, size: int, n: int = 4):
    import numpy as np

    xy = rng.uniform(0, size * 0.6, size=(n, 2))
    wh = rng.uniform(size * 0.05, size * 0.4, size=(n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, size - 1)], axis=1).astype("float32")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def measure_paddle(recipe: str, size: int, batch: int, steps: int, warmup: int, threads: int, cpu_conv: str) -> dict:
    import fcos  # noqa: F401  (first: it sets GOMP_SPINCOUNT before Paddle loads libgomp, fcos.utils.runtime)

    # isort: split
    import numpy as np
    import paddle

    from fcos.config import load_config
    from fcos.engine.optim import build_optimizer
    from fcos.modeling import build_model
    from fcos.utils.runtime import setup_cpu_runtime

    runtime = setup_cpu_runtime(threads, cpu_conv)
    cfg = load_config(os.path.join(ROOT, "configs", f"{recipe}.yml"), overrides=["model.backbone.pretrained=null"])
    model = build_model(cfg)
    model.train()
    opt = build_optimizer(model, cfg)
    rng = np.random.default_rng(0)
    images = paddle.to_tensor(rng.normal(0, 1, size=(batch, 3, size, size)).astype("float32"))
    targets = [
        {
            "boxes": paddle.to_tensor(_boxes(rng, size)),
            "labels": paddle.to_tensor(rng.integers(0, cfg.model.num_classes, 4)),
        }
        for _ in range(batch)
    ]
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        losses = model(images, None, None, targets)
        losses["loss"].backward()
        opt.step()
        opt.clear_grad()
        float(losses["loss"])
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    gpu_mb = None
    if paddle.is_compiled_with_cuda() and paddle.get_device().startswith("gpu"):
        gpu_mb = paddle.device.cuda.max_memory_allocated() / 2**20
    med = sorted(times)[len(times) // 2]
    return {
        "framework": f"paddle {paddle.__version__} conv={runtime['cpu_conv']}",
        "recipe": recipe,
        "step_s": med,
        "images_per_s": batch / med,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_gpu_mb": gpu_mb,
        "threads": runtime["threads"],
    }


def measure_torchvision(size: int, batch: int, steps: int, warmup: int, threads: int) -> dict:
    import numpy as np
    import torch
    from torchvision.models.detection import fcos_resnet50_fpn

    from fcos.utils.runtime import default_num_threads

    torch.set_num_threads(threads if threads > 0 else default_num_threads())
    model = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=size, max_size=size)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.001, momentum=0.9)
    rng = np.random.default_rng(0)
    images = [torch.from_numpy(rng.uniform(0, 1, size=(3, size, size)).astype("float32")) for _ in range(batch)]
    targets = [
        {"boxes": torch.from_numpy(_boxes(rng, size)), "labels": torch.from_numpy(rng.integers(1, 91, 4))}
        for _ in range(batch)
    ]
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    return {
        "framework": f"torch {torch.__version__}",
        "recipe": "torchvision fcos_resnet50_fpn",
        "step_s": med,
        "images_per_s": batch / med,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_gpu_mb": None,
        "threads": torch.get_num_threads(),
    }


def _child(args: argparse.Namespace) -> int:
    if args.child == "torchvision":
        out = measure_torchvision(args.size, args.batch, args.steps, args.warmup, args.threads)
    else:
        out = measure_paddle(args.child, args.size, args.batch, args.steps, args.warmup, args.threads, args.cpu_conv[0])
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def _run_child(name: str, args: argparse.Namespace, cpu_conv: str = "auto") -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--cpu-conv", cpu_conv]
    cmd += ["--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps)]
    cmd += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"recipe": name, "error": err}


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=RECIPES, choices=RECIPES)
    ap.add_argument("--size", type=int, default=512, help="square input side")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="CPU math threads (0: the library's default)")
    ap.add_argument(
        "--cpu-conv", nargs="+", default=["auto"], choices=["auto", "onednn", "paddle"], help="conv backend(s) to time"
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)

    from fcos.utils.runtime import cpu_name, default_num_threads

    threads = args.threads or default_num_threads()
    print(
        f"train step, batch {args.batch}, {args.size}x{args.size}, median of {args.steps} after {args.warmup} warm-up"
    )
    print(f"CPU: {cpu_name()}, {threads} thread(s); load average {os.getloadavg()[0]:.2f} (shared machine: +-20 %)")
    rows = []
    for recipe in args.recipes:
        for cpu_conv in args.cpu_conv:
            rows.append(_run_child(recipe, args, cpu_conv))
        if recipe == "tv_r50":
            if _torch_available():
                rows.append(_run_child("torchvision", args))
            else:
                rows.append({"recipe": "torchvision fcos_resnet50_fpn", "error": "torch/torchvision not installed"})
    print(f"\n{'recipe':<32} {'framework':<28} {'s/step':>8} {'img/s':>7} {'peak RSS MB':>12} {'peak GPU MB':>12}")
    for r in rows:
        if "error" in r:
            print(f"{r['recipe']:<32} {'-':<28} {'error: ' + r['error']}")
            continue
        gpu = f"{r['peak_gpu_mb']:.0f}" if r.get("peak_gpu_mb") else "-"
        print(
            f"{r['recipe']:<32} {r['framework']:<28} {r['step_s']:>8.3f} {r['images_per_s']:>7.2f} "
            f"{r['peak_rss_mb']:>12.0f} {gpu:>12}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
