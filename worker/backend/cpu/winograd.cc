// CPU check, weight transforms and dispatch of winograd.h; the kernels are in
// winograd_avx512.cc. Built for the baseline ISA so the check runs anywhere.
#include "worker/backend/cpu/winograd.h"

#include "worker/backend/cpu/winograd_kernels.h"

namespace resdist::cpu {
namespace {

constexpr int64_t kV = 16;
// G of F(2x2, 3x3) and of F(4x4, 3x3) (Lavin & Gray 2016), in double for the transform.
constexpr double kG2[4][3] = {{1, 0, 0}, {.5, .5, .5}, {.5, -.5, .5}, {0, 0, 1}};
constexpr double kG4[6][3] = {{1. / 4, 0, 0},           {-1. / 6, -1. / 6, -1. / 6},
                              {-1. / 6, 1. / 6, -1. / 6}, {1. / 24, 1. / 12, 1. / 6},
                              {1. / 24, -1. / 12, 1. / 6}, {0, 0, 1}};

// u[(i*T + j) * point_stride] = (G k G^T)[i][j] for one 3x3 kernel k (row-major), T = tile + 2.
void TransformKernel(int tile, const float k[9], float* u, int64_t point_stride) {
  const int t = tile + 2;
  auto gm = [&](int i, int l) { return tile == 4 ? kG4[i][l] : kG2[i][l]; };
  double gk[6][3];  // G k
  for (int i = 0; i < t; ++i)
    for (int l = 0; l < 3; ++l)
      gk[i][l] = gm(i, 0) * k[0 * 3 + l] + gm(i, 1) * k[1 * 3 + l] + gm(i, 2) * k[2 * 3 + l];
  for (int i = 0; i < t; ++i)
    for (int j = 0; j < t; ++j)
      u[(i * t + j) * point_stride] =
          static_cast<float>(gk[i][0] * gm(j, 0) + gk[i][1] * gm(j, 1) + gk[i][2] * gm(j, 2));
}

// Fills u ([points][out/16][in/16][16 in][16 out]) from kernel(out, in) -> 3x3 kernel.
template <typename KernelAt>
void TransformAll(int tile, int64_t in, int64_t out, float* u, KernelAt kernel_at) {
  const int64_t ibn = in / kV, point = in * out;
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) {
      float k[9];
      kernel_at(o, i, k);
      TransformKernel(tile, k, u + (((o / kV) * ibn + i / kV) * kV + i % kV) * kV + o % kV,
                      point);
    }
}

}  // namespace

bool WinogradSupported(const Conv3x3Geometry& g) {
  if (!__builtin_cpu_supports("avx512f")) return false;
  return g.n > 0 && g.h > 0 && g.w > 0 && g.c > 0 && g.o > 0 && g.c % kV == 0 &&
         g.o % kV == 0;
}

int WinogradTile(const Conv3x3Geometry& g) { return g.h >= 8 && g.w >= 8 ? 4 : 2; }

int64_t WinogradScratchFloats(const Conv3x3Geometry& g, int threads) {
  return static_cast<int64_t>(threads) * wino_avx512::ScratchPerThread(g);
}

void WinogradTransformForwardWeights(const Conv3x3Geometry& g, int tile, const float* oihw,
                                     float* u) {
  TransformAll(tile, g.c, g.o, u, [&](int64_t o, int64_t i, float k[9]) {
    for (int t = 0; t < 9; ++t) k[t] = oihw[(o * g.c + i) * 9 + t];
  });
}

void WinogradTransformBackwardDataWeights(const Conv3x3Geometry& g, int tile, const float* oihw,
                                          float* u) {
  // Backward-data is the forward pass from O channels to C channels with kernel
  // W'[c][o][kh][kw] = W[o][c][2 - kh][2 - kw].
  TransformAll(tile, g.o, g.c, u, [&](int64_t c, int64_t o, float k[9]) {
    for (int t = 0; t < 9; ++t) k[t] = oihw[(o * g.c + c) * 9 + (8 - t)];
  });
}

void WinogradForward(const Conv3x3Geometry& g, int tile, const float* src, const float* u,
                     float* dst, float* scratch) {
  wino_avx512::Forward(g, tile, src, u, dst, scratch);
}

void WinogradBackwardData(const Conv3x3Geometry& g, int tile, const float* ddst, const float* u,
                          float* dsrc, float* scratch) {
  wino_avx512::Forward({g.n, g.o, g.c, g.h, g.w}, tile, ddst, u, dsrc, scratch);
}

}  // namespace resdist::cpu
