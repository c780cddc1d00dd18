// Layers and the Module interface: a module owns its parameters (plain torchvision layouts),
// its outputs and its input gradients, all allocated once per shape; forward/backward call
// only the op interface (backend/ops.h), never a device API.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "worker/backend/ops.h"
#include "worker/tensor/tensor.h"

namespace resdist {

struct Parameter {
  std::string name;  // torchvision name, e.g. "layer1.0.conv1.weight"
  Tensor value;      // plain layout (OIHW, (O,I), (C))
  Tensor grad;       // same dims, plain; overwritten by every backward
  bool is_bn_or_bias = false;  // excluded from weight decay when the optimizer says so
};

struct Buffer {
  std::string name;  // "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked"
  Tensor value;      // plain (C) or (1)
};

// What every module of one model shares: the backend, the hook that the gradient reducer
// uses to start all-reducing a parameter as soon as its gradient exists, and the RNG seed
// and step counter for dropout.
struct NnContext {
  Backend* backend = nullptr;
  std::function<void(Parameter&)> on_grad_ready;  // may be empty
  // Sums a float buffer over all ranks in place: batch-norm layers built with it set use
  // synchronized (global) batch statistics. Empty: per-rank statistics.
  std::function<void(float* data, size_t count)> bn_allreduce_sum;
  uint64_t seed = 0;
  uint64_t step = 0;  // incremented by the model at every training forward

  void grad_ready(Parameter& p) const {
    if (on_grad_ready) on_grad_ready(p);
  }
};

class Module {
 public:
  virtual ~Module() = default;
  // Returns the module's output, which stays valid until its next forward. The input must
  // stay unchanged until backward (modules keep a pointer to it).
  virtual const Tensor& forward(const Tensor& x, bool training) = 0;
  // Takes the gradient of the output; returns the gradient of the input (an empty tensor
  // when the module computes no input gradient). Parameter gradients are written and
  // reported through NnContext::grad_ready in the order they are produced.
  virtual const Tensor& backward(const Tensor& dy) = 0;
  // Appends parameters and buffers in forward (registration) order.
  virtual void collect(std::vector<Parameter*>* params, std::vector<Buffer*>* buffers) {
    (void)params, (void)buffers;
  }
};

// Ordered container: forward runs children first to last, backward last to first.
class Sequential final : public Module {
 public:
  void add(std::unique_ptr<Module> m) { children_.push_back(std::move(m)); }
  const Tensor& forward(const Tensor& x, bool training) override;
  const Tensor& backward(const Tensor& dy) override;
  void collect(std::vector<Parameter*>* params, std::vector<Buffer*>* buffers) override;
  size_t size() const { return children_.size(); }

 private:
  std::vector<std::unique_ptr<Module>> children_;
};

// A layer with a weight and an optional bias over an op with the Conv2dOp / LinearOp verbs
// (forward, backward_data, backward_weights): the convolution and the fully connected layer.
template <typename Op>
class WeightedLayer : public Module {
 public:
  const Tensor& forward(const Tensor& x, bool training) override;
  const Tensor& backward(const Tensor& dy) override;
  void collect(std::vector<Parameter*>* params, std::vector<Buffer*>* buffers) override;
  Parameter& weight() { return weight_; }

 protected:
  // weight_dims: torchvision layout; bias_size 0 = no bias.
  WeightedLayer(NnContext* ctx, const std::string& prefix, std::unique_ptr<Op> op,
                const Dims& weight_dims, int64_t bias_size, bool input_grad);

 private:
  NnContext* ctx_;
  std::unique_ptr<Op> op_;
  bool has_bias_, input_grad_;
  Parameter weight_;  // (O, C, kH, kW) or (O, F)
  Parameter bias_;    // (O), only with a bias
  const Tensor* x_ = nullptr;
  Tensor y_, dx_;
};

class Conv2d final : public WeightedLayer<Conv2dOp> {
 public:
  Conv2d(NnContext* ctx, const std::string& prefix, const Conv2dSpec& spec);
  const Conv2dSpec& spec() const { return spec_; }

 private:
  Conv2dSpec spec_;
};

class BatchNorm2d final : public Module {
 public:
  BatchNorm2d(NnContext* ctx, const std::string& prefix, int64_t channels, bool fuse_relu,
              float momentum = 0.1f, float eps = 1e-5f);
  const Tensor& forward(const Tensor& x, bool training) override;
  const Tensor& backward(const Tensor& dy) override;
  void collect(std::vector<Parameter*>* params, std::vector<Buffer*>* buffers) override;
  Parameter& gamma() { return gamma_; }
  // dst = relu(bn(x) + residual) in one pass where the backend can (returns false otherwise,
  // doing nothing); backward() then takes the gradient at the pre-ReLU sum.
  bool forward_add_relu(const Tensor& x, const Tensor& residual, Tensor& dst, bool training);

 private:
  NnContext* ctx_;
  std::unique_ptr<BatchNormOp> op_;
  Parameter gamma_, beta_;                            // (C): "weight", "bias"
  Buffer running_mean_, running_var_, num_batches_;   // (C), (C), (1)
  const Tensor* x_ = nullptr;
  Tensor y_, dx_;
};

class Relu final : public Module {
 public:
  explicit Relu(NnContext* ctx) : op_(ctx->backend->relu()) {}
  const Tensor& forward(const Tensor& x, bool training) override;
  const Tensor& backward(const Tensor& dy) override;

 private:
  std::unique_ptr<ReluOp> op_;
  Tensor y_, dx_;
};

class Pool2d final : public Module {
 public:
  Pool2d(NnContext* ctx, const PoolSpec& spec) : op_(ctx->backend->pool(spec)) {}
  const Tensor& forward(const Tensor& x, bool training) override;
  const Tensor& backward(const Tensor& dy) override;

 private:
  std::unique_ptr<PoolOp> op_;
  Tensor y_, dx_;
};

// Fully connected layer on (N,F) or (N,C,H,W) input (flattened in NCHW order).
class Linear final : public WeightedLayer<LinearOp> {
 public:
  Linear(NnContext* ctx, const std::string& prefix, const LinearSpec& spec);
};

class Dropout final : public Module {
 public:
  Dropout(NnContext* ctx, float p, uint64_t stream_id)
      : ctx_(ctx), p_(p), stream_id_(stream_id), op_(ctx->backend->dropout()) {}
  const Tensor& forward(const Tensor& x, bool training) override;
  const Tensor& backward(const Tensor& dy) override;

 private:
  NnContext* ctx_;
  float p_;
  uint64_t stream_id_;  // distinguishes dropout layers sharing a seed
  std::unique_ptr<DropoutOp> op_;
  Tensor y_, dx_;
};

}  // namespace resdist
