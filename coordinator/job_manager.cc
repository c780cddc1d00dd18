// Job manager implementation: validation of submitted specs (the shared ValidateJobSpec plus
// dataset checks), the state machine, worker protocol and liveness. See job_manager.h.
#include "coordinator/job_manager.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/dataset.h"
#include "common/job_spec.h"
#include "coordinator/auth.h"
#include "coordinator/paths.h"
#include "proto/job_spec_convert.h"

namespace resdist::coordinator {
namespace fs = std::filesystem;

namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

Status CheckId(const std::string& id, absl::string_view what) {
  if (id.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " is required"));
  if (id.size() > kMaxIdBytes)
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is ", id.size(), " bytes, at most ", kMaxIdBytes));
  return absl::OkStatus();
}

// "dataset /x.h5: ..." errors from DatasetReader, prefixed with the job-spec field.
Status FieldError(absl::string_view field, const Status& s) {
  return Status(s.code() == absl::StatusCode::kNotFound ? absl::StatusCode::kInvalidArgument
                                                        : s.code(),
                absl::StrCat(field, ": ", s.message()));
}

// Which rank mpirun blames, from the tail of the attempt log ("process rank 1 with PID ...").
std::string RankFromMpirunLog(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  const std::streamoff start = std::max<std::streamoff>(0, size - 16384);
  in.seekg(start);
  std::string tail(static_cast<size_t>(size - start), '\0');
  in.read(tail.data(), static_cast<std::streamsize>(tail.size()));
  static const std::regex kRank(R"(process rank (\d+) with PID (\d+) on node (\S+) exited on signal (\d+)(?: \(([^)]*)\))?)");
  std::smatch m;
  if (std::regex_search(tail, m, kRank)) {
    // Open MPI sometimes prints PID 0; then the host alone identifies the process.
    std::string s = absl::StrCat("rank ", m[1].str(), " (",
                                 m[2].str() == "0" ? "" : absl::StrCat("pid ", m[2].str(), " "),
                                 "on ", m[3].str(), ") was killed by signal ", m[4].str());
    if (m[5].matched) absl::StrAppend(&s, " (", m[5].str(), ")");
    return s;
  }
  static const std::regex kExit(R"(rank (\d+) (?:with PID \S+ )?(?:on node \S+ )?exited[^\n]*)");
  if (std::regex_search(tail, m, kExit)) return m[0].str();
  return "";
}

}  // namespace

const char* JobStateName(v1::JobState state) {
  switch (state) {
    case v1::JOB_STATE_QUEUED: return "QUEUED";
    case v1::JOB_STATE_STARTING: return "STARTING";
    case v1::JOB_STATE_RUNNING: return "RUNNING";
    case v1::JOB_STATE_SUCCEEDED: return "SUCCEEDED";
    case v1::JOB_STATE_FAILED: return "FAILED";
    case v1::JOB_STATE_CANCELLED: return "CANCELLED";
    default: return "UNSPECIFIED";
  }
}

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

JobManager::JobManager(JobManagerOptions options, std::unique_ptr<Store> store)
    : options_(std::move(options)), store_(std::move(store)) {}

StatusOr<std::unique_ptr<JobManager>> JobManager::Create(JobManagerOptions options,
                                                         std::unique_ptr<Store> store) {
  std::unique_ptr<JobManager> m(new JobManager(std::move(options), std::move(store)));
  ASSIGN_OR_RETURN(std::vector<LoadedJob> loaded, m->store_->LoadAll());
  const auto now = Clock::now();
  std::lock_guard<std::mutex> lock(m->mu_);
  for (LoadedJob& l : loaded) {
    auto job = std::make_unique<Job>();
    job->rec = std::move(l.job);
    job->attempts = std::move(l.attempts);
    job->checkpoints = std::move(l.checkpoints);
    job->last_event_seq = l.last_event_seq;
    job->attempt_started = now;
    job->last_persist = now;
    const v1::JobStatus& st = job->rec.status;
    if (!IsTerminal(st.state()) && st.attempt() > 0) {
      for (int r = 0; r < st.workers(); ++r) {
        Rank& rank = job->ranks[r];
        rank.status.set_rank(r);
        rank.status.set_state("waiting");
      }
      for (v1::RankStatus& rs : l.ranks) {
        Rank& rank = job->ranks[rs.rank()];
        rank.registered = rs.last_seen_unix_ms() > 0;
        rank.finished = rs.state() == "finished";
        rank.last_seen = now;  // a fresh deadline to reach the restarted coordinator
        rank.status = std::move(rs);
      }
      auto rz = m->store_->Rendezvous(st.job_id(), st.attempt());
      if (rz.ok())
        for (auto& [k, v] : *rz) job->rendezvous[k] = v;
    }
    Job& j = *job;
    m->jobs_[st.job_id()] = std::move(job);
    if (!IsTerminal(j.rec.status.state()))
      m->AddEventLocked(j, j.rec.status.attempt(), "coordinator",
                        absl::StrCat("coordinator restarted with the job ",
                                     JobStateName(j.rec.status.state()),
                                     "; waiting for its ranks to report"));
  }
  return m;
}

JobManager::~JobManager() { Shutdown(); }

void JobManager::Start(std::unique_ptr<Launcher> launcher, const std::string& worker_address) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    launcher_ = std::move(launcher);
    worker_address_ = worker_address.empty() ? options_.worker_address : worker_address;
    started_ = true;
    ScheduleLocked();
  }
  NotifyChanged();
  monitor_ = std::thread([this] { MonitorLoop(); });
}

void JobManager::Shutdown() {
  std::unique_ptr<Launcher> launcher;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_) return;
    shutdown_ = true;
    for (auto& [id, job] : jobs_) PersistLocked(*job);
  }
  cv_.notify_all();
  if (monitor_.joinable()) monitor_.join();
  // The launcher stops watching; the processes it started keep running (they re-register with
  // the next coordinator).
  {
    std::lock_guard<std::mutex> lock(mu_);
    launcher = std::move(launcher_);
  }
  if (launcher) launcher->Shutdown();
}

std::string JobManager::LogPath(const std::string& job_id, int attempt) const {
  return absl::StrCat(options_.state_dir, "/jobs/", job_id, "/attempt-", attempt, ".log");
}

// ---------------------------------------------------------------------------------------------
// Submission.

StatusOr<v1::JobSpec> JobManager::ValidateAndResolve(const v1::SubmitJobRequest& request,
                                                     int64_t* train_samples, int64_t* chunk_size) {
  const bool has_spec = request.has_spec();
  const bool has_file = !request.job_file().empty();
  if (has_spec == has_file)
    return absl::InvalidArgumentError(
        "SubmitJobRequest: give exactly one of `spec` and `job_file`");
  JobSpec spec;
  if (has_file) {
    if (request.job_file().size() > kMaxJobFileBytes)
      return absl::InvalidArgumentError(absl::StrCat("job_file: ", request.job_file().size(),
                                                     " bytes, at most ", kMaxJobFileBytes));
    ASSIGN_OR_RETURN(spec, ParseJobSpec(request.job_file()));
  } else {
    spec = JobSpecFromProto(request.spec());
  }
  RETURN_IF_ERROR(ValidateJobSpec(spec));

  const std::string& root = options_.data_root;
  if (!spec.data.train.empty()) {
    ASSIGN_OR_RETURN(spec.data.train, ResolveUnderRoot(root, spec.data.train, "data.train"));
  }
  if (!spec.data.eval.empty()) {
    ASSIGN_OR_RETURN(spec.data.eval, ResolveUnderRoot(root, spec.data.eval, "data.eval"));
  }
  if (!spec.output_dir.empty()) {
    ASSIGN_OR_RETURN(spec.output_dir, ResolveUnderRoot(root, spec.output_dir, "output_dir"));
  }
  // The checkpoint directory in effect (checkpoint.dir, else <output_dir>/checkpoints, as the
  // worker's JobSession uses it) is made explicit, so the index and the files agree.
  if (const std::string dir = EffectiveCheckpointDir(spec); !dir.empty()) {
    ASSIGN_OR_RETURN(spec.checkpoint.dir, ResolveUnderRoot(root, dir, "checkpoint.dir"));
  }
  if (!spec.resume.empty() && spec.resume != "none" && spec.resume != "latest") {
    ASSIGN_OR_RETURN(spec.resume, ResolveUnderRoot(root, spec.resume, "resume"));
  }

  *chunk_size = 1;
  if (spec.data.train.empty()) {
    // Synthetic data (ValidateJobSpec checked train_samples > 0).
    *train_samples = spec.data.synthetic.train_samples;
    if (spec.model.num_classes == 0) spec.model.num_classes = spec.data.synthetic.classes;
    if (spec.model.num_classes != spec.data.synthetic.classes)
      return absl::InvalidArgumentError(absl::StrCat(
          "model.num_classes: ", spec.model.num_classes, ", but data.synthetic.classes is ",
          spec.data.synthetic.classes));
  } else {
    std::lock_guard<std::mutex> hdf5_lock(hdf5_mu_);
    auto train = DatasetReader::open(spec.data.train);
    if (!train.ok()) return FieldError("data.train", train.status());
    const DatasetInfo& ti = (*train)->info();
    *train_samples = ti.num_samples;
    *chunk_size = std::max<int64_t>(1, ti.chunk_samples);
    if (spec.model.num_classes == 0) spec.model.num_classes = ti.num_classes();
    if (spec.model.num_classes != ti.num_classes())
      return absl::InvalidArgumentError(absl::StrCat(
          "model.num_classes: ", spec.model.num_classes, ", but data.train '", spec.data.train,
          "' has ", ti.num_classes(), " classes"));
    if (ti.num_samples < spec.batch_size)
      return absl::InvalidArgumentError(absl::StrCat(
          "batch_size: ", spec.batch_size, " is more than the ", ti.num_samples,
          " samples of data.train '", spec.data.train, "'; expected at most ", ti.num_samples));
    if (!spec.data.eval.empty()) {
      auto eval = DatasetReader::open(spec.data.eval);
      if (!eval.ok()) return FieldError("data.eval", eval.status());
      const DatasetInfo& ei = (*eval)->info();
      if (ei.height != ti.height || ei.width != ti.width || ei.channels != ti.channels)
        return absl::InvalidArgumentError(absl::StrFormat(
            "data.eval: '%s' has %dx%dx%d images, but data.train '%s' has %dx%dx%d (HxWxC)",
            spec.data.eval, ei.height, ei.width, ei.channels, spec.data.train, ti.height,
            ti.width, ti.channels));
      if (ei.class_names != ti.class_names)
        return absl::InvalidArgumentError(absl::StrCat(
            "data.eval: '", spec.data.eval, "' has ", ei.num_classes(),
            " classes that differ from data.train's ", ti.num_classes(),
            " (names and order must match)"));
      if (ei.num_samples < spec.workers)
        return absl::InvalidArgumentError(absl::StrCat(
            "data.eval: '", spec.data.eval, "' has ", ei.num_samples,
            " samples, fewer than the ", spec.workers, " workers"));
    }
  }
  // Every rank must get at least one batch per epoch.
  const int64_t per_rank_batch = spec.batch_size / spec.workers;
  if (*train_samples / spec.workers < per_rank_batch)
    return absl::InvalidArgumentError(absl::StrCat(
        "batch_size: ", spec.batch_size, " over ", spec.workers, " workers leaves no full batch of ",
        per_rank_batch, " per rank in ", *train_samples, " training samples"));
  RETURN_IF_ERROR(ValidateJobSpec(spec));  // resolved values still in range
  return JobSpecToProto(spec);
}

StatusOr<v1::JobStatus> JobManager::Submit(const v1::SubmitJobRequest& request) {
  int64_t train_samples = 0, chunk_size = 1;
  ASSIGN_OR_RETURN(v1::JobSpec spec, ValidateAndResolve(request, &train_samples, &chunk_size));
  ASSIGN_OR_RETURN(int64_t number, store_->NextJobNumber());
  ASSIGN_OR_RETURN(std::string token, NewToken());

  auto job = std::make_unique<Job>();
  v1::JobStatus& st = job->rec.status;
  st.set_job_id(absl::StrFormat("job-%04d", number));
  st.set_name(spec.name());
  st.set_state(v1::JOB_STATE_QUEUED);
  st.set_workers(static_cast<int32_t>(spec.workers()));
  st.set_max_restarts(static_cast<int32_t>(spec.max_restarts()));
  st.set_created_unix_ms(NowMs());
  st.set_updated_unix_ms(st.created_unix_ms());
  st.set_eta_s(-1);
  st.set_train_samples(train_samples);
  st.set_epochs(spec.epochs());
  const int64_t workers = spec.workers(), batch = spec.batch_size();
  int64_t steps_per_epoch = (train_samples / workers) / (batch / workers);
  if (spec.max_steps_per_epoch() > 0)
    steps_per_epoch = std::min(steps_per_epoch, spec.max_steps_per_epoch());
  st.set_total_steps(steps_per_epoch * spec.epochs());
  st.mutable_progress()->set_total_steps(st.total_steps());
  st.mutable_progress()->set_eval_accuracy(-1);
  job->rec.spec = std::move(spec);
  job->rec.worker_token = std::move(token);
  job->rec.chunk_size = chunk_size;

  v1::JobStatus result;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_) return absl::UnavailableError("coordinator is shutting down");
    Job& j = *job;
    jobs_[st.job_id()] = std::move(job);
    PersistLocked(j);
    AddEventLocked(j, 0, "state",
                   absl::StrCat("QUEUED: submitted '", j.rec.status.name(), "', ",
                                j.rec.status.workers(), " workers, ", j.rec.status.total_steps(),
                                " steps"));
    ScheduleLocked();
    result = StatusLocked(j);
  }
  NotifyChanged();
  return result;
}

// ---------------------------------------------------------------------------------------------
// Bookkeeping.

StatusOr<JobManager::Job*> JobManager::FindLocked(const std::string& job_id) {
  RETURN_IF_ERROR(CheckId(job_id, "job_id"));
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("job '", job_id, "' not found"));
  return it->second.get();
}

v1::JobStatus JobManager::StatusLocked(const Job& job) const {
  v1::JobStatus st = job.rec.status;
  for (const auto& [r, rank] : job.ranks) *st.add_ranks() = rank.status;
  for (const AttemptRecord& a : job.attempts) *st.add_attempts() = a.info;
  if (!job.checkpoints.empty()) *st.mutable_last_checkpoint() = job.checkpoints.back();
  const v1::Progress& p = st.progress();
  const int64_t total = p.total_steps() > 0 ? p.total_steps() : st.total_steps();
  if (st.state() == v1::JOB_STATE_RUNNING && p.images_per_s() > 0 && total > 0) {
    const double remaining = static_cast<double>(std::max<int64_t>(0, total - p.step()));
    st.set_eta_s(remaining * static_cast<double>(job.rec.spec.batch_size()) / p.images_per_s());
  } else {
    st.set_eta_s(-1);
  }
  return st;
}

void JobManager::TouchLocked(Job& job) {
  ++job.version;
  job.rec.status.set_updated_unix_ms(NowMs());
  changed_.push_back(job.rec.status.job_id());
}

void JobManager::PersistLocked(Job& job) {
  job.last_persist = Clock::now();
  Status s = store_->PutJob(job.rec);
  if (s.ok())
    for (const auto& [r, rank] : job.ranks) {
      s.Update(store_->PutWorker(job.rec.status.job_id(), job.rec.status.attempt(), rank.status));
    }
  if (!s.ok()) options_.logger.error(absl::StrCat("job ", job.rec.status.job_id(), ": ", s.message()));
}

void JobManager::AddEventLocked(Job& job, int attempt, const std::string& kind,
                                const std::string& message) {
  v1::Event e;
  e.set_seq(++job.last_event_seq);
  e.set_unix_ms(NowMs());
  e.set_attempt(attempt);
  e.set_kind(kind);
  e.set_message(message);
  Status s = store_->AppendEvent(job.rec.status.job_id(), e);
  if (!s.ok()) options_.logger.error(absl::StrCat("job ", job.rec.status.job_id(), ": ", s.message()));
  options_.logger.info(absl::StrCat("job=", job.rec.status.job_id(),
                                    attempt > 0 ? absl::StrCat(" attempt=", attempt) : "", " ",
                                    kind, ": ", message));
  TouchLocked(job);
}

void JobManager::SetStateLocked(Job& job, v1::JobState state, const std::string& reason) {
  job.rec.status.set_state(state);
  if (state == v1::JOB_STATE_FAILED) job.rec.status.set_error(reason);
  PersistLocked(job);
  AddEventLocked(job, job.rec.status.attempt(), "state",
                 absl::StrCat(JobStateName(state), ": ", reason));
}

void JobManager::NotifyChanged() {
  std::vector<std::string> changed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    changed.swap(changed_);
  }
  if (changed.empty()) return;
  std::sort(changed.begin(), changed.end());
  changed.erase(std::unique(changed.begin(), changed.end()), changed.end());
  std::lock_guard<std::mutex> lock(subs_mu_);
  for (auto& [id, sub] : subs_)
    if (std::binary_search(changed.begin(), changed.end(), sub.first)) sub.second();
}

// ---------------------------------------------------------------------------------------------
// The state machine.

void JobManager::ScheduleLocked() {
  if (!started_ || shutdown_) return;
  int active = 0;
  for (auto& [id, job] : jobs_) {
    v1::JobState s = job->rec.status.state();
    if (s == v1::JOB_STATE_STARTING || s == v1::JOB_STATE_RUNNING) ++active;
  }
  for (auto& [id, job] : jobs_) {  // ids sort by submission number: FIFO
    if (active >= options_.max_running_jobs) break;
    if (job->rec.status.state() != v1::JOB_STATE_QUEUED) continue;
    StartAttemptLocked(*job);
    ++active;
  }
}

void JobManager::StartAttemptLocked(Job& job) {
  v1::JobStatus& st = job.rec.status;
  const int number = static_cast<int>(job.attempts.size()) + 1;
  AttemptRecord attempt;
  attempt.info.set_number(number);
  attempt.info.set_state(v1::JOB_STATE_STARTING);
  attempt.info.set_started_unix_ms(NowMs());
  // Resume from the newest indexed checkpoint whose file is still there (a file deleted by hand
  // would fail every rank at start-up).
  for (auto c = job.checkpoints.rbegin(); c != job.checkpoints.rend(); ++c) {
    std::error_code ec;
    if (std::filesystem::is_regular_file(c->path(), ec)) {
      attempt.info.set_resume_from(c->path());
      break;
    }
  }
  attempt.info.set_log_path(LogPath(st.job_id(), number));
  st.set_attempt(number);
  st.set_error("");
  job.ranks.clear();
  job.rendezvous.clear();
  job.failure_reports.clear();
  job.attempt_started = Clock::now();
  for (int r = 0; r < st.workers(); ++r) {
    Rank& rank = job.ranks[r];
    rank.status.set_rank(r);
    rank.status.set_state("waiting");
  }

  LaunchRequest request;
  request.job_id = st.job_id();
  request.attempt = number;
  request.workers = st.workers();
  request.threads_per_worker = static_cast<int>(job.rec.spec.threads_per_worker());
  request.coordinator_address = worker_address_;
  request.worker_token = job.rec.worker_token;
  request.log_path = attempt.info.log_path();
  StatusOr<LaunchResult> launched = launcher_->Launch(request);
  if (launched.ok()) {
    attempt.process_group = launched->process_group;
    std::vector<std::string> words;
    for (const std::string& a : launched->command) words.push_back(ShellQuote(a));
    st.set_launch_command(absl::StrJoin(words, " "));
    st.clear_launch_env();
    for (const std::string& e : launched->env) st.add_launch_env(e);
    st.set_launcher(launcher_->name());
  }
  job.attempts.push_back(attempt);
  Status s = store_->PutAttempt(st.job_id(), attempt);
  if (!s.ok()) options_.logger.error(std::string(s.message()));
  SetStateLocked(job, v1::JOB_STATE_STARTING,
                 absl::StrCat("attempt ", number, " launched by the ", launcher_->name(),
                              " launcher",
                              attempt.info.resume_from().empty()
                                  ? ""
                                  : absl::StrCat(", resuming from ", attempt.info.resume_from())));
  if (!launched.ok()) FailAttemptLocked(job, absl::StrCat("launch failed: ", launched.status().message()));
}

void JobManager::StopProcessesLocked(Job& job) {
  if (job.attempts.empty() || !launcher_) return;
  const AttemptRecord& a = job.attempts.back();
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  std::vector<int64_t> local_pids;
  for (auto& [r, rank] : job.ranks) {
    v1::Command stop;
    stop.set_kind(v1::Command::KIND_STOP);
    stop.set_reason(absl::StrCat("attempt ", a.info.number(), " ended"));
    rank.commands.push_back(stop);
    if (rank.registered && rank.status.host() == host && rank.status.pid() > 0)
      local_pids.push_back(rank.status.pid());
  }
  if (launcher_->name() == "local")
    launcher_->Stop(job.rec.status.job_id(), a.info.number(), a.process_group, local_pids);
}

void JobManager::EndAttemptLocked(Job& job, v1::JobState attempt_state, const std::string& reason) {
  if (job.attempts.empty()) return;
  AttemptRecord& a = job.attempts.back();
  if (IsTerminal(a.info.state())) return;
  a.info.set_state(attempt_state);
  a.info.set_ended_unix_ms(NowMs());
  a.info.set_reason(reason);
  Status s = store_->PutAttempt(job.rec.status.job_id(), a);
  if (!s.ok()) options_.logger.error(std::string(s.message()));
}

void JobManager::FailAttemptLocked(Job& job, const std::string& reason) {
  const int number = job.rec.status.attempt();
  EndAttemptLocked(job, v1::JOB_STATE_FAILED, reason);
  StopProcessesLocked(job);
  for (auto& [r, rank] : job.ranks)
    if (!rank.finished && rank.status.state() != "silent" && rank.status.state() != "failed")
      rank.status.set_state(rank.registered ? "stopped" : "never registered");
  AddEventLocked(job, number, "attempt", absl::StrCat("attempt ", number, " failed: ", reason));
  const int restarts_used = number - 1;
  if (restarts_used < job.rec.status.max_restarts()) {
    AddEventLocked(job, number, "restart",
                   absl::StrCat("restart ", restarts_used + 1, " of ",
                                job.rec.status.max_restarts(), " after: ", reason));
    StartAttemptLocked(job);  // its event says which checkpoint it resumes from
    return;
  }
  SetStateLocked(job, v1::JOB_STATE_FAILED, reason);
  ScheduleLocked();
}

void JobManager::MaybeSucceedLocked(Job& job) {
  v1::JobStatus& st = job.rec.status;
  if (IsTerminal(st.state())) return;
  for (const auto& [r, rank] : job.ranks)
    if (!rank.finished) return;
  EndAttemptLocked(job, v1::JOB_STATE_SUCCEEDED, "all ranks finished");
  const v1::Progress& p = st.progress();
  SetStateLocked(job, v1::JOB_STATE_SUCCEEDED,
                 absl::StrFormat("all %d ranks finished at step %d%s", st.workers(), p.step(),
                                 p.eval_accuracy() >= 0
                                     ? absl::StrFormat(", eval accuracy %.4f", p.eval_accuracy())
                                     : ""));
  ScheduleLocked();
}

void JobManager::OnLauncherExit(const std::string& job_id, int attempt, int exit_code) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) return;
    Job& job = *it->second;
    AddEventLocked(job, attempt, "launcher",
                   exit_code >= 0 ? absl::StrCat("mpirun exited with status ", exit_code)
                                  : absl::StrCat("mpirun was killed by signal ", -exit_code));
    if (attempt != job.rec.status.attempt() || IsTerminal(job.rec.status.state())) {
      // Already decided (cancel, liveness, failure report, success).
    } else if (exit_code == 0 && job.ranks.count(0) && job.ranks[0].finished) {
      // Rank 0 has the final numbers; a lost final heartbeat from another rank is not a failure.
      for (auto& [r, rank] : job.ranks) rank.finished = true;
      MaybeSucceedLocked(job);
    } else {
      std::string who;
      if (!job.failure_reports.empty()) {
        who = absl::StrJoin(job.failure_reports, "; ");
      } else {
        who = RankFromMpirunLog(LogPath(job_id, attempt));
      }
      if (who.empty()) {
        std::vector<std::string> never;
        for (auto& [r, rank] : job.ranks)
          if (!rank.registered) never.push_back(std::to_string(r));
        if (!never.empty()) who = absl::StrCat("rank(s) ", absl::StrJoin(never, ","), " never registered");
      }
      std::string reason =
          exit_code == 0 ? "the workers exited without reporting completion"
                         : exit_code > 0 ? absl::StrCat("mpirun exited with status ", exit_code)
                                         : absl::StrCat("mpirun was killed by signal ", -exit_code);
      if (!who.empty()) absl::StrAppend(&reason, ": ", who);
      absl::StrAppend(&reason, " (log: ", LogPath(job_id, attempt), ")");
      FailAttemptLocked(job, reason);
    }
  }
  NotifyChanged();
}

void JobManager::CheckLivenessLocked() {
  const auto now = Clock::now();
  for (auto& [id, job_ptr] : jobs_) {
    Job& job = *job_ptr;
    const v1::JobState state = job.rec.status.state();
    if (state != v1::JOB_STATE_STARTING && state != v1::JOB_STATE_RUNNING) continue;
    std::string reason;
    for (auto& [r, rank] : job.ranks) {
      if (rank.finished) continue;
      if (rank.registered) {
        const auto silent = now - rank.last_seen;
        if (silent > options_.liveness_deadline) {
          rank.status.set_state("silent");
          reason = absl::StrFormat("rank %d (host %s, pid %d) silent for %.1f s (deadline %.1f s)",
                                   r, rank.status.host(), rank.status.pid(), Seconds(silent),
                                   Seconds(options_.liveness_deadline));
          break;
        }
      } else if (launcher_ && launcher_->name() == "local" &&
                 now - job.attempt_started > options_.start_timeout) {
        reason = absl::StrFormat("rank %d never registered within %.0f s of the launch (log: %s)",
                                 r, Seconds(options_.start_timeout),
                                 LogPath(job.rec.status.job_id(), job.rec.status.attempt()));
        break;
      }
    }
    if (!reason.empty()) {
      FailAttemptLocked(job, reason);
    } else if (now - job.last_persist > options_.persist_period) {
      PersistLocked(job);
    }
  }
}

void JobManager::MonitorLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!shutdown_) {
    cv_.wait_for(lock, options_.monitor_period);
    if (shutdown_) break;
    CheckLivenessLocked();
    lock.unlock();
    NotifyChanged();
    lock.lock();
  }
}

void JobManager::TEST_CheckLiveness() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    CheckLivenessLocked();
  }
  NotifyChanged();
}

std::string JobManager::TEST_WorkerToken(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  return it == jobs_.end() ? "" : it->second->rec.worker_token;
}

// ---------------------------------------------------------------------------------------------
// JobService.

StatusOr<v1::GetJobResponse> JobManager::Get(const std::string& job_id, bool include_events) {
  v1::GetJobResponse r;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ASSIGN_OR_RETURN(Job * job, FindLocked(job_id));
    *r.mutable_status() = StatusLocked(*job);
    *r.mutable_spec() = job->rec.spec;
  }
  if (include_events) {
    ASSIGN_OR_RETURN(std::vector<v1::Event> events, store_->Events(job_id, 0, 0));
    for (v1::Event& e : events) *r.add_events() = std::move(e);
  }
  return r;
}

StatusOr<std::vector<v1::JobStatus>> JobManager::List(bool active_only, int limit) {
  if (limit < 0) return absl::InvalidArgumentError("limit: must be >= 0");
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<v1::JobStatus> out;
  for (auto it = jobs_.rbegin(); it != jobs_.rend(); ++it) {
    if (active_only && IsTerminal(it->second->rec.status.state())) continue;
    out.push_back(StatusLocked(*it->second));
    if (limit > 0 && static_cast<int>(out.size()) >= limit) break;
  }
  return out;
}

StatusOr<v1::JobStatus> JobManager::Cancel(const std::string& job_id, const std::string& reason) {
  if (reason.size() > kMaxTextBytes)
    return absl::InvalidArgumentError(absl::StrCat("reason: at most ", kMaxTextBytes, " bytes"));
  v1::JobStatus result;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ASSIGN_OR_RETURN(Job * job, FindLocked(job_id));
    const v1::JobState state = job->rec.status.state();
    if (IsTerminal(state))
      return absl::FailedPreconditionError(
          absl::StrCat("job ", job_id, " already ended: ", JobStateName(state)));
    const std::string why = reason.empty() ? "cancelled by the user" : reason;
    if (state != v1::JOB_STATE_QUEUED) {
      EndAttemptLocked(*job, v1::JOB_STATE_CANCELLED, why);
      StopProcessesLocked(*job);
    }
    SetStateLocked(*job, v1::JOB_STATE_CANCELLED, why);
    ScheduleLocked();
    result = StatusLocked(*job);
  }
  NotifyChanged();
  return result;
}

StatusOr<std::string> JobManager::RequestCheckpoint(const std::string& job_id) {
  std::string request_id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ASSIGN_OR_RETURN(Job * job, FindLocked(job_id));
    const v1::JobState state = job->rec.status.state();
    if (state != v1::JOB_STATE_RUNNING && state != v1::JOB_STATE_STARTING)
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", job_id, " is ", JobStateName(state), "; checkpoints can be requested while it is "
          "STARTING or RUNNING"));
    request_id = absl::StrCat(job_id, "-ckpt-", ++job->checkpoint_requests, "-", NowMs());
    v1::Command c;
    c.set_kind(v1::Command::KIND_CHECKPOINT);
    c.set_request_id(request_id);
    c.set_reason("requested by the user");
    // Every rank gets it: the ranks agree on the step (rank 0 writes the file).
    for (auto& [r, rank] : job->ranks) rank.commands.push_back(c);
    AddEventLocked(*job, job->rec.status.attempt(), "checkpoint",
                   absl::StrCat("checkpoint requested (", request_id, ")"));
  }
  NotifyChanged();
  return request_id;
}

StatusOr<std::vector<v1::CheckpointInfo>> JobManager::ListCheckpoints(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(Job * job, FindLocked(job_id));
  return job->checkpoints;
}

StatusOr<v1::GetJobLogsResponse> JobManager::Logs(const std::string& job_id, int attempt,
                                                  int64_t max_bytes) {
  if (max_bytes < 0 || max_bytes > (int64_t{4} << 20) - 4096)
    return absl::InvalidArgumentError("max_bytes: expected 0 (64 KiB) up to 4 MiB - 4 KiB");
  if (max_bytes == 0) max_bytes = 64 << 10;
  std::string path;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ASSIGN_OR_RETURN(Job * job, FindLocked(job_id));
    if (attempt < 0 || attempt > static_cast<int>(job->attempts.size()))
      return absl::InvalidArgumentError(absl::StrCat("attempt: ", attempt, "; job ", job_id,
                                                     " has attempts 1..", job->attempts.size()));
    if (job->attempts.empty())
      return absl::FailedPreconditionError(absl::StrCat("job ", job_id, " has not started yet"));
    if (attempt == 0) attempt = static_cast<int>(job->attempts.size());
    path = job->attempts[attempt - 1].info.log_path();
  }
  v1::GetJobLogsResponse r;
  r.set_path(path);
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::NotFoundError(absl::StrCat("no log at ", path,
                                            " (the external launcher keeps none)"));
  in.seekg(0, std::ios::end);
  const int64_t size = in.tellg();
  const int64_t start = std::max<int64_t>(0, size - max_bytes);
  in.seekg(start);
  std::string text(static_cast<size_t>(size - start), '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  r.set_text(std::move(text));
  r.set_truncated(start > 0);
  return r;
}

StatusOr<std::pair<v1::JobStatus, int64_t>> JobManager::Snapshot(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(Job * job, FindLocked(job_id));
  return std::make_pair(StatusLocked(*job), job->version);
}

StatusOr<std::vector<v1::Event>> JobManager::EventsSince(const std::string& job_id,
                                                         int64_t after_seq) {
  return store_->Events(job_id, after_seq, 1000);
}

int64_t JobManager::Subscribe(const std::string& job_id, std::function<void()> on_change) {
  std::lock_guard<std::mutex> lock(subs_mu_);
  const int64_t id = next_subscription_++;
  subs_[id] = {job_id, std::move(on_change)};
  return id;
}

void JobManager::Unsubscribe(int64_t subscription) {
  std::lock_guard<std::mutex> lock(subs_mu_);
  subs_.erase(subscription);
}

// ---------------------------------------------------------------------------------------------
// WorkerService.

Status JobManager::CheckWorkerToken(const std::string& job_id, const std::string& token) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  if (it != jobs_.end() && ConstantTimeEquals(token, it->second->rec.worker_token))
    return absl::OkStatus();
  for (auto& [id, job] : jobs_)
    if (ConstantTimeEquals(token, job->rec.worker_token))
      return absl::PermissionDeniedError(
          absl::StrCat("the token is job ", id, "'s worker token, not job ", job_id, "'s"));
  return absl::UnauthenticatedError("unknown worker token");
}

StatusOr<JobManager::Job*> JobManager::FindAttemptLocked(const std::string& job_id, int attempt,
                                                         int rank) {
  ASSIGN_OR_RETURN(Job * job, FindLocked(job_id));
  const v1::JobStatus& st = job->rec.status;
  if (attempt != st.attempt())
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", job_id, ": attempt ", attempt, " is over (the current attempt is ", st.attempt(), ")"));
  if (rank < 0 || rank >= st.workers())
    return absl::InvalidArgumentError(
        absl::StrCat("rank: ", rank, " is out of range; job ", job_id, " has ranks 0..",
                     st.workers() - 1));
  return job;
}

StatusOr<v1::RegisterWorkerResponse> JobManager::Register(const v1::RegisterWorkerRequest& req) {
  if (req.host().size() > kMaxKeyBytes || req.device().size() > kMaxKeyBytes)
    return absl::InvalidArgumentError(absl::StrCat("host/device: at most ", kMaxKeyBytes, " bytes"));
  v1::RegisterWorkerResponse resp;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ASSIGN_OR_RETURN(Job * job, FindLocked(req.job_id()));
    v1::JobStatus& st = job->rec.status;
    if (IsTerminal(st.state()) || st.state() == v1::JOB_STATE_QUEUED)
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", req.job_id(), " is ", JobStateName(st.state()), "; workers cannot join it"));
    const int attempt = req.attempt() == 0 ? st.attempt() : req.attempt();
    ASSIGN_OR_RETURN(job, FindAttemptLocked(req.job_id(), attempt, req.rank()));
    if (req.world_size() != st.workers())
      return absl::InvalidArgumentError(absl::StrCat(
          "world_size: ", req.world_size(), ", but job ", req.job_id(), " runs ", st.workers(),
          " workers (JobSpec.workers)"));
    Rank& rank = job->ranks[req.rank()];
    const bool again = rank.registered;
    rank.registered = true;
    rank.last_seen = Clock::now();
    rank.status.set_host(req.host());
    rank.status.set_device(req.device());
    rank.status.set_pid(req.pid());
    rank.status.set_last_seen_unix_ms(NowMs());
    if (!rank.finished) rank.status.set_state("running");
    Status s = store_->PutWorker(st.job_id(), attempt, rank.status);
    if (!s.ok()) options_.logger.error(std::string(s.message()));
    AddEventLocked(*job, attempt, "worker",
                   absl::StrCat("rank ", req.rank(), again ? " re-registered" : " registered",
                                " from ", req.host(), " (pid ", req.pid(), ", ",
                                req.device().empty() ? "cpu" : req.device(), ")"));
    bool all = true;
    for (auto& [r, rk] : job->ranks) all = all && rk.registered;
    if (all && st.state() == v1::JOB_STATE_STARTING) {
      job->attempts.back().info.set_state(v1::JOB_STATE_RUNNING);
      s = store_->PutAttempt(st.job_id(), job->attempts.back());
      SetStateLocked(*job, v1::JOB_STATE_RUNNING,
                     absl::StrCat("all ", st.workers(), " ranks registered"));
    }
    resp.set_attempt(attempt);
    *resp.mutable_spec() = job->rec.spec;
    v1::ShardPlanParams* plan = resp.mutable_shard_plan();
    plan->set_num_samples(st.train_samples());
    plan->set_world_size(st.workers());
    plan->set_seed(job->rec.spec.seed());
    plan->set_chunk_size(job->rec.chunk_size);
    const std::string& resume = job->attempts.back().info.resume_from();
    for (const v1::CheckpointInfo& c : job->checkpoints)
      if (!resume.empty() && c.path() == resume) {
        *resp.mutable_resume_from() = c;
        plan->set_start_epoch(c.epoch());
        plan->set_samples_consumed(c.samples());
      }
    resp.set_heartbeat_interval_ms(static_cast<int32_t>(options_.heartbeat_interval.count()));
    resp.set_liveness_deadline_ms(static_cast<int32_t>(options_.liveness_deadline.count()));
  }
  NotifyChanged();
  return resp;
}

StatusOr<v1::HeartbeatResponse> JobManager::Heartbeat(const v1::HeartbeatRequest& req) {
  if (req.progress().last_checkpoint().size() > 4096)
    return absl::InvalidArgumentError("progress.last_checkpoint: at most 4096 bytes");
  v1::HeartbeatResponse resp;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ASSIGN_OR_RETURN(Job * job, FindLocked(req.job_id()));
    v1::JobStatus& st = job->rec.status;
    // A rank of an attempt that is over (cancelled, failed, superseded) is told to stop.
    if (req.attempt() != st.attempt() || IsTerminal(st.state())) {
      v1::Command* c = resp.add_commands();
      c->set_kind(v1::Command::KIND_STOP);
      c->set_reason(IsTerminal(st.state())
                        ? absl::StrCat("job ", st.job_id(), " is ", JobStateName(st.state()))
                        : absl::StrCat("attempt ", req.attempt(), " is over"));
      return resp;
    }
    ASSIGN_OR_RETURN(job, FindAttemptLocked(req.job_id(), req.attempt(), req.rank()));
    Rank& rank = job->ranks[req.rank()];
    if (!rank.registered)
      return absl::FailedPreconditionError(absl::StrCat(
          "rank ", req.rank(), " of job ", req.job_id(), " is not registered; call RegisterWorker"));
    rank.last_seen = Clock::now();
    rank.status.set_last_seen_unix_ms(NowMs());
    rank.status.set_step(req.progress().step());
    rank.status.set_epoch(req.progress().epoch());
    if (req.rank() == 0) {
      *st.mutable_progress() = req.progress();
      if (req.progress().total_steps() > 0) st.set_total_steps(req.progress().total_steps());
    }
    for (v1::Command& c : rank.commands) *resp.add_commands() = std::move(c);
    rank.commands.clear();
    TouchLocked(*job);
    if (req.finished() && !rank.finished) {
      rank.finished = true;
      rank.status.set_state("finished");
      AddEventLocked(*job, st.attempt(), "worker",
                     absl::StrCat("rank ", req.rank(), " finished at step ", req.progress().step()));
      MaybeSucceedLocked(*job);
    }
  }
  NotifyChanged();
  return resp;
}

StatusOr<v1::ReportCheckpointResponse> JobManager::ReportCheckpoint(
    const v1::ReportCheckpointRequest& req) {
  v1::ReportCheckpointResponse resp;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ASSIGN_OR_RETURN(Job * job, FindAttemptLocked(req.job_id(), req.attempt(), req.rank()));
    v1::CheckpointInfo c = req.checkpoint();
    ASSIGN_OR_RETURN(std::string path,
                     ResolveUnderRoot(options_.data_root, c.path(), "checkpoint.path"));
    if (c.request_id().size() > kMaxKeyBytes || c.checksum().size() > kMaxKeyBytes)
      return absl::InvalidArgumentError("checkpoint.request_id/checksum: too long");
    c.set_path(path);
    c.set_attempt(req.attempt());
    if (c.unix_ms() == 0) c.set_unix_ms(NowMs());
    auto same = std::find_if(job->checkpoints.begin(), job->checkpoints.end(),
                             [&](const v1::CheckpointInfo& x) { return x.path() == path; });
    if (same != job->checkpoints.end()) job->checkpoints.erase(same);
    job->checkpoints.push_back(c);
    RETURN_IF_ERROR(store_->PutCheckpoint(req.job_id(), c));
    // keep_last, as the worker's checkpointer applies it to the directory: the newest
    // `keep_last` by global step (the one just reported counts), never the checkpoint the
    // current attempt resumed from (which does not count).
    const int64_t keep_last = job->rec.spec.checkpoint().keep_last();
    const std::string& resumed = job->attempts.empty() ? std::string()
                                                       : job->attempts.back().info.resume_from();
    if (keep_last > 0) {
      std::vector<const v1::CheckpointInfo*> candidates;
      for (const v1::CheckpointInfo& x : job->checkpoints)
        if (x.path() != resumed && x.path() != path) candidates.push_back(&x);
      std::sort(candidates.begin(), candidates.end(),
                [](const v1::CheckpointInfo* a, const v1::CheckpointInfo* b) {
                  return std::make_pair(a->step(), a->epoch()) > std::make_pair(b->step(), b->epoch());
                });
      for (size_t i = static_cast<size_t>(keep_last - 1); i < candidates.size(); ++i)
        resp.add_pruned(candidates[i]->path());
      for (const std::string& old : resp.pruned()) {
        job->checkpoints.erase(std::find_if(job->checkpoints.begin(), job->checkpoints.end(),
                                            [&](const v1::CheckpointInfo& x) { return x.path() == old; }));
        RETURN_IF_ERROR(store_->DeleteCheckpoint(req.job_id(), old));
      }
    }
    AddEventLocked(*job, req.attempt(), "checkpoint",
                   absl::StrCat("checkpoint at step ", c.step(), " (epoch ", c.epoch(), "): ", path,
                                c.request_id().empty() ? "" : absl::StrCat(" for ", c.request_id())));
  }
  NotifyChanged();
  return resp;
}

Status JobManager::PublishRendezvous(const v1::PublishRendezvousRequest& req) {
  if (req.key().empty() || req.key().size() > kMaxKeyBytes)
    return absl::InvalidArgumentError(absl::StrCat("key: 1 to ", kMaxKeyBytes, " bytes"));
  if (req.value().size() > kMaxTextBytes)
    return absl::InvalidArgumentError(
        absl::StrCat("value: ", req.value().size(), " bytes, at most ", kMaxTextBytes));
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(Job * job, FindAttemptLocked(req.job_id(), req.attempt(), 0));
  job->rendezvous[req.key()] = req.value();
  return store_->PutRendezvous(req.job_id(), req.attempt(), req.key(), req.value());
}

StatusOr<v1::GetRendezvousResponse> JobManager::GetRendezvous(const v1::GetRendezvousRequest& req) {
  if (req.key().empty() || req.key().size() > kMaxKeyBytes)
    return absl::InvalidArgumentError(absl::StrCat("key: 1 to ", kMaxKeyBytes, " bytes"));
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(Job * job, FindAttemptLocked(req.job_id(), req.attempt(), 0));
  v1::GetRendezvousResponse resp;
  auto it = job->rendezvous.find(req.key());
  if (it != job->rendezvous.end()) {
    resp.set_found(true);
    resp.set_value(it->second);
  }
  return resp;
}

Status JobManager::ReportFailure(const v1::ReportFailureRequest& req) {
  if (req.message().size() > kMaxTextBytes)
    return absl::InvalidArgumentError(
        absl::StrCat("message: ", req.message().size(), " bytes, at most ", kMaxTextBytes));
  {
    std::lock_guard<std::mutex> lock(mu_);
    ASSIGN_OR_RETURN(Job * job, FindLocked(req.job_id()));
    if (req.attempt() != job->rec.status.attempt() || IsTerminal(job->rec.status.state()))
      return absl::OkStatus();  // that attempt is already decided
    ASSIGN_OR_RETURN(job, FindAttemptLocked(req.job_id(), req.attempt(), req.rank()));
    Rank& rank = job->ranks[req.rank()];
    rank.status.set_state("failed");
    const std::string report = absl::StrCat(
        "rank ", req.rank(), rank.status.host().empty() ? "" : absl::StrCat(" (", rank.status.host(), ")"),
        " reported: ", req.message());
    job->failure_reports.push_back(report);
    FailAttemptLocked(*job, report);
  }
  NotifyChanged();
  return absl::OkStatus();
}

}  // namespace resdist::coordinator
