// Launcher implementations. The local launcher forks mpirun into a new session, with its output
// in the attempt's log file and every inherited descriptor above stderr closed (the gRPC
// listening socket must not outlive the coordinator inside the workers).
#include "coordinator/launcher.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

extern char** environ;

namespace resdist::coordinator {
namespace fs = std::filesystem;

namespace {

// Resolves a program name through PATH (before fork: execve needs a path).
std::string FindProgram(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "/usr/bin:/bin", ':')) {
    if (dir.empty()) continue;
    std::string candidate = absl::StrCat(dir, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return name;
}

}  // namespace

std::string ShellQuote(const std::string& word) {
  if (!word.empty() && word.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                              "0123456789-_./:=@,+") == std::string::npos)
    return word;
  std::string out = "'";
  for (char c : word) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

LaunchResult DescribeLaunch(const LaunchRequest& request, const std::string& mpirun,
                            const std::string& worker_binary,
                            const std::vector<std::string>& mpirun_args) {
  LaunchResult r;
  r.command = {mpirun, "-np", std::to_string(request.workers)};
  r.command.insert(r.command.end(), mpirun_args.begin(), mpirun_args.end());
  r.command.insert(r.command.end(), {worker_binary, "--coordinator", request.coordinator_address,
                                     "--job", request.job_id});
  r.env = {
      absl::StrCat("RESDIST_JOB_TOKEN=", request.worker_token),
      absl::StrCat("RESDIST_ATTEMPT=", request.attempt),
      absl::StrCat("OMP_NUM_THREADS=", std::max(1, request.threads_per_worker)),
  };
  // Open MPI refuses to run as root without both variables, and refuses more ranks than cores
  // without oversubscription.
  if (geteuid() == 0) {
    r.env.push_back("OMPI_ALLOW_RUN_AS_ROOT=1");
    r.env.push_back("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1");
  }
  const long cores = sysconf(_SC_NPROCESSORS_ONLN);
  if (cores > 0 && static_cast<long>(request.workers) * std::max(1, request.threads_per_worker) > cores)
    r.env.push_back("OMPI_MCA_rmaps_base_oversubscribe=1");
  return r;
}

std::string DefaultWorkerBinary() {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const fs::path& candidate :
         {self.parent_path() / "resdist-worker", self.parent_path() / ".." / "worker" / "resdist-worker"}) {
      if (access(candidate.c_str(), X_OK) == 0) return fs::weakly_canonical(candidate, ec).string();
    }
  }
  return FindProgram("resdist-worker");
}

LocalLauncher::LocalLauncher(LocalLauncherOptions options, ExitCallback on_exit)
    : options_(std::move(options)), on_exit_(std::move(on_exit)) {
  reaper_ = std::thread([this] { ReapLoop(); });
}

LocalLauncher::~LocalLauncher() { Shutdown(); }

void LocalLauncher::Shutdown() {
  std::vector<std::thread> killers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_ && !reaper_.joinable()) return;
    shutdown_ = true;
    killers.swap(killers_);
  }
  cv_.notify_all();
  for (std::thread& t : killers) t.join();
  if (reaper_.joinable()) reaper_.join();
}

StatusOr<LaunchResult> LocalLauncher::Launch(const LaunchRequest& request) {
  LaunchResult r = DescribeLaunch(request, options_.mpirun, options_.worker_binary,
                                  options_.mpirun_args);
  std::error_code ec;
  fs::create_directories(fs::path(request.log_path).parent_path(), ec);
  if (ec)
    return absl::InternalError(
        absl::StrCat("log directory for ", request.log_path, ": ", ec.message()));
  int log_fd = open(request.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (log_fd < 0)
    return absl::InternalError(
        absl::StrCat("cannot open log ", request.log_path, ": ", std::strerror(errno)));

  // Everything execve needs is built before fork: the child may only call async-signal-safe
  // functions (the coordinator is multi-threaded).
  const std::string program = FindProgram(r.command[0]);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    absl::string_view kv(*e);
    bool overridden = false;
    for (const std::string& add : r.env)
      if (kv.substr(0, kv.find('=') + 1) == absl::string_view(add).substr(0, add.find('=') + 1))
        overridden = true;
    if (!overridden) env_strings.emplace_back(kv);
  }
  env_strings.insert(env_strings.end(), r.env.begin(), r.env.end());
  std::vector<char*> argv, envp;
  for (std::string& a : r.command) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (std::string& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  const std::string header = absl::StrCat("# resdist: job ", request.job_id, " attempt ",
                                          request.attempt, ": ", absl::StrJoin(r.command, " "), "\n");
  (void)!write(log_fd, header.data(), header.size());

  std::lock_guard<std::mutex> lock(mu_);  // the reaper must not see the pid before it is recorded
  if (shutdown_) {
    close(log_fd);
    return absl::UnavailableError("launcher is shutting down");
  }
  pid_t pid = fork();
  if (pid < 0) {
    int err = errno;
    close(log_fd);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(err)));
  }
  if (pid == 0) {
    setsid();
    int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    closefrom(3);
    execve(program.c_str(), argv.data(), envp.data());
    const char msg[] = "resdist: exec of the launcher program failed\n";
    (void)!write(2, msg, sizeof(msg) - 1);
    _exit(127);
  }
  close(log_fd);
  // setsid in the child makes pid its process group; set it here too so Stop works even if it
  // comes before the child ran (harmless EPERM/EACCES once the child is a session leader).
  setpgid(pid, pid);
  children_[pid] = {request.job_id, request.attempt};
  r.process_group = pid;
  cv_.notify_all();
  return r;
}

void LocalLauncher::Stop(const std::string& job_id, int attempt, int64_t process_group,
                         const std::vector<int64_t>& local_pids) {
  (void)job_id;
  (void)attempt;
  auto signal_all = [process_group, local_pids](int sig) {
    if (process_group > 1) kill(-static_cast<pid_t>(process_group), sig);
    for (int64_t pid : local_pids)
      if (pid > 1) kill(static_cast<pid_t>(pid), sig);
  };
  signal_all(SIGTERM);
  std::lock_guard<std::mutex> lock(mu_);
  if (shutdown_) {
    signal_all(SIGKILL);
    return;
  }
  const int grace_ms = options_.stop_grace_ms;
  killers_.emplace_back([this, signal_all, grace_ms] {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::milliseconds(grace_ms), [this] { return shutdown_; });
    lock.unlock();
    signal_all(SIGKILL);  // no-op (ESRCH) when everything already exited
  });
}

void LocalLauncher::ReapLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!shutdown_) {
    cv_.wait_for(lock, std::chrono::milliseconds(200));
    std::vector<std::pair<std::pair<std::string, int>, int>> exited;
    for (auto it = children_.begin(); it != children_.end();) {
      int status = 0;
      pid_t r = waitpid(it->first, &status, WNOHANG);
      if (r == it->first || (r < 0 && errno == ECHILD)) {
        int code = r < 0 ? -1 : WIFEXITED(status) ? WEXITSTATUS(status)
                                : WIFSIGNALED(status) ? -WTERMSIG(status) : -1;
        exited.push_back({it->second, code});
        it = children_.erase(it);
      } else {
        ++it;
      }
    }
    if (exited.empty()) continue;
    lock.unlock();
    for (auto& [job, code] : exited) on_exit_(job.first, job.second, code);
    lock.lock();
  }
}

StatusOr<LaunchResult> ExternalLauncher::Launch(const LaunchRequest& request) {
  LaunchResult r = DescribeLaunch(request, "mpirun", worker_binary_, {});
  // Workers started by hand join whatever attempt is current (RESDIST_ATTEMPT unset = 0), so the
  // printed command stays valid after a restart.
  r.env.erase(std::remove_if(r.env.begin(), r.env.end(),
                             [](const std::string& e) { return e.rfind("RESDIST_ATTEMPT=", 0) == 0; }),
              r.env.end());
  std::vector<std::string> words;
  for (const std::string& e : r.env) words.push_back(ShellQuote(e));
  for (const std::string& a : r.command) words.push_back(ShellQuote(a));
  print_(absl::StrCat("job ", request.job_id, " attempt ", request.attempt,
                      ": start the workers with:\n  ", absl::StrJoin(words, " ")));
  return r;
}

}  // namespace resdist::coordinator
