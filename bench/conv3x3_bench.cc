// resdist's AVX-512 3x3 convolution kernels against oneDNN's primitives on the same nChw16c
// tensors: every stride-1 3x3 shape of ResNet-20 (batch 128 by default), forward,
// backward-data and backward-weights, for oneDNN, the direct kernels (conv3x3.h) and Winograd
// (winograd.h: F(4x4) or F(2x2) as WinogradTile picks; winograd_weights.h for
// backward-weights), alternating the three and quoting medians. Also prints the largest
// difference of each result from oneDNN's, relative to the largest |value|.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include "CLI/CLI.hpp"
#include "oneapi/dnnl/dnnl.hpp"
#include "worker/backend/cpu/conv3x3.h"
#include "worker/backend/cpu/winograd.h"
#include "worker/backend/cpu/winograd_weights.h"
#include "worker/tensor/tensor.h"

namespace {

using dnnl::memory;
using tag = memory::format_tag;

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
  CLI::App app{"resdist 3x3 kernels vs oneDNN (stride 1, nChw16c)"};
  int64_t batch = 128;
  int repeats = 9;
  app.add_option("--batch", batch, "batch size");
  app.add_option("--repeats", repeats, "timed runs per kernel (median)");
  CLI11_PARSE(app, argc, argv);

  struct Shape {
    int64_t c, hw, count;
  };
  const std::vector<Shape> shapes = {{16, 32, 6}, {32, 16, 5}, {64, 8, 5}};
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream strm(eng);
  double total[3] = {0, 0, 0};  // oneDNN, direct, Winograd
  for (const Shape& sh : shapes) {
    const resdist::cpu::Conv3x3Geometry g{batch, sh.c, sh.c, sh.hw, sh.hw};
    if (!resdist::cpu::Conv3x3Supported(g)) {
      std::printf("kernels unsupported on this CPU/shape\n");
      return 1;
    }
    const memory::desc act({batch, sh.c, sh.hw, sh.hw}, memory::data_type::f32, tag::aBcd16b);
    const memory::desc w_any({sh.c, sh.c, 3, 3}, memory::data_type::f32, tag::any);
    const memory::desc w_plain({sh.c, sh.c, 3, 3}, memory::data_type::f32, tag::oihw);
    const memory::dims st{1, 1}, pad{1, 1};
    dnnl::convolution_forward::primitive_desc fpd(
        {dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, act, w_any,
         act, st, pad, pad},
        eng);
    dnnl::convolution_backward_data::primitive_desc dpd(
        {dnnl::algorithm::convolution_direct, act, w_any, act, st, pad, pad}, eng, fpd);
    dnnl::convolution_backward_weights::primitive_desc wpd(
        {dnnl::algorithm::convolution_direct, act, w_any, act, st, pad, pad}, eng, fpd);
    resdist::Tensor src(act), dst(act), ddst(act), dsrc(act), w(w_plain), dw(w_plain);
    resdist::Tensor dst2(act), dsrc2(act), dw2(w_plain), dst3(act), dsrc3(act), dw3(w_plain);
    const int tile = resdist::cpu::WinogradTile(g);
    resdist::Tensor wino_f(resdist::Dims{resdist::cpu::WinogradWeightFloats(g)});
    resdist::Tensor wino_d(resdist::Dims{resdist::cpu::WinogradWeightFloats(g)});
    resdist::Tensor wino_scratch(
        resdist::Dims{resdist::cpu::WinogradScratchFloats(g, omp_get_max_threads())});
    resdist::Tensor wino_w_scratch(
        resdist::Dims{resdist::cpu::WinogradWeightsScratchFloats(g, omp_get_max_threads())});
    resdist::Tensor wf(fpd.weights_desc()), wd(dpd.weights_desc()), dw_blk(wpd.diff_weights_desc());
    resdist::Tensor packed_f(resdist::Dims{resdist::cpu::Conv3x3PackedWeightFloats(g)});
    resdist::Tensor packed_d(resdist::Dims{resdist::cpu::Conv3x3PackedWeightFloats(g)});
    resdist::Tensor scratch(resdist::Dims{
        resdist::cpu::Conv3x3BackwardWeightsScratchFloats(g, omp_get_max_threads())});
    Fill(src, 1);
    Fill(ddst, 5);
    Fill(w, 3);
    for (resdist::Tensor* t : {&wf, &wd}) {
      memory from = w.mem(eng), to = t->mem(eng);
      dnnl::reorder(from, to).execute(strm, from, to);
    }
    resdist::cpu::Conv3x3PackForwardWeights(g, w.data(), packed_f.data());
    resdist::cpu::Conv3x3PackBackwardDataWeights(g, w.data(), packed_d.data());
    resdist::cpu::WinogradTransformForwardWeights(g, tile, w.data(), wino_f.data());
    resdist::cpu::WinogradTransformBackwardDataWeights(g, tile, w.data(), wino_d.data());
    dnnl::convolution_forward f(fpd);
    dnnl::convolution_backward_data bd(dpd);
    dnnl::convolution_backward_weights bw(wpd);
    // oneDNN's gradient comes out blocked; the op reorders it to plain OIHW, as ours does.
    memory dw_from = dw_blk.mem(eng), dw_to = dw.mem(eng);
    dnnl::reorder dw_reorder(dw_from, dw_to);
    auto run_dnnl = [&](int k) {
      if (k == 0)
        f.execute(strm, {{DNNL_ARG_SRC, src.mem(eng)}, {DNNL_ARG_WEIGHTS, wf.mem(eng)},
                         {DNNL_ARG_DST, dst.mem(eng)}});
      if (k == 1)
        bd.execute(strm, {{DNNL_ARG_DIFF_DST, ddst.mem(eng)}, {DNNL_ARG_WEIGHTS, wd.mem(eng)},
                          {DNNL_ARG_DIFF_SRC, dsrc.mem(eng)}});
      if (k == 2)
        bw.execute(strm, {{DNNL_ARG_SRC, src.mem(eng)}, {DNNL_ARG_DIFF_DST, ddst.mem(eng)},
                          {DNNL_ARG_DIFF_WEIGHTS, dw_from}});
      if (k == 2) dw_reorder.execute(strm, dw_from, dw_to);
      strm.wait();
    };
    auto run_winograd = [&](int k) {
      if (k == 0)
        resdist::cpu::WinogradForward(g, tile, src.data(), wino_f.data(), dst3.data(),
                                      wino_scratch.data());
      if (k == 1)
        resdist::cpu::WinogradBackwardData(g, tile, ddst.data(), wino_d.data(), dsrc3.data(),
                                           wino_scratch.data());
      if (k == 2)
        resdist::cpu::WinogradBackwardWeights(g, src.data(), ddst.data(), wino_w_scratch.data(),
                                              dw3.data());
    };
    auto run_ours = [&](int k) {
      if (k == 0) resdist::cpu::Conv3x3Forward(g, src.data(), packed_f.data(), dst2.data());
      if (k == 1)
        resdist::cpu::Conv3x3BackwardData(g, ddst.data(), packed_d.data(), dsrc2.data());
      if (k == 2)
        resdist::cpu::Conv3x3BackwardWeights(g, src.data(), ddst.data(), scratch.data(),
                                             dw2.data());
    };
    const char* names[3] = {"fwd", "bwd_data", "bwd_weights"};
    for (int k = 0; k < 3; ++k) {
      std::vector<double> t[3];
      for (int r = 0; r < repeats + 1; ++r) {
        const double t0 = Now();
        run_dnnl(k);
        const double t1 = Now();
        run_ours(k);
        const double t2 = Now();
        run_winograd(k);
        const double t3 = Now();
        if (r > 0) {  // the first run warms caches and pages
          t[0].push_back(t1 - t0);
          t[1].push_back(t2 - t1);
          t[2].push_back(t3 - t2);
        }
      }
      double ms[3];
      for (int i = 0; i < 3; ++i) {
        ms[i] = Median(t[i]) * 1e3;
        total[i] += ms[i] * sh.count;
      }
      const resdist::Tensor* ref[3] = {&dst, &dsrc, &dw};
      const resdist::Tensor* direct[3] = {&dst2, &dsrc2, &dw2};
      const resdist::Tensor* wino[3] = {&dst3, &dsrc3, &dw3};
      const int64_t n = ref[k]->physical_size();
      std::printf("c%-3lld %2lldx%-2lld %-11s onednn %5.2f  direct %5.2f (diff %.0e)  "
                  "winograd%s %5.2f (diff %.0e) ms\n",
                  static_cast<long long>(sh.c), static_cast<long long>(sh.hw),
                  static_cast<long long>(sh.hw), names[k], ms[0], ms[1],
                  MaxRelDiff(direct[k]->data(), ref[k]->data(), n),
                  k == 2 ? "-F2" : (tile == 4 ? "-F4" : "-F2"), ms[2],
                  MaxRelDiff(wino[k]->data(), ref[k]->data(), n));
    }
  }
  std::printf("stride-1 3x3 convs per ResNet-20 step (ms): onednn %.1f direct %.1f winograd %.1f"
              " -> onednn/winograd %.2f\n",
              total[0], total[1], total[2], total[0] / total[2]);
  return 0;
}
