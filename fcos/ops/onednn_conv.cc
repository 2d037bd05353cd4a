// 2-D convolution for Paddle dygraph on CPU through oneDNN (the library Paddle bundles).
//
// Paddle's own CPU conv2d kernel is im2col + GEMM, single-threaded outside the GEMM; the oneDNN
// primitives torch also uses are 1.7-3x faster for 3x3 convolutions forward and backward. Tensors
// stay in Paddle's plain NCHW / OIHW layout; each call reorders into the layouts oneDNN prefers and
// back. Built and loaded by fcos/ops/onednn_conv.py (paddle.utils.cpp_extension), which also decides
// when to use it.
//
// Ops: fcos_conv2d(X, W) and fcos_conv2d_bias(X, W, B), float32, groups >= 1, symmetric padding.
// Attributes need_x_grad / need_w_grad skip gradients nobody reads (frozen layers, image inputs).

#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "paddle/extension.h"

namespace {

using dnnl::memory;
using Tag = dnnl::memory::format_tag;
constexpr auto kF32 = dnnl::memory::data_type::f32;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Shapes in oneDNN terms. Weights are {O, I, kh, kw} or, with groups, {G, O/G, I/G, kh, kw}.
struct Geometry {
  memory::dims src, wei, bias, dst, strides, dilates, pad_l, pad_r;
  Tag wei_tag;
};

Geometry MakeGeometry(const std::vector<int64_t>& x, const std::vector<int64_t>& w, const std::vector<int>& strides,
                      const std::vector<int>& paddings, const std::vector<int>& dilations, int groups) {
  PD_CHECK(x.size() == 4 && w.size() == 4, "fcos_conv2d: expected 4-D input and weight");
  PD_CHECK(strides.size() == 2 && paddings.size() == 2 && dilations.size() == 2,
           "fcos_conv2d: strides, paddings and dilations need 2 values");
  PD_CHECK(groups >= 1 && x[1] == w[1] * groups && w[0] % groups == 0,
           "fcos_conv2d: channels do not match weight and groups");
  Geometry g;
  int64_t out_hw[2];
  for (int i = 0; i < 2; ++i) {
    const int64_t extent = dilations[i] * (w[2 + i] - 1) + 1;
    out_hw[i] = (x[2 + i] + 2 * paddings[i] - extent) / strides[i] + 1;
    PD_CHECK(out_hw[i] > 0, "fcos_conv2d: input smaller than the kernel");
    g.strides.push_back(strides[i]);
    g.dilates.push_back(dilations[i] - 1);
    g.pad_l.push_back(paddings[i]);
    // The right padding that makes oneDNN's size formula give exactly out_hw (it may be < left).
    g.pad_r.push_back((out_hw[i] - 1) * strides[i] + extent - x[2 + i] - paddings[i]);
  }
  g.src = {x[0], x[1], x[2], x[3]};
  g.dst = {x[0], w[0], out_hw[0], out_hw[1]};
  g.bias = {w[0]};
  if (groups > 1) {
    g.wei = {groups, w[0] / groups, w[1], w[2], w[3]};
    g.wei_tag = Tag::goihw;
  } else {
    g.wei = {w[0], w[1], w[2], w[3]};
    g.wei_tag = Tag::oihw;
  }
  return g;
}

memory::desc Any(const memory::dims& dims) { return memory::desc(dims, kF32, Tag::any); }

dnnl::convolution_forward::primitive_desc ForwardPd(const Geometry& g, bool with_bias) {
  const memory::desc bias_md = with_bias ? Any(g.bias) : memory::desc();
  return dnnl::convolution_forward::primitive_desc(Engine(), dnnl::prop_kind::forward_training,
                                                   dnnl::algorithm::convolution_direct, Any(g.src), Any(g.wei),
                                                   bias_md, Any(g.dst), g.strides, g.dilates, g.pad_l, g.pad_r);
}

memory Wrap(const memory::dims& dims, Tag tag, const paddle::Tensor& t) {
  return memory({dims, kF32, tag}, Engine(), const_cast<float*>(t.data<float>()));
}

// `user` in the layout oneDNN wants (`want`): `user` itself or a reordered copy.
memory Reordered(memory user, const memory::desc& want, dnnl::stream& stream) {
  if (user.get_desc() == want) return user;
  memory converted(want, Engine());
  dnnl::reorder(user, converted).execute(stream, user, converted);
  return converted;
}

// Memory for a result in layout `want`, written back to `user` by WriteBack.
memory ResultMemory(const memory& user, const memory::desc& want) {
  return user.get_desc() == want ? user : memory(want, Engine());
}

void WriteBack(memory result, memory user, dnnl::stream& stream) {
  if (result != user) dnnl::reorder(result, user).execute(stream, result, user);
}

void CheckInputs(const paddle::Tensor& x, const paddle::Tensor& w) {
  PD_CHECK(x.is_cpu() && w.is_cpu(), "fcos_conv2d runs on CPU tensors only");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32 && w.dtype() == paddle::DataType::FLOAT32,
           "fcos_conv2d supports float32 only");
}

std::vector<paddle::Tensor> Forward(const paddle::Tensor& x, const paddle::Tensor& w, const paddle::Tensor* b,
                                    const std::vector<int>& strides, const std::vector<int>& paddings,
                                    const std::vector<int>& dilations, int groups) {
  CheckInputs(x, w);
  const Geometry g = MakeGeometry(x.shape(), w.shape(), strides, paddings, dilations, groups);
  paddle::Tensor out = paddle::empty({g.dst[0], g.dst[1], g.dst[2], g.dst[3]}, x.dtype(), x.place());
  dnnl::stream stream(Engine());
  const auto pd = ForwardPd(g, b != nullptr);
  memory src = Reordered(Wrap(g.src, Tag::nchw, x), pd.src_desc(), stream);
  memory wei = Reordered(Wrap(g.wei, g.wei_tag, w), pd.weights_desc(), stream);
  memory dst_user = Wrap(g.dst, Tag::nchw, out);
  memory dst = ResultMemory(dst_user, pd.dst_desc());
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}};
  if (b != nullptr) args.insert({DNNL_ARG_BIAS, Reordered(Wrap(g.bias, Tag::x, *b), pd.bias_desc(), stream)});
  dnnl::convolution_forward(pd).execute(stream, args);
  WriteBack(dst, dst_user, stream);
  stream.wait();
  return {out};
}

std::vector<paddle::Tensor> Backward(const paddle::Tensor& x, const paddle::Tensor& w, const paddle::Tensor* b,
                                     const paddle::Tensor& grad_out, const std::vector<int>& strides,
                                     const std::vector<int>& paddings, const std::vector<int>& dilations,
                                     int groups, bool need_x_grad, bool need_w_grad) {
  CheckInputs(x, w);
  const Geometry g = MakeGeometry(x.shape(), w.shape(), strides, paddings, dilations, groups);
  // Gradients nobody reads are returned uninitialised (Paddle drops them).
  paddle::Tensor grad_x = paddle::empty(x.shape(), x.dtype(), x.place());
  paddle::Tensor grad_w = paddle::empty(w.shape(), w.dtype(), w.place());
  std::vector<paddle::Tensor> grads{grad_x, grad_w};
  const auto fwd = ForwardPd(g, b != nullptr);
  dnnl::stream stream(Engine());
  memory dy_user = Wrap(g.dst, Tag::nchw, grad_out);
  if (need_x_grad) {
    dnnl::convolution_backward_data::primitive_desc pd(Engine(), dnnl::algorithm::convolution_direct, Any(g.src),
                                                       Any(g.wei), Any(g.dst), g.strides, g.dilates, g.pad_l,
                                                       g.pad_r, fwd);
    memory dy = Reordered(dy_user, pd.diff_dst_desc(), stream);
    memory wei = Reordered(Wrap(g.wei, g.wei_tag, w), pd.weights_desc(), stream);
    memory dx_user = Wrap(g.src, Tag::nchw, grad_x);
    memory dx = ResultMemory(dx_user, pd.diff_src_desc());
    dnnl::convolution_backward_data(pd).execute(
        stream, {{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DIFF_SRC, dx}});
    WriteBack(dx, dx_user, stream);
  }
  paddle::Tensor grad_b;
  if (b != nullptr) {
    grad_b = paddle::empty(b->shape(), b->dtype(), b->place());
    grads.push_back(grad_b);
  }
  if (need_w_grad) {
    const memory::desc bias_md = b != nullptr ? Any(g.bias) : memory::desc();
    dnnl::convolution_backward_weights::primitive_desc pd(Engine(), dnnl::algorithm::convolution_direct,
                                                          Any(g.src), Any(g.wei), bias_md, Any(g.dst), g.strides,
                                                          g.dilates, g.pad_l, g.pad_r, fwd);
    memory src = Reordered(Wrap(g.src, Tag::nchw, x), pd.src_desc(), stream);
    memory dy = Reordered(dy_user, pd.diff_dst_desc(), stream);
    memory dw_user = Wrap(g.wei, g.wei_tag, grad_w);
    memory dw = ResultMemory(dw_user, pd.diff_weights_desc());
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_WEIGHTS, dw}};
    memory db_user, db;
    if (b != nullptr) {
      db_user = Wrap(g.bias, Tag::x, grad_b);
      db = ResultMemory(db_user, pd.diff_bias_desc());
      args.insert({DNNL_ARG_DIFF_BIAS, db});
    }
    dnnl::convolution_backward_weights(pd).execute(stream, args);
    WriteBack(dw, dw_user, stream);
    if (b != nullptr) WriteBack(db, db_user, stream);
  }
  stream.wait();
  return grads;
}

}  // namespace

std::vector<paddle::Tensor> ConvForward(const paddle::Tensor& x, const paddle::Tensor& w,
                                        const std::vector<int>& strides, const std::vector<int>& paddings,
                                        const std::vector<int>& dilations, int groups, bool need_x_grad,
                                        bool need_w_grad) {
  return Forward(x, w, nullptr, strides, paddings, dilations, groups);
}

std::vector<paddle::Tensor> ConvBackward(const paddle::Tensor& x, const paddle::Tensor& w,
                                         const paddle::Tensor& grad_out, const std::vector<int>& strides,
                                         const std::vector<int>& paddings, const std::vector<int>& dilations,
                                         int groups, bool need_x_grad, bool need_w_grad) {
  return Backward(x, w, nullptr, grad_out, strides, paddings, dilations, groups, need_x_grad, need_w_grad);
}

std::vector<paddle::Tensor> ConvBiasForward(const paddle::Tensor& x, const paddle::Tensor& w,
                                            const paddle::Tensor& b, const std::vector<int>& strides,
                                            const std::vector<int>& paddings, const std::vector<int>& dilations,
                                            int groups, bool need_x_grad, bool need_w_grad) {
  return Forward(x, w, &b, strides, paddings, dilations, groups);
}

std::vector<paddle::Tensor> ConvBiasBackward(const paddle::Tensor& x, const paddle::Tensor& w,
                                             const paddle::Tensor& b, const paddle::Tensor& grad_out,
                                             const std::vector<int>& strides, const std::vector<int>& paddings,
                                             const std::vector<int>& dilations, int groups, bool need_x_grad,
                                             bool need_w_grad) {
  return Backward(x, w, &b, grad_out, strides, paddings, dilations, groups, need_x_grad, need_w_grad);
}

#define FCOS_CONV_ATTRS                                                                                   \
  {"strides: std::vector<int>", "paddings: std::vector<int>", "dilations: std::vector<int>", "groups: int", \
   "need_x_grad: bool", "need_w_grad: bool"}

PD_BUILD_OP(fcos_conv2d).Inputs({"X", "W"}).Outputs({"Out"}).Attrs(FCOS_CONV_ATTRS).SetKernelFn(PD_KERNEL(ConvForward));

PD_BUILD_GRAD_OP(fcos_conv2d)
    .Inputs({"X", "W", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("W")})
    .Attrs(FCOS_CONV_ATTRS)
    .SetKernelFn(PD_KERNEL(ConvBackward));

PD_BUILD_OP(fcos_conv2d_bias)
    .Inputs({"X", "W", "B"})
    .Outputs({"Out"})
    .Attrs(FCOS_CONV_ATTRS)
    .SetKernelFn(PD_KERNEL(ConvBiasForward));

PD_BUILD_GRAD_OP(fcos_conv2d_bias)
    .Inputs({"X", "W", "B", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("W"), paddle::Grad("B")})
    .Attrs(FCOS_CONV_ATTRS)
    .SetKernelFn(PD_KERNEL(ConvBiasBackward));
