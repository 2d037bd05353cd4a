"""Where the exported predictor's time goes on CPU: convolutions, reorders, other oneDNN work, and
everything outside oneDNN (GroupNorm, decoding, NMS, pre-processing), from oneDNN's own verbose log.

    python benchmarks/predictor_breakdown.py --model_dir output/export/tv_r50 --size 512/736
    python benchmarks/predictor_breakdown.py --model_dir DIR --precision fp32 bf16 --reference-ms 880

Each precision runs in a child process with ``ONEDNN_VERBOSE=1``; after warm-up, every timed
``DeployPredictor.predict`` call is split into the primitives oneDNN executed. The convolutions' FLOPs
come from oneDNN's problem descriptors, so "conv GFLOP/s" is the rate of the convolution kernels
themselves. The last column is a bound: the end-to-end time can never drop below the convolutions'
time, so ``reference ms / conv ms`` is the largest speed-up over a reference (``--reference-ms``,
e.g. torchvision's end-to-end time from benchmarks/latency.py) that these kernels allow, even if
everything else took no time at all. The verbose log itself costs a little time per primitive.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BEGIN, END = "=== fcos-breakdown begin ===", "=== fcos-breakdown end"


def worker(args: argparse.Namespace) -> int:
    """Child process: warm up, then print BEGIN / oneDNN log / END <ms> around each timed call."""
    from latency import make_image

    from fcos.deploy.predictor import DeployPredictor

    short, max_size = (int(v) for v in args.size.split("/")) if args.size else (None, None)
    predictor = DeployPredictor(
        args.model_dir, precision=args.worker, cpu_threads=args.threads, target_size=short, max_size=max_size
    )
    image = make_image(0)
    for _ in range(args.warmup):
        predictor.predict([image])
    for _ in range(args.repeats):
        print(BEGIN, flush=True)
        t0 = time.perf_counter()
        predictor.predict([image])
        ms = (time.perf_counter() - t0) * 1e3
        print(f"{END} {ms:.3f}", flush=True)
    print(f"input {predictor.last_input_shape}", flush=True)
    return 0


def breakdown(stdout: str) -> tuple[list[dict[str, float]], str]:
    """Per timed call: total, conv, reorder, other oneDNN and outside-oneDNN ms, conv FLOPs."""
    from fcos.utils.onednn_verbose import parse_exec_lines, summarize_by_kind

    calls, lines, inside, shape = [], [], False, ""
    for line in stdout.splitlines():
        if line.startswith(BEGIN):
            inside, lines = True, []
        elif line.startswith(END):
            inside = False
            total = float(line.split()[-1])
            kinds = summarize_by_kind(parse_exec_lines(lines))
            conv = kinds.get("convolution", (0, 0.0, 0.0))
            reorder = kinds.get("reorder", (0, 0.0, 0.0))
            onednn = sum(v[1] for v in kinds.values())
            calls.append(
                {
                    "total": total,
                    "conv": conv[1],
                    "conv_flops": conv[2],
                    "reorder": reorder[1],
                    "other_onednn": onednn - conv[1] - reorder[1],
                    "outside": total - onednn,
                }
            )
        elif inside:
            lines.append(line)
        elif line.startswith("input "):
            shape = line[len("input ") :]
    return calls, shape


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", required=True, help="an export directory (infer_cfg.yml + model)")
    ap.add_argument("--precision", nargs="+", default=None, help="fp32 and/or bf16 (default: both if supported)")
    ap.add_argument("--size", default=None, help="short/max resize, e.g. 512/736 (default: infer_cfg.yml)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: all usable cores)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--reference-ms", type=float, default=None, help="end-to-end ms of a reference to bound against")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    from fcos.deploy.predictor import cpu_supports_bf16
    from fcos.utils.runtime import cpu_name

    precisions = args.precision or (["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"])
    header = "| precision | total ms | conv ms | conv GFLOP | conv GFLOP/s | reorder ms | other oneDNN ms | outside oneDNN ms |"
    if args.reference_ms:
        header += f" bound vs {args.reference_ms:.0f} ms |"
    rows, shape = [], ""
    for precision in precisions:
        cmd = [sys.executable, os.path.abspath(__file__), "--model_dir", args.model_dir, "--worker", precision]
        cmd += ["--threads", str(args.threads), "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
        if args.size:
            cmd += ["--size", args.size]
        env = dict(os.environ, ONEDNN_VERBOSE="1", DNNL_VERBOSE="1")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{precision}: the predictor failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            return proc.returncode
        calls, shape = breakdown(proc.stdout)
        if not calls:
            print(f"{precision}: no oneDNN verbose output (is oneDNN enabled in infer_cfg.yml?)", file=sys.stderr)
            return 1
        med = {k: statistics.median(c[k] for c in calls) for k in calls[0]}
        row = (
            f"| {precision} | {med['total']:.1f} | {med['conv']:.1f} | {med['conv_flops'] / 1e9:.1f} | "
            f"{med['conv_flops'] / 1e6 / med['conv']:.0f} | {med['reorder']:.1f} | {med['other_onednn']:.1f} | "
            f"{med['outside']:.1f} |"
        )
        if args.reference_ms:
            row += f" {args.reference_ms / med['conv']:.2f}x |"
        rows.append(row)
    print(
        f"\n{args.model_dir}: input {shape}; CPU: {cpu_name()}; median of {args.repeats} after {args.warmup} warm-up\n"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
