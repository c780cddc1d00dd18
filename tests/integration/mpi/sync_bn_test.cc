// Synchronized batch norm in a world of one (identity all-reduce) equals the ordinary oneDNN
// batch norm - forward, running statistics and backward - on plain and blocked layouts, with and
// without the fused ReLU; and its gradients pass a finite-difference check.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "worker/backend/ops.h"

namespace resdist {
namespace {

void FillRandom(Tensor& t, uint64_t seed, float scale = 1.f, float shift = 0.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(shift, scale);
  for (int64_t i = 0; i < t.physical_size(); ++i) t.data()[i] = d(rng);
}

std::vector<float> Plain(Backend& be, const Tensor& t) {
  Tensor p;
  be.to_plain(t, p);
  return std::vector<float>(p.data(), p.data() + p.numel());
}

double MaxDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return HUGE_VAL;
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(static_cast<double>(a[i]) - b[i]);
    m = std::isnan(d) ? HUGE_VAL : std::max(m, d);  // a NaN on either side is a failure
    if (std::isinf(m)) break;
  }
  return m;
}

struct Case {
  int64_t n, c, h, w;
  bool blocked;
  bool relu;
};

class SyncBnTest : public ::testing::TestWithParam<Case> {};

TEST_P(SyncBnTest, WorldOfOneEqualsOrdinaryBatchNorm) {
  const Case k = GetParam();
  auto be = MakeCpuBackend(1);
  BatchNormSpec spec{k.c, 1e-5f, 0.1f, k.relu};
  auto ref = be->batchnorm(spec);
  int calls = 0;
  spec.allreduce_sum = [&calls](float*, size_t) { ++calls; };
  auto sync = be->batchnorm(spec);

  Tensor x_plain(Dims{k.n, k.c, k.h, k.w});
  FillRandom(x_plain, 1, 2.f, 0.5f);
  Tensor x;
  if (k.blocked) {
    const dnnl::memory::dims d = {k.n, k.c, k.h, k.w};
    be->reorder(x_plain, x, MemDesc(d, dnnl::memory::data_type::f32,
                                    k.c % 16 == 0 ? dnnl::memory::format_tag::nChw16c
                                                  : dnnl::memory::format_tag::nChw8c));
  } else {
    x.copy_from(x_plain);
  }
  Tensor gamma(Dims{k.c}), beta(Dims{k.c});
  FillRandom(gamma, 2, 0.5f, 1.f);
  FillRandom(beta, 3, 0.5f, 0.f);
  Tensor rm1(Dims{k.c}), rv1(Dims{k.c}), rm2(Dims{k.c}), rv2(Dims{k.c});
  rm1.zero(), rm2.zero(), rv1.fill(1.f), rv2.fill(1.f);
  Tensor y1, y2;
  ref->forward(x, gamma, beta, rm1, rv1, y1, true);
  sync->forward(x, gamma, beta, rm2, rv2, y2, true);
  EXPECT_EQ(calls, 2);  // mean, then variance
  EXPECT_LT(MaxDiff(Plain(*be, y1), Plain(*be, y2)), 2e-5);
  EXPECT_LT(MaxDiff(Plain(*be, rm1), Plain(*be, rm2)), 1e-6);
  EXPECT_LT(MaxDiff(Plain(*be, rv1), Plain(*be, rv2)), 1e-5);

  Tensor dy_plain(Dims{k.n, k.c, k.h, k.w}), dy;
  FillRandom(dy_plain, 4);
  be->reorder(dy_plain, dy, x.desc());
  Tensor dx1, dx2, dg1, dg2, db1, db2;
  ref->backward(x, dy, gamma, beta, dx1, dg1, db1);
  sync->backward(x, dy, gamma, beta, dx2, dg2, db2);
  EXPECT_EQ(calls, 3);  // sum(dy) and sum(dy * xhat) together
  EXPECT_LT(MaxDiff(Plain(*be, dx1), Plain(*be, dx2)), 5e-5);
  EXPECT_LT(MaxDiff(Plain(*be, dg1), Plain(*be, dg2)), 5e-4);
  EXPECT_LT(MaxDiff(Plain(*be, db1), Plain(*be, db2)), 5e-4);

  // Inference uses the running statistics.
  ref->forward(x, gamma, beta, rm1, rv1, y1, false);
  sync->forward(x, gamma, beta, rm1, rv1, y2, false);
  EXPECT_LT(MaxDiff(Plain(*be, y1), Plain(*be, y2)), 2e-5);
}

INSTANTIATE_TEST_SUITE_P(Layouts, SyncBnTest,
                         ::testing::Values(Case{4, 16, 5, 5, true, false},
                                           Case{4, 16, 5, 5, true, true},
                                           Case{3, 8, 4, 6, true, true},
                                           Case{3, 5, 4, 6, false, false},
                                           Case{3, 5, 4, 6, false, true},
                                           Case{2, 20, 3, 3, true, false}));

// Finite differences of L = sum(w * bn(x)) in double-checked float: dx and dgamma.
TEST(SyncBn, FiniteDifferenceGradient) {
  auto be = MakeCpuBackend(1);
  BatchNormSpec spec{3, 1e-5f, 0.1f, false};
  spec.allreduce_sum = [](float*, size_t) {};
  auto bn = be->batchnorm(spec);
  Tensor x(Dims{4, 3, 3, 3}), w(Dims{4, 3, 3, 3}), gamma(Dims{3}), beta(Dims{3});
  FillRandom(x, 5);
  FillRandom(w, 6);
  FillRandom(gamma, 7, 0.3f, 1.f);
  FillRandom(beta, 8);
  Tensor rm(Dims{3}), rv(Dims{3}), y;
  auto loss = [&]() {
    rm.zero(), rv.fill(1.f);
    bn->forward(x, gamma, beta, rm, rv, y, true);
    double l = 0;
    for (int64_t i = 0; i < y.numel(); ++i) l += static_cast<double>(w.data()[i]) * y.data()[i];
    return l;
  };
  loss();
  Tensor dx, dg, db;
  bn->backward(x, w, gamma, beta, dx, dg, db);
  const float h = 1e-2f;
  for (int64_t i : {0, 13, 50, 107}) {
    const float v = x.data()[i];
    x.data()[i] = v + h;
    const double lp = loss();
    x.data()[i] = v - h;
    const double lm = loss();
    x.data()[i] = v;
    EXPECT_NEAR(dx.data()[i], (lp - lm) / (2 * h), 2e-2) << "x[" << i << "]";
  }
  for (int64_t c = 0; c < 3; ++c) {
    const float v = gamma.data()[c];
    gamma.data()[c] = v + h;
    const double lp = loss();
    gamma.data()[c] = v - h;
    const double lm = loss();
    gamma.data()[c] = v;
    EXPECT_NEAR(dg.data()[c], (lp - lm) / (2 * h), 2e-2) << "gamma[" << c << "]";
  }
}

}  // namespace
}  // namespace resdist
