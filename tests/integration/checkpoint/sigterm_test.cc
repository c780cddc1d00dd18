// SIGTERM to a running `resdist-worker --config` (issue 6), as Slurm and Kubernetes send it
// before stopping a job: the worker writes a checkpoint at the next step boundary and exits 0;
// `resume: latest` continues from it with every step of the run done exactly once (metrics
// count), and the final state is bit-identical to an uninterrupted run's, which it could not be
// if any sample of the interrupted epoch were seen twice or skipped.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/integration/checkpoint/resume_util.h"
#include "tests/unit/checkpoint/test_util.h"

namespace resdist {
namespace {

using ::resdist::testing::CompareCheckpoints;
using ::resdist::testing::Comparison;
using ::resdist::testing::TempDir;

constexpr int64_t kStepsPerEpoch = 10;  // 160 samples / batch 16
constexpr int64_t kEpochs = 4;

std::string WriteJob(const std::string& dir, const std::string& name, const std::string& extra) {
  const std::string path = absl::StrCat(dir, "/", name, ".yaml");
  std::ofstream(path) << "name: sigterm\n"
                      << "model: {arch: resnet20, stage_blocks: [1, 1, 1], base_width: 8, "
                         "shortcut: B}\n"
                      << "data: {synthetic: {train_samples: 160, eval_samples: 20, height: 4, "
                         "width: 4, channels: 3, classes: 10}}\n"
                      << "batch_size: 16\nepochs: " << kEpochs << "\n"
                      << "optimizer: {lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: "
                         "5.0e-4, warmup_epochs: 1}\n"
                      << "seed: 5\nthreads_per_worker: 1\nprogress: off\n"
                      << "output_dir: " << dir << "/" << name << "\n"
                      << extra;
  return path;
}

// Starts resdist-worker with stdout and stderr going to `log`.
pid_t Spawn(const std::string& config, const std::string& log) {
  const pid_t pid = fork();
  if (pid == 0) {
    FILE* f = std::fopen(log.c_str(), "w");
    if (f != nullptr) {
      dup2(fileno(f), 1);
      dup2(fileno(f), 2);
    }
    execl(RESDIST_WORKER, RESDIST_WORKER, "--config", config.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

// Waits up to `seconds`; returns the exit code (128 + signal when killed), -1 on timeout (the
// child is then killed).
int Wait(pid_t pid, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  int status = 0;
  while (std::chrono::steady_clock::now() < end) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return -1;
}

// The global step numbers of the per-step lines of metrics.jsonl, in file order.
std::vector<int64_t> MetricSteps(const std::string& path) {
  std::vector<int64_t> steps;
  std::ifstream in(path);
  const std::regex step_re(R"re(^\{"step":(\d+),)re");
  std::smatch m;
  for (std::string line; std::getline(in, line);)
    if (std::regex_search(line, m, step_re)) steps.push_back(std::stoll(m[1]));
  return steps;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(Sigterm, WorkerCheckpointsExitsZeroAndResumesExactly) {
  TempDir tmp;
  const int64_t total = kStepsPerEpoch * kEpochs;
  // Uninterrupted reference.
  const std::string ref_log = tmp.file("ref.log");
  ASSERT_EQ(Wait(Spawn(WriteJob(tmp.path(), "ref", ""), ref_log), 60), 0) << Slurp(ref_log);
  const std::string ref_final = CheckpointPath(tmp.file("ref/checkpoints"), kEpochs, total);

  // Interrupted: SIGTERM once epoch 1 is under way.
  const std::string config = WriteJob(tmp.path(), "run", "");
  const std::string metrics = tmp.file("run/metrics.jsonl");
  const std::string log1 = tmp.file("run1.log");
  const pid_t pid = Spawn(config, log1);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (MetricSteps(metrics).size() < static_cast<size_t>(kStepsPerEpoch + 3) &&
         std::chrono::steady_clock::now() < deadline && waitpid(pid, nullptr, WNOHANG) == 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ASSERT_EQ(kill(pid, SIGTERM), 0) << "the worker ended before SIGTERM was sent: " << Slurp(log1);
  ASSERT_EQ(Wait(pid, 30), 0) << Slurp(log1);
  const std::string out1 = Slurp(log1);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(out1, m, std::regex(R"(SIGTERM: stopped after global step (\d+) of (\d+); resume from (\S+))")))
      << out1;
  const int64_t stopped_at = std::stoll(m[1]);
  EXPECT_EQ(std::stoll(m[2]), total);
  EXPECT_GT(stopped_at, kStepsPerEpoch);
  ASSERT_LT(stopped_at, total);
  const std::string ckpt = m[3];
  StatusOr<CheckpointMeta> meta = ValidateCheckpoint(ckpt);
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_EQ(meta->global_step, stopped_at);
  EXPECT_EQ(meta->epoch, stopped_at / kStepsPerEpoch);
  EXPECT_EQ(meta->samples_consumed, (stopped_at % kStepsPerEpoch) * 16);
  // Steps 1..stopped_at, once each; nothing after the checkpoint's step.
  std::vector<int64_t> expected;
  for (int64_t s = 1; s <= stopped_at; ++s) expected.push_back(s);
  EXPECT_EQ(MetricSteps(metrics), expected);

  // Resume: the rest of the run, appended to the same metrics.
  const std::string log2 = tmp.file("run2.log");
  ASSERT_EQ(Wait(Spawn(WriteJob(tmp.path(), "run", "resume: latest\n"), log2), 60), 0)
      << Slurp(log2);
  EXPECT_NE(Slurp(log2).find(absl::StrCat("resuming from ", ckpt)), std::string::npos)
      << Slurp(log2);
  for (int64_t s = stopped_at + 1; s <= total; ++s) expected.push_back(s);
  EXPECT_EQ(MetricSteps(metrics), expected);  // every step of every epoch exactly once

  const Comparison c =
      CompareCheckpoints(ref_final, CheckpointPath(tmp.file("run/checkpoints"), kEpochs, total));
  EXPECT_EQ(c.error, "");
  EXPECT_TRUE(c.same_bits) << c.worst;
}

}  // namespace
}  // namespace resdist
