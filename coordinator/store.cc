// SQLite store implementation: prepared statements through a small RAII wrapper; every error
// names the statement's purpose and SQLite's message.
#include "coordinator/store.h"

#include <sqlite3.h>

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace resdist::coordinator {
namespace {

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs(
  id TEXT PRIMARY KEY, number INTEGER NOT NULL, state INTEGER NOT NULL,
  created_ms INTEGER NOT NULL, token TEXT NOT NULL, chunk_size INTEGER NOT NULL,
  status BLOB NOT NULL, spec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS attempts(
  job_id TEXT NOT NULL, number INTEGER NOT NULL, process_group INTEGER NOT NULL, info BLOB NOT NULL,
  PRIMARY KEY(job_id, number));
CREATE TABLE IF NOT EXISTS workers(
  job_id TEXT NOT NULL, attempt INTEGER NOT NULL, rank INTEGER NOT NULL, info BLOB NOT NULL,
  PRIMARY KEY(job_id, attempt, rank));
CREATE TABLE IF NOT EXISTS checkpoints(
  job_id TEXT NOT NULL, path TEXT NOT NULL, unix_ms INTEGER NOT NULL, info BLOB NOT NULL,
  PRIMARY KEY(job_id, path));
CREATE TABLE IF NOT EXISTS events(
  job_id TEXT NOT NULL, seq INTEGER NOT NULL, unix_ms INTEGER NOT NULL, attempt INTEGER NOT NULL,
  kind TEXT NOT NULL, message TEXT NOT NULL, PRIMARY KEY(job_id, seq));
CREATE TABLE IF NOT EXISTS rendezvous(
  job_id TEXT NOT NULL, attempt INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
  PRIMARY KEY(job_id, attempt, key));
)sql";

// One prepared statement; binds are 1-based like SQLite's.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& Bind(int i, int64_t v) {
    if (ok()) rc_ = sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  Stmt& Bind(int i, const std::string& v) {
    if (ok()) rc_ = sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindBlob(int i, const std::string& v) {
    if (ok()) rc_ = sqlite3_bind_blob(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  // Runs a statement that returns no rows.
  Status Run(absl::string_view what) {
    if (ok()) rc_ = sqlite3_step(stmt_);
    if (rc_ != SQLITE_DONE) return Error(what);
    return absl::OkStatus();
  }
  // Steps once: true with a row, false when done; errors go to `status`.
  bool Next(Status* status, absl::string_view what) {
    if (!ok()) {
      *status = Error(what);
      return false;
    }
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc != SQLITE_DONE) {
      rc_ = rc;
      *status = Error(what);
    }
    return false;
  }
  int64_t Int(int col) { return sqlite3_column_int64(stmt_, col); }
  std::string Text(int col) {
    const void* p = sqlite3_column_blob(stmt_, col);
    int n = sqlite3_column_bytes(stmt_, col);
    return p == nullptr ? std::string() : std::string(static_cast<const char*>(p), n);
  }

 private:
  bool ok() const { return rc_ == SQLITE_OK; }
  Status Error(absl::string_view what) const {
    return absl::InternalError(absl::StrCat("state store: ", what, ": ", sqlite3_errmsg(db_)));
  }
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_ = SQLITE_OK;
};

template <typename Message>
Status ParseBlob(const std::string& bytes, Message* m, absl::string_view what) {
  if (!m->ParseFromString(bytes))
    return absl::DataLossError(absl::StrCat("state store: ", what, ": record does not parse"));
  return absl::OkStatus();
}

}  // namespace

StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                           nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close(db);
    return absl::UnavailableError(absl::StrCat("state store '", path, "': ", msg));
  }
  std::unique_ptr<Store> store(new Store(db));
  sqlite3_busy_timeout(db, 5000);
  // WAL: readers never block the writer and a crash never corrupts the file; NORMAL sync in WAL
  // mode loses at most the last transactions on power loss, never consistency.
  RETURN_IF_ERROR(store->Exec("PRAGMA journal_mode=WAL;"));
  RETURN_IF_ERROR(store->Exec("PRAGMA synchronous=NORMAL;"));
  RETURN_IF_ERROR(store->Exec(kSchema));
  return store;
}

Store::~Store() { sqlite3_close(db_); }

Status Store::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat("state store: ", msg));
  }
  return absl::OkStatus();
}

StatusOr<int64_t> Store::NextJobNumber() {
  std::lock_guard<std::mutex> lock(mu_);
  RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE;"));
  Stmt up(db_,
          "INSERT INTO meta(key, value) VALUES('next_job', 1) "
          "ON CONFLICT(key) DO UPDATE SET value = value + 1;");
  Status s = up.Run("next job number");
  int64_t number = 0;
  if (s.ok()) {
    Stmt q(db_, "SELECT value FROM meta WHERE key = 'next_job';");
    if (q.Next(&s, "next job number")) number = q.Int(0);
  }
  if (!s.ok()) {
    Exec("ROLLBACK;").IgnoreError();
    return s;
  }
  RETURN_IF_ERROR(Exec("COMMIT;"));
  return number;
}

Status Store::PutJob(const JobRecord& job) {
  std::lock_guard<std::mutex> lock(mu_);
  v1::JobStatus core = job.status;
  core.clear_ranks();
  core.clear_attempts();
  core.clear_last_checkpoint();
  int64_t number = 0;
  (void)absl::SimpleAtoi(absl::string_view(job.status.job_id()).substr(job.status.job_id().rfind('-') + 1), &number);
  return Stmt(db_,
              "INSERT INTO jobs(id, number, state, created_ms, token, chunk_size, status, spec) "
              "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(id) DO UPDATE SET "
              "state = ?3, token = ?5, chunk_size = ?6, status = ?7, spec = ?8;")
      .Bind(1, job.status.job_id())
      .Bind(2, number)
      .Bind(3, static_cast<int64_t>(job.status.state()))
      .Bind(4, job.status.created_unix_ms())
      .Bind(5, job.worker_token)
      .Bind(6, job.chunk_size)
      .BindBlob(7, core.SerializeAsString())
      .BindBlob(8, job.spec.SerializeAsString())
      .Run("write job");
}

Status Store::PutAttempt(const std::string& job_id, const AttemptRecord& attempt) {
  std::lock_guard<std::mutex> lock(mu_);
  return Stmt(db_,
              "INSERT OR REPLACE INTO attempts(job_id, number, process_group, info) "
              "VALUES(?1, ?2, ?3, ?4);")
      .Bind(1, job_id)
      .Bind(2, attempt.info.number())
      .Bind(3, attempt.process_group)
      .BindBlob(4, attempt.info.SerializeAsString())
      .Run("write attempt");
}

Status Store::PutWorker(const std::string& job_id, int attempt, const v1::RankStatus& rank) {
  std::lock_guard<std::mutex> lock(mu_);
  return Stmt(db_,
              "INSERT OR REPLACE INTO workers(job_id, attempt, rank, info) VALUES(?1, ?2, ?3, ?4);")
      .Bind(1, job_id)
      .Bind(2, attempt)
      .Bind(3, rank.rank())
      .BindBlob(4, rank.SerializeAsString())
      .Run("write worker");
}

Status Store::PutCheckpoint(const std::string& job_id, const v1::CheckpointInfo& checkpoint) {
  std::lock_guard<std::mutex> lock(mu_);
  return Stmt(db_,
              "INSERT OR REPLACE INTO checkpoints(job_id, path, unix_ms, info) "
              "VALUES(?1, ?2, ?3, ?4);")
      .Bind(1, job_id)
      .Bind(2, checkpoint.path())
      .Bind(3, checkpoint.unix_ms())
      .BindBlob(4, checkpoint.SerializeAsString())
      .Run("write checkpoint");
}

Status Store::DeleteCheckpoint(const std::string& job_id, const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  return Stmt(db_, "DELETE FROM checkpoints WHERE job_id = ?1 AND path = ?2;")
      .Bind(1, job_id)
      .Bind(2, path)
      .Run("delete checkpoint");
}

Status Store::AppendEvent(const std::string& job_id, const v1::Event& event) {
  std::lock_guard<std::mutex> lock(mu_);
  return Stmt(db_,
              "INSERT INTO events(job_id, seq, unix_ms, attempt, kind, message) "
              "VALUES(?1, ?2, ?3, ?4, ?5, ?6);")
      .Bind(1, job_id)
      .Bind(2, event.seq())
      .Bind(3, event.unix_ms())
      .Bind(4, event.attempt())
      .Bind(5, event.kind())
      .Bind(6, event.message())
      .Run("append event");
}

Status Store::PutRendezvous(const std::string& job_id, int attempt, const std::string& key,
                            const std::string& value) {
  std::lock_guard<std::mutex> lock(mu_);
  return Stmt(db_,
              "INSERT OR REPLACE INTO rendezvous(job_id, attempt, key, value) "
              "VALUES(?1, ?2, ?3, ?4);")
      .Bind(1, job_id)
      .Bind(2, attempt)
      .Bind(3, key)
      .BindBlob(4, value)
      .Run("write rendezvous");
}

StatusOr<std::vector<LoadedJob>> Store::LoadAll() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<LoadedJob> jobs;
  Status s;
  {
    Stmt q(db_, "SELECT id, token, chunk_size, status, spec FROM jobs ORDER BY number;");
    while (q.Next(&s, "load jobs")) {
      LoadedJob j;
      RETURN_IF_ERROR(ParseBlob(q.Text(3), &j.job.status, "job status"));
      RETURN_IF_ERROR(ParseBlob(q.Text(4), &j.job.spec, "job spec"));
      j.job.status.set_job_id(q.Text(0));
      j.job.worker_token = q.Text(1);
      j.job.chunk_size = q.Int(2);
      jobs.push_back(std::move(j));
    }
    RETURN_IF_ERROR(s);
  }
  for (LoadedJob& j : jobs) {
    const std::string& id = j.job.status.job_id();
    {
      Stmt q(db_, "SELECT process_group, info FROM attempts WHERE job_id = ?1 ORDER BY number;");
      q.Bind(1, id);
      while (q.Next(&s, "load attempts")) {
        AttemptRecord a;
        a.process_group = q.Int(0);
        RETURN_IF_ERROR(ParseBlob(q.Text(1), &a.info, "attempt"));
        j.attempts.push_back(std::move(a));
      }
      RETURN_IF_ERROR(s);
    }
    {
      Stmt q(db_, "SELECT info FROM workers WHERE job_id = ?1 AND attempt = ?2 ORDER BY rank;");
      q.Bind(1, id).Bind(2, j.job.status.attempt());
      while (q.Next(&s, "load workers")) {
        v1::RankStatus r;
        RETURN_IF_ERROR(ParseBlob(q.Text(0), &r, "worker"));
        j.ranks.push_back(std::move(r));
      }
      RETURN_IF_ERROR(s);
    }
    {
      Stmt q(db_, "SELECT info FROM checkpoints WHERE job_id = ?1 ORDER BY unix_ms, rowid;");
      q.Bind(1, id);
      while (q.Next(&s, "load checkpoints")) {
        v1::CheckpointInfo c;
        RETURN_IF_ERROR(ParseBlob(q.Text(0), &c, "checkpoint"));
        j.checkpoints.push_back(std::move(c));
      }
      RETURN_IF_ERROR(s);
    }
    {
      Stmt q(db_, "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?1;");
      q.Bind(1, id);
      if (q.Next(&s, "load events")) j.last_event_seq = q.Int(0);
      RETURN_IF_ERROR(s);
    }
  }
  return jobs;
}

StatusOr<std::vector<v1::Event>> Store::Events(const std::string& job_id, int64_t after_seq,
                                               int64_t limit) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<v1::Event> events;
  Status s;
  Stmt q(db_,
         "SELECT seq, unix_ms, attempt, kind, message FROM events "
         "WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3;");
  q.Bind(1, job_id).Bind(2, after_seq).Bind(3, limit > 0 ? limit : int64_t{-1});
  while (q.Next(&s, "read events")) {
    v1::Event e;
    e.set_seq(q.Int(0));
    e.set_unix_ms(q.Int(1));
    e.set_attempt(static_cast<int32_t>(q.Int(2)));
    e.set_kind(q.Text(3));
    e.set_message(q.Text(4));
    events.push_back(std::move(e));
  }
  RETURN_IF_ERROR(s);
  return events;
}

StatusOr<std::vector<std::pair<std::string, std::string>>> Store::Rendezvous(
    const std::string& job_id, int attempt) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<std::string, std::string>> out;
  Status s;
  Stmt q(db_, "SELECT key, value FROM rendezvous WHERE job_id = ?1 AND attempt = ?2;");
  q.Bind(1, job_id).Bind(2, attempt);
  while (q.Next(&s, "read rendezvous")) out.emplace_back(q.Text(0), q.Text(1));
  RETURN_IF_ERROR(s);
  return out;
}

}  // namespace resdist::coordinator
