// Coordinator assembly. Order matters: the manager exists before the launcher (whose exit
// callback points at it), and the server is bound before the manager starts launching jobs
// (workers need the real port).
#include "coordinator/server.h"

#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>

#include "absl/strings/str_cat.h"
#include "coordinator/paths.h"
#include "coordinator/services.h"

namespace resdist::coordinator {
namespace fs = std::filesystem;

namespace {

StatusOr<std::string> ReadFile(const std::string& path, absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(what, " '", path, "': cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "0.0.0.0:7070" / "[::]:7070" / ":7070" -> "127.0.0.1:<port>"; otherwise host:<port>.
std::string DialAddress(const std::string& listen, int port) {
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.empty() || host == "0.0.0.0" || host == "[::]" || host == "::") host = "127.0.0.1";
  return absl::StrCat(host, ":", port);
}

}  // namespace

StatusOr<std::unique_ptr<Coordinator>> Coordinator::Start(CoordinatorOptions options) {
  if (options.state_dir.empty()) return absl::InvalidArgumentError("--state-dir is required");
  if (options.tls_cert.empty() != options.tls_key.empty())
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  if (options.launcher != "local" && options.launcher != "external" &&
      !options.TEST_launcher_factory)
    return absl::InvalidArgumentError(
        absl::StrCat("--launcher: '", options.launcher, "'; expected local or external"));
  std::error_code ec;
  fs::create_directories(options.state_dir, ec);
  if (ec)
    return absl::InvalidArgumentError(
        absl::StrCat("--state-dir '", options.state_dir, "': ", ec.message()));
  // The store holds worker tokens: keep the directory private.
  chmod(options.state_dir.c_str(), 0700);
  options.state_dir = fs::canonical(options.state_dir, ec).string();
  if (options.data_root.empty()) options.data_root = fs::current_path().string();
  ASSIGN_OR_RETURN(std::string root, CanonicalRoot(options.data_root));

  ASSIGN_OR_RETURN(std::unique_ptr<Store> store, Store::Open(options.state_dir + "/state.db"));
  JobManagerOptions mo;
  mo.state_dir = options.state_dir;
  mo.data_root = root;
  mo.liveness_deadline = options.liveness_deadline;
  mo.start_timeout = options.start_timeout;
  mo.heartbeat_interval = options.heartbeat_interval;
  mo.max_running_jobs = options.max_running_jobs;
  mo.logger = options.logger;

  std::unique_ptr<Coordinator> c(new Coordinator());
  ASSIGN_OR_RETURN(c->manager_, JobManager::Create(mo, std::move(store)));
  c->job_service_ = std::make_unique<JobServiceImpl>(c->manager_.get(), options.auth_token);
  c->worker_service_ = std::make_unique<WorkerServiceImpl>(c->manager_.get());

  std::shared_ptr<grpc::ServerCredentials> creds;
  if (!options.tls_cert.empty()) {
    ASSIGN_OR_RETURN(std::string cert, ReadFile(options.tls_cert, "--tls-cert"));
    ASSIGN_OR_RETURN(std::string key, ReadFile(options.tls_key, "--tls-key"));
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({key, cert});
    creds = grpc::SslServerCredentials(ssl);
  } else {
    creds = grpc::InsecureServerCredentials();
  }
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, creds, &c->port_);
  builder.RegisterService(c->job_service_.get());
  builder.RegisterService(c->worker_service_.get());
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  c->server_ = builder.BuildAndStart();
  if (!c->server_ || c->port_ == 0)
    return absl::UnavailableError(absl::StrCat("cannot listen on '", options.listen,
                                               "' (address in use or malformed?)"));
  c->address_ = DialAddress(options.listen, c->port_);
  const std::string worker_address = options.advertise.empty() ? c->address_ : options.advertise;

  JobManager* manager = c->manager_.get();
  ExitCallback on_exit = [manager](const std::string& job, int attempt, int code) {
    manager->OnLauncherExit(job, attempt, code);
  };
  std::unique_ptr<Launcher> launcher;
  if (options.TEST_launcher_factory) {
    launcher = options.TEST_launcher_factory(on_exit);
  } else if (options.launcher == "local") {
    if (options.local.worker_binary.empty()) options.local.worker_binary = DefaultWorkerBinary();
    launcher = std::make_unique<LocalLauncher>(options.local, on_exit);
  } else {
    Logger logger = options.logger;
    launcher = std::make_unique<ExternalLauncher>(
        options.local.worker_binary.empty() ? "resdist-worker" : options.local.worker_binary,
        [logger](const std::string& line) { logger.info(line); });
  }
  manager->Start(std::move(launcher), worker_address);
  options.logger.info(absl::StrCat("listening on ", options.listen, " (port ", c->port_, ", ",
                                   options.tls_cert.empty() ? "plaintext" : "TLS", "), state ",
                                   options.state_dir, ", data root ", root, ", workers dial ",
                                   worker_address, options.auth_token.empty()
                                                       ? "; WARNING: no --auth-token-file, JobService is open"
                                                       : ""));
  return c;
}

Coordinator::~Coordinator() { Shutdown(); }

void Coordinator::Wait() { server_->Wait(); }

void Coordinator::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  // Watch streams are cancelled by the deadline; unary calls finish.
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  manager_->Shutdown();
}

}  // namespace resdist::coordinator
