"""Parameter count and FLOPs of a recipe's model at its test size.

    python tools/summary.py -c configs/rt_dla34.yml
    python tools/summary.py -c configs/tv_r50.yml --size 800x1088
    python tools/summary.py -c configs/demo_shapes.yml -o model.num_classes=10

MACs are counted with forward hooks on every Conv2D and Linear (``paddle.flops`` fails with numpy 2);
FLOPs = 2 x MACs. Norms, activations, pooling and post-processing are not counted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fcos  # noqa: E402,F401  first: importing fcos sets the OpenMP environment before Paddle loads

# isort: split
import paddle  # noqa: E402
import paddle.nn as nn  # noqa: E402

from fcos.config import Config, load_config  # noqa: E402
from fcos.modeling import build_model  # noqa: E402
from fcos.utils.runtime import setup_cpu_runtime  # noqa: E402

COMPONENTS = ("backbone", "fpn", "head")


def _is_bn_stat(name: str) -> bool:
    return name.endswith("._mean") or name.endswith("._variance")


def count_parameters(model: nn.Layer) -> dict[str, dict[str, int]]:
    """Per component ("backbone", "fpn", "head", "all"): ``params`` (parameters without BN running statistics,
    frozen ones included), ``trainable`` (``stop_gradient`` False) and ``state`` (state-dict values without BN
    running statistics, i.e. params + FrozenBatchNorm2D weight/bias; comparable to a torch parameter count
    that includes FrozenBN affine buffers)."""
    out = {c: {"params": 0, "trainable": 0, "state": 0} for c in (*COMPONENTS, "all")}

    def add(name: str, key: str, n: int) -> None:
        comp = name.split(".", 1)[0]
        if comp in out:
            out[comp][key] += n
        out["all"][key] += n

    for name, p in model.named_parameters():
        if _is_bn_stat(name):
            continue
        n = int(math.prod(p.shape))
        add(name, "params", n)
        if not p.stop_gradient:
            add(name, "trainable", n)
    for name, v in model.state_dict().items():
        if not _is_bn_stat(name):
            add(name, "state", int(math.prod(v.shape)))
    return out


def count_macs(model: nn.Layer, images: paddle.Tensor) -> dict[str, int]:
    """Multiply-accumulates of ``model.forward_head(images)`` per component (and "all"), from Conv2D/Linear hooks.

    Conv2D: out_elements * (in_channels / groups) * kh * kw; Linear: out_elements * in_features.
    """
    macs = {c: 0 for c in (*COMPONENTS, "all")}
    handles = []

    def make_hook(comp: str):
        def hook(layer: nn.Layer, inputs, output) -> None:
            w = layer.weight.shape
            if isinstance(layer, nn.Conv2D):
                n = int(math.prod(output.shape)) * int(w[1]) * int(w[2]) * int(w[3])
            else:  # Linear weight is (in, out)
                n = int(math.prod(output.shape)) * int(w[0])
            macs[comp] += n
            macs["all"] += n

        return hook

    for name, layer in model.named_sublayers():
        if isinstance(layer, (nn.Conv2D, nn.Linear)):
            comp = name.split(".", 1)[0]
            handles.append(layer.register_forward_post_hook(make_hook(comp if comp in macs else "all")))
    try:
        model.eval()
        with paddle.no_grad():
            model.forward_head(images)
    finally:
        for h in handles:
            h.remove()
    return macs


def default_size(cfg: Config) -> tuple[int, int]:
    """(test_short, test_max), each rounded up to the size divisor: the largest padded input at test time."""
    d = max(1, cfg.input.size_divisor)
    return tuple(int(math.ceil(s / d) * d) for s in (cfg.input.test_short, cfg.input.test_max))  # type: ignore[return-value]


def format_table(cfg_path: str, size: tuple[int, int], params: dict, macs: dict) -> str:
    rows = [("component", "params", "trainable", "state (no BN stats)", "GMACs", "GFLOPs")]
    for comp in (*COMPONENTS, "all"):
        p = params[comp]
        rows.append(
            (
                comp if comp != "all" else "total",
                f"{p['params']:,}",
                f"{p['trainable']:,}",
                f"{p['state']:,}",
                f"{macs[comp] / 1e9:.2f}",
                f"{2 * macs[comp] / 1e9:.2f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{cfg_path}: input 1x3x{size[0]}x{size[1]}"]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0 or i == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like HxW (e.g. 512x736), got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"--size must be positive, got {text!r}")
    return h, w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="recipe YAML, e.g. configs/rt_dla34.yml")
    parser.add_argument(
        "-o", "--override", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides"
    )
    parser.add_argument("--size", type=parse_size, default=None, help="input HxW (default: test size, padded)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.override)
    cfg.model.backbone.pretrained = None  # counting needs no weights
    setup_cpu_runtime(cfg.train.num_threads, cfg.train.cpu_conv)
    paddle.set_device("cpu")
    model = build_model(cfg)
    size = args.size or default_size(cfg)
    params = count_parameters(model)
    macs = count_macs(model, paddle.zeros([1, 3, size[0], size[1]], dtype="float32"))
    print(format_table(args.config, size, params, macs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
