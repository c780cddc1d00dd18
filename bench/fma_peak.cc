// Single-core f32 FMA peak of this CPU: a register-only loop of independent fused multiply-adds,
// 512-bit (AVX-512) and 256-bit (AVX2) wide. It puts the convolution kernels' GFLOP/s in
// context (bench/RESULTS.md): a kernel cannot beat this, and Winograd wins only by doing fewer
// multiplications. Built with AVX-512 flags: it needs an AVX-512 CPU.
#include <immintrin.h>

#include <chrono>
#include <cstdio>

namespace {

constexpr long kIters = 20'000'000;

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// 24 independent accumulators hide the FMA latency on any current core.
double Peak512() {
  __m512 acc[24];
  for (__m512& a : acc) a = _mm512_setzero_ps();
  const __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(1e-3f);
  const auto t0 = std::chrono::steady_clock::now();
  for (long it = 0; it < kIters; ++it) {
#pragma GCC unroll 24
    for (__m512& a : acc) a = _mm512_fmadd_ps(a, x, y);
  }
  const double s = Seconds(t0);
  float sink = 0;
  for (const __m512& a : acc) {
    float v[16];
    _mm512_storeu_ps(v, a);
    sink += v[0];
  }
  std::printf("  (checksum %g)\n", sink);
  return kIters * 24.0 * 16 * 2 / s / 1e9;
}

double Peak256() {
  __m256 acc[12];
  for (__m256& a : acc) a = _mm256_setzero_ps();
  const __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(1e-3f);
  const auto t0 = std::chrono::steady_clock::now();
  for (long it = 0; it < kIters; ++it) {
#pragma GCC unroll 12
    for (__m256& a : acc) a = _mm256_fmadd_ps(a, x, y);
  }
  const double s = Seconds(t0);
  float sink = 0;
  for (const __m256& a : acc) {
    float v[8];
    _mm256_storeu_ps(v, a);
    sink += v[0];
  }
  std::printf("  (checksum %g)\n", sink);
  return kIters * 12.0 * 8 * 2 / s / 1e9;
}

}  // namespace

int main() {
  if (!__builtin_cpu_supports("avx512f")) {
    std::printf("this CPU has no AVX-512F\n");
    return 1;
  }
  const double p512 = Peak512();
  const double p256 = Peak256();
  std::printf("fma_peak_gflops_per_core avx512=%.1f avx2=%.1f\n", p512, p256);
  return 0;
}
