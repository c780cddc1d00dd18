// Model builder: CIFAR ResNet-20/32/44/56/110, ImageNet ResNet-18/34/50/101/152 and the dense
// residual MLP, with torchvision parameter names so state moves to and from PyTorch.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/nn/module.h"

namespace resdist {

struct ModelSpec {
  std::string arch = "resnet20";  // resnet{20,32,44,56,110} | resnet{18,34,50,101,152} | resmlp
  int64_t num_classes = 10;
  int64_t in_channels = 3;
  int64_t height = 32;
  int64_t width = 32;
  char shortcut = 'A';             // CIFAR ResNets: 'A' (parameter-free) or 'B' (1x1 conv + BN)
  bool small_input_stem = false;   // ImageNet ResNets: 3x3 stride-1 stem conv, no max pool
  bool zero_init_residual = false; // last BN scale of each residual block starts at 0
  float dropout = 0.1f;            // resmlp only
  float bn_momentum = 0.1f;
  // Structure overrides for small test networks (empty / 0 = the architecture's own):
  std::vector<int> stage_blocks;  // blocks per stage; 3 entries (CIFAR) or 4 (ImageNet)
  int64_t base_width = 0;         // first-stage width: 16 (CIFAR) or 64 (ImageNet) by default
  int64_t mlp_width = 1024;       // resmlp: Dense width, block Dense(hidden) inside
  int64_t mlp_hidden = 512;
};

// The architectures Model::Build accepts, for error messages and --help.
const std::vector<std::string>& KnownArchitectures();

// Checks every field; the message names the bad field, its value and what is allowed.
Status ValidateModelSpec(const ModelSpec& spec);

class Model {
 public:
  // `bn_allreduce_sum` (optional) makes every batch norm synchronized across ranks: it sums a
  // float buffer over all ranks in place (NnContext::bn_allreduce_sum).
  static StatusOr<std::unique_ptr<Model>> Build(
      const ModelSpec& spec, Backend* backend, uint64_t seed,
      std::function<void(float* data, size_t count)> bn_allreduce_sum = {});

  // images: plain (N, C, H, W) float. Returns logits (N, num_classes), valid until the next
  // forward. A training forward advances the dropout step counter.
  const Tensor& forward(const Tensor& images, bool training);
  // dlogits: (N, num_classes). Writes every parameter's gradient.
  void backward(const Tensor& dlogits);

  const ModelSpec& spec() const { return spec_; }
  NnContext& context() { return ctx_; }
  // In registration (forward) order; backward produces gradients in roughly reverse order.
  const std::vector<Parameter*>& parameters() const { return params_; }
  const std::vector<Buffer*>& buffers() const { return buffers_; }
  Parameter* find_parameter(const std::string& name) const;
  Buffer* find_buffer(const std::string& name) const;
  int64_t num_parameters() const;

 private:
  Model(const ModelSpec& spec, Backend* backend, uint64_t seed);

  ModelSpec spec_;
  NnContext ctx_;
  Sequential net_;
  std::vector<Parameter*> params_;
  std::vector<Buffer*> buffers_;
};

}  // namespace resdist
