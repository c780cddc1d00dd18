// Data-parallel equivalence under mpirun -np W: K steps on W ranks with per-rank batch B match K
// steps on one process with batch W*B (same samples per step through the shard plan), for a model
// without batch norm (resmlp, dropout 0) and a ResNet with synchronized batch norm. Every rank
// holds bit-identical parameters after every step (checked inside the trainer); rank 0 runs the
// single-process reference after the distributed run and compares every parameter.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/integration/mpi/mpi_test_main.h"
#include "worker/train/job.h"

namespace resdist {
namespace {

constexpr int64_t kPerRankBatch = 8;
constexpr int64_t kSteps = 6;

JobSpec BaseJob(int world) {
  JobSpec j;
  j.name = "equivalence";
  j.data.synthetic.train_samples = 512;
  j.data.synthetic.eval_samples = 37;  // not a multiple of anything: padded evaluation
  j.data.synthetic.height = 8;
  j.data.synthetic.width = 8;
  j.data.synthetic.channels = 3;
  j.data.synthetic.classes = 10;
  j.batch_size = kPerRankBatch * world;
  j.epochs = 2;
  j.max_steps_per_epoch = kSteps / 2;
  j.optimizer.lr = 0.05;
  j.optimizer.momentum = 0.9;
  j.optimizer.nesterov = true;
  j.optimizer.weight_decay = 5e-4;
  j.optimizer.schedule = "cosine";
  j.seed = 7;
  j.threads_per_worker = 1;
  j.comm.bucket_mb = 0.004;  // several buckets even for these small models
  j.progress = "off";
  return j;
}

struct Snapshot {
  std::vector<std::string> names;
  std::vector<std::vector<float>> values;
  TrainResult result;
};

Snapshot Train(const JobSpec& job, Communicator* comm) {
  JobOverrides ov;
  ov.check_replicas_every = 1;
  ov.write_metrics = false;
  auto session = JobSession::Create(job, comm, ov, Logger("test", comm->rank()));
  EXPECT_TRUE(session.ok()) << session.status();
  Snapshot s;
  if (!session.ok()) return s;
  auto r = (*session)->run();
  EXPECT_TRUE(r.ok()) << r.status();
  if (r.ok()) s.result = *r;
  for (const Parameter* p : (*session)->model().parameters()) {
    s.names.push_back(p->name);
    s.values.emplace_back(p->value.data(), p->value.data() + p->value.numel());
  }
  for (const Buffer* b : (*session)->model().buffers()) {
    s.names.push_back(b->name);
    s.values.emplace_back(b->value.data(), b->value.data() + b->value.numel());
  }
  return s;
}

void ExpectEquivalent(const JobSpec& job, double atol, double rtol) {
  Communicator& comm = TestComm();
  const Snapshot dist = Train(job, &comm);
  ASSERT_EQ(dist.result.steps, kSteps);
  if (comm.rank() != 0) return;
  // Reference: one process, one rank, the same global batch.
  auto single = MakeSingleCommunicator();
  const Snapshot ref = Train(job, single.get());
  ASSERT_EQ(ref.names, dist.names);
  for (size_t t = 0; t < ref.values.size(); ++t) {
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < ref.values[t].size(); ++i) {
      const double a = dist.values[t][i], b = ref.values[t][i];
      double excess = std::fabs(a - b) - (atol + rtol * std::fabs(b));
      if (std::isnan(excess)) excess = HUGE_VAL;  // a NaN on either side is a failure
      if (excess > worst) worst = excess, at = i;
    }
    EXPECT_EQ(worst, 0) << ref.names[t] << "[" << at << "]: " << comm.size() << " ranks "
                        << dist.values[t][at] << " vs 1 rank " << ref.values[t][at];
  }
  // Sharded, padded evaluation counts every sample exactly once.
  EXPECT_EQ(dist.result.final_eval.samples, 37);
  EXPECT_NEAR(dist.result.final_eval.loss, ref.result.final_eval.loss, 1e-4);
  EXPECT_NEAR(dist.result.epochs.back().train_loss, ref.result.epochs.back().train_loss, 1e-5);
}

TEST(Equivalence, ResidualMlpWithoutBatchNorm) {
  JobSpec j = BaseJob(TestComm().size());
  j.model.arch = "resmlp";
  j.model.dropout = 0;
  j.model.mlp_width = 64;
  j.model.mlp_hidden = 32;
  ExpectEquivalent(j, 2e-6, 1e-4);
}

TEST(Equivalence, ResNetWithSyncBatchNorm) {
  JobSpec j = BaseJob(TestComm().size());
  j.model.arch = "resnet20";
  j.model.stage_blocks = {1, 1, 1};
  j.model.base_width = 8;
  j.model.shortcut = "B";
  j.model.sync_batchnorm = true;
  ExpectEquivalent(j, 1e-5, 1e-3);
}

TEST(Equivalence, PerRankBatchNormKeepsParametersIdentical) {
  // Without sync BN the result differs from one process (per-rank statistics), but all ranks
  // still hold identical parameters every step (checked inside the trainer).
  JobSpec j = BaseJob(TestComm().size());
  j.model.arch = "resnet20";
  j.model.stage_blocks = {1, 1, 1};
  j.model.base_width = 8;
  Communicator& comm = TestComm();
  const Snapshot dist = Train(j, &comm);
  EXPECT_EQ(dist.result.steps, kSteps);
}

}  // namespace
}  // namespace resdist
