// oneDNN (2.6) implementation of the op interface. Each op keeps, per input shape, its
// primitive descriptors, primitives and scratch tensors, so the step loop only executes.
// Activations use the layouts oneDNN picks (format_tag::any → nChw16c on AVX-512); weights
// stay plain OIHW in the model and are reordered into the primitive's layout each step
// (a few hundred KiB: negligible next to the activations). Stride-1 3x3 convolutions with
// multiple-of-16 channels run resdist's AVX-512 kernels instead, per direction as
// Choose3x3Kernel decides: Winograd (winograd.h, winograd_weights.h) or direct (conv3x3.h).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "worker/backend/cpu/conv3x3.h"
#include "worker/backend/cpu/dnnl_check.h"
#include "worker/backend/cpu/winograd.h"
#include "worker/backend/cpu/winograd_weights.h"
#include "worker/backend/ops.h"

namespace resdist {
namespace {

using dnnl::algorithm;
using dnnl::engine;
using dnnl::memory;
using dnnl::prop_kind;
using dnnl::stream;
using tag = memory::format_tag;
using dt = memory::data_type;

struct CpuContext {
  engine eng{engine::kind::cpu, 0};
  stream strm{eng};
};

memory::dims ToDnnl(const Dims& d) { return memory::dims(d.begin(), d.end()); }

MemDesc AnyDesc(const Dims& dims) { return MemDesc(ToDnnl(dims), dt::f32, tag::any); }

// Converts between two layouts with a reorder primitive built once per (src, dst) pair.
class CachedReorder {
 public:
  void run(CpuContext& ctx, const Tensor& src, Tensor& dst) {
    if (!prim_ || !(src_md_ == src.desc()) || !(dst_md_ == dst.desc())) {
      src_md_ = src.desc();
      dst_md_ = dst.desc();
      DNNL_TRY(prim_ = dnnl::reorder(dnnl::reorder::primitive_desc(ctx.eng, src_md_, ctx.eng,
                                                                   dst_md_)));
    }
    auto s = src.mem(ctx.eng);
    auto d = dst.mem(ctx.eng);
    prim_.execute(ctx.strm, s, d);
  }

 private:
  MemDesc src_md_, dst_md_;
  dnnl::reorder prim_;
};

// Returns `src` itself when it already has layout `md`, else a reordered copy held in
// `scratch` (allocated once per shape).
const Tensor& InLayout(CpuContext& ctx, const Tensor& src, const MemDesc& md, Tensor& scratch,
                       CachedReorder& r) {
  if (src.desc() == md) return src;
  scratch.resize(md);
  r.run(ctx, src, scratch);
  return scratch;
}

// Runs a primitive and waits: oneDNN CPU streams are in-order; waiting keeps the contract
// simple for the caller (the next op may read the output from C++).
void Exec(CpuContext& ctx, const dnnl::primitive& p, std::unordered_map<int, memory> args) {
  p.execute(ctx.strm, args);
}

// ---------------------------------------------------------------- convolution
enum class ConvDirection { kForward, kBackwardData, kBackwardWeights };
enum class Conv3x3Kernel { kOneDnn, kDirect, kWinograd };

// Which kernel runs a direction of a stride-1, padding-1 3x3 layer with channel counts that
// are multiples of 16 on an AVX-512 CPU. A fixed rule, not a timing-based choice, so that
// every run of a configuration executes the same kernels and bit-for-bit resume holds.
//
// Forward and backward-data: Winograd (winograd.h; F(4x4) on images of at least 8x8, else
// F(2x2)) up to 128x128 channels. Measured against the direct kernels (1 thread, batch 64, ms
// direct / F(4x4)): 16 ch 32x32 2.7 / 2.1, 32 ch 16x16 2.7 / 1.4, 64 ch 8x8 2.2 / 0.9.
// Backward-weights: Winograd F(2x2) (winograd_weights.h) up to 128x128 channels; measured
// (2 threads, batch 128, ms direct / Winograd): 16 ch 2.6 / 1.9, 32 ch 2.5 / 1.6, 64 ch
// 2.4 / 1.5. Larger layers would stream megabytes of transformed weights (or per-thread
// partial sums) per block of tiles, so they keep the rule below.
//
// Otherwise, the direct kernels (conv3x3.h) where UseDirect3x3 says so, else oneDNN:
//
// Derived from bench/conv3x3_bench (ResNet-20's stride-1 shapes, batch 128, 2 threads, ms
// oneDNN / ours):
//   16 ch 32x32: fwd 3.52 / 2.56   bwd_data 2.67 / 2.55   bwd_weights 3.13 / 2.57
//   32 ch 16x16: fwd 2.48 / 2.62   bwd_data 2.53 / 2.70   bwd_weights 2.78 / 2.55
//   64 ch  8x8 : fwd 2.28 / 2.22   bwd_data 2.48 / 2.39   bwd_weights 2.58 / 2.35
// - Backward-weights: ours everywhere (faster on every shape).
// - Forward and backward-data (the forward kernel on the transposed layer, whose outputs are
//   the C input channels): ours where the layer writes only 16 channels, the case where
//   oneDNN broadcasts one input value per FMA; and on images at most 8 wide with an even number
//   of 16-channel output blocks, where our kernel feeds two output blocks per broadcast. oneDNN
//   elsewhere (e.g. 32 channels at 16x16, where it is a few percent faster).
bool UseDirect3x3(ConvDirection direction, const cpu::Conv3x3Geometry& g) {
  if (direction == ConvDirection::kBackwardWeights) return true;
  const int64_t out_channels = direction == ConvDirection::kForward ? g.o : g.c;
  return out_channels == 16 || (g.w <= 8 && out_channels % 32 == 0);
}

Conv3x3Kernel Choose3x3Kernel(ConvDirection direction, const cpu::Conv3x3Geometry& g) {
  const bool winograd = direction == ConvDirection::kBackwardWeights
                            ? cpu::WinogradWeightsSupported(g)
                            : cpu::WinogradSupported(g);
  if (winograd && g.c * g.o <= 128 * 128) return Conv3x3Kernel::kWinograd;
  if (cpu::Conv3x3Supported(g) && UseDirect3x3(direction, g)) return Conv3x3Kernel::kDirect;
  return Conv3x3Kernel::kOneDnn;
}

class CpuConv2d final : public Conv2dOp {
 public:
  CpuConv2d(CpuContext* ctx, const Conv2dSpec& spec) : ctx_(ctx), spec_(spec) {}

  void forward(const Tensor& src, const Tensor& weight, const Tensor* bias,
               Tensor& dst) override {
    State& s = state_for(src.dims());
    last_ = &s;
    if (s.fwd_kernel != Conv3x3Kernel::kOneDnn) {
      const Tensor& x = InLayout(*ctx_, src, s.fwd_pd.src_desc(), s.src_scratch, s.src_r);
      dst.resize(s.fwd_pd.dst_desc());
      const float* w = PlainWeight(s, weight).data();
      if (s.fwd_kernel == Conv3x3Kernel::kWinograd) {
        const int tile = cpu::WinogradTile(s.geom);
        cpu::WinogradTransformForwardWeights(s.geom, tile, w, s.packed_w.data());
        cpu::WinogradForward(s.geom, tile, x.data(), s.packed_w.data(), dst.data(),
                             WinogradScratch(s));
      } else {
        cpu::Conv3x3PackForwardWeights(s.geom, w, s.packed_w.data());
        cpu::Conv3x3Forward(s.geom, x.data(), s.packed_w.data(), dst.data());
      }
      return;
    }
    const Tensor& conv_src = InLayout(*ctx_, src, s.fwd_pd.src_desc(), s.src_scratch, s.src_r);
    const Tensor& conv_w =
        InLayout(*ctx_, weight, s.fwd_pd.weights_desc(), s.w_scratch, s.w_r);
    dst.resize(s.fwd_pd.dst_desc());
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, conv_src.mem(ctx_->eng)},
                                         {DNNL_ARG_WEIGHTS, conv_w.mem(ctx_->eng)},
                                         {DNNL_ARG_DST, dst.mem(ctx_->eng)}};
    if (spec_.bias) args[DNNL_ARG_BIAS] = bias->mem(ctx_->eng);
    Exec(*ctx_, s.fwd, std::move(args));
  }

  void backward_data(const Tensor& ddst, const Tensor& weight, Tensor& dsrc) override {
    if (!spec_.input_grad) throw std::logic_error("conv2d: backward_data on a no-input-grad conv");
    State& s = last_state();
    if (s.bwd_data_kernel != Conv3x3Kernel::kOneDnn) {
      const Tensor& dd =
          InLayout(*ctx_, ddst, s.fwd_pd.dst_desc(), s.ddst_scratch, s.ddst_r);
      dsrc.resize(s.fwd_pd.src_desc());
      const float* w = PlainWeight(s, weight).data();
      if (s.bwd_data_kernel == Conv3x3Kernel::kWinograd) {
        const int tile = cpu::WinogradTile(s.geom);
        cpu::WinogradTransformBackwardDataWeights(s.geom, tile, w, s.packed_w.data());
        cpu::WinogradBackwardData(s.geom, tile, dd.data(), s.packed_w.data(), dsrc.data(),
                                  WinogradScratch(s));
      } else {
        cpu::Conv3x3PackBackwardDataWeights(s.geom, w, s.packed_w.data());
        cpu::Conv3x3BackwardData(s.geom, dd.data(), s.packed_w.data(), dsrc.data());
      }
      return;
    }
    const Tensor& dd =
        InLayout(*ctx_, ddst, s.bwd_data_pd.diff_dst_desc(), s.ddst_scratch, s.ddst_r);
    const Tensor& w =
        InLayout(*ctx_, weight, s.bwd_data_pd.weights_desc(), s.wb_scratch, s.wb_r);
    dsrc.resize(s.bwd_data_pd.diff_src_desc());
    Exec(*ctx_, s.bwd_data,
         {{DNNL_ARG_DIFF_DST, dd.mem(ctx_->eng)},
          {DNNL_ARG_WEIGHTS, w.mem(ctx_->eng)},
          {DNNL_ARG_DIFF_SRC, dsrc.mem(ctx_->eng)}});
  }

  void backward_weights(const Tensor& src, const Tensor& ddst, Tensor& dweight,
                        Tensor* dbias) override {
    State& s = last_state();
    const MemDesc plain_w = PlainDesc(weight_dims());
    if (s.bwd_w_kernel != Conv3x3Kernel::kOneDnn) {
      const Tensor& sr = InLayout(*ctx_, src, s.fwd_pd.src_desc(), s.src_scratch, s.src_r);
      const Tensor& dd =
          InLayout(*ctx_, ddst, s.fwd_pd.dst_desc(), s.ddst_scratch, s.ddst_r);
      dweight.resize(plain_w);
      // Sized for the current team each call: the thread count may change between calls
      // (resize only reallocates when growing).
      const int threads = omp_get_max_threads();
      if (s.bwd_w_kernel == Conv3x3Kernel::kWinograd) {
        s.bwd_w_scratch.resize(Dims{cpu::WinogradWeightsScratchFloats(s.geom, threads)});
        cpu::WinogradBackwardWeights(s.geom, sr.data(), dd.data(), s.bwd_w_scratch.data(),
                                     dweight.data());
      } else {
        s.bwd_w_scratch.resize(Dims{cpu::Conv3x3BackwardWeightsScratchFloats(s.geom, threads)});
        cpu::Conv3x3BackwardWeights(s.geom, sr.data(), dd.data(), s.bwd_w_scratch.data(),
                                    dweight.data());
      }
      return;
    }
    const Tensor& sr = InLayout(*ctx_, src, s.bwd_w_pd.src_desc(), s.src_scratch, s.src_r);
    const Tensor& dd =
        InLayout(*ctx_, ddst, s.bwd_w_pd.diff_dst_desc(), s.ddst_scratch, s.ddst_r);
    const bool direct = s.bwd_w_pd.diff_weights_desc() == plain_w;
    dweight.resize(plain_w);
    Tensor& dw = direct ? dweight : s.dw_scratch;
    if (!direct) dw.resize(s.bwd_w_pd.diff_weights_desc());
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, sr.mem(ctx_->eng)},
                                         {DNNL_ARG_DIFF_DST, dd.mem(ctx_->eng)},
                                         {DNNL_ARG_DIFF_WEIGHTS, dw.mem(ctx_->eng)}};
    if (spec_.bias) {
      dbias->resize(Dims{spec_.out_channels});
      args[DNNL_ARG_DIFF_BIAS] = dbias->mem(ctx_->eng);
    }
    Exec(*ctx_, s.bwd_w, std::move(args));
    if (!direct) s.dw_r.run(*ctx_, dw, dweight);
  }

 private:
  struct State {
    Dims src_dims;
    dnnl::convolution_forward::primitive_desc fwd_pd;
    dnnl::convolution_forward fwd;
    dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
    dnnl::convolution_backward_data bwd_data;
    dnnl::convolution_backward_weights::primitive_desc bwd_w_pd;
    dnnl::convolution_backward_weights bwd_w;
    Tensor src_scratch, w_scratch, wb_scratch, ddst_scratch, dw_scratch;
    CachedReorder src_r, w_r, wb_r, ddst_r, dw_r;
    // The kernel of each direction (Choose3x3Kernel); oneDNN for layers resdist's kernels do
    // not handle. Where any direction runs ours, activations are nChw16c in every direction.
    Conv3x3Kernel fwd_kernel = Conv3x3Kernel::kOneDnn, bwd_data_kernel = Conv3x3Kernel::kOneDnn,
                  bwd_w_kernel = Conv3x3Kernel::kOneDnn;
    cpu::Conv3x3Geometry geom;
    // Weights packed or transformed for the last call of ours (forward or backward-data; the
    // weights change every step, so each call does it again), the backward-weights partial
    // sums and the Winograd tile blocks.
    Tensor packed_w, bwd_w_scratch, wino_scratch;
  };

  Dims weight_dims() const {
    return {spec_.out_channels, spec_.in_channels, spec_.kernel_h, spec_.kernel_w};
  }

  State& last_state() {
    if (last_ == nullptr) throw std::logic_error("conv2d: backward before any forward");
    return *last_;
  }

  // The model's weights are plain OIHW (ops.h); anything else is reordered to it first.
  const Tensor& PlainWeight(State& s, const Tensor& weight) {
    return InLayout(*ctx_, weight, PlainDesc(weight_dims()), s.w_scratch, s.w_r);
  }

  // Scratch for a Winograd call, sized for the current team each call: the thread count may
  // change between calls (resize only reallocates when growing).
  float* WinogradScratch(State& s) {
    s.wino_scratch.resize(Dims{cpu::WinogradScratchFloats(s.geom, omp_get_max_threads())});
    return s.wino_scratch.data();
  }

  // The geometry resdist's 3x3 kernels would run for `src_dims`, or nothing when the layer or
  // the CPU is outside what they handle.
  std::optional<cpu::Conv3x3Geometry> Direct3x3Geometry(const Dims& src_dims) const {
    if (spec_.kernel_h != 3 || spec_.kernel_w != 3 || spec_.stride_h != 1 ||
        spec_.stride_w != 1 || spec_.pad_h != 1 || spec_.pad_w != 1 || spec_.bias ||
        src_dims.size() != 4 || src_dims[1] != spec_.in_channels)
      return std::nullopt;
    const cpu::Conv3x3Geometry g{src_dims[0], spec_.in_channels, spec_.out_channels,
                                 src_dims[2], src_dims[3]};
    if (!cpu::WinogradSupported(g) && !cpu::Conv3x3Supported(g)) return std::nullopt;
    return g;
  }

  State& state_for(const Dims& src_dims) {
    for (auto& s : states_)
      if (s->src_dims == src_dims) return *s;
    auto s = std::make_unique<State>();
    s->src_dims = src_dims;
    const int64_t n = src_dims[0], h = src_dims[2], w = src_dims[3];
    const int64_t oh = (h + 2 * spec_.pad_h - spec_.kernel_h) / spec_.stride_h + 1;
    const int64_t ow = (w + 2 * spec_.pad_w - spec_.kernel_w) / spec_.stride_w + 1;
    const Dims dst_dims{n, spec_.out_channels, oh, ow};
    const memory::dims strides{spec_.stride_h, spec_.stride_w};
    const memory::dims pad_l{spec_.pad_h, spec_.pad_w};
    const memory::dims pad_r{(oh - 1) * spec_.stride_h + spec_.kernel_h - h - spec_.pad_h,
                             (ow - 1) * spec_.stride_w + spec_.kernel_w - w - spec_.pad_w};
    MemDesc src_md = AnyDesc(src_dims), dst_md = AnyDesc(dst_dims);
    const MemDesc w_md = AnyDesc(weight_dims());
    if (const auto g = Direct3x3Geometry(src_dims)) {
      s->geom = *g;
      s->fwd_kernel = Choose3x3Kernel(ConvDirection::kForward, *g);
      s->bwd_data_kernel = spec_.input_grad ? Choose3x3Kernel(ConvDirection::kBackwardData, *g)
                                            : Conv3x3Kernel::kOneDnn;
      s->bwd_w_kernel = Choose3x3Kernel(ConvDirection::kBackwardWeights, *g);
      // Our kernels need nChw16c; oneDNN's primitives for the other directions are created on
      // the same layout (what `any` yields on AVX-512 anyway), so no reorders appear between
      // layers whichever kernel runs.
      src_md = MemDesc(ToDnnl(src_dims), dt::f32, tag::aBcd16b);
      dst_md = MemDesc(ToDnnl(dst_dims), dt::f32, tag::aBcd16b);
      // Packed / transformed weights, sized for the kernels this state runs (none for
      // backward-weights, which reads the plain gradient layout).
      int64_t packed = 0;
      for (Conv3x3Kernel k : {s->fwd_kernel, s->bwd_data_kernel}) {
        if (k == Conv3x3Kernel::kWinograd)
          packed = std::max(packed, cpu::WinogradWeightFloats(*g));
        if (k == Conv3x3Kernel::kDirect)
          packed = std::max(packed, cpu::Conv3x3PackedWeightFloats(*g));
      }
      if (packed > 0) s->packed_w.resize(Dims{packed});
    }
    const MemDesc b_md = spec_.bias ? AnyDesc({spec_.out_channels}) : MemDesc();
    DNNL_TRY({
      auto fd = spec_.bias ? dnnl::convolution_forward::desc(
                                 prop_kind::forward_training, algorithm::convolution_direct,
                                 src_md, w_md, b_md, dst_md, strides, pad_l, pad_r)
                           : dnnl::convolution_forward::desc(
                                 prop_kind::forward_training, algorithm::convolution_direct,
                                 src_md, w_md, dst_md, strides, pad_l, pad_r);
      s->fwd_pd = dnnl::convolution_forward::primitive_desc(fd, ctx_->eng);
      s->fwd = dnnl::convolution_forward(s->fwd_pd);
      if (spec_.input_grad) {
        dnnl::convolution_backward_data::desc bd(algorithm::convolution_direct,
                                                 s->fwd_pd.src_desc(), w_md,
                                                 s->fwd_pd.dst_desc(), strides, pad_l, pad_r);
        s->bwd_data_pd =
            dnnl::convolution_backward_data::primitive_desc(bd, ctx_->eng, s->fwd_pd);
        s->bwd_data = dnnl::convolution_backward_data(s->bwd_data_pd);
      }
      auto wd = spec_.bias ? dnnl::convolution_backward_weights::desc(
                                 algorithm::convolution_direct, s->fwd_pd.src_desc(), w_md,
                                 PlainDesc({spec_.out_channels}), s->fwd_pd.dst_desc(),
                                 strides, pad_l, pad_r)
                           : dnnl::convolution_backward_weights::desc(
                                 algorithm::convolution_direct, s->fwd_pd.src_desc(), w_md,
                                 s->fwd_pd.dst_desc(), strides, pad_l, pad_r);
      s->bwd_w_pd = dnnl::convolution_backward_weights::primitive_desc(wd, ctx_->eng, s->fwd_pd);
      s->bwd_w = dnnl::convolution_backward_weights(s->bwd_w_pd);
    });
    states_.push_back(std::move(s));
    return *states_.back();
  }

  CpuContext* ctx_;
  Conv2dSpec spec_;
  std::vector<std::unique_ptr<State>> states_;
  State* last_ = nullptr;
};

// ---------------------------------------------------------------- batch norm
class CpuBatchNorm final : public BatchNormOp {
 public:
  CpuBatchNorm(CpuContext* ctx, const BatchNormSpec& spec) : ctx_(ctx), spec_(spec) {
    mean_.resize(Dims{spec.channels});
    var_.resize(Dims{spec.channels});
  }

  void forward(const Tensor& src, const Tensor& gamma, const Tensor& beta,
               Tensor& running_mean, Tensor& running_var, Tensor& dst, bool training) override {
    State& s = state_for(src.desc());
    dst.resize(src.desc());
    auto& e = ctx_->eng;
    if (training) {
      std::unordered_map<int, memory> args{
          {DNNL_ARG_SRC, src.mem(e)},     {DNNL_ARG_DST, dst.mem(e)},
          {DNNL_ARG_SCALE, gamma.mem(e)}, {DNNL_ARG_SHIFT, beta.mem(e)},
          {DNNL_ARG_MEAN, mean_.mem(e)},  {DNNL_ARG_VARIANCE, var_.mem(e)}};
      if (spec_.fuse_relu) args[DNNL_ARG_WORKSPACE] = s.workspace;
      Exec(*ctx_, s.fwd_train, std::move(args));
      // Running statistics as PyTorch: unbiased batch variance, momentum-weighted.
      const int64_t c = spec_.channels;
      const Dims d = src.dims();
      int64_t count = d[0];
      for (size_t i = 2; i < d.size(); ++i) count *= d[i];
      const float unbias = count > 1 ? static_cast<float>(count) / (count - 1) : 1.0f;
      const float m = spec_.momentum;
      float* rm = running_mean.data();
      float* rv = running_var.data();
      for (int64_t i = 0; i < c; ++i) {
        rm[i] = (1 - m) * rm[i] + m * mean_.data()[i];
        rv[i] = (1 - m) * rv[i] + m * var_.data()[i] * unbias;
      }
    } else {
      Exec(*ctx_, s.fwd_infer,
           {{DNNL_ARG_SRC, src.mem(e)},
            {DNNL_ARG_DST, dst.mem(e)},
            {DNNL_ARG_SCALE, gamma.mem(e)},
            {DNNL_ARG_SHIFT, beta.mem(e)},
            {DNNL_ARG_MEAN, running_mean.mem(e)},
            {DNNL_ARG_VARIANCE, running_var.mem(e)}});
    }
    last_ = &s;
  }

  bool forward_add_relu(const Tensor& src, const Tensor& gamma, const Tensor& beta,
                        Tensor& running_mean, Tensor& running_var, const Tensor& residual,
                        Tensor& dst, bool training) override {
    const Dims d = src.dims();
    if (d.size() != 4 || spec_.fuse_relu) return false;
    const MemDesc blocked(ToDnnl(d), dt::f32, tag::aBcd16b);
    int block = 0;
    if (src.desc() == blocked) block = 16;
    else if (src.desc() == PlainDesc(d)) block = 1;
    else return false;
    last_ = &state_for(src.desc());  // backward() runs oneDNN's kernel on these statistics
    const Tensor& res = InLayout(*ctx_, residual, src.desc(), res_scratch_, res_r_);
    dst.resize(src.desc());
    const int64_t n = d[0], c = d[1], hw = d[2] * d[3], cb = (c + block - 1) / block;
    if (training) {
      BatchStatistics(src.data(), n, cb, hw, block, c);
      const float unbias = n * hw > 1 ? static_cast<float>(n * hw) / (n * hw - 1) : 1.f;
      const float m = spec_.momentum;
      for (int64_t i = 0; i < c; ++i) {
        running_mean.data()[i] = (1 - m) * running_mean.data()[i] + m * mean_.data()[i];
        running_var.data()[i] = (1 - m) * running_var.data()[i] + m * var_.data()[i] * unbias;
      }
    }
    const float* mean = training ? mean_.data() : running_mean.data();
    const float* var = training ? var_.data() : running_var.data();
    // Per channel: y = max(0, x * scale + shift + r); padded channels get scale = shift = 0.
    scale_.resize(cb * block);
    shift_.resize(cb * block);
    for (int64_t i = 0; i < cb * block; ++i) {
      if (i < c) {
        scale_[i] = gamma.data()[i] / std::sqrt(var[i] + spec_.eps);
        shift_[i] = beta.data()[i] - mean[i] * scale_[i];
      } else {
        scale_[i] = shift_[i] = 0.f;
      }
    }
    const float* x = src.data();
    const float* r = res.data();
    float* y = dst.data();
    const float* sc = scale_.data();
    const float* sh = shift_.data();
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t in = 0; in < n; ++in)
      for (int64_t ib = 0; ib < cb; ++ib) {
        const int64_t base = (in * cb + ib) * hw * block;
        const float* bs = sc + ib * block;
        const float* bh = sh + ib * block;
        for (int64_t p = 0; p < hw; ++p) {
#pragma omp simd
          for (int l = 0; l < block; ++l) {
            const int64_t k = base + p * block + l;
            const float v = x[k] * (block == 1 ? bs[0] : bs[l]) + (block == 1 ? bh[0] : bh[l]) + r[k];
            y[k] = v > 0.f ? v : 0.f;
          }
        }
      }
    return true;
  }

  void backward(const Tensor& src, const Tensor& ddst, const Tensor& gamma, const Tensor& beta,
                Tensor& dsrc, Tensor& dgamma, Tensor& dbeta) override {
    State& s = *last_;
    auto& e = ctx_->eng;
    const Tensor& dd = InLayout(*ctx_, ddst, s.md, s.ddst_scratch, s.ddst_r);
    dsrc.resize(s.md);
    dgamma.resize(Dims{spec_.channels});
    dbeta.resize(Dims{spec_.channels});
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, src.mem(e)},          {DNNL_ARG_DIFF_DST, dd.mem(e)},
        {DNNL_ARG_MEAN, mean_.mem(e)},       {DNNL_ARG_VARIANCE, var_.mem(e)},
        {DNNL_ARG_SCALE, gamma.mem(e)},      {DNNL_ARG_SHIFT, beta.mem(e)},
        {DNNL_ARG_DIFF_SRC, dsrc.mem(e)},    {DNNL_ARG_DIFF_SCALE, dgamma.mem(e)},
        {DNNL_ARG_DIFF_SHIFT, dbeta.mem(e)}};
    if (spec_.fuse_relu) args[DNNL_ARG_WORKSPACE] = s.workspace;
    Exec(*ctx_, s.bwd, std::move(args));
  }

  const Tensor& saved_mean() const override { return mean_; }
  const Tensor& saved_var() const override { return var_; }

 private:
  struct State {
    MemDesc md;
    dnnl::batch_normalization_forward fwd_train, fwd_infer;
    dnnl::batch_normalization_backward bwd;
    memory workspace;
    Tensor ddst_scratch;
    CachedReorder ddst_r;
  };

  State& state_for(const MemDesc& md) {
    for (auto& s : states_)
      if (s->md == md) return *s;
    auto s = std::make_unique<State>();
    s->md = md;
    using nf = dnnl::normalization_flags;
    nf base = nf::use_scale | nf::use_shift;
    if (spec_.fuse_relu) base = base | nf::fuse_norm_relu;
    DNNL_TRY({
      dnnl::batch_normalization_forward::primitive_desc train_pd(
          {prop_kind::forward_training, md, spec_.eps, base}, ctx_->eng);
      s->fwd_train = dnnl::batch_normalization_forward(train_pd);
      dnnl::batch_normalization_forward::primitive_desc infer_pd(
          {prop_kind::forward_inference, md, spec_.eps, base | nf::use_global_stats},
          ctx_->eng);
      s->fwd_infer = dnnl::batch_normalization_forward(infer_pd);
      dnnl::batch_normalization_backward::primitive_desc bwd_pd(
          {prop_kind::backward, md, md, spec_.eps, base}, ctx_->eng, train_pd);
      s->bwd = dnnl::batch_normalization_backward(bwd_pd);
      if (spec_.fuse_relu) s->workspace = memory(train_pd.workspace_desc(), ctx_->eng);
    });
    states_.push_back(std::move(s));
    return *states_.back();
  }

  // Batch mean and biased variance per channel of x, laid out as (N, CB, HW, block) with
  // channel = cb * block + lane: two passes (mean, then squared deviations) accumulated per
  // (sample, channel) in double, so the variance does not suffer E[x^2] - E[x]^2 cancellation.
  void BatchStatistics(const float* x, int64_t n, int64_t cb, int64_t hw, int block, int64_t c) {
    partial_.assign(n * cb * block, 0.0);
    double* part = partial_.data();
    auto reduce = [&](const float* center) {
#pragma omp parallel for collapse(2) schedule(static)
      for (int64_t in = 0; in < n; ++in)
        for (int64_t ib = 0; ib < cb; ++ib) {
          const int64_t base = (in * cb + ib) * hw * block;
          float acc[16] = {0};
          float ctr[16] = {0};
          if (center)
            for (int l = 0; l < block; ++l) ctr[l] = center[ib * block + l];
          double* out = part + (in * cb + ib) * block;
          // Float partial sums over runs of 64 pixels, flushed into double.
          for (int64_t p0 = 0; p0 < hw; p0 += 64) {
            const int64_t p1 = std::min(hw, p0 + 64);
            for (int64_t p = p0; p < p1; ++p) {
#pragma omp simd
              for (int l = 0; l < block; ++l) {
                const float v = x[base + p * block + l] - ctr[l];
                acc[l] += center ? v * v : v;
              }
            }
            for (int l = 0; l < block; ++l) {
              out[l] += acc[l];
              acc[l] = 0.f;
            }
          }
        }
    };
    const double count = static_cast<double>(n * hw);
    reduce(nullptr);
    center_.assign(cb * block, 0.f);
    for (int64_t ch = 0; ch < cb * block; ++ch) {
      double sum = 0;
      for (int64_t in = 0; in < n; ++in) sum += part[(in * cb + ch / block) * block + ch % block];
      center_[ch] = static_cast<float>(sum / count);
      if (ch < c) mean_.data()[ch] = center_[ch];
    }
    partial_.assign(n * cb * block, 0.0);
    reduce(center_.data());
    for (int64_t ch = 0; ch < c; ++ch) {
      double sq = 0;
      for (int64_t in = 0; in < n; ++in) sq += part[(in * cb + ch / block) * block + ch % block];
      var_.data()[ch] = static_cast<float>(sq / count);
    }
  }

  CpuContext* ctx_;
  BatchNormSpec spec_;
  std::vector<double> partial_;
  std::vector<float> center_, scale_, shift_;
  Tensor res_scratch_;
  CachedReorder res_r_;
  Tensor mean_, var_;  // (C) batch statistics of the last training forward
  std::vector<std::unique_ptr<State>> states_;
  State* last_ = nullptr;
};

// ---------------------------------------------------------------- relu
class CpuRelu final : public ReluOp {
 public:
  explicit CpuRelu(CpuContext* ctx) : ctx_(ctx) {}

  void forward(const Tensor& src, Tensor& dst) override {
    State& s = state_for(src.desc());
    if (&dst != &src) dst.resize(src.desc());
    Exec(*ctx_, s.fwd, {{DNNL_ARG_SRC, src.mem(ctx_->eng)}, {DNNL_ARG_DST, dst.mem(ctx_->eng)}});
  }

  void backward(const Tensor& dst, const Tensor& ddst, Tensor& dsrc) override {
    State& s = state_for(dst.desc());
    const Tensor& dd = InLayout(*ctx_, ddst, s.md, s.ddst_scratch, s.ddst_r);
    if (&dsrc != &ddst) dsrc.resize(s.md);
    Exec(*ctx_, s.bwd,
         {{DNNL_ARG_DST, dst.mem(ctx_->eng)},
          {DNNL_ARG_DIFF_DST, dd.mem(ctx_->eng)},
          {DNNL_ARG_DIFF_SRC, dsrc.mem(ctx_->eng)}});
  }

 private:
  struct State {
    MemDesc md;
    dnnl::eltwise_forward fwd;
    dnnl::eltwise_backward bwd;
    Tensor ddst_scratch;
    CachedReorder ddst_r;
  };
  State& state_for(const MemDesc& md) {
    for (auto& s : states_)
      if (s->md == md) return *s;
    auto s = std::make_unique<State>();
    s->md = md;
    DNNL_TRY({
      dnnl::eltwise_forward::primitive_desc fpd(
          {prop_kind::forward_training, algorithm::eltwise_relu_use_dst_for_bwd, md, 0.f, 0.f},
          ctx_->eng);
      s->fwd = dnnl::eltwise_forward(fpd);
      dnnl::eltwise_backward::primitive_desc bpd(
          {algorithm::eltwise_relu_use_dst_for_bwd, md, md, 0.f, 0.f}, ctx_->eng, fpd);
      s->bwd = dnnl::eltwise_backward(bpd);
    });
    states_.push_back(std::move(s));
    return *states_.back();
  }
  CpuContext* ctx_;
  std::vector<std::unique_ptr<State>> states_;
};

// ---------------------------------------------------------------- pooling
class CpuPool final : public PoolOp {
 public:
  CpuPool(CpuContext* ctx, const PoolSpec& spec) : ctx_(ctx), spec_(spec) {}

  void forward(const Tensor& src, Tensor& dst, bool training) override {
    State& s = state_for(src.desc());
    dst.resize(s.fwd_pd.dst_desc());
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src.mem(ctx_->eng)},
                                         {DNNL_ARG_DST, dst.mem(ctx_->eng)}};
    if (s.workspace) args[DNNL_ARG_WORKSPACE] = s.workspace;
    Exec(*ctx_, s.fwd, std::move(args));
    (void)training;
    last_ = &s;
  }

  void backward(const Tensor& ddst, Tensor& dsrc) override {
    State& s = *last_;
    const Tensor& dd = InLayout(*ctx_, ddst, s.fwd_pd.dst_desc(), s.ddst_scratch, s.ddst_r);
    dsrc.resize(s.md);
    std::unordered_map<int, memory> args{{DNNL_ARG_DIFF_DST, dd.mem(ctx_->eng)},
                                         {DNNL_ARG_DIFF_SRC, dsrc.mem(ctx_->eng)}};
    if (s.workspace) args[DNNL_ARG_WORKSPACE] = s.workspace;
    Exec(*ctx_, s.bwd, std::move(args));
  }

 private:
  struct State {
    MemDesc md;
    dnnl::pooling_forward::primitive_desc fwd_pd;
    dnnl::pooling_forward fwd;
    dnnl::pooling_backward bwd;
    memory workspace;
    Tensor ddst_scratch;
    CachedReorder ddst_r;
  };
  State& state_for(const MemDesc& md) {
    for (auto& s : states_)
      if (s->md == md) return *s;
    auto s = std::make_unique<State>();
    s->md = md;
    const int64_t n = md.data.dims[0], c = md.data.dims[1], h = md.data.dims[2],
                  w = md.data.dims[3];
    int64_t kh = spec_.kernel_h, kw = spec_.kernel_w, sh = spec_.stride_h, sw = spec_.stride_w,
            ph = spec_.pad_h, pw = spec_.pad_w;
    if (spec_.global) {
      kh = h, kw = w, sh = 1, sw = 1, ph = 0, pw = 0;
    }
    const int64_t oh = (h + 2 * ph - kh) / sh + 1, ow = (w + 2 * pw - kw) / sw + 1;
    const memory::dims pad_r{(oh - 1) * sh + kh - h - ph, (ow - 1) * sw + kw - w - pw};
    const algorithm alg = spec_.kind == PoolKind::kMax ? algorithm::pooling_max
                                                       : algorithm::pooling_avg_exclude_padding;
    const MemDesc dst_md = AnyDesc({n, c, oh, ow});
    DNNL_TRY({
      s->fwd_pd = dnnl::pooling_forward::primitive_desc(
          {prop_kind::forward_training, alg, md, dst_md, {sh, sw}, {kh, kw}, {ph, pw}, pad_r},
          ctx_->eng);
      s->fwd = dnnl::pooling_forward(s->fwd_pd);
      dnnl::pooling_backward::primitive_desc bpd(
          {alg, md, s->fwd_pd.dst_desc(), {sh, sw}, {kh, kw}, {ph, pw}, pad_r}, ctx_->eng,
          s->fwd_pd);
      s->bwd = dnnl::pooling_backward(bpd);
      if (s->fwd_pd.workspace_desc().get_size() > 0)
        s->workspace = memory(s->fwd_pd.workspace_desc(), ctx_->eng);
    });
    states_.push_back(std::move(s));
    return *states_.back();
  }
  CpuContext* ctx_;
  PoolSpec spec_;
  std::vector<std::unique_ptr<State>> states_;
  State* last_ = nullptr;
};

// ---------------------------------------------------------------- linear
class CpuLinear final : public LinearOp {
 public:
  CpuLinear(CpuContext* ctx, const LinearSpec& spec) : ctx_(ctx), spec_(spec) {}

  void forward(const Tensor& src, const Tensor& weight, const Tensor* bias,
               Tensor& dst) override {
    State& s = state_for(src.dims());
    const Tensor& x = InLayout(*ctx_, src, s.fwd_pd.src_desc(), s.src_scratch, s.src_r);
    const Tensor& w =
        InLayoutAs(weight, s.w_user_md, s.fwd_pd.weights_desc(), s.w_scratch, s.w_r);
    dst.resize(s.fwd_pd.dst_desc());
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, x.mem(ctx_->eng)},
                                         {DNNL_ARG_WEIGHTS, w.mem(ctx_->eng)},
                                         {DNNL_ARG_DST, dst.mem(ctx_->eng)}};
    if (spec_.bias) args[DNNL_ARG_BIAS] = bias->mem(ctx_->eng);
    Exec(*ctx_, s.fwd, std::move(args));
    last_ = &s;
  }

  void backward_data(const Tensor& ddst, const Tensor& weight, Tensor& dsrc) override {
    State& s = *last_;
    const Tensor& dd =
        InLayout(*ctx_, ddst, s.bwd_data_pd.diff_dst_desc(), s.ddst_scratch, s.ddst_r);
    const Tensor& w =
        InLayoutAs(weight, s.w_user_md, s.bwd_data_pd.weights_desc(), s.wb_scratch, s.wb_r);
    dsrc.resize(s.bwd_data_pd.diff_src_desc());
    Exec(*ctx_, s.bwd_data,
         {{DNNL_ARG_DIFF_DST, dd.mem(ctx_->eng)},
          {DNNL_ARG_WEIGHTS, w.mem(ctx_->eng)},
          {DNNL_ARG_DIFF_SRC, dsrc.mem(ctx_->eng)}});
  }

  void backward_weights(const Tensor& src, const Tensor& ddst, Tensor& dweight,
                        Tensor* dbias) override {
    State& s = *last_;
    const Tensor& x = InLayout(*ctx_, src, s.bwd_w_pd.src_desc(), s.src_scratch, s.src_r);
    const Tensor& dd =
        InLayout(*ctx_, ddst, s.bwd_w_pd.diff_dst_desc(), s.ddst_scratch, s.ddst_r);
    dweight.resize(Dims{spec_.out_features, spec_.in_features});
    const bool direct = s.bwd_w_pd.diff_weights_desc() == s.w_user_md;
    if (!direct) s.dw_scratch.resize(s.bwd_w_pd.diff_weights_desc());
    auto dw_mem = direct ? memory(s.w_user_md, ctx_->eng, dweight.data())
                         : s.dw_scratch.mem(ctx_->eng);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, x.mem(ctx_->eng)},
                                         {DNNL_ARG_DIFF_DST, dd.mem(ctx_->eng)},
                                         {DNNL_ARG_DIFF_WEIGHTS, dw_mem}};
    if (spec_.bias) {
      dbias->resize(Dims{spec_.out_features});
      args[DNNL_ARG_DIFF_BIAS] = dbias->mem(ctx_->eng);
    }
    Exec(*ctx_, s.bwd_w, std::move(args));
    if (!direct) {
      auto user = memory(s.w_user_md, ctx_->eng, dweight.data());
      auto from = s.dw_scratch.mem(ctx_->eng);
      dnnl::reorder(from, user).execute(ctx_->strm, from, user);
    }
  }

 private:
  struct State {
    Dims src_dims;
    MemDesc w_user_md;  // the plain (O,F) weights viewed with src's rank: (O,C,H,W) for 4-D src
    dnnl::inner_product_forward::primitive_desc fwd_pd;
    dnnl::inner_product_forward fwd;
    dnnl::inner_product_backward_data::primitive_desc bwd_data_pd;
    dnnl::inner_product_backward_data bwd_data;
    dnnl::inner_product_backward_weights::primitive_desc bwd_w_pd;
    dnnl::inner_product_backward_weights bwd_w;
    Tensor src_scratch, w_scratch, wb_scratch, ddst_scratch, dw_scratch;
    CachedReorder src_r, ddst_r;
    dnnl::reorder w_r, wb_r;
  };

  // Plain weights stored as (O,F) but described as `user_md`; reordered into `md` if needed.
  const Tensor& InLayoutAs(const Tensor& weight, const MemDesc& user_md, const MemDesc& md,
                           Tensor& scratch, dnnl::reorder& r) {
    if (user_md == md && weight.dims().size() == static_cast<size_t>(user_md.data.ndims))
      return weight;
    scratch.resize(md);
    auto from = memory(user_md, ctx_->eng, const_cast<float*>(weight.data()));
    auto to = scratch.mem(ctx_->eng);
    if (!r) DNNL_TRY(r = dnnl::reorder(from, to));
    r.execute(ctx_->strm, from, to);
    return scratch;
  }

  State& state_for(const Dims& src_dims) {
    for (auto& s : states_)
      if (s->src_dims == src_dims) return *s;
    auto s = std::make_unique<State>();
    s->src_dims = src_dims;
    Dims w_dims{spec_.out_features};
    for (size_t i = 1; i < src_dims.size(); ++i) w_dims.push_back(src_dims[i]);
    s->w_user_md = PlainDesc(w_dims);
    const MemDesc src_md = AnyDesc(src_dims), w_md = AnyDesc(w_dims);
    const MemDesc dst_md = PlainDesc({src_dims[0], spec_.out_features});
    const MemDesc b_md = PlainDesc({spec_.out_features});
    DNNL_TRY({
      auto fd = spec_.bias ? dnnl::inner_product_forward::desc(prop_kind::forward_training,
                                                               src_md, w_md, b_md, dst_md)
                           : dnnl::inner_product_forward::desc(prop_kind::forward_training,
                                                               src_md, w_md, dst_md);
      s->fwd_pd = dnnl::inner_product_forward::primitive_desc(fd, ctx_->eng);
      s->fwd = dnnl::inner_product_forward(s->fwd_pd);
      if (spec_.input_grad) {
        s->bwd_data_pd = dnnl::inner_product_backward_data::primitive_desc(
            {s->fwd_pd.src_desc(), w_md, dst_md}, ctx_->eng, s->fwd_pd);
        s->bwd_data = dnnl::inner_product_backward_data(s->bwd_data_pd);
      }
      auto wd = spec_.bias ? dnnl::inner_product_backward_weights::desc(
                                 s->fwd_pd.src_desc(), w_md, b_md, dst_md)
                           : dnnl::inner_product_backward_weights::desc(s->fwd_pd.src_desc(),
                                                                        w_md, dst_md);
      s->bwd_w_pd = dnnl::inner_product_backward_weights::primitive_desc(wd, ctx_->eng, s->fwd_pd);
      s->bwd_w = dnnl::inner_product_backward_weights(s->bwd_w_pd);
    });
    states_.push_back(std::move(s));
    return *states_.back();
  }

  CpuContext* ctx_;
  LinearSpec spec_;
  std::vector<std::unique_ptr<State>> states_;
  State* last_ = nullptr;
};

// ---------------------------------------------------------------- add (+relu)
class CpuAdd final : public AddOp {
 public:
  CpuAdd(CpuContext* ctx, bool fuse_relu) : ctx_(ctx), fuse_relu_(fuse_relu), relu_(ctx) {}

  void forward(const Tensor& a, const Tensor& b, Tensor& dst) override {
    const Tensor& bb = InLayout(*ctx_, b, a.desc(), b_scratch_, b_r_);
    if (!fwd_ || !(fwd_md_ == a.desc())) {
      fwd_md_ = a.desc();
      dnnl::primitive_attr attr;
      if (fuse_relu_) {
        dnnl::post_ops po;
        po.append_eltwise(1.f, algorithm::eltwise_relu, 0.f, 0.f);
        attr.set_post_ops(po);
      }
      DNNL_TRY(fwd_ = dnnl::binary(dnnl::binary::primitive_desc(
                   {algorithm::binary_add, fwd_md_, fwd_md_, fwd_md_}, attr, ctx_->eng)));
    }
    dst.resize(a.desc());
    Exec(*ctx_, fwd_,
         {{DNNL_ARG_SRC_0, a.mem(ctx_->eng)},
          {DNNL_ARG_SRC_1, bb.mem(ctx_->eng)},
          {DNNL_ARG_DST, dst.mem(ctx_->eng)}});
  }

  void backward(const Tensor& dst, const Tensor& ddst, Tensor& g) override {
    if (fuse_relu_) {
      relu_.backward(dst, ddst, g);
    } else if (&g != &ddst) {
      g.copy_from(ddst);
    }
  }

  void sum_relu_backward(const Tensor& a, const Tensor& b, const Tensor& relu_out,
                         Tensor& dst) override {
    const Tensor& bb = InLayout(*ctx_, b, a.desc(), acc_scratch_, acc_r_);
    const Tensor& m = InLayout(*ctx_, relu_out, a.desc(), mask_scratch_, mask_r_);
    dst.resize(a.desc());
    const float* pa = a.data();
    const float* pb = bb.data();
    const float* pm = m.data();
    float* pd = dst.data();
    const int64_t n = a.physical_size();
    // The mask test is done on the bit patterns: a float comparison may trap, so GCC keeps a
    // scalar branch per element, while the integer select vectorizes. For a ReLU output (never
    // negative, never NaN from finite inputs) "bits > 0 as int32" is exactly "value > 0".
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float sum = pa[i] + pb[i];
      int32_t mask_bits, sum_bits;
      std::memcpy(&mask_bits, pm + i, sizeof(float));
      std::memcpy(&sum_bits, &sum, sizeof(float));
      const int32_t out = mask_bits > 0 ? sum_bits : 0;
      std::memcpy(pd + i, &out, sizeof(float));
    }
  }

  void sum(const Tensor& a, const Tensor& b, Tensor& dst) override {
    const Tensor& s = InLayout(*ctx_, b, a.desc(), acc_scratch_, acc_r_);
    dst.resize(a.desc());
    if (!acc_ || !(acc_md_ == a.desc())) {
      acc_md_ = a.desc();
      DNNL_TRY(acc_ = dnnl::binary(dnnl::binary::primitive_desc(
                   {algorithm::binary_add, acc_md_, acc_md_, acc_md_}, ctx_->eng)));
    }
    Exec(*ctx_, acc_,
         {{DNNL_ARG_SRC_0, a.mem(ctx_->eng)},
          {DNNL_ARG_SRC_1, s.mem(ctx_->eng)},
          {DNNL_ARG_DST, dst.mem(ctx_->eng)}});
  }

 private:
  CpuContext* ctx_;
  bool fuse_relu_;
  CpuRelu relu_;
  MemDesc fwd_md_, acc_md_;
  dnnl::binary fwd_, acc_;
  Tensor b_scratch_, acc_scratch_, mask_scratch_;
  CachedReorder b_r_, acc_r_, mask_r_;
};

// ---------------------------------------------------------------- dropout
uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

class CpuDropout final : public DropoutOp {
 public:
  void forward(const Tensor& src, Tensor& dst, float p, uint64_t seed, uint64_t counter,
               bool training) override {
    dst.resize(src.desc());
    const int64_t n = src.physical_size();
    const float* x = src.data();
    float* y = dst.data();
    active_ = training && p > 0.f;
    if (!active_) {
      if (&dst != &src) std::memcpy(y, x, src.bytes());
      return;
    }
    mask_.resize(src.desc());
    float* m = mask_.data();
    const float scale = 1.0f / (1.0f - p);
    // Keep element i when its 24-bit uniform draw is >= p.
    const uint32_t threshold = static_cast<uint32_t>(static_cast<double>(p) * (1u << 24));
    const uint64_t key = SplitMix64(seed ^ SplitMix64(counter));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t r = static_cast<uint32_t>(SplitMix64(key + static_cast<uint64_t>(i)) >> 40);
      m[i] = r >= threshold ? scale : 0.f;
      y[i] = x[i] * m[i];
    }
  }

  void backward(const Tensor& ddst, Tensor& dsrc) override {
    dsrc.resize(ddst.desc());
    const int64_t n = ddst.physical_size();
    if (!active_) {
      if (&dsrc != &ddst) std::memcpy(dsrc.data(), ddst.data(), ddst.bytes());
      return;
    }
    const float* m = mask_.data();
    const float* dy = ddst.data();
    float* dx = dsrc.data();
    for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * m[i];
  }

 private:
  Tensor mask_;  // same layout as src: 0 or 1/(1-p)
  bool active_ = false;
};

// ---------------------------------------------------------------- option-A shortcut
class CpuShortcutA final : public ShortcutAOp {
 public:
  explicit CpuShortcutA(CpuContext* ctx) : ctx_(ctx) {}

  void forward(const Tensor& src, Tensor& dst, int64_t out_channels, int64_t stride) override {
    const Dims d = src.dims();
    n_ = d[0], c_ = d[1], h_ = d[2], w_ = d[3];
    co_ = out_channels, stride_ = stride;
    ho_ = (h_ + stride - 1) / stride, wo_ = (w_ + stride - 1) / stride;
    lo_ = (co_ - c_) / 2;
    blocked_ = src.desc() == Blocked16(d);
    if (blocked_) {
      forward_blocked(src, dst);
      return;
    }
    const Tensor& x = InLayout(*ctx_, src, PlainDesc(d), plain_in_, in_r_);
    dst.resize(Dims{n_, co_, ho_, wo_});
    const float* xp = x.data();
    float* yp = dst.data();
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < n_; ++n)
      for (int64_t c = 0; c < co_; ++c) {
        float* yc = yp + (n * co_ + c) * ho_ * wo_;
        const int64_t ci = c - lo_;
        if (ci < 0 || ci >= c_) {
          std::memset(yc, 0, sizeof(float) * ho_ * wo_);
          continue;
        }
        const float* xc = xp + (n * c_ + ci) * h_ * w_;
        for (int64_t i = 0; i < ho_; ++i)
          for (int64_t j = 0; j < wo_; ++j) yc[i * wo_ + j] = xc[i * stride_ * w_ + j * stride_];
      }
  }

  void backward(const Tensor& ddst, Tensor& dsrc) override {
    if (blocked_) {
      backward_blocked(ddst, dsrc);
      return;
    }
    const Tensor& g = InLayout(*ctx_, ddst, PlainDesc({n_, co_, ho_, wo_}), plain_g_, g_r_);
    dsrc.resize(Dims{n_, c_, h_, w_});
    const float* gp = g.data();
    float* dp = dsrc.data();
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < n_; ++n)
      for (int64_t c = 0; c < c_; ++c) {
        float* dc = dp + (n * c_ + c) * h_ * w_;
        std::memset(dc, 0, sizeof(float) * h_ * w_);
        const float* gc = gp + (n * co_ + c + lo_) * ho_ * wo_;
        for (int64_t i = 0; i < ho_; ++i)
          for (int64_t j = 0; j < wo_; ++j) dc[i * stride_ * w_ + j * stride_] = gc[i * wo_ + j];
      }
  }

 private:
  static MemDesc Blocked16(const Dims& d) {
    return MemDesc(ToDnnl(d), dt::f32, tag::aBcd16b);
  }

  // The activations' own layout (nChw16c): channel c of pixel (n, h, w) lives at
  // ((n * ceil(C/16) + c/16) * H + h) * W * 16 + w * 16 + c % 16, padding channels are zero.
  // Working in it directly avoids four full-tensor reorders per downsampling block.
  void forward_blocked(const Tensor& src, Tensor& dst) {
    dst.resize(Blocked16({n_, co_, ho_, wo_}));
    const int64_t cib = (c_ + 15) / 16, cob = (co_ + 15) / 16;
    const float* xp = src.data();
    float* yp = dst.data();
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < n_; ++n)
      for (int64_t ob = 0; ob < cob; ++ob)
        for (int64_t i = 0; i < ho_; ++i) {
          float* yrow = yp + ((n * cob + ob) * ho_ + i) * wo_ * 16;
          for (int64_t j = 0; j < wo_; ++j)
            for (int64_t l = 0; l < 16; ++l) {
              const int64_t ci = ob * 16 + l - lo_;
              yrow[j * 16 + l] =
                  (ci >= 0 && ci < c_)
                      ? xp[((n * cib + ci / 16) * h_ + i * stride_) * w_ * 16 + j * stride_ * 16 + ci % 16]
                      : 0.f;
            }
        }
  }

  void backward_blocked(const Tensor& ddst, Tensor& dsrc) {
    const Tensor& g =
        InLayout(*ctx_, ddst, Blocked16({n_, co_, ho_, wo_}), plain_g_, g_r_);
    dsrc.resize(Blocked16({n_, c_, h_, w_}));
    const int64_t cib = (c_ + 15) / 16, cob = (co_ + 15) / 16;
    const float* gp = g.data();
    float* dp = dsrc.data();
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < n_; ++n)
      for (int64_t ib = 0; ib < cib; ++ib)
        for (int64_t i = 0; i < h_; ++i) {
          float* drow = dp + ((n * cib + ib) * h_ + i) * w_ * 16;
          if (i % stride_ != 0) {
            std::memset(drow, 0, sizeof(float) * w_ * 16);
            continue;
          }
          for (int64_t j = 0; j < w_; ++j)
            for (int64_t l = 0; l < 16; ++l) {
              const int64_t ci = ib * 16 + l, co = ci + lo_;
              drow[j * 16 + l] =
                  (j % stride_ == 0 && ci < c_)
                      ? gp[((n * cob + co / 16) * ho_ + i / stride_) * wo_ * 16 + (j / stride_) * 16 + co % 16]
                      : 0.f;
            }
        }
  }

  CpuContext* ctx_;
  int64_t n_ = 0, c_ = 0, h_ = 0, w_ = 0, co_ = 0, ho_ = 0, wo_ = 0, lo_ = 0, stride_ = 1;
  bool blocked_ = false;
  Tensor plain_in_, plain_g_;
  CachedReorder in_r_, g_r_;
};

// ---------------------------------------------------------------- loss
class CpuSoftmaxXent final : public SoftmaxCrossEntropyOp {
 public:
  explicit CpuSoftmaxXent(CpuContext* ctx) : ctx_(ctx) {}

  LossResult forward_backward(const Tensor& logits, std::span<const int32_t> labels,
                              int64_t valid, float label_smoothing, Tensor* dlogits) override {
    const Dims d = logits.dims();
    const int64_t n = d[0], k = d[1];
    const Tensor& z = InLayout(*ctx_, logits, PlainDesc({n, k}), plain_, r_);
    if (dlogits) {
      dlogits->resize(Dims{n, k});
      dlogits->zero();
    }
    LossResult res;
    valid = std::min<int64_t>(valid, n);
    if (valid <= 0) return res;
    const double inv_valid = 1.0 / static_cast<double>(valid);
    const double off = label_smoothing / static_cast<double>(k);
    const double on = 1.0 - label_smoothing + off;
    double total = 0;
    for (int64_t i = 0; i < valid; ++i) {
      const float* zi = z.data() + i * k;
      const int32_t y = labels[i];
      int64_t arg = 0;
      double mx = zi[0];
      for (int64_t j = 1; j < k; ++j)
        if (zi[j] > mx) mx = zi[j], arg = j;
      double sum = 0;
      for (int64_t j = 0; j < k; ++j) sum += std::exp(static_cast<double>(zi[j]) - mx);
      const double lse = mx + std::log(sum);
      double loss = 0;
      for (int64_t j = 0; j < k; ++j) {
        const double t = j == y ? on : off;
        loss -= t * (static_cast<double>(zi[j]) - lse);
        if (dlogits) {
          const double p = std::exp(static_cast<double>(zi[j]) - lse);
          dlogits->data()[i * k + j] = static_cast<float>((p - t) * inv_valid);
        }
      }
      total += loss;
      if (arg == y) ++res.correct;
    }
    res.loss = total * inv_valid;
    return res;
  }

 private:
  CpuContext* ctx_;
  Tensor plain_;
  CachedReorder r_;
};

// ---------------------------------------------------------------- backend
class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) {
    if (threads > 0) omp_set_num_threads(threads);
    threads_ = omp_get_max_threads();
  }
  std::string name() const override { return "cpu-onednn"; }
  int threads() const override { return threads_; }
  std::unique_ptr<Conv2dOp> conv2d(const Conv2dSpec& s) override {
    return std::make_unique<CpuConv2d>(&ctx_, s);
  }
  std::unique_ptr<BatchNormOp> batchnorm(const BatchNormSpec& s) override {
    if (s.allreduce_sum) return MakeCpuSyncBatchNorm(s);
    return std::make_unique<CpuBatchNorm>(&ctx_, s);
  }
  std::unique_ptr<ReluOp> relu() override { return std::make_unique<CpuRelu>(&ctx_); }
  std::unique_ptr<PoolOp> pool(const PoolSpec& s) override {
    return std::make_unique<CpuPool>(&ctx_, s);
  }
  std::unique_ptr<LinearOp> linear(const LinearSpec& s) override {
    return std::make_unique<CpuLinear>(&ctx_, s);
  }
  std::unique_ptr<AddOp> add(bool fuse_relu) override {
    return std::make_unique<CpuAdd>(&ctx_, fuse_relu);
  }
  std::unique_ptr<DropoutOp> dropout() override { return std::make_unique<CpuDropout>(); }
  std::unique_ptr<ShortcutAOp> shortcut_a() override {
    return std::make_unique<CpuShortcutA>(&ctx_);
  }
  std::unique_ptr<SoftmaxCrossEntropyOp> softmax_cross_entropy() override {
    return std::make_unique<CpuSoftmaxXent>(&ctx_);
  }
  void to_plain(const Tensor& src, Tensor& dst) override { reorder(src, dst, PlainDesc(src.dims())); }
  void reorder(const Tensor& src, Tensor& dst, const MemDesc& md) override {
    dst.resize(md);
    if (src.desc() == md) {
      std::memcpy(dst.data(), src.data(), src.bytes());
      return;
    }
    auto s = src.mem(ctx_.eng);
    auto d = dst.mem(ctx_.eng);
    DNNL_TRY(dnnl::reorder(s, d).execute(ctx_.strm, s, d));
  }
  void synchronize() override { ctx_.strm.wait(); }

 private:
  CpuContext ctx_;
  int threads_ = 1;
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend(int threads) {
  return std::make_unique<CpuBackend>(threads);
}

}  // namespace resdist
