// Winograd F(2x2, 3x3) backward-weights (worker/backend/cpu/winograd_weights.h) against a
// straightforward scalar reference with double accumulation, on seeded random data: square and
// non-square images, odd sizes (partial tiles), images smaller than a tile, c != o, and one and
// two OpenMP threads.
#include "worker/backend/cpu/winograd_weights.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace resdist::cpu {
namespace {

constexpr int64_t kV = 16;

// dW[o][c][kh][kw] = sum over n, oh, ow of x[n][c][oh+kh-1][ow+kw-1] * dy[n][o][oh][ow], with
// both tensors in nChw16c and zero padding.
std::vector<double> Reference(const Conv3x3Geometry& g, const std::vector<float>& x,
                              const std::vector<float>& dy) {
  std::vector<double> dw(g.o * g.c * 9, 0.0);
  auto at = [&](int64_t ch, int64_t channels, int64_t n, int64_t r, int64_t col) {
    return (((n * (channels / kV) + ch / kV) * g.h + r) * g.w + col) * kV + ch % kV;
  };
  for (int64_t o = 0; o < g.o; ++o)
    for (int64_t c = 0; c < g.c; ++c)
      for (int64_t kh = 0; kh < 3; ++kh)
        for (int64_t kw = 0; kw < 3; ++kw) {
          double s = 0.0;
          for (int64_t n = 0; n < g.n; ++n)
            for (int64_t oh = 0; oh < g.h; ++oh) {
              const int64_t ih = oh + kh - 1;
              if (ih < 0 || ih >= g.h) continue;
              for (int64_t ow = 0; ow < g.w; ++ow) {
                const int64_t iw = ow + kw - 1;
                if (iw < 0 || iw >= g.w) continue;
                s += static_cast<double>(x[at(c, g.c, n, ih, iw)]) * dy[at(o, g.o, n, oh, ow)];
              }
            }
          dw[(o * g.c + c) * 9 + kh * 3 + kw] = s;
        }
  return dw;
}

std::vector<float> Random(int64_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> v(size);
  for (float& f : v) f = u(rng);
  return v;
}

// Runs the kernel with `threads` OpenMP threads (restoring the previous setting afterwards).
std::vector<float> RunWinograd(const Conv3x3Geometry& g, const std::vector<float>& x,
                               const std::vector<float>& dy, int threads) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  // Deliberately misaligned by one float: the kernel must align the scratch itself.
  std::vector<float> scratch(WinogradWeightsScratchFloats(g, omp_get_max_threads()) + 1);
  std::vector<float> dw(g.o * g.c * 9, -7.f);  // overwritten, not accumulated into
  WinogradBackwardWeights(g, x.data(), dy.data(), scratch.data() + 1, dw.data());
  omp_set_num_threads(saved);
  return dw;
}

struct Case {
  int64_t n, c, o, h, w;
};

std::string Name(const testing::TestParamInfo<Case>& info) {
  const Case& k = info.param;
  char name[96];
  std::snprintf(name, sizeof(name), "n%lld_c%lld_o%lld_h%lld_w%lld", static_cast<long long>(k.n),
                static_cast<long long>(k.c), static_cast<long long>(k.o),
                static_cast<long long>(k.h), static_cast<long long>(k.w));
  return name;
}

class WinogradWeightsTest : public testing::TestWithParam<Case> {};

TEST_P(WinogradWeightsTest, MatchesScalarReference) {
  const Case& k = GetParam();
  const Conv3x3Geometry g{k.n, k.c, k.o, k.h, k.w};
  if (!WinogradWeightsSupported(g)) GTEST_SKIP() << "no AVX-512F on this CPU";
  const auto seed = static_cast<uint32_t>(k.n * 1000003 + k.c * 10007 + k.o * 101 + k.h * 7 + k.w);
  const std::vector<float> x = Random(g.n * g.c * g.h * g.w, seed);
  const std::vector<float> dy = Random(g.n * g.o * g.h * g.w, seed + 1);
  const std::vector<double> ref = Reference(g, x, dy);
  double ref_max = 0.0;
  for (double r : ref) ref_max = std::max(ref_max, std::fabs(r));
  ASSERT_GT(ref_max, 0.0);
  // Tolerance: 1e-5 of the largest |reference|. The reference is exact to double precision.
  // The kernel sums K tile products per transformed element in fp32 (K = n * ceil(h/2) *
  // ceil(w/2), at most 640 here); with random-walk rounding that sum's error is about
  // eps * sqrt(K / 2) of its size, ~1e-6 for eps = 6e-8, and the transforms (sums of at most
  // four terms per dimension) add only a few eps more. Measured: at most 1.3e-6 over these
  // cases, so 1e-5 leaves a wide margin, while a wrong transform coefficient or a mishandled
  // border tile gives errors of order 1e-1.
  const double tol = 1e-5 * ref_max;
  for (int threads : {1, 2}) {
    const std::vector<float> dw = RunWinograd(g, x, dy, threads);
    double worst = 0.0;
    int64_t worst_at = 0;
    for (int64_t i = 0; i < static_cast<int64_t>(ref.size()); ++i) {
      const double err = std::fabs(dw[i] - ref[i]);
      if (err > worst) {
        worst = err;
        worst_at = i;
      }
    }
    EXPECT_LE(worst, tol) << "threads " << threads << ": worst at OIHW index " << worst_at
                          << " got " << dw[worst_at] << " want " << ref[worst_at]
                          << " (relative " << worst / ref_max << ")";
    // Deterministic for a given thread count: a second run gives the same bits.
    const std::vector<float> again = RunWinograd(g, x, dy, threads);
    EXPECT_TRUE(std::equal(dw.begin(), dw.end(), again.begin())) << "threads " << threads;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, WinogradWeightsTest,
    testing::Values(
        // ResNet-20's stage shapes at small batches.
        Case{2, 16, 16, 32, 32}, Case{5, 32, 32, 16, 16}, Case{2, 64, 64, 8, 8},
        // c != o, including an odd number of output blocks (48).
        Case{1, 16, 32, 8, 8}, Case{2, 32, 16, 16, 16}, Case{1, 48, 64, 4, 4},
        Case{2, 64, 48, 8, 8}, Case{1, 16, 48, 5, 7}, Case{5, 48, 16, 7, 5},
        // Odd and tiny sizes: partial tiles, images narrower than a tile.
        Case{2, 16, 16, 5, 5}, Case{1, 16, 16, 7, 7}, Case{2, 32, 32, 1, 1},
        Case{1, 16, 32, 2, 2}, Case{5, 16, 16, 1, 2}, Case{2, 16, 16, 2, 1},
        Case{1, 32, 16, 4, 7}, Case{2, 16, 16, 32, 5}, Case{1, 48, 48, 1, 8},
        // Non-square, with more tiles than one block and a batch smaller than the team.
        Case{1, 16, 16, 32, 16}, Case{5, 16, 16, 16, 32}, Case{1, 64, 64, 16, 8},
        Case{5, 64, 32, 8, 4}),
    Name);

}  // namespace
}  // namespace resdist::cpu
