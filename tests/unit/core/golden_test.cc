// Golden comparison with PyTorch: rebuilds each network of tests/golden/make_golden.py with
// resdist's model builder, loads PyTorch's weights by torchvision name, and checks logits, loss,
// every gradient, and parameters and BN buffers after 3 Nesterov SGD steps. Needs no torch:
// the fixtures (tests/fixtures/golden_*.bin) are committed.
//
// Tolerances: both sides compute in float32 but with different summation orders (oneDNN's
// blocked convolutions and reductions vs PyTorch's), so each element carries a rounding error
// of roughly (number of terms) * 2^-24 * (sum of |terms|); that error scales with the
// tensor's magnitude, not with the individual element (a gradient element that cancels to
// ~0 keeps the absolute error of its large terms). Hence the check
//     |resdist - pytorch| <= atol + rtol * |pytorch|,   atol = atol_scale * max|pytorch|
// per tensor, rtol = 1e-4 throughout. atol_scale comes from a measurement, not from resdist's
// results: make_golden.py reruns every network in float64, and PyTorch's own float32 error
// (as atol_scale at rtol 1e-4, worst element of any tensor) is
//                 logits/loss  gradients  after 3 steps
//   cifar_a/b, mlp     < 1e-8     2.6e-7        < 1e-8
//   bottleneck        8.8e-8     8.4e-7        6.5e-7
//   resnet_stem        < 1e-8     2.8e-6        6.0e-5
// Two independent float32 implementations can each be that far off in opposite directions,
// and oneDNN's blocked, vectorised reductions (batch-norm statistics, weight gradients) round
// a few times more than PyTorch's (measured against float64: up to ~3.5x on bottleneck's
// gradients). The bounds are: logits/loss 1e-5; gradients 5e-5; after 3 steps 2e-5, except
// resnet_stem's 5e-4. resnet_stem is ill-conditioned by construction: its layer4 sees 1x1
// maps, so each batch norm there normalises over only the 4 images, which amplifies rounding
// upstream. The after-3-steps bound must stay tight: weight decay 5e-4 moves a parameter by
// only ~3e-4 of its value over 3 steps; at 2e-5, dropping weight decay fails cifar_a/b,
// bottleneck and mlp by 4-10x (checked), while resnet_stem's 5e-4 tier cannot resolve it.
// Bugs of the other kinds (a wrong padding offset, biased running variance, a different
// Nesterov formula, label smoothing ignored) show up at 1e-3..1e-1 of a tensor's scale.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "tests/unit/core/fixture.h"
#include "worker/backend/ops.h"
#include "worker/nn/model.h"
#include "worker/optim/sgd.h"

#ifndef RESDIST_FIXTURE_DIR
#error "RESDIST_FIXTURE_DIR must be defined (the tests/fixtures directory)"
#endif

namespace resdist {
namespace {

using golden::FixtureTensor;
using golden::GoldenFixture;

struct Tolerance {
  double rtol;
  double atol_scale;  // atol = atol_scale * max|ref| over the tensor
};
struct Case {
  std::string name;    // tests/fixtures/golden_<name>.bin
  Tolerance forward;   // logits, loss
  Tolerance grad;      // first-backward gradients
  Tolerance after;     // parameters and buffers after the SGD steps
};
constexpr Tolerance kForward{1e-4, 1e-5};
constexpr Tolerance kGrad{1e-4, 5e-5};
constexpr Tolerance kAfter{1e-4, 2e-5};

// gtest prints the parameter with this when a test fails.
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// Worst element over one group of comparisons, for the summary line and the report.
struct Worst {
  double ratio = 0;  // |a-b| / (atol + rtol*|ref|); > 1 fails
  double abs = 0;
  std::string name;
};

std::string IndexString(const std::vector<int64_t>& dims, int64_t flat) {
  if (dims.empty()) return "[]";
  std::vector<int64_t> idx(dims.size());
  for (size_t d = dims.size(); d-- > 0;) {
    idx[d] = flat % dims[d];
    flat /= dims[d];
  }
  std::string s = "[";
  for (size_t d = 0; d < idx.size(); ++d) {
    if (d) s += ",";
    s += std::to_string(idx[d]);
  }
  return s + "]";
}

::testing::AssertionResult Near(const std::string& name, const float* got, int64_t got_numel,
                                const FixtureTensor& ref, const Tolerance& tol, Worst* worst) {
  if (got_numel != ref.numel())
    return ::testing::AssertionFailure()
           << name << ": resdist has " << got_numel << " elements, PyTorch " << ref.numel();
  double scale = 0;
  for (float r : ref.data) scale = std::max(scale, static_cast<double>(std::fabs(r)));
  const double atol = tol.atol_scale * scale;
  int64_t bad = 0, worst_i = -1;
  double worst_ratio = -1, worst_abs = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const double a = got[i], r = ref.data[i];
    const double err = std::fabs(a - r);
    const double bound = atol + tol.rtol * std::fabs(r);
    const double ratio = std::isfinite(err) ? (bound > 0 ? err / bound : (err > 0 ? INFINITY : 0))
                                            : INFINITY;
    if (!(err <= bound)) ++bad;
    if (ratio > worst_ratio) worst_ratio = ratio, worst_i = i;
    worst_abs = std::max(worst_abs, std::isfinite(err) ? err : INFINITY);
  }
  if (worst && worst_ratio > worst->ratio) *worst = Worst{worst_ratio, worst->abs, name};
  if (worst) worst->abs = std::max(worst->abs, worst_abs);
  if (bad == 0) return ::testing::AssertionSuccess();
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "%s: %lld of %lld elements exceed |a-b| <= atol + rtol*|ref| (atol=%.3g = %.0e * "
                "max|ref| %.4g, rtol=%.0e); worst at %s: resdist=%.9g pytorch=%.9g |diff|=%.3g "
                "(%.1fx the bound)",
                name.c_str(), static_cast<long long>(bad), static_cast<long long>(ref.numel()),
                atol, tol.atol_scale, scale, tol.rtol, IndexString(ref.dims, worst_i).c_str(),
                static_cast<double>(got[worst_i]), static_cast<double>(ref.data[worst_i]),
                std::fabs(static_cast<double>(got[worst_i]) - ref.data[worst_i]), worst_ratio);
  return ::testing::AssertionFailure() << buf;
}

class GoldenTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    path_ = std::string(RESDIST_FIXTURE_DIR) + "/golden_" + GetParam().name + ".bin";
    std::string error;
    fixture_ = GoldenFixture::Load(path_, &error);
    ASSERT_NE(fixture_, nullptr) << error;
  }

  const FixtureTensor& Entry(const std::string& name) {
    std::string error;
    const FixtureTensor* t = fixture_->find(name, &error);
    if (!t) {
      ADD_FAILURE() << error;
      static const FixtureTensor kEmpty;
      return kEmpty;
    }
    return *t;
  }

  double Scalar(const std::string& name) {
    double v = 0;
    std::string error;
    if (!fixture_->scalar(name, &v, &error)) ADD_FAILURE() << error;
    return v;
  }

  ModelSpec Spec() {
    ModelSpec s;
    std::string error;
    if (!fixture_->text("spec.arch", &s.arch, &error)) ADD_FAILURE() << error;
    s.num_classes = static_cast<int64_t>(Scalar("spec.num_classes"));
    s.in_channels = static_cast<int64_t>(Scalar("spec.in_channels"));
    s.height = static_cast<int64_t>(Scalar("spec.height"));
    s.width = static_cast<int64_t>(Scalar("spec.width"));
    s.shortcut = static_cast<char>(static_cast<int>(Scalar("spec.shortcut")));
    s.small_input_stem = Scalar("spec.small_input_stem") != 0;
    s.zero_init_residual = false;  // irrelevant: every parameter is loaded
    s.dropout = static_cast<float>(Scalar("spec.dropout"));
    s.bn_momentum = 0.1f;
    s.base_width = static_cast<int64_t>(Scalar("spec.base_width"));
    s.mlp_width = static_cast<int64_t>(Scalar("spec.mlp_width"));
    s.mlp_hidden = static_cast<int64_t>(Scalar("spec.mlp_hidden"));
    if (fixture_->has("spec.stage_blocks"))
      for (float b : Entry("spec.stage_blocks").data) s.stage_blocks.push_back(static_cast<int>(b));
    return s;
  }

  std::string path_;
  std::unique_ptr<GoldenFixture> fixture_;
};

bool SameShape(const Dims& got, const std::vector<int64_t>& ref) {
  if (ref.empty()) return got.size() == 1 && got[0] == 1;  // torch 0-d num_batches_tracked
  return got == ref;
}

std::string DimsString(const std::vector<int64_t>& d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(d[i]);
  }
  return s + ")";
}

TEST_P(GoldenTest, MatchesPyTorch) {
  const ModelSpec spec = Spec();
  ASSERT_FALSE(HasFailure());
  auto backend = MakeCpuBackend(/*threads=*/1);
  auto built = Model::Build(spec, backend.get(), /*seed=*/1);
  ASSERT_TRUE(built.ok()) << built.status();
  std::unique_ptr<Model> model = std::move(built).value();

  // Structure: the same parameter and buffer names with the same shapes on both sides.
  std::map<std::string, bool> seen;
  for (const auto& [name, t] : fixture_->entries()) {
    (void)t;
    if (name.rfind("param/", 0) == 0 || name.rfind("buffer/", 0) == 0) seen[name] = false;
  }
  for (Parameter* p : model->parameters()) {
    const std::string key = "param/" + p->name;
    ASSERT_TRUE(seen.count(key)) << "resdist parameter " << p->name << " "
                                 << DimsString(p->value.dims()) << " is not in PyTorch's model";
    seen[key] = true;
    const FixtureTensor& ref = Entry(key);
    ASSERT_TRUE(SameShape(p->value.dims(), ref.dims))
        << p->name << ": resdist " << DimsString(p->value.dims()) << ", PyTorch "
        << DimsString(ref.dims);
    std::memcpy(p->value.data(), ref.data.data(), ref.data.size() * sizeof(float));
  }
  for (Buffer* b : model->buffers()) {
    const std::string key = "buffer/" + b->name;
    ASSERT_TRUE(seen.count(key)) << "resdist buffer " << b->name << " is not in PyTorch's model";
    seen[key] = true;
    const FixtureTensor& ref = Entry(key);
    ASSERT_TRUE(SameShape(b->value.dims(), ref.dims))
        << b->name << ": resdist " << DimsString(b->value.dims()) << ", PyTorch "
        << DimsString(ref.dims);
    std::memcpy(b->value.data(), ref.data.data(), ref.data.size() * sizeof(float));
  }
  for (const auto& [key, found] : seen)
    ASSERT_TRUE(found) << "PyTorch's " << key << " has no counterpart in resdist's " << spec.arch;

  const FixtureTensor& input = Entry("input");  // (N, C, H, W)
  ASSERT_EQ(input.dims.size(), 4u);
  const int64_t n = input.dims[0];
  Tensor x(Dims(input.dims));
  std::memcpy(x.data(), input.data.data(), input.data.size() * sizeof(float));
  std::vector<int32_t> labels;  // (N)
  for (float l : Entry("labels").data) labels.push_back(static_cast<int32_t>(l));
  ASSERT_EQ(static_cast<int64_t>(labels.size()), n);

  SgdOptions o;
  o.lr = Scalar("spec.lr");
  o.momentum = Scalar("spec.momentum");
  o.nesterov = Scalar("spec.nesterov") != 0;
  o.weight_decay = Scalar("spec.weight_decay");
  o.decay_bn_and_bias = true;  // torch.optim.SGD decays every parameter
  Sgd sgd(model->parameters(), o);
  const float smoothing = static_cast<float>(Scalar("spec.label_smoothing"));
  const int steps = static_cast<int>(Scalar("spec.sgd_steps"));

  auto loss_op = backend->softmax_cross_entropy();
  Tensor logits_plain, dlogits;  // (N, K)
  Worst w_fwd, w_grad, w_after;
  for (int step = 0; step < steps; ++step) {
    const Tensor& logits = model->forward(x, /*training=*/true);
    backend->to_plain(logits, logits_plain);
    const LossResult r = loss_op->forward_backward(
        logits_plain, std::span<const int32_t>(labels), n, smoothing, &dlogits);
    if (step == 0) {
      EXPECT_TRUE(Near("logits", logits_plain.data(), logits_plain.numel(), Entry("logits"),
                       GetParam().forward, &w_fwd));
      const float loss = static_cast<float>(r.loss);
      EXPECT_TRUE(Near("loss", &loss, 1, Entry("loss"), GetParam().forward, &w_fwd));
    }
    model->backward(dlogits);
    if (step == 0) {
      for (Parameter* p : model->parameters()) {
        EXPECT_TRUE(Near("grad/" + p->name, p->grad.data(), p->grad.numel(),
                         Entry("grad/" + p->name), GetParam().grad, &w_grad));
      }
    }
    sgd.step(o.lr);
  }
  for (Parameter* p : model->parameters())
    EXPECT_TRUE(Near("after3/param/" + p->name, p->value.data(), p->value.numel(),
                     Entry("after3/param/" + p->name), GetParam().after, &w_after));
  for (Buffer* b : model->buffers())
    EXPECT_TRUE(Near("after3/buffer/" + b->name, b->value.data(), b->value.numel(),
                     Entry("after3/buffer/" + b->name), GetParam().after, &w_after));

  for (const auto& [group, w] : {std::pair<const char*, const Worst&>{"forward", w_fwd},
                                 {"gradients", w_grad},
                                 {"after-3-steps", w_after}})
    std::printf("[golden %s] %-13s worst %.3f of the bound (%s), max |diff| %.3g\n",
                GetParam().name.c_str(), group, w.ratio, w.name.c_str(), w.abs);
}

INSTANTIATE_TEST_SUITE_P(PyTorch, GoldenTest,
                         ::testing::Values(Case{"cifar_a", kForward, kGrad, kAfter},
                                           Case{"cifar_b", kForward, kGrad, kAfter},
                                           Case{"cifar_a16", kForward, kGrad, kAfter},
                                           Case{"bottleneck", kForward, kGrad, kAfter},
                                           Case{"resnet_stem", kForward, kGrad, {1e-4, 5e-4}},
                                           Case{"mlp", kForward, kGrad, kAfter}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace resdist
