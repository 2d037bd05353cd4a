// Train-mode BatchNorm for Paddle dygraph on CPU, forward and backward, threaded with OpenMP.
//
// Paddle 3.3's CPU batch_norm sums each (sample, channel) plane in float with Eigen and adds the planes
// in float: on DLA-34's first layer (2 x 16 x 512 x 736) its output is 9e-6 relative off a float64
// computation (torch: 7e-8), and the error compounds through a network of trainable BatchNorms. Here
// the statistics are sums of short float runs added in double: per channel, sum(x - K) and
// sum((x - K)^2) around a shift K (the channel's first value), so one pass gives the variance without
// the cancellation of E[x^2] - E[x]^2; the backward's sum(dy) and sum(dy * (x - mean)) likewise. Each
// value passes through at most 4 float additions (blocks of 128 values in 32 float lanes), the block
// sums are added in double: on (2, 16, 256, 368) the output is 7e-8 relative off float64 (torch's
// kernel: about the same; Paddle's: 2e-5). Blocks of 512 values doubled the error. Element-wise maps stay in float (y = x * a + b, as torch's CPU kernel).
//
// The hot loops are compiled twice (GCC target_clones: AVX2 and the x86-64 baseline, chosen at load
// time), since the build uses no -march flag; with 4 + 4 independent 8-float accumulators they run
// at memory speed instead of being bound by the latency of one accumulator chain.
//
// Op: fcos_batch_norm(X, Scale, Bias, Mean, Variance) -> (Y, MeanOut, VarianceOut, SavedMean, SavedRstd)
// X (N, C, ...) float32; Scale, Bias, Mean, Variance (C,) with Mean/Variance the running statistics;
// MeanOut/VarianceOut the updated running statistics (the caller copies them into the buffers);
// SavedMean/SavedRstd (C,) the batch mean and 1/sqrt(var + eps) for the backward. Built together with
// onednn_conv.cc by fcos/ops/onednn_conv.py.

#include <algorithm>
#include <cmath>
#include <cstring>
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

typedef float Float8 __attribute__((vector_size(32)));
// Threads only for large maps (DLA-34: the full- and half-resolution ones): under load, waking and
// joining the OpenMP team costs more than the memory-bound loops of a smaller map take on one thread.
constexpr int64_t kParallelMin = 1 << 22;
constexpr int64_t kBlock = 128;  // values per float run (4 x 8-lane accumulators: 4 additions per lane)

#define FCOS_BN_LOAD8(dst, ptr) std::memcpy(&(dst), (ptr), sizeof(Float8))

// s1 = sum(x - k), s2 = sum((x - k)^2) over n values.
__attribute__((target_clones("avx2", "default"))) void ShiftedSums(const float* x, int64_t n, float k,
                                                                   double* s1, double* s2) {
  double t1 = 0.0, t2 = 0.0;
  int64_t i = 0;
  const Float8 kk = {k, k, k, k, k, k, k, k};
  for (; i + kBlock <= n; i += kBlock) {
    Float8 a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
    for (int64_t j = i; j < i + kBlock; j += 32) {
      Float8 v0, v1, v2, v3;
      FCOS_BN_LOAD8(v0, x + j);
      FCOS_BN_LOAD8(v1, x + j + 8);
      FCOS_BN_LOAD8(v2, x + j + 16);
      FCOS_BN_LOAD8(v3, x + j + 24);
      v0 -= kk;
      v1 -= kk;
      v2 -= kk;
      v3 -= kk;
      a0 += v0;
      a1 += v1;
      a2 += v2;
      a3 += v3;
      b0 += v0 * v0;
      b1 += v1 * v1;
      b2 += v2 * v2;
      b3 += v3 * v3;
    }
    const Float8 a = (a0 + a1) + (a2 + a3), b = (b0 + b1) + (b2 + b3);
    for (int l = 0; l < 8; ++l) {
      t1 += a[l];
      t2 += b[l];
    }
  }
  for (; i < n; ++i) {
    const double v = static_cast<double>(x[i]) - k;
    t1 += v;
    t2 += v * v;
  }
  *s1 = t1;
  *s2 = t2;
}

// s1 = sum(dy), s2 = sum(dy * (x - mu)) over n values.
__attribute__((target_clones("avx2", "default"))) void GradSums(const float* dy, const float* x, int64_t n,
                                                                float mu, double* s1, double* s2) {
  double t1 = 0.0, t2 = 0.0;
  int64_t i = 0;
  const Float8 mm = {mu, mu, mu, mu, mu, mu, mu, mu};
  for (; i + kBlock <= n; i += kBlock) {
    Float8 a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
    for (int64_t j = i; j < i + kBlock; j += 32) {
      Float8 g0, g1, g2, g3, v0, v1, v2, v3;
      FCOS_BN_LOAD8(g0, dy + j);
      FCOS_BN_LOAD8(g1, dy + j + 8);
      FCOS_BN_LOAD8(g2, dy + j + 16);
      FCOS_BN_LOAD8(g3, dy + j + 24);
      FCOS_BN_LOAD8(v0, x + j);
      FCOS_BN_LOAD8(v1, x + j + 8);
      FCOS_BN_LOAD8(v2, x + j + 16);
      FCOS_BN_LOAD8(v3, x + j + 24);
      a0 += g0;
      a1 += g1;
      a2 += g2;
      a3 += g3;
      b0 += g0 * (v0 - mm);
      b1 += g1 * (v1 - mm);
      b2 += g2 * (v2 - mm);
      b3 += g3 * (v3 - mm);
    }
    const Float8 a = (a0 + a1) + (a2 + a3), b = (b0 + b1) + (b2 + b3);
    for (int l = 0; l < 8; ++l) {
      t1 += a[l];
      t2 += b[l];
    }
  }
  for (; i < n; ++i) {
    t1 += dy[i];
    t2 += static_cast<double>(dy[i]) * (static_cast<double>(x[i]) - mu);
  }
  *s1 = t1;
  *s2 = t2;
}

// y = x * a + b
__attribute__((target_clones("avx2", "default"))) void Affine(const float* x, float* y, int64_t n, float a,
                                                              float b) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * a + b;
}

// dx = a * dy - k * (x - mu) - c
__attribute__((target_clones("avx2", "default"))) void GradInput(const float* dy, const float* x, float* dx,
                                                                 int64_t n, float a, float k, float mu, float c) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dx[i] = a * dy[i] - k * (x[i] - mu) - c;
}

}  // namespace

static void ChannelStats(const BnDims& d, int64_t count, const float* px, const float* gamma, const float* beta,
                  const float* rm, const float* rv, float momentum, float epsilon, const std::vector<double>& s1,
                  const std::vector<double>& s2, float* pm, float* pr, float* prm, float* prv,
                  std::vector<float>& alpha, std::vector<float>& shift);

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
  std::vector<float> alpha(d.c), shift(d.c);
  // One parallel region (each one costs a wake-up of the other threads): per-plane sums, the
  // per-channel statistics on one thread, then the output.
#pragma omp parallel if (planes * d.hw > kParallelMin)
  {
    // Pass 1, per (sample, channel) plane: shifted sums.
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      const float k = px[(p % d.c) * d.hw];  // the shift: channel c's first value (sample 0)
      ShiftedSums(px + p * d.hw, d.hw, k, &s1[p], &s2[p]);
    }
#pragma omp single
    ChannelStats(d, count, px, gamma, beta, rm, rv, momentum, epsilon, s1, s2, pm, pr, prm, prv, alpha, shift);
    // Pass 2: y = x * alpha + shift.
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      Affine(px + p * d.hw, py + p * d.hw, d.hw, alpha[p % d.c], shift[p % d.c]);
    }
  }
  return {y, mean_out, var_out, saved_mean, saved_rstd};
}

static void ChannelStats(const BnDims& d, int64_t count, const float* px, const float* gamma, const float* beta,
                  const float* rm, const float* rv, float momentum, float epsilon, const std::vector<double>& s1,
                  const std::vector<double>& s2, float* pm, float* pr, float* prm, float* prv,
                  std::vector<float>& alpha, std::vector<float>& shift) {
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
  // dx = a * dy - k * (x - mu) - c
  std::vector<float> ka(d.c), kx(d.c), kc(d.c);
#pragma omp parallel if (planes * d.hw > kParallelMin)
  {
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      GradSums(pdy + p * d.hw, px + p * d.hw, d.hw, pm[p % d.c], &s1[p], &s2[p]);
    }
#pragma omp single
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
    }
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      const int64_t c = p % d.c;
      GradInput(pdy + p * d.hw, px + p * d.hw, pdx + p * d.hw, d.hw, ka[c], kx[c], pm[c], kc[c]);
    }
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
