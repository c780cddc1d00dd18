// `resdist submit | jobs | status | watch | checkpoint | cancel | logs`: the job commands, over
// gRPC to the coordinator's JobService. Output for people by default; `status --json` for
// machines. Exit status 0 on success, 1 on error; `watch` returns the job's outcome (0
// SUCCEEDED, 1 FAILED, 2 CANCELLED, 3 could not follow the job).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/commands.h"
#include "client/rpc.h"

namespace resdist::client {
namespace {

using std::chrono::milliseconds;
constexpr milliseconds kTimeout{15000};

const char* StateName(v1::JobState s) {
  switch (s) {
    case v1::JOB_STATE_QUEUED: return "QUEUED";
    case v1::JOB_STATE_STARTING: return "STARTING";
    case v1::JOB_STATE_RUNNING: return "RUNNING";
    case v1::JOB_STATE_SUCCEEDED: return "SUCCEEDED";
    case v1::JOB_STATE_FAILED: return "FAILED";
    case v1::JOB_STATE_CANCELLED: return "CANCELLED";
    default: return "UNKNOWN";
  }
}

bool Terminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

int Fail(const Status& s) {
  std::fprintf(stderr, "resdist: %s\n", std::string(s.message()).c_str());
  return 1;
}

std::string Duration(double seconds) {
  if (seconds < 0 || !std::isfinite(seconds)) return "-";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, (s / 60) % 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

std::string Time(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  std::time_t t = unix_ms / 1000;
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string Ago(int64_t unix_ms) {
  if (unix_ms <= 0) return "never";
  const auto now = std::chrono::duration_cast<milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  return absl::StrCat(Duration(std::max<int64_t>(0, now - unix_ms) / 1000.0), " ago");
}

std::string Percent(double fraction) {
  return fraction < 0 ? "-" : absl::StrFormat("%.2f%%", 100 * fraction);
}

int64_t TotalSteps(const v1::JobStatus& st) {
  return st.progress().total_steps() > 0 ? st.progress().total_steps() : st.total_steps();
}

std::string StepText(const v1::JobStatus& st) {
  const int64_t total = TotalSteps(st);
  if (total <= 0) return absl::StrCat(st.progress().step());
  return absl::StrFormat("%d/%d (%.1f%%)", st.progress().step(), total,
                         100.0 * st.progress().step() / total);
}

void PrintStatus(const v1::GetJobResponse& r, bool events) {
  const v1::JobStatus& st = r.status();
  const v1::Progress& p = st.progress();
  std::printf("%s  %s  %s  attempt %d (restarts allowed: %d)\n", st.job_id().c_str(),
              st.name().c_str(), StateName(st.state()), st.attempt(), st.max_restarts());
  std::printf("  workers     %d, launcher %s\n", st.workers(),
              st.launcher().empty() ? "-" : st.launcher().c_str());
  std::printf("  progress    epoch %lld/%lld  step %s  ETA %s\n",
              static_cast<long long>(std::min(p.epoch() + 1, std::max<int64_t>(st.epochs(), 1))),
              static_cast<long long>(st.epochs()), StepText(st).c_str(),
              Duration(st.eta_s()).c_str());
  std::printf("  train       loss %.4f  accuracy %s  lr %.5g  %.0f images/s\n", p.loss(),
              Percent(p.train_accuracy()).c_str(), p.learning_rate(), p.images_per_s());
  std::printf("  eval        accuracy %s  loss %.4f\n", Percent(p.eval_accuracy()).c_str(),
              p.eval_loss());
  if (!st.last_checkpoint().path().empty())
    std::printf("  checkpoint  %s (epoch %lld, step %lld, %s)\n", st.last_checkpoint().path().c_str(),
                static_cast<long long>(st.last_checkpoint().epoch()),
                static_cast<long long>(st.last_checkpoint().step()),
                Time(st.last_checkpoint().unix_ms()).c_str());
  std::printf("  created     %s, updated %s\n", Time(st.created_unix_ms()).c_str(),
              Time(st.updated_unix_ms()).c_str());
  if (!st.error().empty()) std::printf("  error       %s\n", st.error().c_str());
  if (!st.launch_command().empty()) {
    std::printf("  command     %s\n", st.launch_command().c_str());
    if (st.launcher() == "external")
      std::printf("  environment %s\n", absl::StrJoin(st.launch_env(), " ").c_str());
  }
  if (st.ranks_size() > 0) {
    std::printf("\n  %-5s %-20s %-8s %-8s %-8s %-14s %s\n", "RANK", "HOST", "DEVICE", "PID",
                "STEP", "LAST SEEN", "STATE");
    for (const v1::RankStatus& rk : st.ranks())
      std::printf("  %-5d %-20s %-8s %-8lld %-8lld %-14s %s\n", rk.rank(),
                  rk.host().empty() ? "-" : rk.host().c_str(),
                  rk.device().empty() ? "-" : rk.device().c_str(),
                  static_cast<long long>(rk.pid()), static_cast<long long>(rk.step()),
                  Ago(rk.last_seen_unix_ms()).c_str(), rk.state().c_str());
  }
  if (st.attempts_size() > 0) {
    std::printf("\n  %-8s %-10s %-20s %-20s %s\n", "ATTEMPT", "STATE", "STARTED", "ENDED", "REASON");
    for (const v1::AttemptInfo& a : st.attempts())
      std::printf("  %-8d %-10s %-20s %-20s %s\n", a.number(), StateName(a.state()),
                  Time(a.started_unix_ms()).c_str(), Time(a.ended_unix_ms()).c_str(),
                  a.reason().c_str());
  }
  if (events && r.events_size() > 0) {
    std::printf("\n  EVENTS\n");
    for (const v1::Event& e : r.events())
      std::printf("  %s  %-10s %s\n", Time(e.unix_ms()).c_str(), e.kind().c_str(),
                  e.message().c_str());
  }
}

StatusOr<Rpc> Connect(const GlobalOptions& g) { return Rpc::Connect(g); }

// --- submit -------------------------------------------------------------------------------
int Submit(const GlobalOptions& g, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Fail(absl::NotFoundError(absl::StrCat("job file '", path, "': cannot open")));
  std::stringstream ss;
  ss << in.rdbuf();
  auto rpc = Connect(g);
  if (!rpc.ok()) return Fail(rpc.status());
  v1::SubmitJobRequest req;
  req.set_job_file(ss.str());
  if (req.job_file().empty()) return Fail(absl::InvalidArgumentError(absl::StrCat("job file '", path, "' is empty")));
  v1::SubmitJobResponse resp;
  auto ctx = rpc->Context(kTimeout);
  grpc::Status s = rpc->stub().SubmitJob(ctx.get(), req, &resp);
  if (!s.ok()) {
    Status e = rpc->Explain(s);
    if (absl::IsInvalidArgument(e) || absl::IsPermissionDenied(e))
      return Fail(Status(e.code(), absl::StrCat(path, ": ", e.message())));
    return Fail(e);
  }
  const v1::JobStatus& st = resp.status();
  std::fprintf(stderr, "submitted %s '%s': %d workers, %lld steps, %s\n", resp.job_id().c_str(),
               st.name().c_str(), st.workers(), static_cast<long long>(st.total_steps()),
               StateName(st.state()));
  std::printf("%s\n", resp.job_id().c_str());
  return 0;
}

// --- jobs ---------------------------------------------------------------------------------
int Jobs(const GlobalOptions& g, bool active, int limit) {
  auto rpc = Connect(g);
  if (!rpc.ok()) return Fail(rpc.status());
  v1::ListJobsRequest req;
  req.set_active_only(active);
  req.set_limit(limit);
  v1::ListJobsResponse resp;
  auto ctx = rpc->Context(kTimeout);
  grpc::Status s = rpc->stub().ListJobs(ctx.get(), req, &resp);
  if (!s.ok()) return Fail(rpc->Explain(s));
  std::printf("%-10s %-24s %-10s %-7s %-20s %-8s %-9s %s\n", "ID", "NAME", "STATE", "ATTEMPT",
              "STEP", "LOSS", "EVAL ACC", "CREATED");
  for (const v1::JobStatus& st : resp.jobs())
    std::printf("%-10s %-24s %-10s %-7d %-20s %-8.4f %-9s %s\n", st.job_id().c_str(),
                st.name().substr(0, 24).c_str(), StateName(st.state()), st.attempt(),
                StepText(st).c_str(), st.progress().loss(),
                Percent(st.progress().eval_accuracy()).c_str(), Time(st.created_unix_ms()).c_str());
  return 0;
}

// --- status -------------------------------------------------------------------------------
int StatusCmd(const GlobalOptions& g, const std::string& job, bool json, bool events) {
  auto rpc = Connect(g);
  if (!rpc.ok()) return Fail(rpc.status());
  v1::GetJobRequest req;
  req.set_job_id(job);
  req.set_include_events(events || json);
  v1::GetJobResponse resp;
  auto ctx = rpc->Context(kTimeout);
  grpc::Status s = rpc->stub().GetJob(ctx.get(), req, &resp);
  if (!s.ok()) return Fail(rpc->Explain(s));
  if (json) {
    google::protobuf::util::JsonPrintOptions o;
    o.add_whitespace = true;
    o.always_print_primitive_fields = true;
    o.preserve_proto_field_names = true;
    std::string out;
    auto js = google::protobuf::util::MessageToJsonString(resp, &out, o);
    if (!js.ok()) return Fail(absl::InternalError(std::string(js.message())));
    std::printf("%s\n", out.c_str());
    return 0;
  }
  PrintStatus(resp, events);
  return 0;
}

// --- watch --------------------------------------------------------------------------------
class WatchDisplay {
 public:
  explicit WatchDisplay(bool tty) : tty_(tty) {}
  ~WatchDisplay() { EndLine(); }

  void Event(const v1::Event& e) {
    EndLine();
    std::fprintf(stderr, "%s  %s: %s\n", Time(e.unix_ms()).c_str(), e.kind().c_str(),
                 e.message().c_str());
  }

  void Status(const v1::JobStatus& st) {
    const v1::Progress& p = st.progress();
    const int64_t total = TotalSteps(st);
    std::string text = absl::StrFormat(
        "%s epoch %d/%d step %d/%d loss %.4f acc %s eval %s %.0f img/s ETA %s", StateName(st.state()),
        std::min(p.epoch() + 1, std::max<int64_t>(st.epochs(), 1)), st.epochs(), p.step(), total, p.loss(), Percent(p.train_accuracy()),
        Percent(p.eval_accuracy()), p.images_per_s(), Duration(st.eta_s()));
    if (tty_) {
      constexpr int kWidth = 24;
      const double f = total > 0 ? std::clamp(static_cast<double>(p.step()) / total, 0.0, 1.0) : 0;
      const int filled = static_cast<int>(f * kWidth);
      std::string bar = std::string(filled, '#') + std::string(kWidth - filled, '.');
      std::fprintf(stderr, "\r\033[K[%s] %5.1f%% %s", bar.c_str(), 100 * f, text.c_str());
      std::fflush(stderr);
      drawn_ = true;
    } else {
      // Plain lines: on state changes and at most every 10 s.
      const auto now = std::chrono::steady_clock::now();
      if (st.state() != last_state_ || now - last_line_ > std::chrono::seconds(10)) {
        std::fprintf(stderr, "%s\n", text.c_str());
        last_line_ = now;
        last_state_ = st.state();
      }
    }
  }

  void EndLine() {
    if (drawn_) std::fprintf(stderr, "\n");
    drawn_ = false;
  }

 private:
  bool tty_;
  bool drawn_ = false;
  v1::JobState last_state_ = v1::JOB_STATE_UNSPECIFIED;
  std::chrono::steady_clock::time_point last_line_{};
};

int Watch(const GlobalOptions& g, const std::string& job, double reconnect_s) {
  auto rpc = Connect(g);
  if (!rpc.ok()) {
    Fail(rpc.status());
    return 3;
  }
  WatchDisplay display(isatty(2));
  int64_t last_seq = 0;
  auto disconnected_since = std::chrono::steady_clock::now();
  bool connected_once = false;
  milliseconds backoff{250};
  while (true) {
    v1::WatchJobRequest req;
    req.set_job_id(job);
    auto ctx = rpc->Context(milliseconds(0));
    auto reader = rpc->stub().WatchJob(ctx.get(), req);
    v1::WatchJobResponse msg;
    v1::JobStatus last;
    bool got = false;
    while (reader->Read(&msg)) {
      got = connected_once = true;
      backoff = milliseconds(250);
      for (const v1::Event& e : msg.new_events())
        if (e.seq() > last_seq) {
          display.Event(e);
          last_seq = e.seq();
        }
      last = msg.status();
      display.Status(last);
    }
    grpc::Status s = reader->Finish();
    if (got && Terminal(last.state())) {
      display.EndLine();
      const v1::Progress& p = last.progress();
      std::printf("%s %s: step %lld, loss %.4f, eval accuracy %s%s%s\n", last.job_id().c_str(),
                  StateName(last.state()), static_cast<long long>(p.step()), p.loss(),
                  Percent(p.eval_accuracy()).c_str(),
                  last.last_checkpoint().path().empty()
                      ? ""
                      : absl::StrCat(", checkpoint ", last.last_checkpoint().path()).c_str(),
                  last.error().empty() ? "" : absl::StrCat("\nerror: ", last.error()).c_str());
      return last.state() == v1::JOB_STATE_SUCCEEDED ? 0
             : last.state() == v1::JOB_STATE_FAILED  ? 1
                                                     : 2;
    }
    const bool retryable = s.error_code() == grpc::StatusCode::UNAVAILABLE ||
                           s.error_code() == grpc::StatusCode::CANCELLED || s.ok();
    if (!retryable) {
      display.EndLine();
      Fail(rpc->Explain(s));
      return 3;
    }
    // The coordinator restarted or the stream broke: reconnect (new stream starts with the
    // current status) until `reconnect_s` without a connection.
    if (got) disconnected_since = std::chrono::steady_clock::now();
    if (std::chrono::steady_clock::now() - disconnected_since >
        std::chrono::duration<double>(reconnect_s)) {
      display.EndLine();
      Fail(rpc->Explain(s.ok() ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream ended")
                                : s));
      return 3;
    }
    if (connected_once && got) {
      display.EndLine();
      std::fprintf(stderr, "resdist: lost the coordinator (%s); reconnecting\n",
                   s.error_message().c_str());
    }
    std::this_thread::sleep_for(backoff);
    backoff = std::min(milliseconds(5000), backoff * 2);
  }
}

// --- checkpoint ---------------------------------------------------------------------------
int Checkpoint(const GlobalOptions& g, const std::string& job, double timeout_s) {
  auto rpc = Connect(g);
  if (!rpc.ok()) return Fail(rpc.status());
  v1::RequestCheckpointRequest req;
  req.set_job_id(job);
  v1::RequestCheckpointResponse resp;
  {
    auto ctx = rpc->Context(kTimeout);
    grpc::Status s = rpc->stub().RequestCheckpoint(ctx.get(), req, &resp);
    if (!s.ok()) return Fail(rpc->Explain(s));
  }
  std::fprintf(stderr, "checkpoint requested (%s); waiting for it to be written\n",
               resp.request_id().c_str());
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (std::chrono::steady_clock::now() < end) {
    v1::ListCheckpointsRequest lreq;
    lreq.set_job_id(job);
    v1::ListCheckpointsResponse list;
    auto ctx = rpc->Context(kTimeout);
    grpc::Status s = rpc->stub().ListCheckpoints(ctx.get(), lreq, &list);
    if (s.ok()) {
      for (const v1::CheckpointInfo& c : list.checkpoints()) {
        // One checkpoint may answer several requests: "id1,id2".
        const std::vector<std::string> ids = absl::StrSplit(c.request_id(), ',');
        if (std::find(ids.begin(), ids.end(), resp.request_id()) != ids.end()) {
          std::fprintf(stderr, "written at step %lld (epoch %lld)\n",
                       static_cast<long long>(c.step()), static_cast<long long>(c.epoch()));
          std::printf("%s\n", c.path().c_str());
          return 0;
        }
      }
      v1::GetJobRequest greq;
      greq.set_job_id(job);
      v1::GetJobResponse job_resp;
      auto gctx = rpc->Context(kTimeout);
      if (rpc->stub().GetJob(gctx.get(), greq, &job_resp).ok() &&
          Terminal(job_resp.status().state()))
        return Fail(absl::FailedPreconditionError(
            absl::StrCat("job ", job, " ended (", StateName(job_resp.status().state()),
                         ") before the checkpoint was written")));
    } else if (s.error_code() != grpc::StatusCode::UNAVAILABLE) {
      return Fail(rpc->Explain(s));
    }
    std::this_thread::sleep_for(milliseconds(500));
  }
  return Fail(absl::DeadlineExceededError(absl::StrFormat(
      "no checkpoint for %s within %.0f s (`resdist status %s` shows the job)",
      resp.request_id(), timeout_s, job)));
}

// --- cancel -------------------------------------------------------------------------------
int Cancel(const GlobalOptions& g, const std::string& job, const std::string& reason) {
  auto rpc = Connect(g);
  if (!rpc.ok()) return Fail(rpc.status());
  v1::CancelJobRequest req;
  req.set_job_id(job);
  req.set_reason(reason);
  v1::CancelJobResponse resp;
  auto ctx = rpc->Context(kTimeout);
  grpc::Status s = rpc->stub().CancelJob(ctx.get(), req, &resp);
  if (!s.ok()) return Fail(rpc->Explain(s));
  std::printf("%s %s\n", resp.status().job_id().c_str(), StateName(resp.status().state()));
  return 0;
}

// --- logs ---------------------------------------------------------------------------------
int Logs(const GlobalOptions& g, const std::string& job, int attempt, int64_t bytes) {
  auto rpc = Connect(g);
  if (!rpc.ok()) return Fail(rpc.status());
  v1::GetJobLogsRequest req;
  req.set_job_id(job);
  req.set_attempt(attempt);
  req.set_max_bytes(bytes);
  v1::GetJobLogsResponse resp;
  auto ctx = rpc->Context(kTimeout);
  grpc::Status s = rpc->stub().GetJobLogs(ctx.get(), req, &resp);
  if (!s.ok()) return Fail(rpc->Explain(s));
  if (resp.truncated())
    std::fprintf(stderr, "(last %zu bytes of %s)\n", resp.text().size(), resp.path().c_str());
  std::fwrite(resp.text().data(), 1, resp.text().size(), stdout);
  return 0;
}

}  // namespace

void register_job_commands(CLI::App& app, const GlobalOptions& global, CommandResult& result) {
  struct Flags {
    std::string job, file, reason;
    bool json = false, events = false, active = false;
    int limit = 0, attempt = 0;
    int64_t bytes = 0;
    double timeout = 300, reconnect = 60;
  };
  auto f = std::make_shared<Flags>();
  const GlobalOptions* g = &global;

  auto* submit = app.add_subcommand("submit", "submit a job file (YAML/JSON); prints the job id");
  submit->add_option("job_file", f->file, "the job file")->required();
  submit->callback([f, g, &result] { result.exit_code = Submit(*g, f->file); });

  auto* jobs = app.add_subcommand("jobs", "list jobs, newest first");
  jobs->add_flag("--active", f->active, "only QUEUED, STARTING and RUNNING jobs");
  jobs->add_option("--limit", f->limit, "at most this many (0: all)");
  jobs->callback([f, g, &result] { result.exit_code = Jobs(*g, f->active, f->limit); });

  auto* status = app.add_subcommand("status", "a job's state, progress, ranks and attempts");
  status->add_option("job", f->job, "job id")->required();
  status->add_flag("--json", f->json, "machine-readable JSON (status, spec, events)");
  status->add_flag("--events", f->events, "also list the event history");
  status->callback(
      [f, g, &result] { result.exit_code = StatusCmd(*g, f->job, f->json, f->events); });

  auto* watch = app.add_subcommand(
      "watch", "follow a job until it ends; exit 0 SUCCEEDED, 1 FAILED, 2 CANCELLED, 3 error");
  watch->add_option("job", f->job, "job id")->required();
  watch->add_option("--reconnect-timeout", f->reconnect,
                    "seconds to keep reconnecting to a restarting coordinator")
      ->capture_default_str();
  watch->callback([f, g, &result] { result.exit_code = Watch(*g, f->job, f->reconnect); });

  auto* checkpoint =
      app.add_subcommand("checkpoint", "ask a running job for a checkpoint; prints its path");
  checkpoint->add_option("job", f->job, "job id")->required();
  checkpoint->add_option("--timeout", f->timeout, "seconds to wait for it")->capture_default_str();
  checkpoint->callback(
      [f, g, &result] { result.exit_code = Checkpoint(*g, f->job, f->timeout); });

  auto* cancel = app.add_subcommand("cancel", "cancel a job (its workers are stopped)");
  cancel->add_option("job", f->job, "job id")->required();
  cancel->add_option("--reason", f->reason, "recorded in the job's events");
  cancel->callback([f, g, &result] { result.exit_code = Cancel(*g, f->job, f->reason); });

  auto* logs = app.add_subcommand("logs", "the launcher log of a job attempt (local launcher)");
  logs->add_option("job", f->job, "job id")->required();
  logs->add_option("--attempt", f->attempt, "attempt number (0: the latest)");
  logs->add_option("--bytes", f->bytes, "tail size in bytes (0: 64 KiB)");
  logs->callback(
      [f, g, &result] { result.exit_code = Logs(*g, f->job, f->attempt, f->bytes); });
}

}  // namespace resdist::client
