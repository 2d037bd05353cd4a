"""Images per second end to end on a stream of images (a folder, a video) with 1 or more images in flight.

    python benchmarks/throughput.py --model_dir output/export/rt_dla34_int8 --size 512/736
    python benchmarks/throughput.py --model_dir DIR_fp32 DIR_int8 --backend openvino --streams 1 2 3 --images 24

For each model directory and stream count it builds the predictor (tools/deploy_infer.py's factory,
``streams`` = images in flight, OpenVINO only above 1) and feeds ``--images`` distinct synthetic 480x640
photo-like images through ``predict_stream``, the path folders, videos and ``eval --model_dir`` take:
pre-processing, network with in-graph NMS, and post-processing, no drawing or writing. The rate is
images / wall-clock seconds. Configurations take turns for ``--rounds`` rounds (each after a warm-up
pass), and the median rate per configuration is printed, so a burst of load on a shared machine hits
all of them alike. The single-image latency of each configuration (median of its rounds' per-call
inference times) shows what the rate costs each image.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", nargs="+", required=True, help="export or int8 directories")
    ap.add_argument("--backend", default=None, help="default: each directory's infer_cfg.yml runtime.backend")
    ap.add_argument("--streams", nargs="+", type=int, default=[1, 2], help="images in flight to compare")
    ap.add_argument("--size", default=None, help="short/max input size (default: infer_cfg.yml)")
    ap.add_argument("--images", type=int, default=16, help="images per timed pass")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: all usable cores)")
    args = ap.parse_args(argv)

    from latency import make_image

    from fcos.deploy.factory import create_predictor
    from fcos.utils.runtime import cpu_name

    short, max_size = (int(v) for v in args.size.split("/")) if args.size else (None, None)
    images = [make_image(i) for i in range(args.images)]
    jobs = [([img], None, i) for i, img in enumerate(images)]
    configs = []
    for model_dir in args.model_dir:
        for streams in args.streams:
            pred = create_predictor(model_dir, backend=args.backend, cpu_threads=args.threads, target_size=short,
                                    max_size=max_size, streams=streams)  # fmt: skip
            for _ in pred.predict_stream(jobs[: max(2, streams)]):  # warm-up: kernels for this input size
                pass
            configs.append({"dir": model_dir, "streams": streams, "pred": pred, "rates": [], "infer_ms": []})
    print(
        f"CPU: {cpu_name()}, {args.threads or len(os.sched_getaffinity(0))} thread(s); load average "
        f"{os.getloadavg()[0]:.2f} at start; {args.images} images of 480x640 per pass; {args.rounds} rounds",
        flush=True,
    )
    for _ in range(args.rounds):
        for c in configs:
            pred = c["pred"]
            pred.timer.reset()
            t0 = time.perf_counter()
            for _ in pred.predict_stream(jobs, keep_images=False):
                pass
            c["rates"].append(args.images / (time.perf_counter() - t0))
            c["infer_ms"].append(pred.timer.median_ms()["infer"])
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    print()
    print("| model | engine | input | images in flight | images/s (median of rounds) | rounds | infer ms per image |")
    print("|---|---|---|---|---|---|---|")
    for c in configs:
        pred = c["pred"]
        shape = "x".join(map(str, pred.last_input_shape[2:])) if pred.last_input_shape else "?"
        rates = ", ".join(f"{r:.2f}" for r in c["rates"])
        print(
            f"| {os.path.basename(os.path.normpath(c['dir']))} | {pred.engine()} | {shape} | {c['streams']} | "
            f"{statistics.median(c['rates']):.2f} | {rates} | {statistics.median(c['infer_ms']):.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
