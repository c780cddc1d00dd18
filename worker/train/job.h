// A training job from a job file: converts a JobSpec (common/job_spec.h) into the model spec,
// this rank's data sources and the training configuration, and owns what one run needs (backend,
// model, sources, trainer). Used by resdist-worker --config and by the data-parallel tests. Not
// the process set-up (which communicator, MPI) - that is main.cc.
#pragma once

#include <memory>
#include <string>

#include "common/job_spec.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/comm/communicator.h"
#include "worker/nn/model.h"
#include "worker/train/batch_source.h"
#include "worker/train/trainer.h"

namespace resdist {

// Settings that are not part of the job (command-line, tests, benchmarks).
struct JobOverrides {
  bool skip_allreduce = false;
  int64_t check_replicas_every = 0;
  int64_t TEST_fail_at_step = 0;
  int TEST_fail_rank = -1;
  int64_t TEST_sigterm_at_step = 0;  // see TrainConfig
  int TEST_sigterm_rank = -1;
  bool write_metrics = true;  // output_dir/metrics.jsonl on rank 0
};

// The model builder's spec for `job` (input shape and classes filled in from the data later).
StatusOr<ModelSpec> ModelSpecFromJob(const JobSpec& job);

class JobSession {
 public:
  // Opens this rank's shard of the data, builds the model (synchronized batch norm through
  // `comm` when model.sync_batchnorm), and the trainer. The per-rank batch is
  // batch_size / comm->size(), which must divide evenly.
  static StatusOr<std::unique_ptr<JobSession>> Create(const JobSpec& job, Communicator* comm,
                                                      const JobOverrides& overrides,
                                                      Logger logger);

  // Hooks for the coordinator session (or tests): per-step report and command on rank 0, and
  // the checkpoint-written notification. Call before run().
  void set_hooks(TrainerHooks hooks) { trainer_->set_hooks(std::move(hooks)); }

  // Trains (resuming per the job's `resume:`). On SIGTERM or a kStop command it returns OK with
  // TrainResult::stopped after rank 0 wrote a checkpoint: the process should exit 0.
  StatusOr<TrainResult> run() { return trainer_->run(); }
  Model& model() { return *model_; }
  Trainer& trainer() { return *trainer_; }
  const TrainConfig& train_config() const { return config_; }

 private:
  JobSession() = default;

  TrainConfig config_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<BatchSource> train_, eval_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Trainer> trainer_;
};

}  // namespace resdist
