// The job file: one training job as the user writes it (YAML, or JSON which YAML accepts), parsed
// into a plain struct and validated key by key. Shared by resdist-worker (mpirun launch), the
// coordinator and the gRPC JobSpec, which mirrors these fields. Not the model builder's spec
// (worker/nn/model.h): worker/ converts JobSpec::Model into a ModelSpec.
//
// Every error names the key with its path and what is allowed, e.g.
//   optimizer.lr: -0.1 is not allowed; expected a finite value > 0
//   model.archh: unknown key; expected one of arch, num_classes, shortcut, ...
//   epochs: 'three' is not an integer (line 6)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace resdist {

struct JobSpec {
  std::string name = "job";  // [A-Za-z0-9._-]+, used in logs and output paths

  struct Model {
    std::string arch = "resnet20";  // resnet{20,32,44,56,110}, resnet{18,34,50,101,152}, resmlp
    int64_t num_classes = 0;        // 0: from the training data
    std::string shortcut = "A";     // CIFAR ResNets: A (parameter-free) or B (1x1 conv + BN)
    bool small_input_stem = false;  // ImageNet ResNets: 3x3 stride-1 stem, no max pool
    bool zero_init_residual = false;
    double dropout = 0.1;           // resmlp only
    bool sync_batchnorm = false;    // batch statistics over all ranks instead of per rank
    // Structure overrides for small networks (tests, quick experiments); empty/0 = default.
    std::vector<int64_t> stage_blocks;
    int64_t base_width = 0;
    int64_t mlp_width = 0;
    int64_t mlp_hidden = 0;
  } model;

  struct Data {
    std::string train;  // resdist HDF5 file (docs/dataset-format.md)
    std::string eval;   // optional
    struct Augment {
      int64_t crop_padding = 0;  // random crop after zero padding; 0 = off
      bool flip = false;         // random horizontal flip
    } augment;
    std::string in_memory = "auto";  // auto | on | off
    // Seeded synthetic images instead of files (tests, benchmarks): used when train is empty.
    struct Synthetic {
      int64_t train_samples = 0;  // > 0 enables synthetic data
      int64_t eval_samples = 0;
      int64_t height = 32, width = 32, channels = 3;
      int64_t classes = 10;
    } synthetic;
  } data;

  int64_t batch_size = 128;  // global, split evenly across ranks
  int64_t epochs = 1;
  int64_t max_steps_per_epoch = 0;  // 0: whole epochs

  struct Optimizer {
    double lr = 0.1;
    double momentum = 0.9;
    bool nesterov = false;
    double weight_decay = 0.0;
    bool decay_bn_and_bias = true;
    std::string schedule = "cosine";  // constant | step | cosine
    double warmup_epochs = 0;
    std::vector<double> milestones;  // step schedule, in epochs
    double gamma = 0.1;
    bool linear_scaling = false;  // lr * batch_size / 256
    double label_smoothing = 0;
  } optimizer;

  uint64_t seed = 1;
  int64_t threads_per_worker = 1;

  struct Comm {
    double bucket_mb = 25;  // gradient bucket cap in MiB
  } comm;

  int64_t eval_every_epochs = 1;  // 0: evaluate only at the end
  std::string output_dir;         // metrics.jsonl goes here; empty: no files
  std::string progress = "auto";  // auto | bar | lines | off (rank 0 only)

  // Checkpoints (docs/checkpoint-format.md): rank 0 writes one every `every_steps` steps and/or
  // `every_seconds` seconds, at the end of each epoch, on request, on SIGTERM and at the end.
  struct Checkpoint {
    std::string dir;           // empty: <output_dir>/checkpoints when output_dir is set, else off
    int64_t every_steps = 0;   // 0: no step trigger
    double every_seconds = 0;  // 0: no time trigger
    int64_t keep_last = 0;     // newest files kept; 0 keeps all
  } checkpoint;
  // Where training starts: "none" (from scratch), "latest" (the newest valid checkpoint of the
  // checkpoint directory; from scratch when it holds none), or the path of a checkpoint file.
  std::string resume = "none";

  // Used by the coordinator's launcher (ignored by a hand-typed mpirun).
  int64_t workers = 1;       // ranks; batch_size must divide by it
  int64_t max_restarts = 0;  // restarts of a failed attempt from the latest checkpoint
};

// Parses YAML or JSON text. Unknown keys, wrong types and out-of-range values are errors
// (InvalidArgument) naming the key path; the result is validated (ValidateJobSpec).
StatusOr<JobSpec> ParseJobSpec(const std::string& text);

// Reads and parses a job file; errors are prefixed with the path.
StatusOr<JobSpec> ParseJobFile(const std::string& path);

// Checks every field's range and the cross-field rules (batch_size divisible by workers,
// warm-up shorter than the run, milestones increasing, ...).
Status ValidateJobSpec(const JobSpec& spec);

// The spec as YAML text that ParseJobSpec reads back to an equal spec (checkpoints, logs).
std::string JobSpecToYaml(const JobSpec& spec);

// The checkpoint directory in effect: checkpoint.dir, else <output_dir>/checkpoints when
// output_dir is set, else "" (no checkpoints).
std::string EffectiveCheckpointDir(const JobSpec& spec);

// The architectures a job file may name.
const std::vector<std::string>& JobSpecArchitectures();

}  // namespace resdist
