// Winograd F(2x2, 3x3) and F(4x4, 3x3) forward and backward-data kernels (winograd.h) against
// a double-precision direct convolution, on awkward shapes: channel counts that are not
// powers of two, c != o, odd and tiny images (partial tiles), batches that leave a partial
// block of tiles, 1 and 2 threads.
//
// Tolerance: relative to the largest |reference| value. The transforms add and subtract
// inputs with coefficients up to 8 (F4) before the f32 products, so the rounding error grows
// with them: F(2x2) stays near 1e-7 * sqrt(C*9) and F(4x4) near 1e-6 here (measured 2e-7 and
// 4e-6 at most over these shapes); 2e-6 and 2e-5 leave headroom without hiding a wrong
// coefficient, which shows up as an O(1) error.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "worker/backend/cpu/winograd.h"
#include "worker/tensor/tensor.h"

namespace resdist::cpu {
namespace {

struct Case {
  int64_t n, c, o, h, w;
};

// [N][C/16][H][W][16] index of (n, c, y, x).
int64_t Blocked(int64_t c_total, int64_t h, int64_t w, int64_t n, int64_t c, int64_t y,
                int64_t x) {
  return (((n * (c_total / 16) + c / 16) * h + y) * w + x) * 16 + c % 16;
}

// out(n, o, y, x) = sum in(n, c, y + kh - 1, x + kw - 1) * k(o, c, kh, kw), in double.
std::vector<double> Reference(const Case& g, const std::vector<float>& in, int64_t in_c,
                              int64_t out_c, const std::vector<float>& oihw, bool transposed) {
  std::vector<double> out(static_cast<size_t>(g.n * out_c * g.h * g.w), 0.0);
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t o = 0; o < out_c; ++o)
      for (int64_t y = 0; y < g.h; ++y)
        for (int64_t x = 0; x < g.w; ++x) {
          double acc = 0;
          for (int64_t c = 0; c < in_c; ++c)
            for (int kh = 0; kh < 3; ++kh)
              for (int kw = 0; kw < 3; ++kw) {
                const int64_t iy = y + kh - 1, ix = x + kw - 1;
                if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
                // Backward-data: the kernel of (in = o_fwd, out = c_fwd), flipped.
                const float k = transposed ? oihw[((c * out_c + o) * 3 + 2 - kh) * 3 + 2 - kw]
                                           : oihw[((o * in_c + c) * 3 + kh) * 3 + kw];
                acc += static_cast<double>(in[Blocked(in_c, g.h, g.w, n, c, iy, ix)]) * k;
              }
          out[Blocked(out_c, g.h, g.w, n, o, y, x)] = acc;
        }
  return out;
}

double MaxRelativeError(const Tensor& got, const std::vector<double>& want) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got.data()[i]) - want[i]);
    err = std::isnan(d) ? INFINITY : std::max(err, d);
    scale = std::max(scale, std::fabs(want[i]));
  }
  return err / scale;
}

class WinogradTest : public ::testing::TestWithParam<int> {  // parameter: tile size
 protected:
  void SetUp() override {
    saved_threads_ = omp_get_max_threads();  // the test changes it; TearDown restores it
    if (!WinogradSupported({1, 16, 16, 4, 4})) GTEST_SKIP() << "this CPU has no AVX-512F";
  }
  void TearDown() override { omp_set_num_threads(saved_threads_); }

  int saved_threads_ = 1;
};

TEST_P(WinogradTest, MatchesDirectConvolution) {
  const int tile = GetParam();
  const double tol = tile == 2 ? 2e-6 : 2e-5;
  const std::vector<Case> cases = {{2, 16, 16, 32, 32}, {3, 32, 16, 5, 7}, {2, 16, 48, 9, 3},
                                   {1, 64, 64, 8, 8},   {2, 32, 32, 1, 1}, {3, 16, 32, 13, 11},
                                   {5, 48, 16, 4, 4},   {1, 16, 16, 2, 6}};
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (const Case& cs : cases) {
    const Conv3x3Geometry g{cs.n, cs.c, cs.o, cs.h, cs.w};
    ASSERT_TRUE(WinogradSupported(g));
    std::vector<float> src(cs.n * cs.c * cs.h * cs.w), ddst(cs.n * cs.o * cs.h * cs.w),
        w(cs.o * cs.c * 9);
    for (auto* vec : {&src, &ddst, &w})
      for (float& x : *vec) x = dist(rng);
    Tensor src_t(Dims{static_cast<int64_t>(src.size())}),
        ddst_t(Dims{static_cast<int64_t>(ddst.size())});
    std::copy(src.begin(), src.end(), src_t.data());
    std::copy(ddst.begin(), ddst.end(), ddst_t.data());
    Tensor dst(Dims{static_cast<int64_t>(ddst.size())}), dsrc(Dims{static_cast<int64_t>(src.size())});
    Tensor uf(Dims{WinogradWeightFloats(g)}), ub(Dims{WinogradWeightFloats(g)});
    WinogradTransformForwardWeights(g, tile, w.data(), uf.data());
    WinogradTransformBackwardDataWeights(g, tile, w.data(), ub.data());
    const std::vector<double> want_fwd = Reference(cs, src, cs.c, cs.o, w, false);
    const std::vector<double> want_bwd = Reference(cs, ddst, cs.o, cs.c, w, true);
    for (int threads : {1, 2}) {
      omp_set_num_threads(threads);
      Tensor scratch(Dims{WinogradScratchFloats(g, omp_get_max_threads())});
      // The outputs are reused across thread counts: NaN first, so that an element the kernel
      // leaves unwritten (a skipped tile, block or channel) fails instead of passing with the
      // previous run's value. MaxRelativeError turns any NaN into an infinite error.
      dst.fill(std::numeric_limits<float>::quiet_NaN());
      dsrc.fill(std::numeric_limits<float>::quiet_NaN());
      WinogradForward(g, tile, src_t.data(), uf.data(), dst.data(), scratch.data());
      WinogradBackwardData(g, tile, ddst_t.data(), ub.data(), dsrc.data(), scratch.data());
      SCOPED_TRACE(testing::Message() << "tile " << tile << " n" << cs.n << " c" << cs.c << " o"
                                      << cs.o << " " << cs.h << "x" << cs.w << " threads "
                                      << threads);
      EXPECT_LT(MaxRelativeError(dst, want_fwd), tol);
      EXPECT_LT(MaxRelativeError(dsrc, want_bwd), tol);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Tiles, WinogradTest, ::testing::Values(2, 4));

TEST(WinogradTileTest, LargerTilesOnlyWhereTheImageHoldsThem) {
  EXPECT_EQ(WinogradTile({128, 16, 16, 32, 32}), 4);
  EXPECT_EQ(WinogradTile({128, 64, 64, 8, 8}), 4);
  EXPECT_EQ(WinogradTile({128, 64, 64, 4, 4}), 2);
}

}  // namespace
}  // namespace resdist::cpu
