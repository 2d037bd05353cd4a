"""Reading oneDNN's verbose log: convolution FLOPs by hand, and the log of a real oneDNN run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fcos.utils.onednn_verbose import conv_flops, parse_exec_lines, summarize_by_kind

LOG = """\
onednn_verbose,v1,info,oneDNN v3.6.2 (commit 28d696724426b943e2f4a0e607f90cdc19aedaf6)
onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,brg_conv_fwd:avx512_core,forward_inference,src:f32,,alg:convolution_direct,mb1_ic3oc64_ih512oh256kh7sh2dh0ph3_iw704ow352kw7sw2dw0pw3,0.5
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_inference,src:f32::blocked:acdb::f0 wei:f32,attr-post-ops:eltwise_relu,alg:convolution_direct,mb1_ic3oc64_ih512oh256kh7sh2dh0ph3_iw704ow352kw7sw2dw0pw3,7.5
I1201 15:18:19.292392  9262 analysis_config.cc:713] unrelated
onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:a::f0 dst:bf16::blocked:a::f0,,,64,0.25
onednn_verbose,v1,primitive,exec,cpu,convolution,brgconv_1x1:avx512_core,forward_inference,src:f32,,alg:convolution_direct,mb2_g4ic64oc32_ih10oh10kh1sh1dh0ph0_iw12ow12kw1sw1dw0pw0,1.0
dnnl_verbose,exec,cpu,reorder,simple:any,undef,src:f32 dst:f32,,,64,0.75
"""


def test_conv_flops_by_hand():
    # ResNet stem on 512x704: 64 x 3 x 7 x 7 multiply-adds at each of 256 x 352 outputs, x2.
    assert conv_flops("mb1_ic3oc64_ih512oh256kh7sh2dh0ph3_iw704ow352kw7sw2dw0pw3") == 2 * 64 * 3 * 49 * 256 * 352
    # Grouped, batch 2: each output channel sees ic / g = 16 inputs.
    assert conv_flops("mb2_g4ic64oc32_ih10oh10kh1sh1dh0ph0_iw12ow12kw1sw1dw0pw0") == 2 * 2 * 32 * 16 * 10 * 12
    # A square problem printed without its width.
    assert conv_flops("mb1_ic8oc8_ih5oh5kh3sh1dh0ph1") == 2 * 8 * 8 * 9 * 25
    with pytest.raises(ValueError, match="not a convolution problem descriptor"):
        conv_flops("64")


def test_parse_and_summarize_skip_creation_info_and_foreign_lines():
    execs = parse_exec_lines(LOG.splitlines())
    assert [(e.kind, e.impl, e.ms) for e in execs] == [
        ("convolution", "brg_conv_fwd:avx512_core", 7.5),
        ("reorder", "jit:uni", 0.25),
        ("convolution", "brgconv_1x1:avx512_core", 1.0),
        ("reorder", "simple:any", 0.75),  # the oneDNN 2.x format
    ]
    kinds = summarize_by_kind(execs)
    assert list(kinds) == ["convolution", "reorder"]  # largest time first
    assert kinds["convolution"] == (2, 8.5, 2 * 64 * 3 * 49 * 256 * 352 + 2 * 2 * 32 * 16 * 10 * 12)
    assert kinds["reorder"] == (2, 1.0, 0.0)


def test_log_of_a_real_onednn_convolution(tmp_path, repo_root):
    """The installed oneDNN's own log, from fcos's oneDNN convolution operator in a child process."""
    script = tmp_path / "conv.py"
    script.write_text(
        "import paddle\n"
        "from fcos.ops import onednn_conv as ops\n"
        "assert ops.set_conv_backend('onednn') == 'onednn'\n"
        "x = paddle.ones([2, 16, 13, 17]); w = paddle.ones([24, 16, 3, 3])\n"
        "print('BEGIN', flush=True)\n"
        "y = ops.onednn_conv2d(x, w, None, [2, 2], [1, 1], [1, 1], 1)\n"
        "print('END', tuple(y.shape), flush=True)\n"
    )
    env = dict(os.environ, ONEDNN_VERBOSE="1", PYTHONPATH=repo_root)
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    log = out.stdout.split("BEGIN", 1)[1]
    assert "END (2, 24, 7, 9)" in log
    convs = [e for e in parse_exec_lines(log.splitlines()) if e.kind == "convolution"]
    assert len(convs) == 1 and convs[0].ms > 0
    assert convs[0].flops == 2 * 2 * 24 * 16 * 9 * 7 * 9
