// The convolution-only ceiling for ResNet-20 training on this machine: times oneDNN's forward,
// backward-data and backward-weights primitives for every convolution shape of ResNet-20 at
// batch 128 (3x32x32 input), in the layouts oneDNN picks (or NHWC), weighted by how often each
// shape occurs. A full training step cannot be faster than this with oneDNN's kernels.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "oneapi/dnnl/dnnl.hpp"

namespace {

using dnnl::algorithm;
using dnnl::memory;
using dnnl::prop_kind;
using tag = memory::format_tag;

struct Shape {
  int64_t ic, oc, hw, stride, count;  // count: occurrences in ResNet-20
};

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"oneDNN convolution-only time of a ResNet-20 training step"};
  std::string layout = "any";
  int64_t batch = 128;
  int repeats = 8;
  app.add_option("--layout", layout, "any (oneDNN's choice, blocked) | nhwc")
      ->check(CLI::IsMember({"any", "nhwc"}));
  app.add_option("--batch", batch, "batch size");
  app.add_option("--repeats", repeats, "timed runs per primitive (median)");
  CLI11_PARSE(app, argc, argv);

  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream strm(eng);
  const tag t = layout == "nhwc" ? tag::acdb : tag::any;
  // conv1 (3->16) is counted as a 16->16 layer: same output work, no backward-data.
  const std::vector<Shape> shapes = {{16, 16, 32, 1, 7}, {16, 32, 32, 2, 1}, {32, 32, 16, 1, 5},
                                     {32, 64, 16, 2, 1}, {64, 64, 8, 1, 5}};
  double total[3] = {0, 0, 0};
  for (const Shape& sh : shapes) {
    const int64_t oh = (sh.hw + 2 - 3) / sh.stride + 1;
    const memory::desc src({batch, sh.ic, sh.hw, sh.hw}, memory::data_type::f32, t);
    const memory::desc dst({batch, sh.oc, oh, oh}, memory::data_type::f32, t);
    const memory::desc w({sh.oc, sh.ic, 3, 3}, memory::data_type::f32, tag::any);
    const memory::dims st{sh.stride, sh.stride}, pl{1, 1};
    const memory::dims pr{(oh - 1) * sh.stride + 3 - sh.hw - 1, (oh - 1) * sh.stride + 3 - sh.hw - 1};
    dnnl::convolution_forward::primitive_desc fpd(
        {prop_kind::forward_training, algorithm::convolution_direct, src, w, dst, st, pl, pr}, eng);
    dnnl::convolution_backward_data::primitive_desc dpd(
        {algorithm::convolution_direct, fpd.src_desc(), w, fpd.dst_desc(), st, pl, pr}, eng, fpd);
    dnnl::convolution_backward_weights::primitive_desc wpd(
        {algorithm::convolution_direct, fpd.src_desc(), w, fpd.dst_desc(), st, pl, pr}, eng, fpd);
    memory s(fpd.src_desc(), eng), wt(fpd.weights_desc(), eng), d(fpd.dst_desc(), eng),
        ds(dpd.diff_src_desc(), eng), dw(wpd.diff_weights_desc(), eng), dd(fpd.dst_desc(), eng);
    for (memory* m : {&s, &wt, &d, &ds, &dw, &dd}) {
      float* p = static_cast<float*>(m->get_data_handle());
      for (size_t i = 0, n = m->get_desc().get_size() / 4; i < n; ++i) p[i] = 0.01f * (i % 13);
    }
    dnnl::convolution_forward f(fpd);
    dnnl::convolution_backward_data bd(dpd);
    dnnl::convolution_backward_weights bw(wpd);
    double ms[3];
    for (int k = 0; k < 3; ++k) {
      std::vector<double> v;
      for (int r = 0; r < repeats + 1; ++r) {
        const double t0 = Now();
        if (k == 0) f.execute(strm, {{DNNL_ARG_SRC, s}, {DNNL_ARG_WEIGHTS, wt}, {DNNL_ARG_DST, d}});
        if (k == 1)
          bd.execute(strm, {{DNNL_ARG_DIFF_DST, dd}, {DNNL_ARG_WEIGHTS, wt}, {DNNL_ARG_DIFF_SRC, ds}});
        if (k == 2)
          bw.execute(strm, {{DNNL_ARG_SRC, s}, {DNNL_ARG_DIFF_DST, dd}, {DNNL_ARG_DIFF_WEIGHTS, dw}});
        strm.wait();
        if (r > 0) v.push_back(Now() - t0);  // the first run warms caches and pages
      }
      std::sort(v.begin(), v.end());
      ms[k] = v[v.size() / 2] * 1e3;
      total[k] += ms[k] * sh.count;
    }
    std::printf("ic%-3lld oc%-3lld %2lldx%-2lld s%lld  fwd %6.2f  bwd_data %6.2f  bwd_weights %6.2f ms  (%s)\n",
                static_cast<long long>(sh.ic), static_cast<long long>(sh.oc),
                static_cast<long long>(sh.hw), static_cast<long long>(sh.hw),
                static_cast<long long>(sh.stride), ms[0], ms[1], ms[2], fpd.impl_info_str());
  }
  const double step = total[0] + total[1] + total[2];
  std::printf("per step: fwd %.1f bwd_data %.1f bwd_weights %.1f = %.1f ms\n", total[0], total[1],
              total[2], step);
  std::printf("conv_only_images_per_s=%.1f\n", batch / (step * 1e-3));
  return 0;
}
