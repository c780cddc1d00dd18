// The single-process training loop: epochs of forward / loss / backward / SGD over a
// BatchSource, evaluation on a held-out source, progress (a bar on a terminal, plain lines
// otherwise) and JSON-lines metrics. Data-parallel training wraps the same loop (comm/).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/log.h"
#include "common/status.h"
#include "worker/nn/model.h"
#include "worker/optim/sgd.h"
#include "worker/train/batch_source.h"

namespace resdist {

enum class ProgressMode { kAuto, kBar, kLines, kOff };

struct TrainConfig {
  int64_t batch_size = 128;
  int64_t epochs = 1;
  SgdOptions sgd;
  LrScheduleOptions lr;
  float label_smoothing = 0.f;
  int64_t eval_every_epochs = 1;  // 0: evaluate only at the end
  int64_t max_steps_per_epoch = 0;  // 0: the whole epoch (tests and benchmarks use a cap)
  ProgressMode progress = ProgressMode::kAuto;
  std::string metrics_path;  // JSON lines; empty: none
};

// Names the bad field and what is allowed.
Status ValidateTrainConfig(const TrainConfig& c);

struct EvalResult {
  double loss = 0;
  double accuracy = 0;
  int64_t samples = 0;
};

struct EpochResult {
  int64_t epoch = 0;
  double train_loss = 0;
  double train_accuracy = 0;
  double images_per_s = 0;
  double seconds = 0;
  bool evaluated = false;
  EvalResult eval;
};

struct TrainResult {
  std::vector<EpochResult> epochs;
  EvalResult final_eval;
  int64_t steps = 0;
};

class Trainer {
 public:
  Trainer(const TrainConfig& config, Backend* backend, Model* model, BatchSource* train,
          BatchSource* eval, Logger logger);

  StatusOr<TrainResult> run();
  StatusOr<EvalResult> evaluate(BatchSource& source);

 private:
  Status write_metrics(const std::string& json_line);

  TrainConfig config_;
  Backend* backend_;
  Model* model_;
  BatchSource* train_;
  BatchSource* eval_;
  Logger logger_;
  Sgd sgd_;
  std::unique_ptr<SoftmaxCrossEntropyOp> loss_op_;
  Tensor images_;               // (batch, C, H, W), plain, reused every step
  std::vector<int32_t> labels_;  // (batch)
  Tensor dlogits_;
};

}  // namespace resdist
