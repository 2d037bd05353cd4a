"""Train-mode BatchNorm on CPU: Paddle's ``batch_norm`` vs ``fcos_batch_norm`` on DLA-34 (a benchmark, not a test).

    python benchmarks/bn_speed.py                      # batch 2, 512x736, fcos's thread choice
    python benchmarks/bn_speed.py --size 384 512 --batch 2 --repeat 7 --threads 2

Two tables: (1) forward + backward of each of DLA-34's 39 BatchNorms at its input shape (the shapes of a
DLA-34 forward at the given size), summed, and their error against float64; (2) a DLA-34 backbone training
pass (forward, a projection loss of all six levels, backward) with each kernel; both with the oneDNN
convolutions on. Medians of ``--repeat`` runs; the load average is printed before and after (the machine
is shared: compare the two columns of one run, not runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _median_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=2, default=[512, 736], metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="CPU math threads (0: fcos's choice)")
    args = ap.parse_args(argv)

    import fcos  # noqa: F401  (first: it sets GOMP_SPINCOUNT before Paddle loads libgomp)

    # isort: split
    import numpy as np
    import paddle
    import paddle.nn.functional as F

    from fcos.modeling import layers
    from fcos.modeling.backbones.dla import DLA
    from fcos.ops import batch_norm as bn_ops
    from fcos.utils.runtime import setup_cpu_runtime

    runtime = setup_cpu_runtime(args.threads, "onednn")
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min), CPU threads: {runtime}")
    paddle.seed(0)
    model = DLA(norm="bn")
    model.train()
    h, w = args.size
    x = paddle.randn([args.batch, 3, h, w]) * 50.0

    shapes = []
    hooks = [
        m.register_forward_pre_hook(lambda layer, inputs: shapes.append(list(inputs[0].shape)))
        for m in model.sublayers()
        if isinstance(m, paddle.nn.BatchNorm2D)
    ]
    with paddle.no_grad():
        model(x)
    for hk in hooks:
        hk.remove()

    # (1) the BatchNorm layers alone
    rng = np.random.default_rng(0)
    rows, total = [], {"paddle": 0.0, "fcos": 0.0}
    worst = {"paddle": 0.0, "fcos": 0.0}
    for shape in shapes:
        c = shape[1]
        xs = (np.maximum(rng.normal(size=shape), 0) * 1.5 + 0.3).astype("float32")
        xt = paddle.to_tensor(xs, stop_gradient=False)
        wt = paddle.ones([c])
        wt.stop_gradient = False
        bt = paddle.zeros([c])
        bt.stop_gradient = False
        dy = paddle.to_tensor(rng.normal(size=shape).astype("float32"))
        rm, rv = paddle.zeros([c]), paddle.ones([c])
        x64 = xs.astype(np.float64)
        y64 = (x64 - x64.mean((0, 2, 3), keepdims=True)) / np.sqrt(x64.var((0, 2, 3), keepdims=True) + 1e-5)

        def step(kind, xt=xt, wt=wt, bt=bt, rm=rm, rv=rv, dy=dy):
            if kind == "paddle":
                y = F.batch_norm(xt, rm, rv, wt, bt, training=True, momentum=0.9, epsilon=1e-5)
            else:
                y = bn_ops.cpu_batch_norm(xt, rm, rv, wt, bt, 0.9, 1e-5)
            paddle.autograd.backward([y], [dy])
            return y

        row = [shape]
        for kind in ("paddle", "fcos"):
            y = step(kind).numpy()
            err = float(np.linalg.norm(y - y64) / np.linalg.norm(y64))
            worst[kind] = max(worst[kind], err)
            ms = _median_ms(lambda kind=kind: step(kind), args.repeat)
            total[kind] += ms
            row.append(ms)
        rows.append(row)

    print(f"\n(1) DLA-34's {len(shapes)} BatchNorms, forward + backward, batch {args.batch} at {h}x{w}")
    print(f"{'input shape':>24} | {'Paddle ms':>10} | {'fcos ms':>8}")
    for shape, p_ms, f_ms in rows:
        if shape[2] * shape[3] >= (h // 4) * (w // 4):  # the full- to quarter-resolution layers
            print(f"{str(shape):>24} | {p_ms:10.2f} | {f_ms:8.2f}")
    print(f"{'all ' + str(len(shapes)) + ' layers':>24} | {total['paddle']:10.1f} | {total['fcos']:8.1f}")
    print(f"{'worst output error':>24} | {worst['paddle']:10.1e} | {worst['fcos']:8.1e}   (relative L2 vs float64)")

    # (2) the backbone training pass
    projections = None

    def train_pass():
        nonlocal projections
        feats = []
        y = model.base_layer(x)
        for i in range(6):
            y = getattr(model, f"level{i}")(y)
            feats.append(y)
        if projections is None:
            projections = [paddle.randn(f.shape) for f in feats]
        loss = sum((f * p).mean() for f, p in zip(feats, projections))
        loss.backward()
        model.clear_gradients()

    times = {}
    real_applies = layers.cpu_batch_norm_applies
    for kind in ("paddle", "fcos"):
        layers.cpu_batch_norm_applies = real_applies if kind == "fcos" else (lambda layer, x: False)
        try:
            times[kind] = _median_ms(train_pass, max(3, args.repeat // 2))
        finally:
            layers.cpu_batch_norm_applies = real_applies
    print(f"\n(2) DLA-34 backbone forward + backward, batch {args.batch} at {h}x{w}, oneDNN convolutions")
    print(f"{'BatchNorm kernel':>24} | {'ms / pass':>10}")
    print(f"{'Paddle batch_norm':>24} | {times['paddle']:10.0f}")
    print(f"{'fcos_batch_norm':>24} | {times['fcos']:10.0f}")
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
