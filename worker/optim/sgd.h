// SGD with momentum (PyTorch semantics: dampening 0, buffer initialised to the first gradient),
// Nesterov option, and weight decay that can skip batch-norm and bias parameters; and the
// learning-rate schedule (linear warm-up, then step / cosine / constant).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/nn/module.h"

namespace resdist {

struct SgdOptions {
  double lr = 0.1;
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 0.0;
  bool decay_bn_and_bias = true;  // false: no weight decay on batch-norm and bias parameters
};

Status ValidateSgdOptions(const SgdOptions& o);

class Sgd {
 public:
  Sgd(std::vector<Parameter*> params, const SgdOptions& options);
  // p -= lr * update(grad); `lr` overrides options.lr (the schedule's value for this step).
  void step(double lr);
  void step_parameter(Parameter& p, size_t index, double lr);
  const SgdOptions& options() const { return options_; }
  // Momentum buffers, plain, one per parameter in the same order (for checkpoints).
  std::vector<Tensor>& momentum_buffers() { return momentum_; }
  bool has_momentum_state() const { return initialized_; }
  void set_has_momentum_state(bool v) { initialized_ = v; }

 private:
  std::vector<Parameter*> params_;
  SgdOptions options_;
  std::vector<Tensor> momentum_;
  bool initialized_ = false;
};

enum class LrSchedule { kConstant, kStep, kCosine };

struct LrScheduleOptions {
  double base_lr = 0.1;
  LrSchedule schedule = LrSchedule::kCosine;
  double warmup_epochs = 0;          // linear warm-up from base_lr/warmup_steps to base_lr
  std::vector<double> milestones;    // epochs, for kStep
  double gamma = 0.1;                // multiplier at each milestone
  double min_lr = 0.0;               // cosine floor
  bool linear_scaling = false;       // base_lr * global_batch / 256
  int64_t global_batch = 256;
};

Status ValidateLrSchedule(const LrScheduleOptions& o, double total_epochs);
StatusOr<LrSchedule> ParseLrSchedule(const std::string& name);

class LrScheduler {
 public:
  LrScheduler(const LrScheduleOptions& o, int64_t steps_per_epoch, int64_t total_steps);
  // The learning rate for 0-based global step `step`.
  double lr_at(int64_t step) const;
  double peak_lr() const { return peak_; }

 private:
  LrScheduleOptions o_;
  int64_t steps_per_epoch_, total_steps_, warmup_steps_;
  double peak_;
};

}  // namespace resdist
