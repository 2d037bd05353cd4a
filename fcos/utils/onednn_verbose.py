"""Read oneDNN's verbose log (``ONEDNN_VERBOSE=1``): time per primitive kind, FLOPs of convolutions.

oneDNN prints one line per executed primitive, for example::

    onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_inference,
    src:f32::blocked:acdb::f0 wei:...,attr-post-ops:eltwise_relu,alg:convolution_direct,
    mb1_ic256oc256_ih64oh64kh3sh1dh0ph1_iw88ow88kw3sw1dw0pw1,0.856

(one line in the log): kind, implementation, ..., problem descriptor, milliseconds. Older oneDNN
versions (2.x) print ``dnnl_verbose,exec,cpu,...`` without the ``v1,primitive`` fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_CONV_DIMS = re.compile(r"(mb|g|ic|oc|ih|oh|kh|iw|ow|kw)(\d+)")


@dataclass(frozen=True)
class PrimitiveExec:
    """One executed primitive: ``kind`` (convolution, reorder, ...), ``impl`` (brg_conv_fwd:avx512_core,
    ...), wall time ``ms``, and ``flops`` (2 x multiply-adds) for convolutions, else 0."""

    kind: str
    impl: str
    ms: float
    flops: float


def conv_flops(problem: str) -> float:
    """FLOPs (2 x multiply-adds) of a 2-D convolution from its oneDNN problem descriptor,
    e.g. ``mb1_g32ic64oc64_ih8oh8kh3..._iw8ow8kw3...``. ``ic``/``oc`` count all groups; a missing
    width (square problems may omit it) equals the height. Raises ValueError for other strings."""
    dims: dict[str, int] = {}
    for key, value in _CONV_DIMS.findall(problem):
        dims.setdefault(key, int(value))  # first occurrence: "ih" before any "dh"/"ph"-like look-alikes
    missing = [k for k in ("ic", "oc", "oh", "kh") if k not in dims]
    if missing:
        raise ValueError(f"not a convolution problem descriptor (no {', '.join(missing)}): {problem!r}")
    mb, groups = dims.get("mb", 1), dims.get("g", 1)
    ow, kw = dims.get("ow", dims["oh"]), dims.get("kw", dims["kh"])
    return 2.0 * mb * dims["oc"] * (dims["ic"] // groups) * dims["oh"] * ow * dims["kh"] * kw


def parse_exec_lines(lines: Iterable[str]) -> list[PrimitiveExec]:
    """The executed primitives in ``lines`` (other lines, creation lines and info lines are skipped)."""
    execs = []
    for line in lines:
        if not (line.startswith("onednn_verbose,") or line.startswith("dnnl_verbose,")):
            continue
        fields = line.rstrip("\n").split(",")
        if "exec" not in fields[1:4]:
            continue
        at = fields.index("exec")
        if len(fields) < at + 4:
            continue
        kind, impl = fields[at + 2], fields[at + 3]
        try:
            ms = float(fields[-1])
        except ValueError:
            continue
        flops = conv_flops(fields[-2]) if kind == "convolution" else 0.0
        execs.append(PrimitiveExec(kind, impl, ms, flops))
    return execs


def summarize_by_kind(execs: Iterable[PrimitiveExec]) -> dict[str, tuple[int, float, float]]:
    """kind -> (calls, total ms, total FLOPs), kinds ordered by time, largest first."""
    totals: dict[str, list[float]] = {}
    for e in execs:
        t = totals.setdefault(e.kind, [0, 0.0, 0.0])
        t[0] += 1
        t[1] += e.ms
        t[2] += e.flops
    ordered = sorted(totals.items(), key=lambda kv: -kv[1][1])
    return {k: (int(v[0]), v[1], v[2]) for k, v in ordered}
