// The coordinator's domain: jobs, their numbered attempts, the ranks of the current attempt,
// the checkpoint index, commands for workers, liveness, and the job state machine
//   QUEUED -> STARTING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED
// with every transition an event (time + reason) in the state store. No gRPC here: the
// services (services.h) translate protos and statuses at the edge.
//
// Rationale.
// - One mutex guards all jobs. Control-plane traffic is a heartbeat per rank every few seconds;
//   simplicity and an obviously consistent state machine beat finer locking.
// - Writes go through to SQLite at every transition; per-heartbeat progress is persisted at most
//   every few seconds per job (losing a few seconds of progress on a crash is harmless, the
//   workers report it again).
// - Liveness is judged on a monotonic clock. After a coordinator restart every live rank gets a
//   fresh deadline to re-register or heartbeat, so a restart never fails a healthy job.
// - An attempt fails when a rank reports failure, goes silent past the deadline, never registers
//   (local launcher, start timeout), or the launcher's processes exit without rank 0 reporting
//   completion. A failed attempt is relaunched from the latest checkpoint while restarts remain
//   (max_restarts); otherwise the job fails with the attempt's reason.
// - Lock order: JobManager::mu_ -> Launcher / Store internals; subscribers are notified after
//   mu_ is released, under subs_mu_ only.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/log.h"
#include "common/status.h"
#include "coordinator/launcher.h"
#include "coordinator/store.h"
#include "resdist/v1/job_service.pb.h"
#include "resdist/v1/worker_service.pb.h"

namespace resdist::coordinator {

struct JobManagerOptions {
  std::string state_dir;          // holds state.db and jobs/<id>/attempt-<n>.log
  std::string data_root;          // canonical; every job path must resolve under it
  std::string worker_address;     // what launched workers dial (host:port)
  std::chrono::milliseconds liveness_deadline{30000};
  std::chrono::milliseconds start_timeout{120000};  // local launcher: ranks must register by then
  std::chrono::milliseconds heartbeat_interval{2000};
  std::chrono::milliseconds monitor_period{250};
  std::chrono::milliseconds persist_period{5000};   // progress write-back per job
  int max_running_jobs = 1;       // STARTING + RUNNING at once; the rest stay QUEUED
  Logger logger{"coordinator"};
};

// Limits on what clients may send (beyond gRPC's message size cap).
inline constexpr size_t kMaxJobFileBytes = 1 << 20;
inline constexpr size_t kMaxIdBytes = 128;
inline constexpr size_t kMaxTextBytes = 64 << 10;  // failure messages, rendezvous values
inline constexpr size_t kMaxKeyBytes = 256;

const char* JobStateName(v1::JobState state);
bool IsTerminal(v1::JobState state);

class JobManager {
 public:
  static StatusOr<std::unique_ptr<JobManager>> Create(JobManagerOptions options,
                                                      std::unique_ptr<Store> store);
  ~JobManager();
  JobManager(const JobManager&) = delete;
  JobManager& operator=(const JobManager&) = delete;

  // Installs the launcher (built with OnLauncherExit as its callback), then starts the monitor
  // thread and schedules queued jobs. `worker_address` overrides the options' value (the server
  // knows its port only after binding).
  void Start(std::unique_ptr<Launcher> launcher, const std::string& worker_address);
  void Shutdown();
  void OnLauncherExit(const std::string& job_id, int attempt, int exit_code);

  // --- JobService -------------------------------------------------------------------------
  StatusOr<v1::JobStatus> Submit(const v1::SubmitJobRequest& request);
  StatusOr<v1::GetJobResponse> Get(const std::string& job_id, bool include_events);
  StatusOr<std::vector<v1::JobStatus>> List(bool active_only, int limit);
  StatusOr<v1::JobStatus> Cancel(const std::string& job_id, const std::string& reason);
  StatusOr<std::string> RequestCheckpoint(const std::string& job_id);
  StatusOr<std::vector<v1::CheckpointInfo>> ListCheckpoints(const std::string& job_id);
  StatusOr<v1::GetJobLogsResponse> Logs(const std::string& job_id, int attempt, int64_t max_bytes);

  // Watching: a snapshot with the job's change counter, events after a sequence number, and
  // change notifications (called without locks held by the manager; must not block).
  StatusOr<std::pair<v1::JobStatus, int64_t>> Snapshot(const std::string& job_id);
  StatusOr<std::vector<v1::Event>> EventsSince(const std::string& job_id, int64_t after_seq);
  int64_t Subscribe(const std::string& job_id, std::function<void()> on_change);
  void Unsubscribe(int64_t subscription);

  // --- WorkerService ----------------------------------------------------------------------
  // OK when `token` is job_id's worker token; PERMISSION_DENIED when it belongs to another job;
  // UNAUTHENTICATED when it belongs to none.
  Status CheckWorkerToken(const std::string& job_id, const std::string& token);
  StatusOr<v1::RegisterWorkerResponse> Register(const v1::RegisterWorkerRequest& request);
  StatusOr<v1::HeartbeatResponse> Heartbeat(const v1::HeartbeatRequest& request);
  StatusOr<v1::ReportCheckpointResponse> ReportCheckpoint(const v1::ReportCheckpointRequest& request);
  Status PublishRendezvous(const v1::PublishRendezvousRequest& request);
  StatusOr<v1::GetRendezvousResponse> GetRendezvous(const v1::GetRendezvousRequest& request);
  Status ReportFailure(const v1::ReportFailureRequest& request);

  // For tests: runs one liveness pass now.
  void TEST_CheckLiveness();
  std::string TEST_WorkerToken(const std::string& job_id);

 private:
  using Clock = std::chrono::steady_clock;

  struct Rank {
    v1::RankStatus status;
    bool registered = false;
    bool finished = false;
    Clock::time_point last_seen{};   // monotonic; meaningful when registered
    std::vector<v1::Command> commands;  // waiting for the next heartbeat
  };
  struct Job {
    JobRecord rec;
    std::vector<AttemptRecord> attempts;
    std::map<int, Rank> ranks;  // current attempt, [0, workers)
    std::vector<v1::CheckpointInfo> checkpoints;
    std::map<std::string, std::string> rendezvous;  // current attempt
    std::vector<std::string> failure_reports;        // current attempt: "rank r: message"
    Clock::time_point attempt_started{};
    Clock::time_point last_persist{};
    int64_t last_event_seq = 0;
    int64_t version = 0;
    int64_t checkpoint_requests = 0;
  };

  JobManager(JobManagerOptions options, std::unique_ptr<Store> store);

  StatusOr<v1::JobSpec> ValidateAndResolve(const v1::SubmitJobRequest& request,
                                           int64_t* train_samples, int64_t* chunk_size);
  StatusOr<Job*> FindLocked(const std::string& job_id);
  StatusOr<Job*> FindAttemptLocked(const std::string& job_id, int attempt, int rank);
  v1::JobStatus StatusLocked(const Job& job) const;
  void AddEventLocked(Job& job, int attempt, const std::string& kind, const std::string& message);
  void SetStateLocked(Job& job, v1::JobState state, const std::string& reason);
  void PersistLocked(Job& job);
  void TouchLocked(Job& job);
  void ScheduleLocked();
  void StartAttemptLocked(Job& job);
  void FailAttemptLocked(Job& job, const std::string& reason);
  void EndAttemptLocked(Job& job, v1::JobState attempt_state, const std::string& reason);
  void StopProcessesLocked(Job& job);
  void MaybeSucceedLocked(Job& job);
  void CheckLivenessLocked();
  void MonitorLoop();
  void NotifyChanged();
  std::string LogPath(const std::string& job_id, int attempt) const;

  const JobManagerOptions options_;
  const std::unique_ptr<Store> store_;
  std::mutex hdf5_mu_;  // serial HDF5 is not thread-safe: one dataset open at a time

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::unique_ptr<Job>> jobs_;  // GUARDED_BY(mu_)
  std::unique_ptr<Launcher> launcher_;                // GUARDED_BY(mu_)
  std::string worker_address_;                        // GUARDED_BY(mu_)
  std::vector<std::string> changed_;                  // GUARDED_BY(mu_) jobs to notify
  bool started_ = false;                              // GUARDED_BY(mu_)
  bool shutdown_ = false;                             // GUARDED_BY(mu_)
  std::thread monitor_;

  std::mutex subs_mu_;
  int64_t next_subscription_ = 1;  // GUARDED_BY(subs_mu_)
  std::map<int64_t, std::pair<std::string, std::function<void()>>> subs_;  // GUARDED_BY(subs_mu_)
};

}  // namespace resdist::coordinator
