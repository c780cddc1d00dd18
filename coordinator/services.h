// The gRPC edge of the coordinator: JobService and WorkerService on the callback API. Handlers
// stay thin: check the bearer token, call the JobManager, map absl::Status 1:1 onto
// grpc::Status. No job logic here.
#pragma once

#include <string>

#include "coordinator/job_manager.h"
#include "resdist/v1/job_service.grpc.pb.h"
#include "resdist/v1/worker_service.grpc.pb.h"

namespace resdist::coordinator {

grpc::Status ToGrpc(const Status& status);

class JobServiceImpl final : public v1::JobService::CallbackService {
 public:
  // `admin_token` empty: JobService is open (no token configured).
  JobServiceImpl(JobManager* manager, std::string admin_token)
      : manager_(manager), admin_token_(std::move(admin_token)) {}

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* ctx,
                                      const v1::SubmitJobRequest* req,
                                      v1::SubmitJobResponse* resp) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx, const v1::GetJobRequest* req,
                                   v1::GetJobResponse* resp) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx,
                                     const v1::ListJobsRequest* req,
                                     v1::ListJobsResponse* resp) override;
  grpc::ServerWriteReactor<v1::WatchJobResponse>* WatchJob(
      grpc::CallbackServerContext* ctx, const v1::WatchJobRequest* req) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx,
                                      const v1::CancelJobRequest* req,
                                      v1::CancelJobResponse* resp) override;
  grpc::ServerUnaryReactor* RequestCheckpoint(grpc::CallbackServerContext* ctx,
                                              const v1::RequestCheckpointRequest* req,
                                              v1::RequestCheckpointResponse* resp) override;
  grpc::ServerUnaryReactor* ListCheckpoints(grpc::CallbackServerContext* ctx,
                                            const v1::ListCheckpointsRequest* req,
                                            v1::ListCheckpointsResponse* resp) override;
  grpc::ServerUnaryReactor* GetJobLogs(grpc::CallbackServerContext* ctx,
                                       const v1::GetJobLogsRequest* req,
                                       v1::GetJobLogsResponse* resp) override;

 private:
  Status Authorize(grpc::CallbackServerContext* ctx) const;

  JobManager* const manager_;
  const std::string admin_token_;
};

class WorkerServiceImpl final : public v1::WorkerService::CallbackService {
 public:
  explicit WorkerServiceImpl(JobManager* manager) : manager_(manager) {}

  grpc::ServerUnaryReactor* RegisterWorker(grpc::CallbackServerContext* ctx,
                                           const v1::RegisterWorkerRequest* req,
                                           v1::RegisterWorkerResponse* resp) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const v1::HeartbeatRequest* req,
                                      v1::HeartbeatResponse* resp) override;
  grpc::ServerUnaryReactor* ReportCheckpoint(grpc::CallbackServerContext* ctx,
                                             const v1::ReportCheckpointRequest* req,
                                             v1::ReportCheckpointResponse* resp) override;
  grpc::ServerUnaryReactor* PublishRendezvous(grpc::CallbackServerContext* ctx,
                                              const v1::PublishRendezvousRequest* req,
                                              v1::PublishRendezvousResponse* resp) override;
  grpc::ServerUnaryReactor* GetRendezvous(grpc::CallbackServerContext* ctx,
                                          const v1::GetRendezvousRequest* req,
                                          v1::GetRendezvousResponse* resp) override;
  grpc::ServerUnaryReactor* ReportFailure(grpc::CallbackServerContext* ctx,
                                          const v1::ReportFailureRequest* req,
                                          v1::ReportFailureResponse* resp) override;

 private:
  Status Authorize(grpc::CallbackServerContext* ctx, const std::string& job_id) const;

  JobManager* const manager_;
};

}  // namespace resdist::coordinator
