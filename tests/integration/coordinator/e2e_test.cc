// End to end on this host: coordinator (in process, local launcher) + 2 workers under mpirun on a
// small synthetic job; `resdist watch` follows it to SUCCEEDED; a worker killed with SIGKILL
// makes the job FAILED with that rank named, within the liveness deadline.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
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

  std::string Submit(int epochs, int train_samples) {
    v1::SubmitJobRequest req;
    req.set_job_file(absl::StrCat(
        "name: e2e\nmodel: {arch: resnet20, num_classes: 10, stage_blocks: [1, 1, 1], "
        "base_width: 4}\n"
        "data: {synthetic: {train_samples: ", train_samples,
        ", eval_samples: 64, height: 8, width: 8, channels: 1, classes: 10}}\n"
        "batch_size: 32\nepochs: ", epochs, "\nworkers: 2\nprogress: lines\noutput_dir: runs/e2e\n"));
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

}  // namespace
}  // namespace resdist::coordinator
