// The training loop: epochs of forward / loss / backward / SGD over a BatchSource, evaluation on
// a held-out source, progress (a bar on a terminal, plain lines otherwise; rank 0 only) and
// JSON-lines metrics. Data parallel when given a communicator of more than one rank: parameters
// and buffers are broadcast from rank 0 and checked (checksum) before step 1, gradients are
// all-reduced in buckets during backward (reducer.h), loss/accuracy and evaluation counts are
// summed over ranks exactly. Checkpoints (rank 0, worker/train/checkpointer.h): every N steps,
// every T seconds, at the end of each epoch, on request (TrainerHooks), on SIGTERM, and at the
// end; resume from one, mid-epoch and at another world size. Not the process set-up (MPI, job
// file): that is main.cc.
#pragma once

#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/checkpoint.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/comm/communicator.h"
#include "worker/nn/model.h"
#include "worker/optim/sgd.h"
#include "worker/train/batch_source.h"
#include "worker/train/checkpointer.h"

namespace resdist {

class GradientReducer;

enum class ProgressMode { kAuto, kBar, kLines, kOff };

// Checkpointing of a run (docs/checkpoint-format.md, "Resume semantics and exactness").
struct CheckpointConfig {
  std::string dir;              // empty: no checkpoints (and no SIGTERM handling)
  int64_t every_steps = 0;      // 0: no step trigger
  double every_seconds = 0;     // 0: no time trigger; skipped while a write is in flight
  int64_t keep_last = 0;        // 0: keep every file
  std::string resume;           // "" / "none", "latest" (in `dir`), or a checkpoint path
  std::string job_spec;         // stored verbatim in every file (the JobSpec as YAML)
  uint64_t seed = 0;            // the job's seed, recorded in every file
  // Stop cleanly on SIGTERM (Slurm, Kubernetes): checkpoint at the next step boundary, then
  // run() returns with TrainResult::stopped. Only when `dir` is set.
  bool handle_sigterm = true;
  bool enabled() const { return !dir.empty(); }
};

// Progress after one optimizer step, handed to TrainerHooks::on_step on rank 0.
struct StepReport {
  int64_t epoch = 0;          // 0-based epoch the step belonged to
  int64_t step_in_epoch = 0;  // steps of that epoch done, 1..steps_per_epoch
  int64_t steps_per_epoch = 0;
  int64_t global_step = 0;    // steps done since the start of training, 1..total_steps
  int64_t total_steps = 0;
  double loss = 0;            // this step, over the global batch
  double accuracy = 0;
  double lr = 0;
  double images_per_s = 0;    // global, this epoch so far
  std::string last_checkpoint;  // newest checkpoint written so far ("" if none)
};

// What the trainer does after the step just reported. A command is agreed across ranks at the
// same step boundary (one tiny all-reduce per step), so every rank stops at the same step.
enum class StepCommand {
  kContinue,
  kCheckpoint,  // write a checkpoint now (rank 0; non-blocking unless one is still in flight)
  kStop,        // write a checkpoint (when checkpointing is configured, blocking) and return
                // from run() with TrainResult::stopped, as on SIGTERM
};

// Hooks for the coordinator session (worker/coordination) or tests. Both optional.
struct TrainerHooks {
  // Rank 0, training thread, after every step. Must be quick (read a flag, queue a report);
  // it is on the step path. The return value of other ranks' hooks is ignored.
  std::function<StepCommand(const StepReport&)> on_step;
  // Rank 0, after a checkpoint file is complete (renamed and fsynced). Runs on the checkpoint
  // writer thread: must be thread-safe and must not call back into the trainer.
  std::function<void(const std::string& path, const CheckpointMeta& meta)> on_checkpoint;
};

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
  CheckpointConfig checkpoint;
  // Data parallel (ignored in a world of one):
  double bucket_mb = 25;        // gradient bucket cap
  bool skip_allreduce = false;  // benchmarks: everything but the gradient collective
  int64_t check_replicas_every = 0;  // verify bit-identical parameters every k steps (0: never)
  // Test hook: rank TEST_fail_rank returns an error at global step TEST_fail_at_step (>= 1).
  int64_t TEST_fail_at_step = 0;
  int TEST_fail_rank = -1;
  // Test hook: rank TEST_sigterm_rank sends itself SIGTERM after global step
  // TEST_sigterm_at_step (>= 1), through the real handler.
  int64_t TEST_sigterm_at_step = 0;
  int TEST_sigterm_rank = -1;
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
  std::vector<EpochResult> epochs;  // the epochs this run finished (from the resume point on)
  EvalResult final_eval;
  int64_t steps = 0;             // global step reached (counting steps before a resume)
  int64_t resumed_at_step = 0;   // global step of the checkpoint resumed from (0: fresh start)
  std::string resumed_from;      // that checkpoint's path ("" : fresh start)
  // True when the run ended early on SIGTERM or a kStop command, after writing a checkpoint
  // (when configured); `stop_reason` says which. Not an error: the job can be resumed.
  bool stopped = false;
  std::string stop_reason;
  std::string last_checkpoint;  // newest checkpoint written by this run ("" if none)
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

  // Set before run(). See TrainerHooks.
  void set_hooks(TrainerHooks hooks) { hooks_ = std::move(hooks); }

  // Trains from the start, or from config.checkpoint.resume. Returns early (OK, `stopped`) on
  // SIGTERM or a kStop command.
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
  // Resolves config.checkpoint.resume on rank 0, agrees on the path across ranks and restores
  // it on every rank (parameters, buffers, momentum, dropout counter). Sets *meta and returns
  // the path ("" for a fresh start).
  StatusOr<std::string> restore_for_resume(CheckpointMeta* meta);
  // Rank 0: the training position as a checkpoint's metadata.
  CheckpointMeta checkpoint_meta(int64_t epoch, int64_t global_step,
                                 int64_t samples_consumed) const;
  bool distributed() const { return comm_->size() > 1; }

  TrainConfig config_;
  Backend* backend_;
  Model* model_;
  BatchSource* train_;
  BatchSource* eval_;
  Logger logger_;
  Sgd sgd_;
  std::unique_ptr<SoftmaxCrossEntropyOp> loss_op_;
  Tensor partial_batch_;   // the evaluation split's last, smaller batch (allocated once)
  std::ofstream metrics_;  // rank 0: metrics_path, opened once for appending (not per step)
  Tensor images_;               // (batch, C, H, W), plain, reused every step
  std::vector<int32_t> labels_;  // (batch)
  Tensor dlogits_;
  std::unique_ptr<Communicator> own_comm_;  // the single communicator when none was given
  Communicator* comm_;
  std::unique_ptr<GradientReducer> reducer_;  // data parallel only
  TrainerHooks hooks_;
  std::unique_ptr<Checkpointer> checkpointer_;  // rank 0, when checkpointing is configured
};

// The SIGTERM flag of this process, for tests: true once a SIGTERM arrived while a Trainer with
// checkpointing was running (cleared when the next run starts).
bool SigtermReceived();

}  // namespace resdist
