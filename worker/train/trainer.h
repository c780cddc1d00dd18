// The training loop: epochs of forward / loss / backward / SGD over a BatchSource, evaluation on
// a held-out source, progress (a bar on a terminal, plain lines otherwise; rank 0 only) and
// JSON-lines metrics. Data parallel when given a communicator of more than one rank: parameters
// and buffers are broadcast from rank 0 and checked (checksum) before step 1, gradients are
// all-reduced in buckets during backward (reducer.h), loss/accuracy and evaluation counts are
// summed over ranks exactly. Not the process set-up (MPI, job file): that is main.cc.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/log.h"
#include "common/status.h"
#include "worker/comm/communicator.h"
#include "worker/nn/model.h"
#include "worker/optim/sgd.h"
#include "worker/train/batch_source.h"

namespace resdist {

class GradientReducer;

enum class ProgressMode { kAuto, kBar, kLines, kOff };

struct TrainConfig {
  int64_t batch_size = 128;  // per rank; the global batch is batch_size * world size
  int64_t epochs = 1;
  SgdOptions sgd;
  LrScheduleOptions lr;
  float label_smoothing = 0.f;
  int64_t eval_every_epochs = 1;  // 0: evaluate only at the end
  int64_t max_steps_per_epoch = 0;  // 0: the whole epoch (tests and benchmarks use a cap)
  ProgressMode progress = ProgressMode::kAuto;
  std::string metrics_path;  // JSON lines; empty: none
  // Data parallel (ignored in a world of one):
  double bucket_mb = 25;        // gradient bucket cap
  bool skip_allreduce = false;  // benchmarks: everything but the gradient collective
  int64_t check_replicas_every = 0;  // verify bit-identical parameters every k steps (0: never)
  // Test hook: rank TEST_fail_rank returns an error at global step TEST_fail_at_step (>= 1).
  int64_t TEST_fail_at_step = 0;
  int TEST_fail_rank = -1;
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
  // Steady state (steps after the first kTimingWarmupSteps, evaluation excluded), all ranks:
  double images_per_s = 0;      // global images per second
  double step_seconds = 0;      // mean wall time per step
  double comm_wait_seconds = 0;  // mean time per step blocked on communication (rank 0)
};

// A 64-bit checksum of every parameter value (and buffer, with `buffers`), from the bit
// patterns, for replica checks.
uint64_t ModelChecksum(const Model& model, bool buffers);

class Trainer {
 public:
  static constexpr int64_t kTimingWarmupSteps = 3;

  // `comm` may be null (a world of one). Sources must deliver this rank's shard.
  Trainer(const TrainConfig& config, Backend* backend, Model* model, BatchSource* train,
          BatchSource* eval, Logger logger, Communicator* comm = nullptr);
  ~Trainer();

  StatusOr<TrainResult> run();
  // Sharded evaluation; loss and accuracy over the samples of all ranks (pad duplicates skipped).
  StatusOr<EvalResult> evaluate(BatchSource& source);
  // Broadcasts parameters and buffers from rank 0, then checks every rank holds the same bits.
  Status synchronize_replicas();
  // Errors (naming the ranks) unless every rank holds bit-identical parameters (and buffers).
  Status check_replicas(const std::string& when, bool buffers);
  // Per-rank batch norm keeps per-rank running statistics (they never affect training); like
  // PyTorch DDP, rank 0's are the model's: broadcast before evaluation and at the end.
  void broadcast_buffers();

 private:
  Status write_metrics(const std::string& json_line);
  bool distributed() const { return comm_->size() > 1; }

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
  std::unique_ptr<Communicator> own_comm_;  // the single communicator when none was given
  Communicator* comm_;
  std::unique_ptr<GradientReducer> reducer_;  // data parallel only
};

}  // namespace resdist
