// Model builder: structure, torchvision parameter names and counts, initialization, and the
// validation of specs the builder cannot take.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "worker/nn/model.h"

namespace resdist {
namespace {

class ModelTest : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> backend_ = MakeCpuBackend(1);

  std::unique_ptr<Model> Build(const ModelSpec& s) {
    auto m = Model::Build(s, backend_.get(), 1);
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? std::move(*m) : nullptr;
  }
};

// Parameter counts of the reference implementations: torchvision for the ImageNet family
// (1000 classes, 224x224), He et al. / the common CIFAR re-implementation for option A.
TEST_F(ModelTest, ParameterCountsMatchReferenceImplementations) {
  struct Case {
    std::string arch;
    int64_t classes;
    int64_t expected;
  };
  for (const Case& c : std::vector<Case>{{"resnet18", 1000, 11689512},
                                         {"resnet34", 1000, 21797672},
                                         {"resnet50", 1000, 25557032},
                                         {"resnet20", 10, 269722},
                                         {"resnet56", 10, 853018},
                                         {"resnet110", 10, 1727962}}) {
    ModelSpec s;
    s.arch = c.arch;
    s.num_classes = c.classes;
    s.height = s.width = c.arch == "resnet20" || c.arch == "resnet56" || c.arch == "resnet110" ? 32 : 64;
    auto m = Build(s);
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(m->num_parameters(), c.expected) << c.arch;
  }
}

TEST_F(ModelTest, TorchvisionNames) {
  ModelSpec s;
  s.arch = "resnet18";
  s.num_classes = 10;
  s.height = s.width = 64;
  auto m = Build(s);
  for (const char* name : {"conv1.weight", "bn1.weight", "bn1.bias", "layer1.0.conv1.weight",
                           "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight",
                           "layer4.1.bn2.bias", "fc.weight", "fc.bias"})
    EXPECT_NE(m->find_parameter(name), nullptr) << name;
  for (const char* name : {"bn1.running_mean", "layer1.0.bn2.running_var",
                           "layer3.0.downsample.1.num_batches_tracked"})
    EXPECT_NE(m->find_buffer(name), nullptr) << name;
  EXPECT_EQ(m->find_parameter("layer1.0.downsample.0.weight"), nullptr);
  EXPECT_EQ(m->find_parameter("conv1.weight")->value.dims(), (Dims{64, 3, 7, 7}));
  EXPECT_EQ(m->find_parameter("fc.weight")->value.dims(), (Dims{10, 512}));
  std::set<std::string> unique;
  for (Parameter* p : m->parameters()) EXPECT_TRUE(unique.insert(p->name).second) << p->name;
}

TEST_F(ModelTest, CifarShortcutOptions) {
  ModelSpec s;
  s.arch = "resnet20";
  s.shortcut = 'A';
  auto a = Build(s);
  EXPECT_EQ(a->find_parameter("layer2.0.downsample.0.weight"), nullptr);
  s.shortcut = 'B';
  auto b = Build(s);
  ASSERT_NE(b->find_parameter("layer2.0.downsample.0.weight"), nullptr);
  EXPECT_EQ(b->find_parameter("layer2.0.downsample.0.weight")->value.dims(), (Dims{32, 16, 1, 1}));
  EXPECT_EQ(b->find_parameter("layer1.0.downsample.0.weight"), nullptr);  // shape unchanged
  EXPECT_EQ(b->num_parameters() - a->num_parameters(), 32 * 16 + 2 * 32 + 64 * 32 + 2 * 64);
}

TEST_F(ModelTest, BottleneckStructure) {
  ModelSpec s;
  s.arch = "resnet50";
  s.num_classes = 7;
  s.height = s.width = 32;
  s.small_input_stem = true;
  auto m = Build(s);
  EXPECT_EQ(m->find_parameter("conv1.weight")->value.dims(), (Dims{64, 3, 3, 3}));
  EXPECT_EQ(m->find_parameter("layer1.0.conv3.weight")->value.dims(), (Dims{256, 64, 1, 1}));
  EXPECT_EQ(m->find_parameter("layer1.0.downsample.0.weight")->value.dims(), (Dims{256, 64, 1, 1}));
  EXPECT_EQ(m->find_parameter("layer2.0.conv2.weight")->value.dims(), (Dims{128, 128, 3, 3}));
  EXPECT_EQ(m->find_parameter("fc.weight")->value.dims(), (Dims{7, 2048}));
}

TEST_F(ModelTest, ForwardShapesForAnyChannelCountAndSize) {
  struct Case {
    std::string arch;
    int64_t c, h, w, classes;
    bool small;
  };
  for (const Case& c : std::vector<Case>{{"resnet20", 1, 28, 28, 10, false},
                                         {"resnet20", 5, 17, 9, 3, false},
                                         {"resnet18", 3, 40, 33, 4, true},
                                         {"resnet18", 2, 64, 64, 4, false},
                                         {"resmlp", 1, 28, 28, 10, false}}) {
    ModelSpec s;
    s.arch = c.arch;
    s.in_channels = c.c;
    s.height = c.h;
    s.width = c.w;
    s.num_classes = c.classes;
    s.small_input_stem = c.small;
    if (c.arch == "resnet18") s.base_width = 8;  // keep the test light
    auto m = Build(s);
    ASSERT_NE(m, nullptr);
    Tensor x(Dims{3, c.c, c.h, c.w});
    for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = std::sin(0.1f * i);
    const Tensor& y = m->forward(x, true);
    EXPECT_EQ(y.dims(), (Dims{3, c.classes})) << c.arch;
    Tensor yp;
    backend_->to_plain(y, yp);
    for (int64_t i = 0; i < yp.numel(); ++i) EXPECT_TRUE(std::isfinite(yp.data()[i]));
  }
}

TEST_F(ModelTest, HeInitializationAndZeroInitResidual) {
  ModelSpec s;
  s.arch = "resnet20";
  s.zero_init_residual = true;
  auto m = Build(s);
  const Parameter* w = m->find_parameter("layer3.0.conv1.weight");  // (64, 32, 3, 3)
  double sq = 0;
  for (int64_t i = 0; i < w->value.numel(); ++i) sq += w->value.data()[i] * w->value.data()[i];
  const double stddev = std::sqrt(sq / w->value.numel());
  EXPECT_NEAR(stddev, std::sqrt(2.0 / (64 * 9)), 0.01);  // fan_out, ReLU gain
  EXPECT_EQ(m->find_parameter("layer1.0.bn2.weight")->value.data()[0], 0.f);
  EXPECT_EQ(m->find_parameter("layer1.0.bn1.weight")->value.data()[0], 1.f);
  // Same seed, same initial state; different seed, different state.
  auto again = Model::Build(s, backend_.get(), 1).value();
  auto other = Model::Build(s, backend_.get(), 2).value();
  const Parameter* w2 = again->find_parameter("layer3.0.conv1.weight");
  const Parameter* w3 = other->find_parameter("layer3.0.conv1.weight");
  EXPECT_EQ(0, std::memcmp(w->value.data(), w2->value.data(), w->value.bytes()));
  EXPECT_NE(0, std::memcmp(w->value.data(), w3->value.data(), w->value.bytes()));
}

TEST_F(ModelTest, InvalidSpecsNameTheFieldAndWhatIsAllowed) {
  struct Case {
    std::function<void(ModelSpec&)> mutate;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {[](ModelSpec& s) { s.arch = "resnet21"; }, "model.arch: unknown architecture 'resnet21'; expected one of resnet20"},
      {[](ModelSpec& s) { s.num_classes = 1; }, "model.num_classes: 1 is out of range"},
      {[](ModelSpec& s) { s.in_channels = 0; }, "model.in_channels: 0 is out of range"},
      {[](ModelSpec& s) { s.shortcut = 'C'; }, "model.shortcut: 'C' is not a shortcut option; expected A or B"},
      {[](ModelSpec& s) { s.arch = "resmlp"; s.dropout = 1.f; }, "model.dropout: 1 is outside [0, 1)"},
      {[](ModelSpec& s) { s.dropout = -0.1f; }, "model.dropout: -0.1 is outside [0, 1)"},
      {[](ModelSpec& s) { s.height = 3; }, "cannot take 3x32 images: it downsamples 2 times and needs at least 4x4"},
      {[](ModelSpec& s) { s.arch = "resnet18"; s.height = s.width = 16; }, "model resnet18 cannot take 16x16 images"},
      {[](ModelSpec& s) { s.stage_blocks = {1, 1}; }, "model.stage_blocks: resnet20 takes 3 stage counts, got 2"},
      {[](ModelSpec& s) { s.width = -5; }, "model input size 32x-5 is out of range"},
  };
  for (const Case& c : cases) {
    ModelSpec s;
    c.mutate(s);
    auto m = Model::Build(s, backend_.get(), 1);
    ASSERT_FALSE(m.ok()) << c.expected;
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(m.status().message()).find(c.expected), std::string::npos)
        << "got: " << m.status().message() << "\nexpected to contain: " << c.expected;
  }
  ModelSpec small;
  small.arch = "resnet18";
  small.small_input_stem = true;
  small.height = small.width = 16;
  EXPECT_TRUE(Model::Build(small, backend_.get(), 1).ok());
}

// The composition of blocks (skip connections, fan-out gradient sums, fused BN+ReLU) is
// checked end to end against PyTorch in golden_test.cc; finite differences through a whole
// network with batch norm on a tiny batch are dominated by fp32 noise and ReLU kinks.

}  // namespace
}  // namespace resdist
