"""The oneDNN convolution operator (fcos/ops) against Paddle's own conv2d, forward and backward."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from fcos.modeling.layers import Conv2D
from fcos.ops import onednn_conv as ops


def _run(use_onednn, x_np, w_np, b_np, stride, padding, dilation, groups, x_grad=True, w_grad=True):
    x = paddle.to_tensor(x_np, stop_gradient=not x_grad)
    w = paddle.to_tensor(w_np, stop_gradient=not w_grad)
    b = None if b_np is None else paddle.to_tensor(b_np, stop_gradient=not w_grad)
    if use_onednn:
        y = ops.onednn_conv2d(x, w, b, [stride, stride], padding, [dilation, dilation], groups)
    else:
        y = F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    # A loss whose gradient differs per output element, so transposed/misplaced gradients show.
    weights = paddle.to_tensor(np.linspace(-1.0, 1.0, int(np.prod(y.shape))).reshape(y.shape).astype("float32"))
    (y * y * 0.5 + y * weights).sum().backward()
    grads = [t.grad.numpy() if t is not None and t.grad is not None else None for t in (x, w, b)]
    return y.numpy(), grads


CASES = [
    # (N, C, H, W, O, k, stride, padding, dilation, groups, bias)
    (2, 3, 33, 47, 16, 7, 2, 3, 1, 1, False),  # a ResNet stem on an odd-sized input
    (2, 16, 33, 47, 32, 3, 2, 1, 1, 1, False),  # stride 2 where oneDNN's right padding is smaller
    (1, 16, 20, 21, 16, 3, 1, 2, 2, 1, True),  # dilation
    (2, 32, 17, 18, 64, 3, 1, 1, 1, 2, True),  # groups
    (2, 8, 9, 9, 5, 3, 1, 1, 1, 1, True),  # a head-like conv with bias and an odd channel count
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])) + f"_s{c[6]}p{c[7]}d{c[8]}g{c[9]}")
def test_forward_and_gradients_match_paddle_conv(backend, case):
    n, c, h, w, o, k, stride, padding, dilation, groups, bias = case
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, c, h, w)).astype("float32")
    wt = (rng.normal(size=(o, c // groups, k, k)) / np.sqrt(c * k * k / groups)).astype("float32")
    b = rng.normal(size=(o,)).astype("float32") if bias else None
    ref_y, ref_grads = _run(False, x, wt, b, stride, padding, dilation, groups)
    got_y, got_grads = _run(True, x, wt, b, stride, padding, dilation, groups)
    assert got_y.shape == ref_y.shape
    np.testing.assert_allclose(got_y, ref_y, rtol=1e-4, atol=1e-4 * np.abs(ref_y).max())
    for name, ref, got in zip(("x", "weight", "bias"), ref_grads, got_grads):
        if ref is None:
            assert got is None, name
            continue
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(), err_msg=f"grad {name}")


def test_frozen_weights_and_image_inputs_skip_unneeded_gradients(backend):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 10, 10)).astype("float32")
    wt = rng.normal(size=(6, 4, 3, 3)).astype("float32") * 0.2
    # Frozen weights, input needs a gradient (a frozen layer inside a trained network).
    ref_y, (ref_dx, ref_dw, _) = _run(False, x, wt, None, 1, 1, 1, 1, x_grad=True, w_grad=False)
    got_y, (got_dx, got_dw, _) = _run(True, x, wt, None, 1, 1, 1, 1, x_grad=True, w_grad=False)
    assert ref_dw is None and got_dw is None
    np.testing.assert_allclose(got_dx, ref_dx, rtol=1e-4, atol=1e-4 * np.abs(ref_dx).max())
    # An image input (no gradient) into a trained first layer.
    _, (ref_dx, ref_dw, _) = _run(False, x, wt, None, 2, 1, 1, 1, x_grad=False, w_grad=True)
    _, (got_dx, got_dw, _) = _run(True, x, wt, None, 2, 1, 1, 1, x_grad=False, w_grad=True)
    assert ref_dx is None and got_dx is None
    np.testing.assert_allclose(got_dw, ref_dw, rtol=1e-4, atol=1e-4 * np.abs(ref_dw).max())


def test_conv2d_layer_routes_by_kernel_size_and_mode(backend, monkeypatch):
    calls = []
    real = ops.onednn_conv2d

    def spy(*args, **kwargs):
        calls.append(args[1].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr("fcos.modeling.layers.onednn_conv2d", spy)
    conv3, conv1 = Conv2D(4, 8, 3, padding=1), Conv2D(8, 8, 1)
    x = paddle.randn([1, 4, 12, 12])
    y = conv1(conv3(x))
    assert calls == [[8, 4, 3, 3]]  # the 1x1 conv stays on Paddle's GEMM path
    # Same numbers as Paddle's kernel, and to_static (export) never sees the custom operator.
    ref = F.conv2d(F.conv2d(x, conv3.weight, conv3.bias, padding=1), conv1.weight, conv1.bias)
    np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-4, atol=1e-5)
    calls.clear()
    static = paddle.jit.to_static(paddle.nn.Sequential(conv3, conv1), full_graph=True)
    np.testing.assert_allclose(static(x).numpy(), ref.numpy(), rtol=1e-4, atol=1e-5)
    assert calls == []
    assert "fcos_conv2d" not in str(static.forward.concrete_program.main_program)


def test_backend_selection_and_errors(monkeypatch, tmp_path, conv_backend_state):
    with pytest.raises(ValueError, match="cpu_conv must be one of"):
        ops.set_conv_backend("mkl")
    monkeypatch.setenv("FCOS_CPU_CONV", "paddle")
    assert ops.set_conv_backend("auto") == "paddle"
    monkeypatch.setenv("FCOS_CPU_CONV", "fast")
    with pytest.raises(ValueError, match="FCOS_CPU_CONV"):
        ops.set_conv_backend("auto")
    monkeypatch.delenv("FCOS_CPU_CONV")
    # No headers anywhere: "onednn" fails naming the fix, "auto" falls back to Paddle's kernel.
    ops._module, ops._build_error = None, None
    monkeypatch.setattr(ops, "_include_candidates", lambda: [str(tmp_path)])
    with pytest.raises(ops.ConvBackendError, match="pip install --no-deps 'onednn-devel=="):
        ops.set_conv_backend("onednn")
    assert ops.set_conv_backend("auto") == "paddle"
    assert ops.conv_backend() == "paddle"
    layer = Conv2D(2, 2, 3, padding=1)
    x = paddle.randn([1, 2, 5, 5])
    np.testing.assert_allclose(layer(x).numpy(), F.conv2d(x, layer.weight, layer.bias, padding=1).numpy())


def test_header_version_mismatch_is_reported(monkeypatch, tmp_path):
    inc = tmp_path / "oneapi" / "dnnl"
    inc.mkdir(parents=True)
    (inc / "dnnl.hpp").write_text("// stub\n")
    (inc / "dnnl_version.h").write_text(
        "#define DNNL_VERSION_MAJOR 2\n#define DNNL_VERSION_MINOR 7\n#define DNNL_VERSION_PATCH 0\n"
    )
    monkeypatch.setattr(ops, "_include_candidates", lambda: [str(tmp_path)])
    with pytest.raises(ops.ConvBackendError, match=r"has 2\.7"):
        ops.find_headers((3, 6, 2))
    assert ops.find_headers((2, 7, 5)) == str(tmp_path)


# Relative error (L2 norm) allowed per parameter gradient. tv_r50 (frozen BN) is well conditioned: the
# backends differ by <= 5e-4. rt_dla34 trains BN on a batch of two 128x160 images: scaling the input by
# (1 + 1e-6) already moves its gradients by up to 2 % with Paddle's own kernel alone (measured), so
# only a looser bound can hold there.
@pytest.mark.parametrize("name,tol", [("tv_r50", 5e-3), ("rt_dla34", 6e-2)])
def test_training_step_equals_paddle_backend(name, tol, conv_backend_state):
    """Losses and every parameter gradient of one step agree between the two backends."""
    import os

    import fcos
    from tests.test_train_step import ROOT, _batch

    results = {}
    for backend in ("paddle", "onednn"):
        assert ops.set_conv_backend(backend) == backend
        paddle.seed(0)
        model = fcos.build_model(fcos.load_config(os.path.join(ROOT, "configs", f"{name}.yml")))
        model.train()
        images, targets = _batch()
        losses = model(images, targets=targets)
        losses["loss"].backward()
        grads = {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}
        results[backend] = ({k: float(v) for k, v in losses.items()}, grads)
    (ref_losses, ref_grads), (got_losses, got_grads) = results["paddle"], results["onednn"]
    for key, value in ref_losses.items():
        assert got_losses[key] == pytest.approx(value, rel=1e-4), key
    assert set(got_grads) == set(ref_grads) and len(ref_grads) > 50
    errors = {k: np.linalg.norm(got_grads[k] - g) / (np.linalg.norm(g) + 1e-12) for k, g in ref_grads.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tol, (worst, errors[worst])
    assert np.median(list(errors.values())) <= tol / 4


def test_headers_of_the_base_interpreter_are_found_from_a_venv(monkeypatch, tmp_path):
    """make install puts the headers under the interpreter's prefix; a --system-site-packages venv
    (e.g. .venv-ref for the torchvision comparisons) has its own sys.prefix but must still find them."""
    base = tmp_path / "base"
    inc = base / "include" / "oneapi" / "dnnl"
    inc.mkdir(parents=True)
    (inc / "dnnl.hpp").write_text("// stub\n")
    (inc / "dnnl_version.h").write_text(
        "#define DNNL_VERSION_MAJOR 3\n#define DNNL_VERSION_MINOR 6\n#define DNNL_VERSION_PATCH 1\n"
    )
    venv = tmp_path / "venv"
    venv.mkdir()
    monkeypatch.delenv("FCOS_ONEDNN_INCLUDE", raising=False)
    monkeypatch.setattr(ops.sys, "prefix", str(venv))
    monkeypatch.setattr(ops.sys, "base_prefix", str(base))
    monkeypatch.setattr(ops.sysconfig, "get_paths", lambda: {"data": str(venv)})
    monkeypatch.setattr(ops.os.path, "exists", _only_under(tmp_path, ops.os.path.exists))
    assert ops.find_headers((3, 6, 2)) == str(base / "include")


def _only_under(root, exists):
    """os.path.exists that hides everything outside ``root`` (the machine's real headers)."""
    return lambda p: str(p).startswith(str(root)) and exists(p)


def test_unwritable_build_directory_falls_back_with_the_reason(monkeypatch, tmp_path, caplog, conv_backend_state):
    """A cache path that cannot be created (read-only home, a file in the way) is a clear error for
    'onednn' and a one-time warning plus Paddle's kernels for 'auto', never a crash."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("FCOS_OPS_CACHE", str(blocker / "ops"))
    monkeypatch.delenv("FCOS_CPU_CONV", raising=False)
    ops._module, ops._build_error, ops._warned = None, None, False
    with pytest.raises(ops.ConvBackendError, match="FCOS_OPS_CACHE"):
        ops.set_conv_backend("onednn")
    with caplog.at_level("WARNING", logger="fcos.ops.onednn_conv"):
        assert ops.set_conv_backend("auto") == "paddle"
    assert "cannot write the operator build directory" in caplog.text and str(blocker) in caplog.text


def test_a_complete_build_loads_without_rebuilding(tmp_path, repo_root):
    """A new process loads the built library directly: Paddle's cpp_extension.load, which starts a
    Python child to check the build on every call, is not used, and nothing is printed."""
    ops.build_onednn_conv()  # the test session's build, complete with its marker
    script = tmp_path / "load.py"
    script.write_text(
        "import fcos\n"
        "import paddle.utils.cpp_extension as ext\n"
        "def refuse(*a, **k):\n"
        "    raise AssertionError('cpp_extension.load called')\n"
        "ext.load = refuse\n"
        "from fcos.ops import onednn_conv as ops\n"
        "assert ops.set_conv_backend('onednn') == 'onednn'\n"
        "print('loaded', ops._module is not None)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "FCOS_CPU_CONV"}
    env["PYTHONPATH"] = repo_root
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "loaded True"
    noise = [line for line in proc.stderr.splitlines() if "ccache" in line or "custom operator" in line]
    assert noise == [], noise


def test_an_incomplete_build_is_built_again(monkeypatch, tmp_path):
    """Without the completion marker (a build that was interrupted) or without the library, the build
    directory is not trusted: the next call builds, and only a finished build writes the marker."""
    monkeypatch.setenv("FCOS_OPS_CACHE", str(tmp_path / "ops"))
    monkeypatch.setattr(ops, "_loaded", {})
    calls = []
    import paddle.utils.cpp_extension as ext

    def fake_load(**kwargs):
        calls.append(kwargs["build_directory"])
        so_dir = os.path.join(kwargs["build_directory"], ops.MODULE_NAME)
        os.makedirs(so_dir, exist_ok=True)
        open(os.path.join(so_dir, f"{ops.MODULE_NAME}.so"), "wb").close()  # not a real library
        return "module"

    monkeypatch.setattr(ext, "load", fake_load)
    assert ops.build_onednn_conv() == "module" and len(calls) == 1
    build_dir = calls[0]
    assert os.path.isfile(os.path.join(build_dir, ops.BUILT_MARKER))
    # Marker and library present, but the library cannot be loaded: rebuilt, not a crash.
    monkeypatch.setattr(ops, "_loaded", {})
    assert ops.build_onednn_conv() == "module" and len(calls) == 2
    # No marker (interrupted build): rebuilt.
    os.remove(os.path.join(build_dir, ops.BUILT_MARKER))
    monkeypatch.setattr(ops, "_loaded", {})
    assert ops.build_onednn_conv() == "module" and len(calls) == 3
