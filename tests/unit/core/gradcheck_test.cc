// Finite-difference gradient checks for every op of the CPU backend, every input and every
// parameter, plus the kink conventions of ReLU and max pooling (PyTorch's: relu'(0) = 0, a
// max-pool window with tied maxima sends its gradient to one element only).
//
// Method (after Caffe's GradientChecker): the scalar objective is L = sum(out * R) with a
// fixed random R, evaluated in double from the fp32 output. Central differences with step
// eps = 1e-2 have truncation error O(eps^2 * f''') ~ 1e-4 for these smooth ops, and fp32
// rounding of L (|L| ~ 10, relative 6e-8, divided by 2*eps) adds ~ 1e-4; so we accept
// |numeric - analytic| <= 2e-3 + 1e-2 * max(|numeric|, |analytic|). Elements closer than eps
// to a kink (ReLU at 0, max-pool near-ties) are excluded from the numeric comparison (the
// difference quotient straddles the kink there) and checked by the explicit kink tests.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "worker/backend/ops.h"

namespace resdist {
namespace {

constexpr double kEps = 1e-2;
constexpr double kAtol = 2e-3;
constexpr double kRtol = 1e-2;

class GradCheck : public ::testing::Test {
 protected:
  void SetUp() override { backend_ = MakeCpuBackend(1); }

  Tensor Random(const Dims& dims, uint32_t seed, float scale = 1.f) {
    Tensor t(dims);
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.f, scale);
    for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = d(rng);
    return t;
  }

  std::vector<float> Plain(const Tensor& t) {
    Tensor p;
    backend_->to_plain(t, p);
    return std::vector<float>(p.data(), p.data() + p.numel());
  }

  // L = sum(out * r) for the output that `fwd` produces from the current inputs.
  double Objective(const std::function<const Tensor&()>& fwd, const std::vector<float>& r) {
    const std::vector<float> out = Plain(fwd());
    EXPECT_EQ(out.size(), r.size());
    double l = 0;
    for (size_t i = 0; i < out.size(); ++i) l += static_cast<double>(out[i]) * r[i];
    return l;
  }

  // Compares `analytic` (any layout) with central differences of L w.r.t. each element of the
  // plain tensor `x` (perturbed in place and restored). `skip(i)` excludes elements near kinks.
  void Check(const std::string& what, Tensor& x, const Tensor& analytic,
             const std::function<const Tensor&()>& fwd, const std::vector<float>& r,
             const std::function<bool(int64_t)>& skip = nullptr) {
    ASSERT_TRUE(x.is_plain()) << what;
    const std::vector<float> ana = Plain(analytic);
    ASSERT_EQ(static_cast<int64_t>(ana.size()), x.numel()) << what;
    int64_t checked = 0;
    double worst = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      if (skip && skip(i)) continue;
      const float orig = x.data()[i];
      x.data()[i] = static_cast<float>(orig + kEps);
      const double lp = Objective(fwd, r);
      x.data()[i] = static_cast<float>(orig - kEps);
      const double lm = Objective(fwd, r);
      x.data()[i] = orig;
      const double num = (lp - lm) / (2 * kEps);
      const double err = std::abs(num - ana[i]);
      worst = std::max(worst, err);
      EXPECT_LE(err, kAtol + kRtol * std::max(std::abs(num), std::abs(static_cast<double>(ana[i]))))
          << what << " element " << i << ": numeric " << num << " analytic " << ana[i];
      ++checked;
    }
    EXPECT_GT(checked, x.numel() / 2) << what << ": too many elements skipped";
  }

  std::vector<float> Upstream(int64_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d;
    std::vector<float> r(n);
    for (auto& v : r) v = d(rng);
    return r;
  }

  Tensor FromVector(const Dims& dims, const std::vector<float>& v) {
    Tensor t(dims);
    std::copy(v.begin(), v.end(), t.data());
    return t;
  }

  std::unique_ptr<Backend> backend_;
};

struct ConvCase {
  int64_t n, c, h, w, o, k, stride, pad;
  bool bias;
};

class ConvGradCheck : public GradCheck, public ::testing::WithParamInterface<ConvCase> {};

TEST_P(ConvGradCheck, InputWeightsBias) {
  const ConvCase cc = GetParam();
  Conv2dSpec spec{cc.c, cc.o, cc.k, cc.k, cc.stride, cc.stride, cc.pad, cc.pad, cc.bias, true};
  auto op = backend_->conv2d(spec);
  Tensor x = Random({cc.n, cc.c, cc.h, cc.w}, 1);
  Tensor w = Random({cc.o, cc.c, cc.k, cc.k}, 2, 0.5f);
  Tensor b = Random({cc.o}, 3);
  Tensor y, dx, dw, db;
  auto fwd = [&]() -> const Tensor& {
    op->forward(x, w, cc.bias ? &b : nullptr, y);
    return y;
  };
  fwd();
  const Dims yd = y.dims();
  const int64_t oh = (cc.h + 2 * cc.pad - cc.k) / cc.stride + 1;
  ASSERT_EQ(yd, (Dims{cc.n, cc.o, oh, (cc.w + 2 * cc.pad - cc.k) / cc.stride + 1}));
  const std::vector<float> r = Upstream(y.numel(), 4);
  Tensor dy = FromVector(yd, r);
  op->backward_data(dy, w, dx);
  op->backward_weights(x, dy, dw, cc.bias ? &db : nullptr);
  Check("conv dx", x, dx, fwd, r);
  Check("conv dw", w, dw, fwd, r);
  if (cc.bias) Check("conv db", b, db, fwd, r);
}

INSTANTIATE_TEST_SUITE_P(Shapes, ConvGradCheck,
                         ::testing::Values(ConvCase{2, 3, 5, 5, 4, 3, 1, 1, false},
                                           ConvCase{2, 4, 6, 7, 3, 3, 2, 1, true},
                                           ConvCase{1, 16, 4, 4, 16, 1, 2, 0, false},
                                           ConvCase{2, 3, 9, 9, 5, 7, 2, 3, true},
                                           ConvCase{3, 17, 5, 5, 18, 3, 1, 1, false}));

TEST_F(GradCheck, ConvWithoutInputGradientComputesWeightsOnly) {
  Conv2dSpec spec{3, 4, 3, 3, 1, 1, 1, 1, false, /*input_grad=*/false};
  auto op = backend_->conv2d(spec);
  Tensor x = Random({2, 3, 5, 5}, 1), w = Random({4, 3, 3, 3}, 2), y, dw;
  auto fwd = [&]() -> const Tensor& {
    op->forward(x, w, nullptr, y);
    return y;
  };
  fwd();
  const std::vector<float> r = Upstream(y.numel(), 4);
  Tensor dy = FromVector(y.dims(), r);
  op->backward_weights(x, dy, dw, nullptr);
  Check("first conv dw", w, dw, fwd, r);
}

TEST_F(GradCheck, BatchNormTraining) {
  for (int64_t c : {3, 16, 20}) {
    auto op = backend_->batchnorm(BatchNormSpec{c, 1e-5f, 0.1f, false});
    Tensor x = Random({4, c, 3, 3}, 5), g = Random({c}, 6), b = Random({c}, 7);
    Tensor rm({c}), rv({c});
    rm.zero();
    rv.fill(1.f);
    Tensor y, dx, dg, db;
    auto fwd = [&]() -> const Tensor& {
      op->forward(x, g, b, rm, rv, y, true);
      return y;
    };
    fwd();
    const std::vector<float> r = Upstream(y.numel(), 8);
    Tensor dy = FromVector(y.dims(), r);
    op->backward(x, dy, g, b, dx, dg, db);
    Check("bn dx C=" + std::to_string(c), x, dx, fwd, r);
    Check("bn dgamma", g, dg, fwd, r);
    Check("bn dbeta", b, db, fwd, r);
  }
}

TEST_F(GradCheck, BatchNormRunningStatisticsFollowPyTorch) {
  const int64_t c = 2;
  auto op = backend_->batchnorm(BatchNormSpec{c, 1e-5f, 0.1f, false});
  // Channel 0 holds 1..8, channel 1 holds 2*(1..8) over N=2, H=2, W=2.
  Tensor x({2, c, 2, 2}), g({c}), b({c}), rm({c}), rv({c}), y;
  for (int n = 0; n < 2; ++n)
    for (int ch = 0; ch < c; ++ch)
      for (int i = 0; i < 4; ++i) x.data()[(n * c + ch) * 4 + i] = (ch + 1) * (n * 4 + i + 1.f);
  g.fill(1.f);
  b.zero();
  rm.zero();
  rv.fill(1.f);
  op->forward(x, g, b, rm, rv, y, true);
  // mean 4.5, biased var 5.25, unbiased 6.0 for channel 0; x2 and x4 for channel 1.
  EXPECT_NEAR(rm.data()[0], 0.45, 1e-6);
  EXPECT_NEAR(rv.data()[0], 0.9 + 0.1 * 6.0, 1e-5);
  EXPECT_NEAR(rm.data()[1], 0.9, 1e-6);
  EXPECT_NEAR(rv.data()[1], 0.9 + 0.1 * 24.0, 1e-5);
  EXPECT_NEAR(op->saved_var().data()[0], 5.25, 1e-5);
  // Inference uses the running statistics: (x - rm) / sqrt(rv + eps).
  Tensor yi, yp;
  op->forward(x, g, b, rm, rv, yi, false);
  backend_->to_plain(yi, yp);
  EXPECT_NEAR(yp.data()[0], (1.0 - 0.45) / std::sqrt(1.5 + 1e-5), 1e-5);
}

TEST_F(GradCheck, BatchNormAddReluMatchesUnfusedOps) {
  // Plain NCHW and oneDNN's 16-channel blocked layout; training and inference.
  for (auto tag : {dnnl::memory::format_tag::abcd, dnnl::memory::format_tag::aBcd16b}) {
    for (bool training : {true, false}) {
      const int64_t c = 20;
      const Dims d{3, c, 5, 4};
      auto fused = backend_->batchnorm(BatchNormSpec{c, 1e-5f, 0.1f, false});
      auto plain = backend_->batchnorm(BatchNormSpec{c, 1e-5f, 0.1f, false});
      auto add = backend_->add(true);
      Tensor x0 = Random(d, 50, 3.f), r0 = Random(d, 51), g = Random({c}, 52), b = Random({c}, 53);
      for (int64_t i = 0; i < x0.numel(); ++i) x0.data()[i] += 5.f;  // mean far from 0
      const MemDesc md(dnnl::memory::dims(d.begin(), d.end()), dnnl::memory::data_type::f32, tag);
      Tensor x, r;
      backend_->reorder(x0, x, md);
      backend_->reorder(r0, r, md);
      Tensor rm1({c}), rv1({c}), rm2({c}), rv2({c});
      for (int64_t i = 0; i < c; ++i) {
        rm1.data()[i] = rm2.data()[i] = 0.1f * i;
        rv1.data()[i] = rv2.data()[i] = 1.f + 0.05f * i;
      }
      Tensor yf, yb, ys;
      ASSERT_TRUE(fused->forward_add_relu(x, g, b, rm1, rv1, r, yf, training));
      plain->forward(x, g, b, rm2, rv2, yb, training);
      add->forward(yb, r, ys);
      const auto a = Plain(yf), e = Plain(ys);
      for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], e[i], 2e-5) << i;
      for (int64_t i = 0; i < c; ++i) {
        EXPECT_NEAR(rm1.data()[i], rm2.data()[i], 1e-5);
        EXPECT_NEAR(rv1.data()[i], rv2.data()[i], 1e-4);
      }
      if (!training) continue;
      // Backward after the fused forward uses its batch statistics.
      Tensor dy = FromVector(d, Upstream(x.numel(), 54)), gmask, dxf, dgf, dbf, dxb, dgb, dbb;
      add->backward(ys, dy, gmask);
      fused->backward(x, gmask, g, b, dxf, dgf, dbf);
      plain->backward(x, gmask, g, b, dxb, dgb, dbb);
      const auto fa = Plain(dxf), fe = Plain(dxb);
      for (size_t i = 0; i < fa.size(); ++i) ASSERT_NEAR(fa[i], fe[i], 1e-4) << i;
      for (int64_t i = 0; i < c; ++i) EXPECT_NEAR(dgf.data()[i], dgb.data()[i], 1e-4);
    }
  }
}

TEST_F(GradCheck, BatchNormFusedReluEqualsBatchNormThenRelu) {
  const int64_t c = 16;
  auto fused = backend_->batchnorm(BatchNormSpec{c, 1e-5f, 0.1f, true});
  auto plain = backend_->batchnorm(BatchNormSpec{c, 1e-5f, 0.1f, false});
  auto relu = backend_->relu();
  Tensor x = Random({4, c, 3, 3}, 9), g = Random({c}, 10), b = Random({c}, 11);
  Tensor rm1({c}), rv1({c}), rm2({c}), rv2({c});
  for (Tensor* t : {&rm1, &rm2}) t->zero();
  for (Tensor* t : {&rv1, &rv2}) t->fill(1.f);
  Tensor yf, yb, yr;
  fused->forward(x, g, b, rm1, rv1, yf, true);
  plain->forward(x, g, b, rm2, rv2, yb, true);
  relu->forward(yb, yr);
  const std::vector<float> pf = Plain(yf), pr = Plain(yr);
  for (size_t i = 0; i < pf.size(); ++i) ASSERT_NEAR(pf[i], pr[i], 1e-5) << i;
  Tensor dy = FromVector(yf.dims(), Upstream(yf.numel(), 12));
  Tensor dxf, dgf, dbf, dmid, dxb, dgb, dbb;
  fused->backward(x, dy, g, b, dxf, dgf, dbf);
  relu->backward(yr, dy, dmid);
  plain->backward(x, dmid, g, b, dxb, dgb, dbb);
  const auto a = Plain(dxf), e = Plain(dxb);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], e[i], 1e-4) << i;
  for (int64_t i = 0; i < c; ++i) {
    EXPECT_NEAR(dgf.data()[i], dgb.data()[i], 1e-4);
    EXPECT_NEAR(dbf.data()[i], dbb.data()[i], 1e-4);
  }
}

TEST_F(GradCheck, Relu) {
  auto op = backend_->relu();
  Tensor x = Random({2, 3, 4, 4}, 13), y, dx;
  auto fwd = [&]() -> const Tensor& {
    op->forward(x, y);
    return y;
  };
  fwd();
  const std::vector<float> r = Upstream(y.numel(), 14);
  Tensor dy = FromVector(y.dims(), r);
  op->backward(y, dy, dx);
  Check("relu dx", x, dx, fwd, r, [&](int64_t i) { return std::abs(x.data()[i]) < 2 * kEps; });
}

TEST_F(GradCheck, ReluKinkAtZeroHasZeroGradient) {
  auto op = backend_->relu();
  Tensor x({1, 1, 1, 4}), y, dx;
  const float vals[4] = {-1.f, 0.f, 0.f, 2.f};
  std::copy(vals, vals + 4, x.data());
  op->forward(x, y);
  Tensor dy({1, 1, 1, 4});
  dy.fill(3.f);
  op->backward(y, dy, dx);
  const auto g = Plain(dx);
  EXPECT_EQ(g, (std::vector<float>{0.f, 0.f, 0.f, 3.f}));
}

// Distinct values at least 0.05 apart: no window has a near-tie within eps.
Tensor SpreadValues(const Dims& dims, uint32_t seed) {
  Tensor t(dims);
  std::vector<float> v(t.numel());
  for (size_t i = 0; i < v.size(); ++i) v[i] = 0.05f * static_cast<float>(i) - 1.f;
  std::shuffle(v.begin(), v.end(), std::mt19937(seed));
  std::copy(v.begin(), v.end(), t.data());
  return t;
}

TEST_F(GradCheck, MaxPool) {
  for (const PoolSpec& s : {PoolSpec{PoolKind::kMax, 3, 3, 2, 2, 1, 1, false},
                            PoolSpec{PoolKind::kMax, 2, 2, 2, 2, 0, 0, false}}) {
    auto op = backend_->pool(s);
    Tensor x = SpreadValues({2, 3, 6, 6}, 15), y, dx;
    auto fwd = [&]() -> const Tensor& {
      op->forward(x, y, true);
      return y;
    };
    fwd();
    const std::vector<float> r = Upstream(y.numel(), 16);
    Tensor dy = FromVector(y.dims(), r);
    op->backward(dy, dx);
    Check("maxpool dx k=" + std::to_string(s.kernel_h), x, dx, fwd, r);
  }
}

TEST_F(GradCheck, MaxPoolTiedWindowRoutesGradientToOneElement) {
  PoolSpec s{PoolKind::kMax, 2, 2, 2, 2, 0, 0, false};
  auto op = backend_->pool(s);
  Tensor x({1, 1, 2, 4}), y, dx;
  x.fill(1.f);  // both 2x2 windows are all ties
  op->forward(x, y, true);
  Tensor dy({1, 1, 1, 2});
  dy.data()[0] = 5.f;
  dy.data()[1] = 7.f;
  op->backward(dy, dx);
  const auto g = Plain(dx);
  // Window 0 = columns 0-1, window 1 = columns 2-3; each sends its whole gradient to exactly
  // one element.
  for (int win = 0; win < 2; ++win) {
    int nonzero = 0;
    float sum = 0;
    for (int r = 0; r < 2; ++r)
      for (int c = 0; c < 2; ++c) {
        const float v = g[r * 4 + win * 2 + c];
        sum += v;
        nonzero += v != 0.f;
      }
    EXPECT_EQ(nonzero, 1) << "window " << win;
    EXPECT_FLOAT_EQ(sum, win == 0 ? 5.f : 7.f);
  }
}

TEST_F(GradCheck, GlobalAveragePool) {
  PoolSpec s;
  s.kind = PoolKind::kAvg;
  s.global = true;
  auto op = backend_->pool(s);
  Tensor x = Random({3, 17, 5, 4}, 17), y, dx;
  auto fwd = [&]() -> const Tensor& {
    op->forward(x, y, true);
    return y;
  };
  fwd();
  EXPECT_EQ(y.dims(), (Dims{3, 17, 1, 1}));
  const std::vector<float> r = Upstream(y.numel(), 18);
  Tensor dy = FromVector(y.dims(), r);
  op->backward(dy, dx);
  Check("gap dx", x, dx, fwd, r);
}

TEST_F(GradCheck, Linear2dAnd4dInput) {
  for (const Dims& xd : {Dims{4, 10}, Dims{3, 4, 2, 2}}) {
    int64_t f = 1;
    for (size_t i = 1; i < xd.size(); ++i) f *= xd[i];
    auto op = backend_->linear(LinearSpec{f, 5, true, true});
    Tensor x = Random(xd, 19), w = Random({5, f}, 20), b = Random({5}, 21), y, dx, dw, db;
    auto fwd = [&]() -> const Tensor& {
      op->forward(x, w, &b, y);
      return y;
    };
    fwd();
    EXPECT_EQ(y.dims(), (Dims{xd[0], 5}));
    const std::vector<float> r = Upstream(y.numel(), 22);
    Tensor dy = FromVector(y.dims(), r);
    op->backward_data(dy, w, dx);
    op->backward_weights(x, dy, dw, &db);
    Check("linear dx", x, dx, fwd, r);
    Check("linear dw", w, dw, fwd, r);
    Check("linear db", b, db, fwd, r);
  }
}

TEST_F(GradCheck, AddWithRelu) {
  auto op = backend_->add(true);
  Tensor a = Random({2, 3, 4, 4}, 23), b = Random({2, 3, 4, 4}, 24), y, g;
  auto fwd = [&]() -> const Tensor& {
    op->forward(a, b, y);
    return y;
  };
  fwd();
  const std::vector<float> r = Upstream(y.numel(), 25);
  Tensor dy = FromVector(y.dims(), r);
  op->backward(y, dy, g);
  auto near_kink = [&](int64_t i) { return std::abs(a.data()[i] + b.data()[i]) < 2 * kEps; };
  Check("add da", a, g, fwd, r, near_kink);
  Check("add db", b, g, fwd, r, near_kink);
}

TEST_F(GradCheck, SumOfDifferentLayouts) {
  auto op = backend_->add(false);
  auto conv = backend_->conv2d(Conv2dSpec{16, 16, 1, 1, 1, 1, 0, 0, false, true});
  Tensor x = Random({2, 16, 3, 3}, 26), w = Random({16, 16, 1, 1}, 27), blocked;
  conv->forward(x, w, nullptr, blocked);  // whatever layout oneDNN prefers
  Tensor plain_b = Random({2, 16, 3, 3}, 28), s;
  op->sum(blocked, plain_b, s);
  const auto got = Plain(s), a = Plain(blocked);
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], a[i] + plain_b.data()[i], 1e-5);
}

TEST_F(GradCheck, Dropout) {
  auto op = backend_->dropout();
  Tensor x = Random({4, 50}, 29), y, dx;
  auto fwd = [&]() -> const Tensor& {
    op->forward(x, y, 0.3f, /*seed=*/5, /*counter=*/7, true);
    return y;
  };
  fwd();
  int64_t dropped = 0;
  for (int64_t i = 0; i < y.numel(); ++i) {
    if (y.data()[i] == 0.f) ++dropped;
    else EXPECT_NEAR(y.data()[i], x.data()[i] / 0.7f, 1e-5);
  }
  EXPECT_GT(dropped, 30);  // expected 60 of 200
  EXPECT_LT(dropped, 90);
  const std::vector<float> r = Upstream(y.numel(), 30);
  Tensor dy = FromVector(y.dims(), r);
  op->backward(dy, dx);
  Check("dropout dx", x, dx, fwd, r);
  // Reproducible for the same (seed, counter); different for another counter; identity in eval.
  Tensor y2, y3, y4;
  fwd();  // Check left y at a perturbed input
  op->forward(x, y2, 0.3f, 5, 7, true);
  op->forward(x, y3, 0.3f, 5, 8, true);
  op->forward(x, y4, 0.3f, 5, 7, false);
  EXPECT_EQ(0, std::memcmp(y.data(), y2.data(), y.bytes()));
  EXPECT_NE(0, std::memcmp(y.data(), y3.data(), y.bytes()));
  EXPECT_EQ(0, std::memcmp(x.data(), y4.data(), x.bytes()));
}

TEST_F(GradCheck, ShortcutOptionA) {
  auto op = backend_->shortcut_a();
  Tensor x = Random({2, 4, 5, 6}, 31), y, dx;
  auto fwd = [&]() -> const Tensor& {
    op->forward(x, y, 8, 2);
    return y;
  };
  fwd();
  ASSERT_EQ(y.dims(), (Dims{2, 8, 3, 3}));
  // Channels 0,1 and 6,7 are zero padding; channel 2+c is x[:, c, ::2, ::2].
  EXPECT_EQ(y.data()[0], 0.f);
  EXPECT_EQ(y.data()[(0 * 8 + 2) * 9 + 1 * 3 + 2], x.data()[(0 * 4 + 0) * 30 + 2 * 6 + 4]);
  const std::vector<float> r = Upstream(y.numel(), 32);
  Tensor dy = FromVector(y.dims(), r);
  op->backward(dy, dx);
  Check("shortcut A dx", x, dx, fwd, r);
}

TEST_F(GradCheck, ShortcutOptionAInBlockedLayoutMatchesPlain) {
  // 16 -> 32 channels, as ResNet-20's first downsampling block, and 20 -> 36 (padded blocks).
  for (auto [c, co] : {std::pair<int64_t, int64_t>{16, 32}, {20, 36}}) {
    const Dims xd{2, c, 6, 5};
    Tensor x = Random(xd, 40), xb;
    const MemDesc blocked(dnnl::memory::dims(xd.begin(), xd.end()), dnnl::memory::data_type::f32,
                          dnnl::memory::format_tag::aBcd16b);
    backend_->reorder(x, xb, blocked);
    auto plain_op = backend_->shortcut_a();
    auto blocked_op = backend_->shortcut_a();
    Tensor yp, yb, dxp, dxb;
    plain_op->forward(x, yp, co, 2);
    blocked_op->forward(xb, yb, co, 2);
    EXPECT_FALSE(yb.is_plain());
    EXPECT_EQ(Plain(yp), Plain(yb));
    Tensor dy = FromVector(yp.dims(), Upstream(yp.numel(), 41)), dyb;
    backend_->reorder(dy, dyb, yb.desc());
    plain_op->backward(dy, dxp);
    blocked_op->backward(dyb, dxb);
    EXPECT_EQ(Plain(dxp), Plain(dxb));
  }
}

TEST_F(GradCheck, SumReluBackwardFusesSumAndMask) {
  auto op = backend_->add(false);
  Tensor a = Random({2, 3, 4, 4}, 42), b = Random({2, 3, 4, 4}, 43), y = Random({2, 3, 4, 4}, 44);
  for (int64_t i = 0; i < y.numel(); ++i) y.data()[i] = std::max(0.f, y.data()[i]);  // ReLU output
  Tensor fused, sum, masked;
  op->sum_relu_backward(a, b, y, fused);
  op->sum(a, b, sum);
  auto relu = backend_->relu();
  relu->backward(y, sum, masked);
  EXPECT_EQ(Plain(fused), Plain(masked));
}

TEST_F(GradCheck, SoftmaxCrossEntropy) {
  for (float smoothing : {0.f, 0.1f}) {
    auto op = backend_->softmax_cross_entropy();
    Tensor z = Random({5, 7}, 33, 2.f), dz;
    std::vector<int32_t> labels{0, 3, 6, 2, 2};
    const LossResult res = op->forward_backward(z, labels, 5, smoothing, &dz);
    // Reference in double.
    double ref = 0;
    for (int i = 0; i < 5; ++i) {
      double mx = -1e30, s = 0;
      for (int j = 0; j < 7; ++j) mx = std::max<double>(mx, z.data()[i * 7 + j]);
      for (int j = 0; j < 7; ++j) s += std::exp(z.data()[i * 7 + j] - mx);
      for (int j = 0; j < 7; ++j) {
        const double t = (j == labels[i] ? 1 - smoothing : 0) + smoothing / 7;
        ref -= t * (z.data()[i * 7 + j] - mx - std::log(s));
      }
    }
    EXPECT_NEAR(res.loss, ref / 5, 1e-6);
    // Numeric gradient of the mean loss.
    for (int64_t i = 0; i < z.numel(); ++i) {
      const float orig = z.data()[i];
      z.data()[i] = orig + kEps;
      const double lp = op->forward_backward(z, labels, 5, smoothing, nullptr).loss;
      z.data()[i] = orig - kEps;
      const double lm = op->forward_backward(z, labels, 5, smoothing, nullptr).loss;
      z.data()[i] = orig;
      EXPECT_NEAR((lp - lm) / (2 * kEps), dz.data()[i], kAtol) << "logit " << i;
    }
  }
}

TEST_F(GradCheck, SoftmaxCrossEntropyIgnoresPaddedRows) {
  auto op = backend_->softmax_cross_entropy();
  Tensor z = Random({4, 3}, 34), dz;
  std::vector<int32_t> labels{0, 1, 2, 0};
  const LossResult two = op->forward_backward(z, labels, 2, 0.f, &dz);
  for (int64_t i = 6; i < 12; ++i) EXPECT_EQ(dz.data()[i], 0.f);
  Tensor z2({2, 3}), dz2;
  std::copy(z.data(), z.data() + 6, z2.data());
  const LossResult ref = op->forward_backward(z2, std::span<const int32_t>(labels.data(), 2), 2,
                                              0.f, &dz2);
  EXPECT_NEAR(two.loss, ref.loss, 1e-9);
  EXPECT_EQ(two.correct, ref.correct);
}

}  // namespace
}  // namespace resdist
