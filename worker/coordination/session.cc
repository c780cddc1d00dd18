// CoordinatorSession implementation. Retryable: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED
// (the coordinator is down, restarting or busy). Everything else is an answer.
#include "worker/coordination/session.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <grpcpp/grpcpp.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "proto/job_spec_convert.h"

namespace resdist::coordination {
namespace {

using Clock = std::chrono::steady_clock;

Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

bool Retryable(const Status& s) {
  return absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s) || absl::IsResourceExhausted(s);
}

std::shared_ptr<grpc::Channel> MakeChannel(const SessionOptions& o, Status* error) {
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (o.tls_ca_file.empty()) {
    creds = grpc::InsecureChannelCredentials();
  } else {
    std::ifstream in(o.tls_ca_file);
    if (!in) {
      *error = absl::InvalidArgumentError(absl::StrCat("TLS roots '", o.tls_ca_file, "': cannot open"));
      return nullptr;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ss.str();
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  // Reconnect quickly after a coordinator restart.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, static_cast<int>(o.backoff_max.count()));
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, static_cast<int>(o.backoff_initial.count()));
  return grpc::CreateCustomChannel(o.address, creds, args);
}

v1::Progress ToProto(const Progress& p) {
  v1::Progress out;
  out.set_epoch(p.epoch);
  out.set_step(p.step);
  out.set_total_steps(p.total_steps);
  out.set_samples(p.samples);
  out.set_loss(p.loss);
  out.set_train_accuracy(p.train_accuracy);
  out.set_eval_accuracy(p.eval_accuracy);
  out.set_eval_loss(p.eval_loss);
  out.set_images_per_s(p.images_per_s);
  out.set_learning_rate(p.learning_rate);
  out.set_last_checkpoint(p.last_checkpoint);
  return out;
}

}  // namespace

StatusOr<SessionOptions> SessionOptionsFromEnv(const std::string& address,
                                               const std::string& job_id, int rank,
                                               int world_size) {
  SessionOptions o;
  o.address = address;
  o.job_id = job_id;
  o.rank = rank;
  o.world_size = world_size;
  const char* token = std::getenv("RESDIST_JOB_TOKEN");
  if (token == nullptr || *token == '\0')
    return absl::InvalidArgumentError(
        "RESDIST_JOB_TOKEN is not set: the job's worker token is needed to talk to the "
        "coordinator (the launcher sets it; `resdist status JOB` shows it for external workers)");
  o.token = token;
  if (const char* attempt = std::getenv("RESDIST_ATTEMPT"); attempt != nullptr && *attempt) {
    if (!absl::SimpleAtoi(attempt, &o.attempt) || o.attempt < 0)
      return absl::InvalidArgumentError(
          absl::StrCat("RESDIST_ATTEMPT: '", attempt, "' is not an attempt number"));
  }
  if (const char* ca = std::getenv("RESDIST_TLS_CA"); ca != nullptr) o.tls_ca_file = ca;
  o.logger = Logger("worker", rank, job_id);
  return o;
}

CoordinatorSession::CoordinatorSession(const SessionOptions& options) : options_(options) {}

StatusOr<std::unique_ptr<CoordinatorSession>> CoordinatorSession::connect(
    const SessionOptions& options) {
  if (options.address.empty()) return absl::InvalidArgumentError("coordinator address is empty");
  if (options.job_id.empty()) return absl::InvalidArgumentError("job id is empty");
  if (options.rank < 0 || options.rank >= options.world_size)
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", options.rank, " is not in [0, ", options.world_size, ")"));
  SessionOptions o = options;
  if (o.host.empty()) {
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    o.host = host;
  }
  std::unique_ptr<CoordinatorSession> s(new CoordinatorSession(o));
  Status error;
  auto channel = MakeChannel(o, &error);
  if (!channel) return error;
  s->stub_ = v1::WorkerService::NewStub(channel);
  RETURN_IF_ERROR(s->Retry([&] { return s->Register(); }, o.register_timeout, "register"));
  s->heartbeat_thread_ = std::thread([p = s.get()] { p->HeartbeatLoop(); });
  return s;
}

CoordinatorSession::~CoordinatorSession() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
}

void CoordinatorSession::SetAuth(grpc::ClientContext* ctx, std::chrono::milliseconds timeout) const {
  ctx->AddMetadata("authorization", "Bearer " + options_.token);
  ctx->set_deadline(std::chrono::system_clock::now() + timeout);
}

template <typename Call>
Status CoordinatorSession::Retry(Call call, std::chrono::milliseconds timeout, const char* what) {
  const auto end = Clock::now() + timeout;
  auto backoff = options_.backoff_initial;
  bool logged = false;
  while (true) {
    Status s = call();
    if (s.ok() || !Retryable(s)) return s;
    if (Clock::now() + backoff >= end)
      return Status(s.code(), absl::StrCat(what, ": coordinator ", options_.address,
                                           " unreachable for ", timeout.count() / 1000.0,
                                           " s: ", s.message()));
    if (!logged) {
      options_.logger.warn(absl::StrCat(what, ": coordinator ", options_.address,
                                        " not reachable (", s.message(), "); retrying"));
      logged = true;
    }
    std::this_thread::sleep_for(backoff);
    backoff = std::min(options_.backoff_max, backoff * 2);
  }
}

Status CoordinatorSession::Register() {
  v1::RegisterWorkerRequest req;
  req.set_job_id(options_.job_id);
  req.set_attempt(assignment_.attempt() != 0 ? assignment_.attempt() : options_.attempt);
  req.set_rank(options_.rank);
  req.set_world_size(options_.world_size);
  req.set_host(options_.host);
  req.set_device(options_.device);
  req.set_pid(getpid());
  grpc::ClientContext ctx;
  SetAuth(&ctx, options_.rpc_timeout);
  v1::RegisterWorkerResponse resp;
  RETURN_IF_ERROR(FromGrpc(stub_->RegisterWorker(&ctx, req, &resp)));
  assignment_ = std::move(resp);
  return absl::OkStatus();
}

StatusOr<JobSpec> CoordinatorSession::job_spec() const {
  JobSpec spec = JobSpecFromProto(assignment_.spec());
  RETURN_IF_ERROR(ValidateJobSpec(spec));
  return spec;
}

void CoordinatorSession::report_progress(const Progress& progress) {
  std::lock_guard<std::mutex> lock(mu_);
  progress_ = ToProto(progress);
}

std::vector<Command> CoordinatorSession::poll_commands() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Command> out;
  out.swap(commands_);
  return out;
}

Status CoordinatorSession::SendHeartbeat(bool finished, std::chrono::milliseconds timeout) {
  v1::HeartbeatRequest req;
  req.set_job_id(options_.job_id);
  req.set_attempt(assignment_.attempt());
  req.set_rank(options_.rank);
  req.set_finished(finished);
  {
    std::lock_guard<std::mutex> lock(mu_);
    *req.mutable_progress() = progress_;
  }
  grpc::ClientContext ctx;
  SetAuth(&ctx, timeout);
  v1::HeartbeatResponse resp;
  Status s = FromGrpc(stub_->Heartbeat(&ctx, req, &resp));
  if (absl::IsFailedPrecondition(s) && absl::StrContains(s.message(), "not registered")) {
    // The coordinator lost track of this rank (restarted before persisting it): join again.
    options_.logger.info("coordinator does not know this rank; registering again");
    s = Register();
    if (s.ok()) return SendHeartbeat(finished, timeout);
  }
  if (!s.ok()) return s;
  heartbeats_sent_.fetch_add(1);
  std::lock_guard<std::mutex> lock(mu_);
  for (const v1::Command& c : resp.commands()) {
    Command cmd;
    cmd.kind = c.kind() == v1::Command::KIND_CHECKPOINT ? Command::Kind::kCheckpoint
                                                         : Command::Kind::kStop;
    if (c.kind() != v1::Command::KIND_CHECKPOINT && c.kind() != v1::Command::KIND_STOP) continue;
    cmd.request_id = c.request_id();
    cmd.reason = c.reason();
    if (cmd.kind == Command::Kind::kStop) stop_requested_.store(true);
    commands_.push_back(std::move(cmd));
  }
  return absl::OkStatus();
}

void CoordinatorSession::HeartbeatLoop() {
  auto interval = options_.heartbeat_interval.count() > 0
                      ? options_.heartbeat_interval
                      : std::chrono::milliseconds(std::max(100, assignment_.heartbeat_interval_ms()));
  auto wait = interval;
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, wait, [this] { return stopping_ || wake_; });
    if (stopping_) break;
    wake_ = false;
    lock.unlock();
    Status s;
    {
      std::lock_guard<std::mutex> call_lock(call_mu_);
      // Checkpoint reports first: `resdist checkpoint` waits for them.
      s = FlushCheckpointReports();
      Status hb = SendHeartbeat(false, options_.rpc_timeout);
      if (s.ok()) s = hb;
    }
    lock.lock();
    if (s.ok()) {
      if (coordinator_down_)
        options_.logger.info(absl::StrCat("coordinator ", options_.address, " reachable again"));
      coordinator_down_ = false;
      wait = interval;
    } else {
      // Keep training; the next heartbeat carries the latest report. Back off while down.
      if (!coordinator_down_)
        options_.logger.warn(absl::StrCat("heartbeat to ", options_.address,
                                          " failed: ", s.message(), "; training continues"));
      coordinator_down_ = true;
      wait = std::min(options_.backoff_max, std::max(interval, wait * 2));
    }
  }
}

void CoordinatorSession::report_checkpoint_async(
    CheckpointReport report, std::function<void(const std::vector<std::string>&)> on_indexed) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    checkpoint_queue_.push_back({std::move(report), std::move(on_indexed)});
    wake_ = true;
  }
  cv_.notify_all();
}

size_t CoordinatorSession::pending_checkpoint_reports() {
  std::lock_guard<std::mutex> lock(mu_);
  return checkpoint_queue_.size();
}

Status CoordinatorSession::FlushCheckpointReports() {
  while (true) {
    QueuedCheckpoint next;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (checkpoint_queue_.empty()) return absl::OkStatus();
      next = checkpoint_queue_.front();
    }
    std::vector<std::string> pruned;
    // One try (a timeout shorter than the first backoff): the loop retries later.
    Status s = report_checkpoint(next.report, std::chrono::milliseconds(1), &pruned);
    if (!s.ok() && Retryable(s)) return s;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!checkpoint_queue_.empty()) checkpoint_queue_.pop_front();
    }
    if (!s.ok()) {
      options_.logger.warn(absl::StrCat("checkpoint ", next.report.path,
                                        " was not indexed by the coordinator: ", s.message()));
      continue;
    }
    if (next.on_indexed) next.on_indexed(pruned);
  }
}

Status CoordinatorSession::report_checkpoint(const CheckpointReport& report,
                                             std::chrono::milliseconds timeout,
                                             std::vector<std::string>* pruned) {
  v1::ReportCheckpointRequest req;
  req.set_job_id(options_.job_id);
  req.set_attempt(assignment_.attempt());
  req.set_rank(options_.rank);
  v1::CheckpointInfo* c = req.mutable_checkpoint();
  c->set_path(report.path);
  c->set_epoch(report.epoch);
  c->set_step(report.step);
  c->set_samples(report.samples);
  c->set_bytes(report.bytes);
  c->set_request_id(report.request_id);
  c->set_checksum(report.checksum);
  return Retry(
      [&] {
        grpc::ClientContext ctx;
        SetAuth(&ctx, options_.rpc_timeout);
        v1::ReportCheckpointResponse resp;
        Status s = FromGrpc(stub_->ReportCheckpoint(&ctx, req, &resp));
        if (s.ok() && pruned != nullptr) pruned->assign(resp.pruned().begin(), resp.pruned().end());
        return s;
      },
      timeout, "report checkpoint");
}

Status CoordinatorSession::publish_rendezvous(const std::string& key, const std::string& value,
                                              std::chrono::milliseconds timeout) {
  v1::PublishRendezvousRequest req;
  req.set_job_id(options_.job_id);
  req.set_attempt(assignment_.attempt());
  req.set_key(key);
  req.set_value(value);
  return Retry(
      [&] {
        grpc::ClientContext ctx;
        SetAuth(&ctx, options_.rpc_timeout);
        v1::PublishRendezvousResponse resp;
        return FromGrpc(stub_->PublishRendezvous(&ctx, req, &resp));
      },
      timeout, "publish rendezvous");
}

StatusOr<std::string> CoordinatorSession::wait_rendezvous(const std::string& key,
                                                          std::chrono::milliseconds timeout) {
  v1::GetRendezvousRequest req;
  req.set_job_id(options_.job_id);
  req.set_attempt(assignment_.attempt());
  req.set_key(key);
  const auto end = Clock::now() + timeout;
  while (true) {
    v1::GetRendezvousResponse resp;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now());
    Status s = Retry(
        [&] {
          grpc::ClientContext ctx;
          SetAuth(&ctx, options_.rpc_timeout);
          return FromGrpc(stub_->GetRendezvous(&ctx, req, &resp));
        },
        std::max(left, std::chrono::milliseconds(1)), "get rendezvous");
    RETURN_IF_ERROR(s);
    if (resp.found()) return resp.value();
    if (Clock::now() >= end)
      return absl::DeadlineExceededError(absl::StrCat("rendezvous key '", key,
                                                      "' was not published within ",
                                                      timeout.count() / 1000.0, " s"));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

Status CoordinatorSession::report_failure(const std::string& message) {
  v1::ReportFailureRequest req;
  req.set_job_id(options_.job_id);
  req.set_attempt(assignment_.attempt());
  req.set_rank(options_.rank);
  req.set_message(message.substr(0, 60000));
  grpc::ClientContext ctx;
  SetAuth(&ctx, std::min(options_.rpc_timeout, std::chrono::milliseconds(3000)));
  v1::ReportFailureResponse resp;
  return FromGrpc(stub_->ReportFailure(&ctx, req, &resp));
}

Status CoordinatorSession::finish(const Progress& final_progress,
                                  std::chrono::milliseconds timeout) {
  report_progress(final_progress);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
  std::lock_guard<std::mutex> call_lock(call_mu_);
  // Checkpoints written before the end (the final one included) are indexed before the job can
  // succeed.
  const auto end = Clock::now() + timeout;
  Status flushed = Retry([&] { return FlushCheckpointReports(); }, timeout,
                         "checkpoint reports");
  if (!flushed.ok())
    options_.logger.warn(absl::StrCat("unindexed checkpoint reports: ", flushed.message()));
  const auto left = std::max(std::chrono::milliseconds(1000),
                             std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()));
  return Retry([&] { return SendHeartbeat(true, options_.rpc_timeout); }, left, "final report");
}

}  // namespace resdist::coordination
