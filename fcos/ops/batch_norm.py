"""Train-mode BatchNorm for Paddle dygraph on CPU: the ``fcos_batch_norm`` kernel (``batch_norm.cc``).

Why: Paddle 3.3's CPU ``batch_norm`` accumulates the batch statistics in float (Eigen sums per
(sample, channel) plane, added in float). On DLA-34's first layer input (2 x 16 x 512 x 736) its
train-mode output is 9e-6 relative off a float64 computation, torch's CPU kernel 7e-8; through
DLA-34's 39 trainable BatchNorms this made FCOS_RT DLA-34's losses differ from AdelaiDet's by up to
5e-4 and its gradient norm by 1.5 % on multi-image batches (issue 14). ``fcos_batch_norm`` sums every
statistic, forward and backward, in runs of at most 4 float additions per value that are added in double
(shifted sums, so one pass gives the variance without the cancellation of E[x^2] - E[x]^2): its output
is 7e-8 relative off float64 on (2, 16, 256, 368), Paddle's 2e-5 (tests/test_cpu_batch_norm.py). Speed is about Paddle's (benchmarks/bn_speed.py, batch 2 at
512x736 on 2 shared vCPUs: DLA-34's 39 BatchNorms forward + backward 0.93 s vs 0.87 s, a DLA-34
backbone training pass 14.1 s vs 15.5 s; run-to-run noise there is +-20 %).

Running statistics: ``running = momentum * running + (1 - momentum) * batch`` (Paddle's convention;
momentum 0.9 == torch's 0.1) with the UNBIASED batch variance ``var * M / (M - 1)``, M = N * H * W,
as torch (and cuDNN) update it. Paddle's CPU kernel uses the biased variance; the reference
implementations are torch, so this follows torch.

Scope: dygraph, training (``layer.training`` and not ``use_global_stats``), CPU float32 NCHW with an
affine BatchNorm, switched on together with the oneDNN convolution (:mod:`fcos.ops.onednn_conv`,
``train.cpu_conv``). Evaluation keeps Paddle's inference ``batch_norm`` (one pass with the given
statistics: nothing is accumulated, so nothing to fix). When the operator is unavailable
(``cpu_conv: paddle`` or a failed build) Paddle's ``batch_norm`` runs: a pure-Paddle replacement was
measured and rejected. Composed from Paddle ops (mean, subtract, square, mean, scale), forward and
backward on (2, 16, 512, 736) took 2.9 s with float32 statistics (output 3.4e-3 relative off float64,
Paddle's float32 reductions being worse than its batch_norm) and 5.3 s with float64 statistics (output
6e-8, but the input gradient still 7e-3 off, from autograd's float32 reductions of the broadcast
gradients), against 0.4 s for Paddle's ``batch_norm`` (output 7e-5, input gradient 3.5e-4 off on that
offset input), so it is neither precise nor affordable.

GPU (nothing here runs there): Paddle's CUDA ``batch_norm`` on 4-D NCHW inputs calls cuDNN
(``cudnnBatchNormalizationForwardTrainingEx`` / ``BackwardEx``); Paddle's own CUDA kernels (float sums
of x and x^2, E[x^2] - E[x]^2) only run for 2-D/3-D inputs with very large batches. cuDNN, like torch's
CUDA kernel (Welford per thread, merged in a tree), reduces over thousands of threads and then a tree,
so each value passes through O(log M) float additions instead of the O(M / lanes) of a sequential CPU
loop: the statistics stay at float rounding. torch documents an unbiased running variance and, when
it runs BatchNorm through cuDNN, lets this same cuDNN call update its running buffers, so Paddle on GPU
updates them as torch does. ``SyncBatchNorm`` (multi-GPU CUDA only) takes per-channel float sums of x and x^2 in
block-parallel tree reductions, all-reduces them and uses E[x^2] - E[x]^2: its relative error is about
float epsilon * (1 + mean^2 / var), small for conv outputs whose mean is not many standard deviations
from zero; its running variance is the biased one (a difference from torch left to the GPU path).
"""

from __future__ import annotations

import paddle

from fcos.ops import onednn_conv


def cpu_batch_norm_applies(layer: paddle.nn.layer.norm._BatchNormBase, x: paddle.Tensor) -> bool:
    """True when the train-mode ``layer(x)`` should run through ``fcos_batch_norm``."""
    return (
        onednn_conv.conv_backend() == "onednn"
        and paddle.in_dynamic_mode()
        and layer.training
        and not layer._use_global_stats
        and layer._data_format in ("NCHW", "NCL", "NCDHW", "NC")
        and layer.weight is not None
        and layer.bias is not None
        and x.ndim >= 2
        and x.dtype == paddle.float32
        and x.place.is_cpu_place()
    )


def cpu_batch_norm(
    x: paddle.Tensor,
    running_mean: paddle.Tensor,
    running_var: paddle.Tensor,
    weight: paddle.Tensor,
    bias: paddle.Tensor,
    momentum: float,
    epsilon: float,
) -> paddle.Tensor:
    """Train-mode ``F.batch_norm(x, running_mean, running_var, weight, bias, training=True, momentum, epsilon)``.

    x (N, C, ...) float32 on CPU; running_mean, running_var, weight, bias (C,). Normalises with the
    batch statistics over all axes but C and updates ``running_mean`` / ``running_var`` in place
    (unbiased variance, see the module docstring). Returns (N, C, ...), differentiable in x, weight
    and bias.
    """
    module = onednn_conv.load_onednn_conv()
    if module is None:
        raise onednn_conv.ConvBackendError(f"the fcos CPU operators are unavailable: {onednn_conv.build_error()}")
    if x.size // x.shape[1] < 2:
        raise ValueError(
            f"cpu_batch_norm: training needs more than one value per channel, got input of shape {list(x.shape)}"
        )
    y, mean_out, var_out, _, _ = module.fcos_batch_norm(
        x, weight, bias, running_mean, running_var, float(momentum), float(epsilon)
    )
    with paddle.no_grad():
        paddle.assign(mean_out, running_mean)
        paddle.assign(var_out, running_var)
    return y
