// The op interface: every compute primitive a layer needs, with explicit forward and backward.
// Layers (worker/nn) call only this interface; backend/cpu (oneDNN) implements it, and a CUDA
// backend implements the same classes. An op object keeps its primitives and the state that
// backward needs (workspaces, saved statistics), created once per input shape and cached.
//
// Conventions for every op:
//  - Activations are (N,C,H,W) or (N,F) tensors in whatever layout the backend prefers; an op
//    accepts any layout of its inputs and reorders only when its primitive needs another one.
//  - Parameters and their gradients are plain (torchvision layouts: OIHW, (O,I), (C)).
//  - Outputs are resized by the op (allocation happens only the first time a shape is seen).
//  - backward() returns gradients by overwriting, never accumulating, unless the name says so.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "worker/tensor/tensor.h"

namespace resdist {

struct Conv2dSpec {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t kernel_h = 1, kernel_w = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  bool bias = false;
  bool input_grad = true;  // false for the first convolution: no gradient w.r.t. the images
};

class Conv2dOp {
 public:
  virtual ~Conv2dOp() = default;
  // src (N,C,H,W); weight plain (O,C,kH,kW); bias plain (O) or null. dst (N,O,Ho,Wo).
  virtual void forward(const Tensor& src, const Tensor& weight, const Tensor* bias,
                       Tensor& dst) = 0;
  // dsrc (N,C,H,W) in src's layout. Requires spec.input_grad.
  virtual void backward_data(const Tensor& ddst, const Tensor& weight, Tensor& dsrc) = 0;
  // dweight plain (O,C,kH,kW), dbias plain (O) or null; `src` is the forward input.
  virtual void backward_weights(const Tensor& src, const Tensor& ddst, Tensor& dweight,
                                Tensor* dbias) = 0;
};

struct BatchNormSpec {
  int64_t channels = 0;
  float eps = 1e-5f;
  float momentum = 0.1f;   // PyTorch convention: running = (1-m)*running + m*batch
  bool fuse_relu = false;  // dst = relu(bn(src)); backward applies the ReLU mask too
  // Synchronized batch norm: sums a float buffer element-wise over all ranks, in place (the
  // same call order on every rank). Empty: per-rank statistics.
  std::function<void(float* data, size_t count)> allreduce_sum;
};

class BatchNormOp {
 public:
  virtual ~BatchNormOp() = default;
  // Training: batch statistics (saved for backward), running averages updated with the
  // unbiased variance as PyTorch does. Inference: running statistics. dst has src's layout.
  virtual void forward(const Tensor& src, const Tensor& gamma, const Tensor& beta,
                       Tensor& running_mean, Tensor& running_var, Tensor& dst,
                       bool training) = 0;
  // After a training forward on the same src. dsrc has src's layout; dgamma/dbeta plain (C).
  virtual void backward(const Tensor& src, const Tensor& ddst, const Tensor& gamma,
                        const Tensor& beta, Tensor& dsrc, Tensor& dgamma, Tensor& dbeta) = 0;
  // dst = relu(bn(src) + residual): a residual block's last batch norm, the skip connection
  // and the block's ReLU in one pass over the output. backward() then takes the gradient at
  // the pre-ReLU sum. Returns false (and does nothing) where the backend has no fused kernel
  // for this layout; the caller then runs forward() and AddOp.
  virtual bool forward_add_relu(const Tensor& src, const Tensor& gamma, const Tensor& beta,
                                Tensor& running_mean, Tensor& running_var,
                                const Tensor& residual, Tensor& dst, bool training) {
    (void)src, (void)gamma, (void)beta, (void)running_mean, (void)running_var, (void)residual,
        (void)dst, (void)training;
    return false;
  }
  // The batch mean and biased variance of the last training forward, plain (C).
  virtual const Tensor& saved_mean() const = 0;
  virtual const Tensor& saved_var() const = 0;
};

class ReluOp {
 public:
  virtual ~ReluOp() = default;
  virtual void forward(const Tensor& src, Tensor& dst) = 0;  // in place allowed
  // Uses the forward output: dsrc = ddst * (dst > 0). In place (dsrc == ddst) allowed.
  virtual void backward(const Tensor& dst, const Tensor& ddst, Tensor& dsrc) = 0;
};

enum class PoolKind { kMax, kAvg };
struct PoolSpec {
  PoolKind kind = PoolKind::kMax;
  int64_t kernel_h = 2, kernel_w = 2;
  int64_t stride_h = 2, stride_w = 2;
  int64_t pad_h = 0, pad_w = 0;
  bool global = false;  // kernel = the whole input plane (global average pooling)
};

class PoolOp {
 public:
  virtual ~PoolOp() = default;
  virtual void forward(const Tensor& src, Tensor& dst, bool training) = 0;
  virtual void backward(const Tensor& ddst, Tensor& dsrc) = 0;
};

struct LinearSpec {
  int64_t in_features = 0;
  int64_t out_features = 0;
  bool bias = true;
  bool input_grad = true;
};

class LinearOp {
 public:
  virtual ~LinearOp() = default;
  // src (N,F) or (N,C,H,W) with C*H*W == F (flattened in NCHW order, as torch.flatten does);
  // weight plain (O,F); dst plain (N,O).
  virtual void forward(const Tensor& src, const Tensor& weight, const Tensor* bias,
                       Tensor& dst) = 0;
  virtual void backward_data(const Tensor& ddst, const Tensor& weight, Tensor& dsrc) = 0;
  virtual void backward_weights(const Tensor& src, const Tensor& ddst, Tensor& dweight,
                                Tensor* dbias) = 0;
};

// Element-wise a + b (the skip connection), optionally followed by ReLU.
class AddOp {
 public:
  virtual ~AddOp() = default;
  virtual void forward(const Tensor& a, const Tensor& b, Tensor& dst) = 0;
  // Gradient for both inputs (they are equal): g = ddst, masked by dst > 0 with fused ReLU.
  virtual void backward(const Tensor& dst, const Tensor& ddst, Tensor& g) = 0;
  // dst = a + b without ReLU (b's layout may differ): sums the gradients of a tensor that
  // fans out to two consumers.
  virtual void sum(const Tensor& a, const Tensor& b, Tensor& dst) = 0;
  // dst = (a + b) * (relu_out > 0): the fan-out gradient sum of a block's input fused with the
  // ReLU backward of the block that produced that input (relu_out is its output). One pass
  // instead of two over the largest tensors of the backward pass.
  virtual void sum_relu_backward(const Tensor& a, const Tensor& b, const Tensor& relu_out,
                                 Tensor& dst) = 0;
};

class DropoutOp {
 public:
  virtual ~DropoutOp() = default;
  // Inverted dropout: keeps each element with probability 1-p and scales it by 1/(1-p).
  // The mask is a pure function of (seed, counter, element index), so runs are reproducible.
  virtual void forward(const Tensor& src, Tensor& dst, float p, uint64_t seed,
                       uint64_t counter, bool training) = 0;
  virtual void backward(const Tensor& ddst, Tensor& dsrc) = 0;
};

// Parameter-free CIFAR shortcut (He et al. 2016, option A): spatial subsampling by `stride`
// and zero channels padded equally on both sides up to out_channels.
class ShortcutAOp {
 public:
  virtual ~ShortcutAOp() = default;
  virtual void forward(const Tensor& src, Tensor& dst, int64_t out_channels,
                       int64_t stride) = 0;
  virtual void backward(const Tensor& ddst, Tensor& dsrc) = 0;
};

struct LossResult {
  double loss = 0;    // mean over the batch (over `valid` samples)
  int64_t correct = 0;  // argmax == label, over valid samples
};

class SoftmaxCrossEntropyOp {
 public:
  virtual ~SoftmaxCrossEntropyOp() = default;
  // logits (N,K) any layout; labels[N]. Only the first `valid` samples count (padded eval
  // batches). dlogits (N,K) plain: gradient of the mean loss, zero for invalid rows.
  virtual LossResult forward_backward(const Tensor& logits, std::span<const int32_t> labels,
                                      int64_t valid, float label_smoothing,
                                      Tensor* dlogits) = 0;
};

// Creates ops and moves data between layouts. One backend per process; it is passed
// explicitly (no global state).
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual int threads() const = 0;
  virtual std::unique_ptr<Conv2dOp> conv2d(const Conv2dSpec& spec) = 0;
  virtual std::unique_ptr<BatchNormOp> batchnorm(const BatchNormSpec& spec) = 0;
  virtual std::unique_ptr<ReluOp> relu() = 0;
  virtual std::unique_ptr<PoolOp> pool(const PoolSpec& spec) = 0;
  virtual std::unique_ptr<LinearOp> linear(const LinearSpec& spec) = 0;
  virtual std::unique_ptr<AddOp> add(bool fuse_relu) = 0;
  virtual std::unique_ptr<DropoutOp> dropout() = 0;
  virtual std::unique_ptr<ShortcutAOp> shortcut_a() = 0;
  virtual std::unique_ptr<SoftmaxCrossEntropyOp> softmax_cross_entropy() = 0;
  // dst = src converted to the plain layout (NCHW / (N,F)).
  virtual void to_plain(const Tensor& src, Tensor& dst) = 0;
  // dst = src converted to `md` (any layout of the same dims).
  virtual void reorder(const Tensor& src, Tensor& dst, const MemDesc& md) = 0;
  // Blocks until all submitted work is done (no-op on synchronous backends).
  virtual void synchronize() = 0;
};

// oneDNN on the CPU with `threads` OpenMP threads (0 = leave the runtime's default).
std::unique_ptr<Backend> MakeCpuBackend(int threads);

// The CPU batch norm whose statistics and backward reductions are summed over ranks through
// spec.allreduce_sum (backend/cpu/sync_batchnorm.cc); CpuBackend::batchnorm returns it when that
// callback is set.
std::unique_ptr<BatchNormOp> MakeCpuSyncBatchNorm(const BatchNormSpec& spec);

}  // namespace resdist
