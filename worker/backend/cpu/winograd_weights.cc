// CPU check, scratch sizing and the final reduction of winograd_weights.h; the kernels are in
// winograd_weights_avx512.cc. This file is built for the baseline ISA so the check runs anywhere.
#include "worker/backend/cpu/winograd_weights.h"

#include <algorithm>
#include <cstdint>

namespace resdist::cpu {

namespace winograd_internal {

Layout MakeLayout(const Conv3x3Geometry& g) {
  Layout l;
  // Tiles per block: as many as keep the panels within about 700 KiB of the 1 MiB L2, since
  // the GEMMs load and store their accumulators once per block and element (at 32 tiles that
  // cost c = o = 64 about 10%); measured best from 96 to 160 tiles there, and at the cap for
  // 16 and 32 channels.
  const int64_t tile_bytes =
      4 * (g.c / 16 * Layout::kTileStride + g.o / 16 * Layout::kGradStride);
  l.tile_block = std::clamp<int64_t>(720 * 1024 / tile_bytes, 32, 256);
  l.m = 16 * g.c * g.o;
  l.v = g.c / 16 * l.tile_block * Layout::kTileStride;
  l.y = g.o / 16 * l.tile_block * Layout::kGradStride;
  l.per_thread = l.m + l.v + l.y;
  return l;
}

}  // namespace winograd_internal

namespace {

namespace wi = winograd_internal;

float* AlignedBase(float* scratch) {
  const auto addr = reinterpret_cast<std::uintptr_t>(scratch);
  return reinterpret_cast<float*>((addr + 63) & ~std::uintptr_t{63});
}

// G^T of F(3x3, 2x2) (see the header): row k gives output tap k from the four transformed
// rows (or columns).
constexpr float kGt[3][4] = {{1.f, .5f, .5f, 0.f}, {0.f, .5f, -.5f, 0.f}, {0.f, .5f, .5f, 1.f}};

}  // namespace

bool WinogradWeightsSupported(const Conv3x3Geometry& g) {
  if (!CpuHasAvx512Kernels()) return false;
  if (g.n <= 0 || g.h <= 0 || g.w <= 0 || g.c <= 0 || g.o <= 0) return false;
  return g.c % 16 == 0 && g.o % 16 == 0;
}

int64_t WinogradWeightsScratchFloats(const Conv3x3Geometry& g, int threads) {
  return static_cast<int64_t>(threads) * wi::MakeLayout(g).per_thread + wi::kScratchSlack;
}

void WinogradBackwardWeights(const Conv3x3Geometry& g, const float* src, const float* ddst,
                             float* scratch, float* dweight_oihw) {
  float* base = AlignedBase(scratch);
  // A team never exceeds omp_get_max_threads(), which sized `scratch`.
  const int threads = wi::Accumulate(g, src, ddst, base);
  const wi::Layout l = wi::MakeLayout(g);
  const int64_t co = g.c * g.o;
  // Sum the per-thread partials in thread order (deterministic), then dW = G^T M G. Loops run
  // along o, M's contiguous dimension, 16 outputs at a time so that they vectorize.
  constexpr int64_t kO = 16;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < g.c; ++c)
    for (int64_t o0 = 0; o0 < g.o; o0 += kO) {
      float m[16][kO];
      for (int e = 0; e < 16; ++e) {
        const float* p = base + e * co + c * g.o + o0;
        for (int64_t j = 0; j < kO; ++j) m[e][j] = p[j];
        for (int t = 1; t < threads; ++t)
          for (int64_t j = 0; j < kO; ++j) m[e][j] += p[t * l.per_thread + j];
      }
      // Rows: r[kh][b] = sum over a of G^T[kh][a] * M[a][b]; then along b the same.
      float r[3][4][kO];
      for (int kh = 0; kh < 3; ++kh)
        for (int b = 0; b < 4; ++b)
          for (int64_t j = 0; j < kO; ++j) {
            float s = 0.f;
            for (int a = 0; a < 4; ++a) s += kGt[kh][a] * m[a * 4 + b][j];
            r[kh][b][j] = s;
          }
      for (int kh = 0; kh < 3; ++kh)
        for (int kw = 0; kw < 3; ++kw)
          for (int64_t j = 0; j < kO; ++j) {
            float s = 0.f;
            for (int b = 0; b < 4; ++b) s += kGt[kw][b] * r[kh][b][j];
            dweight_oihw[((o0 + j) * g.c + c) * 9 + kh * 3 + kw] = s;
          }
    }
}

}  // namespace resdist::cpu
