// The worker's side of the control plane: a client of the coordinator's WorkerService that the
// training loop calls without ever blocking on the network. Not the training loop itself, and
// not the MPI bootstrap.
//
// Rationale. Training must never depend on the coordinator being up. connect() registers
// (retrying with backoff) and returns the assignment; afterwards a background thread sends a
// heartbeat every few seconds carrying the *latest* progress (reports replace each other while
// the coordinator is unreachable, so nothing queues up), re-registers after a coordinator
// restart, and collects the commands (checkpoint now, stop) that ride back on the replies. The
// loop only calls report_progress() and poll_commands(), both of which touch memory only.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/job_spec.h"
#include "common/log.h"
#include "common/status.h"
#include "resdist/v1/worker_service.grpc.pb.h"

namespace resdist::coordination {

struct SessionOptions {
  std::string address;       // coordinator host:port
  std::string job_id;
  std::string token;         // the job's worker token (RESDIST_JOB_TOKEN)
  int attempt = 0;           // 0: the job's current attempt (RESDIST_ATTEMPT when launched)
  int rank = 0;
  int world_size = 1;
  std::string host;          // default: gethostname()
  std::string device = "cpu";
  std::string tls_ca_file;   // PEM roots; non-empty enables TLS (RESDIST_TLS_CA)
  std::chrono::milliseconds rpc_timeout{5000};
  std::chrono::milliseconds register_timeout{120000};  // keep retrying registration this long
  std::chrono::milliseconds backoff_initial{200};
  std::chrono::milliseconds backoff_max{5000};
  std::chrono::milliseconds heartbeat_interval{0};     // 0: what the coordinator asks for
  Logger logger{"worker"};
};

// Fills token, attempt and TLS roots from RESDIST_JOB_TOKEN, RESDIST_ATTEMPT and RESDIST_TLS_CA.
// INVALID_ARGUMENT when the token is missing.
StatusOr<SessionOptions> SessionOptionsFromEnv(const std::string& address,
                                               const std::string& job_id, int rank,
                                               int world_size);

// What a rank knows about its training; rank 0's report is the job's progress.
struct Progress {
  int64_t epoch = 0;
  int64_t step = 0;          // global optimizer steps
  int64_t total_steps = 0;
  int64_t samples = 0;       // consumed in the current epoch, all ranks together
  double loss = 0;
  double train_accuracy = 0;
  double eval_accuracy = -1;  // -1: not evaluated yet
  double eval_loss = 0;
  double images_per_s = 0;
  double learning_rate = 0;
  std::string last_checkpoint;
};

struct Command {
  enum class Kind { kCheckpoint, kStop };
  Kind kind = Kind::kStop;
  std::string request_id;  // kCheckpoint: pass to report_checkpoint()
  std::string reason;
};

struct CheckpointReport {
  std::string path;
  int64_t epoch = 0;
  int64_t step = 0;
  int64_t samples = 0;
  int64_t bytes = 0;
  std::string request_id;  // from the kCheckpoint command, if any
  std::string checksum;
};

class CoordinatorSession {
 public:
  // Registers (retrying UNAVAILABLE/DEADLINE_EXCEEDED with backoff up to register_timeout) and
  // starts the heartbeat thread. Auth errors and rejected registrations fail at once.
  static StatusOr<std::unique_ptr<CoordinatorSession>> connect(const SessionOptions& options);
  ~CoordinatorSession();
  CoordinatorSession(const CoordinatorSession&) = delete;
  CoordinatorSession& operator=(const CoordinatorSession&) = delete;

  // The assignment from RegisterWorker: spec, resume checkpoint, shard-plan parameters.
  const v1::RegisterWorkerResponse& assignment() const { return assignment_; }
  int attempt() const { return assignment_.attempt(); }
  // The assigned spec as common/job_spec.h's struct (validated again).
  StatusOr<JobSpec> job_spec() const;

  // Replaces the report the next heartbeat carries. Never blocks on the network.
  void report_progress(const Progress& progress);
  // Commands received since the last call, oldest first. Never blocks on the network.
  std::vector<Command> poll_commands();
  // True once a stop command arrived (cancel, or the attempt was failed).
  bool stop_requested() const { return stop_requested_.load(); }

  // Indexes a written checkpoint; retried with backoff for up to `timeout`. On success,
  // `*pruned` (optional) receives the older checkpoints the coordinator's index dropped
  // (keep_last), which the caller should delete if they still exist.
  Status report_checkpoint(const CheckpointReport& report,
                           std::chrono::milliseconds timeout = std::chrono::seconds(30),
                           std::vector<std::string>* pruned = nullptr);
  // Queues a checkpoint report for the heartbeat thread, which sends it at once and keeps
  // retrying (oldest first) while the coordinator is unreachable; never blocks on the network,
  // so a checkpoint writer is never held up by the control plane. `on_indexed` (optional) runs
  // on the heartbeat thread with the pruned paths once the coordinator has indexed it. finish()
  // sends what is still queued before the final report.
  void report_checkpoint_async(
      CheckpointReport report,
      std::function<void(const std::vector<std::string>& pruned)> on_indexed = {});
  // Reports queued by report_checkpoint_async and not yet indexed.
  size_t pending_checkpoint_reports();
  // Opaque bytes per (job, attempt, key): e.g. rank 0 publishes the ncclUniqueId.
  Status publish_rendezvous(const std::string& key, const std::string& value,
                            std::chrono::milliseconds timeout = std::chrono::seconds(30));
  StatusOr<std::string> wait_rendezvous(const std::string& key,
                                        std::chrono::milliseconds timeout = std::chrono::seconds(60));
  // Tells the coordinator this rank failed (best effort, a few seconds at most).
  Status report_failure(const std::string& message);
  // Final report with finished = true; stops the heartbeat thread. Retried up to `timeout`.
  Status finish(const Progress& final_progress,
                std::chrono::milliseconds timeout = std::chrono::seconds(30));

  // Heartbeats that reached the coordinator (tests, diagnostics).
  int64_t heartbeats_sent() const { return heartbeats_sent_.load(); }

 private:
  explicit CoordinatorSession(const SessionOptions& options);
  Status Register();
  Status SendHeartbeat(bool finished, std::chrono::milliseconds timeout);
  void HeartbeatLoop();
  struct QueuedCheckpoint {
    CheckpointReport report;
    std::function<void(const std::vector<std::string>&)> on_indexed;
  };
  // Sends queued checkpoint reports (one try each, oldest first) until one fails with a
  // retryable error (left queued). Returns that error, OK when the queue drained.
  Status FlushCheckpointReports();
  void SetAuth(grpc::ClientContext* ctx, std::chrono::milliseconds timeout) const;
  // Runs `call` until OK, a non-retryable error, or `timeout`; backoff between tries.
  template <typename Call>
  Status Retry(Call call, std::chrono::milliseconds timeout, const char* what);

  const SessionOptions options_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  v1::RegisterWorkerResponse assignment_;

  std::mutex mu_;
  std::condition_variable cv_;
  v1::Progress progress_;                 // GUARDED_BY(mu_)
  std::vector<Command> commands_;         // GUARDED_BY(mu_)
  bool stopping_ = false;                 // GUARDED_BY(mu_) heartbeat thread should exit
  bool coordinator_down_ = false;         // GUARDED_BY(mu_) for one log line per outage
  bool wake_ = false;                     // GUARDED_BY(mu_) a checkpoint report was queued
  std::deque<QueuedCheckpoint> checkpoint_queue_;  // GUARDED_BY(mu_)
  std::mutex call_mu_;                    // serializes heartbeats with finish()
  std::atomic<bool> stop_requested_{false};
  std::atomic<int64_t> heartbeats_sent_{0};
  std::thread heartbeat_thread_;
};

}  // namespace resdist::coordination
