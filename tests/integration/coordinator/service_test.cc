// Service tests against an in-process coordinator on 127.0.0.1 (port 0) with a fake launcher:
// every submit validation error, auth failures, the state machine, liveness, cancel, checkpoints,
// rendezvous, oversized and malformed requests, WatchJob, a coordinator restart, and the CLI.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/dataset.h"
#include "common/synthetic.h"
#include "coordinator/server.h"
#include "resdist/v1/job_service.grpc.pb.h"
#include "resdist/v1/worker_service.grpc.pb.h"
#include "worker/coordination/session.h"

namespace resdist::coordinator {
namespace {
namespace fs = std::filesystem;
using std::chrono::milliseconds;

// Records launches; the test plays the workers and the exit of "mpirun".
class FakeLauncher final : public Launcher {
 public:
  struct Shared {
    std::mutex mu;
    std::vector<LaunchRequest> launches;
    std::vector<std::pair<std::string, int>> stops;
    ExitCallback on_exit;
  };
  FakeLauncher(std::shared_ptr<Shared> shared, ExitCallback on_exit) : shared_(std::move(shared)) {
    std::lock_guard<std::mutex> lock(shared_->mu);
    shared_->on_exit = std::move(on_exit);
  }
  std::string name() const override { return "local"; }
  StatusOr<LaunchResult> Launch(const LaunchRequest& r) override {
    std::lock_guard<std::mutex> lock(shared_->mu);
    shared_->launches.push_back(r);
    LaunchResult out = DescribeLaunch(r, "mpirun", "/bin/resdist-worker", {});
    out.process_group = 0;
    return out;
  }
  void Stop(const std::string& job, int attempt, int64_t, const std::vector<int64_t>&) override {
    std::lock_guard<std::mutex> lock(shared_->mu);
    shared_->stops.emplace_back(job, attempt);
  }

 private:
  std::shared_ptr<Shared> shared_;
};

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           absl::StrCat("resdist-svc-", getpid(), "-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "data");
    fs::create_directories(dir_ / "outside");
    WriteDataset("data/train.h5", 256, 8, 8, 1, 10);
    WriteDataset("data/eval.h5", 64, 8, 8, 1, 10);
    WriteDataset("data/eval-rgb.h5", 64, 8, 8, 3, 10);
    WriteDataset("data/eval-5.h5", 64, 8, 8, 1, 5);
    WriteDataset("outside/train.h5", 256, 8, 8, 1, 10);
    fs::create_symlink(dir_ / "outside", dir_ / "data" / "link");
    std::ofstream(dir_ / "data" / "garbage.h5") << "not hdf5";
    shared_ = std::make_shared<FakeLauncher::Shared>();
    StartCoordinator();
  }
  void TearDown() override {
    coordinator_.reset();
    fs::remove_all(dir_);
  }

  void WriteDataset(const std::string& rel, int64_t n, int h, int w, int c, int classes) {
    SyntheticSpec s;
    s.num_samples = n;
    s.height = h;
    s.width = w;
    s.channels = c;
    s.num_classes = classes;
    auto data = make_synthetic(s);
    ASSERT_TRUE(data.ok());
    DatasetWriteOptions o;
    o.num_samples = n;
    o.height = h;
    o.width = w;
    o.channels = c;
    for (int i = 0; i < classes; ++i) o.class_names.push_back("c" + std::to_string(i));
    ASSERT_TRUE(write_dataset((dir_ / rel).string(), o, data->images.data(), data->labels.data()).ok());
  }

  void StartCoordinator(milliseconds deadline = milliseconds(30000)) {
    CoordinatorOptions o;
    o.listen = "127.0.0.1:0";
    o.state_dir = (dir_ / "state").string();
    o.data_root = (dir_ / "data").string();
    o.auth_token = "admin-secret";
    o.liveness_deadline = deadline;
    o.heartbeat_interval = milliseconds(100);
    o.max_running_jobs = 1;
    auto shared = shared_;
    o.TEST_launcher_factory = [shared](ExitCallback cb) {
      return std::make_unique<FakeLauncher>(shared, std::move(cb));
    };
    auto c = Coordinator::Start(o);
    ASSERT_TRUE(c.ok()) << c.status();
    coordinator_ = std::move(*c);
    auto channel = grpc::CreateChannel(coordinator_->address(), grpc::InsecureChannelCredentials());
    jobs_ = v1::JobService::NewStub(channel);
    workers_ = v1::WorkerService::NewStub(channel);
  }

  std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token = "admin-secret") {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return ctx;
  }

  static std::string GoodJob(int workers = 2) {
    return absl::StrCat(
        "name: t\nmodel: {arch: resnet20, num_classes: 10}\n"
        "data: {train: train.h5, eval: eval.h5}\nbatch_size: 32\nepochs: 2\nworkers: ",
        workers, "\n");
  }

  grpc::Status Submit(const std::string& job_file, v1::SubmitJobResponse* resp,
                      const std::string& token = "admin-secret") {
    v1::SubmitJobRequest req;
    req.set_job_file(job_file);
    return jobs_->SubmitJob(Ctx(token).get(), req, resp);
  }

  std::string SubmitOk(const std::string& job_file) {
    v1::SubmitJobResponse resp;
    grpc::Status s = Submit(job_file, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.job_id();
  }

  v1::JobStatus Get(const std::string& id) {
    v1::GetJobRequest req;
    req.set_job_id(id);
    v1::GetJobResponse resp;
    grpc::Status s = jobs_->GetJob(Ctx().get(), req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.status();
  }

  std::unique_ptr<coordination::CoordinatorSession> Worker(const std::string& job, int rank,
                                                           int world) {
    coordination::SessionOptions o;
    o.address = coordinator_->address();
    o.job_id = job;
    o.token = coordinator_->manager().TEST_WorkerToken(job);
    o.rank = rank;
    o.world_size = world;
    o.register_timeout = milliseconds(5000);
    o.heartbeat_interval = milliseconds(100);
    auto s = coordination::CoordinatorSession::connect(o);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }

  template <typename Pred>
  bool WaitFor(Pred pred, milliseconds timeout = milliseconds(10000)) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (pred()) return true;
      std::this_thread::sleep_for(milliseconds(20));
    }
    return pred();
  }

  fs::path dir_;
  std::shared_ptr<FakeLauncher::Shared> shared_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::WorkerService::Stub> workers_;
};

// --- Submission validation ------------------------------------------------------------------

TEST_F(ServiceTest, SubmitValidatesSpecDatasetsAndPaths) {
  struct Case {
    std::string name, file;
    grpc::StatusCode code;
    std::string needle;
  };
  const std::string base = "name: t\nmodel: {arch: resnet20, num_classes: 10}\nepochs: 1\n";
  fs::create_directories(dir_ / "data" / "out");
  fs::create_symlink(dir_ / "outside", dir_ / "data" / "out" / "checkpoints");
  const std::vector<Case> cases = {
      {"unknown key", base + "data: {train: train.h5}\nbatch_size: 32\nbogus: 1\n",
       grpc::StatusCode::INVALID_ARGUMENT, "bogus"},
      {"bad type", base + "data: {train: train.h5}\nbatch_size: many\n",
       grpc::StatusCode::INVALID_ARGUMENT, "batch_size"},
      {"negative lr", base + "data: {train: train.h5}\nbatch_size: 32\noptimizer: {lr: -1}\n",
       grpc::StatusCode::INVALID_ARGUMENT, "optimizer.lr"},
      {"batch not divisible", base + "data: {train: train.h5}\nbatch_size: 33\nworkers: 2\n",
       grpc::StatusCode::INVALID_ARGUMENT, "batch_size"},
      {"missing dataset", base + "data: {train: nope.h5}\nbatch_size: 32\n",
       grpc::StatusCode::INVALID_ARGUMENT, "data.train"},
      {"not hdf5", base + "data: {train: garbage.h5}\nbatch_size: 32\n",
       grpc::StatusCode::INVALID_ARGUMENT, "data.train"},
      {"class count", "model: {arch: resnet20, num_classes: 100}\ndata: {train: train.h5}\nbatch_size: 32\n",
       grpc::StatusCode::INVALID_ARGUMENT, "model.num_classes: 100"},
      {"eval channels", base + "data: {train: train.h5, eval: eval-rgb.h5}\nbatch_size: 32\n",
       grpc::StatusCode::INVALID_ARGUMENT, "data.eval"},
      {"eval classes", base + "data: {train: train.h5, eval: eval-5.h5}\nbatch_size: 32\n",
       grpc::StatusCode::INVALID_ARGUMENT, "data.eval"},
      {"batch too big", base + "data: {train: train.h5}\nbatch_size: 512\n",
       grpc::StatusCode::INVALID_ARGUMENT, "batch_size"},
      {"dotdot escape", base + "data: {train: ../outside/train.h5}\nbatch_size: 32\n",
       grpc::StatusCode::PERMISSION_DENIED, "outside --data-root"},
      {"absolute escape",
       base + "data: {train: " + (dir_ / "outside" / "train.h5").string() + "}\nbatch_size: 32\n",
       grpc::StatusCode::PERMISSION_DENIED, "data.train"},
      {"symlink escape", base + "data: {train: link/train.h5}\nbatch_size: 32\n",
       grpc::StatusCode::PERMISSION_DENIED, "data.train"},
      {"output escape", base + "data: {train: train.h5}\nbatch_size: 32\noutput_dir: ../../x\n",
       grpc::StatusCode::PERMISSION_DENIED, "output_dir"},
      {"not yaml", "{{{", grpc::StatusCode::INVALID_ARGUMENT, "not valid YAML or JSON"},
  };
  for (const Case& c : cases) {
    v1::SubmitJobResponse resp;
    grpc::Status s = Submit(c.file, &resp);
    EXPECT_EQ(s.error_code(), c.code) << c.name << ": " << s.error_message();
    EXPECT_NE(s.error_message().find(c.needle), std::string::npos)
        << c.name << ": " << s.error_message();
  }
  // Neither or both of spec and job_file.
  v1::SubmitJobRequest req;
  v1::SubmitJobResponse resp;
  EXPECT_EQ(jobs_->SubmitJob(Ctx().get(), req, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  req.set_job_file(GoodJob());
  req.mutable_spec()->set_name("x");
  EXPECT_EQ(jobs_->SubmitJob(Ctx().get(), req, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  // Nothing was created.
  v1::ListJobsResponse list;
  ASSERT_TRUE(jobs_->ListJobs(Ctx().get(), v1::ListJobsRequest(), &list).ok());
  EXPECT_EQ(list.jobs_size(), 0);
}

TEST_F(ServiceTest, StructuredSpecUsesTheSameValidation) {
  v1::SubmitJobRequest req;
  v1::JobSpec* spec = req.mutable_spec();
  spec->set_name("structured");
  spec->mutable_data()->set_train("train.h5");
  spec->set_batch_size(32);
  spec->set_workers(2);
  spec->mutable_optimizer()->set_momentum(2.0);  // out of range
  v1::SubmitJobResponse resp;
  grpc::Status s = jobs_->SubmitJob(Ctx().get(), req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("optimizer.momentum"), std::string::npos) << s.error_message();

  spec->mutable_optimizer()->clear_momentum();
  ASSERT_TRUE(jobs_->SubmitJob(Ctx().get(), req, &resp).ok());
  v1::GetJobRequest g;
  g.set_job_id(resp.job_id());
  v1::GetJobResponse got;
  ASSERT_TRUE(jobs_->GetJob(Ctx().get(), g, &got).ok());
  // Paths come back resolved; num_classes 0 was taken from the data; steps computed.
  EXPECT_EQ(got.spec().data().train(), fs::canonical(dir_ / "data" / "train.h5").string());
  EXPECT_EQ(got.spec().model().num_classes(), 10);
  EXPECT_EQ(got.status().total_steps(), 256 / 32);  // 1 epoch (default) of 8 steps
}

TEST_F(ServiceTest, OversizedAndMalformedRequestsAreRejectedNotFatal) {
  v1::SubmitJobResponse resp;
  // Above the gRPC message cap (4 MiB).
  grpc::Status s = Submit(std::string(5 << 20, 'x'), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  // Above the job-file cap but below the message cap.
  s = Submit(std::string(2 << 20, ' '), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  // Long ids and binary junk.
  v1::GetJobRequest g;
  g.set_job_id(std::string(10000, 'j'));
  v1::GetJobResponse got;
  EXPECT_EQ(jobs_->GetJob(Ctx().get(), g, &got).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  s = Submit(std::string("\xff\xfe\0\x01name: [", 10), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::ListJobsRequest l;
  l.set_limit(-5);
  v1::ListJobsResponse list;
  EXPECT_EQ(jobs_->ListJobs(Ctx().get(), l, &list).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // Still serving.
  EXPECT_FALSE(SubmitOk(GoodJob()).empty());
}

// --- Auth -------------------------------------------------------------------------------------

TEST_F(ServiceTest, JobServiceNeedsTheAdminToken) {
  v1::SubmitJobResponse resp;
  EXPECT_EQ(Submit(GoodJob(), &resp, "").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Submit(GoodJob(), &resp, "wrong").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->AddMetadata("authorization", "Basic admin-secret");
  v1::ListJobsResponse list;
  EXPECT_EQ(jobs_->ListJobs(ctx.get(), v1::ListJobsRequest(), &list).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  // The admin token is not a worker token, and a worker token is not the admin token.
  const std::string id = SubmitOk(GoodJob());
  const std::string worker_token = coordinator_->manager().TEST_WorkerToken(id);
  EXPECT_EQ(Submit(GoodJob(), &resp, worker_token).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  v1::RegisterWorkerRequest reg;
  reg.set_job_id(id);
  reg.set_rank(0);
  reg.set_world_size(2);
  v1::RegisterWorkerResponse r;
  EXPECT_EQ(workers_->RegisterWorker(Ctx("admin-secret").get(), reg, &r).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(workers_->RegisterWorker(Ctx("").get(), reg, &r).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(ServiceTest, AnotherJobsWorkerTokenIsPermissionDenied) {
  const std::string a = SubmitOk(GoodJob());
  const std::string b = SubmitOk(GoodJob());
  v1::RegisterWorkerRequest reg;
  reg.set_job_id(a);
  reg.set_rank(0);
  reg.set_world_size(2);
  v1::RegisterWorkerResponse r;
  grpc::Status s =
      workers_->RegisterWorker(Ctx(coordinator_->manager().TEST_WorkerToken(b)).get(), reg, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  v1::HeartbeatRequest hb;
  hb.set_job_id(a);
  v1::HeartbeatResponse hr;
  EXPECT_EQ(workers_->Heartbeat(Ctx(coordinator_->manager().TEST_WorkerToken(b)).get(), hb, &hr)
                .error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

// --- State machine ------------------------------------------------------------------------------

TEST_F(ServiceTest, JobRunsThroughItsStatesToSucceeded) {
  const std::string id = SubmitOk(GoodJob());
  // max_running_jobs = 1: a second job waits.
  const std::string queued = SubmitOk(GoodJob());
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_STARTING);
  EXPECT_EQ(Get(queued).state(), v1::JOB_STATE_QUEUED);
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    ASSERT_EQ(shared_->launches.size(), 1u);
    EXPECT_EQ(shared_->launches[0].workers, 2);
    EXPECT_EQ(shared_->launches[0].attempt, 1);
    EXPECT_EQ(shared_->launches[0].coordinator_address, coordinator_->address());
  }
  auto w0 = Worker(id, 0, 2);
  ASSERT_TRUE(w0);
  EXPECT_EQ(w0->attempt(), 1);
  EXPECT_EQ(w0->assignment().shard_plan().num_samples(), 256);
  EXPECT_EQ(w0->assignment().shard_plan().world_size(), 2);
  auto spec = w0->job_spec();
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->batch_size, 32);
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_STARTING);
  auto w1 = Worker(id, 1, 2);
  ASSERT_TRUE(w1);
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_RUNNING);

  coordination::Progress p;
  p.epoch = 1;
  p.step = 10;
  p.total_steps = 16;
  p.loss = 0.5;
  p.train_accuracy = 0.8;
  p.images_per_s = 320;
  w0->report_progress(p);
  ASSERT_TRUE(WaitFor([&] { return Get(id).progress().step() == 10; }));
  v1::JobStatus st = Get(id);
  EXPECT_DOUBLE_EQ(st.progress().loss(), 0.5);
  EXPECT_NEAR(st.eta_s(), 6 * 32 / 320.0, 1e-9);
  ASSERT_EQ(st.ranks_size(), 2);
  EXPECT_GT(st.ranks(0).last_seen_unix_ms(), 0);

  p.step = 16;
  p.eval_accuracy = 0.9;
  ASSERT_TRUE(w1->finish(p).ok());
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(w0->finish(p).ok());
  st = Get(id);
  EXPECT_EQ(st.state(), v1::JOB_STATE_SUCCEEDED);
  ASSERT_EQ(st.attempts_size(), 1);
  EXPECT_EQ(st.attempts(0).state(), v1::JOB_STATE_SUCCEEDED);
  // The queued job starts once the first one is done.
  EXPECT_EQ(Get(queued).state(), v1::JOB_STATE_STARTING);

  v1::GetJobRequest g;
  g.set_job_id(id);
  g.set_include_events(true);
  v1::GetJobResponse got;
  ASSERT_TRUE(jobs_->GetJob(Ctx().get(), g, &got).ok());
  std::vector<std::string> states;
  for (const v1::Event& e : got.events())
    if (e.kind() == "state") states.push_back(e.message().substr(0, e.message().find(':')));
  EXPECT_EQ(states, (std::vector<std::string>{"QUEUED", "STARTING", "RUNNING", "SUCCEEDED"}));
  for (const v1::Event& e : got.events()) EXPECT_GT(e.unix_ms(), 0);
}

TEST_F(ServiceTest, WorkerProtocolRejectsBadRanksAndStaleAttempts) {
  const std::string id = SubmitOk(GoodJob());
  const std::string token = coordinator_->manager().TEST_WorkerToken(id);
  v1::RegisterWorkerRequest reg;
  reg.set_job_id(id);
  reg.set_world_size(2);
  reg.set_rank(2);
  v1::RegisterWorkerResponse r;
  EXPECT_EQ(workers_->RegisterWorker(Ctx(token).get(), reg, &r).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  reg.set_rank(0);
  reg.set_world_size(3);
  EXPECT_EQ(workers_->RegisterWorker(Ctx(token).get(), reg, &r).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  reg.set_world_size(2);
  reg.set_attempt(7);
  EXPECT_EQ(workers_->RegisterWorker(Ctx(token).get(), reg, &r).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  reg.set_job_id("job-9999");
  EXPECT_EQ(workers_->RegisterWorker(Ctx(token).get(), reg, &r).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);  // the token is another job's
  // A heartbeat before registering asks the worker to register.
  v1::HeartbeatRequest hb;
  hb.set_job_id(id);
  hb.set_attempt(1);
  hb.set_rank(1);
  v1::HeartbeatResponse hr;
  grpc::Status s = workers_->Heartbeat(Ctx(token).get(), hb, &hr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("not registered"), std::string::npos);
  // A stale attempt is told to stop.
  hb.set_attempt(5);
  ASSERT_TRUE(workers_->Heartbeat(Ctx(token).get(), hb, &hr).ok());
  ASSERT_EQ(hr.commands_size(), 1);
  EXPECT_EQ(hr.commands(0).kind(), v1::Command::KIND_STOP);
}

TEST_F(ServiceTest, SilentRankFailsTheAttemptAndIsNamed) {
  coordinator_.reset();
  StartCoordinator(milliseconds(600));
  const std::string id = SubmitOk(GoodJob());
  auto w0 = Worker(id, 0, 2);
  auto w1 = Worker(id, 1, 2);
  ASSERT_TRUE(w0 && w1);
  ASSERT_TRUE(WaitFor([&] { return Get(id).state() == v1::JOB_STATE_RUNNING; }));
  const auto killed = std::chrono::steady_clock::now();
  w1.reset();  // rank 1 stops heartbeating (as if SIGKILLed)
  ASSERT_TRUE(WaitFor([&] { return Get(id).state() == v1::JOB_STATE_FAILED; }));
  EXPECT_LT(std::chrono::steady_clock::now() - killed, milliseconds(3000));
  v1::JobStatus st = Get(id);
  EXPECT_NE(st.error().find("rank 1"), std::string::npos) << st.error();
  EXPECT_NE(st.error().find("silent"), std::string::npos) << st.error();
  EXPECT_EQ(st.ranks(1).state(), "silent");
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    ASSERT_FALSE(shared_->stops.empty());  // the launcher was told to kill the rest
  }
  // Rank 0 is told to stop.
  ASSERT_TRUE(WaitFor([&] { return w0->stop_requested(); }));
}

TEST_F(ServiceTest, FailureReportAndLauncherExitFailTheJobNamingTheRank) {
  const std::string id = SubmitOk(GoodJob());
  auto w0 = Worker(id, 0, 2);
  auto w1 = Worker(id, 1, 2);
  ASSERT_TRUE(w1->report_failure("dataset read failed: /x.h5").ok());
  v1::JobStatus st = Get(id);
  EXPECT_EQ(st.state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(st.error().find("rank 1"), std::string::npos) << st.error();
  EXPECT_NE(st.error().find("dataset read failed"), std::string::npos);

  // Second job: mpirun exits non-zero with its usual message in the log.
  const std::string id2 = SubmitOk(GoodJob());
  std::string log_path;
  ExitCallback on_exit;
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    log_path = shared_->launches.back().log_path;
    on_exit = shared_->on_exit;
  }
  fs::create_directories(fs::path(log_path).parent_path());
  std::ofstream(log_path)
      << "--------\nmpirun noticed that process rank 1 with PID 4711 on node box exited on "
         "signal 9 (Killed).\n--------\n";
  on_exit(id2, 1, 137);
  st = Get(id2);
  EXPECT_EQ(st.state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(st.error().find("rank 1 (pid 4711 on box) was killed by signal 9"), std::string::npos)
      << st.error();
}

TEST_F(ServiceTest, FailedAttemptRestartsWhileRestartsRemain) {
  const std::string id = SubmitOk(GoodJob() + "max_restarts: 1\n");
  auto w0 = Worker(id, 0, 2);
  ASSERT_TRUE(w0->report_failure("boom").ok());
  v1::JobStatus st = Get(id);
  EXPECT_EQ(st.state(), v1::JOB_STATE_STARTING);
  EXPECT_EQ(st.attempt(), 2);
  ASSERT_EQ(st.attempts_size(), 2);
  EXPECT_EQ(st.attempts(0).state(), v1::JOB_STATE_FAILED);
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    ASSERT_EQ(shared_->launches.size(), 2u);
    EXPECT_EQ(shared_->launches[1].attempt, 2);
  }
  // Attempt 1's rank is told to stop; attempt 2's ranks join.
  ASSERT_TRUE(WaitFor([&] { return w0->stop_requested(); }));
  auto n0 = Worker(id, 0, 2);
  EXPECT_EQ(n0->attempt(), 2);
  ASSERT_TRUE(n0->report_failure("boom again").ok());
  st = Get(id);
  EXPECT_EQ(st.state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(st.error().find("boom again"), std::string::npos);
}

TEST_F(ServiceTest, CancelStopsWorkersAndIsFinal) {
  const std::string queued_first = SubmitOk(GoodJob());
  const std::string queued = SubmitOk(GoodJob());
  v1::CancelJobRequest c;
  c.set_job_id(queued);
  v1::CancelJobResponse cr;
  ASSERT_TRUE(jobs_->CancelJob(Ctx().get(), c, &cr).ok());
  EXPECT_EQ(cr.status().state(), v1::JOB_STATE_CANCELLED);

  auto w0 = Worker(queued_first, 0, 2);
  c.set_job_id(queued_first);
  c.set_reason("no longer needed");
  ASSERT_TRUE(jobs_->CancelJob(Ctx().get(), c, &cr).ok());
  EXPECT_EQ(cr.status().state(), v1::JOB_STATE_CANCELLED);
  ASSERT_TRUE(WaitFor([&] { return w0->stop_requested(); }));
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    ASSERT_EQ(shared_->stops.size(), 1u);
    EXPECT_EQ(shared_->stops[0].first, queued_first);
  }
  EXPECT_EQ(jobs_->CancelJob(Ctx().get(), c, &cr).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  c.set_job_id("job-4242");
  EXPECT_EQ(jobs_->CancelJob(Ctx().get(), c, &cr).error_code(), grpc::StatusCode::NOT_FOUND);
}

// --- Checkpoints and rendezvous -----------------------------------------------------------------

TEST_F(ServiceTest, CheckpointRequestReachesWorkersAndIsIndexed) {
  const std::string id = SubmitOk(GoodJob());
  v1::RequestCheckpointRequest rq;
  rq.set_job_id(id);
  v1::RequestCheckpointResponse rr;
  auto w0 = Worker(id, 0, 2);
  auto w1 = Worker(id, 1, 2);
  ASSERT_TRUE(jobs_->RequestCheckpoint(Ctx().get(), rq, &rr).ok());
  std::vector<coordination::Command> got;
  ASSERT_TRUE(WaitFor([&] {
    for (auto& c : w0->poll_commands()) got.push_back(c);
    return !got.empty();
  }));
  ASSERT_EQ(got[0].kind, coordination::Command::Kind::kCheckpoint);
  EXPECT_EQ(got[0].request_id, rr.request_id());
  ASSERT_TRUE(WaitFor([&] { return !w1->poll_commands().empty(); }));

  coordination::CheckpointReport ck;
  ck.path = "runs/ckpt-000012.h5";
  ck.step = 12;
  ck.epoch = 1;
  ck.samples = 64;
  ck.request_id = rr.request_id();
  ASSERT_TRUE(w0->report_checkpoint(ck).ok());
  ck.path = "../../outside/evil.h5";
  Status s = w0->report_checkpoint(ck);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;

  v1::ListCheckpointsRequest lq;
  lq.set_job_id(id);
  v1::ListCheckpointsResponse lr;
  ASSERT_TRUE(jobs_->ListCheckpoints(Ctx().get(), lq, &lr).ok());
  ASSERT_EQ(lr.checkpoints_size(), 1);
  EXPECT_EQ(lr.checkpoints(0).request_id(), rr.request_id());
  EXPECT_EQ(lr.checkpoints(0).path(), (fs::canonical(dir_ / "data") / "runs/ckpt-000012.h5").string());
  EXPECT_EQ(Get(id).last_checkpoint().step(), 12);

  // Not running any more: no checkpoints to request.
  v1::CancelJobRequest c;
  c.set_job_id(id);
  v1::CancelJobResponse cr;
  ASSERT_TRUE(jobs_->CancelJob(Ctx().get(), c, &cr).ok());
  EXPECT_EQ(jobs_->RequestCheckpoint(Ctx().get(), rq, &rr).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(ServiceTest, CheckpointIndexFollowsKeepLastAndRestartsResumeFromTheNewest) {
  const std::string id =
      SubmitOk(GoodJob() + "output_dir: out\nmax_restarts: 1\n"
                           "checkpoint: {every_steps: 2, keep_last: 2}\n");
  // The default directory (<output_dir>/checkpoints) is made explicit and resolved.
  v1::GetJobRequest gq;
  gq.set_job_id(id);
  v1::GetJobResponse gr;
  ASSERT_TRUE(jobs_->GetJob(Ctx().get(), gq, &gr).ok());
  const fs::path ckdir = fs::canonical(dir_ / "data") / "out" / "checkpoints";
  EXPECT_EQ(gr.spec().checkpoint().dir(), ckdir.string());
  EXPECT_EQ(gr.spec().checkpoint().every_steps(), 2);
  EXPECT_EQ(gr.spec().checkpoint().keep_last(), 2);

  auto w0 = Worker(id, 0, 2);
  auto w1 = Worker(id, 1, 2);
  EXPECT_TRUE(w0->assignment().resume_from().path().empty());
  fs::create_directories(ckdir);
  std::vector<std::string> paths;
  std::vector<std::string> pruned;
  for (int step : {2, 4, 6}) {
    coordination::CheckpointReport ck;
    ck.path = (ckdir / absl::StrCat("ckpt-e0000-s00000000", step, ".h5")).string();
    ck.step = step;
    ck.samples = step * 32;
    std::ofstream(ck.path) << "x";
    paths.push_back(ck.path);
    pruned.clear();
    ASSERT_TRUE(w0->report_checkpoint(ck, milliseconds(5000), &pruned).ok());
  }
  ASSERT_EQ(pruned.size(), 1u);
  EXPECT_EQ(pruned[0], paths[0]);
  v1::ListCheckpointsRequest lq;
  lq.set_job_id(id);
  v1::ListCheckpointsResponse lr;
  ASSERT_TRUE(jobs_->ListCheckpoints(Ctx().get(), lq, &lr).ok());
  ASSERT_EQ(lr.checkpoints_size(), 2);
  EXPECT_EQ(lr.checkpoints(0).step(), 4);
  EXPECT_EQ(lr.checkpoints(1).step(), 6);

  // A failed attempt restarts from the newest checkpoint; the events say why.
  ASSERT_TRUE(w1->report_failure("rank 1 crashed").ok());
  v1::JobStatus st = Get(id);
  ASSERT_EQ(st.attempt(), 2);
  EXPECT_EQ(st.attempts(1).resume_from(), paths[2]);
  auto n0 = Worker(id, 0, 2);
  EXPECT_EQ(n0->assignment().resume_from().path(), paths[2]);
  EXPECT_EQ(n0->assignment().shard_plan().samples_consumed(), 6 * 32);
  gq.set_include_events(true);
  ASSERT_TRUE(jobs_->GetJob(Ctx().get(), gq, &gr).ok());
  std::string events;
  for (const v1::Event& e : gr.events()) events += e.kind() + ": " + e.message() + "\n";
  EXPECT_NE(events.find("restart 1 of 1 after: rank 1 ("), std::string::npos) << events;
  EXPECT_NE(events.find("reported: rank 1 crashed"), std::string::npos) << events;
  EXPECT_NE(events.find("resuming from " + paths[2]), std::string::npos) << events;

  // Attempt 2 resumed from step 6: that file is never pruned, and does not count.
  std::vector<std::string> later;
  for (int step : {8, 10, 12}) {
    coordination::CheckpointReport ck;
    ck.path = (ckdir / absl::StrCat("ckpt-e0000-s0000000", step < 10 ? "0" : "", step, ".h5")).string();
    ck.step = step;
    pruned.clear();
    ASSERT_TRUE(n0->report_checkpoint(ck, milliseconds(5000), &pruned).ok());
    later.insert(later.end(), pruned.begin(), pruned.end());
  }
  EXPECT_EQ(later, (std::vector<std::string>{paths[1], (ckdir / "ckpt-e0000-s000000008.h5").string()}));
  ASSERT_TRUE(jobs_->ListCheckpoints(Ctx().get(), lq, &lr).ok());
  std::vector<int64_t> steps;
  for (const auto& c : lr.checkpoints()) steps.push_back(c.step());
  EXPECT_EQ(steps, (std::vector<int64_t>{6, 10, 12}));
}

TEST_F(ServiceTest, RendezvousPassesOpaqueBytes) {
  const std::string id = SubmitOk(GoodJob());
  auto w0 = Worker(id, 0, 2);
  auto w1 = Worker(id, 1, 2);
  const std::string nccl_id(128, '\0');
  std::string got;
  std::thread reader([&] {
    auto v = w1->wait_rendezvous("nccl-id", milliseconds(5000));
    if (v.ok()) got = *v;
  });
  std::this_thread::sleep_for(milliseconds(200));
  ASSERT_TRUE(w0->publish_rendezvous("nccl-id", nccl_id).ok());
  reader.join();
  EXPECT_EQ(got, nccl_id);
  EXPECT_EQ(w1->wait_rendezvous("other", milliseconds(300)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(w0->publish_rendezvous("big", std::string(100000, 'x')).code(),
            absl::StatusCode::kInvalidArgument);
}

// --- Watch ------------------------------------------------------------------------------------

TEST_F(ServiceTest, WatchStreamsChangesUntilTheJobEnds) {
  const std::string id = SubmitOk(GoodJob());
  std::vector<v1::WatchJobResponse> seen;
  std::thread watcher([&] {
    auto ctx = Ctx();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    v1::WatchJobRequest req;
    req.set_job_id(id);
    auto reader = jobs_->WatchJob(ctx.get(), req);
    v1::WatchJobResponse m;
    while (reader->Read(&m)) seen.push_back(m);
    EXPECT_TRUE(reader->Finish().ok());
  });
  auto w0 = Worker(id, 0, 2);
  auto w1 = Worker(id, 1, 2);
  coordination::Progress p;
  p.step = 16;
  ASSERT_TRUE(w0->finish(p).ok());
  ASSERT_TRUE(w1->finish(p).ok());
  watcher.join();
  ASSERT_GE(seen.size(), 2u);
  EXPECT_EQ(seen.back().status().state(), v1::JOB_STATE_SUCCEEDED);
  int64_t last = 0;
  int events = 0;
  for (const auto& m : seen)
    for (const auto& e : m.new_events()) {
      EXPECT_GT(e.seq(), last);
      last = e.seq();
      ++events;
    }
  EXPECT_GE(events, 4);

  // Unknown job and missing token end the stream at once.
  auto ctx = Ctx("");
  v1::WatchJobRequest req;
  req.set_job_id(id);
  auto reader = jobs_->WatchJob(ctx.get(), req);
  v1::WatchJobResponse m;
  EXPECT_FALSE(reader->Read(&m));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  auto ctx2 = Ctx();
  req.set_job_id("job-7777");
  auto reader2 = jobs_->WatchJob(ctx2.get(), req);
  EXPECT_FALSE(reader2->Read(&m));
  EXPECT_EQ(reader2->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
}

// --- Restart ------------------------------------------------------------------------------------

TEST_F(ServiceTest, RestartBringsBackJobsEventsCheckpointsAndLiveWorkers) {
  const std::string done = SubmitOk(GoodJob());
  {
    auto w0 = Worker(done, 0, 2);
    auto w1 = Worker(done, 1, 2);
    ASSERT_TRUE(w0->finish({}).ok());
    ASSERT_TRUE(w1->finish({}).ok());
  }
  const std::string live = SubmitOk(GoodJob());
  const std::string queued = SubmitOk(GoodJob());
  auto w0 = Worker(live, 0, 2);
  auto w1 = Worker(live, 1, 2);
  coordination::CheckpointReport ck;
  ck.path = "runs/a.h5";
  ck.step = 4;
  ASSERT_TRUE(w0->report_checkpoint(ck).ok());
  coordination::Progress p;
  p.step = 5;
  w0->report_progress(p);
  ASSERT_TRUE(WaitFor([&] { return Get(live).progress().step() == 5; }));
  v1::GetJobRequest g;
  g.set_job_id(done);
  g.set_include_events(true);
  v1::GetJobResponse before;
  ASSERT_TRUE(jobs_->GetJob(Ctx().get(), g, &before).ok());

  coordinator_.reset();  // workers keep "training": their heartbeats fail meanwhile
  std::this_thread::sleep_for(milliseconds(300));
  StartCoordinator();  // new port: point the workers' sessions at it by re-creating them
  EXPECT_EQ(Get(done).state(), v1::JOB_STATE_SUCCEEDED);
  v1::GetJobResponse after;
  ASSERT_TRUE(jobs_->GetJob(Ctx().get(), g, &after).ok());
  ASSERT_EQ(after.events_size(), before.events_size());
  for (int i = 0; i < after.events_size(); ++i)
    EXPECT_EQ(after.events(i).message(), before.events(i).message());
  v1::JobStatus st = Get(live);
  EXPECT_EQ(st.state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(st.last_checkpoint().step(), 4);
  EXPECT_EQ(Get(queued).state(), v1::JOB_STATE_QUEUED);
  v1::ListCheckpointsRequest lq;
  lq.set_job_id(live);
  v1::ListCheckpointsResponse lr;
  ASSERT_TRUE(jobs_->ListCheckpoints(Ctx().get(), lq, &lr).ok());
  EXPECT_EQ(lr.checkpoints_size(), 1);
  // The ranks reconnect (same job token, same attempt) and the job finishes.
  auto r0 = Worker(live, 0, 2);
  auto r1 = Worker(live, 1, 2);
  ASSERT_TRUE(r0 && r1);
  EXPECT_EQ(r0->attempt(), 1);
  ASSERT_TRUE(r0->finish(p).ok());
  ASSERT_TRUE(r1->finish(p).ok());
  EXPECT_EQ(Get(live).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Get(queued).state(), v1::JOB_STATE_STARTING);
  // A new job gets a new number.
  EXPECT_NE(SubmitOk(GoodJob()), queued);
}

TEST_F(ServiceTest, SessionKeepsTrainingWhileTheCoordinatorIsDown) {
  const std::string id = SubmitOk(GoodJob(1));
  auto w = Worker(id, 0, 1);
  ASSERT_TRUE(w);
  const int port = coordinator_->port();
  coordinator_.reset();
  coordination::Progress p;
  for (int step = 1; step <= 5; ++step) {  // report_progress never blocks while it is down
    p.step = step;
    const auto t0 = std::chrono::steady_clock::now();
    w->report_progress(p);
    (void)w->poll_commands();
    // A call that waited on the network would take a connect attempt or the 5 s RPC timeout;
    // 1 s leaves a loaded 2-core machine room for scheduling delays.
    EXPECT_LT(std::chrono::steady_clock::now() - t0, milliseconds(1000));
    std::this_thread::sleep_for(milliseconds(100));
  }
  // Back on the same port: the session reconnects and delivers the latest report.
  CoordinatorOptions o;
  o.listen = absl::StrCat("127.0.0.1:", port);
  o.state_dir = (dir_ / "state").string();
  o.data_root = (dir_ / "data").string();
  o.auth_token = "admin-secret";
  auto shared = shared_;
  o.TEST_launcher_factory = [shared](ExitCallback cb) {
    return std::make_unique<FakeLauncher>(shared, std::move(cb));
  };
  auto c = Coordinator::Start(o);
  ASSERT_TRUE(c.ok()) << c.status();
  coordinator_ = std::move(*c);
  jobs_ = v1::JobService::NewStub(
      grpc::CreateChannel(coordinator_->address(), grpc::InsecureChannelCredentials()));
  ASSERT_TRUE(WaitFor([&] { return Get(id).progress().step() == 5; }, milliseconds(15000)));
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_RUNNING);
}

// --- The CLI against a live coordinator ---------------------------------------------------------

std::pair<int, std::string> Shell(const std::string& command) {
  std::string out;
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

TEST_F(ServiceTest, CliSubmitStatusWatchCancelAndErrors) {
  std::ofstream(dir_ / "token") << "admin-secret\n";
  std::ofstream(dir_ / "wrong") << "nope\n";
  std::ofstream(dir_ / "job.yaml") << GoodJob();
  const std::string cli = absl::StrCat(RESDIST_CLI, " --coordinator ", coordinator_->address(),
                                       " --token-file ", (dir_ / "token").string());
  auto [rc, out] = Shell(absl::StrCat(cli, " submit ", (dir_ / "job.yaml").string()));
  ASSERT_EQ(rc, 0) << out;
  std::string id = out.substr(out.rfind('\n', out.size() - 2) + 1);
  id.pop_back();
  EXPECT_EQ(id, "job-0001") << out;

  std::tie(rc, out) = Shell(absl::StrCat(cli, " status ", id));
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("STARTING"), std::string::npos) << out;
  std::tie(rc, out) = Shell(absl::StrCat(cli, " status --json ", id));
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("\"state\": \"JOB_STATE_STARTING\""), std::string::npos) << out;
  std::tie(rc, out) = Shell(absl::StrCat(cli, " jobs"));
  EXPECT_NE(out.find(id), std::string::npos) << out;

  // watch follows to the end and its exit code reflects the outcome.
  std::thread finisher([&] {
    auto w0 = Worker(id, 0, 2);
    auto w1 = Worker(id, 1, 2);
    std::this_thread::sleep_for(milliseconds(300));
    coordination::Progress p;
    p.step = 16;
    p.eval_accuracy = 0.75;
    (void)w0->finish(p);
    (void)w1->finish(p);
  });
  std::tie(rc, out) = Shell(absl::StrCat(cli, " watch ", id));
  finisher.join();
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("SUCCEEDED"), std::string::npos) << out;
  EXPECT_NE(out.find("75.00%"), std::string::npos) << out;

  const std::string id2 = SubmitOk(GoodJob());
  std::tie(rc, out) = Shell(absl::StrCat(cli, " cancel ", id2));
  EXPECT_EQ(rc, 0) << out;
  std::tie(rc, out) = Shell(absl::StrCat(cli, " watch ", id2));
  EXPECT_EQ(rc, 2) << out;

  // Clear messages: unknown job, wrong token, unreachable coordinator, bad job file.
  std::tie(rc, out) = Shell(absl::StrCat(cli, " status job-0404"));
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("job 'job-0404' not found"), std::string::npos) << out;
  std::tie(rc, out) = Shell(absl::StrCat(RESDIST_CLI, " --coordinator ", coordinator_->address(),
                                       " --token-file ", (dir_ / "wrong").string(), " jobs"));
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("rejected the credentials"), std::string::npos) << out;
  std::tie(rc, out) = Shell(absl::StrCat("RESDIST_COORDINATOR=127.0.0.1:1 RESDIST_TOKEN_FILE=",
                                       (dir_ / "token").string(), " ", RESDIST_CLI, " jobs"));
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("cannot reach the coordinator at 127.0.0.1:1"), std::string::npos) << out;
  std::ofstream(dir_ / "bad.yaml") << "name: t\nepochs: -3\ndata: {train: train.h5}\n";
  std::tie(rc, out) = Shell(absl::StrCat(cli, " submit ", (dir_ / "bad.yaml").string()));
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("epochs"), std::string::npos) << out;
}

}  // namespace
}  // namespace resdist::coordinator
