// Dispatch, weight packing and the reduction of conv3x3.h; the kernels are in
// conv3x3_avx512.cc. This file is built for the baseline ISA so the CPU check runs anywhere.
#include "worker/backend/cpu/conv3x3.h"

#include <omp.h>

#include <stdexcept>
#include <string>

#include "worker/backend/cpu/conv3x3_kernels.h"

namespace resdist::cpu {
namespace {

constexpr int64_t kV = 16;

Conv3x3Geometry Transposed(const Conv3x3Geometry& g) { return {g.n, g.o, g.c, g.h, g.w}; }

[[noreturn]] void Reject(const char* what, const Conv3x3Geometry& g) {
  throw std::invalid_argument(
      std::string(what) + ": unsupported by the AVX-512 3x3 kernels (n=" + std::to_string(g.n) +
      " c=" + std::to_string(g.c) + " o=" + std::to_string(g.o) + " h=" + std::to_string(g.h) +
      " w=" + std::to_string(g.w) + (CpuHasAvx512Kernels() ? ")" : ", CPU lacks AVX-512)"));
}

}  // namespace

bool CpuHasAvx512Kernels() {
  // Every extension the *_avx512.cc objects are compiled for (see CMakeLists.txt): the compiler
  // uses VL/BW/DQ instructions (e.g. 128/256-bit EVEX moves, kmovb) there, not just AVX-512F.
  // __builtin_cpu_supports also requires the OS to save the AVX-512 state.
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma");
  }();  // immutable after first use
  return has;
}

bool Conv3x3Supported(const Conv3x3Geometry& g) {
  if (!CpuHasAvx512Kernels()) return false;
  if (g.n <= 0 || g.h <= 0 || g.c <= 0 || g.o <= 0) return false;
  if (g.c % kV != 0 || g.o % kV != 0) return false;
  return g.w > 0 && (g.w % 16 == 0 || g.w == 12 || g.w == 8 || g.w == 4);
}

int64_t Conv3x3PackedWeightFloats(const Conv3x3Geometry& g) { return g.o * g.c * 9; }

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
  // Forward returning false means Conv3x3Supported and the kernels' dispatch disagree.
  if (!Conv3x3Supported(g) || !avx512::Forward(g, src, packed, dst))
    Reject("Conv3x3Forward", g);
}

void Conv3x3BackwardData(const Conv3x3Geometry& g, const float* ddst, const float* packed,
                         float* dsrc) {
  if (!Conv3x3Supported(g) || !avx512::Forward(Transposed(g), ddst, packed, dsrc))
    Reject("Conv3x3BackwardData", g);
}

int64_t Conv3x3BackwardWeightsScratchFloats(const Conv3x3Geometry& g, int threads) {
  return static_cast<int64_t>(threads) * g.o * g.c * 9;
}

void Conv3x3BackwardWeights(const Conv3x3Geometry& g, const float* src, const float* ddst,
                            float* scratch, float* dweight_oihw) {
  if (!CpuHasAvx512Kernels() || g.c % kV != 0 || g.o % kV != 0 || g.h <= 0 || g.w <= 0 ||
      g.n < 0)
    Reject("Conv3x3BackwardWeights", g);
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
