// Dispatch, weight packing and the reduction of conv3x3.h; the kernels are in
// conv3x3_avx512.cc. This file is built for the baseline ISA so the CPU check runs anywhere.
#include "worker/backend/cpu/conv3x3.h"

#include <omp.h>

#include "worker/backend/cpu/conv3x3_kernels.h"

namespace resdist::cpu {
namespace {

constexpr int64_t kV = 16;

bool CpuHasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f");  // immutable after first use
  return has;
}

Conv3x3Geometry Transposed(const Conv3x3Geometry& g) { return {g.n, g.o, g.c, g.h, g.w}; }

}  // namespace

bool Conv3x3Supported(const Conv3x3Geometry& g) {
  if (!CpuHasAvx512()) return false;
  if (g.n <= 0 || g.h <= 0 || g.c <= 0 || g.o <= 0) return false;
  if (g.c % kV != 0 || g.o % kV != 0) return false;
  return g.w > 0 && (g.w % 16 == 0 || g.w == 12 || g.w == 8 || g.w == 4);
}

void Conv3x3PackForwardWeights(const Conv3x3Geometry& g, const float* oihw, float* packed) {
  const int64_t cbn = g.c / kV, obn = g.o / kV;
  for (int64_t ob = 0; ob < obn; ++ob)
    for (int64_t cb = 0; cb < cbn; ++cb)
      for (int64_t k = 0; k < 9; ++k)
        for (int64_t i = 0; i < kV; ++i)
          for (int64_t o = 0; o < kV; ++o)
            packed[(((ob * cbn + cb) * 9 + k) * kV + i) * kV + o] =
                oihw[((ob * kV + o) * g.c + cb * kV + i) * 9 + k];
}

void Conv3x3PackBackwardDataWeights(const Conv3x3Geometry& g, const float* oihw,
                                    float* packed) {
  // The forward packing for (in = O, out = C) of W'[c][o][kh][kw] = W[o][c][2-kh][2-kw].
  const int64_t cbn = g.c / kV, obn = g.o / kV;
  for (int64_t cb = 0; cb < cbn; ++cb)
    for (int64_t ob = 0; ob < obn; ++ob)
      for (int64_t k = 0; k < 9; ++k)
        for (int64_t i = 0; i < kV; ++i)
          for (int64_t o = 0; o < kV; ++o)
            packed[(((cb * obn + ob) * 9 + k) * kV + i) * kV + o] =
                oihw[((ob * kV + i) * g.c + cb * kV + o) * 9 + (8 - k)];
}

void Conv3x3Forward(const Conv3x3Geometry& g, const float* src, const float* packed,
                    float* dst) {
  avx512::Forward(g, src, packed, dst);
}

void Conv3x3BackwardData(const Conv3x3Geometry& g, const float* ddst, const float* packed,
                         float* dsrc) {
  avx512::Forward(Transposed(g), ddst, packed, dsrc);
}

int64_t Conv3x3BackwardWeightsScratchFloats(const Conv3x3Geometry& g, int threads) {
  return static_cast<int64_t>(threads) * g.o * g.c * 9;
}

void Conv3x3BackwardWeights(const Conv3x3Geometry& g, const float* src, const float* ddst,
                            float* scratch, float* dweight_oihw) {
  // A team never exceeds omp_get_max_threads(), which sized `scratch`.
  const int threads = avx512::BackwardWeights(g, src, ddst, scratch);
  const int64_t cbn = g.c / kV, per_thread = g.o * g.c * 9;
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < g.o; ++o)
    for (int64_t c = 0; c < g.c; ++c)
      for (int64_t k = 0; k < 9; ++k) {
        const int64_t at = ((((o / kV) * cbn + c / kV) * 9 + k) * kV + c % kV) * kV + o % kV;
        float sum = 0.f;
        for (int t = 0; t < threads; ++t) sum += scratch[t * per_thread + at];
        dweight_oihw[(o * g.c + c) * 9 + k] = sum;
      }
}

}  // namespace resdist::cpu
