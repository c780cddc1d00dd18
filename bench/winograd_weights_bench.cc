// Winograd F(2x2,3x3) backward-weights (worker/backend/cpu/winograd_weights.h) against the
// direct AVX-512 kernel (Conv3x3BackwardWeights, conv3x3.h) on ResNet-20's stride-1 3x3 shapes
// at batch 128 by default. The two run alternately on the same tensors and the medians are
// quoted, so both see the same machine state (min: the fastest run). Also prints the speedup
// and the largest difference between the two results relative to the largest |direct| value.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include "CLI/CLI.hpp"
#include "worker/backend/cpu/conv3x3.h"
#include "worker/backend/cpu/winograd_weights.h"
#include "worker/tensor/tensor.h"

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void Fill(resdist::Tensor& t, int salt) {
  float* p = t.data();
  for (int64_t i = 0; i < t.physical_size(); ++i)
    p[i] = 0.01f * static_cast<float>((i * 7 + salt) % 23) - 0.1f;
}

double MaxRelDiff(const float* a, const float* b, int64_t n) {
  double num = 0, den = 1e-12;
  for (int64_t i = 0; i < n; ++i) {
    num = std::max(num, std::fabs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  return num / den;
}

}  // namespace

int main(int argc, char** argv) {
  namespace cpu = resdist::cpu;
  CLI::App app{"Winograd F(2x2,3x3) vs direct 3x3 backward-weights (stride 1, nChw16c)"};
  int64_t batch = 128;
  int repeats = 21;
  app.add_option("--batch", batch, "batch size");
  app.add_option("--repeats", repeats, "timed runs per kernel (median)");
  CLI11_PARSE(app, argc, argv);

  struct Shape {
    int64_t c, hw;
  };
  const std::vector<Shape> shapes = {{16, 32}, {32, 16}, {64, 8}};
  std::printf("batch %lld, %d threads, median of %d alternating runs\n",
              static_cast<long long>(batch), omp_get_max_threads(), repeats);
  for (const Shape& sh : shapes) {
    const cpu::Conv3x3Geometry g{batch, sh.c, sh.c, sh.hw, sh.hw};
    if (!cpu::Conv3x3Supported(g) || !cpu::WinogradWeightsSupported(g)) {
      std::printf("kernels unsupported on this CPU/shape\n");
      return 1;
    }
    const resdist::Dims act{batch * sh.c * sh.hw * sh.hw}, wts{sh.c * sh.c * 9};
    resdist::Tensor src(act), ddst(act), dw_direct(wts), dw_wino(wts);
    resdist::Tensor scratch_direct(
        resdist::Dims{cpu::Conv3x3BackwardWeightsScratchFloats(g, omp_get_max_threads())});
    resdist::Tensor scratch_wino(
        resdist::Dims{cpu::WinogradWeightsScratchFloats(g, omp_get_max_threads())});
    Fill(src, 1);
    Fill(ddst, 5);
    std::vector<double> td, tw;
    for (int r = 0; r < repeats + 1; ++r) {  // the first round warms caches and pages
      const double t0 = Now();
      cpu::Conv3x3BackwardWeights(g, src.data(), ddst.data(), scratch_direct.data(),
                                  dw_direct.data());
      const double t1 = Now();
      cpu::WinogradBackwardWeights(g, src.data(), ddst.data(), scratch_wino.data(),
                                   dw_wino.data());
      const double t2 = Now();
      if (r > 0) {
        td.push_back(t1 - t0);
        tw.push_back(t2 - t1);
      }
    }
    const double md = Median(td) * 1e3, mw = Median(tw) * 1e3;
    const double min_d = *std::min_element(td.begin(), td.end()) * 1e3;
    const double min_w = *std::min_element(tw.begin(), tw.end()) * 1e3;
    const double gflop = 2.0 * batch * sh.hw * sh.hw * sh.c * sh.c * 9 * 1e-9;
    std::printf(
        "c%-3lld %2lldx%-2lld  direct %.3f ms (min %.3f, %.0f GFLOP/s)  winograd %.3f ms (min "
        "%.3f, %.0f direct-equivalent GFLOP/s)  x%.2f  diff %.1e\n",
        static_cast<long long>(sh.c), static_cast<long long>(sh.hw),
        static_cast<long long>(sh.hw), md, min_d, gflop / md * 1e3, mw, min_w, gflop / mw * 1e3,
        md / mw,
        MaxRelDiff(dw_wino.data(), dw_direct.data(), dw_direct.physical_size()));
  }
  return 0;
}
