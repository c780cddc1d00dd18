// The coordinator's durable state: one SQLite database (WAL mode) under --state-dir holding jobs,
// attempts, workers, checkpoints, events and rendezvous values, so that a restarted coordinator
// has every job, its history and its checkpoint index back. No policy here (see job_manager.h).
//
// Rationale. Records are stored as serialized protobuf messages next to the few columns we key
// or order by: the schema of a record evolves with the proto (fields added compatibly), not with
// ALTER TABLE. Writes are write-through from the job manager; one connection, one mutex.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "resdist/v1/job.pb.h"

struct sqlite3;

namespace resdist::coordinator {

// Everything about one job that is not in another table.
struct JobRecord {
  v1::JobStatus status;  // ranks/attempts/last_checkpoint are rebuilt from their tables on load
  v1::JobSpec spec;      // as accepted: paths resolved
  std::string worker_token;
  int64_t chunk_size = 1;  // of the training set, for the shard-plan parameters
};

struct AttemptRecord {
  v1::AttemptInfo info;
  int64_t process_group = 0;  // local launcher: the mpirun process group (0: none)
};

struct LoadedJob {
  JobRecord job;
  std::vector<AttemptRecord> attempts;    // by number
  std::vector<v1::RankStatus> ranks;      // of the current attempt
  std::vector<v1::CheckpointInfo> checkpoints;  // oldest first
  int64_t last_event_seq = 0;
};

class Store {
 public:
  static StatusOr<std::unique_ptr<Store>> Open(const std::string& path);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // A new, never reused job number (1, 2, ...).
  StatusOr<int64_t> NextJobNumber();

  Status PutJob(const JobRecord& job);
  Status PutAttempt(const std::string& job_id, const AttemptRecord& attempt);
  Status PutWorker(const std::string& job_id, int attempt, const v1::RankStatus& rank);
  Status PutCheckpoint(const std::string& job_id, const v1::CheckpointInfo& checkpoint);
  Status DeleteCheckpoint(const std::string& job_id, const std::string& path);
  Status AppendEvent(const std::string& job_id, const v1::Event& event);
  Status PutRendezvous(const std::string& job_id, int attempt, const std::string& key,
                       const std::string& value);

  StatusOr<std::vector<LoadedJob>> LoadAll();
  // Events of a job with seq > after_seq, oldest first; at most `limit` (0: all).
  StatusOr<std::vector<v1::Event>> Events(const std::string& job_id, int64_t after_seq,
                                          int64_t limit);
  // Rendezvous values of one attempt: key -> value.
  StatusOr<std::vector<std::pair<std::string, std::string>>> Rendezvous(const std::string& job_id,
                                                                        int attempt);

 private:
  explicit Store(sqlite3* db) : db_(db) {}
  Status Exec(const char* sql);

  std::mutex mu_;
  sqlite3* db_;  // GUARDED_BY(mu_)
};

}  // namespace resdist::coordinator
