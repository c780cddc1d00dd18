// resdist-coordinator: owns jobs and answers the gRPC control plane. Flags only; the work is in
// server.h / job_manager.h.
#include <signal.h>

#include <cstdio>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "coordinator/auth.h"
#include "coordinator/server.h"

int main(int argc, char** argv) {
  using resdist::coordinator::CoordinatorOptions;
  CLI::App app{"resdist-coordinator: jobs, launchers and the gRPC control plane",
               "resdist-coordinator"};
  CoordinatorOptions o;
  std::string token_file, mpirun_args;
  double deadline_s = 30, start_timeout_s = 120, heartbeat_s = 2;
  app.add_option("--listen", o.listen, "host:port to serve on (port 0: any free port)")
      ->capture_default_str();
  app.add_option("--state-dir", o.state_dir, "directory for state.db and job logs")->required();
  app.add_option("--data-root", o.data_root,
                 "every dataset, checkpoint and output path must resolve under it "
                 "(default: the current directory)");
  app.add_option("--auth-token-file", token_file,
                 "JobService bearer token (first line of the file); without it JobService is open");
  app.add_option("--tls-cert", o.tls_cert, "PEM certificate chain (enables TLS)");
  app.add_option("--tls-key", o.tls_key, "PEM private key");
  app.add_option("--launcher", o.launcher, "local | external")
      ->check(CLI::IsMember({"local", "external"}))
      ->capture_default_str();
  app.add_option("--advertise", o.advertise,
                 "address workers dial (default: the listen address, 127.0.0.1 for wildcards)");
  app.add_option("--worker-binary", o.local.worker_binary,
                 "resdist-worker to launch (default: next to this binary, then PATH)");
  app.add_option("--mpirun", o.local.mpirun, "mpirun program")->capture_default_str();
  app.add_option("--mpirun-args", mpirun_args, "extra mpirun arguments, space separated");
  app.add_option("--liveness-deadline", deadline_s,
                 "seconds a rank may stay silent before its attempt fails")
      ->check(CLI::Range(0.5, 3600.0))
      ->capture_default_str();
  app.add_option("--start-timeout", start_timeout_s,
                 "seconds launched ranks have to register (local launcher)")
      ->check(CLI::Range(1.0, 86400.0))
      ->capture_default_str();
  app.add_option("--heartbeat-interval", heartbeat_s, "seconds between worker heartbeats")
      ->check(CLI::Range(0.1, 600.0))
      ->capture_default_str();
  app.add_option("--max-running-jobs", o.max_running_jobs, "jobs STARTING or RUNNING at once")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  if (!token_file.empty()) {
    auto token = resdist::coordinator::ReadTokenFile(token_file);
    if (!token.ok()) {
      std::fprintf(stderr, "resdist-coordinator: --auth-token-file: %s\n",
                   std::string(token.status().message()).c_str());
      return 2;
    }
    o.auth_token = *token;
  }
  for (absl::string_view a : absl::StrSplit(mpirun_args, ' ', absl::SkipEmpty()))
    o.local.mpirun_args.emplace_back(a);
  auto ms = [](double s) { return std::chrono::milliseconds(static_cast<int64_t>(s * 1000)); };
  o.liveness_deadline = ms(deadline_s);
  o.start_timeout = ms(start_timeout_s);
  o.heartbeat_interval = ms(heartbeat_s);
  if (o.heartbeat_interval * 2 > o.liveness_deadline) {
    std::fprintf(stderr,
                 "resdist-coordinator: --heartbeat-interval %.1f s must be at most half of "
                 "--liveness-deadline %.1f s\n",
                 heartbeat_s, deadline_s);
    return 2;
  }

  // SIGINT/SIGTERM end the process through a waiting thread, never from a signal handler.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto coordinator = resdist::coordinator::Coordinator::Start(o);
  if (!coordinator.ok()) {
    std::fprintf(stderr, "resdist-coordinator: %s\n",
                 std::string(coordinator.status().message()).c_str());
    return 1;
  }
  std::printf("resdist-coordinator listening on %s\n", (*coordinator)->address().c_str());
  std::fflush(stdout);
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    o.logger.info(absl::StrCat("signal ", sig, ": shutting down (workers keep running)"));
    (*coordinator)->Shutdown();
  });
  (*coordinator)->Wait();
  waiter.join();
  return 0;
}
