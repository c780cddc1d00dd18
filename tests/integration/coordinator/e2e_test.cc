// End to end on this host: coordinator (in process, local launcher) + 2 workers under mpirun on a
// small synthetic job; `resdist watch` follows it to SUCCEEDED; `resdist checkpoint` mid-run
// waits for the file, which is indexed and validates; a worker killed with SIGKILL makes the job
// FAILED with that rank named, within the liveness deadline, or - with max_restarts and periodic
// checkpoints - restarts from the newest checkpoint and still SUCCEEDS with every step done once
// (redoing only the steps since that checkpoint).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/checkpoint.h"
#include "coordinator/server.h"
#include "resdist/v1/job_service.grpc.pb.h"

namespace resdist::coordinator {
namespace {
namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr int kDeadlineMs = 4000;

class EndToEndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           absl::StrCat("resdist-e2e-", getpid(), "-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    CoordinatorOptions o;
    o.listen = "127.0.0.1:0";
    o.state_dir = (dir_ / "state").string();
    o.data_root = dir_.string();
    o.auth_token = "e2e-token";
    o.liveness_deadline = milliseconds(kDeadlineMs);
    o.heartbeat_interval = milliseconds(500);
    o.start_timeout = milliseconds(60000);
    o.local.mpirun = RESDIST_MPIRUN;
    o.local.worker_binary = RESDIST_WORKER;
    o.local.mpirun_args = {"--bind-to", "none"};
    o.local.stop_grace_ms = 2000;
    auto c = Coordinator::Start(o);
    ASSERT_TRUE(c.ok()) << c.status();
    coordinator_ = std::move(*c);
    stub_ = v1::JobService::NewStub(
        grpc::CreateChannel(coordinator_->address(), grpc::InsecureChannelCredentials()));
    std::ofstream(dir_ / "token") << "e2e-token\n";
  }
  void TearDown() override {
    coordinator_.reset();
    fs::remove_all(dir_);
  }

  // A tiny ResNet on 8x8 synthetic images; `extra` adds job-file lines.
  std::string Submit(int epochs, int train_samples, const std::string& extra = "") {
    v1::SubmitJobRequest req;
    req.set_job_file(absl::StrCat(
        "name: e2e\nmodel: {arch: resnet20, num_classes: 10, stage_blocks: [1, 1, 1], "
        "base_width: 4}\n"
        "data: {synthetic: {train_samples: ", train_samples,
        ", eval_samples: 64, height: 8, width: 8, channels: 1, classes: 10}}\n"
        "batch_size: 32\nepochs: ", epochs, "\nworkers: 2\nprogress: lines\noutput_dir: runs/e2e\n",
        extra));
    v1::SubmitJobResponse resp;
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer e2e-token");
    grpc::Status s = stub_->SubmitJob(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.job_id();
  }

  v1::JobStatus Get(const std::string& id) {
    v1::GetJobRequest req;
    req.set_job_id(id);
    v1::GetJobResponse resp;
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer e2e-token");
    EXPECT_TRUE(stub_->GetJob(&ctx, req, &resp).ok());
    return resp.status();
  }

  v1::GetJobResponse GetWithEvents(const std::string& id) {
    v1::GetJobRequest req;
    req.set_job_id(id);
    req.set_include_events(true);
    v1::GetJobResponse resp;
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer e2e-token");
    EXPECT_TRUE(stub_->GetJob(&ctx, req, &resp).ok());
    return resp;
  }

  std::vector<v1::CheckpointInfo> Checkpoints(const std::string& id) {
    v1::ListCheckpointsRequest req;
    req.set_job_id(id);
    v1::ListCheckpointsResponse resp;
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer e2e-token");
    EXPECT_TRUE(stub_->ListCheckpoints(&ctx, req, &resp).ok());
    return {resp.checkpoints().begin(), resp.checkpoints().end()};
  }

  // Polls GetJob until `pred` holds or `timeout` passes; returns the last status.
  template <typename Pred>
  v1::JobStatus WaitUntil(const std::string& id, Pred pred, std::chrono::seconds timeout) {
    v1::JobStatus st;
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      st = Get(id);
      if (pred(st)) break;
      std::this_thread::sleep_for(milliseconds(50));
    }
    return st;
  }

  // Runs the CLI; returns the exit code, stdout in *out (and stderr in *err when given).
  int Cli(const std::string& args, std::string* out, std::string* err = nullptr) {
    const fs::path err_file = dir_ / "cli-stderr.txt";
    const std::string cmd = absl::StrCat(RESDIST_CLI, " --coordinator ", coordinator_->address(),
                                         " --token-file ", (dir_ / "token").string(), " ", args,
                                         " 2>", err_file.string());
    FILE* p = popen(cmd.c_str(), "r");
    out->clear();
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out->append(buf, n);
    const int status = pclose(p);
    if (err != nullptr) {
      std::ifstream in(err_file);
      std::stringstream ss;
      ss << in.rdbuf();
      *err = ss.str();
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  void Cancel(const std::string& id) {
    v1::CancelJobRequest req;
    req.set_job_id(id);
    v1::CancelJobResponse resp;
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer e2e-token");
    EXPECT_TRUE(stub_->CancelJob(&ctx, req, &resp).ok());
  }

  fs::path dir_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<v1::JobService::Stub> stub_;
};

TEST_F(EndToEndTest, WatchFollowsTwoMpiWorkersToSucceeded) {
  const std::string id = Submit(2, 256);
  const std::string cmd =
      absl::StrCat(RESDIST_CLI, " --coordinator ", coordinator_->address(), " --token-file ",
                   (dir_ / "token").string(), " watch ", id, " 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << out;
  EXPECT_NE(out.find("SUCCEEDED"), std::string::npos) << out;
  const v1::JobStatus st = Get(id);
  EXPECT_EQ(st.state(), v1::JOB_STATE_SUCCEEDED) << st.error();
  EXPECT_EQ(st.progress().step(), 2 * (256 / 32));
  EXPECT_GE(st.progress().eval_accuracy(), 0);
  ASSERT_EQ(st.ranks_size(), 2);
  EXPECT_NE(st.ranks(0).pid(), st.ranks(1).pid());
  EXPECT_TRUE(fs::exists(dir_ / "state" / "jobs" / id / "attempt-1.log"));
}

TEST_F(EndToEndTest, KilledWorkerFailsTheJobNamingItsRank) {
  const std::string id = Submit(200, 512);  // long enough to be killed mid-run
  v1::JobStatus st;
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < std::chrono::seconds(60)) {
    st = Get(id);
    if (st.state() == v1::JOB_STATE_RUNNING || st.state() == v1::JOB_STATE_FAILED) break;
    std::this_thread::sleep_for(milliseconds(100));
  }
  ASSERT_EQ(st.state(), v1::JOB_STATE_RUNNING) << st.error();
  std::this_thread::sleep_for(milliseconds(1500));  // mid-training
  const int64_t pid = st.ranks(1).pid();
  ASSERT_GT(pid, 1);
  ASSERT_EQ(kill(static_cast<pid_t>(pid), SIGKILL), 0);
  const auto killed = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - killed < milliseconds(kDeadlineMs + 5000)) {
    st = Get(id);
    if (st.state() == v1::JOB_STATE_FAILED) break;
    std::this_thread::sleep_for(milliseconds(100));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  ASSERT_EQ(st.state(), v1::JOB_STATE_FAILED);
  EXPECT_LT(seconds, kDeadlineMs / 1000.0 + 2.0);
  EXPECT_NE(st.error().find("rank 1"), std::string::npos) << st.error();
  // The other rank is gone too (mpirun or the launcher's kill).
  const int64_t other = st.ranks(0).pid();
  const auto gone_by = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (kill(static_cast<pid_t>(other), 0) == 0 && std::chrono::steady_clock::now() < gone_by)
    std::this_thread::sleep_for(milliseconds(100));
  EXPECT_NE(kill(static_cast<pid_t>(other), 0), 0) << "rank 0 (pid " << other << ") still alive";
}

TEST_F(EndToEndTest, RequestedCheckpointIsWrittenIndexedAndValid) {
  // 128 steps per epoch: the request lands well inside an epoch.
  const std::string id = Submit(20, 4096);
  v1::JobStatus st = WaitUntil(
      id, [](const v1::JobStatus& s) { return s.progress().step() >= 3 || IsTerminal(s.state()); },
      std::chrono::seconds(60));
  ASSERT_EQ(st.state(), v1::JOB_STATE_RUNNING) << st.error();

  std::string out, err;
  const auto asked = std::chrono::steady_clock::now();
  ASSERT_EQ(Cli(absl::StrCat("checkpoint ", id, " --timeout 60"), &out, &err), 0) << out << err;
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - asked).count();
  EXPECT_LT(waited, 20) << err;
  const std::string path(absl::StripAsciiWhitespace(out));
  ASSERT_FALSE(path.empty()) << err;
  EXPECT_EQ(path.find('\n'), std::string::npos) << "stdout is the path alone: " << out;
  EXPECT_EQ(fs::path(path).parent_path(), fs::canonical(dir_) / "runs" / "e2e" / "checkpoints");
  EXPECT_NE(err.find("written at step"), std::string::npos) << err;

  // Indexed, with the request's id, size and checksum; the file validates and matches.
  const std::vector<v1::CheckpointInfo> list = Checkpoints(id);
  auto it = std::find_if(list.begin(), list.end(),
                         [&](const v1::CheckpointInfo& c) { return c.path() == path; });
  ASSERT_NE(it, list.end());
  EXPECT_FALSE(it->request_id().empty());
  EXPECT_GT(it->bytes(), 0);
  EXPECT_EQ(it->attempt(), 1);
  StatusOr<CheckpointMeta> meta = ValidateCheckpoint(path);
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_EQ(meta->global_step, it->step());
  EXPECT_EQ(meta->epoch, it->epoch());
  EXPECT_EQ(meta->samples_consumed, it->samples());
  EXPECT_EQ(meta->checksum, it->checksum());
  EXPECT_GE(it->step(), 3);
  EXPECT_EQ(fs::file_size(path), static_cast<uintmax_t>(it->bytes()));

  // status --json shows the job's checkpoint and 0-based epochs the CLI turns into "epoch n/N".
  ASSERT_EQ(Cli(absl::StrCat("status ", id, " --json"), &out), 0);
  EXPECT_NE(out.find("runs/e2e/checkpoints/ckpt-"), std::string::npos) << out;
  st = Get(id);
  EXPECT_EQ(st.progress().epoch(), st.progress().step() / 128);

  Cancel(id);
  st = WaitUntil(id, [](const v1::JobStatus& s) { return IsTerminal(s.state()); },
                 std::chrono::seconds(30));
  EXPECT_EQ(st.state(), v1::JOB_STATE_CANCELLED);
}

// Steps recorded in metrics.jsonl, in file order (rank 0 writes one line per step; a resumed run
// appends).
std::vector<int64_t> MetricSteps(const fs::path& metrics) {
  std::vector<int64_t> steps;
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    const std::string key = "{\"step\":";
    if (line.rfind(key, 0) != 0) continue;
    steps.push_back(std::stoll(line.substr(key.size())));
  }
  return steps;
}

TEST_F(EndToEndTest, KilledWorkerRestartsFromTheLatestCheckpointAndSucceeds) {
  constexpr int kEvery = 8;
  constexpr int kSamples = 2048, kStepsPerEpoch = kSamples / 32, kEpochs = 3;
  const std::string id =
      Submit(kEpochs, kSamples,
             absl::StrCat("max_restarts: 1\ncheckpoint: {every_steps: ", kEvery, ", keep_last: 3}\n"));
  // Kill rank 1 mid-training, once a periodic checkpoint is indexed.
  v1::JobStatus st = WaitUntil(
      id,
      [](const v1::JobStatus& s) {
        return s.last_checkpoint().step() >= kEvery || IsTerminal(s.state());
      },
      std::chrono::seconds(90));
  ASSERT_EQ(st.state(), v1::JOB_STATE_RUNNING) << st.error();
  ASSERT_EQ(st.attempt(), 1);
  const int64_t pid = st.ranks(1).pid();
  ASSERT_GT(pid, 1);
  ASSERT_EQ(kill(static_cast<pid_t>(pid), SIGKILL), 0);

  st = WaitUntil(id, [](const v1::JobStatus& s) { return s.attempt() >= 2 || IsTerminal(s.state()); },
                 std::chrono::seconds(kDeadlineMs / 1000 + 10));
  ASSERT_EQ(st.attempt(), 2) << JobStateName(st.state()) << ": " << st.error();
  const std::string resumed = st.attempts(1).resume_from();
  ASSERT_FALSE(resumed.empty());
  // The newest checkpoint of attempt 1 is what attempt 2 resumes from.
  int64_t newest_step = -1, resumed_step = -1;
  for (const v1::CheckpointInfo& c : Checkpoints(id)) {
    if (c.attempt() == 1) newest_step = std::max(newest_step, c.step());
    if (c.path() == resumed) resumed_step = c.step();
  }
  ASSERT_GE(resumed_step, kEvery);
  EXPECT_EQ(resumed_step, newest_step);

  st = WaitUntil(id, [](const v1::JobStatus& s) { return IsTerminal(s.state()); },
                 std::chrono::seconds(180));
  ASSERT_EQ(st.state(), v1::JOB_STATE_SUCCEEDED) << st.error();
  EXPECT_EQ(st.attempt(), 2);
  EXPECT_EQ(st.total_steps(), kEpochs * kStepsPerEpoch);
  EXPECT_EQ(st.progress().step(), kEpochs * kStepsPerEpoch);
  EXPECT_EQ(st.progress().epoch(), kEpochs - 1);  // 0-based: the last epoch
  EXPECT_GE(st.progress().eval_accuracy(), 0);
  ASSERT_EQ(st.attempts_size(), 2);
  EXPECT_EQ(st.attempts(0).state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(st.attempts(0).reason().find("rank 1"), std::string::npos) << st.attempts(0).reason();
  EXPECT_EQ(st.attempts(1).state(), v1::JOB_STATE_SUCCEEDED);

  // The event log says why it restarted and from where.
  std::string events;
  const v1::GetJobResponse with_events = GetWithEvents(id);
  for (const v1::Event& e : with_events.events())
    events += absl::StrCat(e.attempt(), " ", e.kind(), ": ", e.message(), "\n");
  EXPECT_NE(events.find("restart 1 of 1 after: "), std::string::npos) << events;
  EXPECT_NE(events.find("attempt 2 launched by the local launcher, resuming from " + resumed),
            std::string::npos)
      << events;

  // Every step once, except those attempt 1 did after the checkpoint it resumed from: rank 0's
  // metrics show steps 1..K (attempt 1), then resumed_step+1..total (attempt 2, appended).
  const std::vector<int64_t> steps = MetricSteps(dir_ / "runs" / "e2e" / "metrics.jsonl");
  auto consecutive = [](auto first, auto last) {
    return std::adjacent_find(first, last, [](int64_t a, int64_t b) { return b != a + 1; }) == last;
  };
  const auto second = std::find(steps.rbegin(), steps.rend(), resumed_step + 1).base() - 1;
  ASSERT_TRUE(second >= steps.begin() && second < steps.end()) << "attempt 2 wrote no metrics";
  ASSERT_GT(second - steps.begin(), 0);
  EXPECT_EQ(steps.front(), 1);
  EXPECT_TRUE(consecutive(steps.begin(), second));
  EXPECT_TRUE(consecutive(second, steps.end()));
  EXPECT_EQ(steps.back(), kEpochs * kStepsPerEpoch);
  const int64_t attempt1_last = *(second - 1);
  const int64_t redone = attempt1_last - resumed_step;
  EXPECT_GE(redone, 0);
  // Checkpoints every kEvery steps; reports travel asynchronously, so the newest indexed one may
  // be one period behind the newest written.
  EXPECT_LE(redone, 2 * kEvery) << "attempt 1 reached step " << attempt1_last;
  EXPECT_EQ(static_cast<int64_t>(steps.size()), kEpochs * kStepsPerEpoch + redone);
  // The attempt log says where it resumed.
  std::ifstream log(dir_ / "state" / "jobs" / id / "attempt-2.log");
  std::stringstream ls;
  ls << log.rdbuf();
  EXPECT_NE(ls.str().find("resuming from " + resumed), std::string::npos) << ls.str();
}

}  // namespace
}  // namespace resdist::coordinator
