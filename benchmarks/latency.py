"""CPU latency of FCOS per recipe and input size: dygraph vs exported Paddle Inference vs ONNX Runtime vs
OpenVINO, fp32 / bf16 / int8.

    python benchmarks/latency.py --quick                 # one recipe and size, a few runs (about a minute)
    python benchmarks/latency.py                         # the full table (tens of minutes on 2 cores)
    python benchmarks/latency.py --recipes rt_r50 --sizes 512/736 --repeats 10 --threads 2
    .venv-ref/bin/python benchmarks/latency.py --recipes rt_dla34 rt_r50 tv_r50@512/736 --engines paddle-onednn-fp32 \
        onnxruntime openvino-fp32 onnxruntime-int8 openvino-int8 torchvision      # the int8 table of the README

For every recipe (configs/<recipe>.yml) and size (short/max) it times, on one synthetic 480x640
photo-like image, median milliseconds of pre-processing (resize, normalise, pad), inference (network,
box decoding, NMS) and post-processing (per-image Results), after warm-up runs, for:

- ``dygraph``: ``fcos.Detector`` (Paddle eager mode);
- ``paddle-onednn-fp32``: the exported model on Paddle Inference with oneDNN (the deploy default);
- ``paddle-onednn-bf16``: the same in bfloat16, when the CPU has AVX512-BF16 or AMX (with the share of
  fp32 detections it reproduces at IoU >= 0.9);
- ``onnxruntime``: the export converted with paddle2onnx, when paddle2onnx and onnxruntime are installed;
- ``openvino-fp32``: the same ONNX model on OpenVINO's CPU plugin (fcos.deploy.openvino_predictor);
- ``openvino-bf16``: the same in bfloat16 (inference precision hint), when the CPU has AVX512-BF16 or AMX;
- ``onnxruntime-int8`` / ``openvino-int8``: the export quantized by tools/quantize.py (ONNX Runtime
  quantize_static / NNCF), calibrated on 8 synthetic images, with the share of fp32 detections it
  reproduces (Paddle Inference fp32 as reference; random weights make this a lower bound);
- ``auto``: ``--backend auto`` (fcos.deploy.auto_backend), timing the fp32 engines afresh; the note
  says which one it picked;
- ``torchvision``: torchvision's eager ``fcos_resnet50_fpn`` for tv_r50, when torch is importable.

Weights are random but give a realistic number of NMS candidates (fcos.inference.synthetic_weights)
unless ``--weights recipe=FILE`` is given. "vs torchvision" divides torchvision's total time by the
row's (tv_r50 rows, when torch is importable, e.g. ``.venv-ref/bin/python``). GFLOP counts every convolution of the network at the
padded input size (2 x multiply-adds); "% peak" divides it by the end-to-end time and the machine's
FP32 peak, measured with a large numpy matmul (or ``--peak-gflops``). The machine may be shared:
the load average is printed with the table, and only runs measured side by side compare.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_PLAN = {
    "rt_dla34": ["320/448", "416/608", "512/736"],
    "rt_r50": ["320/448", "416/608", "512/736"],
    "tv_r50": ["512/736", "800/1333"],
}


def measure_peak_gflops(threads: int, seconds: float = 2.0) -> float:
    """FP32 GFLOP/s of a 2048x2048 numpy matmul (best of a few), the practical peak of this machine."""
    import numpy as np

    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    b = a.T.copy()
    a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * 2048**3 / (time.perf_counter() - t0) / 1e9)
    return best


def count_conv_gflops(model, height: int, width: int) -> float:
    """GFLOP (2 x MACs) of every Conv2D in ``model.forward_head`` for one (1, 3, H, W) input."""
    import paddle

    total = [0.0]

    def hook(layer, inputs, output):
        cin = int(inputs[0].shape[1])
        kh, kw = (int(k) for k in layer.weight.shape[2:])
        cout, hout, wout = (int(v) for v in output.shape[1:4])
        total[0] += 2.0 * cin / layer._groups * kh * kw * cout * hout * wout

    handles = [m.register_forward_post_hook(hook) for m in model.sublayers() if isinstance(m, paddle.nn.Conv2D)]
    with paddle.no_grad():
        model.forward_head(paddle.zeros([1, 3, height, width]))
    for h in handles:
        h.remove()
    return total[0] / 1e9


def make_image(seed: int = 0):
    """A 480x640 BGR image with textured background and filled shapes (COCO-like size)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
    for _ in range(12):
        x, y = int(rng.integers(0, 560)), int(rng.integers(0, 400))
        w, h = int(rng.integers(30, 200)), int(rng.integers(30, 200))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.rectangle(img, (x, y), (x + w, y + h), color, -1)
    return img


def time_predictor(predictor, image, warmup: int, repeats: int) -> dict[str, float]:
    from fcos.deploy.benchmark import benchmark_predictor

    return benchmark_predictor(predictor, [image], warmup=warmup, repeats=repeats)


def time_torchvision(short: int, max_size: int, image, warmup: int, repeats: int, threads: int):
    """Median ms (pre, infer, post) of torchvision's eager FCOS-R50 (its own transform inside infer)."""
    import numpy as np
    import torch
    import torchvision

    torch.set_num_threads(threads)
    model = torchvision.models.detection.fcos_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=short, max_size=max_size
    ).eval()
    times: dict[str, list[float]] = {"pre": [], "infer": [], "post": []}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            x = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1))).float() / 255.0
            t1 = time.perf_counter()
            out = model([x])[0]
            t2 = time.perf_counter()
            _ = {k: v.numpy() for k, v in out.items()}
            t3 = time.perf_counter()
            if i >= warmup:
                for k, v in zip(("pre", "infer", "post"), (t1 - t0, t2 - t1, t3 - t2)):
                    times[k].append(v)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="rt_dla34 at 320/448 only, 1 warm-up, 3 runs")
    ap.add_argument("--recipes", nargs="+", default=None, help=f"default: {' '.join(DEFAULT_PLAN)}")
    ap.add_argument("--sizes", nargs="+", default=None, help="short/max sizes for every recipe (default: per recipe)")
    ap.add_argument(
        "--engines",
        nargs="+",
        default=[
            "dygraph",
            "paddle-onednn-fp32",
            "paddle-onednn-bf16",
            "onnxruntime",
            "openvino-fp32",
            "openvino-bf16",
            "auto",
            "onnxruntime-int8",
            "openvino-int8",
            "torchvision",
        ],
    )
    ap.add_argument("--weights", nargs="+", default=[], metavar="RECIPE=FILE", help="real weights per recipe")
    ap.add_argument("--threads", type=int, default=0, help="math threads (0: all usable cores)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--peak-gflops", type=float, default=0.0, help="FP32 peak; 0: measure with a numpy matmul")
    ap.add_argument("--workdir", default=None, help="where exports go (default: a temporary directory)")
    ap.add_argument("--calib-images", type=int, default=8, help="synthetic calibration images for the int8 rows")
    ap.add_argument(
        "--reuse-int8", action="store_true", help="keep int8 models already in --workdir (same seeded random weights)"
    )
    args = ap.parse_args(argv)

    threads = args.threads or max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    # Before numpy/Paddle load their math libraries: thread count, and MKL's fast path on AMD CPUs.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    from fcos.utils.runtime import cpu_name, cpu_vendor

    if cpu_vendor() == "AuthenticAMD":
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    if args.quick:
        plan = {"rt_dla34": ["320/448"]}
        args.warmup, args.repeats = 1, 3
    else:
        recipes = args.recipes or list(DEFAULT_PLAN)
        plan = {}
        for r in recipes:  # "tv_r50@512/736,800/1333" picks sizes for one recipe
            name, _, sizes = r.partition("@")
            plan[name] = sizes.split(",") if sizes else (args.sizes or DEFAULT_PLAN.get(name, ["512/736"]))
    weights = dict(w.split("=", 1) for w in args.weights)

    peak = args.peak_gflops or measure_peak_gflops(threads)
    import numpy as np
    import paddle

    import fcos
    from fcos.deploy.predictor import DeployPredictor, cpu_supports_bf16
    from fcos.export import export_model
    from fcos.inference.detector import Detector
    from fcos.inference.matching import match_detections
    from fcos.inference.synthetic_weights import make_detection_rich
    from fcos.utils.runtime import setup_cpu_runtime

    setup_cpu_runtime(threads)
    try:
        import onnxruntime  # noqa: F401
        import paddle2onnx  # noqa: F401

        have_onnx = True
    except ImportError:
        have_onnx = False
    from fcos.deploy.openvino_predictor import OpenVinoPredictor, openvino_available

    have_openvino = openvino_available()
    try:
        import torchvision  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    bf16 = cpu_supports_bf16()
    image = make_image()
    workdir = args.workdir or tempfile.mkdtemp(prefix="fcos-latency-")
    os.environ["FCOS_CACHE_DIR"] = os.path.join(workdir, "cache")  # auto's choices stay with these exports
    rows = []
    header = (
        f"CPU: {cpu_name()}, {threads} thread(s); FP32 peak {peak:.0f} GFLOP/s "
        f"({'given' if args.peak_gflops else 'numpy 2048^3 matmul'}); load average {os.getloadavg()[0]:.2f} "
        f"at start; Paddle {paddle.__version__}; image 480x640; warm-up {args.warmup}, median of {args.repeats}"
    )
    print(header, flush=True)
    for recipe, sizes in plan.items():
        cfg = fcos.load_config(os.path.join(ROOT, "configs", f"{recipe}.yml"))
        paddle.seed(0)
        det = Detector(cfg, weights=weights.get(recipe))
        if recipe not in weights:
            make_detection_rich(det.model, seed=0)
        det.model.eval()
        params = sum(int(np.prod(p.shape)) for p in det.model.parameters()) / 1e6
        export_dir = os.path.join(workdir, recipe)
        export_model(det.model, cfg, export_dir, det.class_names, det.category_ids)
        onnx_file = None
        onnx_engines = {"onnxruntime", "openvino-fp32", "openvino-bf16", "onnxruntime-int8", "openvino-int8", "auto"}
        if have_onnx and onnx_engines & set(args.engines):
            from fcos.export import export_onnx

            onnx_file = export_onnx(export_dir)
        int8_dirs = {}
        for backend in ("onnxruntime", "openvino"):
            if f"{backend}-int8" in args.engines and onnx_file and (backend == "onnxruntime" or have_openvino):
                out = f"{export_dir}_int8_{backend}"
                if args.reuse_int8 and os.path.isfile(os.path.join(out, "infer_cfg.yml")) and recipe not in weights:
                    int8_dirs[backend] = out
                else:
                    int8_dirs[backend] = quantize_for_benchmark(
                        export_dir, workdir, backend, args.calib_images, threads
                    )
        for size in sizes:
            short, max_size = (int(v) for v in size.split("/"))
            from fcos.data.preprocess import preprocess

            shape = preprocess([image], cfg.input, short=short, max_size=max_size).images.shape
            gflop = count_conv_gflops(det.model, int(shape[2]), int(shape[3]))
            cases = []  # (engine name, factory, engine whose detections this one should reproduce)
            det.cfg.input.test_short, det.cfg.input.test_max = short, max_size
            sized = {"cpu_threads": threads, "target_size": short, "max_size": max_size}
            deploy = functools.partial(DeployPredictor, export_dir, use_mkldnn=True, **sized)
            if "dygraph" in args.engines:
                cases.append(("dygraph", functools.partial(lambda d: d, det), None))
            if "paddle-onednn-fp32" in args.engines:
                cases.append(("paddle-onednn-fp32", functools.partial(deploy, precision="fp32"), None))
            if bf16 and "paddle-onednn-bf16" in args.engines:
                cases.append(("paddle-onednn-bf16", functools.partial(deploy, precision="bf16"), "paddle-onednn-fp32"))
            if onnx_file:
                from fcos.deploy.onnx_predictor import OnnxPredictor

                onnx = functools.partial(OnnxPredictor, export_dir, onnx_file, **sized)
                if "onnxruntime" in args.engines:
                    cases.append(("onnxruntime", onnx, None))
                ov = functools.partial(OpenVinoPredictor, export_dir, onnx_file, **sized)
                if have_openvino and "openvino-fp32" in args.engines:
                    cases.append(("openvino-fp32", ov, None))
                if have_openvino and bf16 and "openvino-bf16" in args.engines:
                    cases.append(("openvino-bf16", functools.partial(ov, precision="bf16"), "paddle-onednn-fp32"))
            if "auto" in args.engines:
                from fcos.deploy.factory import create_predictor

                auto = functools.partial(create_predictor, export_dir, backend="auto", remeasure=True, **sized)
                cases.append(("auto", auto, None))
            if "onnxruntime" in int8_dirs:
                from fcos.deploy.onnx_predictor import OnnxPredictor

                int8 = functools.partial(OnnxPredictor, int8_dirs["onnxruntime"], **sized)
                cases.append(("onnxruntime-int8", int8, "paddle-onednn-fp32"))
            if "openvino" in int8_dirs:
                int8 = functools.partial(OpenVinoPredictor, int8_dirs["openvino"], **sized)
                cases.append(("openvino-int8", int8, "paddle-onednn-fp32"))
            outputs = {}
            for name, make, ref in cases:
                pred = make()
                med = time_predictor(pred, image, args.warmup, args.repeats)
                res = pred.predict([image], keep_images=False)[0]
                outputs[name] = res
                note = "; ".join(getattr(pred, "notes", []))
                if ref and ref in outputs:
                    m = match_detections(outputs[ref], res, iou_thresh=0.9, min_score=0.05)
                    note = (note + "; " if note else "") + f"{m.recall:.1%} of fp32 detections matched (IoU>=0.9)"
                rows.append((recipe, size, f"{shape[2]}x{shape[3]}", name, med, gflop, params, note))
                print(_row(rows[-1], peak), flush=True)
            if have_torch and recipe == "tv_r50" and "torchvision" in args.engines:
                med = time_torchvision(short, max_size, image, args.warmup, args.repeats, threads)
                rows.append(
                    (recipe, size, f"{shape[2]}x{shape[3]}", "torchvision-eager", med, gflop, params, "random weights")
                )
                print(_row(rows[-1], peak), flush=True)
    print()
    print(header)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    print()
    print(
        "| recipe | size | input | engine | pre ms | infer ms | post ms | total ms | FPS | GFLOP | % FP32 peak "
        "| params M | vs torchvision | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    torch_ms = {
        (r[0], r[1]): sum(r[4].values()) for r in rows if r[3] == "torchvision-eager"
    }  # (recipe, size) -> total ms
    for row in rows:
        ref = torch_ms.get((row[0], row[1]))
        print(_row(row, peak, ref))
    return 0


def quantize_for_benchmark(export_dir: str, workdir: str, backend: str, num_images: int, threads: int) -> str:
    """tools/quantize.py's work on ``export_dir`` for ``backend``, calibrated on ``num_images`` synthetic
    photo-like images (written under ``workdir/calib``); returns the int8 directory."""
    import cv2

    from fcos.deploy.quantize import quantize_export

    calib = os.path.join(workdir, "calib")
    os.makedirs(calib, exist_ok=True)
    for i in range(num_images):
        path = os.path.join(calib, f"{i:03d}.png")
        if not os.path.isfile(path):
            cv2.imwrite(path, make_image(seed=100 + i))
    out = f"{export_dir}_int8_{backend}"
    t0 = time.perf_counter()
    report = quantize_export(
        export_dir, calib, out, backend=backend, num_images=num_images, overwrite=True, progress=False,
        cpu_threads=threads,
    )  # fmt: skip
    match = ", ".join(f"{r.rate:.0%} >= {r.min_score:g}" for r in report.match)
    print(f"quantized {export_dir} for {backend} in {time.perf_counter() - t0:.0f} s (calibration match {match})")
    return out


def _row(row, peak: float, torch_ms: float | None = None) -> str:
    recipe, size, shape, name, med, gflop, params, note = row
    total = med["pre"] + med["infer"] + med["post"]
    pct = 100.0 * gflop / (total / 1e3) / peak if total > 0 else float("nan")
    vs = f"{torch_ms / total:.2f}x" if torch_ms else ""
    return (
        f"| {recipe} | {size} | {shape} | {name} | {med['pre']:.1f} | {med['infer']:.1f} | {med['post']:.1f} | "
        f"{total:.1f} | {1e3 / total:.2f} | {gflop:.1f} | {pct:.0f}% | {params:.1f} | {vs} | {note} |"
    )


if __name__ == "__main__":
    sys.exit(main())
