// Checkpoints across world sizes, under mpirun -np 2 (issue 6): a world-of-one checkpoint resumed
// by 2 ranks (and a 2-rank checkpoint by one process) continues the same training within a
// tight tolerance; stop and resume at 2 ranks is bit for bit; SIGTERM on one rank stops every
// rank at the same step with rank 0's checkpoint. Rank 0 runs the world-of-one parts on its own
// communicator while the other rank waits.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "tests/integration/checkpoint/resume_util.h"
#include "tests/integration/mpi/mpi_test_main.h"

namespace resdist {
namespace {

using ::resdist::testing::CompareCheckpoints;
using ::resdist::testing::Comparison;
using ::resdist::testing::MlpJob;
using ::resdist::testing::ResNetJob;
using ::resdist::testing::RunJob;
using ::resdist::testing::RunOutcome;

// A directory shared by all ranks (same machine): rank 0 creates it and broadcasts the name.
class SharedDir {
 public:
  SharedDir() {
    Communicator& comm = TestComm();
    if (comm.rank() == 0) {
      std::string tmpl = std::filesystem::temp_directory_path().string() + "/resdist_mpi_ckpt_XXXXXX";
      path_ = mkdtemp(tmpl.data()) != nullptr ? tmpl : "";
    }
    int64_t n = static_cast<int64_t>(path_.size());
    comm.broadcast(&n, sizeof(n), 0);
    path_.resize(static_cast<size_t>(n));
    comm.broadcast(path_.data(), path_.size(), 0);
  }
  ~SharedDir() {
    TestComm().barrier();
    std::error_code ec;
    if (TestComm().rank() == 0) std::filesystem::remove_all(path_, ec);
  }
  std::string sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Agreement on a rank-0 verdict, so every rank fails together (no rank hangs in a collective).
bool AllOk(bool ok) {
  double bad = ok ? 0 : 1;
  TestComm().allreduce_sum(&bad, 1);
  return bad == 0;
}

JobSpec CrossWorldJob(bool resnet, const std::string& dir) {
  JobSpec j = resnet ? ResNetJob(dir) : MlpJob(dir);
  if (resnet) {
    j.model.sync_batchnorm = true;  // per-rank statistics would change the training itself
  } else {
    j.model.dropout = 0;  // dropout masks follow the rank-local batch position
  }
  return j;
}

class CrossWorld : public ::testing::TestWithParam<bool> {};

// Saved by one process after 17 (MLP) / 8 (ResNet) steps, mid-epoch; resumed by 2 ranks (the
// shard plan deals the rest of the epoch); compared with one process straight through.
TEST_P(CrossWorld, OneRankCheckpointResumedByTwo) {
  const bool resnet = GetParam();
  Communicator& comm = TestComm();
  ASSERT_EQ(comm.size(), 2) << "run under mpirun -np 2";
  SharedDir dir;
  const int64_t stop_at = resnet ? 8 : 17;
  std::string reference;
  bool ok = true;
  if (comm.rank() == 0) {
    auto one = MakeSingleCommunicator();
    const RunOutcome ref = RunJob(CrossWorldJob(resnet, dir.sub("ref")), one.get());
    const RunOutcome first = RunJob(CrossWorldJob(resnet, dir.sub("run")), one.get(), stop_at);
    EXPECT_TRUE(ref.status.ok()) << ref.status;
    EXPECT_TRUE(first.status.ok()) << first.status;
    EXPECT_TRUE(first.result.stopped);
    reference = ref.result.last_checkpoint;
    ok = ref.status.ok() && first.status.ok();
  }
  ASSERT_TRUE(AllOk(ok));
  JobSpec resumed = CrossWorldJob(resnet, dir.sub("run"));
  resumed.resume = "latest";
  const RunOutcome second = RunJob(resumed, &comm);
  ASSERT_TRUE(AllOk(second.status.ok())) << second.status;
  EXPECT_EQ(second.result.resumed_at_step, stop_at);
  if (comm.rank() == 0) {
    EXPECT_EQ(second.reports.front().global_step, stop_at + 1);
    const StatusOr<CheckpointMeta> m = ValidateCheckpoint(second.result.last_checkpoint);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->world_size, 2);
    // The same tolerances as the data-parallel equivalence tests (summation order differs).
    const Comparison c = CompareCheckpoints(second.result.last_checkpoint, reference,
                                            resnet ? 1e-5 : 2e-6, resnet ? 1e-3 : 1e-4);
    EXPECT_EQ(c.error, "");
    EXPECT_LE(c.worst_excess, 0) << c.worst;
    const Comparison abs = CompareCheckpoints(second.result.last_checkpoint, reference);
    std::printf("largest |difference| from one process straight through: %.3g (%s)\n",
                abs.worst_excess, abs.worst.c_str());
  }
}

INSTANTIATE_TEST_SUITE_P(Models, CrossWorld, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return std::string(i.param ? "ResNetSyncBN" : "ResidualMlp");
                         });

// 2 ranks straight through == 2 ranks stopped (a kStop from rank 0's hook, agreed by both) and
// resumed, bit for bit; and the same 2-rank checkpoint resumed by one process stays within the
// tolerance.
TEST(SameWorld, TwoRankStopAndResumeIsBitIdentical) {
  Communicator& comm = TestComm();
  SharedDir dir;
  const RunOutcome ref = RunJob(CrossWorldJob(false, dir.sub("ref")), &comm);
  ASSERT_TRUE(AllOk(ref.status.ok())) << ref.status;
  const RunOutcome first = RunJob(CrossWorldJob(false, dir.sub("run")), &comm, /*stop_at=*/19);
  ASSERT_TRUE(AllOk(first.status.ok())) << first.status;
  EXPECT_TRUE(first.result.stopped);  // every rank, not only the one whose hook asked
  EXPECT_EQ(first.result.steps, 19);
  JobSpec resumed = CrossWorldJob(false, dir.sub("run"));
  resumed.resume = "latest";
  const RunOutcome second = RunJob(resumed, &comm);
  ASSERT_TRUE(AllOk(second.status.ok())) << second.status;
  EXPECT_EQ(second.result.steps, 36);
  bool ok = true;
  if (comm.rank() == 0) {
    const Comparison c = CompareCheckpoints(ref.result.last_checkpoint, second.result.last_checkpoint);
    EXPECT_TRUE(c.same_bits) << c.error << " " << c.worst;
    // Two ranks -> one process, from the 19-step checkpoint.
    auto one = MakeSingleCommunicator();
    JobSpec single = CrossWorldJob(false, dir.sub("single"));
    single.resume = first.result.last_checkpoint;
    const RunOutcome alone = RunJob(single, one.get());
    EXPECT_TRUE(alone.status.ok()) << alone.status;
    ok = alone.status.ok();
    if (ok) {
      const Comparison d =
          CompareCheckpoints(alone.result.last_checkpoint, ref.result.last_checkpoint, 2e-6, 1e-4);
      EXPECT_EQ(d.error, "");
      EXPECT_LE(d.worst_excess, 0) << d.worst;
    }
  }
  ASSERT_TRUE(AllOk(ok));
}

// SIGTERM reaches only rank 1 (after step 7); both ranks stop after step 7, rank 0 having
// written the checkpoint, and a resume continues bit for bit.
TEST(SameWorld, SigtermOnOneRankStopsEveryRankAtTheSameStep) {
  Communicator& comm = TestComm();
  SharedDir dir;
  const RunOutcome ref = RunJob(CrossWorldJob(false, dir.sub("ref")), &comm);
  ASSERT_TRUE(AllOk(ref.status.ok())) << ref.status;
  JobOverrides ov;
  ov.TEST_sigterm_at_step = 7;
  ov.TEST_sigterm_rank = 1;
  const RunOutcome first = RunJob(CrossWorldJob(false, dir.sub("run")), &comm, 0, {}, ov);
  ASSERT_TRUE(AllOk(first.status.ok())) << first.status;
  EXPECT_TRUE(first.result.stopped);
  EXPECT_EQ(first.result.stop_reason, "SIGTERM");
  EXPECT_EQ(first.result.steps, 7);
  if (comm.rank() == 0) {
    EXPECT_EQ(first.result.last_checkpoint, CheckpointPath(dir.sub("run"), 0, 7));
    const StatusOr<CheckpointMeta> m = ValidateCheckpoint(first.result.last_checkpoint);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->samples_consumed, 7 * 16);
  }
  JobSpec resumed = CrossWorldJob(false, dir.sub("run"));
  resumed.resume = "latest";
  const RunOutcome second = RunJob(resumed, &comm);
  ASSERT_TRUE(AllOk(second.status.ok())) << second.status;
  if (comm.rank() == 0) {
    const Comparison c = CompareCheckpoints(ref.result.last_checkpoint, second.result.last_checkpoint);
    EXPECT_TRUE(c.same_bits) << c.error << " " << c.worst;
  }
}

// A different global batch is refused on every rank with the same clear message.
TEST(SameWorld, AnotherGlobalBatchIsRefused) {
  Communicator& comm = TestComm();
  SharedDir dir;
  ASSERT_TRUE(AllOk(RunJob(CrossWorldJob(false, dir.sub("run")), &comm, 5).status.ok()));
  JobSpec resumed = CrossWorldJob(false, dir.sub("run"));
  resumed.resume = "latest";
  resumed.batch_size = 32;
  const RunOutcome r = RunJob(resumed, &comm);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kFailedPrecondition) << r.status;
  EXPECT_NE(r.status.message().find("a resume must keep the global batch"), std::string::npos)
      << r.status;
  comm.barrier();
}

}  // namespace
}  // namespace resdist
