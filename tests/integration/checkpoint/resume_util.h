// Helpers for the trainer-level checkpoint tests: small jobs, one run of a JobSession with
// hooks, and comparison of two checkpoint files tensor by tensor (bit for bit or within a
// tolerance). Tests only.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/checkpoint.h"
#include "common/job_spec.h"
#include "worker/train/job.h"

namespace resdist::testing {

// A residual MLP with dropout (exercises the dropout counter) on 8x8 synthetic images: about
// 0.2 ms per step. 200 samples / batch 16 = 12 steps per epoch (8 samples dropped each epoch).
inline JobSpec MlpJob(const std::string& dir) {
  JobSpec j;
  j.name = "resume";
  j.model.arch = "resmlp";
  j.model.mlp_width = 64;
  j.model.mlp_hidden = 32;
  j.model.dropout = 0.1;
  j.data.synthetic.train_samples = 200;
  j.data.synthetic.eval_samples = 40;
  j.data.synthetic.height = 8;
  j.data.synthetic.width = 8;
  j.data.synthetic.channels = 3;
  j.data.synthetic.classes = 10;
  j.batch_size = 16;
  j.epochs = 3;
  j.optimizer.lr = 0.05;
  j.optimizer.momentum = 0.9;
  j.optimizer.nesterov = true;
  j.optimizer.weight_decay = 5e-4;
  j.optimizer.schedule = "cosine";
  j.optimizer.warmup_epochs = 1;
  j.seed = 11;
  j.threads_per_worker = 1;
  j.progress = "off";
  j.checkpoint.dir = dir;
  return j;
}

// A ResNet (batch norm: running statistics, num_batches_tracked; projection shortcuts) on 4x4
// images, the smallest shape where it is fast here (about 40 ms per step).
inline JobSpec ResNetJob(const std::string& dir) {
  JobSpec j = MlpJob(dir);
  j.model = JobSpec::Model{};
  j.model.arch = "resnet20";
  j.model.stage_blocks = {1, 1, 1};
  j.model.base_width = 8;
  j.model.shortcut = "B";
  j.data.synthetic.height = 4;
  j.data.synthetic.width = 4;
  j.data.synthetic.train_samples = 96;  // 6 steps per epoch
  j.data.synthetic.eval_samples = 20;
  return j;
}

struct RunOutcome {
  Status status;
  TrainResult result;
  std::vector<std::string> checkpoints_notified;  // on_checkpoint, in order
  std::vector<StepReport> reports;
};

// One run of `job` on `comm`. `stop_at` > 0: the hook asks to stop after that global step;
// `checkpoint_at`: the hook asks for a checkpoint after these steps.
inline RunOutcome RunJob(const JobSpec& job, Communicator* comm, int64_t stop_at = 0,
                         std::vector<int64_t> checkpoint_at = {}, JobOverrides ov = {}) {
  RunOutcome out;
  ov.write_metrics = false;
  auto session = JobSession::Create(job, comm, ov, Logger("test", comm->rank(), job.name));
  if (!session.ok()) {
    out.status = session.status();
    return out;
  }
  TrainerHooks hooks;
  hooks.on_step = [&out, stop_at, checkpoint_at](const StepReport& r) {
    out.reports.push_back(r);
    if (stop_at > 0 && r.global_step == stop_at) return StepCommand::kStop;
    for (int64_t s : checkpoint_at)
      if (r.global_step == s) return StepCommand::kCheckpoint;
    return StepCommand::kContinue;
  };
  // Runs on the writer thread; the session (and its writer) ends before `out` is read.
  hooks.on_checkpoint = [&out](const std::string& path, const CheckpointMeta&) {
    out.checkpoints_notified.push_back(path);
  };
  (*session)->set_hooks(std::move(hooks));
  StatusOr<TrainResult> r = (*session)->run();
  out.status = r.status();
  if (r.ok()) out.result = *std::move(r);
  return out;
}

// Largest |a - b| - (atol + rtol |b|) over every parameter, buffer and momentum of two
// checkpoints (<= 0: within tolerance), and whether every value has the same bits.
struct Comparison {
  bool same_bits = true;
  double worst_excess = -1;
  std::string worst;  // the tensor and element of the worst excess
  std::string error;  // structural mismatch
};

inline Comparison CompareCheckpoints(const std::string& a_path, const std::string& b_path,
                                     double atol = 0, double rtol = 0) {
  Comparison c;
  StatusOr<CheckpointContents> a = ReadCheckpoint(a_path);
  StatusOr<CheckpointContents> b = ReadCheckpoint(b_path);
  if (!a.ok() || !b.ok()) {
    c.error = absl::StrCat(a.status().ToString(), " / ", b.status().ToString());
    c.same_bits = false;
    return c;
  }
  auto compare = [&](const char* group, const std::vector<CheckpointTensor>& x,
                     const std::vector<CheckpointTensor>& y) {
    if (x.size() != y.size()) {
      c.error = absl::StrCat(group, ": ", x.size(), " vs ", y.size(), " tensors");
      c.same_bits = false;
      return;
    }
    for (size_t t = 0; t < x.size(); ++t) {
      if (x[t].name != y[t].name || x[t].values.size() != y[t].values.size()) {
        c.error = absl::StrCat(group, ": ", x[t].name, " vs ", y[t].name);
        c.same_bits = false;
        return;
      }
      if (std::memcmp(x[t].values.data(), y[t].values.data(),
                      x[t].values.size() * sizeof(float)) != 0)
        c.same_bits = false;
      for (size_t i = 0; i < x[t].values.size(); ++i) {
        const double u = x[t].values[i], v = y[t].values[i];
        double excess = std::fabs(u - v) - (atol + rtol * std::fabs(v));
        if (std::isnan(excess)) excess = HUGE_VAL;  // a NaN on either side is a failure
        if (excess > c.worst_excess) {
          c.worst_excess = excess;
          c.worst = absl::StrCat(group, "/", x[t].name, "[", i, "]: ", u, " vs ", v);
        }
      }
    }
  };
  compare("params", a->params, b->params);
  compare("buffers", a->buffers, b->buffers);
  compare("momentum", a->momentum, b->momentum);
  return c;
}

}  // namespace resdist::testing
