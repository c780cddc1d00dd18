// resdist's AVX-512 3x3 convolution kernels (worker/backend/cpu/conv3x3.h) against oneDNN's
// convolution primitives on plain layouts, and the CpuConv2d op that uses them (and the
// Winograd kernels, winograd.h / winograd_weights.h) against the same reference.
//
// Tolerance: every output element is a sum of K fp32 products: K <= C*9 for forward, O*9 for
// backward-data (at most 9360 here) and N*H*W per weight for backward-weights (at most 4096).
// Our kernels and oneDNN add them in different orders (and split the batch over threads
// differently). Each addition rounds by at most u = 2^-24 of its partial sum, so the two
// results differ by about u * sqrt(sum of squared partial sums); with random-sign data the
// partial sums stay near sqrt(k) terms, which makes that ~u * K / sqrt(2), while the sum of the
// products' magnitudes is S ~ 0.64 * K (E|xy| = 2/pi for standard normals). The expected
// difference is thus ~1e-7 * S whatever K is (the worst element of these tests: 3.6e-7 S), and
// we require, element by element, |ours - reference| <= 1e-5 * S: a margin of ~30x, yet far
// below what a wrong tap, channel or border (an error of a whole product, ~S / K >= 1e-4 S)
// would give. S is computed by the reference itself, as the same convolution of the inputs'
// absolute values. The op runs Winograd on the layers of up to 128x128 channels, whose
// transforms round more: F(4x4) reaches 3.1e-6 S there (a margin of ~3x; those layers have
// K <= 4096, so a wrong product would still be >= 2e-4 S).
#include "worker/backend/cpu/conv3x3.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "worker/backend/cpu/winograd.h"
#include "worker/backend/cpu/winograd_weights.h"
#include "worker/backend/ops.h"
#include "worker/tensor/tensor.h"

namespace resdist {
namespace {

using cpu::Conv3x3Geometry;
using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

constexpr double kRtol = 1e-5;  // relative to the sum of |products|; see the file comment
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

bool CpuHasAvx512() { return cpu::CpuHasAvx512Kernels(); }  // every extension the kernels need

MemDesc Blocked16(const Dims& d) {
  return MemDesc(memory::dims(d.begin(), d.end()), dt::f32, tag::aBcd16b);
}

Dims SrcDims(const Conv3x3Geometry& g) { return {g.n, g.c, g.h, g.w}; }
Dims DstDims(const Conv3x3Geometry& g) { return {g.n, g.o, g.h, g.w}; }
Dims WeightDims(const Conv3x3Geometry& g) { return {g.o, g.c, 3, 3}; }

Tensor Random(const Dims& dims, uint32_t seed) {
  Tensor t(dims);
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = d(rng);
  return t;
}

Tensor Abs(const Tensor& t) {
  Tensor a(t.desc());
  for (int64_t i = 0; i < t.physical_size(); ++i) a.data()[i] = std::fabs(t.data()[i]);
  return a;
}

std::vector<float> Values(const Tensor& t) {
  return std::vector<float>(t.data(), t.data() + t.physical_size());
}

// oneDNN on plain layouts (nchw / oihw): the reference, and the layout conversions.
class Reference {
 public:
  Tensor Forward(const Tensor& src, const Tensor& w) {
    const auto pd = ForwardPd(src.dims(), w.dims());
    Tensor dst(PlainDesc(DstOf(src.dims(), w.dims())));
    dnnl::convolution_forward(pd).execute(strm_, {{DNNL_ARG_SRC, src.mem(eng_)},
                                                  {DNNL_ARG_WEIGHTS, w.mem(eng_)},
                                                  {DNNL_ARG_DST, dst.mem(eng_)}});
    strm_.wait();
    return dst;
  }

  Tensor BackwardData(const Tensor& ddst, const Tensor& w, const Dims& src_dims) {
    const auto fpd = ForwardPd(src_dims, w.dims());
    dnnl::convolution_backward_data::primitive_desc pd(
        {dnnl::algorithm::convolution_direct, PlainDesc(src_dims), PlainDesc(w.dims()),
         PlainDesc(ddst.dims()), kStrides, kPad, kPad},
        eng_, fpd);
    Tensor dsrc(PlainDesc(src_dims));
    dnnl::convolution_backward_data(pd).execute(strm_, {{DNNL_ARG_DIFF_DST, ddst.mem(eng_)},
                                                        {DNNL_ARG_WEIGHTS, w.mem(eng_)},
                                                        {DNNL_ARG_DIFF_SRC, dsrc.mem(eng_)}});
    strm_.wait();
    return dsrc;
  }

  Tensor BackwardWeights(const Tensor& src, const Tensor& ddst) {
    const Dims w_dims{ddst.dims()[1], src.dims()[1], 3, 3};
    const auto fpd = ForwardPd(src.dims(), w_dims);
    dnnl::convolution_backward_weights::primitive_desc pd(
        {dnnl::algorithm::convolution_direct, PlainDesc(src.dims()), PlainDesc(w_dims),
         PlainDesc(ddst.dims()), kStrides, kPad, kPad},
        eng_, fpd);
    Tensor dw(PlainDesc(w_dims));
    dnnl::convolution_backward_weights(pd).execute(strm_, {{DNNL_ARG_SRC, src.mem(eng_)},
                                                           {DNNL_ARG_DIFF_DST, ddst.mem(eng_)},
                                                           {DNNL_ARG_DIFF_WEIGHTS, dw.mem(eng_)}});
    strm_.wait();
    return dw;
  }

  Tensor Reordered(const Tensor& src, const MemDesc& md) {
    Tensor dst(md);
    memory from = src.mem(eng_), to = dst.mem(eng_);
    dnnl::reorder(from, to).execute(strm_, from, to);
    strm_.wait();
    return dst;
  }

  // oneDNN's primitives as CpuConv2d creates them for a layer resdist's kernels could run:
  // activations nChw16c, weights in the layout oneDNN picks (reordered from plain OIHW). With
  // the op's inputs and thread count, they give the op's oneDNN results bit for bit.
  Tensor ForwardAsOp(const Tensor& src_blk, const Tensor& w) {
    const auto pd = BlockedForwardPd(src_blk.dims(), w.dims());
    const Tensor wr = Reordered(w, pd.weights_desc());
    Tensor dst(pd.dst_desc());
    dnnl::convolution_forward(pd).execute(strm_, {{DNNL_ARG_SRC, src_blk.mem(eng_)},
                                                  {DNNL_ARG_WEIGHTS, wr.mem(eng_)},
                                                  {DNNL_ARG_DST, dst.mem(eng_)}});
    strm_.wait();
    return dst;
  }

  Tensor BackwardDataAsOp(const Tensor& ddst_blk, const Tensor& w, const Dims& src_dims) {
    const auto fpd = BlockedForwardPd(src_dims, w.dims());
    dnnl::convolution_backward_data::primitive_desc pd(
        {dnnl::algorithm::convolution_direct, fpd.src_desc(), AnyDesc(w.dims()),
         fpd.dst_desc(), kStrides, kPad, kPad},
        eng_, fpd);
    const Tensor wr = Reordered(w, pd.weights_desc());
    Tensor dsrc(pd.diff_src_desc());
    dnnl::convolution_backward_data(pd).execute(strm_, {{DNNL_ARG_DIFF_DST, ddst_blk.mem(eng_)},
                                                        {DNNL_ARG_WEIGHTS, wr.mem(eng_)},
                                                        {DNNL_ARG_DIFF_SRC, dsrc.mem(eng_)}});
    strm_.wait();
    return dsrc;
  }

  Tensor BackwardWeightsAsOp(const Tensor& src_blk, const Tensor& ddst_blk) {
    const Dims w_dims{ddst_blk.dims()[1], src_blk.dims()[1], 3, 3};
    const auto fpd = BlockedForwardPd(src_blk.dims(), w_dims);
    dnnl::convolution_backward_weights::primitive_desc pd(
        {dnnl::algorithm::convolution_direct, fpd.src_desc(), AnyDesc(w_dims), fpd.dst_desc(),
         kStrides, kPad, kPad},
        eng_, fpd);
    Tensor dw(pd.diff_weights_desc());
    dnnl::convolution_backward_weights(pd).execute(strm_,
                                                   {{DNNL_ARG_SRC, src_blk.mem(eng_)},
                                                    {DNNL_ARG_DIFF_DST, ddst_blk.mem(eng_)},
                                                    {DNNL_ARG_DIFF_WEIGHTS, dw.mem(eng_)}});
    strm_.wait();
    return Reordered(dw, PlainDesc(w_dims));
  }

 private:
  static Dims DstOf(const Dims& src, const Dims& w) { return {src[0], w[0], src[2], src[3]}; }

  static MemDesc AnyDesc(const Dims& d) {
    return MemDesc(memory::dims(d.begin(), d.end()), dt::f32, tag::any);
  }

  dnnl::convolution_forward::primitive_desc BlockedForwardPd(const Dims& src, const Dims& w) {
    return dnnl::convolution_forward::primitive_desc(
        {dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, Blocked16(src),
         AnyDesc(w), Blocked16(DstOf(src, w)), kStrides, kPad, kPad},
        eng_);
  }

  dnnl::convolution_forward::primitive_desc ForwardPd(const Dims& src, const Dims& w) {
    return dnnl::convolution_forward::primitive_desc(
        {dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, PlainDesc(src),
         PlainDesc(w), PlainDesc(DstOf(src, w)), kStrides, kPad, kPad},
        eng_);
  }

  const memory::dims kStrides{1, 1}, kPad{1, 1};
  dnnl::engine eng_{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm_{eng_};
};

// |got - want| <= kRtol * bound element by element (all three plain, same dims).
void ExpectClose(const std::string& what, const Tensor& got, const Tensor& want,
                 const Tensor& bound) {
  ASSERT_EQ(got.dims(), want.dims()) << what;
  ASSERT_TRUE(got.is_plain() && want.is_plain() && bound.is_plain()) << what;
  int failures = 0;
  double worst = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double diff = std::fabs(static_cast<double>(got.data()[i]) - want.data()[i]);
    const double limit = kRtol * bound.data()[i];
    if (bound.data()[i] > 0) worst = std::max(worst, diff / bound.data()[i]);
    if (!(diff <= limit) && ++failures <= 5)
      ADD_FAILURE() << what << " element " << i << ": got " << got.data()[i] << " want "
                    << want.data()[i] << " (|products| sum " << bound.data()[i] << ")";
  }
  EXPECT_EQ(failures, 0) << what << ": worst difference / |products| sum " << worst;
}

// ---------------------------------------------------------------- the kernels

struct KernelCase {
  Conv3x3Geometry g;
  int threads;
};

std::string CaseName(const ::testing::TestParamInfo<KernelCase>& info) {
  const Conv3x3Geometry& g = info.param.g;
  return "n" + std::to_string(g.n) + "_c" + std::to_string(g.c) + "_o" + std::to_string(g.o) +
         "_h" + std::to_string(g.h) + "_w" + std::to_string(g.w) + "_t" +
         std::to_string(info.param.threads);
}

class Conv3x3KernelTest : public ::testing::TestWithParam<KernelCase> {
 protected:
  void SetUp() override {
    if (!CpuHasAvx512()) GTEST_SKIP() << "this CPU lacks AVX-512 (F/VL/BW/DQ); the 3x3 kernels do not run";
    // Every listed shape is one the kernels handle; only a CPU without AVX-512 may refuse.
    ASSERT_TRUE(cpu::Conv3x3Supported(GetParam().g)) << CaseName({GetParam(), 0});
    saved_threads_ = omp_get_max_threads();
    omp_set_num_threads(GetParam().threads);
  }
  void TearDown() override {
    if (saved_threads_ > 0) omp_set_num_threads(saved_threads_);
  }

  Reference ref_;
  int saved_threads_ = 0;
};

TEST_P(Conv3x3KernelTest, ForwardMatchesOneDnn) {
  const Conv3x3Geometry g = GetParam().g;
  const Tensor src = Random(SrcDims(g), 1), w = Random(WeightDims(g), 2);
  const Tensor src_blk = ref_.Reordered(src, Blocked16(SrcDims(g)));
  Tensor packed(Dims{cpu::Conv3x3PackedWeightFloats(g)});
  cpu::Conv3x3PackForwardWeights(g, w.data(), packed.data());
  Tensor dst_blk(Blocked16(DstDims(g)));
  cpu::Conv3x3Forward(g, src_blk.data(), packed.data(), dst_blk.data());
  ExpectClose("forward", ref_.Reordered(dst_blk, PlainDesc(DstDims(g))), ref_.Forward(src, w),
              ref_.Forward(Abs(src), Abs(w)));
}

TEST_P(Conv3x3KernelTest, BackwardDataMatchesOneDnn) {
  const Conv3x3Geometry g = GetParam().g;
  const Tensor ddst = Random(DstDims(g), 3), w = Random(WeightDims(g), 4);
  const Tensor ddst_blk = ref_.Reordered(ddst, Blocked16(DstDims(g)));
  Tensor packed(Dims{cpu::Conv3x3PackedWeightFloats(g)});
  cpu::Conv3x3PackBackwardDataWeights(g, w.data(), packed.data());
  Tensor dsrc_blk(Blocked16(SrcDims(g)));
  cpu::Conv3x3BackwardData(g, ddst_blk.data(), packed.data(), dsrc_blk.data());
  ExpectClose("backward_data", ref_.Reordered(dsrc_blk, PlainDesc(SrcDims(g))),
              ref_.BackwardData(ddst, w, SrcDims(g)),
              ref_.BackwardData(Abs(ddst), Abs(w), SrcDims(g)));
}

TEST_P(Conv3x3KernelTest, BackwardWeightsMatchesOneDnn) {
  const Conv3x3Geometry g = GetParam().g;
  const Tensor src = Random(SrcDims(g), 5), ddst = Random(DstDims(g), 6);
  const Tensor src_blk = ref_.Reordered(src, Blocked16(SrcDims(g)));
  const Tensor ddst_blk = ref_.Reordered(ddst, Blocked16(DstDims(g)));
  Tensor scratch(Dims{cpu::Conv3x3BackwardWeightsScratchFloats(g, omp_get_max_threads())});
  Tensor dw(WeightDims(g));
  dw.fill(123.f);  // overwritten, not accumulated
  cpu::Conv3x3BackwardWeights(g, src_blk.data(), ddst_blk.data(), scratch.data(), dw.data());
  ExpectClose("backward_weights", dw, ref_.BackwardWeights(src, ddst),
              ref_.BackwardWeights(Abs(src), Abs(ddst)));
}

std::vector<KernelCase> KernelCases() {
  // n, c, o, h, w. Widths cover every kernel variant: multiples of 16 with one, two and three
  // tiles per row (16, 32, 48), 12, and 8 and 4 with an even (paired) or odd number of output
  // blocks; c != o in both directions, so backward-data (which swaps them) sees both too.
  const std::vector<Conv3x3Geometry> shapes = {
      {1, 16, 16, 32, 32}, {3, 32, 16, 16, 16}, {8, 16, 32, 16, 16}, {3, 64, 64, 8, 8},
      {1, 48, 32, 8, 8},   {3, 32, 48, 8, 8},   {8, 16, 64, 4, 4},   {3, 64, 48, 4, 4},
      {1, 32, 32, 12, 12}, {3, 16, 48, 12, 12}, {1, 16, 16, 48, 48}, {3, 48, 16, 5, 16},
      {3, 16, 16, 2, 4},   {8, 16, 16, 1, 8},
  };
  std::vector<KernelCase> cases;
  for (const Conv3x3Geometry& g : shapes)
    for (int threads : {1, 2}) cases.push_back({g, threads});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, Conv3x3KernelTest, ::testing::ValuesIn(KernelCases()), CaseName);

TEST(Conv3x3Supported, RejectsShapesTheKernelsDoNotHandle) {
  if (!CpuHasAvx512()) GTEST_SKIP() << "this CPU lacks AVX-512 (F/VL/BW/DQ); every shape is unsupported";
  EXPECT_TRUE(cpu::Conv3x3Supported({2, 16, 16, 8, 8}));
  EXPECT_FALSE(cpu::Conv3x3Supported({2, 3, 16, 32, 32}));   // RGB input: not a multiple of 16
  EXPECT_FALSE(cpu::Conv3x3Supported({2, 16, 24, 8, 8}));    // output channels
  EXPECT_FALSE(cpu::Conv3x3Supported({2, 16, 16, 6, 6}));    // width 6
  EXPECT_FALSE(cpu::Conv3x3Supported({2, 16, 16, 20, 20}));  // width 20
  EXPECT_FALSE(cpu::Conv3x3Supported({0, 16, 16, 8, 8}));    // empty batch
}

// ---------------------------------------------------------------- the CpuConv2d op

// Restores OpenMP's thread count, which MakeCpuBackend and these tests change, on scope exit.
class ThreadCountGuard {
 public:
  ThreadCountGuard() : saved_(omp_get_max_threads()) {}
  ~ThreadCountGuard() { omp_set_num_threads(saved_); }
  ThreadCountGuard(const ThreadCountGuard&) = delete;
  ThreadCountGuard& operator=(const ThreadCountGuard&) = delete;

 private:
  int saved_;
};

// The kernel CpuConv2d runs for one direction of a layer (Choose3x3Kernel in
// worker/backend/cpu/cpu_backend.cc).
enum class Kernel { kOneDnn, kDirect, kWinograd };

const char* KernelName(Kernel k) {
  switch (k) {
    case Kernel::kOneDnn: return "oneDNN";
    case Kernel::kDirect: return "direct";
    case Kernel::kWinograd: return "Winograd";
  }
  return "?";
}

struct OpCase {
  Conv2dSpec spec;
  Dims src_dims;
  int threads;
  Kernel fwd, bwd_data, bwd_w;  // what Choose3x3Kernel picks for the layer on an AVX-512 CPU
};

Conv2dSpec Spec3x3(int64_t c, int64_t o) {
  Conv2dSpec s;
  s.in_channels = c;
  s.out_channels = o;
  s.kernel_h = s.kernel_w = 3;
  s.pad_h = s.pad_w = 1;
  return s;
}

Conv3x3Geometry GeometryOf(const OpCase& c) {
  return {c.src_dims[0], c.spec.in_channels, c.spec.out_channels, c.src_dims[2], c.src_dims[3]};
}

class CpuConv2dTest : public ::testing::TestWithParam<OpCase> {
 protected:
  void SetUp() override { backend_ = MakeCpuBackend(GetParam().threads); }

  std::vector<float> Plain(const Tensor& t) {
    Tensor p;
    backend_->to_plain(t, p);
    return Values(p);
  }

  ThreadCountGuard threads_guard_;  // constructed before SetUp sets the case's thread count
  std::unique_ptr<Backend> backend_;
  Reference ref_;
};

// Forward, backward-data and backward-weights of the op against the oneDNN reference, for
// inputs arriving plain (NCHW) and blocked (nChw16c), over two steps with different weights
// (the op packs the weights on every call).
TEST_P(CpuConv2dTest, MatchesReferenceForPlainAndBlockedInputs) {
  const OpCase& c = GetParam();
  const Dims src_dims = c.src_dims;
  const Dims dst_dims{src_dims[0], c.spec.out_channels, src_dims[2], src_dims[3]};
  const Dims w_dims{c.spec.out_channels, c.spec.in_channels, 3, 3};
  const Conv3x3Geometry g = GeometryOf(c);
  auto op = backend_->conv2d(c.spec);
  std::vector<float> first_step_dst, first_step_dsrc, first_step_dw;
  for (int step = 0; step < 2; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    const Tensor src = Random(src_dims, 10 + step), w = Random(w_dims, 20 + step);
    const Tensor ddst = Random(dst_dims, 30 + step);
    // Step 0 feeds plain NCHW tensors, step 1 the nChw16c layout the network passes around.
    const MemDesc in_md = step == 0 ? PlainDesc(src_dims) : Blocked16(src_dims);
    const MemDesc dd_md = step == 0 ? PlainDesc(dst_dims) : Blocked16(dst_dims);
    const Tensor src_in = ref_.Reordered(src, in_md), ddst_in = ref_.Reordered(ddst, dd_md);
    Tensor dst, dsrc, dw;
    op->forward(src_in, w, nullptr, dst);
    op->backward_data(ddst_in, w, dsrc);
    op->backward_weights(src_in, ddst_in, dw, nullptr);
    if (cpu::WinogradSupported(g) || cpu::Conv3x3Supported(g)) {
      // Where any of resdist's kernels can run the layer, the activations are nChw16c in
      // every direction, including those oneDNN runs (all of them at width 6 with 160x128
      // channels), so no reorders appear between layers.
      EXPECT_EQ(dst.desc(), Blocked16(dst_dims));
      EXPECT_EQ(dsrc.desc(), Blocked16(src_dims));
    }
    EXPECT_TRUE(dw.is_plain());  // parameters' gradients are plain OIHW (ops.h)
    Tensor dst_p, dsrc_p;
    backend_->to_plain(dst, dst_p);
    backend_->to_plain(dsrc, dsrc_p);
    ExpectClose("forward", dst_p, ref_.Forward(src, w), ref_.Forward(Abs(src), Abs(w)));
    ExpectClose("backward_data", dsrc_p, ref_.BackwardData(ddst, w, src_dims),
                ref_.BackwardData(Abs(ddst), Abs(w), src_dims));
    ExpectClose("backward_weights", dw, ref_.BackwardWeights(src, ddst),
                ref_.BackwardWeights(Abs(src), Abs(ddst)));
    if (step == 0) {
      first_step_dst = Values(dst_p), first_step_dsrc = Values(dsrc_p);
      first_step_dw = Values(dw);
    }
  }
  // Determinism: the first step again, on a fresh op and blocked inputs this time, gives the
  // very same bits (the kernel choice is fixed, not timed; the input layout does not matter).
  auto again = backend_->conv2d(c.spec);
  const Tensor src = Random(src_dims, 10), w = Random(w_dims, 20), ddst = Random(dst_dims, 30);
  const Tensor src_in = ref_.Reordered(src, Blocked16(src_dims));
  const Tensor ddst_in = ref_.Reordered(ddst, Blocked16(dst_dims));
  Tensor dst, dsrc, dw;
  again->forward(src_in, w, nullptr, dst);
  again->backward_data(ddst_in, w, dsrc);
  again->backward_weights(src_in, ddst_in, dw, nullptr);
  EXPECT_EQ(Plain(dst), first_step_dst);
  EXPECT_EQ(Plain(dsrc), first_step_dsrc);
  EXPECT_EQ(Values(dw), first_step_dw);
}

// Each candidate kernel run directly on nChw16c inputs and plain OIHW weights, as CpuConv2d
// calls it; outputs nChw16c (plain OIHW for the weight gradient), as raw values.
std::vector<float> DirectForward(const Conv3x3Geometry& g, const Tensor& src, const Tensor& w) {
  Tensor packed(Dims{cpu::Conv3x3PackedWeightFloats(g)}), dst(Blocked16(DstDims(g)));
  cpu::Conv3x3PackForwardWeights(g, w.data(), packed.data());
  cpu::Conv3x3Forward(g, src.data(), packed.data(), dst.data());
  return Values(dst);
}

std::vector<float> DirectBackwardData(const Conv3x3Geometry& g, const Tensor& ddst,
                                      const Tensor& w) {
  Tensor packed(Dims{cpu::Conv3x3PackedWeightFloats(g)}), dsrc(Blocked16(SrcDims(g)));
  cpu::Conv3x3PackBackwardDataWeights(g, w.data(), packed.data());
  cpu::Conv3x3BackwardData(g, ddst.data(), packed.data(), dsrc.data());
  return Values(dsrc);
}

std::vector<float> DirectBackwardWeights(const Conv3x3Geometry& g, const Tensor& src,
                                         const Tensor& ddst) {
  Tensor scratch(Dims{cpu::Conv3x3BackwardWeightsScratchFloats(g, omp_get_max_threads())});
  Tensor dw(WeightDims(g));
  cpu::Conv3x3BackwardWeights(g, src.data(), ddst.data(), scratch.data(), dw.data());
  return Values(dw);
}

std::vector<float> WinogradForward(const Conv3x3Geometry& g, const Tensor& src,
                                   const Tensor& w) {
  const int tile = cpu::WinogradTile(g);
  Tensor u(Dims{cpu::WinogradWeightFloats(g)}), dst(Blocked16(DstDims(g)));
  Tensor scratch(Dims{cpu::WinogradScratchFloats(g, omp_get_max_threads())});
  cpu::WinogradTransformForwardWeights(g, tile, w.data(), u.data());
  cpu::WinogradForward(g, tile, src.data(), u.data(), dst.data(), scratch.data());
  return Values(dst);
}

std::vector<float> WinogradBackwardData(const Conv3x3Geometry& g, const Tensor& ddst,
                                        const Tensor& w) {
  const int tile = cpu::WinogradTile(g);
  Tensor u(Dims{cpu::WinogradWeightFloats(g)}), dsrc(Blocked16(SrcDims(g)));
  Tensor scratch(Dims{cpu::WinogradScratchFloats(g, omp_get_max_threads())});
  cpu::WinogradTransformBackwardDataWeights(g, tile, w.data(), u.data());
  cpu::WinogradBackwardData(g, tile, ddst.data(), u.data(), dsrc.data(), scratch.data());
  return Values(dsrc);
}

std::vector<float> WinogradBackwardWeights(const Conv3x3Geometry& g, const Tensor& src,
                                           const Tensor& ddst) {
  Tensor scratch(Dims{cpu::WinogradWeightsScratchFloats(g, omp_get_max_threads())});
  Tensor dw(WeightDims(g));
  cpu::WinogradBackwardWeights(g, src.data(), ddst.data(), scratch.data(), dw.data());
  return Values(dw);
}

// The names of the candidates whose values equal `got` bit for bit, joined by '+'; "none"
// when none does.
std::string Matching(const std::vector<float>& got,
                     const std::map<Kernel, std::vector<float>>& candidates) {
  std::string names;
  for (const auto& [kernel, values] : candidates)
    if (values == got) names += (names.empty() ? "" : "+") + std::string(KernelName(kernel));
  return names.empty() ? "none" : names;
}

// Which kernel ran, told by bits: each direction's result is compared with what every kernel
// that could run it gives on the same inputs at the same thread count (resdist's direct and
// Winograd kernels where they handle the shape, and oneDNN's primitive as the op creates it);
// exactly the expected one must match. This pins each case to the path of CpuConv2d it is
// meant to cover: a change of Choose3x3Kernel's fixed rule shows up here instead of silently
// leaving a path untested.
TEST_P(CpuConv2dTest, RunsTheKernelChoose3x3KernelPicks) {
  // The expected kernels assume a CPU our kernels run on (the *Supported functions share that
  // check); elsewhere oneDNN runs every direction.
  if (!cpu::WinogradSupported({1, 16, 16, 8, 8}))
    GTEST_SKIP() << "this CPU cannot run resdist's AVX-512 kernels; oneDNN runs everything";
  const OpCase& c = GetParam();
  const Conv3x3Geometry g = GeometryOf(c);
  const Tensor src = ref_.Reordered(Random(SrcDims(g), 40), Blocked16(SrcDims(g)));
  const Tensor ddst = ref_.Reordered(Random(DstDims(g), 41), Blocked16(DstDims(g)));
  const Tensor w = Random(WeightDims(g), 42);
  auto op = backend_->conv2d(c.spec);
  Tensor dst, dsrc, dw;
  op->forward(src, w, nullptr, dst);
  op->backward_data(ddst, w, dsrc);
  op->backward_weights(src, ddst, dw, nullptr);

  std::map<Kernel, std::vector<float>> fwd, bwd_data, bwd_w;
  fwd[Kernel::kOneDnn] = Values(ref_.ForwardAsOp(src, w));
  bwd_data[Kernel::kOneDnn] = Values(ref_.BackwardDataAsOp(ddst, w, SrcDims(g)));
  bwd_w[Kernel::kOneDnn] = Values(ref_.BackwardWeightsAsOp(src, ddst));
  if (cpu::Conv3x3Supported(g)) {
    fwd[Kernel::kDirect] = DirectForward(g, src, w);
    bwd_data[Kernel::kDirect] = DirectBackwardData(g, ddst, w);
    bwd_w[Kernel::kDirect] = DirectBackwardWeights(g, src, ddst);
  }
  if (cpu::WinogradSupported(g)) {
    fwd[Kernel::kWinograd] = WinogradForward(g, src, w);
    bwd_data[Kernel::kWinograd] = WinogradBackwardData(g, ddst, w);
  }
  if (cpu::WinogradWeightsSupported(g))
    bwd_w[Kernel::kWinograd] = WinogradBackwardWeights(g, src, ddst);
  EXPECT_EQ(Matching(Values(dst), fwd), KernelName(c.fwd)) << "forward";
  EXPECT_EQ(Matching(Values(dsrc), bwd_data), KernelName(c.bwd_data)) << "backward_data";
  EXPECT_EQ(Matching(Values(dw), bwd_w), KernelName(c.bwd_w)) << "backward_weights";
}

std::string OpCaseName(const ::testing::TestParamInfo<OpCase>& info) {
  const OpCase& c = info.param;
  return "c" + std::to_string(c.spec.in_channels) + "_o" + std::to_string(c.spec.out_channels) +
         "_n" + std::to_string(c.src_dims[0]) + "_h" + std::to_string(c.src_dims[2]) + "_w" +
         std::to_string(c.src_dims[3]) + "_t" + std::to_string(c.threads);
}

std::vector<OpCase> OpCases() {
  constexpr Kernel kOneDnn = Kernel::kOneDnn, kDirect = Kernel::kDirect,
                   kWinograd = Kernel::kWinograd;
  std::vector<OpCase> cases;
  for (int threads : {1, 2}) {
    // Channels multiples of 16 and c*o <= 128*128: Winograd in every direction, F(4x4) on
    // images of at least 8x8 and F(2x2) on smaller ones (any width: 6 is fine).
    cases.push_back({Spec3x3(16, 16), {4, 16, 32, 32}, threads,  // ResNet-20's first stage
                     kWinograd, kWinograd, kWinograd});
    cases.push_back({Spec3x3(32, 32), {3, 32, 16, 16}, threads, kWinograd, kWinograd, kWinograd});
    cases.push_back({Spec3x3(64, 64), {2, 64, 8, 8}, threads, kWinograd, kWinograd, kWinograd});
    cases.push_back({Spec3x3(16, 16), {2, 16, 6, 6}, threads, kWinograd, kWinograd, kWinograd});
    // c*o > 128*128 (160*128 = 20480, 1040*16 = 16640): no Winograd; the direct kernels
    // where UseDirect3x3 says so (always for backward-weights) and the width is one they
    // handle, else oneDNN. Batch 2, not 1: on a single image oneDNN's backward-weights sums
    // in the direct kernel's order and the two agree bit for bit, so
    // RunsTheKernelChoose3x3KernelPicks could not tell them apart.
    // Width <= 8 and an even number of 16-channel output blocks both ways (128 and 160
    // channels): direct in every direction.
    cases.push_back({Spec3x3(160, 128), {2, 160, 8, 8}, threads, kDirect, kDirect, kDirect});
    // Width 16 (the rule looks at the width only, so 4 rows keep it cheap), 128 and 160
    // channels: oneDNN forward and backward-data, direct backward-weights.
    cases.push_back({Spec3x3(128, 160), {2, 128, 4, 16}, threads, kOneDnn, kOneDnn, kDirect});
    // The other mix: 16 outputs run the direct forward; backward-data, whose outputs are the
    // 1040 input channels at width 16, runs oneDNN.
    cases.push_back({Spec3x3(1040, 16), {2, 1040, 4, 16}, threads, kDirect, kOneDnn, kDirect});
    // Width 6, which the direct kernels do not handle: oneDNN in every direction, yet on the
    // nChw16c layout (forced because Winograd could run the shape).
    cases.push_back({Spec3x3(160, 128), {2, 160, 6, 6}, threads, kOneDnn, kOneDnn, kOneDnn});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Layers, CpuConv2dTest, ::testing::ValuesIn(OpCases()), OpCaseName);

// CpuConv2d sizes its per-thread scratch (Winograd tile blocks, backward-weights partial sums)
// from omp_get_max_threads() on every call, since the thread count may change between calls.
// Here it grows (1 -> 2) and shrinks (2 -> 1) between calls on the same op and input shape (so
// on the same cached state), for layers running each of resdist's kernels; every call must
// give the reference results. The previous call's outputs are overwritten with NaN first, so
// an element a call leaves unwritten fails too. (A scratch kept at its one-thread size would
// be overrun by the second thread: heap corruption, a crash or wrong partial sums.)
TEST(CpuConv2dThreads, ThreadCountChangesBetweenCallsOnTheSameOp) {
  ThreadCountGuard guard;
  auto backend = MakeCpuBackend(1);
  Reference ref;
  struct Layer {
    const char* kernels;  // what Choose3x3Kernel picks (see OpCases)
    Dims src_dims;
    int64_t o;
  };
  const Layer layers[] = {
      {"Winograd F(4x4)", {3, 32, 16, 16}, 32},
      {"Winograd F(2x2)", {4, 64, 4, 4}, 48},
      {"direct", {2, 160, 8, 8}, 128},
  };
  for (const Layer& l : layers) {
    SCOPED_TRACE(l.kernels);
    const Dims& src_dims = l.src_dims;
    const Dims dst_dims{src_dims[0], l.o, src_dims[2], src_dims[3]};
    const Dims w_dims{l.o, src_dims[1], 3, 3};
    const Tensor src = Random(src_dims, 50), w = Random(w_dims, 51), ddst = Random(dst_dims, 52);
    const Tensor src_in = ref.Reordered(src, Blocked16(src_dims));
    const Tensor ddst_in = ref.Reordered(ddst, Blocked16(dst_dims));
    const Tensor want_dst = ref.Forward(src, w), bound_dst = ref.Forward(Abs(src), Abs(w));
    const Tensor want_dsrc = ref.BackwardData(ddst, w, src_dims);
    const Tensor bound_dsrc = ref.BackwardData(Abs(ddst), Abs(w), src_dims);
    const Tensor want_dw = ref.BackwardWeights(src, ddst);
    const Tensor bound_dw = ref.BackwardWeights(Abs(src), Abs(ddst));
    auto op = backend->conv2d(Spec3x3(src_dims[1], l.o));
    Tensor dst, dsrc, dw;
    for (int threads : {1, 2, 1}) {
      omp_set_num_threads(threads);
      ASSERT_EQ(omp_get_max_threads(), threads);
      SCOPED_TRACE("threads " + std::to_string(threads));
      dst.fill(kNaN), dsrc.fill(kNaN), dw.fill(kNaN);  // no-ops before the first call
      op->forward(src_in, w, nullptr, dst);
      op->backward_data(ddst_in, w, dsrc);
      op->backward_weights(src_in, ddst_in, dw, nullptr);
      Tensor dst_p, dsrc_p;
      backend->to_plain(dst, dst_p);
      backend->to_plain(dsrc, dsrc_p);
      ExpectClose("forward", dst_p, want_dst, bound_dst);
      ExpectClose("backward_data", dsrc_p, want_dsrc, bound_dsrc);
      ExpectClose("backward_weights", dw, want_dw, bound_dw);
    }
  }
}

TEST(CpuConv2dNoInputGrad, BackwardDataThrows) {
  ThreadCountGuard guard;
  auto backend = MakeCpuBackend(1);
  Conv2dSpec spec = Spec3x3(16, 16);
  spec.input_grad = false;
  auto op = backend->conv2d(spec);
  const Tensor src = Random({2, 16, 8, 8}, 1), w = Random({16, 16, 3, 3}, 2);
  const Tensor ddst = Random({2, 16, 8, 8}, 3);
  Tensor dst, dsrc, dw;
  op->forward(src, w, nullptr, dst);
  EXPECT_THROW(op->backward_data(ddst, w, dsrc), std::logic_error);
  op->backward_weights(src, ddst, dw, nullptr);  // the weight gradient is still available
  Reference ref;
  ExpectClose("backward_weights", dw, ref.BackwardWeights(src, ddst),
              ref.BackwardWeights(Abs(src), Abs(ddst)));
}

}  // namespace
}  // namespace resdist
