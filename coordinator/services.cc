// Service handlers. Each one is: authorize, call the manager, copy the result, Finish. Any
// exception that escapes the domain code is turned into INTERNAL rather than taking the
// coordinator down.
#include "coordinator/services.h"

#include <exception>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "coordinator/auth.h"

namespace resdist::coordinator {
namespace {

std::string Header(grpc::CallbackServerContext* ctx, absl::string_view key) {
  const auto& md = ctx->client_metadata();
  auto it = md.find(grpc::string_ref(key.data(), key.size()));
  if (it == md.end()) return std::string("\x01missing");
  return std::string(it->second.data(), it->second.size());
}

StatusOr<std::string> BearerToken(grpc::CallbackServerContext* ctx) {
  std::string v = Header(ctx, "authorization");
  return ParseBearer(v == "\x01missing" ? nullptr : &v);
}

// Runs `body` and finishes the unary call with its status.
template <typename Body>
grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* ctx, Body body) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  Status s;
  try {
    s = body();
  } catch (const std::exception& e) {
    s = absl::InternalError(absl::StrCat("internal error: ", e.what()));
  }
  reactor->Finish(ToGrpc(s));
  return reactor;
}

// WatchJob: writes the current status, then a new message whenever the job changes (the manager
// notifies us), and finishes after writing a terminal state. One write in flight at a time;
// changes during a write coalesce into one more write.
class WatchReactor final : public grpc::ServerWriteReactor<v1::WatchJobResponse> {
 public:
  WatchReactor(JobManager* manager, std::string job_id, const Status& auth)
      : manager_(manager), job_id_(std::move(job_id)) {
    if (!auth.ok()) {
      finished_ = true;
      Finish(ToGrpc(auth));
      return;
    }
    auto first = manager_->Snapshot(job_id_);
    if (!first.ok()) {
      finished_ = true;
      Finish(ToGrpc(first.status()));
      return;
    }
    // Hold mu_ across Subscribe: a change notified meanwhile only marks a pending write.
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = true;
    subscription_ = manager_->Subscribe(job_id_, [this] { OnChange(); });
    WriteLocked();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    if (!ok) {  // the client went away
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "stream closed"));
      return;
    }
    if (sent_terminal_) {
      FinishLocked(grpc::Status::OK);
      return;
    }
    if (pending_) {
      pending_ = false;
      WriteLocked();
    } else {
      writing_ = false;
    }
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!finished_) FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
  }

  void OnDone() override {
    if (subscription_ != 0) manager_->Unsubscribe(subscription_);
    delete this;
  }

 private:
  void OnChange() {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_ || sent_terminal_) return;
    if (writing_) {
      pending_ = true;
      return;
    }
    writing_ = true;
    WriteLocked();
  }

  void WriteLocked() {
    auto snap = manager_->Snapshot(job_id_);
    if (!snap.ok()) {
      FinishLocked(ToGrpc(snap.status()));
      return;
    }
    message_.Clear();
    *message_.mutable_status() = std::move(snap->first);
    auto events = manager_->EventsSince(job_id_, last_seq_);
    if (events.ok())
      for (v1::Event& e : *events) {
        last_seq_ = std::max(last_seq_, e.seq());
        *message_.add_new_events() = std::move(e);
      }
    sent_terminal_ = IsTerminal(message_.status().state());
    StartWrite(&message_);
  }

  void FinishLocked(const grpc::Status& status) {
    finished_ = true;
    Finish(status);
  }

  JobManager* const manager_;
  const std::string job_id_;
  int64_t subscription_ = 0;
  std::mutex mu_;
  v1::WatchJobResponse message_;  // GUARDED_BY(mu_); alive until OnWriteDone
  int64_t last_seq_ = 0;          // GUARDED_BY(mu_)
  bool writing_ = false;          // GUARDED_BY(mu_)
  bool pending_ = false;          // GUARDED_BY(mu_)
  bool sent_terminal_ = false;    // GUARDED_BY(mu_)
  bool finished_ = false;         // GUARDED_BY(mu_)
};

}  // namespace

grpc::Status ToGrpc(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl::StatusCode and grpc::StatusCode share their numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

// --- JobService ---------------------------------------------------------------------------

Status JobServiceImpl::Authorize(grpc::CallbackServerContext* ctx) const {
  if (admin_token_.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::string token, BearerToken(ctx));
  if (!ConstantTimeEquals(token, admin_token_))
    return absl::UnauthenticatedError("wrong token for JobService");
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* JobServiceImpl::SubmitJob(grpc::CallbackServerContext* ctx,
                                                    const v1::SubmitJobRequest* req,
                                                    v1::SubmitJobResponse* resp) {
  return Unary(ctx, [&]() -> Status {
    RETURN_IF_ERROR(Authorize(ctx));
    ASSIGN_OR_RETURN(v1::JobStatus status, manager_->Submit(*req));
    resp->set_job_id(status.job_id());
    *resp->mutable_status() = std::move(status);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* JobServiceImpl::GetJob(grpc::CallbackServerContext* ctx,
                                                 const v1::GetJobRequest* req,
                                                 v1::GetJobResponse* resp) {
  return Unary(ctx, [&]() -> Status {
    RETURN_IF_ERROR(Authorize(ctx));
    ASSIGN_OR_RETURN(*resp, manager_->Get(req->job_id(), req->include_events()));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* JobServiceImpl::ListJobs(grpc::CallbackServerContext* ctx,
                                                   const v1::ListJobsRequest* req,
                                                   v1::ListJobsResponse* resp) {
  return Unary(ctx, [&]() -> Status {
    RETURN_IF_ERROR(Authorize(ctx));
    ASSIGN_OR_RETURN(std::vector<v1::JobStatus> jobs,
                     manager_->List(req->active_only(), req->limit()));
    for (v1::JobStatus& j : jobs) *resp->add_jobs() = std::move(j);
    return absl::OkStatus();
  });
}

grpc::ServerWriteReactor<v1::WatchJobResponse>* JobServiceImpl::WatchJob(
    grpc::CallbackServerContext* ctx, const v1::WatchJobRequest* req) {
  return new WatchReactor(manager_, req->job_id(), Authorize(ctx));
}

grpc::ServerUnaryReactor* JobServiceImpl::CancelJob(grpc::CallbackServerContext* ctx,
                                                    const v1::CancelJobRequest* req,
                                                    v1::CancelJobResponse* resp) {
  return Unary(ctx, [&]() -> Status {
    RETURN_IF_ERROR(Authorize(ctx));
    ASSIGN_OR_RETURN(*resp->mutable_status(), manager_->Cancel(req->job_id(), req->reason()));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* JobServiceImpl::RequestCheckpoint(
    grpc::CallbackServerContext* ctx, const v1::RequestCheckpointRequest* req,
    v1::RequestCheckpointResponse* resp) {
  return Unary(ctx, [&]() -> Status {
    RETURN_IF_ERROR(Authorize(ctx));
    ASSIGN_OR_RETURN(*resp->mutable_request_id(), manager_->RequestCheckpoint(req->job_id()));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* JobServiceImpl::ListCheckpoints(grpc::CallbackServerContext* ctx,
                                                          const v1::ListCheckpointsRequest* req,
                                                          v1::ListCheckpointsResponse* resp) {
  return Unary(ctx, [&]() -> Status {
    RETURN_IF_ERROR(Authorize(ctx));
    ASSIGN_OR_RETURN(std::vector<v1::CheckpointInfo> list, manager_->ListCheckpoints(req->job_id()));
    for (v1::CheckpointInfo& c : list) *resp->add_checkpoints() = std::move(c);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* JobServiceImpl::GetJobLogs(grpc::CallbackServerContext* ctx,
                                                     const v1::GetJobLogsRequest* req,
                                                     v1::GetJobLogsResponse* resp) {
  return Unary(ctx, [&]() -> Status {
    RETURN_IF_ERROR(Authorize(ctx));
    ASSIGN_OR_RETURN(*resp, manager_->Logs(req->job_id(), req->attempt(), req->max_bytes()));
    return absl::OkStatus();
  });
}

// --- WorkerService ------------------------------------------------------------------------

Status WorkerServiceImpl::Authorize(grpc::CallbackServerContext* ctx,
                                    const std::string& job_id) const {
  ASSIGN_OR_RETURN(std::string token, BearerToken(ctx));
  return manager_->CheckWorkerToken(job_id, token);
}

grpc::ServerUnaryReactor* WorkerServiceImpl::RegisterWorker(grpc::CallbackServerContext* ctx,
                                                            const v1::RegisterWorkerRequest* req,
                                                            v1::RegisterWorkerResponse* resp) {
  return Unary(ctx, [&]() -> Status {
    RETURN_IF_ERROR(Authorize(ctx, req->job_id()));
    ASSIGN_OR_RETURN(*resp, manager_->Register(*req));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::Heartbeat(grpc::CallbackServerContext* ctx,
                                                       const v1::HeartbeatRequest* req,
                                                       v1::HeartbeatResponse* resp) {
  return Unary(ctx, [&]() -> Status {
    RETURN_IF_ERROR(Authorize(ctx, req->job_id()));
    ASSIGN_OR_RETURN(*resp, manager_->Heartbeat(*req));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::ReportCheckpoint(
    grpc::CallbackServerContext* ctx, const v1::ReportCheckpointRequest* req,
    v1::ReportCheckpointResponse* resp) {
  return Unary(ctx, [&]() -> Status {
    RETURN_IF_ERROR(Authorize(ctx, req->job_id()));
    ASSIGN_OR_RETURN(*resp, manager_->ReportCheckpoint(*req));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::PublishRendezvous(
    grpc::CallbackServerContext* ctx, const v1::PublishRendezvousRequest* req,
    v1::PublishRendezvousResponse*) {
  return Unary(ctx, [&]() -> Status {
    RETURN_IF_ERROR(Authorize(ctx, req->job_id()));
    return manager_->PublishRendezvous(*req);
  });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::GetRendezvous(grpc::CallbackServerContext* ctx,
                                                           const v1::GetRendezvousRequest* req,
                                                           v1::GetRendezvousResponse* resp) {
  return Unary(ctx, [&]() -> Status {
    RETURN_IF_ERROR(Authorize(ctx, req->job_id()));
    ASSIGN_OR_RETURN(*resp, manager_->GetRendezvous(*req));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::ReportFailure(grpc::CallbackServerContext* ctx,
                                                           const v1::ReportFailureRequest* req,
                                                           v1::ReportFailureResponse*) {
  return Unary(ctx, [&]() -> Status {
    RETURN_IF_ERROR(Authorize(ctx, req->job_id()));
    return manager_->ReportFailure(*req);
  });
}

}  // namespace resdist::coordinator
