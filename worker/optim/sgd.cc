// SGD and learning-rate schedule implementations (see sgd.h for the semantics).
#include "worker/optim/sgd.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace resdist {

Status ValidateSgdOptions(const SgdOptions& o) {
  if (!(o.lr > 0) || !std::isfinite(o.lr))
    return absl::InvalidArgumentError(
        absl::StrCat("optimizer.lr: ", o.lr, " is not allowed; expected a finite value > 0"));
  if (!(o.momentum >= 0 && o.momentum < 1))
    return absl::InvalidArgumentError(
        absl::StrCat("optimizer.momentum: ", o.momentum, " is outside [0, 1)"));
  if (o.nesterov && o.momentum == 0)
    return absl::InvalidArgumentError(
        "optimizer.nesterov: Nesterov momentum needs optimizer.momentum > 0");
  if (!(o.weight_decay >= 0) || !std::isfinite(o.weight_decay))
    return absl::InvalidArgumentError(absl::StrCat(
        "optimizer.weight_decay: ", o.weight_decay, " is not allowed; expected a finite value >= 0"));
  return absl::OkStatus();
}

Sgd::Sgd(std::vector<Parameter*> params, const SgdOptions& options)
    : params_(std::move(params)), options_(options) {
  momentum_.resize(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    momentum_[i].resize(params_[i]->value.dims());
    momentum_[i].zero();
  }
}

void Sgd::step_parameter(Parameter& param, size_t index, double lr_d) {
  const float lr = static_cast<float>(lr_d);
  const float mu = static_cast<float>(options_.momentum);
  const bool decay = options_.weight_decay > 0 && (options_.decay_bn_and_bias || !param.is_bn_or_bias);
  const float wd = decay ? static_cast<float>(options_.weight_decay) : 0.f;
  float* p = param.value.data();
  const float* g = param.grad.data();
  float* buf = momentum_[index].data();
  const int64_t n = param.value.numel();
  if (mu == 0.f) {
    for (int64_t i = 0; i < n; ++i) p[i] -= lr * (g[i] + wd * p[i]);
    return;
  }
  const bool first = !initialized_;
  const bool nesterov = options_.nesterov;
  for (int64_t i = 0; i < n; ++i) {
    const float d = g[i] + wd * p[i];
    const float b = first ? d : mu * buf[i] + d;
    buf[i] = b;
    p[i] -= lr * (nesterov ? d + mu * b : b);
  }
}

void Sgd::step(double lr) {
  for (size_t i = 0; i < params_.size(); ++i) step_parameter(*params_[i], i, lr);
  initialized_ = true;
}

StatusOr<LrSchedule> ParseLrSchedule(const std::string& name) {
  if (name == "constant") return LrSchedule::kConstant;
  if (name == "step") return LrSchedule::kStep;
  if (name == "cosine") return LrSchedule::kCosine;
  return absl::InvalidArgumentError(absl::StrCat(
      "optimizer.schedule: unknown schedule '", name, "'; expected constant, step or cosine"));
}

Status ValidateLrSchedule(const LrScheduleOptions& o, double total_epochs) {
  if (!(o.base_lr > 0) || !std::isfinite(o.base_lr))
    return absl::InvalidArgumentError(
        absl::StrCat("optimizer.lr: ", o.base_lr, " is not allowed; expected a finite value > 0"));
  if (!(o.warmup_epochs >= 0) || o.warmup_epochs > total_epochs)
    return absl::InvalidArgumentError(absl::StrCat("optimizer.warmup_epochs: ", o.warmup_epochs,
                                                   " is outside [0, epochs=", total_epochs, "]"));
  if (o.schedule == LrSchedule::kStep) {
    if (o.milestones.empty())
      return absl::InvalidArgumentError(
          "optimizer.milestones: the step schedule needs at least one milestone epoch");
    for (size_t i = 0; i < o.milestones.size(); ++i)
      if (!(o.milestones[i] > 0) || (i > 0 && o.milestones[i] <= o.milestones[i - 1]))
        return absl::InvalidArgumentError(absl::StrCat(
            "optimizer.milestones[", i, "]: ", o.milestones[i],
            " is not allowed; expected strictly increasing epochs > 0"));
    if (!(o.gamma > 0 && o.gamma <= 1))
      return absl::InvalidArgumentError(
          absl::StrCat("optimizer.gamma: ", o.gamma, " is outside (0, 1]"));
  }
  if (!(o.min_lr >= 0) || o.min_lr > o.base_lr)
    return absl::InvalidArgumentError(
        absl::StrCat("optimizer.min_lr: ", o.min_lr, " is outside [0, lr=", o.base_lr, "]"));
  if (o.global_batch < 1)
    return absl::InvalidArgumentError(
        absl::StrCat("batch_size: ", o.global_batch, " is not allowed; expected >= 1"));
  return absl::OkStatus();
}

LrScheduler::LrScheduler(const LrScheduleOptions& o, int64_t steps_per_epoch,
                         int64_t total_steps)
    : o_(o), steps_per_epoch_(std::max<int64_t>(1, steps_per_epoch)), total_steps_(total_steps) {
  peak_ = o.linear_scaling ? o.base_lr * static_cast<double>(o.global_batch) / 256.0 : o.base_lr;
  warmup_steps_ = static_cast<int64_t>(std::llround(o.warmup_epochs * steps_per_epoch_));
}

double LrScheduler::lr_at(int64_t step) const {
  if (step < warmup_steps_) return peak_ * static_cast<double>(step + 1) / warmup_steps_;
  switch (o_.schedule) {
    case LrSchedule::kConstant: return peak_;
    case LrSchedule::kStep: {
      const double epoch = static_cast<double>(step) / steps_per_epoch_;
      double lr = peak_;
      for (double m : o_.milestones)
        if (epoch >= m) lr *= o_.gamma;
      return lr;
    }
    case LrSchedule::kCosine: {
      const int64_t span = std::max<int64_t>(1, total_steps_ - warmup_steps_);
      const double t = std::clamp(static_cast<double>(step - warmup_steps_) / span, 0.0, 1.0);
      return o_.min_lr + 0.5 * (peak_ - o_.min_lr) * (1 + std::cos(M_PI * t));
    }
  }
  return peak_;
}

}  // namespace resdist
