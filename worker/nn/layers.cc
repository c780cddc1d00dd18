// Basic layers over the op interface. Each layer keeps a pointer to its forward input for
// backward and owns its output and input-gradient tensors (allocated once per shape).
#include "worker/nn/module.h"

namespace resdist {

const Tensor& Sequential::forward(const Tensor& x, bool training) {
  const Tensor* cur = &x;
  for (auto& m : children_) cur = &m->forward(*cur, training);
  return *cur;
}

const Tensor& Sequential::backward(const Tensor& dy) {
  const Tensor* cur = &dy;
  for (auto it = children_.rbegin(); it != children_.rend(); ++it) cur = &(*it)->backward(*cur);
  return *cur;
}

void Sequential::collect(std::vector<Parameter*>* params, std::vector<Buffer*>* buffers) {
  for (auto& m : children_) m->collect(params, buffers);
}

template <typename Op>
WeightedLayer<Op>::WeightedLayer(NnContext* ctx, const std::string& prefix, std::unique_ptr<Op> op,
                                 const Dims& weight_dims, int64_t bias_size, bool input_grad)
    : ctx_(ctx), op_(std::move(op)), has_bias_(bias_size > 0), input_grad_(input_grad) {
  weight_.name = prefix + ".weight";
  weight_.value.resize(weight_dims);
  weight_.grad.resize(weight_dims);
  weight_.value.zero();
  weight_.grad.zero();
  if (has_bias_) {
    bias_.name = prefix + ".bias";
    bias_.is_bn_or_bias = true;
    bias_.value.resize(Dims{bias_size});
    bias_.grad.resize(Dims{bias_size});
    bias_.value.zero();
    bias_.grad.zero();
  }
}

template <typename Op>
const Tensor& WeightedLayer<Op>::forward(const Tensor& x, bool) {
  x_ = &x;
  op_->forward(x, weight_.value, has_bias_ ? &bias_.value : nullptr, y_);
  return y_;
}

template <typename Op>
const Tensor& WeightedLayer<Op>::backward(const Tensor& dy) {
  op_->backward_weights(*x_, dy, weight_.grad, has_bias_ ? &bias_.grad : nullptr);
  ctx_->grad_ready(weight_);
  if (has_bias_) ctx_->grad_ready(bias_);
  if (!input_grad_) {
    dx_.resize(MemDesc());
    return dx_;
  }
  op_->backward_data(dy, weight_.value, dx_);
  return dx_;
}

template <typename Op>
void WeightedLayer<Op>::collect(std::vector<Parameter*>* params, std::vector<Buffer*>*) {
  params->push_back(&weight_);
  if (has_bias_) params->push_back(&bias_);
}

template class WeightedLayer<Conv2dOp>;
template class WeightedLayer<LinearOp>;

Conv2d::Conv2d(NnContext* ctx, const std::string& prefix, const Conv2dSpec& spec)
    : WeightedLayer(ctx, prefix, ctx->backend->conv2d(spec),
                    Dims{spec.out_channels, spec.in_channels, spec.kernel_h, spec.kernel_w},
                    spec.bias ? spec.out_channels : 0, spec.input_grad),
      spec_(spec) {}

Linear::Linear(NnContext* ctx, const std::string& prefix, const LinearSpec& spec)
    : WeightedLayer(ctx, prefix, ctx->backend->linear(spec),
                    Dims{spec.out_features, spec.in_features}, spec.bias ? spec.out_features : 0,
                    spec.input_grad) {}

BatchNorm2d::BatchNorm2d(NnContext* ctx, const std::string& prefix, int64_t channels,
                         bool fuse_relu, float momentum, float eps)
    : ctx_(ctx),
      op_(ctx->backend->batchnorm(
          BatchNormSpec{channels, eps, momentum, fuse_relu, ctx->bn_allreduce_sum})) {
  gamma_.name = prefix + ".weight";
  beta_.name = prefix + ".bias";
  running_mean_.name = prefix + ".running_mean";
  running_var_.name = prefix + ".running_var";
  num_batches_.name = prefix + ".num_batches_tracked";
  for (Parameter* p : {&gamma_, &beta_}) {
    p->is_bn_or_bias = true;
    p->value.resize(Dims{channels});
    p->grad.resize(Dims{channels});
    p->grad.zero();
  }
  gamma_.value.fill(1.f);
  beta_.value.zero();
  running_mean_.value.resize(Dims{channels});
  running_mean_.value.zero();
  running_var_.value.resize(Dims{channels});
  running_var_.value.fill(1.f);
  num_batches_.value.resize(Dims{1});
  num_batches_.value.zero();
}

const Tensor& BatchNorm2d::forward(const Tensor& x, bool training) {
  x_ = &x;
  op_->forward(x, gamma_.value, beta_.value, running_mean_.value, running_var_.value, y_,
               training);
  if (training) num_batches_.value.data()[0] += 1.f;
  return y_;
}

bool BatchNorm2d::forward_add_relu(const Tensor& x, const Tensor& residual, Tensor& dst,
                                   bool training) {
  if (!op_->forward_add_relu(x, gamma_.value, beta_.value, running_mean_.value,
                             running_var_.value, residual, dst, training))
    return false;
  x_ = &x;
  if (training) num_batches_.value.data()[0] += 1.f;
  return true;
}

const Tensor& BatchNorm2d::backward(const Tensor& dy) {
  op_->backward(*x_, dy, gamma_.value, beta_.value, dx_, gamma_.grad, beta_.grad);
  ctx_->grad_ready(gamma_);
  ctx_->grad_ready(beta_);
  return dx_;
}

void BatchNorm2d::collect(std::vector<Parameter*>* params, std::vector<Buffer*>* buffers) {
  params->push_back(&gamma_);
  params->push_back(&beta_);
  buffers->push_back(&running_mean_);
  buffers->push_back(&running_var_);
  buffers->push_back(&num_batches_);
}

const Tensor& Relu::forward(const Tensor& x, bool) {
  op_->forward(x, y_);
  return y_;
}

const Tensor& Relu::backward(const Tensor& dy) {
  op_->backward(y_, dy, dx_);
  return dx_;
}

const Tensor& Pool2d::forward(const Tensor& x, bool training) {
  op_->forward(x, y_, training);
  return y_;
}

const Tensor& Pool2d::backward(const Tensor& dy) {
  op_->backward(dy, dx_);
  return dx_;
}

const Tensor& Dropout::forward(const Tensor& x, bool training) {
  op_->forward(x, y_, p_, ctx_->seed ^ (stream_id_ * 0x9E3779B97F4A7C15ull), ctx_->step,
               training);
  return y_;
}

const Tensor& Dropout::backward(const Tensor& dy) {
  op_->backward(dy, dx_);
  return dx_;
}

}  // namespace resdist
