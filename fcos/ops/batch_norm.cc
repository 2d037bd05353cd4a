// Train-mode BatchNorm for Paddle dygraph on CPU, forward and backward, threaded with OpenMP.
//
// Paddle 3.3's CPU batch_norm sums each (sample, channel) plane in float with Eigen and adds the planes
// in float: on DLA-34's first layer (2 x 16 x 512 x 736) its output is 9e-6 relative off a float64
// computation (torch: 7e-8), and the error compounds through a network of trainable BatchNorms. Here
// every statistic is accumulated in double: per channel, sum(x - K) and sum((x - K)^2) around a shift K
// (the channel's first value), so one pass gives the variance without the cancellation of
// E[x^2] - E[x]^2; the backward's sum(dy) and sum(dy * (x - mean)) likewise. Element-wise maps stay in
// float (y = x * a + b, as torch's CPU kernel).
//
// Op: fcos_batch_norm(X, Scale, Bias, Mean, Variance) -> (Y, MeanOut, VarianceOut, SavedMean, SavedRstd)
// X (N, C, ...) float32; Scale, Bias, Mean, Variance (C,) with Mean/Variance the running statistics;
// MeanOut/VarianceOut the updated running statistics (the caller copies them into the buffers);
// SavedMean/SavedRstd (C,) the batch mean and 1/sqrt(var + eps) for the backward. Built together with
// onednn_conv.cc by fcos/ops/onednn_conv.py.

#include <algorithm>
#include <cmath>
#include <vector>

#include "paddle/extension.h"

namespace {

struct BnDims {
  int64_t n, c, hw;
};

BnDims GetBnDims(const paddle::Tensor& x) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "fcos_batch_norm: float32 CPU tensors only");
  const auto& s = x.shape();
  PD_CHECK(s.size() >= 2, "fcos_batch_norm: X must be (N, C, ...)");
  int64_t hw = 1;
  for (size_t i = 2; i < s.size(); ++i) hw *= s[i];
  return {s[0], s[1], hw};
}

}  // namespace

std::vector<paddle::Tensor> BatchNormForward(const paddle::Tensor& x, const paddle::Tensor& scale,
                                             const paddle::Tensor& bias, const paddle::Tensor& running_mean,
                                             const paddle::Tensor& running_var, float momentum, float epsilon) {
  const BnDims d = GetBnDims(x);
  const int64_t count = d.n * d.hw;  // values per channel
  PD_CHECK(count > 1, "fcos_batch_norm: training needs more than one value per channel");
  paddle::Tensor y = paddle::empty(x.shape(), x.dtype(), x.place());
  paddle::Tensor mean_out = paddle::empty({d.c}, x.dtype(), x.place());
  paddle::Tensor var_out = paddle::empty({d.c}, x.dtype(), x.place());
  paddle::Tensor saved_mean = paddle::empty({d.c}, x.dtype(), x.place());
  paddle::Tensor saved_rstd = paddle::empty({d.c}, x.dtype(), x.place());
  const float* px = x.data<float>();
  const float* gamma = scale.data<float>();
  const float* beta = bias.data<float>();
  const float* rm = running_mean.data<float>();
  const float* rv = running_var.data<float>();
  float* py = y.data<float>();
  float* pm = saved_mean.data<float>();
  float* pr = saved_rstd.data<float>();
  float* prm = mean_out.data<float>();
  float* prv = var_out.data<float>();
  const int64_t planes = d.n * d.c;
  std::vector<double> s1(planes), s2(planes);
  // Pass 1, per (sample, channel) plane: shifted sums in double.
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const double k = px[(p % d.c) * d.hw];  // the shift: channel c's first value (sample 0)
    const float* xp = px + p * d.hw;
    double a = 0.0, b = 0.0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = 0; i < d.hw; ++i) {
      const double v = static_cast<double>(xp[i]) - k;
      a += v;
      b += v * v;
    }
    s1[p] = a;
    s2[p] = b;
  }
  std::vector<float> alpha(d.c), shift(d.c);
  for (int64_t c = 0; c < d.c; ++c) {
    double a = 0.0, b = 0.0;
    for (int64_t n = 0; n < d.n; ++n) {
      a += s1[n * d.c + c];
      b += s2[n * d.c + c];
    }
    const double k = px[c * d.hw];
    const double dm = a / count;  // mean - k
    const double var = std::max(b / count - dm * dm, 0.0);  // biased batch variance
    const double mean = k + dm;
    const double rstd = 1.0 / std::sqrt(var + static_cast<double>(epsilon));
    pm[c] = static_cast<float>(mean);
    pr[c] = static_cast<float>(rstd);
    // Running statistics with Paddle's momentum convention (running = m * running + (1 - m) * batch;
    // Paddle's 0.9 is torch's 0.1). The variance is the UNBIASED batch variance, as torch's
    // BatchNorm (and cuDNN) update it; Paddle's CPU kernel uses the biased one. The reference
    // implementations (AdelaiDet, torchvision) are torch, so their running statistics are followed.
    const double unbiased = var * static_cast<double>(count) / static_cast<double>(count - 1);
    prm[c] = static_cast<float>(momentum * static_cast<double>(rm[c]) + (1.0 - momentum) * mean);
    prv[c] = static_cast<float>(momentum * static_cast<double>(rv[c]) + (1.0 - momentum) * unbiased);
    const double a_c = static_cast<double>(gamma[c]) * rstd;
    alpha[c] = static_cast<float>(a_c);
    shift[c] = static_cast<float>(static_cast<double>(beta[c]) - mean * a_c);
  }
  // Pass 2: y = x * alpha + shift.
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const float a = alpha[p % d.c], b = shift[p % d.c];
    const float* xp = px + p * d.hw;
    float* yp = py + p * d.hw;
#pragma omp simd
    for (int64_t i = 0; i < d.hw; ++i) yp[i] = xp[i] * a + b;
  }
  return {y, mean_out, var_out, saved_mean, saved_rstd};
}

// With xhat = (x - mu) * r over the M = N * H * W values of a channel:
//   dbias = sum(dy), dscale = r * sum(dy * (x - mu)),
//   dx = gamma * r * (dy - dbias / M - (x - mu) * r * dscale / M).
std::vector<paddle::Tensor> BatchNormBackward(const paddle::Tensor& x, const paddle::Tensor& scale,
                                              const paddle::Tensor& saved_mean, const paddle::Tensor& saved_rstd,
                                              const paddle::Tensor& grad_y, float momentum, float epsilon) {
  const BnDims d = GetBnDims(x);
  const int64_t count = d.n * d.hw;
  paddle::Tensor grad_x = paddle::empty(x.shape(), x.dtype(), x.place());
  paddle::Tensor grad_scale = paddle::empty({d.c}, x.dtype(), x.place());
  paddle::Tensor grad_bias = paddle::empty({d.c}, x.dtype(), x.place());
  const float* px = x.data<float>();
  const float* pdy = grad_y.data<float>();
  const float* gamma = scale.data<float>();
  const float* pm = saved_mean.data<float>();
  const float* pr = saved_rstd.data<float>();
  float* pdx = grad_x.data<float>();
  float* pgs = grad_scale.data<float>();
  float* pgb = grad_bias.data<float>();
  const int64_t planes = d.n * d.c;
  std::vector<double> s1(planes), s2(planes);
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const double mu = pm[p % d.c];
    const float* xp = px + p * d.hw;
    const float* dyp = pdy + p * d.hw;
    double a = 0.0, b = 0.0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = 0; i < d.hw; ++i) {
      const double g = dyp[i];
      a += g;
      b += g * (static_cast<double>(xp[i]) - mu);
    }
    s1[p] = a;
    s2[p] = b;
  }
  // dx = a * dy - k * (x - mu) - c
  std::vector<float> ka(d.c), kx(d.c), kc(d.c), muf(d.c);
  for (int64_t c = 0; c < d.c; ++c) {
    double sum_dy = 0.0, sum_dyx = 0.0;
    for (int64_t n = 0; n < d.n; ++n) {
      sum_dy += s1[n * d.c + c];
      sum_dyx += s2[n * d.c + c];
    }
    const double r = pr[c], g = gamma[c];
    pgb[c] = static_cast<float>(sum_dy);
    pgs[c] = static_cast<float>(r * sum_dyx);
    ka[c] = static_cast<float>(g * r);
    kx[c] = static_cast<float>(g * r * r * r * sum_dyx / count);
    kc[c] = static_cast<float>(g * r * sum_dy / count);
    muf[c] = pm[c];
  }
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const int64_t c = p % d.c;
    const float a = ka[c], k = kx[c], b = kc[c], mu = muf[c];
    const float* xp = px + p * d.hw;
    const float* dyp = pdy + p * d.hw;
    float* dxp = pdx + p * d.hw;
#pragma omp simd
    for (int64_t i = 0; i < d.hw; ++i) dxp[i] = a * dyp[i] - k * (xp[i] - mu) - b;
  }
  return {grad_x, grad_scale, grad_bias};
}

PD_BUILD_OP(fcos_batch_norm)
    .Inputs({"X", "Scale", "Bias", "Mean", "Variance"})
    .Outputs({"Y", "MeanOut", "VarianceOut", "SavedMean", "SavedRstd"})
    .Attrs({"momentum: float", "epsilon: float"})
    .SetKernelFn(PD_KERNEL(BatchNormForward));

PD_BUILD_GRAD_OP(fcos_batch_norm)
    .Inputs({"X", "Scale", "SavedMean", "SavedRstd", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Scale"), paddle::Grad("Bias")})
    .Attrs({"momentum: float", "epsilon: float"})
    .SetKernelFn(PD_KERNEL(BatchNormBackward));
