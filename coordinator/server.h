// The coordinator process minus flag parsing: opens the state store, builds the job manager and
// the launcher, and serves JobService + WorkerService over gRPC (optionally TLS). Used by
// resdist-coordinator's main() and by in-process tests.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "common/log.h"
#include "common/status.h"
#include "coordinator/job_manager.h"
#include "coordinator/launcher.h"

namespace grpc {
class Server;
}

namespace resdist::coordinator {

class JobServiceImpl;
class WorkerServiceImpl;

struct CoordinatorOptions {
  std::string listen = "127.0.0.1:7070";  // host:port; port 0 picks a free one
  std::string advertise;                  // address given to workers; default from listen
  std::string state_dir;
  std::string data_root;                  // default: the current directory
  std::string auth_token;                 // JobService bearer token; empty: open
  std::string tls_cert, tls_key;          // PEM files; both or neither
  std::string launcher = "local";         // local | external
  LocalLauncherOptions local;
  std::chrono::milliseconds liveness_deadline{30000};
  std::chrono::milliseconds start_timeout{120000};
  std::chrono::milliseconds heartbeat_interval{2000};
  int max_running_jobs = 1;
  int max_message_bytes = 4 << 20;
  Logger logger{"coordinator"};
  // Tests: replaces the launcher named by `launcher`.
  std::function<std::unique_ptr<Launcher>(ExitCallback)> TEST_launcher_factory;
};

class Coordinator {
 public:
  static StatusOr<std::unique_ptr<Coordinator>> Start(CoordinatorOptions options);
  ~Coordinator();

  int port() const { return port_; }
  // host:port clients can dial (127.0.0.1 when listening on a wildcard address).
  const std::string& address() const { return address_; }
  JobManager& manager() { return *manager_; }

  void Wait();
  void Shutdown();

 private:
  Coordinator() = default;

  std::unique_ptr<JobManager> manager_;
  std::unique_ptr<JobServiceImpl> job_service_;
  std::unique_ptr<WorkerServiceImpl> worker_service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::string address_;
  bool shut_down_ = false;
};

}  // namespace resdist::coordinator
