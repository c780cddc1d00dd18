// resdist-worker rejects bad input with one clear message naming the value and what is allowed,
// and a non-zero exit (never a crash, never a silent default). Runs the real binary.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace {

struct RunResult {
  int exit_code = -1;  // -1: killed by a signal
  std::string output;
};

RunResult RunWorker(const std::string& args) {
  const std::string cmd = std::string(RESDIST_WORKER_BIN) + " " + args + " --progress off 2>&1";
  RunResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  const int status = pclose(p);
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  return r;
}

struct Case {
  std::string args;
  std::string expected;
};

class WorkerBadInput : public ::testing::TestWithParam<Case> {};

TEST_P(WorkerBadInput, ClearMessageAndNonZeroExit) {
  const RunResult r = RunWorker(GetParam().args);
  EXPECT_GT(r.exit_code, 0) << "exit " << r.exit_code << " (-1: signal) for: " << GetParam().args
                            << "\n" << r.output;
  EXPECT_NE(r.output.find(GetParam().expected), std::string::npos)
      << "output:\n" << r.output << "\nexpected to contain: " << GetParam().expected;
}

const char kData[] = "--synthetic 256 --synthetic-shape 16x16x3 --epochs 1 --batch-size 32";

INSTANTIATE_TEST_SUITE_P(
    Cli, WorkerBadInput,
    ::testing::Values(
        Case{std::string(kData) + " --arch resnet21",
             "model.arch: unknown architecture 'resnet21'; expected one of resnet20"},
        Case{std::string(kData) + " --arch resnet18", "model resnet18 cannot take 16x16 images"},
        Case{std::string(kData) + " --lr -0.1", "optimizer.lr: -0.1 is not allowed"},
        Case{std::string(kData) + " --lr 0", "optimizer.lr: 0 is not allowed"},
        Case{"--synthetic 256 --synthetic-shape 16x16x3 --batch-size 0", "batch_size: 0 is not allowed"},
        Case{std::string(kData) + " --arch resmlp --dropout 1.5", "model.dropout: 1.5 is outside [0, 1)"},
        Case{std::string(kData) + " --arch resmlp --dropout 1", "model.dropout: 1 is outside [0, 1)"},
        Case{std::string(kData) + " --shortcut C", "--shortcut: 'C' is not a shortcut option; expected A or B"},
        Case{std::string(kData) + " --momentum 1.2", "optimizer.momentum: 1.2 is outside [0, 1)"},
        Case{std::string(kData) + " --schedule linear", "unknown schedule 'linear'; expected constant, step or cosine"},
        Case{std::string(kData) + " --label-smoothing 1", "label_smoothing: 1 is outside [0, 1)"},
        Case{std::string(kData) + " --warmup-epochs 3", "optimizer.warmup_epochs: 3 is outside [0, epochs=1]"},
        Case{"--synthetic 256 --synthetic-shape 16x16 --epochs 1", "--synthetic-shape: '16x16' is not HxWxC"},
        Case{"--train /nonexistent/train.h5 --epochs 1", "/nonexistent/train.h5"},
        Case{"--epochs 1", "no training data"}));

TEST(WorkerCli, GoodInputTrains) {
  const RunResult r = RunWorker(
      "--synthetic 128 --synthetic-eval 64 --synthetic-shape 8x8x3 --epochs 1 --batch-size 32 "
      "--arch resnet20");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("final eval accuracy:"), std::string::npos) << r.output;
}

}  // namespace
