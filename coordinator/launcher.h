// Launchers start the ranks of one job attempt and stop them on cancel. `local` runs mpirun on
// this host; `external` only describes the command for workers started elsewhere (by hand,
// Slurm, Kubernetes) and waits for them to register. Job policy lives in job_manager.h.
//
// Rationale. The launcher owns processes, nothing else: it never changes job state itself. The
// local launcher reports the exit of mpirun through a callback, and the job manager decides
// what that means (success only when the ranks also reported completion). mpirun runs in its
// own session/process group so that cancel can signal every rank at once (killpg), and so that
// a coordinator restart neither kills nor orphans-by-signal the workers: they keep training and
// re-register with the new coordinator.
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/status.h"

namespace resdist::coordinator {

struct LaunchRequest {
  std::string job_id;
  int attempt = 0;
  int workers = 1;
  int threads_per_worker = 1;
  std::string coordinator_address;  // what the workers dial
  std::string worker_token;
  std::string log_path;             // local: stdout+stderr of mpirun and the ranks
};

struct LaunchResult {
  std::vector<std::string> command;  // argv
  std::vector<std::string> env;      // KEY=VALUE added to the environment
  int64_t process_group = 0;         // local: the mpirun process group
};

// Called once when an attempt's processes are gone: exit_code >= 0, or -signal.
using ExitCallback =
    std::function<void(const std::string& job_id, int attempt, int exit_code)>;

class Launcher {
 public:
  virtual ~Launcher() = default;
  virtual std::string name() const = 0;
  virtual StatusOr<LaunchResult> Launch(const LaunchRequest& request) = 0;
  // Stops an attempt: SIGTERM to its process group, SIGKILL after `grace`. Works for a group
  // started by a previous coordinator process too (process_group from the state store).
  // `local_pids` are rank pids on this host (from registration), signalled too in case the MPI
  // runtime put its ranks in groups of their own.
  virtual void Stop(const std::string& job_id, int attempt, int64_t process_group,
                    const std::vector<int64_t>& local_pids) = 0;
  // Stops watching (does not kill anything): for coordinator shutdown.
  virtual void Shutdown() {}
};

// The command line and environment the ranks of an attempt are started with.
LaunchResult DescribeLaunch(const LaunchRequest& request, const std::string& mpirun,
                            const std::string& worker_binary,
                            const std::vector<std::string>& mpirun_args);

struct LocalLauncherOptions {
  std::string mpirun = "mpirun";
  std::string worker_binary;              // absolute path of resdist-worker
  std::vector<std::string> mpirun_args;   // extra arguments before the program
  int stop_grace_ms = 10000;
};

class LocalLauncher final : public Launcher {
 public:
  LocalLauncher(LocalLauncherOptions options, ExitCallback on_exit);
  ~LocalLauncher() override;

  std::string name() const override { return "local"; }
  StatusOr<LaunchResult> Launch(const LaunchRequest& request) override;
  void Stop(const std::string& job_id, int attempt, int64_t process_group,
            const std::vector<int64_t>& local_pids) override;
  void Shutdown() override;

 private:
  void ReapLoop();

  const LocalLauncherOptions options_;
  const ExitCallback on_exit_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool shutdown_ = false;                                     // GUARDED_BY(mu_)
  std::map<pid_t, std::pair<std::string, int>> children_;     // GUARDED_BY(mu_) pid -> job, attempt
  std::vector<std::thread> killers_;                          // GUARDED_BY(mu_)
  std::thread reaper_;
};

class ExternalLauncher final : public Launcher {
 public:
  ExternalLauncher(std::string worker_binary, std::function<void(const std::string&)> print)
      : worker_binary_(std::move(worker_binary)), print_(std::move(print)) {}
  std::string name() const override { return "external"; }
  StatusOr<LaunchResult> Launch(const LaunchRequest& request) override;
  // Workers started elsewhere get KIND_STOP on their next heartbeat; nothing to signal here.
  void Stop(const std::string&, int, int64_t, const std::vector<int64_t>&) override {}

 private:
  const std::string worker_binary_;
  const std::function<void(const std::string&)> print_;
};

// Finds resdist-worker next to the running coordinator (same dir, ../worker/), else on PATH.
std::string DefaultWorkerBinary();

// Shell-quotes one word for display.
std::string ShellQuote(const std::string& word);

}  // namespace resdist::coordinator
