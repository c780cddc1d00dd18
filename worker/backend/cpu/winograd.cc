// CPU check, weight transforms and dispatch of winograd.h; the kernels are in
// winograd_avx512.cc. Built for the baseline ISA so the check runs anywhere.
#include "worker/backend/cpu/winograd.h"

#include "worker/backend/cpu/winograd_kernels.h"

namespace resdist::cpu {
namespace {

constexpr int64_t kV = 16;
// G of F(2x2, 3x3) and of F(4x4, 3x3) (Lavin & Gray 2016), in double for the transform.
template <int Tile>
struct WinogradG;
template <>
struct WinogradG<2> {
  static constexpr double g[4][3] = {{1, 0, 0}, {.5, .5, .5}, {.5, -.5, .5}, {0, 0, 1}};
};
template <>
struct WinogradG<4> {
  static constexpr double g[6][3] = {{1. / 4, 0, 0},           {-1. / 6, -1. / 6, -1. / 6},
                                     {-1. / 6, 1. / 6, -1. / 6}, {1. / 24, 1. / 12, 1. / 6},
                                     {1. / 24, -1. / 12, 1. / 6}, {0, 0, 1}};
};

// Fills u ([points][out/16][in/16][16 in][16 out]) with G k G^T of every kernel k =
// kernel(out, in) (3x3, row-major). Sixteen output channels at a time, one per lane, so the
// arithmetic vectorizes: this runs for every weight on every step.
template <int Tile, typename KernelAt>
void TransformAllTiled(int64_t in, int64_t out, float* u, KernelAt kernel_at) {
  constexpr int t = Tile + 2;
  constexpr auto& gd = WinogradG<Tile>::g;
  float g[t][3];
  for (int i = 0; i < t; ++i)
    for (int l = 0; l < 3; ++l) g[i][l] = static_cast<float>(gd[i][l]);
  const int64_t ibn = in / kV, point = in * out;
#pragma omp parallel for schedule(static)
  for (int64_t ob = 0; ob < out / kV; ++ob)
    for (int64_t i = 0; i < in; ++i) {
      float k[9][kV];  // [tap][lane]
      for (int64_t lane = 0; lane < kV; ++lane) {
        float one[9];
        kernel_at(ob * kV + lane, i, one);
        for (int tap = 0; tap < 9; ++tap) k[tap][lane] = one[tap];
      }
      float gk[t][3][kV];  // G k
      for (int r = 0; r < t; ++r)
        for (int l = 0; l < 3; ++l)
          for (int lane = 0; lane < kV; ++lane)
            gk[r][l][lane] = g[r][0] * k[l][lane] + g[r][1] * k[3 + l][lane] +
                             g[r][2] * k[6 + l][lane];
      float* dst = u + ((ob * ibn + i / kV) * kV + i % kV) * kV;
      for (int r = 0; r < t; ++r)
        for (int c = 0; c < t; ++c)
          for (int lane = 0; lane < kV; ++lane)
            dst[(r * t + c) * point + lane] =
                gk[r][0][lane] * g[c][0] + gk[r][1][lane] * g[c][1] + gk[r][2][lane] * g[c][2];
    }
}

template <typename KernelAt>
void TransformAll(int tile, int64_t in, int64_t out, float* u, KernelAt kernel_at) {
  if (tile == 4)
    TransformAllTiled<4>(in, out, u, kernel_at);
  else
    TransformAllTiled<2>(in, out, u, kernel_at);
}

}  // namespace

int64_t wino_avx512::ScratchPerThread(const Conv3x3Geometry& g) {
  return 36 * (kTiles * (g.c + g.o) + 2 * 16);
}

bool WinogradSupported(const Conv3x3Geometry& g) {
  if (!CpuHasAvx512Kernels()) return false;
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
