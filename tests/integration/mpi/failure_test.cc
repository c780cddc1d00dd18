// Failure handling end to end: resdist-worker under mpirun, one rank fails at start-up or in the
// middle of training (test hooks), or every rank meets a bad job file. The whole job must end
// within seconds, with a non-zero exit and the failing rank's message; never a hang.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"

namespace resdist {
namespace {

struct Outcome {
  int exit_code = -1;
  double seconds = 0;
  std::string output;
};

std::string WriteJob(const std::string& name, const std::string& extra) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/", name, ".yaml");
  std::ofstream(path) << R"(name: failure
model: {arch: resnet20, stage_blocks: [1, 1, 1], base_width: 8}
data: {synthetic: {train_samples: 4096, height: 8, width: 8, channels: 3, classes: 10}}
batch_size: 24
epochs: 1000
optimizer: {lr: 0.05}
progress: off
)" << extra;
  return path;
}

Outcome RunMpi(int ranks, const std::string& args) {
  // `timeout` only guards the test run itself against a hang; the assertion is on `seconds`.
  const std::string cmd = absl::StrCat("timeout -s KILL 120 ", RESDIST_MPIEXEC, " -np ", ranks,
                                       " ", RESDIST_WORKER, " ", args, " 2>&1");
  Outcome o;
  const auto t0 = std::chrono::steady_clock::now();
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return o;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) o.output.append(buf, n);
  const int status = pclose(p);
  o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  o.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return o;
}

TEST(Failure, RankFailingAtStartupEndsTheJob) {
  for (int ranks : {2, 3}) {
    const Outcome o = RunMpi(ranks, absl::StrCat("--config ", WriteJob("startup", ""),
                                                 " --TEST_fail_at_startup_rank ", ranks - 1));
    EXPECT_NE(o.exit_code, 0) << o.output;
    EXPECT_NE(o.output.find(absl::StrCat("rank ", ranks - 1,
                                         ": TEST_fail_at_startup_rank: injected start-up failure")),
              std::string::npos)
        << o.output;
    EXPECT_LT(o.seconds, 15) << o.output;
  }
}

TEST(Failure, RankFailingMidTrainingEndsTheJob) {
  for (int ranks : {2, 3}) {
    const Outcome o = RunMpi(ranks, absl::StrCat("--config ", WriteJob("mid", ""),
                                                 " --TEST_fail_rank 1 --TEST_fail_at_step 4"));
    EXPECT_NE(o.exit_code, 0) << o.output;
    EXPECT_NE(o.output.find("rank 1: TEST_fail_at_step: injected failure at step 4 on rank 1"),
              std::string::npos)
        << o.output;
    EXPECT_LT(o.seconds, 15) << o.output;
  }
}

TEST(Failure, BadJobFileNamesTheKeyAndEndsTheJob) {
  const Outcome o = RunMpi(2, absl::StrCat("--config ", WriteJob("bad", "comm: {bucket_mb: -1}\n")));
  EXPECT_NE(o.exit_code, 0) << o.output;
  EXPECT_NE(o.output.find("comm.bucket_mb: -1 is not allowed"), std::string::npos) << o.output;
  EXPECT_LT(o.seconds, 15) << o.output;
}

TEST(Failure, UnreadableDatasetEndsTheJob) {
  const std::string job = absl::StrCat(::testing::TempDir(), "/missing.yaml");
  std::ofstream(job) << "name: missing\ndata: {train: /nonexistent/train.h5}\nbatch_size: 8\n";
  const Outcome o = RunMpi(2, "--config " + job);
  EXPECT_NE(o.exit_code, 0) << o.output;
  EXPECT_NE(o.output.find("/nonexistent/train.h5"), std::string::npos) << o.output;
  EXPECT_LT(o.seconds, 15) << o.output;
}

TEST(Failure, BatchNotDivisibleByRanks) {
  const std::string job = absl::StrCat(::testing::TempDir(), "/indiv.yaml");
  std::ofstream(job) << "name: indiv\ndata: {synthetic: {train_samples: 64}}\nbatch_size: 16\n";
  const Outcome b = RunMpi(3, "--config " + job);
  EXPECT_NE(b.exit_code, 0) << b.output;
  EXPECT_NE(b.output.find("batch_size: 16 is not allowed with 3 ranks"), std::string::npos)
      << b.output;
}

}  // namespace
}  // namespace resdist
