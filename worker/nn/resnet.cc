// Residual blocks (basic, bottleneck, MLP) and the model builder. Block structure and names
// follow torchvision (stride on the 3x3 conv of a bottleneck, "downsample.0/1" projections);
// the CIFAR networks follow He et al. 2016 section 4.2 (16/32/64 channels, option A or B).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/nn/model.h"

namespace resdist {
namespace {

Conv2dSpec ConvSpec(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t pad,
                    bool input_grad = true) {
  Conv2dSpec s;
  s.in_channels = in;
  s.out_channels = out;
  s.kernel_h = s.kernel_w = k;
  s.stride_h = s.stride_w = stride;
  s.pad_h = s.pad_w = pad;
  s.input_grad = input_grad;
  return s;
}

enum class Shortcut { kIdentity, kOptionA, kProjection };

// A residual block y = relu(main(x) + shortcut(x)). When blocks are chained, the ReLU backward
// of block k-1's output and the fan-out sum of block k's input gradient are one fused pass:
// block k writes dx = (dmain + dshortcut) * (x > 0) (its x is block k-1's ReLU output), and
// block k-1 then takes its output gradient as already masked.
class ResidualBlock : public Module {
 public:
  void chain_after(ResidualBlock& previous) {
    mask_input_grad_ = true;
    previous.grad_premasked_ = true;
  }
  virtual BatchNorm2d& last_bn() = 0;

 protected:
  // The gradient at the pre-ReLU sum: g = dy * (y > 0), or dy itself when premasked.
  const Tensor& sum_grad(AddOp& add, const Tensor& dy) {
    if (grad_premasked_) return dy;
    add.backward(y_, dy, g_);
    return g_;
  }
  const Tensor& input_grad(AddOp& add, const Tensor& dmain, const Tensor& dshort) {
    if (mask_input_grad_) add.sum_relu_backward(dmain, dshort, *x_, dx_);
    else add.sum(dmain, dshort, dx_);
    return dx_;
  }

  const Tensor* x_ = nullptr;
  Tensor y_, g_, dx_;

 private:
  bool mask_input_grad_ = false;
  bool grad_premasked_ = false;
};

// out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))
class BasicBlock final : public ResidualBlock {
 public:
  BasicBlock(NnContext* ctx, const std::string& p, int64_t in, int64_t out, int64_t stride,
             Shortcut shortcut, float bn_momentum)
      : ctx_(ctx),
        shortcut_(shortcut),
        out_channels_(out),
        stride_(stride),
        conv1_(ctx, p + ".conv1", ConvSpec(in, out, 3, stride, 1)),
        bn1_(ctx, p + ".bn1", out, /*fuse_relu=*/true, bn_momentum),
        conv2_(ctx, p + ".conv2", ConvSpec(out, out, 3, 1, 1)),
        bn2_(ctx, p + ".bn2", out, false, bn_momentum),
        add_(ctx->backend->add(/*fuse_relu=*/true)) {
    if (shortcut == Shortcut::kProjection) {
      down_conv_ = std::make_unique<Conv2d>(ctx, p + ".downsample.0", ConvSpec(in, out, 1, stride, 0));
      down_bn_ = std::make_unique<BatchNorm2d>(ctx, p + ".downsample.1", out, false, bn_momentum);
    } else if (shortcut == Shortcut::kOptionA) {
      option_a_ = ctx->backend->shortcut_a();
    }
  }

  const Tensor& forward(const Tensor& x, bool training) override {
    x_ = &x;
    const Tensor& z = conv2_.forward(bn1_.forward(conv1_.forward(x, training), training), training);
    const Tensor* s = &x;
    if (shortcut_ == Shortcut::kProjection) {
      s = &down_bn_->forward(down_conv_->forward(x, training), training);
    } else if (shortcut_ == Shortcut::kOptionA) {
      option_a_->forward(x, short_out_, out_channels_, stride_);
      s = &short_out_;
    }
    if (!bn2_.forward_add_relu(z, *s, y_, training)) add_->forward(bn2_.forward(z, training), *s, y_);
    return y_;
  }

  const Tensor& backward(const Tensor& dy) override {
    const Tensor& g = sum_grad(*add_, dy);
    // Shortcut first: its parameters' gradients are ready earlier for the reducer.
    const Tensor* ds = &g;
    if (shortcut_ == Shortcut::kProjection) {
      ds = &down_conv_->backward(down_bn_->backward(g));
    } else if (shortcut_ == Shortcut::kOptionA) {
      option_a_->backward(g, short_grad_);
      ds = &short_grad_;
    }
    const Tensor& dmain = conv1_.backward(bn1_.backward(conv2_.backward(bn2_.backward(g))));
    return input_grad(*add_, dmain, *ds);
  }

  void collect(std::vector<Parameter*>* params, std::vector<Buffer*>* buffers) override {
    conv1_.collect(params, buffers);
    bn1_.collect(params, buffers);
    conv2_.collect(params, buffers);
    bn2_.collect(params, buffers);
    if (down_conv_) {
      down_conv_->collect(params, buffers);
      down_bn_->collect(params, buffers);
    }
  }

  BatchNorm2d& last_bn() override { return bn2_; }

 private:
  NnContext* ctx_;
  Shortcut shortcut_;
  int64_t out_channels_, stride_;
  Conv2d conv1_;
  BatchNorm2d bn1_;
  Conv2d conv2_;
  BatchNorm2d bn2_;
  std::unique_ptr<Conv2d> down_conv_;
  std::unique_ptr<BatchNorm2d> down_bn_;
  std::unique_ptr<ShortcutAOp> option_a_;
  std::unique_ptr<AddOp> add_;
  Tensor short_out_, short_grad_;
};

// torchvision Bottleneck (v1.5): 1x1 reduce, 3x3 (carries the stride), 1x1 expand (x4).
class Bottleneck final : public ResidualBlock {
 public:
  Bottleneck(NnContext* ctx, const std::string& p, int64_t in, int64_t width, int64_t stride,
             bool project, float bn_momentum)
      : conv1_(ctx, p + ".conv1", ConvSpec(in, width, 1, 1, 0)),
        bn1_(ctx, p + ".bn1", width, true, bn_momentum),
        conv2_(ctx, p + ".conv2", ConvSpec(width, width, 3, stride, 1)),
        bn2_(ctx, p + ".bn2", width, true, bn_momentum),
        conv3_(ctx, p + ".conv3", ConvSpec(width, width * 4, 1, 1, 0)),
        bn3_(ctx, p + ".bn3", width * 4, false, bn_momentum),
        add_(ctx->backend->add(true)) {
    if (project) {
      down_conv_ = std::make_unique<Conv2d>(ctx, p + ".downsample.0", ConvSpec(in, width * 4, 1, stride, 0));
      down_bn_ = std::make_unique<BatchNorm2d>(ctx, p + ".downsample.1", width * 4, false, bn_momentum);
    }
  }

  const Tensor& forward(const Tensor& x, bool t) override {
    x_ = &x;
    const Tensor& z =
        conv3_.forward(bn2_.forward(conv2_.forward(bn1_.forward(conv1_.forward(x, t), t), t), t), t);
    const Tensor* s = &x;
    if (down_conv_) s = &down_bn_->forward(down_conv_->forward(x, t), t);
    if (!bn3_.forward_add_relu(z, *s, y_, t)) add_->forward(bn3_.forward(z, t), *s, y_);
    return y_;
  }

  const Tensor& backward(const Tensor& dy) override {
    const Tensor& g = sum_grad(*add_, dy);
    const Tensor* ds = &g;
    if (down_conv_) ds = &down_conv_->backward(down_bn_->backward(g));
    const Tensor& dmain = conv1_.backward(
        bn1_.backward(conv2_.backward(bn2_.backward(conv3_.backward(bn3_.backward(g))))));
    return input_grad(*add_, dmain, *ds);
  }

  void collect(std::vector<Parameter*>* params, std::vector<Buffer*>* buffers) override {
    for (Module* m : std::initializer_list<Module*>{&conv1_, &bn1_, &conv2_, &bn2_, &conv3_, &bn3_})
      m->collect(params, buffers);
    if (down_conv_) {
      down_conv_->collect(params, buffers);
      down_bn_->collect(params, buffers);
    }
  }

  BatchNorm2d& last_bn() override { return bn3_; }

 private:
  Conv2d conv1_;
  BatchNorm2d bn1_;
  Conv2d conv2_;
  BatchNorm2d bn2_;
  Conv2d conv3_;
  BatchNorm2d bn3_;
  std::unique_ptr<Conv2d> down_conv_;
  std::unique_ptr<BatchNorm2d> down_bn_;
  std::unique_ptr<AddOp> add_;
};

// The dense residual MLP block: y = relu(x + fc2(relu(fc1(dropout(x))))), 1024 -> 512 -> 1024.
class MlpBlock final : public Module {
 public:
  MlpBlock(NnContext* ctx, const std::string& p, int64_t width, int64_t hidden, float dropout)
      : dropout_(ctx, dropout, /*stream_id=*/1),
        fc1_(ctx, p + ".fc1", LinearSpec{width, hidden, true, true}),
        relu_(ctx),
        fc2_(ctx, p + ".fc2", LinearSpec{hidden, width, true, true}),
        add_(ctx->backend->add(true)) {}

  const Tensor& forward(const Tensor& x, bool t) override {
    const Tensor& h = fc2_.forward(relu_.forward(fc1_.forward(dropout_.forward(x, t), t), t), t);
    add_->forward(h, x, y_);
    return y_;
  }

  const Tensor& backward(const Tensor& dy) override {
    add_->backward(y_, dy, g_);
    const Tensor& dmain = dropout_.backward(fc1_.backward(relu_.backward(fc2_.backward(g_))));
    add_->sum(dmain, g_, dx_);
    return dx_;
  }

  void collect(std::vector<Parameter*>* params, std::vector<Buffer*>* buffers) override {
    fc1_.collect(params, buffers);
    fc2_.collect(params, buffers);
  }

 private:
  Dropout dropout_;
  Linear fc1_;
  Relu relu_;
  Linear fc2_;
  std::unique_ptr<AddOp> add_;
  Tensor y_, g_, dx_;
};

struct ArchInfo {
  enum Family { kCifar, kImageNetBasic, kImageNetBottleneck, kMlp } family;
  std::vector<int> blocks;  // per stage
};

bool LookupArch(const std::string& arch, ArchInfo* info) {
  static const std::vector<std::pair<std::string, ArchInfo>> kTable = {
      {"resnet20", {ArchInfo::kCifar, {3, 3, 3}}},
      {"resnet32", {ArchInfo::kCifar, {5, 5, 5}}},
      {"resnet44", {ArchInfo::kCifar, {7, 7, 7}}},
      {"resnet56", {ArchInfo::kCifar, {9, 9, 9}}},
      {"resnet110", {ArchInfo::kCifar, {18, 18, 18}}},
      {"resnet18", {ArchInfo::kImageNetBasic, {2, 2, 2, 2}}},
      {"resnet34", {ArchInfo::kImageNetBasic, {3, 4, 6, 3}}},
      {"resnet50", {ArchInfo::kImageNetBottleneck, {3, 4, 6, 3}}},
      {"resnet101", {ArchInfo::kImageNetBottleneck, {3, 4, 23, 3}}},
      {"resnet152", {ArchInfo::kImageNetBottleneck, {3, 8, 36, 3}}},
      {"resmlp", {ArchInfo::kMlp, {}}},
  };
  for (const auto& [name, i] : kTable)
    if (name == arch) {
      *info = i;
      return true;
    }
  return false;
}

// Deterministic per-parameter RNG: depends on the seed and the parameter's name only, so the
// initial state does not change when unrelated layers are added.
std::mt19937_64 ParamRng(uint64_t seed, const std::string& name) {
  return std::mt19937_64(seed ^ (std::hash<std::string>{}(name) * 0x9E3779B97F4A7C15ull));
}

void FillNormal(Tensor& t, float stddev, std::mt19937_64 rng) {
  std::normal_distribution<float> d(0.f, stddev);
  float* p = t.data();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = d(rng);
}

void FillUniform(Tensor& t, float bound, std::mt19937_64 rng) {
  std::uniform_real_distribution<float> d(-bound, bound);
  float* p = t.data();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = d(rng);
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

const std::vector<std::string>& KnownArchitectures() {
  static const std::vector<std::string> kNames = {
      "resnet20", "resnet32", "resnet44",  "resnet56",  "resnet110", "resnet18",
      "resnet34", "resnet50", "resnet101", "resnet152", "resmlp"};
  return kNames;
}

Status ValidateModelSpec(const ModelSpec& s) {
  ArchInfo info;
  if (!LookupArch(s.arch, &info))
    return absl::InvalidArgumentError(absl::StrCat("model.arch: unknown architecture '", s.arch,
                                                   "'; expected one of ",
                                                   absl::StrJoin(KnownArchitectures(), ", ")));
  if (s.num_classes < 2 || s.num_classes > 100000)
    return absl::InvalidArgumentError(
        absl::StrCat("model.num_classes: ", s.num_classes, " is out of range; expected 2..100000"));
  if (s.in_channels < 1 || s.in_channels > 1024)
    return absl::InvalidArgumentError(
        absl::StrCat("model.in_channels: ", s.in_channels, " is out of range; expected 1..1024"));
  if (s.height < 1 || s.width < 1 || s.height > 4096 || s.width > 4096)
    return absl::InvalidArgumentError(absl::StrCat("model input size ", s.height, "x", s.width,
                                                   " is out of range; expected 1..4096 per side"));
  if (s.shortcut != 'A' && s.shortcut != 'B')
    return absl::InvalidArgumentError(absl::StrCat("model.shortcut: '", std::string(1, s.shortcut),
                                                   "' is not a shortcut option; expected A or B"));
  if (!(s.dropout >= 0.f && s.dropout < 1.f))
    return absl::InvalidArgumentError(
        absl::StrCat("model.dropout: ", s.dropout, " is outside [0, 1)"));
  if (!(s.bn_momentum > 0.f && s.bn_momentum <= 1.f))
    return absl::InvalidArgumentError(
        absl::StrCat("model.bn_momentum: ", s.bn_momentum, " is outside (0, 1]"));
  if (!s.stage_blocks.empty()) {
    if (info.family == ArchInfo::kMlp || s.stage_blocks.size() != info.blocks.size())
      return absl::InvalidArgumentError(absl::StrCat(
          "model.stage_blocks: ", s.arch, " takes ", info.blocks.size(), " stage counts, got ",
          s.stage_blocks.size()));
    for (size_t i = 0; i < s.stage_blocks.size(); ++i)
      if (s.stage_blocks[i] < 1 || s.stage_blocks[i] > 1000)
        return absl::InvalidArgumentError(absl::StrCat("model.stage_blocks[", i, "]: ",
                                                       s.stage_blocks[i], " is outside 1..1000"));
  }
  if (s.base_width < 0 || s.base_width > 4096)
    return absl::InvalidArgumentError(
        absl::StrCat("model.base_width: ", s.base_width, " is outside 0..4096 (0 = default)"));
  if (s.mlp_width < 1 || s.mlp_hidden < 1 || s.mlp_width > 65536 || s.mlp_hidden > 65536)
    return absl::InvalidArgumentError(absl::StrCat("model.mlp_width/mlp_hidden: ", s.mlp_width,
                                                   "/", s.mlp_hidden, " are outside 1..65536"));
  // Every stride-2 stage must receive at least a 2x2 map, or downsampling is meaningless.
  int downsamplings = 0;
  int64_t min_side = 1;
  switch (info.family) {
    case ArchInfo::kCifar: downsamplings = 2; break;
    case ArchInfo::kImageNetBasic:
    case ArchInfo::kImageNetBottleneck: downsamplings = s.small_input_stem ? 3 : 5; break;
    case ArchInfo::kMlp: downsamplings = 0; break;
  }
  min_side = int64_t{1} << downsamplings;
  if (s.height < min_side || s.width < min_side)
    return absl::InvalidArgumentError(absl::StrCat(
        "model ", s.arch, s.small_input_stem ? " (small-input stem)" : "", " cannot take ",
        s.height, "x", s.width, " images: it downsamples ", downsamplings,
        " times and needs at least ", min_side, "x", min_side));
  if (info.family == ArchInfo::kMlp && s.in_channels * s.height * s.width > (int64_t{1} << 24))
    return absl::InvalidArgumentError(absl::StrCat(
        "model resmlp: input of ", s.in_channels * s.height * s.width,
        " features is too large; expected at most 16777216"));
  return absl::OkStatus();
}

Model::Model(const ModelSpec& spec, Backend* backend, uint64_t seed) : spec_(spec) {
  ctx_.backend = backend;
  ctx_.seed = seed;
}

StatusOr<std::unique_ptr<Model>> Model::Build(
    const ModelSpec& spec, Backend* backend, uint64_t seed,
    std::function<void(float* data, size_t count)> bn_allreduce_sum) {
  RETURN_IF_ERROR(ValidateModelSpec(spec));
  ArchInfo info;
  LookupArch(spec.arch, &info);
  if (!spec.stage_blocks.empty()) info.blocks = spec.stage_blocks;
  std::unique_ptr<Model> m(new Model(spec, backend, seed));
  NnContext* ctx = &m->ctx_;
  ctx->bn_allreduce_sum = std::move(bn_allreduce_sum);
  Sequential& net = m->net_;
  const float mom = spec.bn_momentum;
  std::vector<ResidualBlock*> blocks;
  int64_t features = 0;

  if (info.family == ArchInfo::kCifar) {
    const int64_t w0 = spec.base_width > 0 ? spec.base_width : 16;
    net.add(std::make_unique<Conv2d>(ctx, "conv1", ConvSpec(spec.in_channels, w0, 3, 1, 1, false)));
    net.add(std::make_unique<BatchNorm2d>(ctx, "bn1", w0, true, mom));
    int64_t in = w0;
    const int64_t widths[3] = {w0, 2 * w0, 4 * w0};
    for (int stage = 0; stage < 3; ++stage) {
      for (int b = 0; b < info.blocks[stage]; ++b) {
        const int64_t stride = (stage > 0 && b == 0) ? 2 : 1;
        const int64_t out = widths[stage];
        Shortcut sc = Shortcut::kIdentity;
        if (stride != 1 || in != out)
          sc = spec.shortcut == 'A' ? Shortcut::kOptionA : Shortcut::kProjection;
        auto block = std::make_unique<BasicBlock>(
            ctx, absl::StrCat("layer", stage + 1, ".", b), in, out, stride, sc, mom);
        blocks.push_back(block.get());
        net.add(std::move(block));
        in = out;
      }
    }
    features = in;
    PoolSpec gap;
    gap.kind = PoolKind::kAvg;
    gap.global = true;
    net.add(std::make_unique<Pool2d>(ctx, gap));
  } else if (info.family == ArchInfo::kMlp) {
    const int64_t f = spec.in_channels * spec.height * spec.width;
    net.add(std::make_unique<Linear>(ctx, "input", LinearSpec{f, spec.mlp_width, true, false}));
    net.add(std::make_unique<Relu>(ctx));
    net.add(std::make_unique<MlpBlock>(ctx, "block", spec.mlp_width, spec.mlp_hidden, spec.dropout));
    features = spec.mlp_width;
  } else {
    const int64_t w0 = spec.base_width > 0 ? spec.base_width : 64;
    if (spec.small_input_stem) {
      net.add(std::make_unique<Conv2d>(ctx, "conv1", ConvSpec(spec.in_channels, w0, 3, 1, 1, false)));
      net.add(std::make_unique<BatchNorm2d>(ctx, "bn1", w0, true, mom));
    } else {
      net.add(std::make_unique<Conv2d>(ctx, "conv1", ConvSpec(spec.in_channels, w0, 7, 2, 3, false)));
      net.add(std::make_unique<BatchNorm2d>(ctx, "bn1", w0, true, mom));
      PoolSpec mp;
      mp.kind = PoolKind::kMax;
      mp.kernel_h = mp.kernel_w = 3;
      mp.stride_h = mp.stride_w = 2;
      mp.pad_h = mp.pad_w = 1;
      net.add(std::make_unique<Pool2d>(ctx, mp));
    }
    const bool bottleneck = info.family == ArchInfo::kImageNetBottleneck;
    int64_t in = w0;
    const int64_t widths[4] = {w0, 2 * w0, 4 * w0, 8 * w0};
    for (int stage = 0; stage < 4; ++stage) {
      for (int b = 0; b < info.blocks[stage]; ++b) {
        const int64_t stride = (stage > 0 && b == 0) ? 2 : 1;
        const std::string name = absl::StrCat("layer", stage + 1, ".", b);
        if (bottleneck) {
          const int64_t out = widths[stage] * 4;
          auto block = std::make_unique<Bottleneck>(ctx, name, in, widths[stage], stride,
                                                    stride != 1 || in != out, mom);
          blocks.push_back(block.get());
          net.add(std::move(block));
          in = out;
        } else {
          const int64_t out = widths[stage];
          auto block = std::make_unique<BasicBlock>(
              ctx, name, in, out, stride,
              (stride != 1 || in != out) ? Shortcut::kProjection : Shortcut::kIdentity, mom);
          blocks.push_back(block.get());
          net.add(std::move(block));
          in = out;
        }
      }
    }
    features = in;
    PoolSpec gap;
    gap.kind = PoolKind::kAvg;
    gap.global = true;
    net.add(std::make_unique<Pool2d>(ctx, gap));
  }
  net.add(std::make_unique<Linear>(ctx, "fc", LinearSpec{features, spec.num_classes, true, true}));
  net.collect(&m->params_, &m->buffers_);

  // Initialization (torchvision): He-normal (fan_out, ReLU gain) for convolutions, He-normal
  // (fan_in) for hidden dense layers, PyTorch's default uniform for the classifier; BN scale 1,
  // shift 0 (scale 0 for the last BN of each block when zero_init_residual).
  for (Parameter* p : m->params_) {
    const Dims d = p->value.dims();
    if (d.size() == 4 && EndsWith(p->name, ".weight")) {
      const float fan_out = static_cast<float>(d[0] * d[2] * d[3]);
      FillNormal(p->value, std::sqrt(2.f / fan_out), ParamRng(seed, p->name));
    } else if (d.size() == 2) {
      const float fan_in = static_cast<float>(d[1]);
      if (p->name == "fc.weight")
        FillUniform(p->value, 1.f / std::sqrt(fan_in), ParamRng(seed, p->name));
      else
        FillNormal(p->value, std::sqrt(2.f / fan_in), ParamRng(seed, p->name));
    } else if (p->name == "fc.bias") {
      const float fan_in = static_cast<float>(features);
      FillUniform(p->value, 1.f / std::sqrt(fan_in), ParamRng(seed, p->name));
    }
  }
  if (spec.zero_init_residual)
    for (ResidualBlock* b : blocks) b->last_bn().gamma().value.zero();
  for (size_t i = 1; i < blocks.size(); ++i) blocks[i]->chain_after(*blocks[i - 1]);
  return m;
}

const Tensor& Model::forward(const Tensor& images, bool training) {
  if (training) ++ctx_.step;
  return net_.forward(images, training);
}

void Model::backward(const Tensor& dlogits) { net_.backward(dlogits); }

Parameter* Model::find_parameter(const std::string& name) const {
  for (Parameter* p : params_)
    if (p->name == name) return p;
  return nullptr;
}

Buffer* Model::find_buffer(const std::string& name) const {
  for (Buffer* b : buffers_)
    if (b->name == name) return b;
  return nullptr;
}

int64_t Model::num_parameters() const {
  int64_t n = 0;
  for (const Parameter* p : params_) n += p->value.numel();
  return n;
}

}  // namespace resdist
